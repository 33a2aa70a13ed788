"""`purerigl bench` (issue 19): the "limit" column and the busy-machine mode ``--busy N``.

The limit is checked against its formula with a fake timer (``measure`` monkeypatched to return fixed
times), so the checks are exact and never depend on the clock. The busy mode is checked by counting
this process's busy children during and after the timed work, also when that work raises.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.cli._timing import Timing
from purerigl.cli.bench import _busy, growth, kernels, train
from purerigl.cli.bench._shared import QUICK, product_limit_s
from purerigl.cli.main import main
from purerigl.nn import build_mlp

DENSE_S = 1e-3  # what the fake timer returns for a baseline (compiled=True): dense BLAS, SciPy
SPARSE_S = 2e-4  # ... and for everything else (a purerigl kernel, a step, an update)


def fake_measure(fn, *, budget_s, max_call_s, compiled=False, repeat=1000):
    t = DENSE_S if compiled else SPARSE_S
    return Timing(t, t, t, 7)


def run(args):
    return CliRunner().invoke(main, ["bench", *args])


# ------------------------------------------------------------------------------------------------ limit


def test_product_limit_is_nnz_times_batch_at_the_dense_rate():
    dense_s, n_out, n_in, batch, nnz = 3.2e-3, 768, 3072, 256, 235_930
    rate = dense_s / (n_out * n_in * batch)  # seconds per multiply-add of the dense product
    assert product_limit_s(dense_s, nnz, n_out, n_in, batch) == pytest.approx(nnz * batch * rate, rel=1e-12)
    assert product_limit_s(dense_s, n_out * n_in, n_out, n_in, batch) == pytest.approx(dense_s, rel=1e-12)


def test_kernels_limit_column_from_the_measured_dense_time(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "measure", fake_measure)
    path = tmp_path / "k.json"
    result = run(["kernels", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "limit us" in result.output and "%limit" in result.output
    rows = json.loads(path.read_text())["results"]
    assert {r["batch"] for r in rows} == set(QUICK["kernels"]["batches"])
    for r in rows:
        n_out, n_in = r["shape"]
        assert r["dense_us"] == pytest.approx(DENSE_S * 1e6)
        if r["batch"] == 1:  # batch 1 is measured against the copy bandwidth, not BLAS
            assert r["limit_us"] is None and r["limit_fraction"] is None
            continue
        limit_s = r["nnz"] * r["batch"] * (DENSE_S / (n_out * n_in * r["batch"]))
        assert r["limit_us"] == pytest.approx(limit_s * 1e6, rel=1e-12)
        assert r["limit_fraction"] == pytest.approx(limit_s / SPARSE_S, rel=1e-12)
        assert r["dense_gmacs"] == pytest.approx(n_out * n_in * r["batch"] / DENSE_S / 1e9, rel=1e-12)
    shown = [line.split()[-1] for line in result.output.splitlines() if line.split()[:1] == ["64x96"]]
    assert "-" in shown and f"{rows[-1]['limit_fraction']:.0%}" in shown


def test_train_limit_sums_the_step_products_at_the_dense_rates(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "measure", fake_measure)
    path = tmp_path / "t.json"
    result = run(["train", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "limit ms" in result.output
    report = json.loads(path.read_text())
    hidden = QUICK["train"]["hidden"][0]
    (products,) = report["meta"]["dense_products"]
    assert [layer["shape"] for layer in products["layers"]] == [[32, 784], [16, 32], [10, 16]]
    assert all(layer["sddmm_ms"] == pytest.approx(DENSE_S * 1e3) for layer in products["layers"])
    for r in report["results"]:
        fmt = "csr" if r["format"] == "dense" else r["format"]
        model = build_mlp(784, hidden, 10, fmt=fmt, sparsity=r["sparsity"], backend="cpu",
                          rng=np.random.default_rng(0))
        expected = 0.0
        for layer in model.linears:  # forward, weight gradient, input gradient except in the first layer
            n_out, n_in = layer.shape
            nnz = layer.W.nnz if hasattr(layer, "W") else n_out * n_in
            if r["method"] == "dynadiag" and hasattr(layer, "W"):  # its soft phase stores S = ceil(2K) diagonals
                nnz = min(max(layer.shape), math.ceil(2 * layer.W.K)) * min(layer.shape)
            products_done = 3 if layer.needs_input_grad else 2
            expected += products_done * nnz * r["batch"] * DENSE_S / (n_out * n_in * r["batch"])
        assert r["limit_ms"] == pytest.approx(expected * 1e3, rel=1e-12)
        assert r["limit_fraction"] == pytest.approx(expected / SPARSE_S, rel=1e-12)
    dense_row = report["results"][0]
    assert dense_row["method"] == "dense" and dense_row["limit_ms"] == pytest.approx(8 * DENSE_S * 1e3)


def test_growth_limit_is_the_sparse_gradient_at_the_dense_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(growth, "measure", fake_measure)
    path = tmp_path / "g.json"
    result = run(["growth", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "limit ms" in result.output and "upd/limit" in result.output
    for r in json.loads(path.read_text())["results"]:
        limit_s = r["nnz"] * r["batch"] * DENSE_S / (r["width"] * r["width"] * r["batch"])
        assert r["limit_ms"] == pytest.approx(limit_s * 1e3, rel=1e-12)
        assert r["update_over_limit"] == pytest.approx(SPARSE_S / limit_s, rel=1e-12)


# ------------------------------------------------------------------------------------------------- busy


def busy_children() -> list[int]:
    """Pids of this process's live busy children (psutil if installed, else /proc)."""
    me = os.getpid()
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        found = []
        for child in psutil.Process(me).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "-I" in child.cmdline() and _busy.BUSY_LOOP in child.cmdline():
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return found
    proc = Path("/proc")
    if not proc.is_dir():
        pytest.skip("neither psutil nor /proc to list child processes")
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z" and _busy.BUSY_LOOP in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("n", [0, 1, 3])
def test_busy_processes_starts_exactly_n_and_stops_them(n):
    assert busy_children() == []
    with _busy.busy_processes(n) as procs:
        assert len(procs) == n
        assert sorted(busy_children()) == sorted(p.pid for p in procs)
        assert all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)
    assert busy_children() == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_busy_processes_are_stopped_when_the_timed_work_raises(error):
    with pytest.raises(error):
        with _busy.busy_processes(2) as procs:
            assert len(busy_children()) == 2
            raise error("the timed work failed")
    assert all(p.returncode is not None for p in procs)
    assert busy_children() == []


