"""Growth from accumulated gradients: ``purerigl train --grad-accumulation N`` (issue 18, section 3).

Pins down: a sparse layer that keeps its last N (X, dY) pairs hands the growth rules their stacking,
whose G = dY^T X is the sum of the N batch gradients; every method that scores growth by gradient
(RigL, SRigL, GSE, diag-rigl) then chooses exactly what it chooses from that sum, on the reference,
cpu and (a tiny layer on the simulator) cuda backends; the training loop feeds an update the last N
batches across epoch ends and smaller last batches, never the warm-up batch; N = 1 keeps nothing and
hands over the last batch itself; ``--grad-accumulation`` is checked (exit 2 naming the option),
stored in config.json, and a ``--resume`` whose next update falls within N steps of the checkpoint
ends bit-identical to an uninterrupted run because checkpoint.npz keeps the batches.

The oracle is built another way: on integer-valued data (every sum exact in float32 and float64) the
dense sum G = sum_b dY_b^T X_b is accumulated in float64, and a second layer with the same weights is
given the single batch (X = I, dY = G^T), whose gradient is exactly G: both layers must make the same
update; RigL's grown set is also checked against a brute-force top-k of |G| and diag-rigl's scores
against the diagonal norms of G.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import purerigl.training.checkpoint as checkpoint
from purerigl import get_backend
from purerigl.data import from_arrays
from purerigl.dst import LayerUpdate, UpdateSchedule, make_method
from purerigl.dst.gse import GSE
from purerigl.dst.updater import DSTUpdater
from purerigl.formats._base import floor_count
from purerigl.formats.budget import random_layer_with_budget
from purerigl.kernels._rank_key import tie_ranks
from purerigl.kernels.host_topology import flat_positions
from purerigl.nn import SparseLinear, build_mlp
from purerigl.optim import SGD
from purerigl.training.loop import TrainConfig, Trainer
from test_cli_resume import Killed, arrays, assert_same_run, killed_at_the_second_checkpoint, metrics, run_args
from test_cli_train import assert_usage_error, invoke

BACKENDS = ["reference", "cpu"]
SHAPE = (7, 10)  # (n_out, n_in)
SIZES = (4, 3, 5, 2)  # batch sizes pushed; the window keeps the last N (the first drops out)
N = 3


def _batches(seed, shape=SHAPE, sizes=SIZES):
    """Integer-valued (X, dY) float32 batches: every product sum below is exact."""
    rng = np.random.default_rng(seed)
    n_out, n_in = shape
    return [
        (rng.integers(-3, 4, (b, n_in)).astype(np.float32), rng.integers(-3, 4, (b, n_out)).astype(np.float32))
        for b in sizes
    ]


def _dense_sum(batches) -> np.ndarray:
    """G = sum_b dY_b^T X_b accumulated densely in float64 (exact on integer data)."""
    G = np.zeros((batches[0][1].shape[1], batches[0][0].shape[1]))
    for X, dY in batches:
        G += dY.astype(np.float64).T @ X.astype(np.float64)
    return G


def _layer(fmt, backend, seed=0, shape=SHAPE, density=0.4):
    budget = int(density * shape[0] * shape[1])
    W = random_layer_with_budget(fmt, shape, budget, np.random.default_rng(seed))
    return SparseLinear(W.copy(), backend=backend, name="layer0")


def _fed(layer, batches, window):
    """``layer`` after keep_batches(window) and a forward and backward pass per batch."""
    layer.keep_batches(window)
    for X, dY in batches:
        layer.forward(layer.backend.to_device(X))
        layer.backward(layer.backend.to_device(dY))
    return layer


def _update(method, layer, salt=0x2545F491, alpha=0.5, is_output=False):
    opt = SGD(layer.parameters(), lr=0.1, momentum=0.9)
    budget = int(layer.matrix.values.size)
    u = LayerUpdate(layer, opt, alpha, np.random.default_rng(5), budget, is_output=is_output, salt=salt)
    return method.update(u)


def _structure(layer):
    W = layer.W.validate(full=True)
    return np.sort(flat_positions(W)), getattr(W, "rows", None)


# --------------------------------------------------------------------------------------------------
# the layer keeps the last N pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_batch_stacks_the_last_n_pairs(backend):
    """After N > 1 every backward keeps its pair; saved_batch (and last_input / last_output_grad) is
    the stacking of the last N, oldest first, smaller batches included: dY^T X is the dense sum."""
    batches = _batches(1)
    layer = _fed(_layer("csr", backend), batches, N)
    X, dY = layer.saved_batch()
    np.testing.assert_array_equal(X, np.vstack([x for x, _ in batches[-N:]]))
    np.testing.assert_array_equal(dY, np.vstack([d for _, d in batches[-N:]]))
    assert X.shape[0] == sum(SIZES[-N:])
    np.testing.assert_array_equal(dY.astype(np.float64).T @ X.astype(np.float64), _dense_sum(batches[-N:]))
    np.testing.assert_array_equal(layer.last_input, X)
    np.testing.assert_array_equal(layer.last_output_grad, dY)
    assert layer.batches_kept == N and len(layer.kept_batches()) == N
    layer.keep_batches(2)  # a smaller window keeps the newest pairs
    np.testing.assert_array_equal(layer.saved_batch()[0], np.vstack([x for x, _ in batches[-2:]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_batch_keeps_nothing_and_hands_over_the_last_batch(backend):
    """N = 1 (the default) is the behaviour without accumulation: saved_batch is the very (X, dY) of
    the last forward and backward, and no pair is kept."""
    batches = _batches(2)
    layer = _fed(_layer("csr", backend), batches, 1)
    X, dY = layer.saved_batch()
    assert X is layer._X and dY is layer._dY
    np.testing.assert_array_equal(X, batches[-1][0])
    assert layer.kept_batches() == [] and layer.batches_kept == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_keep_batches_refuses_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        _layer("csr", "cpu").keep_batches(bad)
    with pytest.raises(ValueError, match="grad_accumulation"):
        DSTUpdater(make_method("rigl", "csr"), UpdateSchedule(delta_t=2, t_end=10), {}, grad_accumulation=bad)


# --------------------------------------------------------------------------------------------------
# every method that scores by gradient chooses from the dense sum

GRADIENT_METHODS = [
    ("rigl", "csr", {}),
    ("srigl", "condensed", {"gamma_sal": 0.3}),
    ("srigl", "condensed", {"gamma_sal": 0.0}),
    ("gse", "csr", {}),
    ("gse", "condensed", {}),
    ("diag-rigl", "diagonal", {}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method, fmt, options", GRADIENT_METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_update_from_n_batches_equals_update_from_their_dense_sum(backend, method, fmt, options, seed):
    """The update of a layer that kept N batches equals that of a layer (same weights) given one
    batch whose gradient is the float64 dense sum of the N: same structure, same statistics."""
    batches = _batches(10 + seed)
    accumulated = _fed(_layer(fmt, backend, seed), batches, N)
    G = _dense_sum(batches[-N:])
    assert np.abs(G).max() < 2**24  # exact in float32
    n_in = SHAPE[1]
    oracle = _fed(_layer(fmt, backend, seed), [(np.eye(n_in, dtype=np.float32), G.T.astype(np.float32))], 1)
    np.testing.assert_array_equal(
        oracle.saved_batch()[1].astype(np.float64).T @ oracle.saved_batch()[0].astype(np.float64), G
    )
    got = _update(make_method(method, fmt, **options), accumulated)
    want = _update(make_method(method, fmt, **options), oracle)
    assert got == want
    (pos_a, rows_a), (pos_b, rows_b) = _structure(accumulated), _structure(oracle)
    np.testing.assert_array_equal(pos_a, pos_b)
    if rows_a is not None:
        np.testing.assert_array_equal(rows_a, rows_b)
    assert got["grown"] > 0


def _brute_force_rigl(W, G, alpha, salt):
    """RigL's kept and grown flat positions from the dense G (float64), equal scores to the smaller tie rank."""
    n = W.nnz
    n_prune = floor_count(alpha, n)
    flat = flat_positions(W)
    order = np.argsort(flat)
    flat, mag = flat[order], np.abs(W.values.astype(np.float64)[order])
    kept = np.sort(flat[np.lexsort((tie_ranks(flat, salt), -mag))[: n - n_prune]])
    score = np.abs(G).ravel()
    candidates = np.setdiff1d(np.arange(score.size), kept)
    grown = candidates[np.lexsort((tie_ranks(candidates, salt), -score[candidates]))[:n_prune]]
    return np.union1d(kept, grown)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rigl_grows_the_top_of_the_dense_sum(backend, seed):
    """RigL with N batches grows the top-|G| positions of the dense sum (brute force), which here
    differ from those of the last batch alone."""
    batches = _batches(20 + seed)
    layer = _layer("csr", backend, seed)
    old = layer.W.copy()
    _fed(layer, batches, N)
    salt = 77
    _update(make_method("rigl", "csr"), layer, salt=salt)
    now = np.sort(flat_positions(layer.W))
    np.testing.assert_array_equal(now, _brute_force_rigl(old, _dense_sum(batches[-N:]), 0.5, salt))
    assert not np.array_equal(now, _brute_force_rigl(old, _dense_sum(batches[-1:]), 0.5, salt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7, 10), (10, 7)])
