"""The explored fraction of each sparse layer (``explored`` in metrics.jsonl: the in-time
over-parameterisation rate, Liu et al. 2021), kept by :class:`~purerigl.dst.updater.DSTUpdater`.

Pins down: for every method the fraction and the stored set equal an oracle that ORs each step's
structure into a dense boolean mask of the (small) layers, also across the queue's early merges and
several epochs; it never decreases; static stays at its density while RigL grows above it; the set
travels in the updater's state and in checkpoint.npz (``topology.explored.layer{i}`` arrays), a
crashed and resumed ``purerigl train`` ends with the same values as an uninterrupted run, and a
checkpoint without the arrays still resumes; bad restored sets are refused; the cuda backend
(simulator) keeps the same sets as cpu; ``purerigl plot`` draws the explored panel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import purerigl.cli.train as cli_train
import purerigl.dst.updater as updater_module
from purerigl.data.datasets import from_arrays
from purerigl.dst import UpdateSchedule, make_method
from purerigl.dst.updater import DSTUpdater
from purerigl.kernels.host_topology import flat_positions
from purerigl.nn import build_mlp, softmax_cross_entropy
from purerigl.optim import SGD
from purerigl.training.checkpoint import CheckpointError, join_arrays, load_training_state, split_arrays
from purerigl.training.loop import TrainConfig, Trainer
from test_cli_resume import Killed, assert_same_run, killed_at_the_second_checkpoint, metrics, run_args
from test_cli_train import invoke

CASES = [("rigl", "csr"), ("set", "csr"), ("set", "condensed"), ("srigl", "condensed"), ("gse", "csr"),
         ("diag-rigl", "diagonal"), ("static", "condensed")]


def mask_of(W):
    """The structure as a dense bool matrix, through SciPy (explicit zeros count as stored)."""
    m = W.to_scipy()
    out = np.zeros(W.shape, dtype=bool)
    out[np.repeat(np.arange(W.n_out), np.diff(m.indptr)), m.indices] = True
    return out


def run_with_oracle(method, fmt, epochs=3, steps_per_epoch=10, delta_t=2, seed=0):
    """Train a 10-12-3 MLP at 70% by hand, OR-ing every step's structure into a dense mask per layer.
    Returns (model, updater, per-epoch stats, masks)."""
    rng = np.random.default_rng(seed)
    model = build_mlp(10, "12", 3, fmt=fmt, sparsity=0.7, backend="cpu", rng=seed)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
    total = epochs * steps_per_epoch
    updater = DSTUpdater(make_method(method, fmt), UpdateSchedule(delta_t=delta_t, alpha=0.3, t_end=total + 1),
                         budgets, seed=seed)
    updater.begin(model)
    masks = {lin.name: mask_of(lin.W) for lin in model.sparse_layers()}
    history = []
    for step in range(1, total + 1):
        X = rng.standard_normal((8, 10)).astype(np.float32)
        _, d = softmax_cross_entropy(model.forward(X), rng.integers(0, 3, 8))
        model.backward(d)
        opt.step()
        updater.after_step(step, model, opt)
        for lin in model.sparse_layers():
            masks[lin.name] |= mask_of(lin.W)
        if step % steps_per_epoch == 0:
            history.append(updater.epoch_stats(model))
            for row in history[-1]["layers"]:
                assert row["explored"] == pytest.approx(masks[row["layer"]].mean(), abs=0), (step, row["layer"])
    return model, updater, history, masks


@pytest.mark.parametrize("method, fmt", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_explored_equals_the_dense_mask_oracle(method, fmt):
    """15 updates over 3 epochs: each epoch's fraction is the mean of the OR of all structures so far,
    the stored set is exactly that mask's flat positions, and it never decreases; static stays at its
    density, the dynamic methods grow above it."""
    model, updater, history, masks = run_with_oracle(method, fmt)
    state = updater.state_dict()
    for lin in model.sparse_layers():
        stored = state["explored"][lin.name]
        assert stored.dtype == np.int64
        np.testing.assert_array_equal(stored, np.flatnonzero(masks[lin.name]))
        series = [next(r for r in h["layers"] if r["layer"] == lin.name)["explored"] for h in history]
        assert series == sorted(series), series  # never decreases
        density = lin.W.density
        if method == "static":
            assert series == [pytest.approx(density, abs=0)] * len(series)
        else:
            assert series[-1] > density
    if method != "static":
        assert max(updater.explored(model).values()) > 0


def test_the_queue_merges_early_with_the_same_result(monkeypatch):
    """With EXPLORED_QUEUE = 2 the queued structures are merged every second update; the sets are the
    same as with the default queue."""
    _, default, _, masks = run_with_oracle("rigl", "csr", epochs=1, steps_per_epoch=20, delta_t=1)
    monkeypatch.setattr(updater_module, "EXPLORED_QUEUE", 2)
    _, early, _, _ = run_with_oracle("rigl", "csr", epochs=1, steps_per_epoch=20, delta_t=1)
    for name, mask in masks.items():
        np.testing.assert_array_equal(early.state_dict()["explored"][name], np.flatnonzero(mask))
        np.testing.assert_array_equal(default.state_dict()["explored"][name], np.flatnonzero(mask))


def test_state_round_trip_and_refusals():
    """The sets survive split_arrays / JSON / join_arrays (what a checkpoint does) and load_state_dict;
    a restored set that is unsorted or not integer is refused; a state without sets (an older
    checkpoint) restarts them from the structure at begin."""
    model, updater, _, masks = run_with_oracle("rigl", "csr", epochs=1)
    plain, arrays = split_arrays(updater.state_dict(), "topology")
    assert set(arrays) == {"topology.explored.layer0", "topology.explored.layer1"}
    assert plain["explored"] == {name: {"npz": f"topology.explored.{name}"} for name in ("layer0", "layer1")}
    state = join_arrays(json.loads(json.dumps(plain)), arrays)
    other = DSTUpdater(make_method("rigl", "csr"), UpdateSchedule(delta_t=2), {}, seed=0)
    other.load_state_dict(state)
    other.begin(model)  # a resumed run: the current structure is already in the set
    assert other.explored(model) == updater.explored(model)
    with pytest.raises(CheckpointError, match="topology.explored.layer1"):
        join_arrays(plain, {"topology.explored.layer0": arrays["topology.explored.layer0"]})
    for bad in (arrays["topology.explored.layer0"][::-1], np.array([0.5, 1.5])):
        with pytest.raises(ValueError, match="explored set of layer0"):
            DSTUpdater(make_method("rigl", "csr"), UpdateSchedule(), {}).load_state_dict({**state, "explored": {"layer0": bad}})
    older = {k: v for k, v in state.items() if k != "explored"}
    fresh = DSTUpdater(make_method("rigl", "csr"), UpdateSchedule(delta_t=2), {}, seed=0)
    fresh.load_state_dict(older)
    fresh.begin(model)
    assert fresh.explored(model) == {lin.name: lin.W.density for lin in model.sparse_layers()}


# --------------------------------------------------------------------------------------------------
# purerigl train: metrics, checkpoint, resume


def test_checkpoint_holds_the_sets_and_a_resumed_run_ends_the_same(tmp_path, monkeypatch):
    """A rigl run that dies while writing its second checkpoint and is resumed ends with the same
    metrics and checkpoint arrays as an uninterrupted run (assert_same_run); its checkpoint holds one
    strictly increasing int64 set per sparse layer whose size over n_out * n_in is the last epoch's
    explored, containing the final structure; explored never decreases and ends above the density.
    A checkpoint without the sets (an older one) still resumes."""
    straight = tmp_path / "straight"
    assert invoke(run_args(straight, "rigl")).exit_code == 0
    rows = metrics(straight)
    with np.load(straight / "checkpoint.npz", allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        sets = {k: f[k] for k in f.files if k.startswith("topology.")}
    assert set(sets) == {"topology.explored.layer0", "topology.explored.layer1", "topology.explored.layer2"}
    for i, layer in enumerate(meta["layers"]):
        explored = sets[f"topology.explored.layer{i}"]
        assert explored.dtype == np.int64 and (np.diff(explored) > 0).all()
        n_out, n_in = layer["shape"]
        series = [m["layers"][i]["explored"] for m in rows]
        assert series == sorted(series) and series[-1] > rows[-1]["layers"][i]["density"]
        assert explored.size / (n_out * n_in) == series[-1]
        assert meta["train"]["topology"]["explored"][f"layer{i}"] == {"npz": f"topology.explored.layer{i}"}
    trainer, _ = cli_train.build_run(json.loads((straight / "config.json").read_text())["options"])
    load_training_state(straight / "checkpoint.npz", trainer)
    for lin in trainer.model.sparse_layers():
        final = np.sort(flat_positions(lin.W))
        assert np.isin(final, sets[f"topology.explored.{lin.name}"]).all()

    crashed = tmp_path / "crashed"
    with killed_at_the_second_checkpoint(monkeypatch):
        assert isinstance(invoke(run_args(crashed, "rigl")).exception, Killed)
    resumed = invoke(["train", "--resume", crashed, "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(straight, crashed)

    # an older checkpoint: no topology arrays, no "explored" in the state; it resumes, the set restarts
    older = tmp_path / "older"
    with killed_at_the_second_checkpoint(monkeypatch):
        assert isinstance(invoke(run_args(older, "rigl")).exception, Killed)
    with np.load(older / "checkpoint.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if not k.startswith("topology.")}
    meta = json.loads(str(arrays.pop("meta")))
    del meta["train"]["topology"]["explored"]
    np.savez(older / "checkpoint.npz", meta=np.array(json.dumps(meta)), **arrays)
    assert invoke(["train", "--resume", older, "--no-progress"]).exit_code == 0
    again = metrics(older)
    assert again[0] == rows[0]  # epoch 1 ran before the checkpoint
    for i in range(3):  # restarted from epoch 1's structure: it covers less than the whole run
        assert again[-1]["layers"][i]["density"] < again[-1]["layers"][i]["explored"] <= rows[-1]["layers"][i]["explored"]


def test_static_run_stays_at_its_density(tmp_path):
    out = tmp_path / "static"
    assert invoke(run_args(out, "static", "--epochs", 2)).exit_code == 0
    for m in metrics(out):
        for row in m["layers"]:
            assert row["explored"] == row["density"]


# --------------------------------------------------------------------------------------------------
# cuda (simulator): the same sets, positions left on the device until the merge


def test_cuda_keeps_the_same_sets_as_cpu(monkeypatch):
    """2 epochs of 2 steps, an update after each: the cuda run's fractions and sets are cpu's."""
    from purerigl.errors import BackendError
    from purerigl.kernels import get_backend

    try:
        cuda = get_backend("cuda")
    except BackendError as err:
        pytest.skip(f"no cuda backend: {err}")
    from purerigl.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "THREADS_PER_BLOCK", 4)  # the simulator runs every thread of a block
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((24, 10)).astype(np.float32), rng.integers(0, 3, 24)
    data = from_arrays("tiny", x[:16], y[:16], x[16:], y[16:], n_classes=3)
    runs = []
    for backend in ("cpu", cuda):
        model = build_mlp(10, "12", 3, fmt="csr", sparsity=0.7, backend=backend, rng=0)
        budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
        updater = DSTUpdater(make_method("rigl", "csr"), UpdateSchedule(delta_t=1, alpha=0.3, t_end=100), budgets)
        trainer = Trainer(model, data, TrainConfig(epochs=2, batch_size=8, seed=0), topology=updater)
        runs.append((trainer.fit(warm_up=False), updater.state_dict()["explored"]))
    (h_cpu, s_cpu), (h_gpu, s_gpu) = runs
    assert all(r["explored"] > r["density"] for r in h_cpu[-1]["layers"])
    assert [[r["explored"] for r in m["layers"]] for m in h_gpu] == [[r["explored"] for r in m["layers"]] for m in h_cpu]
    for name in s_cpu:
        assert isinstance(s_gpu[name], np.ndarray)
        np.testing.assert_array_equal(s_gpu[name], s_cpu[name])


# --------------------------------------------------------------------------------------------------
# purerigl plot


def test_plot_draws_the_explored_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from purerigl.report.plots import figure_density

    _, _, history, _ = run_with_oracle("rigl", "csr")
    records = [{"epoch": e, **h} for e, h in enumerate(history, 1)]
    fig = figure_density(records)
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "explored"]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    for name in ("layer0", "layer1"):
        assert lines[name] == [next(r for r in h["layers"] if r["layer"] == name)["explored"] for h in history]
    older = [{**m, "layers": [{k: v for k, v in r.items() if k != "explored"} for r in m["layers"]]} for m in records]
    assert "explored" not in [ax.get_title() for ax in figure_density(older).axes]

    run = tmp_path / "run"
    assert invoke(run_args(run, "rigl", "--epochs", 2)).exit_code == 0
    result = invoke(["plot", run])
    assert result.exit_code == 0, result.output
    assert (run / "plots" / "density.png").read_bytes().startswith(b"\x89PNG")
