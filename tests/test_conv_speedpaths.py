"""The fast paths of the convolutional layout work against their NumPy specifications.

- im2col / col2im (:mod:`purerigl.kernels.cpu.patches`, called by :func:`purerigl.nn.patches.im2col`
  and :func:`~purerigl.nn.patches.col2im`) against ``im2col_reference`` / ``col2im_reference``:
  the same bits, on hypothesis-drawn shapes (strides, paddings, rectangular kernels, odd sizes,
  batch 1, float32 and float64, padding 0 or -inf); the same for the transposed layout
  (``im2col_t`` / ``col2im_t``);
- MaxPool2d on the cpu backend (Numba) against the reference backend (the NumPy specification):
  same maxima, same ``arg`` (the first maximum on ties, NaN and -inf included), gradients with the
  same bits, overlapping windows included;
- BatchNorm2d on cpu against reference, training and evaluation: within float32 rounding (the fast
  path sums in float64 where the specification sums in float32);
- every kernel's parallel version against its serial twin, bit for bit;
- whole networks: a LeNet-5 step (no batch normalisation) gives the same bits with the fast paths
  as with the specifications; a VGG-small step agrees to rounding.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.kernels.cpu import _serial
from purerigl.kernels.cpu import patches as pk
from purerigl.kernels.cpu import pooling
from purerigl.nn import norm, patches
from purerigl.nn.models import build_model
from purerigl.nn.norm import BatchNorm2d
from purerigl.nn.patches import col2im, col2im_reference, fast_path, im2col, im2col_reference
from purerigl.nn.pool import MaxPool2d, maxpool_backward_reference, maxpool_reference

FEW = settings(max_examples=40)


def same_bits(a, b) -> bool:
    """Equal shapes, dtypes and bit patterns (so -0.0 differs from 0.0 and NaNs must match)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    kind = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return np.array_equal(a.view(kind), b.view(kind))


@contextlib.contextmanager
def kernels_run(mode: str):
    """Force the patch kernels' drivers to the parallel kernels ("parallel") or the serial twins."""
    pick = (lambda k, *a, **kw: k) if mode == "parallel" else (lambda k, *a, **kw: _serial.serial_twin(k))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pk, "by_work", pick)
        mp.setattr(pooling, "by_work", pick)
        yield


@st.composite
def windows(draw, square=False):
    """(B, C, H, W), kh, kw, stride, padding, dtype, seed: every window fits the padded image."""
    kh = draw(st.integers(1, 4))
    kw = kh if square else draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, kh // 2 if square else 2))
    H = draw(st.integers(max(1, kh - 2 * p), 9))
    W = draw(st.integers(max(1, kw - 2 * p), 9))
    B = draw(st.sampled_from([1, 1, 2, 3, 5]))
    C = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (B, C, H, W), kh, kw, s, p, dtype, draw(st.integers(0, 2**32 - 1))


# --------------------------------------------------------------------------------------------------
# patches


@FEW
@given(windows(), st.sampled_from([0.0, -np.inf]))
def test_im2col_fast_equals_reference(problem, fill):
    shape, kh, kw, s, p, dtype, seed = problem
    X = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    want = im2col_reference(X, kh, kw, s, p, fill)
    assert same_bits(im2col(X, kh, kw, s, p, fill), want)
    Xf = np.asfortranarray(X)  # any memory order
    assert same_bits(im2col(Xf, kh, kw, s, p, fill), want)


@FEW
@given(windows())
def test_col2im_fast_equals_reference_bit_for_bit(problem):
    shape, kh, kw, s, p, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X = np.empty(shape, dtype)
    n = im2col_reference(X, kh, kw, s, p).shape
    dP = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, size=n)).astype(dtype)  # rounding shows
    got, want = col2im(dP, shape, kh, kw, s, p), col2im_reference(dP, shape, kh, kw, s, p)
    assert got.shape == shape and same_bits(got, want)


@FEW
@given(windows())
def test_patch_kernels_parallel_equal_serial(problem):
    shape, kh, kw, s, p, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape).astype(dtype)
    out = {}
    for mode in ("parallel", "serial"):
        with kernels_run(mode):
            P = im2col(X, kh, kw, s, p)
            out[mode] = (P, col2im(P * 1.5, shape, kh, kw, s, p))
    assert same_bits(out["parallel"][0], out["serial"][0])
    assert same_bits(out["parallel"][1], out["serial"][1])