def test_busy_processes_refuses_a_bad_count():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            with _busy.busy_processes(bad):
                pass


@pytest.mark.parametrize("command, module, runner",
                         [("kernels", kernels, "run_kernels"), ("train", train, "run_train"),
                          ("growth", growth, "run_growth")])
def test_busy_option_runs_n_processes_beside_the_timing_and_none_after_a_failure(command, module, runner,
                                                                                 monkeypatch):
    seen = []

    def failing_run(*args, **kwargs):
        seen.append(len(busy_children()))
        raise RuntimeError("timed work failed")

    monkeypatch.setattr(module, runner, failing_run)
    result = run([command, "--quick", "--busy", "2"])
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1
    assert seen == [2]
    assert busy_children() == []


def test_busy_mode_is_reported_in_the_header_and_the_json(tmp_path):
    path = tmp_path / "k.json"
    result = run(["kernels", "--quick", "--op", "matmul", "--format", "csr", "--busy", "1", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "load: busy mode, 1 CPU-bound busy process" in result.output
    assert "--busy 1" in result.output  # in the command line above the table
    assert json.loads(path.read_text())["meta"]["busy"] == 1
    assert busy_children() == []
    quiet = run(["kernels", "--quick", "--op", "matmul", "--format", "csr"])
    assert quiet.exit_code == 0 and "load: quiet mode" in quiet.output and "--busy 0" in quiet.output


@pytest.mark.parametrize("command", ["kernels", "train", "growth"])
@pytest.mark.parametrize("value", ["-1", "x", "1.5", str(_busy.MAX_BUSY + 1)])
def test_bad_busy_exits_2_naming_the_option(command, value):
    result = run([command, "--quick", "--busy", value])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--busy" in errors[0]
    assert busy_children() == []


def test_a_slow_call_is_repeated_until_compilation_is_over(monkeypatch):
    """A slow call is timed once, but only after it settles: a call that compiles (the first, and here
    also the second) is not the one reported."""
    from purerigl.cli.bench import _shared

    durations = iter([5.0, 3.0, 1.0, 0.95, 0.9, 0.9])
    clock = [0.0]
    monkeypatch.setattr(_shared.time, "perf_counter", lambda: clock[0])

    def fn():
        clock[0] += next(durations)

    t = _shared.measure(fn, budget_s=0.1, max_call_s=0.5)
    assert t.runs == 1 and t.median_s == pytest.approx(0.95)  # 5.0, 3.0 and 1.0 were still falling by more than 20%


def _clocked_calls(monkeypatch, module, *durations):
    """Callables whose n-th call advances a fake ``perf_counter`` by ``durations[i][n]`` (then by the
    last value), and the list of how often each was called."""
    clock = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])
    counts = [0] * len(durations)

    def make(i):
        def fn():
            seq = durations[i]
            clock[0] += seq[min(counts[i], len(seq) - 1)]
            counts[i] += 1
        return fn

    return [make(i) for i in range(len(durations))], counts