def test_diagonal_scores_of_the_stack_are_the_norms_of_the_dense_sum(backend, shape):
    """diag-rigl's growth scores from the stacked batch: the L2 norm of the dense sum along each
    wrap-around diagonal."""
    batches = _batches(30, shape=shape)
    layer = _fed(_layer("diagonal", backend, shape=shape), batches, N)
    X, dY = layer.saved_batch()
    got = np.asarray(get_backend(backend).diag_grad_norms(X, dY), dtype=np.float64)
    G = _dense_sum(batches[-N:])
    n_out, n_in = shape
    i, j = np.indices(shape)
    d = (i - j) % n_out if n_out >= n_in else (j - i) % n_in
    want = np.sqrt(np.bincount(d.ravel(), weights=(G**2).ravel(), minlength=max(shape)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gse_samplers_read_the_stacked_batch():
    """GSE's samplers that read the batch (GraBo, GraEst, custom) get the stacked N batches."""
    seen = []

    def spy(rng, n_out, n_in, n_samples, X, dY):
        seen.append((X.copy(), dY.copy()))
        flat = rng.choice(n_out * n_in, size=n_samples, replace=False)
        return flat // n_in, flat % n_in

    batches = _batches(40)
    layer = _fed(_layer("csr", "cpu"), batches, N)
    _update(GSE(sampler=spy), layer)
    (X, dY), = seen
    np.testing.assert_array_equal(X, np.vstack([x for x, _ in batches[-N:]]))
    np.testing.assert_array_equal(dY, np.vstack([d for _, d in batches[-N:]]))


def test_cuda_keeps_device_arrays_and_updates_like_cpu():
    """On cuda (the simulator here) the kept pairs and their stacking stay device arrays, and a RigL
    and an SRigL update from N batches equal the cpu backend's."""
    cuda = get_backend("cuda")
    shape = (5, 6)
    batches = _batches(50, shape=shape, sizes=(3, 2, 3))
    for method, fmt in (("rigl", "csr"), ("srigl", "condensed")):
        structures = []
        for backend in ("cpu", "cuda"):
            layer = _fed(_layer(fmt, backend, shape=shape, density=0.5), batches, 2)
            if backend == "cuda":
                X, dY = layer.saved_batch()
                assert not isinstance(X, np.ndarray) and not isinstance(dY, np.ndarray)
                assert all(not isinstance(a, np.ndarray) for pair in layer.kept_batches() for a in pair)
                np.testing.assert_array_equal(cuda.to_host(X), np.vstack([x for x, _ in batches[-2:]]))
            _update(make_method(method, fmt), layer)
            structures.append(_structure(layer))
        np.testing.assert_array_equal(structures[0][0], structures[1][0])


# --------------------------------------------------------------------------------------------------
# the training loop


class _Recording(DSTUpdater):
    """A DSTUpdater that remembers every step's batch of layer0 and, at each update, the stacked batch
    the method read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps, self.read = [], []

    def after_step(self, step, model, optimizer):
        layer = model.sparse_layers()[0]
        X, dY = layer._row_layout(layer._X, layer._dY, layer._feature_major)  # the MLP steps feature-major
        self.steps.append((np.array(X), np.array(dY)))
        if self.schedule.is_update_step(step):
            X, dY = layer.saved_batch()
            self.read.append((step, np.array(X), np.array(dY)))
        return super().after_step(step, model, optimizer)


def _trainer(method, fmt, window, delta_t=2, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)  # 50 / 16: batches 16, 16, 16, 2 an epoch
    y = rng.integers(0, 3, 50)
    data = from_arrays("blobs", x, y, x[:10], y[:10], n_classes=3)
    model = build_mlp(8, "12", 3, fmt=fmt, sparsity=0.6, backend="cpu", rng=1)
    budgets = {lin.name: int(lin.W.nnz) for lin in model.sparse_layers()}
    updater = _Recording(make_method(method, fmt), UpdateSchedule(delta_t=delta_t, alpha=0.3, t_end=8), budgets,
                         seed=0, grad_accumulation=window)
    return Trainer(model, data, TrainConfig(epochs=epochs, batch_size=16, lr=0.05), topology=updater)


def test_updates_read_the_last_n_batches_across_epoch_ends():
    """Each update reads the last N steps' batches (the first only the ones so far, never the warm-up
    batch), across the epoch's end and its smaller last batch."""
    trainer = _trainer("rigl", "csr", N)
    trainer.fit()
    rec = trainer.topology
    assert [step for step, _, _ in rec.read] == [2, 4, 6, 8]
    for step, X, dY in rec.read:
        window = rec.steps[max(0, step - N):step]
        np.testing.assert_array_equal(X, np.vstack([x for x, _ in window]))
        np.testing.assert_array_equal(dY, np.vstack([d for _, d in window]))
    assert [X.shape[0] for _, X, _ in rec.read] == [32, 34, 34, 34]  # 16+16; 16+16+2; 2+16+16; 16+16+2


def test_set_keeps_no_batches_and_one_batch_changes_nothing():
    """SET does not score by gradient: its layers keep no batch whatever N. With N = 1 a run is the
    run without the option: same weights and topology."""
    trainer = _trainer("set", "csr", N)
    trainer.fit()
    assert all(layer.batches_kept == 1 and layer.kept_batches() == [] for layer in trainer.model.sparse_layers())

    runs = []
    for window in (None, 1):
        trainer = _trainer("rigl", "csr", 1)
        if window is None:  # built without the argument
            up = trainer.topology
            trainer.topology = _Recording(up.method, up.schedule, up.budgets, seed=0)
        trainer.fit()
        runs.append([p.host.copy() for p in trainer.model.parameters()])
        assert [X.shape[0] for _, X, _ in trainer.topology.read] == [16, 2, 16, 2]  # the last batch alone
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# the command line and --resume


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "two"])
def test_bad_values_are_usage_errors_naming_the_option(bad, tmp_path):
    result = invoke(run_args(tmp_path / "run", "rigl", "--grad-accumulation", bad))
    assert_usage_error(result, "--grad-accumulation")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["rigl", "srigl"])
