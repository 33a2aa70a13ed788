"""The convolutional layers on the cuda backend (issue 16), on Numba's CUDA simulator.

tests/conftest.py turns the simulator on before numba is imported; ``THREADS_PER_BLOCK`` is patched to
4 so that the tiny inputs span several blocks (as tests/test_cuda_ops.py does). The simulator costs
about half a millisecond per thread, so every shape here is tiny. Pins down:

- every convolutional operation of the cuda backend (:data:`purerigl.kernels.registry.CONV_OPS`)
  against the reference backend (the NumPy specification) on tiny shapes with strides, padding, odd
  sizes and batch 1: bit for bit where the specification's additions are repeated in order (patch
  maps, reorders, max pooling, the pooling backwards), to float32 rounding otherwise (sums in another
  order: average pooling, batch normalisation); host arrays refused;
- a convolution's input gradient ``conv_input_grad_fm`` (one gather kernel per format) against the
  specification to float32 rounding, for a device and a host filter matrix, a wide and a tall Diagonal;
- the cpu backend's versions of the operations that tests/test_conv_speedpaths.py does not cover;
- SparseConv2d, Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm2d and a Residual block
  forward and backward on cuda against the reference, with the running statistics synced back;
- a tiny LeNet-5 trained a few steps with one RigL topology update on cuda has the cpu run's
  topology, and values within float32 tolerance;
- ``purerigl train --model lenet5 --backend cuda`` runs (a tiny LeNet-5 and a cut test set: the
  simulator is slow) and exits 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from purerigl.errors import BackendError, DTypeError
from purerigl.formats.budget import random_layer_with_budget
from purerigl.kernels import get_backend
from purerigl.kernels.host_conv import output_hw as ref_output_hw

SMALL_BLOCK = 4
#: (B, C, H, W), kh, kw, stride, padding: batch 1, odd sizes, strides, padding, a kernel as large as
#: the padded input.
PATCH_CASES = [
    ((1, 1, 5, 5), 3, 3, 1, 1),
    ((2, 2, 5, 6), 2, 3, 2, 0),
    ((2, 1, 6, 5), 3, 2, 2, 1),
    ((1, 2, 3, 3), 5, 5, 1, 1),
]
POOL_CASES = [((1, 1, 5, 5), 2, 2, 0), ((2, 2, 5, 6), 3, 2, 1), ((2, 1, 6, 6), 3, 1, 1)]


@pytest.fixture(scope="module")
def cu():
    """The cuda backend, with THREADS_PER_BLOCK patched to 4 for the whole module."""
    try:
        backend = get_backend("cuda")
    except BackendError as err:  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"cuda backend unavailable: {err}")
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = SMALL_BLOCK
    yield backend
    _launch.THREADS_PER_BLOCK = saved


ref = get_backend("reference")
cpu = get_backend("cpu")


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def f32(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the operations, cuda against the reference


@pytest.mark.parametrize("case", PATCH_CASES)
def test_patch_maps_equal_the_specification(cu, case):
    shape, kh, kw, s, p = case
    rng = np.random.default_rng(0)
    X = f32(rng, shape)
    Xd = cu.to_device(X)
    P, PT = ref.im2col(X, kh, kw, s, p), ref.im2col_t(X, kh, kw, s, p)
    assert same_bits(cu.to_host(cu.im2col(Xd, kh, kw, s, p)), P)
    assert same_bits(cu.to_host(cu.im2col_t(Xd, kh, kw, s, p)), PT)
    assert same_bits(cu.to_host(cu.im2col(Xd, kh, kw, s, p, fill=-np.inf)), ref.im2col(X, kh, kw, s, p, -np.inf))
    dP, dPT = f32(rng, P.shape), f32(rng, PT.shape)
    assert same_bits(cu.to_host(cu.col2im(cu.to_device(dP), shape, kh, kw, s, p)), ref.col2im(dP, shape, kh, kw, s, p))
    assert same_bits(cu.to_host(cu.col2im_t(cu.to_device(dPT), shape, kh, kw, s, p)),
                     np.ascontiguousarray(ref.col2im_t(dPT, shape, kh, kw, s, p)))


@pytest.mark.parametrize("fmt, c_out", [("csr", 3), ("condensed", 3), ("diagonal", 3), ("diagonal", 40)])
@pytest.mark.parametrize("case", PATCH_CASES)
def test_input_gradient_equals_the_specification(cu, case, fmt, c_out):
    """conv_input_grad_fm on cuda (one gather kernel per format: the column index of Condensed and CSR,
    the offsets of a wide or tall Diagonal) against the specification (float32 rounding apart), with
    a device matrix and with a host one; host output gradients refused."""
    X_shape, kh, kw, s, p = case
    rng = np.random.default_rng(5)
    W = random_layer_with_budget(fmt, (c_out, X_shape[1] * kh * kw), max(c_out, X_shape[1] * kh * kw), rng)
    Ho, Wo = ref_output_hw(X_shape, kh, kw, s, p)
    dYT = f32(rng, (c_out, X_shape[0] * Ho * Wo))
    want = ref.conv_input_grad_fm(W, dYT, X_shape, kh, kw, s, p)
    for matrix in (cu.to_device(W), W):
        got = cu.to_host(cu.conv_input_grad_fm(matrix, cu.to_device(dYT), X_shape, kh, kw, s, p))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(DTypeError):
        cu.conv_input_grad_fm(cu.to_device(W), dYT, X_shape, kh, kw, s, p)


def test_reorders_equal_the_specification(cu):
    rng = np.random.default_rng(1)
    B, c, Ho, Wo = 2, 3, 3, 2
    YT, bias, Y2 = f32(rng, (c, B * Ho * Wo)), f32(rng, c), f32(rng, (B * Ho * Wo, c))
    dY = f32(rng, (B, c, Ho, Wo))
    dev = cu.to_device
    assert same_bits(cu.to_host(cu.fm_to_nchw(dev(YT), dev(bias), B, Ho, Wo)), ref.fm_to_nchw(YT, bias, B, Ho, Wo))
    assert same_bits(cu.to_host(cu.rows_to_nchw(dev(Y2), B, Ho, Wo)), ref.rows_to_nchw(Y2, B, Ho, Wo))
    assert same_bits(cu.to_host(cu.nchw_to_fm(dev(dY))), ref.nchw_to_fm(dY))
    assert same_bits(cu.to_host(cu.nchw_to_rows(dev(dY))), ref.nchw_to_rows(dY))


def pool_input(rng, shape, special: bool):
    """Small integers (many ties), optionally with NaN and infinities planted."""
    X = rng.integers(-2, 3, size=shape).astype(np.float32)
    if special:
        flat = X.reshape(-1)
        for value in (np.nan, -np.inf, np.inf):
            flat[rng.integers(0, flat.size)] = value
    return X


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_equals_the_specification(cu, case):
    shape, k, s, p = case
    rng = np.random.default_rng(2)
    for special in (False, True):
        X = pool_input(rng, shape, special)
        Y, arg = cu.maxpool_forward(cu.to_device(X), k, s, p)
        Yr, argr = ref.maxpool_forward(X, k, s, p)
        assert same_bits(cu.to_host(Y), Yr) and np.array_equal(cu.to_host(arg), argr)
        dY = f32(rng, Yr.shape)
        assert same_bits(cu.to_host(cu.maxpool_backward(cu.to_device(dY), arg, shape, k, s, p)),
                         ref.maxpool_backward(dY, argr, shape, k, s, p))
    X = f32(rng, shape)
    Ya = ref.avgpool_forward(X, k, s, p)
    np.testing.assert_allclose(cu.to_host(cu.avgpool_forward(cu.to_device(X), k, s, p)), Ya, rtol=1e-6, atol=1e-6)
    dY = f32(rng, Ya.shape)
    assert same_bits(cu.to_host(cu.avgpool_backward(cu.to_device(dY), shape, k, s, p)),
                     ref.avgpool_backward(dY, shape, k, s, p))
    np.testing.assert_allclose(cu.to_host(cu.global_avgpool_forward(cu.to_device(X))), ref.global_avgpool_forward(X),
                               rtol=1e-6, atol=1e-6)
    dG = f32(rng, shape[:2])
    assert same_bits(cu.to_host(cu.global_avgpool_backward(cu.to_device(dG), shape)),
                     ref.global_avgpool_backward(dG, shape))


@pytest.mark.parametrize("shape, training", [((2, 3, 3, 2), True), ((1, 2, 2, 3), True), ((2, 2, 3, 3), False)])
def test_batchnorm_equals_the_specification(cu, shape, training):
    rng = np.random.default_rng(3)
    C = shape[1]
    X = (f32(rng, shape) * 3 + 1).astype(np.float32)
    gamma, beta = f32(rng, C), f32(rng, C)
    rm, rv = f32(rng, C), (rng.random(C) + 0.5).astype(np.float32)
    rmd, rvd = cu.to_device(rm), cu.to_device(rv)
    dev = cu.to_device
    Y, xhat, inv = cu.batchnorm_forward(dev(X), dev(gamma), dev(beta), rmd, rvd, training, 0.1, 1e-5)
    Yr, xhatr, invr = ref.batchnorm_forward(X, gamma, beta, rm, rv, training, 0.1, 1e-5)
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cu.to_host(Y), Yr, **tol)
    np.testing.assert_allclose(cu.to_host(xhat), xhatr, **tol)
    np.testing.assert_allclose(cu.to_host(inv), invr, **tol)
    np.testing.assert_allclose(cu.to_host(rmd), rm, **tol)  # updated in place in training, untouched in eval
    np.testing.assert_allclose(cu.to_host(rvd), rv, **tol)
    dY = f32(rng, shape)
    dg, db = cu.zeros(C), cu.zeros(C)
    dgr, dbr = np.zeros(C, np.float32), np.zeros(C, np.float32)
    dX = cu.batchnorm_backward(dev(dY), xhat, inv, dev(gamma), training, dg, db)
    dXr = ref.batchnorm_backward(dY, xhatr, invr, gamma, training, dgr, dbr)
    np.testing.assert_allclose(cu.to_host(dX), dXr, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cu.to_host(dg), dgr, **tol)
    np.testing.assert_allclose(cu.to_host(db), dbr, **tol)


def test_conv_ops_refuse_host_arrays(cu):
    X = np.zeros((1, 1, 3, 3), np.float32)
    for call in (lambda: cu.im2col_t(X, 2, 2), lambda: cu.maxpool_forward(X, 2, 2, 0), lambda: cu.nchw_to_fm(X),
                 lambda: cu.global_avgpool_forward(X)):
        with pytest.raises(DTypeError, match="device array"):
            call()


# --------------------------------------------------------------------------------------------------
# the cpu backend's versions of the operations without a test elsewhere


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_conv_ops_equal_the_reference(dtype):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    YT, bias = rng.standard_normal((3, 2 * 20)).astype(dtype), rng.standard_normal(3).astype(dtype)
    assert same_bits(cpu.fm_to_nchw(YT, bias, 2, 5, 4), ref.fm_to_nchw(YT, bias, 2, 5, 4))
    assert same_bits(cpu.nchw_to_fm(X), ref.nchw_to_fm(X)) and same_bits(cpu.nchw_to_rows(X), ref.nchw_to_rows(X))
    assert same_bits(cpu.rows_to_nchw(YT.T.copy(), 2, 5, 4), ref.rows_to_nchw(YT.T.copy(), 2, 5, 4))
    assert same_bits(cpu.avgpool_forward(X, 3, 2, 1), ref.avgpool_forward(X, 3, 2, 1))
    dY = rng.standard_normal((2, 3, 3, 2)).astype(dtype)
    assert same_bits(cpu.avgpool_backward(dY, X.shape, 3, 2, 1), ref.avgpool_backward(dY, X.shape, 3, 2, 1))
    assert same_bits(cpu.global_avgpool_forward(X), ref.global_avgpool_forward(X))
    dG = rng.standard_normal((2, 3)).astype(dtype)
    assert same_bits(cpu.global_avgpool_backward(dG, X.shape), ref.global_avgpool_backward(dG, X.shape))
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    stats = [np.zeros(3, dtype), np.ones(3, dtype)], [np.zeros(3, dtype), np.ones(3, dtype)]
    outs = [b.batchnorm_forward(X, gamma, beta, *st, True, 0.1, 1e-5) for b, st in zip((cpu, ref), stats)]
    tol = dict(rtol=100 * np.finfo(dtype).eps, atol=100 * np.finfo(dtype).eps)
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(stats[0][1], stats[1][1], **tol)
    dYb = rng.standard_normal(X.shape).astype(dtype)
    grads = [np.zeros(3, dtype) for _ in range(4)]
    dX = cpu.batchnorm_backward(dYb, outs[0][1], outs[0][2], gamma, True, grads[0], grads[1])
    dXr = ref.batchnorm_backward(dYb, outs[1][1], outs[1][2], gamma, True, grads[2], grads[3])
    np.testing.assert_allclose(dX, dXr, rtol=1e-3 if dtype == np.float32 else 1e-10, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# layers on cuda against the reference


def _run_layer(layer, X, dY, backend):
    Y = layer.forward(backend.to_device(X))
    dX = layer.backward(backend.to_device(dY))
    layer.sync_to_host()
    grads = {p.name: backend.to_host(p.grad) for p in layer.parameters()}
    return backend.to_host(Y), backend.to_host(dX), grads


def _check_layer(make, X, cu, rtol=1e-4, atol=1e-5):
    """Run ``make(backend)`` forward and backward on cuda and on the reference; compare; the two layers."""
    lc, lr = make(cu), make("reference")
    shape = make("reference").forward(X).shape
    dY = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    Yc, dXc, gc = _run_layer(lc, X, dY, cu)
    Yr, dXr, gr = _run_layer(lr, X, dY, ref)
    np.testing.assert_allclose(Yc, Yr, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dXc, dXr, rtol=rtol, atol=atol)
    assert gc.keys() == gr.keys()
    for k in gr:
        np.testing.assert_allclose(gc[k], gr[k], rtol=rtol, atol=atol, err_msg=k)
    return lc, lr


@pytest.mark.parametrize("tile", [None, 1])
def test_sparse_conv_on_cuda_equals_reference(cu, tile):
    """Forward and backward on device arrays; ``tile`` 1 byte splits the batch into single samples."""
    from purerigl.nn.conv import SparseConv2d

    kw = {} if tile is None else {"max_tile_bytes": tile}
    X = np.random.default_rng(6).standard_normal((2, 2, 5, 4)).astype(np.float32)

    def make(b):  # the filter matrix (3, 2 * 3 * 3), a new one per layer (a layer owns its values)
        W = random_layer_with_budget("csr", (3, 2 * 3 * 3), 20, np.random.default_rng(5))
        return SparseConv2d(W, 2, 3, stride=2, padding=1, backend=b, **kw)

    _check_layer(make, X, cu)


def test_dense_conv_and_pools_on_cuda_equal_reference(cu):
    from purerigl.nn.conv import Conv2d
    from purerigl.nn.pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d

    rng = np.random.default_rng(7)
    w = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    X = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    _check_layer(lambda b: Conv2d(w, stride=1, padding=1, backend=b), X, cu)
    _check_layer(lambda b: Conv2d(w, stride=2, padding=0, backend=b, max_tile_bytes=1), X, cu)
    _check_layer(lambda b: MaxPool2d(3, 2, 1, backend=b), X, cu, rtol=0, atol=0)
    _check_layer(lambda b: AvgPool2d(2, backend=b), X, cu, rtol=1e-6, atol=1e-6)
    _check_layer(lambda b: GlobalAvgPool2d(backend=b), X, cu, rtol=1e-6, atol=1e-6)


def test_batchnorm_and_residual_on_cuda_equal_reference(cu):
    from purerigl.nn.blocks import Residual
    from purerigl.nn.dense import ReLU
    from purerigl.nn.norm import BatchNorm2d

    X = (np.random.default_rng(8).standard_normal((2, 2, 3, 3)) * 2 + 1).astype(np.float32)
    lc, lr = _check_layer(lambda b: BatchNorm2d(2, name="bn", backend=b), X, cu)
    bc, br = lc.buffers(), lr.buffers()  # buffers() syncs the device statistics to the host first
    for k in br:
        np.testing.assert_allclose(bc[k], br[k], rtol=1e-5, atol=1e-6, err_msg=k)
    lc.eval(), lr.eval()
    _check_eval = lc.forward(cu.to_device(X)), lr.forward(X)
    np.testing.assert_allclose(cu.to_host(_check_eval[0]), _check_eval[1], rtol=1e-5, atol=1e-5)
    lc.load_buffers({"bn.running_mean": np.full(2, 0.5), "bn.running_var": np.full(2, 2.0)})  # pushed to the device
    np.testing.assert_allclose(cu.to_host(lc._stats[1]), 2.0)
    _check_layer(lambda b: Residual([BatchNorm2d(2, name="bn", backend=b), ReLU(backend=b)]), X, cu)


# --------------------------------------------------------------------------------------------------
# a tiny LeNet-5 with one RigL update, cuda against cpu

TINY_LENET = {"channels": (1, 2), "hidden": (4,)}


def _train_lenet(backend, steps=3, delta_t=2, model_name="lenet5", arch=None, fmt="csr", method="rigl"):
    """Train ``model_name`` (tiny) for ``steps`` batches of 2 with ``method`` updates every ``delta_t``
    steps; return the model and the flat positions of every sparse layer before the first step and
    after each step."""
    from purerigl.dst import UpdateSchedule, make_method
    from purerigl.dst.updater import DSTUpdater
    from purerigl.kernels.host_topology import flat_positions
    from purerigl.nn.models import build_model
    from purerigl.optim import SGD

    model = build_model(model_name, (1, 8, 8), 10, fmt=fmt, sparsity=0.7, backend=backend, rng=0,
                        **(TINY_LENET if arch is None else arch))
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
    updater = DSTUpdater(make_method(method, fmt), UpdateSchedule(delta_t=delta_t, alpha=0.3, t_end=8), budgets,
                         seed=0)
    updater.begin(model)
    rng = np.random.default_rng(0)
    be = model.backend
    topologies = [[flat_positions(lin.W).copy() for lin in model.sparse_layers()]]
    for step in range(1, steps + 1):
        X = rng.standard_normal((2, 64)).astype(np.float32)  # (B, 1 * 8 * 8)
        logits = model.forward(be.to_device(X))
        _, dlogits, _ = be.softmax_cross_entropy(logits, be.to_device(rng.integers(0, 10, 2)))
        model.backward(dlogits)
        opt.step()
        updater.after_step(step, model, opt)
        topologies.append([flat_positions(lin.W).copy() for lin in model.sparse_layers()])
    model.sync_to_host()
    return model, topologies


def test_tiny_lenet5_with_a_rigl_update_on_cuda_matches_cpu(cu):
    cpu_model, cpu_topo = _train_lenet("cpu")
    gpu_model, gpu_topo = _train_lenet(cu)
    for step, (a, b) in enumerate(zip(cpu_topo, gpu_topo)):
        for layer, (pa, pb) in enumerate(zip(a, b)):
            assert np.array_equal(pa, pb), f"layer {layer} differs after step {step} (0: before training)"
    assert type(gpu_model.weight_layers[1]).__name__ == "SparseConv2d"  # a sparse convolution took part
    changed = [not np.array_equal(x, y) for x, y in zip(cpu_topo[1], cpu_topo[-1])]
    assert changed[0]  # the update after step 2 moved the sparse convolution's filters (growth read its patches)
    for pa, pb in zip(cpu_model.parameters(), gpu_model.parameters()):
        np.testing.assert_allclose(pb.host, pa.host, rtol=1e-4, atol=1e-5, err_msg=pa.name)


# --------------------------------------------------------------------------------------------------
# the command line


def test_cli_trains_lenet5_on_cuda(cu, tmp_path, monkeypatch):
    """``purerigl train --model lenet5 --backend cuda`` exits 0. To fit the simulator the LeNet-5 is
    tiny (1 and 2 channels), the run two steps of 5 samples (a RigL update after the first), and the
    test and validation sets are cut to 2 samples (64 samples in batches of 32 take minutes there)."""
    from click.testing import CliRunner

    import purerigl.cli._models as cli_models
    import purerigl.cli._run as cli_run
    from purerigl.cli.main import main

    load = cli_run.load_dataset

    def small_data(*args, **kwargs):
        d = load(*args, **kwargs)
        return dataclasses.replace(d, x_test=d.x_test[:2], y_test=d.y_test[:2], x_val=d.x_val[:2], y_val=d.y_val[:2])

    monkeypatch.setattr(cli_run, "load_dataset", small_data)
    monkeypatch.setattr(cli_models, "architecture", lambda opts: dict(TINY_LENET))
    result = CliRunner().invoke(main, ["train", "--model", "lenet5", "--dataset", "digits", "--backend", "cuda",
                                       "--epochs", "1", "--train-subset", "10", "--batch-size", "5", "--delta-t", "1",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
