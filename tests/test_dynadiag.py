"""DynaDiag, the paper's method (PAPERS.md 4.3): the soft top-K gate and its backward against finite
differences and a dense Jacobian, the gated layer against the plain NumPy specification
(:mod:`purerigl.dst.spec.dynadiag`, a dense route with loops), the temperature, the freeze to exactly
K diagonals with gate 1, the window swap against the specification, and training with every storage
and freeze mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from purerigl import get_backend
from purerigl.data import load_dataset
from purerigl.dst import METHODS, make_method, resolve_format
from purerigl.dst.distribution import layer_budgets
from purerigl.dst.dynadiag import (
    FREEZE_SALT, DynaDiagOptions, DynaDiagUpdater, default_freeze_epoch, freeze_epoch_of, gate_model, stored_diagonals,
    temperature_at,
)
from purerigl.dst.base import MethodError
from purerigl.dst.schedule import UpdateSchedule
from purerigl.dst.spec import dynadiag as spec
from purerigl.dst.spec.agreement import compare_with_spec
from purerigl.dst.topology import tie_salt
from purerigl.formats import Diagonal
from purerigl.nn import GatedDiagonalLinear, SparseLinear, build_mlp
from purerigl.nn.diagonal_gate import soft_top_k, soft_top_k_backward, soft_top_k_jacobian
from purerigl.training.loop import TrainConfig, Trainer

BACKENDS = ["reference", "cpu"]


# --------------------------------------------------------------------------------------------------
# the gate


@given(P=st.integers(1, 12), K=st.integers(1, 12), T=st.floats(0.05, 5.0), seed=st.integers(0, 2**16))
def test_gate_matches_the_specification_and_sums_to_at_most_k(P, K, T, seed):
    K = min(K, P)
    alpha = np.random.default_rng(seed).normal(size=P).astype(np.float32)
    g = soft_top_k(alpha, K, T)
    np.testing.assert_allclose(g, spec.gate(alpha, K, T), rtol=1e-12, atol=1e-15)
    assert np.all((g >= 0) & (g <= 1)) and g.sum() <= K + 1e-9


def test_gate_at_the_official_initialisation_is_k_over_p():
    P, K = 784, 79
    g = soft_top_k(np.full(P, 1 / P, np.float32), K, 5.0)
    np.testing.assert_allclose(g, K / P)


@given(P=st.integers(2, 10), K=st.integers(1, 10), T=st.floats(0.1, 3.0), seed=st.integers(0, 2**16))
def test_gate_backward_is_the_jacobian_transpose_product(P, K, T, seed):
    K = min(K, P)
    rng = np.random.default_rng(seed)
    alpha, d_gate = rng.normal(size=P), rng.normal(size=P)
    want = spec.jacobian(alpha, K, T).T @ d_gate
    np.testing.assert_allclose(soft_top_k_backward(alpha, K, T, d_gate), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(soft_top_k_jacobian(alpha, K, T), spec.jacobian(alpha, K, T), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("K", [1, 3, 6])
def test_gate_backward_against_finite_differences(K):
    """Central differences of L = <c, gate(alpha)> in float64, away from the clamp's kink."""
    rng = np.random.default_rng(K)
    P, T, eps = 8, 0.7, 1e-6
    alpha, c = rng.normal(size=P), rng.normal(size=P)
    z = K * np.exp(alpha / T) / np.exp(alpha / T).sum()
    assert np.all(np.abs(z - 1) > 1e-3)  # no entry at the kink
    numeric = np.array([(c @ soft_top_k(alpha + eps * e, K, T) - c @ soft_top_k(alpha - eps * e, K, T)) / (2 * eps)
                        for e in np.eye(P)])
    np.testing.assert_allclose(soft_top_k_backward(alpha, K, T, c), numeric, rtol=1e-6, atol=1e-9)
    if K >= 3:  # some gates clamp at 1 here: their derivative is 0, and the test covers the clamp
        assert np.any(z > 1)


# --------------------------------------------------------------------------------------------------
# the gated layer


