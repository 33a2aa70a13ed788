"""DynaDiag on the cuda backend (Numba's CUDA simulator; ``PURERIGL_TEST_REAL_GPU=1`` for a real GPU):
the two array operations the gated layer adds (``scale_rows``, ``row_dots``) against NumPy, the gated
layer's forward and gradients against the reference backend, the window swap against its
specification (``purerigl check``'s comparison), and a short training run against the cpu backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from purerigl.errors import BackendError, DTypeError


@pytest.fixture(scope="module")
def cuda():
    from purerigl.kernels import get_backend

    try:
        backend = get_backend("cuda")
    except BackendError as err:
        pytest.skip(f"cuda backend unavailable: {err}")
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = 4  # tiny inputs still span several blocks
    yield backend
    _launch.THREADS_PER_BLOCK = saved


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 2)])
def test_scale_rows_and_row_dots(cuda, shape):
    rng = np.random.default_rng(sum(shape))
    A, B = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    g = rng.normal(size=shape[0]).astype(np.float32)
    out = cuda.to_host(cuda.scale_rows(cuda.to_device(A), cuda.to_device(g)))
    np.testing.assert_array_equal(out, A * g[:, None])
    dots = cuda.to_host(cuda.row_dots(cuda.to_device(A), cuda.to_device(B)))
    assert dots.dtype == np.float64
    np.testing.assert_allclose(dots, np.einsum("kt,kt->k", A.astype(np.float64), B.astype(np.float64)), rtol=1e-12)
    with pytest.raises(DTypeError):
        cuda.scale_rows(A, cuda.to_device(g))  # a host array is refused: no hidden copies


def test_gated_layer_matches_the_reference_backend(cuda):
    from purerigl.formats import Diagonal
    from purerigl.nn import GatedDiagonalLinear

    rng = np.random.default_rng(0)
    for shape in [(9, 5), (5, 9)]:
        W = Diagonal.random(shape, None, rng, K=4)
        alpha = rng.normal(size=max(shape)).astype(np.float32)
        X = rng.normal(size=(3, shape[1])).astype(np.float32)
        dY = rng.normal(size=(3, shape[0])).astype(np.float32)
        ref = GatedDiagonalLinear(W.copy(), 2, alpha=alpha, temperature=0.7, backend="reference")
        dev = GatedDiagonalLinear(W.copy(), 2, alpha=alpha, temperature=0.7, backend=cuda)
        np.testing.assert_allclose(cuda.to_host(dev.forward(cuda.to_device(X))), ref.forward(X), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cuda.to_host(dev.backward(cuda.to_device(dY))), ref.backward(dY), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(cuda.to_host(dev.weight.grad), ref.weight.grad, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dev.alpha.grad, ref.alpha.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("max_tile_bytes", [64 * 2**20, 1], ids=["whole", "one-sample-chunks"])
def test_gated_convolution_matches_the_reference_backend(cuda, max_tile_bytes):
    """A convolution whose filter matrix is a soft gated layer (its feature-major step, and the tiled
    path's per-chunk gradients with alpha's host array summed) on cuda against the reference backend."""
    from purerigl.formats import Diagonal
    from purerigl.nn import GatedDiagonalLinear
    from purerigl.nn.conv import SparseConv2d

    rng = np.random.default_rng(1)
    W = Diagonal.random((3, 2 * 2 * 2), None, rng, K=5)  # c_out 3, c_in 2, 2 x 2 kernel
    alpha = rng.normal(size=8).astype(np.float32)
    X = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
    dY = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
    layers = []
    for backend in ("reference", cuda):
        conv = SparseConv2d(W.copy(), 2, 2, backend=backend, name="c", max_tile_bytes=max_tile_bytes)
        conv.linear = GatedDiagonalLinear(W.copy(), 3, alpha=alpha, temperature=0.7, backend=backend, name="c")
        layers.append(conv)
    ref, dev = layers
    np.testing.assert_allclose(cuda.to_host(dev.forward(cuda.to_device(X))), ref.forward(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.to_host(dev.backward(cuda.to_device(dY))), ref.backward(dY), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.to_host(dev.weight.grad), ref.weight.grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dev.linear.alpha.grad, ref.linear.alpha.grad, rtol=1e-5, atol=1e-7)
    assert np.abs(ref.linear.alpha.grad).max() > 1e-4


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_window_swap_agrees_with_the_specification(cuda, shape):
    from purerigl.dst.spec.agreement import compare_with_spec

    a = compare_with_spec(cuda, "dynadiag", "diagonal", {}, shape, 0.4, 0)
    assert a.agree, a.difference


def test_training_on_cuda_follows_cpu():
    """Two epochs of a tiny gated MLP (window swaps and a freeze that folds the gates into the values)
    on cuda and cpu: same topology changes, losses to float32 rounding (epoch 2 trains the folded values)."""
    from purerigl.data import load_dataset
    from purerigl.dst.dynadiag import DynaDiagOptions, DynaDiagUpdater, gate_model
    from purerigl.dst.schedule import UpdateSchedule
    from purerigl.nn import build_mlp
    from purerigl.training.loop import TrainConfig, Trainer

    full = load_dataset("digits", None, seed=0)
    data = dataclasses.replace(full, x_train=full.x_train[:96], y_train=full.y_train[:96], x_test=full.x_test[:32],
                               y_test=full.y_test[:32])
    runs = {}
    for name in ("cpu", "cuda"):
        model = build_mlp(64, "12", 10, fmt="diagonal", sparsity=0.8, backend=name, rng=np.random.default_rng(0))
        budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
        options = DynaDiagOptions(freeze="at_epoch", freeze_epoch=2, freeze_values="fold")
        gate_model(model, budgets, options, np.random.default_rng(1), 5.0)
        config = TrainConfig(epochs=2, batch_size=32, lr=1e-2, optimizer="adam", seed=0)
        updater = DynaDiagUpdater(UpdateSchedule.from_fraction(6, delta_t=1, alpha=0.3, t_end=0.9), budgets,
                                  options, 2, seed=0)
        runs[name] = Trainer(model, data, config, topology=updater).fit(warm_up=False)
    for a, b in zip(runs["cpu"], runs["cuda"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert [r["changed"] for r in a["layers"]] == [r["changed"] for r in b["layers"]]
    assert runs["cuda"][0]["topology_updates"] > 0
