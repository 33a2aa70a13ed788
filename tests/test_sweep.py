"""The sweep's bookkeeping (grid, cell states, table) and ``purerigl sweep`` end to end on tiny data.

The grid, states and aggregation are checked against values computed here another way (NumPy's
mean and std, files written by hand); the command runs a few one-epoch cells on the embedded digits
data through a real Dask cluster, then again to show that done cells are skipped, interrupted ones
resumed, a changed budget refused and a failing cell reported without losing the others.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.report.sweep import (
    SWEEP_METHODS, Budget, Cell, SweepError, aggregate, cell_state, check_budget, collect_results, make_grid,
    markdown_table, resume_epoch, summarize_run,
)

pytest.importorskip("dask.distributed")


# ------------------------------------------------------------------------------------------------
# the grid


def test_grid_has_every_sparse_cell_and_dense_once_per_seed():
    cells = make_grid(["rigl", "dense", "static"], [0.9, 0.5], [1, 0])
    assert len(cells) == 2 * 2 * 2 + 2
    assert [c for c in cells if c.method == "dense"] == [Cell("dense", 0.0, 0), Cell("dense", 0.0, 1)]
    assert {(c.method, c.sparsity, c.seed) for c in cells if c.method != "dense"} == {
        (m, s, seed) for m in ("rigl", "static") for s in (0.5, 0.9) for seed in (0, 1)
    }
    order = [SWEEP_METHODS.index(c.method) for c in cells]
    assert order == sorted(order)  # methods in the table's order


def test_grid_removes_duplicates():
    assert make_grid(["set", "set"], [0.9, 0.9], [0, 0]) == [Cell("set", 0.9, 0)]


@pytest.mark.parametrize(
    "methods, sparsities, seeds, words",
    [
        (["rigl", "nope"], [0.9], [0], "nope"),
        ([], [0.9], [0], "at least one method"),
        (["rigl"], [0.9], [], "at least one seed"),
        (["rigl"], [0.0], [0], "strictly between"),
        (["rigl"], [1.0], [0], "strictly between"),
        (["rigl"], [float("nan")], [0], "strictly between"),
        (["rigl"], [], [0], "at least one sparsity"),
        (["rigl"], [0.9], [-1], "seeds"),
    ],
)
def test_bad_grids_are_refused_with_the_reason(methods, sparsities, seeds, words):
    with pytest.raises(SweepError, match=words):
        make_grid(methods, sparsities, seeds)


def test_dense_alone_needs_no_sparsity():
    assert make_grid(["dense"], [], [3]) == [Cell("dense", 0.0, 3)]


@pytest.mark.parametrize(
    "cell, name",
    [(Cell("rigl", 0.9, 0), "rigl-s90-seed0"), (Cell("srigl", 0.995, 2), "srigl-s99.5-seed2"),
     (Cell("dense", 0.0, 1), "dense-s0-seed1"), (Cell("gse", 0.95, 10), "gse-s95-seed10")],
)
def test_cell_names(cell, name):
    assert cell.name == name


def test_train_args_of_dense_and_sparse_cells():
    budget = Budget(dataset="digits", hidden="32", epochs=3, lr=0.1, data_dir="/data")
    dense = budget.train_args(Cell("dense", 0.0, 4))
    assert dense[dense.index("--sparsity") + 1] == "0" and dense[dense.index("--method") + 1] == "static"
    assert "--distribution" not in dense
    sparse = budget.train_args(Cell("gse", 0.95, 1))
    pairs = dict(zip(sparse[::2], sparse[1::2]))
    assert pairs["--method"] == "gse" and float(pairs["--sparsity"]) == 0.95 and pairs["--seed"] == "1"
    assert pairs["--epochs"] == "3" and float(pairs["--lr"]) == 0.1 and pairs["--data-dir"] == "/data"
    assert pairs["--distribution"] == "erk" and pairs["--dataset"] == "digits"


# ------------------------------------------------------------------------------------------------
# cell states, results and the table


def test_cell_state_follows_the_files(tmp_path):
    d = tmp_path / "c"
    assert cell_state(d) == "new"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert cell_state(d) == "new"  # started, never checkpointed: start again
    (d / "checkpoint.npz").write_bytes(b"")
    assert cell_state(d) == "partial"
    (d / "result.json").write_text("{}")
    assert cell_state(d) == "done"


def test_resume_epoch_reads_the_checkpoint_or_says_none(finished_sweep, tmp_path):
    out, _ = finished_sweep
    assert resume_epoch(out / "cells" / "static-s50-seed0") == 1  # a real checkpoint of a 1-epoch run
    assert resume_epoch(tmp_path) is None  # no checkpoint
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 torn")
    assert resume_epoch(tmp_path) is None  # a damaged one: the resume will name the problem
    np.savez(tmp_path / "checkpoint.npz", meta=np.array(json.dumps({"schema": "x"})))
    assert resume_epoch(tmp_path) is None  # no train entry


def test_summarize_run_reads_the_last_epoch_and_the_mean_time(tmp_path):
    rows = [
        {"epoch": 1, "test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 2.0, "seconds": 1.0},
        {"epoch": 2, "test_accuracy": 0.7, "test_loss": 0.8, "train_loss": 1.0, "seconds": 3.0},
        {"epoch": 3, "test_accuracy": 0.6, "test_loss": 0.9, "train_loss": 0.5, "seconds": 2.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = summarize_run(tmp_path)
    assert s == {"epochs": 3, "test_accuracy": 0.6, "test_loss": 0.9, "train_loss": 0.5,
                 "best_test_accuracy": 0.7, "seconds_per_epoch": 2.0,
                 "curve": [{k: r[k] for k in ("epoch", "train_loss", "test_loss", "test_accuracy")} for r in rows]}


def test_a_result_written_without_its_curve_gets_it_from_the_cells_metrics(tmp_path):
    rows = [{"epoch": e, "test_accuracy": 0.5 + e / 10, "test_loss": 1.0 / e, "train_loss": 2.0 / e, "seconds": 1.0,
             "lr": 0.1} for e in (1, 2)]
    cell = Cell("rigl", 0.9, 0)
    old = tmp_path / "cells" / cell.name
    old.mkdir(parents=True)
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (old / "result.json").write_text(json.dumps({"cell": {"method": "rigl", "sparsity": 0.9, "seed": 0},
                                                 "test_accuracy": 0.7}))
    gone = Cell("set", 0.9, 0)  # its run directory kept only result.json: no curve to add
    (tmp_path / "cells" / gone.name).mkdir()
    (tmp_path / "cells" / gone.name / "result.json").write_text(json.dumps({"test_accuracy": 0.6}))
    with_curve, without = collect_results(tmp_path, [cell, gone])
    assert [m["epoch"] for m in with_curve["curve"]] == [1, 2]
    assert with_curve["curve"][1] == {"epoch": 2, "train_loss": 1.0, "test_loss": 0.5, "test_accuracy": 0.7}
    assert "curve" not in without
    assert "curve" not in json.loads((old / "result.json").read_text())  # the file itself is left as it was


def test_summarize_run_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(SweepError, match="metrics"):
        summarize_run(tmp_path)


def _result(method, sparsity, seed, acc, sec=1.0):
    return {"cell": {"method": method, "sparsity": sparsity, "seed": seed}, "test_accuracy": acc,
            "seconds_per_epoch": sec}


def test_aggregate_matches_numpy_mean_and_sample_std():
    rng = np.random.default_rng(0)
    accs = rng.uniform(0.9, 1.0, size=4)
    results = [_result("rigl", 0.9, s, float(a), sec=float(s + 1)) for s, a in enumerate(accs)]
    results += [_result("dense", 0.0, 0, 0.98), _result("static", 0.9, 0, 0.95)]
    rows = aggregate(results[::-1])
    assert [r["method"] for r in rows] == ["dense", "static", "rigl"]
    rigl = rows[2]
    assert rigl["n"] == 4 and rigl["seeds"] == [0, 1, 2, 3]
    assert math.isclose(rigl["accuracy_mean"], float(np.mean(accs)), rel_tol=1e-12)
    assert math.isclose(rigl["accuracy_std"], float(np.std(accs, ddof=1)), rel_tol=1e-12)
    assert math.isclose(rigl["seconds_per_epoch"], 2.5)
    assert rows[0]["accuracy_std"] == 0.0  # one seed: no spread


def test_markdown_table_has_a_column_per_sparsity_and_marks_missing_seeds():
    results = [_result("dense", 0.0, s, 0.98) for s in (0, 1)]
    results += [_result("rigl", 0.9, s, 0.97) for s in (0, 1)] + [_result("rigl", 0.99, 0, 0.9)]
    md = markdown_table(aggregate(results), n_seeds=2)
    acc_table = md.split("**training seconds per epoch**")[0]
    lines = [line for line in acc_table.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | 90% | 99% |"
    assert lines[2].startswith("| dense | 0.9800 ± 0.0000 | 0.9800 ± 0.0000")
    assert lines[3] == "| rigl | 0.9700 ± 0.0000 | 0.9000 (n=1) |"  # one seed: no spread printed


def test_budget_is_recorded_and_a_changed_budget_refused(tmp_path):
    check_budget(tmp_path, Budget(epochs=3))
    check_budget(tmp_path, Budget(epochs=3))  # the same budget again: fine
    with pytest.raises(SweepError, match="epochs"):
        check_budget(tmp_path, Budget(epochs=4, lr=0.1))


# ------------------------------------------------------------------------------------------------
# the command, end to end on the embedded digits data


def _sweep(out, *extra, **kw):
    from purerigl.cli.main import main

    args = ["sweep", "--out", str(out), "--dataset", "digits", "--hidden", "16", "--epochs", "1",
            "--methods", "dense,static,rigl", "--sparsities", "0.5", "--seeds", "0,1", "--workers", "1", *extra]
    return CliRunner().invoke(main, args, **kw)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = _sweep(out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_sweep_trains_every_cell_and_writes_the_table(finished_sweep):
    out, output = finished_sweep
    names = {"dense-s0-seed0", "dense-s0-seed1", "static-s50-seed0", "static-s50-seed1", "rigl-s50-seed0",
             "rigl-s50-seed1"}
    assert {p.name for p in (out / "cells").iterdir()} == names
    for name in names:
        result = json.loads((out / "cells" / name / "result.json").read_text())
        metrics = [json.loads(x) for x in (out / "cells" / name / "metrics.jsonl").read_text().splitlines()]
        assert result["test_accuracy"] == metrics[-1]["test_accuracy"] and result["epochs"] == 1
        assert (out / "cells" / name / "model.npz").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["n"]) for r in summary["rows"]} == {("dense", 2), ("static", 2), ("rigl", 2)}
    md = (out / "results.md").read_text()
    assert "| static |" in md and "| rigl |" in md and "6 of 6 cells done" in md
    # every cell records the code that trained it (its own subprocess: the same installed sources)
    from purerigl.report.provenance import code_version

    source = code_version()["source"]
    assert {c["code"]["source"] for c in summary["cells"]} == {source}
    assert f"Code: all 6 cells by source {source}" in md
    png = out / "accuracy_vs_sparsity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 to run" in output


def test_rerun_skips_done_cells_and_resumes_interrupted_ones(finished_sweep):
    out, _ = finished_sweep
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.jsonl")}
    (out / "cells" / "rigl-s50-seed1" / "result.json").unlink()  # as if killed before the result was saved
    dry = _sweep(out, "--dry-run")
    assert re.search(r"rigl-s50-seed1 +partial, resumes after epoch 1 of 1\n", dry.output), dry.output
    assert re.search(r"rigl-s50-seed0 +done\n", dry.output), dry.output
    result = _sweep(out)
    assert result.exit_code == 0, result.output
    assert "1 to run" in result.output and "rigl-s50-seed1: resumed" in result.output
    assert "resuming" in (out / "cells" / "rigl-s50-seed1" / "train.log").read_text()
    for path, stamp in stamps.items():
        if "rigl-s50-seed1" not in str(path):
            assert path.stat().st_mtime_ns == stamp  # nothing else was trained again
    dry = _sweep(out, "--dry-run")
    assert dry.exit_code == 0 and "0 to run" in dry.output and "done" in dry.output


def test_a_cell_imports_the_installed_purerigl_not_a_checkout_in_the_working_directory(tmp_path, monkeypatch):
    """Started inside a source checkout, a cell's train process must not import the checkout's purerigl/
    (with a non-editable install it lacks cli/, and every cell failed with "No module named
    purerigl.cli"). Here the working directory holds a purerigl/ that fails on import."""
    from purerigl.cli.sweep import run_cell

    checkout = tmp_path / "checkout"
    (checkout / "purerigl").mkdir(parents=True)
    (checkout / "purerigl" / "__init__.py").write_text("raise ImportError('the checkout was imported')\n")
    monkeypatch.chdir(checkout)
    cell = Cell("rigl", 0.5, 0)
    record = run_cell(cell, str(tmp_path / "cell"), Budget(dataset="digits", hidden="8", epochs=1).train_args(cell), 1)
    log = (tmp_path / "cell" / "train.log").read_text()
    assert record["status"] == "trained", log
    assert log.startswith("$ purerigl train ") and "the checkout was imported" not in log


def test_a_cell_gets_the_users_malloc_variables_not_the_dask_nannys(tmp_path, monkeypatch):
    """A Dask nanny sets MALLOC_TRIM_THRESHOLD_ in its environment and its workers'; a cell's train process
    must get the malloc variables of the sweep command instead (none here), so that it runs as
    ``purerigl train`` would, with the cpu backend's host heap setting."""
    import subprocess

    from purerigl.cli import sweep as sweep_module

    seen = {}

    def fake_run(cmd, env, **kwargs):
        seen.update(env)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(sweep_module.subprocess, "run", fake_run)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what the nanny left in the worker's environment
    cell = Cell("rigl", 0.5, 0)
    args = Budget(dataset="digits", hidden="8", epochs=1).train_args(cell)
    sweep_module.run_cell(cell, str(tmp_path / "a"), args, 1, {})
    assert "MALLOC_TRIM_THRESHOLD_" not in seen and seen["NUMBA_NUM_THREADS"] == "1"
    sweep_module.run_cell(cell, str(tmp_path / "b"), args, 1, {"MALLOC_TOP_PAD_": "4096"})
    assert "MALLOC_TRIM_THRESHOLD_" not in seen and seen["MALLOC_TOP_PAD_"] == "4096"
    sweep_module.run_cell(cell, str(tmp_path / "c"), args, 1)  # None: the worker's environment as it is
    assert seen["MALLOC_TRIM_THRESHOLD_"] == "65536"


def test_the_sweep_reads_the_malloc_variables_before_starting_dask(tmp_path, monkeypatch):
    """The variables handed to every cell are the command's, read before the cluster (whose nanny adds
    MALLOC_TRIM_THRESHOLD_ to this process's environment) starts."""
    import os

    from purerigl.cli import sweep as sweep_module

    handed = []

    class FakeClient:
        def submit(self, fn, *args, **kwargs):
            handed.append(args[4])
            raise RuntimeError("stop here")

        def close(self):
            pass

    def fake_client(scheduler, workers):
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"  # what LocalCluster's nanny does
        return FakeClient(), FakeClient()  # (client, cluster): both only closed

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    monkeypatch.setattr(sweep_module, "_client", fake_client)
    try:
        result = _sweep(tmp_path / "out")
    finally:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    assert handed == [{"MALLOC_TOP_PAD_": "4096"}], result.output


def test_the_budget_defaults_follow_the_model_as_purerigl_train(tmp_path):
    """Without --optimizer/--lr/--weight-decay a cell trains with its model's own defaults (AdamW, lr 1e-3,
    weight decay 0.05 for vit-tiny; SGD 0.05, 1e-4 otherwise); given ones win."""
    vit = _sweep(tmp_path / "vit", "--model", "vit-tiny", "--dry-run")
    assert vit.exit_code == 0 and "budget: adamw, lr 0.001 cosine, weight decay 0.05," in vit.output, vit.output
    mlp = _sweep(tmp_path / "mlp", "--dry-run")
    assert "budget: sgd, lr 0.05 cosine, weight decay 0.0001," in mlp.output, mlp.output
    given = _sweep(tmp_path / "given", "--model", "vit-tiny", "--optimizer", "sgd", "--lr", "0.1", "--dry-run")
    assert "budget: sgd, lr 0.1 cosine, weight decay 0.05," in given.output, given.output


def test_report_only_writes_the_table_of_the_cells_done_and_trains_nothing(finished_sweep, tmp_path):
    """A sweep stopped early: --report-only over a larger grid tabulates the done cells (missing seeds
    marked with n), starts no cell, and refuses a directory without a sweep or with another budget."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_sweep[0], out)
    (out / "results.md").unlink()
    result = _sweep(out, "--seeds", "0,1,2", "--report-only")
    assert result.exit_code == 0, result.output
    assert "3 not done (report only: nothing is trained)" in result.output
    assert not (out / "cells" / "rigl-s50-seed2").exists()
    md = (out / "results.md").read_text()
    assert "6 of 9 cells done" in md and "(n=2)" in md
    assert _sweep(tmp_path / "none", "--report-only").exit_code == 2
    changed = _sweep(out, "--report-only", "--lr", "0.5")
    assert changed.exit_code == 2 and "another budget" in changed.output


def test_restore_from_a_committed_results_json_continues_the_grid_elsewhere(finished_sweep, tmp_path):
    """The run directories are gone (another machine): --restore-from the sweep's results.json writes its
    cells into a new OUT as done, so the sweep reports them (curves included) and trains only the rest;
    a cell OUT already has, done or interrupted, is left as it was."""
    committed = tmp_path / "committed.json"
    before = json.loads((finished_sweep[0] / "results.json").read_text())
    before["budget"]["data_dir"] = "/elsewhere/data"  # where the other machine kept the data: may differ
    committed.write_text(json.dumps(before))
    out = tmp_path / "elsewhere"
    (out / "cells" / "rigl-s50-seed1").mkdir(parents=True)
    (out / "cells" / "rigl-s50-seed1" / "train.log").write_text("an interrupted run of this machine\n")
    result = _sweep(out, "--seeds", "0,1,2", "--restore-from", str(committed), "--report-only")
    assert result.exit_code == 0, result.output
    assert "restored 5 cell(s)" in result.output
    assert "rigl-s50-seed1 (its directory holds another run's files)" in result.output
    assert "4 not done" in result.output  # seed 2 of each method and the interrupted cell
    after = json.loads((out / "results.json").read_text())
    assert after["cells"] == [c for c in before["cells"] if c["name"] != "rigl-s50-seed1"]
    assert all(len(c["curve"]) == 1 for c in after["cells"])  # the learning curves came along
    assert "5 of 9 cells done" in (out / "results.md").read_text()
    again = _sweep(out, "--seeds", "0,1,2", "--restore-from", str(committed), "--report-only")
    assert "restored 0 cell(s)" in again.output and "dense-s0-seed0 (already done)" in again.output


def test_restore_from_refuses_another_budget_and_a_file_that_is_not_a_sweeps(finished_sweep, tmp_path):
    committed = finished_sweep[0] / "results.json"
    other = _sweep(tmp_path / "a", "--lr", "0.5", "--restore-from", str(committed), "--report-only")
    assert other.exit_code == 2 and "another budget (differs in: lr)" in other.output, other.output
    assert not (tmp_path / "a" / "cells").exists()  # nothing written
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"budget": {}, "cells": "none"}))
    assert "not a sweep's results.json" in _sweep(tmp_path / "b", "--restore-from", str(bad)).output
    renamed = json.loads(committed.read_text())
    renamed["cells"][0]["name"] = "rigl-s90-seed0"
    bad.write_text(json.dumps(renamed))
    wrong = _sweep(tmp_path / "c", "--restore-from", str(bad), "--report-only")
    assert wrong.exit_code == 2 and "the record named rigl-s90-seed0 is the cell" in wrong.output, wrong.output
    del renamed["cells"][0]["seconds_per_epoch"]
    renamed["cells"][0]["name"] = "dense-s0-seed0"
    bad.write_text(json.dumps(renamed))
    short = _sweep(tmp_path / "e", "--restore-from", str(bad), "--report-only")
    assert short.exit_code == 2 and "lacks its cell, name, test accuracy or seconds" in short.output, short.output
    dry = _sweep(tmp_path / "d", "--restore-from", str(committed), "--dry-run")
    assert dry.exit_code == 2 and "cannot be combined with --dry-run" in dry.output
    assert "Traceback" not in other.output + wrong.output + short.output + dry.output


def test_train_args_reach_every_cell_and_the_budget(tmp_path):
    """--train-args is added to every cell's train command and recorded in the budget, so a rerun
    with other extra options is a changed budget."""
    out = tmp_path / "s"
    result = _sweep(out, "--methods", "rigl", "--seeds", "0", "--train-args", "--delta-t 7 --alpha 0.25")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "cells" / "rigl-s50-seed0" / "config.json").read_text())
    assert config["options"]["delta_t"] == 7 and config["options"]["alpha"] == 0.25
    assert json.loads((out / "sweep.json").read_text())["budget"]["extra"] == ["--delta-t", "7", "--alpha", "0.25"]
    again = _sweep(out, "--methods", "rigl", "--seeds", "0", "--train-args", "--delta-t 8 --alpha 0.25")
    assert again.exit_code == 2 and "another budget" in again.output


def test_a_changed_budget_is_refused(finished_sweep):
    out, _ = finished_sweep
    result = _sweep(out, "--lr", "0.2")
    assert result.exit_code == 2 and "another budget" in result.output and "lr" in result.output


def test_a_failing_cell_is_reported_and_the_others_kept(tmp_path):
    # srigl at 99.9% cannot give every neuron of a 16 x 64 layer one input: its train run exits 2
    result = _sweep(tmp_path, "--methods", "rigl,srigl", "--sparsities", "0.999", "--seeds", "0")
    assert result.exit_code == 1, result.output
    assert "srigl-s99.9-seed0: FAILED" in result.output
    failed = json.loads((tmp_path / "cells" / "srigl-s99.9-seed0" / "failed.json").read_text())
    assert failed["returncode"] == 2 and "condensed" in failed["log_tail"]
    assert (tmp_path / "cells" / "rigl-s99.9-seed0" / "result.json").is_file()  # csr: fine
    assert "1 of 2 cells done" in (tmp_path / "results.md").read_text()


def test_an_existing_scheduler_runs_the_cells(tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        result = _sweep(tmp_path, "--methods", "dense", "--seeds", "5", "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cells" / "dense-s0-seed5" / "result.json").is_file()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--sparsities", "1.5"], "strictly between"),
        (["--sparsities", "0.9,x"], "fractions"),
        (["--seeds", "a"], "integers"),
        (["--methods", "rigl,magic"], "magic"),
        (["--hidden", "16,-3"], "hidden"),
        (["--train-args", "--method srigl"], "--method is set by the sweep itself"),
        (["--train-args", "--seed=3"], "--seed is set by the sweep itself"),
        (["--train-args", "--gamma-sal '0.9"], "cannot split"),
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path, extra, words):
    result = _sweep(tmp_path / "s", *extra)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s" / "cells").exists()


# a stand-in for run_cell, run by the in-process workers of the test below: it records how many cells
# each worker holds while one of them runs
_HELD_PER_WORKER: list[int] = []


def _record_the_cells_each_worker_holds(cell, cell_dir, train_args, threads, malloc_env=None):
    import time

    from dask.distributed import get_client

    time.sleep(0.2)  # every cell submitted so far has reached the scheduler by now
    _HELD_PER_WORKER.append(max(len(keys) for keys in get_client().processing().values()))
    return {"status": "trained", "name": cell.name, "test_accuracy": 0.5, "seconds": 0.0}


def test_no_worker_is_handed_a_second_cell_while_one_runs(tmp_path, monkeypatch):
    # Handing Dask the whole grid at once placed every cell on a worker up front, and a worker whose cells
    # were done sat idle while another still held a queue of them. The sweep hands out one cell per free
    # worker thread, so each worker holds only the cell it runs, and every cell still runs once.
    from dask.distributed import LocalCluster

    import purerigl.cli.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "run_cell", _record_the_cells_each_worker_holds)
    _HELD_PER_WORKER.clear()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        result = _sweep(tmp_path, "--methods", "static,set,rigl", "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.output
    assert len(_HELD_PER_WORKER) == 6 and max(_HELD_PER_WORKER) == 1, _HELD_PER_WORKER
    assert result.output.count(": trained, test accuracy 0.5000") == 6


def test_the_figure_keeps_its_legend_beside_the_points():
    """Every method's points and the dense line are drawn, and the legend lies right of the axes: inside
    them it covered a column where the methods crowd (the VGG-small table's 90%, say)."""
    from purerigl.report.sweep_plot import accuracy_figure

    rows = [{"method": "dense", "sparsity": 0.0, "accuracy_mean": 0.994, "accuracy_std": 0.0005}]
    rows += [{"method": m, "sparsity": s, "accuracy_mean": 0.99 - 0.001 * i - s / 10, "accuracy_std": 0.001}
             for i, m in enumerate(("static", "set", "rigl", "srigl")) for s in (0.9, 0.95)]
    fig = accuracy_figure(rows, "title")
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["dense (0.9940)", "static", "set", "rigl", "srigl"]
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # beside, not over
    assert [t.get_text() for t in ax.get_xticklabels()] == ["90%", "95%"]