@FEW
@given(windows(), st.sampled_from([0.0, -np.inf]))
def test_transposed_patches_equal_the_transposed_reference(problem, fill):
    """im2col_t is im2col_reference(...).T; col2im_t(C) is col2im_reference(C.T), bit for bit."""
    shape, kh, kw, s, p, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape).astype(dtype)
    PT = patches.im2col_t(X, kh, kw, s, p, fill)
    assert PT.flags.c_contiguous and same_bits(PT, im2col_reference(X, kh, kw, s, p, fill).T)
    dPT = (rng.standard_normal(PT.shape) * 10.0 ** rng.integers(-3, 4, size=PT.shape)).astype(dtype)
    got = patches.col2im_t(dPT, shape, kh, kw, s, p)
    assert same_bits(got, col2im_reference(dPT.T, shape, kh, kw, s, p))
    out = {}
    for mode in ("parallel", "serial"):
        with kernels_run(mode):
            out[mode] = (patches.im2col_t(X, kh, kw, s, p), patches.col2im_t(dPT, shape, kh, kw, s, p))
    assert all(same_bits(a, b) for a, b in zip(out["parallel"], out["serial"]))


def test_patch_kernels_on_a_batch_wider_than_the_blocks():
    """More samples than MAX_BLOCKS: blocks of several samples, the sample ranges cover the batch."""
    rng = np.random.default_rng(1)
    shape = (pk.MAX_BLOCKS * 2 + 3, 3, 6, 5)
    X = rng.standard_normal(shape).astype(np.float32)
    for mode in ("parallel", "serial"):
        with kernels_run(mode):
            P = im2col(X, 3, 2, 1, 1)
            assert same_bits(P, im2col_reference(X, 3, 2, 1, 1))
            assert same_bits(col2im(P, shape, 3, 2, 1, 1), col2im_reference(P, shape, 3, 2, 1, 1))


def test_fast_path_only_for_float32_and_float64():
    f32, f64 = np.zeros(2, np.float32), np.zeros(2, np.float64)
    assert fast_path(f32) and fast_path(f64) and fast_path(f32, f32)
    assert not fast_path(f32, f64) and not fast_path(np.zeros(2, np.int64)) and not fast_path(np.zeros(2, np.float16))
    X = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)  # integers: the reference
    P = im2col(X, 3, 3, 1, 1)
    assert P.dtype == X.dtype and np.array_equal(P, im2col_reference(X, 3, 3, 1, 1))
    assert np.array_equal(col2im(P, X.shape, 3, 3, 1, 1), col2im_reference(P, X.shape, 3, 3, 1, 1))


# --------------------------------------------------------------------------------------------------
# max pooling