def test_alternated_timing_is_not_cut_to_one_round_by_a_compiling_warm_up(monkeypatch):
    """A warm-up call that compiles (5 s for a 10 ms step) no longer makes the row a single pair: the
    warm-up round is repeated until it settles, then the rounds are timed as usual."""
    from purerigl.cli.bench import _train_common

    (a, b), counts = _clocked_calls(monkeypatch, _train_common, [5.0, 0.010], [0.020])
    t_a, t_b = _train_common.paired_times(a, b, budget_s=0.1, max_call_s=2.0)
    assert t_a.runs == t_b.runs >= 5
    assert t_a.median_s == pytest.approx(0.010) and t_b.median_s == pytest.approx(0.020)
    assert counts == [t_a.runs + 2, t_b.runs + 2]  # two warm-up rounds, then the timed ones


def test_alternated_timing_of_a_slow_call_is_one_settled_round(monkeypatch):
    """A call that stays slower than max_call_s is timed once, from the first round that is no more
    than 20% faster than the one before it, and no round after that is run."""
    from purerigl.cli.bench import _train_common

    (a, b), counts = _clocked_calls(monkeypatch, _train_common, [9.0, 4.0, 3.0, 2.9], [0.5])
    t_a, t_b = _train_common.paired_times(a, b, budget_s=0.1, max_call_s=2.0)
    assert (t_a.runs, t_b.runs) == (1, 1)
    assert t_a.median_s == pytest.approx(2.9) and t_b.median_s == pytest.approx(0.5)  # 9 -> 4 -> 3: still falling
    assert counts == [4, 4]


def test_alternated_timing_stops_settling_after_settle_calls_rounds(monkeypatch):
    """A call that keeps getting faster by more than 20% is given SETTLE_CALLS more rounds at most."""
    from purerigl.cli.bench import _shared, _train_common

    falling = [100.0 * 0.5 ** n for n in range(20)]  # 100, 50, 25, ...: always 2x faster than before
    (a,), counts = _clocked_calls(monkeypatch, _train_common, falling)
    (t_a,) = _train_common.interleaved_times((a,), budget_s=0.1, max_call_s=2.0)
    assert t_a.runs == 1 and counts == [1 + _shared.SETTLE_CALLS]
    assert t_a.median_s == pytest.approx(falling[_shared.SETTLE_CALLS])


def test_a_call_slow_only_while_it_compiles_is_timed_as_usual(monkeypatch):
    """A first call slowed by compilation (3 s for a 10 ms call) does not make the timing a single
    call: once the calls settle below max_call_s they are timed by time_call (several runs)."""
    from purerigl.cli.bench import _shared

    (fn,), counts = _clocked_calls(monkeypatch, _shared, [3.0, 0.010])
    t = _shared.measure(fn, budget_s=0.1, max_call_s=0.5)
    assert t.runs >= 5 and t.median_s == pytest.approx(0.010)
    assert counts == [t.runs + 2]  # the slow first call, the settling one, then the timed ones
