"""Defaults that train dynamically, and no silent no-op.

Pins down: ``purerigl train`` with no options trains RigL (CSR), ``static`` being the named baseline;
``--delta-t auto`` (the default) gives every run a meaningful number of topology updates and keeps 100
where the data is large (the published MNIST sweep); the command prints its update plan, refuses a
dynamic run whose schedule never changes the topology, and a resumed run keeps the delta_t it was
started with; :meth:`UpdateSchedule.n_updates` and :func:`auto_delta_t` against a step-by-step count;
the per-layer ``updates_unchanged`` statistic; a diag-rigl layer with few diagonals changes in training.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import purerigl.dst.schedule as schedule_module
from purerigl.dst.base import Method
from purerigl.dst.schedule import UpdateSchedule, auto_delta_t, drop_fraction, is_update_step
from purerigl.dst.updater import DSTUpdater
from purerigl.nn import build_mlp
from purerigl.report.sweep import Budget, Cell
from purerigl.training.checkpoint import join_arrays, split_arrays
from test_cli_resume import Killed, assert_same_run, killed_at_the_second_checkpoint
from test_cli_train import assert_usage_error, invoke

#: digits: 1438 training samples, 23 steps per epoch at the default batch of 64
STEPS_PER_EPOCH = 23


def short_run(out, *extra):
    return ["train", "--hidden", 16, "--out", out, "--no-progress", "--backend", "cpu", *extra]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def plan_line(output):
    (line,) = [line for line in output.splitlines() if line.startswith("topology:")]
    return line


# --------------------------------------------------------------------------------------------------
# the default method


def test_train_without_options_trains_rigl_on_csr(tmp_path):
    """No --method: RigL on CSR, whose topology changes (before: static, which never changes)."""
    out = tmp_path / "run"
    result = invoke(short_run(out, "--epochs", 2))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "rigl" and config["format"] == "csr"
    assert {layer["format"] for layer in config["layers"]} == {"csr"}
    lines = metrics(out)
    assert lines[-1]["topology_updates"] > 0
    assert sum(row["changed"] for m in lines for row in m["layers"]) > 0


def test_help_states_the_defaults():
    result = invoke(["train", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "[default: rigl]" in text and "static: the fixed random topology baseline" in text
    assert "--delta-t INTEGER|auto" in text and "[default: auto]" in text
    assert "min(100, max(1, t_end steps // 20))" in text


def test_format_the_default_method_cannot_use_names_the_methods_that_can(tmp_path):
    result = invoke(short_run(tmp_path / "run", "--epochs", 1, "--format", "condensed"))
    assert_usage_error(result, "--format condensed", "default method rigl", "--method static", "--method srigl")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------
# delta_t auto, the printed plan, the refusal


def test_three_epochs_update_with_the_default_delta_t(tmp_path):
    """--epochs 3 on digits: 69 steps, t_end = 52, auto delta_t = max(1, 52 // 20) = 2, 26 updates, all
    printed before training and recorded in config.json (before: delta_t 100, no update, silently)."""
    out = tmp_path / "run"
    result = invoke(short_run(out, "--epochs", 3))
    assert result.exit_code == 0, result.output
    assert plan_line(result.output) == (
        "topology: 26 updates planned, every delta_t = 2 steps (auto) up to t_end = step 52 of 69; "
        "drop fraction 0.3 decaying to 0"
    )
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["delta_t"] == 2 and config["dst"]["delta_t"] == 2
    assert config["schedule"] == {
        "delta_t": 2, "delta_t_auto": True, "t_end_steps": 52, "total_steps": 69, "updates": 26,
    }
    assert metrics(out)[-1]["topology_updates"] == 26


def test_an_explicit_delta_t_is_kept_and_printed(tmp_path):
    result = invoke(short_run(tmp_path / "run", "--epochs", 3, "--delta-t", 5))
    assert result.exit_code == 0, result.output
    assert plan_line(result.output).startswith("topology: 10 updates planned, every delta_t = 5 steps up to t_end")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["schedule"]["delta_t_auto"] is False


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--method", "rigl", "--epochs", 3, "--delta-t", 100],
         ["--method rigl", "t_end = step 52", "lower --delta-t (now 100)", "--epochs", "--t-end"]),
        # t_end = round(0.05 x 23) = 1 step: auto gives 1, and the update at t_end has alpha_t = 0
        (["--method", "diag-rigl", "--epochs", 1, "--t-end", 0.05], ["--method diag-rigl", "t_end = step 1", "now 1"]),
        (["--method", "set", "--epochs", 1, "--alpha", 0], ["--alpha 0", "--method static"]),
        (["--epochs", 1, "--alpha", 0], ["--alpha 0", "--method rigl"]),
    ],
)
def test_a_dynamic_run_that_never_changes_the_topology_is_refused(tmp_path, extra, words):
    out = tmp_path / "run"
    assert_usage_error(invoke(short_run(out, *extra)), *words)
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, plan",
    [
        (["--method", "static", "--epochs", 1, "--delta-t", 100], "topology: fixed (static)"),
        (["--sparsity", 0, "--epochs", 1, "--delta-t", 100], "topology: fixed (dense)"),
        (["--method", "gse", "--epochs", 1, "--delta-t", 16], "topology: 1 update planned"),  # t_end = 17
    ],
)
def test_runs_that_are_not_refused(tmp_path, extra, plan):
    result = invoke(short_run(tmp_path / "run", *extra))
    assert result.exit_code == 0, result.output
    assert plan_line(result.output).startswith(plan)


def test_resume_keeps_the_delta_t_the_run_started_with(tmp_path, monkeypatch):
    """config.json holds the integer auto resolved to, and --resume uses it: even if auto would now
    give another value, the resumed run ends bit-identical to an uninterrupted one."""
    args = ("--epochs", 3, "--sparsity", 0.6, "--lr", 0.2)
    straight = tmp_path / "straight"
    assert invoke(short_run(straight, *args)).exit_code == 0

    crashed = tmp_path / "crashed"
    with killed_at_the_second_checkpoint(monkeypatch):
        assert isinstance(invoke(short_run(crashed, *args)).exception, Killed)

    monkeypatch.setattr(schedule_module, "auto_delta_t", lambda t_end_steps: 7)  # auto changed meanwhile
    resumed = invoke(["train", "--resume", crashed, "--delta-t", "auto", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "every delta_t = 2 steps (auto)" in plan_line(resumed.output)
    assert_same_run(straight, crashed)
    conflict = invoke(["train", "--resume", crashed, "--delta-t", 3, "--no-progress"])
    assert_usage_error(conflict, "--delta-t 3", "the run has 2")


# --------------------------------------------------------------------------------------------------
# the schedule: n_updates and auto_delta_t


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_n_updates_counts_the_update_steps(alpha):
    """n_updates(total) = the steps 1..total that are update steps; changing=True keeps those with
    alpha_t > 0 (not an update at t_end itself, none at alpha 0)."""
    for delta_t in range(1, 8):
        for t_end in range(1, 41):
            s = UpdateSchedule(delta_t=delta_t, alpha=alpha, t_end=t_end)
            for total in (None, 1, t_end - 1, t_end, t_end + 5):
                if total is not None and total < 1:
                    continue
                steps = range(1, (t_end if total is None else total) + 1)
                updates = [t for t in steps if is_update_step(t, delta_t, t_end)]
                assert s.n_updates(total) == len(updates), (delta_t, t_end, total)
                changing = [t for t in updates if drop_fraction(t, alpha, t_end) > 0]
                assert s.n_updates(total, changing=True) == len(changing), (delta_t, t_end, total, alpha)


def test_auto_delta_t_gives_at_least_20_updates_and_at_most_100_steps_between():
    for t_end in range(1, 3001):
        d = auto_delta_t(t_end)
        assert 1 <= d <= 100
        assert UpdateSchedule(delta_t=d, t_end=t_end).n_updates() >= min(20, t_end), t_end
        assert (d == 100) == (t_end >= 2000), t_end
    schedule = UpdateSchedule.from_fraction(20 * STEPS_PER_EPOCH, delta_t="auto")
    assert (schedule.delta_t, schedule.t_end, schedule.n_updates()) == (17, 345, 20)


def test_the_mnist_sweep_keeps_delta_t_100():
    """The sweep's cells leave --delta-t at its default, which on MNIST (60,000 training images) at the
    sweep's batch 64 over 20 epochs is 100, the value the published table was trained with."""
    budget = Budget()
    for cell in (Cell("rigl", 0.9, 0), Cell("diag-rigl", 0.99, 1), Cell("dense", 0.0, 0)):
        assert "--delta-t" not in budget.train_args(cell)
    steps = budget.epochs * math.ceil(60000 / budget.batch_size)
    assert UpdateSchedule.from_fraction(steps, delta_t="auto").delta_t == 100


# --------------------------------------------------------------------------------------------------
# updates that changed nothing


class Scripted(Method):
    """A method whose update returns the next statistics of a script (the structure never changes)."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)

    def update(self, u):
        return self.script.pop(0)


def test_updates_unchanged_counts_per_layer_and_epoch():
    """An update counts as unchanged for a layer when nothing was grown or dropped; the count is per
    epoch (reset by epoch_stats) and travels in the state dict."""
    model = build_mlp(6, "5", 3, fmt="csr", sparsity=0.5, rng=np.random.default_rng(0))
    same, moved = {"kept": 4, "grown": 0, "dropped": 0}, {"kept": 3, "grown": 1, "dropped": 1}
    # two layers, updates at steps 2, 4, 6: (layer0, layer1) per update
    script = [same, moved, same, same, moved, same]
    updater = DSTUpdater(Scripted(script), UpdateSchedule(delta_t=2, t_end=100), {"layer0": 15, "layer1": 8})
    updater.begin(model)
    for step in (1, 2, 3, 4):
        updater.after_step(step, model, None)
    stats = updater.epoch_stats(model)
    assert stats["topology_updates"] == 2
    assert [row["updates_unchanged"] for row in stats["layers"]] == [2, 1]
    updater.after_step(6, model, None)  # mid-epoch: layer0 moved, layer1 unchanged
    plain, arrays = split_arrays(updater.state_dict(), "topology")  # the explored sets are arrays
    state = join_arrays(json.loads(json.dumps(plain)), arrays)  # as a checkpoint stores it
    other = DSTUpdater(Scripted([]), UpdateSchedule(delta_t=2, t_end=100), {"layer0": 15, "layer1": 8})
    other.load_state_dict(state)
    for u in (updater, other):
        assert [row["updates_unchanged"] for row in u.epoch_stats(model)["layers"]] == [0, 1]
        assert [row["updates_unchanged"] for row in u.epoch_stats(model)["layers"]] == [0, 0]


def test_static_run_reports_every_update_as_unchanged(tmp_path):
    out = tmp_path / "run"
    result = invoke(short_run(out, "--method", "static", "--epochs", 2, "--delta-t", 5))
    assert result.exit_code == 0, result.output
    before = 0
    for m in metrics(out):
        this_epoch = m["topology_updates"] - before
        before = m["topology_updates"]
        assert [row["updates_unchanged"] for row in m["layers"]] == [this_epoch, this_epoch]
    assert before == 6  # updates at 5, 10, ..., 30 <= t_end = 34


def test_a_diag_rigl_layer_with_two_diagonals_changes_in_training(tmp_path):
    """At 90% the 10 x 16 output layer stores K = 2 diagonals: floor(0.3 K) = 0, so before the
    at-least-one rule it never changed; now it does, and not every update leaves it unchanged."""
    out = tmp_path / "run"
    result = invoke(short_run(out, "--method", "diag-rigl", "--epochs", 2, "--delta-t", 5))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["layers"][1]["shape"] == [10, 16] and config["layers"][1]["nnz"] == 2 * 10
    lines = metrics(out)
    assert sum(m["layers"][1]["changed"] for m in lines) > 0
    assert sum(m["layers"][1]["updates_unchanged"] for m in lines) < lines[-1]["topology_updates"]