def pool_input(shape, dtype, rng, special: bool):
    """Small integers (many ties), optionally with NaN, -inf and +inf planted."""
    X = rng.integers(-2, 3, size=shape).astype(dtype)
    if special:
        flat = X.reshape(-1)
        for value in (np.nan, -np.inf, np.inf):
            flat[rng.integers(0, flat.size, size=max(1, flat.size // 10))] = value
    return X


@FEW
@given(windows(square=True), st.booleans())
def test_maxpool_fast_equals_reference(problem, special):
    shape, k, _, s, p, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X = pool_input(shape, dtype, rng, special)
    fast, ref = MaxPool2d(k, s, p, backend="cpu"), MaxPool2d(k, s, p, backend="reference")
    Y, Yr = fast.forward(X), ref.forward(X)
    assert same_bits(Y, Yr) and np.array_equal(fast._arg, ref._arg)
    dY = rng.standard_normal(Y.shape).astype(dtype)
    assert same_bits(fast.backward(dY), ref.backward(dY))


@FEW
@given(windows(square=True))
def test_maxpool_kernels_parallel_equal_serial(problem):
    shape, k, _, s, p, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X = pool_input(shape, dtype, rng, special=True)
    Ho, Wo = patches.output_hw(shape, k, k, s, p)
    dY = rng.standard_normal((shape[0], shape[1], Ho, Wo)).astype(dtype)
    out = {}
    for mode in ("parallel", "serial"):
        with kernels_run(mode):
            Y, arg = pooling.maxpool_forward(X, k, s, p, Ho, Wo)
            out[mode] = (Y, arg, pooling.maxpool_backward(dY, arg, shape, k, s, p))
    Yr, argr = maxpool_reference(X, k, s, p)
    assert same_bits(out["parallel"][0], Yr) and np.array_equal(out["parallel"][1], argr)
    for a, b in zip(out["parallel"], out["serial"]):
        assert same_bits(a, b) if a.dtype.kind == "f" else np.array_equal(a, b)
    assert same_bits(out["serial"][2], maxpool_backward_reference(dY, argr, shape, k, s, p))


# --------------------------------------------------------------------------------------------------
# batch normalisation


def bn_pair(C, dtype, rng, training):
    fast, ref = BatchNorm2d(C, backend="cpu", dtype=dtype), BatchNorm2d(C, backend="reference", dtype=dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    stats = {"bn.running_mean": rng.standard_normal(C), "bn.running_var": rng.random(C) + 0.5}
    for layer in (fast, ref):
        layer.weight.value[...] = gamma
        layer.bias.value[...] = beta
        layer.load_buffers(stats)
        if not training:
            layer.eval()
    return fast, ref


def close(got, want, dtype, factor=20):
    """Within ``factor`` units of rounding of the dtype, relative to the largest value."""
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=factor * eps, atol=factor * eps * (1 + np.abs(want).max()))


@FEW
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_batchnorm_fast_matches_reference(B, C, H, W, training, dtype, seed):
    if training and B * H * W < 2:
        B = 2
    rng = np.random.default_rng(seed)
    fast, ref = bn_pair(C, dtype, rng, training)
    X = (rng.standard_normal((B, C, H, W)) * 3 + 1).astype(dtype)
    dY = rng.standard_normal((B, C, H, W)).astype(dtype)
    Y, Yr = fast.forward(X), ref.forward(X)
    assert Y.dtype == Yr.dtype == dtype and Y.shape == X.shape
    close(Y, Yr, dtype)
    close(fast._xhat, ref._xhat, dtype)
    close(fast.running_mean, ref.running_mean, dtype)
    close(fast.running_var, ref.running_var, dtype)
    dX, dXr = fast.backward(dY), ref.backward(dY)
    close(dX, dXr, dtype, factor=100)  # dX subtracts two means of dY-sized terms
    close(fast.weight.grad, ref.weight.grad, dtype, factor=100)
    close(fast.bias.grad, ref.bias.grad, dtype, factor=100)


def test_batchnorm_elementwise_steps_are_the_specifications():
    """Given the same statistics, xhat, Y and dX have the specification's bits (no fused multiply-add,
    same order): only the float64 sums differ from the reference."""
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((4, 3, 5, 6)) * 2 - 1).astype(np.float32)
    dY = rng.standard_normal(X.shape).astype(np.float32)
    mean, var = pk.bn_stats(X)
    inv = 1.0 / np.sqrt(var + np.float32(1e-5))
    gamma, beta = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    xhat, Y = pk.bn_normalise(X, mean, inv, gamma, beta)
    pc = norm._per_channel
    want_xhat = (X - pc(mean)) * pc(inv)
    assert same_bits(xhat, want_xhat) and same_bits(Y, want_xhat * pc(gamma) + pc(beta))
    scale, c1, c2 = gamma * inv, dY.sum(axis=(0, 2, 3)) / 120, (dY * xhat).sum(axis=(0, 2, 3)) / 120
    want = pc(scale) * (dY - pc(c1) - xhat * pc(c2))
    assert same_bits(pk.bn_input_grad(dY, xhat, scale, c1, c2), want)
    Xd = X.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)  # the statistics, exactly rounded
    np.testing.assert_allclose(mean, Xd.mean(axis=1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(var, ((Xd - mean[:, None].astype(np.float64)) ** 2).mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_kernels_parallel_equal_serial(dtype):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 5, 7, 9)).astype(dtype)
    dY = rng.standard_normal(X.shape).astype(dtype)
    out = {}
    for mode in ("parallel", "serial"):
        with kernels_run(mode):
            mean, var = pk.bn_stats(X)
            inv = 1.0 / np.sqrt(var + dtype(1e-5))
            xhat, Y = pk.bn_normalise(X, mean, inv, np.ones(5, dtype), np.zeros(5, dtype))
            sums = pk.bn_grad_sums(dY, xhat)
            out[mode] = (mean, var, xhat, Y, *sums, pk.bn_input_grad(dY, xhat, inv, sums[1] / 9, sums[0] / 9))
    for a, b in zip(out["parallel"], out["serial"]):
        assert same_bits(a, b)


# --------------------------------------------------------------------------------------------------
# whole networks


@contextlib.contextmanager
def specifications():
    """The convolutional layers run their NumPy specifications (the code before the fast paths): the cpu
    backend's convolutional operations replaced by the reference backend's (purerigl.kernels.host_conv)."""
    import purerigl.kernels.cpu as cpu_backend
    from purerigl.kernels import host_conv
    from purerigl.kernels.registry import CONV_OPS

    with pytest.MonkeyPatch.context() as mp:
        for op in CONV_OPS:
            # conv_input_grad_fm is a product, not layout work: held to its spec to rounding
            # (test_conv_products.py); so are the products from the input that takes_patches selects
            # (test_conv_direct.py), which both runs therefore take alike
            if op not in ("conv_input_grad_fm", "takes_patches"):
                mp.setattr(cpu_backend, op, getattr(host_conv, op))
        yield


def network_step(model, fmt, shape, spec: bool):
    net = build_model(model, shape, 10, fmt=fmt, sparsity=0.9, backend="cpu", rng=0)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, int(np.prod(shape)))).astype(np.float32)
    y = rng.integers(0, 10, 3)
    with specifications() if spec else contextlib.nullcontext():
        logits = net.forward(X)
        _, dlogits, _ = net.backend.softmax_cross_entropy(logits, y)
        net.backward(dlogits)
    return logits, {p.name: p.grad.copy() for p in net.parameters()}