def test_resume_within_n_steps_of_the_checkpoint_is_bit_identical(method, tmp_path, monkeypatch):
    """23 steps an epoch, delta_t 5, N 3: the update at step 25 reads the batches of steps 23 to 25,
    and the run crashes after the checkpoint of epoch 1 (step 23). checkpoint.npz holds each sparse
    layer's kept batches, so the resumed run ends bit-identical to an uninterrupted one; config.json
    records the option."""
    extra = ("--grad-accumulation", 3)
    straight = tmp_path / "straight"
    assert invoke(run_args(straight, method, *extra)).exit_code == 0
    stored = json.loads((straight / "config.json").read_text())
    assert stored["options"]["grad_accumulation"] == 3 and stored["dst"]["grad_accumulation"] == 3

    held, _ = arrays(straight / "checkpoint.npz")
    for i, (n_in, n_out) in enumerate([(64, 48), (48, 24), (24, 10)]):
        rows = held[f"kept.layer{i}.rows"]
        assert rows.tolist() == [64, 64, 30]  # the last 3 batches of an epoch: 1438 = 22 * 64 + 30 samples
        assert held[f"kept.layer{i}.x"].shape == (158, n_in) and held[f"kept.layer{i}.dy"].shape == (158, n_out)

    def crashed_run(name):
        out = tmp_path / name
        with killed_at_the_second_checkpoint(monkeypatch):
            assert isinstance(invoke(run_args(out, method, *extra)).exception, Killed)
        return out

    crashed = crashed_run("crashed")
    resumed = invoke(["train", "--resume", crashed, "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(straight, crashed)

    if method == "rigl":  # the stored batches are what makes it exact: without them the run differs
        forgetful = crashed_run("forgetful")
        with monkeypatch.context() as m:
            m.setattr(checkpoint, "_kept_pairs", lambda *args: None)
            assert invoke(["train", "--resume", forgetful, "--no-progress"]).exit_code == 0
        assert metrics(forgetful)[:1] == metrics(straight)[:1]
        assert metrics(forgetful)[1:] != metrics(straight)[1:]


def test_a_run_written_before_the_option_resumes_with_one_batch(tmp_path):
    """A config.json without grad_accumulation (an older run) resumes as N = 1."""
    out = tmp_path / "run"
    assert invoke(run_args(out, "static", "--epochs", 1)).exit_code == 0
    stored = json.loads((out / "config.json").read_text())
    del stored["options"]["grad_accumulation"]
    (out / "config.json").write_text(json.dumps(stored))
    result = invoke(["train", "--resume", out, "--no-progress"])
    assert result.exit_code == 0, result.output