@pytest.mark.parametrize("backend_name", BACKENDS)
@given(shape=st.sampled_from([(12, 5), (5, 12), (8, 8), (1, 6), (6, 1)]), data=st.data())
def test_layer_forward_and_gradients_match_the_specification(backend_name, shape, data):
    P, L = max(shape), min(shape)
    S = data.draw(st.integers(1, P))
    K = data.draw(st.integers(1, P))
    T = data.draw(st.floats(0.1, 5.0))
    B = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.choice(P, S, replace=False)).astype(np.int32)
    W = Diagonal(offsets, rng.normal(size=(S, L)).astype(np.float32), shape)
    alpha = rng.normal(size=P).astype(np.float32)
    bias = rng.normal(size=shape[0]).astype(np.float32)
    X = rng.normal(size=(B, shape[1])).astype(np.float32)
    dY = rng.normal(size=(B, shape[0])).astype(np.float32)
    l1 = data.draw(st.sampled_from([0.0, 0.01]))
    layer = GatedDiagonalLinear(W.copy(), K, alpha=alpha, temperature=T, l1=l1, bias=bias, backend=backend_name)
    Y = layer.forward(X)
    dX = layer.backward(dY)
    np.testing.assert_allclose(Y, spec.forward(X, offsets, W.values, alpha, K, T, bias), rtol=1e-4, atol=1e-4)
    want = spec.backward(X, dY, offsets, W.values, alpha, K, T, l1=l1)
    np.testing.assert_allclose(layer.weight.grad, want["values"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.alpha.grad, want["alpha"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.bias.grad, want["bias"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dX, want["X"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("layout", ["rows", "feature-major"])
def test_layer_regates_every_step_and_follows_a_new_structure(backend_name, layout):
    """The gated matrix is kept between steps and rewritten in place: each forward must use this
    step's alpha, values and temperature, and a new structure (set_structure) its own diagonals."""
    rng = np.random.default_rng(11)
    shape, K, P = (6, 9), 3, 9
    W = Diagonal(np.array([0, 2, 5, 7], np.int32), rng.normal(size=(4, 6)).astype(np.float32), shape)
    layer = GatedDiagonalLinear(W.copy(), K, alpha=rng.normal(size=P), temperature=0.7, backend=backend_name)
    ops = layer.backend
    X = rng.normal(size=(5, 9)).astype(np.float32)

    def forward():
        if layout == "rows":
            return ops.to_host(layer.forward(ops.to_device(X)))
        return ops.to_host(layer.forward_fm(ops.to_device(np.ascontiguousarray(X.T)))).T + layer.bias.host

    def expected():
        M = layer.W
        return spec.forward(X, M.offsets, M.values, layer.alpha.value, K, layer.temperature, layer.bias.host)

    for step in range(3):
        np.testing.assert_allclose(forward(), expected(), rtol=1e-5, atol=1e-5)
        layer.alpha.value[...] = rng.normal(size=P)  # what alpha's optimizer does between steps
        layer.W.values[...] = rng.normal(size=layer.W.values.shape)  # and the model's optimizer
        layer.sync_to_device()
        layer.temperature *= 0.5
    first = layer._effective
    np.testing.assert_allclose(forward(), expected(), rtol=1e-5, atol=1e-5)
    assert layer._effective is first  # one gated matrix per structure, not one per step
    layer.set_structure(Diagonal(np.array([1, 3, 4, 6, 8], np.int32), rng.normal(size=(5, 6)).astype(np.float32), shape))
    np.testing.assert_allclose(forward(), expected(), rtol=1e-5, atol=1e-5)
    assert layer._effective is not first and layer._effective.values.shape == (5, 6)


def test_layer_alpha_gradient_against_finite_differences_of_the_loss():
    """dL/dalpha of L = <R, Y> from the layer (float32) against central differences of the
    specification's float64 forward: the whole chain, products and gate together."""
    rng = np.random.default_rng(3)
    shape, K, T, eps = (7, 5), 3, 0.8, 1e-6
    W = Diagonal(np.array([0, 2, 3, 6], np.int32), rng.normal(size=(4, 5)).astype(np.float32), shape)
    alpha = rng.normal(size=7)
    X, R = rng.normal(size=(3, 5)), rng.normal(size=(3, 7))
    layer = GatedDiagonalLinear(W.copy(), K, alpha=alpha, temperature=T, backend="reference")
    layer.forward(X.astype(np.float32))
    layer.backward(R.astype(np.float32))

    def loss(a):
        return float(np.sum(R * spec.forward(X, W.offsets, W.values, a, K, T, np.zeros(7))))

    numeric = np.array([(loss(alpha + eps * e) - loss(alpha - eps * e)) / (2 * eps) for e in np.eye(7)])
    np.testing.assert_allclose(layer.alpha.grad, numeric, rtol=1e-3, atol=1e-5)
    assert np.abs(numeric).max() > 1e-3  # the test is not vacuous


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_frozen_layer_is_the_plain_diagonal_layer(backend_name):
    rng = np.random.default_rng(0)
    W = Diagonal.random((9, 13), None, rng, K=4)
    X, dY = rng.normal(size=(5, 13)).astype(np.float32), rng.normal(size=(5, 9)).astype(np.float32)
    gated = GatedDiagonalLinear(W.copy(), 4, temperature=0.1, frozen=True, backend=backend_name)
    plain = SparseLinear(W.copy(), backend=backend_name)
    np.testing.assert_array_equal(gated.forward(X), plain.forward(X))
    np.testing.assert_array_equal(gated.backward(dY), plain.backward(dY))
    np.testing.assert_array_equal(gated.weight.grad, plain.weight.grad)
    assert gated.effective_k() == 4 and np.array_equal(gated.gates(), np.ones(4))


def test_layer_refuses_bad_arguments():
    W = Diagonal.random((6, 4), None, np.random.default_rng(0), K=2)
    with pytest.raises(ValueError, match="1 <= K <= P"):
        GatedDiagonalLinear(W, 7)
    with pytest.raises(ValueError, match=r"expected \(P,\)"):
        GatedDiagonalLinear(W, 2, alpha=np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        GatedDiagonalLinear(W, 2, alpha=np.full(6, np.nan))


# --------------------------------------------------------------------------------------------------
# temperature, freeze epoch, window size


@pytest.mark.parametrize("epochs", [1, 2, 7, 100])
def test_temperature_is_the_official_cosine(epochs):
    for e in range(epochs + 3):
        assert temperature_at(e, epochs) == pytest.approx(spec.temperature(e, epochs))
    assert temperature_at(0, epochs) == pytest.approx(5.0)
    if epochs > 1:
        assert temperature_at(epochs - 1, epochs) == pytest.approx(0.05)
        assert temperature_at(epochs + 5, epochs) == pytest.approx(0.05)  # held after the last epoch
    T = [temperature_at(e, epochs) for e in range(epochs)]
    assert all(a >= b for a, b in zip(T, T[1:]))


def test_freeze_epochs_and_window_sizes():
    assert default_freeze_epoch(100) == 30 and default_freeze_epoch(20) == 6 and default_freeze_epoch(1) == 1
    assert freeze_epoch_of("at_epoch", None, 20) == 6 and freeze_epoch_of("at_start", None, 20) == 1
    assert freeze_epoch_of("never", 3, 20) is None and freeze_epoch_of("at_epoch", 20, 20) == 20
    with pytest.raises(MethodError, match="between 1 and"):
        freeze_epoch_of("at_epoch", 21, 20)
    assert stored_diagonals("all", 8, 784, 2.0) == 784
    assert stored_diagonals("window", 8, 784, 2.0) == 16 and stored_diagonals("window", 7, 784, 1.5) == 11
    assert stored_diagonals("window", 500, 784, 2.0) == 784
    with pytest.raises(MethodError, match=">= 1"):
        stored_diagonals("window", 8, 784, 0.5)


def test_method_names_and_formats():
    assert {"diag-rigl", "dynadiag"} <= set(METHODS)
    assert resolve_format("dynadiag", None) == "diagonal"
    with pytest.raises(MethodError):
        resolve_format("dynadiag", "csr")
    assert make_method("dynadiag", "diagonal").name == "dynadiag"


# --------------------------------------------------------------------------------------------------
# the window swap against the specification (and what purerigl check runs)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (10, 10), (30, 7)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_and_window_swap_agree_with_the_specification(backend_name, shape, seed):
    a = compare_with_spec(get_backend(backend_name), "dynadiag", "diagonal", {}, shape, 0.4, seed)
    assert a.agree, a.difference


def test_check_catches_a_wrong_gate_backward(monkeypatch):
    import purerigl.nn.gated_diagonal as gd

    monkeypatch.setattr(gd, "soft_top_k_backward", lambda a, K, T, d: -soft_top_k_backward(a, K, T, d))
    a = compare_with_spec(get_backend("cpu"), "dynadiag", "diagonal", {}, (12, 8), 0.4, 0)
    assert not a.agree and "alpha" in a.difference


def test_check_catches_a_wrong_entering_score(monkeypatch):
    import purerigl.dst.dynadiag as dd

    monkeypatch.setattr(dd, "enter_scores", lambda alpha, kept, entered: None)
    results = [compare_with_spec(get_backend("cpu"), "dynadiag", "diagonal", {}, (12, 8), 0.4, s) for s in range(4)]
    assert any("scores" in r.difference for r in results)


# --------------------------------------------------------------------------------------------------
# training


def _run(soft, freeze, backend="cpu", epochs=4, freeze_epoch=None, delta_t=5):
    trainer = _trainer(soft, freeze, backend, epochs, freeze_epoch, delta_t)
    return trainer, trainer.fit()


def _trainer(soft, freeze, backend="cpu", epochs=4, freeze_epoch=None, delta_t=5, **options):
    data = load_dataset("digits", None, seed=0)
    shapes = [(32, 64), (10, 32)]
    budgets = layer_budgets(shapes, 0.9, "uniform")
    model = build_mlp(64, "32", 10, fmt="diagonal", sparsity=0.9, backend=backend, rng=np.random.default_rng(0),
                      budgets=budgets)
    options = DynaDiagOptions(soft=soft, freeze=freeze, freeze_epoch=freeze_epoch, **options)
    by_name = {f"layer{i}": b for i, b in enumerate(budgets)}
    gate_model(model, by_name, options, np.random.default_rng(1), 5.0)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, optimizer="adam", seed=0)
    steps = epochs * -(-data.x_train.shape[0] // 64)
    updater = DynaDiagUpdater(UpdateSchedule.from_fraction(steps, delta_t=delta_t, alpha=0.3, t_end=0.75), by_name,
                              options, epochs, seed=0)
    return Trainer(model, data, config, topology=updater)


@pytest.mark.parametrize("soft", ["window", "all"])
def test_freeze_leaves_exactly_k_diagonals_with_gate_one(soft):
    trainer, history = _run(soft, "at_epoch", freeze_epoch=3)
    for layer in trainer.model.linears:
        K, P, L = layer.k, max(layer.shape), min(layer.shape)
        assert layer.frozen and layer.W.K == K and layer.W.nnz == K * L
        assert np.array_equal(layer.gates(), np.ones(K))
    for layer, row in zip(trainer.model.linears, history[0]["layers"]):  # soft in epoch 1: S stored, gates < 1
        assert row["stored"] == stored_diagonals(soft, layer.k, max(layer.shape), 2.0) > row["k"]
        assert not row["frozen"] and row["gate_max"] < 1
    assert all(row["frozen"] and row["stored"] == row["k"] for row in history[-1]["layers"])


def test_alpha_stops_after_the_freeze_and_trains_before():
    trainer, history = _run("window", "at_epoch", freeze_epoch=2, epochs=3)
    layer = trainer.model.linears[0]
    assert not np.allclose(layer.alpha.value, 1 / max(layer.shape))  # it moved in epoch 1
    frozen_alpha = layer.alpha.value.copy()
    trainer.run_epoch()  # one more epoch: nothing moves
    np.testing.assert_array_equal(layer.alpha.value, frozen_alpha)


def test_window_swaps_keep_the_window_size_and_explore():
    trainer, history = _run("window", "never", epochs=3, delta_t=3)
    for layer, row in zip(trainer.model.linears, history[-1]["layers"]):
        S = stored_diagonals("window", layer.k, max(layer.shape), 2.0)
        assert layer.W.K == S and not layer.frozen and row["stored"] == S
    assert history[-1]["topology_updates"] > 0
    assert any(row["changed"] > 0 for m in history for row in m["layers"])
    assert trainer.model.linears[0].effective_k() >= 1


def test_at_start_is_a_fixed_k_diagonal_run():
    trainer, history = _run("window", "at_start", epochs=2)
    assert all(row["frozen"] and row["stored"] == row["k"] for row in history[0]["layers"])
    assert history[-1]["topology_updates"] == 0


def _freeze_after_one_epoch(trainer):
    """Train epoch 1 soft, then run the start of epoch 2 (the freeze); returns each gated layer's
    (offsets, values, alpha, temperature) just before the freeze."""
    trainer.topology.begin(trainer.model)
    trainer.run_epoch()
    before = [(lin.W.offsets.copy(), lin.W.values.copy(), lin.alpha.value.copy(), lin.temperature)
              for lin in trainer.model.linears]
    trainer.topology.begin_epoch(1, trainer.model, trainer.optimizer)
    return before


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("freeze_values", ["keep", "fold"])
def test_freeze_values_follow_the_spec(backend, freeze_values):
    """The freeze keeps the spec's K diagonals with the spec's values: as they were (keep), or times
    the gate of the last step, at the temperature the epoch before trained with (fold)."""
    trainer = _trainer("window", "at_epoch", backend, epochs=2, freeze_epoch=2, freeze_values=freeze_values)
    before = _freeze_after_one_epoch(trainer)
    for number, (lin, (offsets, V, alpha, T)) in enumerate(zip(trainer.model.linears, before)):
        assert T == temperature_at(0, 2) and lin.frozen
        kept = spec.freeze(offsets, alpha, lin.k, tie_salt(0, FREEZE_SALT + 1, number))
        np.testing.assert_array_equal(lin.W.offsets, kept)
        expected = spec.frozen_values(offsets, V, alpha, lin.k, T, kept, fold=freeze_values == "fold")
        np.testing.assert_allclose(lin.W.values, expected, rtol=2e-7, atol=0)
        assert (freeze_values == "fold") == (not np.array_equal(lin.W.values, V[np.searchsorted(offsets, kept)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_folding_freeze_that_drops_nothing_keeps_the_network_output(backend):
    """With a window of exactly K diagonals (c = 1) the freeze drops none: folding the gates into the
    values leaves the logits as they were, while keeping the values scales them up."""
    x = load_dataset("digits", None, seed=0).x_test[:50]
    logits = {}
    for mode in ("keep", "fold"):
        trainer = _trainer("window", "at_epoch", backend, epochs=2, freeze_epoch=2, freeze_values=mode, window=1.0)
        trainer.topology.begin(trainer.model)
        trainer.run_epoch()
        soft = trainer.model.forward(x).copy()
        trainer.topology.begin_epoch(1, trainer.model, trainer.optimizer)
        assert all(lin.frozen and lin.W.K == lin.k for lin in trainer.model.linears)
        logits[mode] = (soft, trainer.model.forward(x))
    np.testing.assert_allclose(logits["fold"][1], logits["fold"][0], rtol=1e-4, atol=1e-5)
    assert np.std(logits["keep"][1]) > 2 * np.std(logits["keep"][0])


def test_freeze_before_the_first_step_folds_nothing():
    trainer = _trainer("window", "at_start", epochs=1, freeze_values="fold")
    initial = [lin.W.values.copy() for lin in trainer.model.linears]
    offsets = [lin.W.offsets.copy() for lin in trainer.model.linears]
    trainer.topology.begin(trainer.model)
    trainer.topology.begin_epoch(0, trainer.model, trainer.optimizer)
    for lin, V, offs in zip(trainer.model.linears, initial, offsets):
        assert lin.frozen
        np.testing.assert_array_equal(lin.W.values, V[np.searchsorted(offs, lin.W.offsets)])


def test_a_checkpoint_from_before_freeze_values_resumes_as_keep():
    trainer = _trainer("window", "at_epoch", epochs=2, freeze_epoch=2)
    state = trainer.topology.state_dict()
    del state["options"]["freeze_values"]
    trainer.topology.load_state_dict(state)  # accepted: such a run kept the values
    folding = _trainer("window", "at_epoch", epochs=2, freeze_epoch=2, freeze_values="fold")
    with pytest.raises(ValueError, match="other dynadiag options"):
        folding.topology.load_state_dict(state)


def test_training_is_identical_on_reference_and_cpu():
    _, ref = _run("window", "at_epoch", backend="reference", epochs=3, freeze_epoch=3)
    _, cpu = _run("window", "at_epoch", backend="cpu", epochs=3, freeze_epoch=3)
    for a, b in zip(ref, cpu):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert [r["changed"] for r in a["layers"]] == [r["changed"] for r in b["layers"]]


def test_learns_the_digits():
    trainer, history = _run("window", "at_epoch", epochs=8, freeze_epoch=3)
    assert history[-1]["test_accuracy"] > 0.6 > history[0]["test_accuracy"] - 0.3
    assert math.isfinite(history[-1]["test_loss"])


def test_gating_a_network_reaches_convolutions_and_block_projections():
    """gate_model on a LeNet-5 and a tiny ViT (Diagonal layers): every sparse layer, also a
    convolution's filter matrix and a fused QKV projection, becomes a gated layer in place, the network
    trains a step, and a freeze leaves K diagonals per layer."""
    from purerigl.nn import GatedDiagonalLinear, build_model
    from purerigl.nn.conv import SparseConv2d

    data = load_dataset("digits", None, seed=0)
    for name, arch in (("lenet5", {}), ("vit-tiny", {"width": 16, "depth": 1, "heads": 2})):
        net = build_model(name, (1, 8, 8), 10, fmt="diagonal", sparsity=0.8, rng=np.random.default_rng(0),
                          backend="cpu", **arch)
        budgets = {lin.name: lin.W.nnz for lin in net.sparse_layers()}
        options = DynaDiagOptions(freeze="at_epoch", freeze_epoch=2)
        gated = gate_model(net, budgets, options, np.random.default_rng(1), 1.0)
        assert gated and all(isinstance(lin, GatedDiagonalLinear) for lin in net.sparse_layers())
        assert len(gated) == len(budgets)
        conv = None
        if name == "lenet5":
            conv = next(layer for layer in net.weight_layers if isinstance(layer, SparseConv2d))
            assert conv.linear in gated
            assert np.all(conv.linear.alpha.value == conv.linear.alpha.value[0])  # the official init, 1 / P
        config = TrainConfig(epochs=2, batch_size=64, lr=1e-2, optimizer="adam", seed=0)
        steps = 2 * -(-data.x_train.shape[0] // 64)
        updater = DynaDiagUpdater(UpdateSchedule.from_fraction(steps, delta_t=5, alpha=0.3, t_end=0.75), budgets,
                                  options, 2, seed=0)
        history = Trainer(net, data, config, topology=updater).fit()
        assert math.isfinite(history[-1]["train_loss"])
        assert all(lin.frozen and lin.W.K == lin.k for lin in gated)
        if conv is not None:  # the convolution computed with its gates, so each score got its own gradient
            alpha = conv.linear.alpha.value  # (without one, weight decay and the swaps leave a handful of values)
            assert np.unique(alpha).size > alpha.size // 4


@pytest.mark.parametrize("extra,soft", [([], False), (["--dynadiag-freeze-epoch", "2"], True)])
def test_cli_says_when_the_default_freeze_leaves_no_soft_phase(tmp_path, extra, soft):
    """With fewer than 5 epochs the default freeze epoch (30%) rounds to 1: the plan line says that the
    gates freeze before the first step and how to keep them soft; with a later freeze it does not."""
    from test_cli_train import invoke

    args = ["train", "--method", "dynadiag", "--dataset", "digits", "--hidden", "16", "--epochs", "2",
            "--out", str(tmp_path / "run"), "--no-progress", *extra]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    line = next(text for text in result.output.splitlines() if text.startswith("topology: DynaDiag"))
    assert ("no soft phase" in line) is not soft
    assert f"at the start of epoch {2 if soft else 1}" in line