@pytest.mark.parametrize("fmt", ["csr", "condensed"])
def test_lenet5_step_same_bits_as_the_specifications(fmt):
    logits, grads = network_step("lenet5", fmt, (1, 12, 12), spec=False)
    logits_r, grads_r = network_step("lenet5", fmt, (1, 12, 12), spec=True)
    assert same_bits(logits, logits_r)
    assert grads.keys() == grads_r.keys() and all(same_bits(grads[k], grads_r[k]) for k in grads)


def test_vgg_small_step_matches_the_specifications():
    logits, grads = network_step("vgg-small", "csr", (1, 8, 8), spec=False)
    logits_r, grads_r = network_step("vgg-small", "csr", (1, 8, 8), spec=True)
    np.testing.assert_allclose(logits, logits_r, rtol=1e-4, atol=1e-5)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_r[k], rtol=1e-3, atol=1e-4 * (1 + np.abs(grads_r[k]).max()))


@st.composite
def pools_2x2(draw):
    """(B, C, H, W), padding, dtype, seed for the 2 x 2 window at stride 2 (odd sizes drop a row or
    a column, as the window walk does)."""
    p = draw(st.integers(0, 1))
    H = draw(st.integers(max(1, 2 - 2 * p), 11))
    W = draw(st.integers(max(1, 2 - 2 * p), 11))
    B = draw(st.sampled_from([1, 2, 3]))
    C = draw(st.integers(1, 3))
    return (B, C, H, W), p, draw(st.sampled_from([np.float32, np.float64])), draw(st.integers(0, 2**32 - 1))


@FEW
@given(pools_2x2(), st.booleans())
def test_maxpool_2x2_stride_2_kernels_equal_the_reference(problem, special):
    """The written-out 2 x 2 / stride 2 kernels (the built-in networks' pooling) give the reference's
    maxima, offsets (ties to the first, a NaN winning) and input gradient bit for bit, serial and
    parallel; the general kernels are not called (they are removed for the test)."""
    shape, p, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X = pool_input(shape, dtype, rng, special)
    Ho, Wo = patches.output_hw(shape, 2, 2, 2, p)
    dY = rng.standard_normal((shape[0], shape[1], Ho, Wo)).astype(dtype)
    dY.reshape(-1)[::3] = -0.0  # 0 + (-0.0) is 0.0: the same bits as the reference's accumulation
    Yr, argr = maxpool_reference(X, 2, 2, p)
    dXr = maxpool_backward_reference(dY, argr, shape, 2, 2, p)
    for mode in ("parallel", "serial"):
        with kernels_run(mode), pytest.MonkeyPatch.context() as mp:
            mp.setattr(pooling, "_maxpool", None)  # only the 2 x 2 / stride 2 kernels can run
            mp.setattr(pooling, "_maxpool_backward", None)
            Y, arg = pooling.maxpool_forward(X, 2, 2, p, Ho, Wo)
            dX = pooling.maxpool_backward(dY, arg, shape, 2, 2, p)
        assert same_bits(Y, Yr) and np.array_equal(arg, argr)
        assert same_bits(dX, dXr)
