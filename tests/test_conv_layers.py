"""The convolutional building blocks: patches, SparseConv2d, Conv2d, BatchNorm2d and the pools.

- im2col / col2im: the adjoint identity on random arrays, and im2col against a loop-by-loop build.
- SparseConv2d, every format on both host backends: the forward against a dense convolution computed
  another way (``scipy.signal.correlate`` per (output, input) channel pair on the zero-padded input,
  then strided, with the filters read by ``oracles.dense_of``); the input gradient against
  ``scipy.signal.convolve`` of the stride-dilated output gradient with each filter; the value gradient
  against a dense filter gradient summed by loops over output pixels, read at the stored positions
  (``oracles.positions_of``). Tolerance per entry: 1e-5 * (1 + scale), scale being the same sum over
  absolute values (float32 kernels).
- Tiling: a tiny tile bound gives the same outputs and gradients as none.
- Central finite differences in float64 (step 1e-6) of Conv2d, BatchNorm2d (training and evaluation),
  MaxPool2d (inputs without ties), AvgPool2d, GlobalAvgPool2d and Flatten, for a read-out
  ``sum(R * Y)`` with a fixed random R.
- BatchNorm's running statistics against the direct formula; the refusal of device backends.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import dense_of, patches_by_loops, positions_of

from purerigl.errors import PureriglError, ShapeError
from purerigl.formats.budget import random_layer_with_budget
from purerigl.kernels import get_backend
from purerigl.kernels.registry import Backend
from purerigl.nn.conv import Conv2d, SparseConv2d, to_rows
from purerigl.nn.norm import BatchNorm2d
from purerigl.nn.patches import ConvBackendError, check_host_backend, col2im, conv_output_size, im2col, patch_tiles
from purerigl.nn.pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d

BACKENDS = ["reference", "cpu"]
FORMATS = ["condensed", "diagonal", "csr"]
FEW = settings(max_examples=25)


# --------------------------------------------------------------------------------------------------
# oracles (float64, built without im2col)


def _pad(X, p):
    return np.pad(X, ((0, 0), (0, 0), (p, p), (p, p)))


def conv_oracle(X, K, bias, s, p):
    """Y (B, O, Ho, Wo): scipy.signal.correlate per (o, c) on the padded input, then strided."""
    Xp = _pad(np.asarray(X, np.float64), p)
    B, C = X.shape[:2]
    O = K.shape[0]
    out = []
    for b in range(B):
        for o in range(O):
            acc = sum(scipy.signal.correlate(Xp[b, c], K[o, c], mode="valid") for c in range(C))
            out.append(acc[::s, ::s] + bias[o])
    Ho, Wo = out[0].shape
    return np.array(out).reshape(B, O, Ho, Wo)


def conv_input_grad_oracle(dY, K, X_shape, s, p):
    """dX: the stride-dilated dY convolved (scipy.signal.convolve, full) with every filter, cropped."""
    B, C, H, W = X_shape
    O, _, kh, kw = K.shape
    Ho, Wo = dY.shape[2:]
    dXp = np.zeros((B, C, H + 2 * p, W + 2 * p))
    D = np.zeros((B, O, (Ho - 1) * s + 1, (Wo - 1) * s + 1))
    D[:, :, ::s, ::s] = dY
    for b in range(B):
        for c in range(C):
            full = sum(scipy.signal.convolve(D[b, o], K[o, c], mode="full") for o in range(O))
            dXp[b, c, : full.shape[0], : full.shape[1]] = full
    return dXp[:, :, p : p + H, p : p + W]


def conv_filter_grad_oracle(X, dY, kh, kw, s, p):
    """dK (O, C, kh, kw) = sum over samples and output pixels of dY * the input under the kernel (loops)."""
    Xp = _pad(np.asarray(X, np.float64), p)
    dY = np.asarray(dY, np.float64)
    O, C = dY.shape[1], X.shape[1]
    Ho, Wo = dY.shape[2:]
    dK = np.zeros((O, C, kh, kw))
    for i in range(kh):
        for j in range(kw):
            for ho in range(Ho):
                for wo in range(Wo):
                    dK[:, :, i, j] += dY[:, :, ho, wo].T @ Xp[:, :, s * ho + i, s * wo + j]
    return dK


def assert_close_scaled(got, want, scale, factor=1e-5):
    err = np.abs(np.asarray(got, np.float64) - want)
    bound = factor * (1.0 + scale)
    assert err.shape == bound.shape
    assert (err <= bound).all(), f"max excess {np.max(err - bound)} (max err {err.max()})"


# --------------------------------------------------------------------------------------------------
# patches


def test_conv_output_size_and_refusal():
    assert conv_output_size(7, 3, 2, 1) == 4
    assert conv_output_size(1, 3, 1, 1) == 1
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        conv_output_size(1, 3, 1, 0)
    with pytest.raises(ShapeError):
        conv_output_size(5, 3, 0, 0)


@st.composite
def image_problems(draw):
    kh, kw, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * p), 7))
    W = draw(st.integers(max(1, kw - 2 * p), 7))
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (B, C, H, W), kh, kw, s, p, draw(st.integers(0, 2**32 - 1))


@FEW
@given(image_problems())
def test_col2im_is_the_adjoint_of_im2col(problem):
    shape, kh, kw, s, p, seed = problem
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape)
    P = im2col(X, kh, kw, s, p)
    Cm = rng.standard_normal(P.shape)
    lhs = np.vdot(col2im(Cm, shape, kh, kw, s, p), X)
    assert np.isclose(lhs, np.vdot(Cm, P), rtol=1e-12, atol=1e-12)


@FEW
@given(image_problems())
def test_im2col_matches_loops(problem):
    (B, C, H, W), kh, kw, s, p, seed = problem
    X = np.random.default_rng(seed).standard_normal((B, C, H, W)).astype(np.float32)
    want = patches_by_loops(X, kh, kw, s, p).astype(np.float32)  # (B*Ho*Wo, C*kh*kw), exact
    assert want.shape == (B * conv_output_size(H, kh, s, p) * conv_output_size(W, kw, s, p), C * kh * kw)
    got = im2col(X, kh, kw, s, p)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_patch_tiles_cover_in_bounded_tiles():
    assert list(patch_tiles(10, 3, 7)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert list(patch_tiles(3, 100, 7)) == [(0, 1), (1, 2), (2, 3)]  # one row even above the bound
    assert list(patch_tiles(5, 4)) == [(0, 5)]
    assert list(patch_tiles(0, 4, 8)) == []


# --------------------------------------------------------------------------------------------------
# SparseConv2d against the oracles


@st.composite
def conv_problems(draw, fmt):
    (B, c_in, H, W), kh, kw, s, p, seed = draw(image_problems())
    c_out = draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    n = c_out * c_in * kh * kw
    budget = int(rng.integers(c_out if fmt == "condensed" else 1, n + 1))
    Wm = random_layer_with_budget(fmt, (c_out, c_in * kh * kw), budget, rng)
    X = rng.standard_normal((B, c_in, H, W)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    return Wm, X, bias, (kh, kw), s, p, rng


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_conv_matches_oracle(fmt, backend):
    @FEW
    @given(conv_problems(fmt))
    def check(problem):
        Wm, X, bias, (kh, kw), s, p, rng = problem
        c_out, c_in = Wm.shape[0], X.shape[1]
        K = dense_of(Wm).reshape(c_out, c_in, kh, kw)  # (c_out, c_in, kh, kw), float64
        layer = SparseConv2d(Wm, c_in, (kh, kw), stride=s, padding=p, bias=bias, backend=backend)
        Y = layer.forward(X)
        want = conv_oracle(X, K, bias, s, p)
        assert Y.shape == want.shape and Y.dtype == np.float32
        assert_close_scaled(Y, want, conv_oracle(np.abs(X), np.abs(K), np.abs(bias), s, p))

        dY = rng.standard_normal(Y.shape).astype(np.float32)
        dX = layer.backward(dY)
        assert dX.shape == X.shape
        scale = conv_input_grad_oracle(np.abs(dY), np.abs(K), X.shape, s, p)
        assert_close_scaled(dX, conv_input_grad_oracle(dY, K, X.shape, s, p), scale)

        rows, cols = positions_of(Wm)  # shaped like W.values
        dK = conv_filter_grad_oracle(X, dY, kh, kw, s, p).reshape(c_out, -1)  # (c_out, c_in*kh*kw)
        dK_scale = conv_filter_grad_oracle(np.abs(X), np.abs(dY), kh, kw, s, p).reshape(c_out, -1)
        assert layer.weight.grad.shape == Wm.values.shape
        assert_close_scaled(layer.weight.grad, dK[rows, cols], dK_scale[rows, cols])
        assert_close_scaled(layer.bias.grad, dY.sum(axis=(0, 2, 3), dtype=np.float64),
                            np.abs(dY).sum(axis=(0, 2, 3), dtype=np.float64))

        # what DST reads: the linear's saved batch is (patches, dY in rows)
        np.testing.assert_array_equal(layer.linear.last_input, im2col(X, kh, kw, s, p))
        np.testing.assert_array_equal(layer.linear.last_output_grad, to_rows(dY))

    check()


def test_sparse_conv_interface_and_refusals():
    rng = np.random.default_rng(0)
    Wm = random_layer_with_budget("diagonal", (4, 2 * 3 * 3), 20, rng)
    layer = SparseConv2d(Wm, 2, 3, padding=1, name="c1", backend="reference")
    assert layer.shape == (4, 18) and layer.W is Wm and layer.matrix is Wm
    assert [p.name for p in layer.parameters()] == ["c1.values", "c1.bias"]
    assert layer.weight is layer.linear.weight and layer.bias is layer.linear.bias
    assert "SparseConv2d" in repr(layer)
    layer.needs_input_grad = False
    X = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    assert layer.backward(layer.forward(X)) is None
    layer.set_backend("cpu")
    assert layer.backend.name == "cpu"
    with pytest.raises(ShapeError, match="c_in \\* kh \\* kw"):
        SparseConv2d(Wm, 3, 3)
    with pytest.raises(ShapeError, match="channels"):
        layer.forward(X[:, :1])
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        SparseConv2d(Wm, 2, 3).forward(X[:, :, :2, :2])


# --------------------------------------------------------------------------------------------------
# tiling


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bound", [1, 2 * 9 * 18 * 4 * 2])  # one sample per chunk; two samples per chunk
def test_sparse_conv_tiling_changes_nothing(fmt, bound):
    rng = np.random.default_rng(1)
    Wm = random_layer_with_budget(fmt, (5, 2 * 3 * 3), 40, rng)
    X = rng.standard_normal((5, 2, 5, 5)).astype(np.float32)  # Ho = Wo = 3 (stride 2, padding 1)
    bias = rng.standard_normal(5).astype(np.float32)
    whole = SparseConv2d(Wm.copy(), 2, 3, stride=2, padding=1, bias=bias, backend="cpu")
    tiled = SparseConv2d(Wm.copy(), 2, 3, stride=2, padding=1, bias=bias, backend="cpu", max_tile_bytes=bound)
    Y = whole.forward(X)
    np.testing.assert_array_equal(tiled.forward(X), Y)
    assert len(tiled._tiles) > 1
    dY = rng.standard_normal(Y.shape).astype(np.float32)
    np.testing.assert_allclose(tiled.backward(dY), whole.backward(dY), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiled.weight.grad, whole.weight.grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tiled.bias.grad, whole.bias.grad, rtol=1e-5, atol=1e-5)
    a, b = tiled._tiles[-1]  # the linear's saved batch is the last chunk
    np.testing.assert_array_equal(tiled.linear.last_input, im2col(X[a:b], 3, 3, 2, 1))


def test_dense_conv_tiling_changes_nothing():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 2, 5, 4))
    whole = Conv2d.kaiming(2, 3, (3, 2), rng, padding=1, dtype=np.float64)
    tiled = Conv2d(whole.weight.value.copy(), stride=1, padding=1, dtype=np.float64, max_tile_bytes=1)
    Y = whole.forward(X)
    np.testing.assert_allclose(tiled.forward(X), Y, rtol=1e-12)
    dY = rng.standard_normal(Y.shape)
    np.testing.assert_allclose(tiled.backward(dY), whole.backward(dY), rtol=1e-12)
    np.testing.assert_allclose(tiled.weight.grad, whole.weight.grad, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# finite differences (float64)

EPS = 1e-6


def fd_check(layer, X, params, rng, rtol=1e-5):
    """Analytic input and parameter gradients of ``sum(R * layer(X))`` against central differences."""
    Y = layer.forward(X)
    R = rng.standard_normal(Y.shape)
    dX = layer.backward(R)
    grads = [p.grad.copy() for p in params]

    def loss():
        return float(np.sum(R * layer.forward(X)))

    def numeric(a):
        out = np.zeros(a.shape)
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + EPS
            up = loss()
            a[idx] = keep - EPS
            down = loss()
            a[idx] = keep
            out[idx] = (up - down) / (2 * EPS)
        return out

    for got, a in [(dX, X)] + [(g, p.value) for g, p in zip(grads, params)]:
        want = numeric(a)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (1e-3 + np.abs(want).max()))


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), ((2, 3), 2, 0), (1, 2, 2)])
def test_conv2d_gradients_fd(kernel, stride, padding):
    rng = np.random.default_rng(3)
    layer = Conv2d.kaiming(2, 3, kernel, rng, stride=stride, padding=padding, dtype=np.float64)
    layer.bias.value[...] = rng.standard_normal(3)
    X = rng.standard_normal((2, 2, 5, 4))
    fd_check(layer, X, layer.parameters(), rng)
    K = layer.weight.value
    np.testing.assert_allclose(layer.forward(X), conv_oracle(X, K, layer.bias.value, stride, padding), rtol=1e-12,
                               atol=1e-12)


def test_conv2d_kaiming_and_interface():
    rng = np.random.default_rng(4)
    layer = Conv2d.kaiming(16, 64, 3, rng, padding=1, name="stem")
    assert layer.weight.value.dtype == np.float32 and layer.shape == (64, 144)
    assert abs(layer.weight.value.std() / np.sqrt(2.0 / 144) - 1) < 0.05
    assert [p.name for p in layer.parameters()] == ["stem.weight", "stem.bias"]
    assert "Conv2d" in repr(layer)
    layer.needs_input_grad = False
    X = rng.standard_normal((1, 16, 3, 3)).astype(np.float32)
    Y = layer.forward(X)
    assert Y.dtype == np.float32 and Y.shape == (1, 64, 3, 3)
    assert layer.backward(Y) is None


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients_fd(training):
    rng = np.random.default_rng(5)
    layer = BatchNorm2d(3, dtype=np.float64)
    layer.weight.value[...] = rng.standard_normal(3)
    layer.bias.value[...] = rng.standard_normal(3)
    if not training:
        layer.load_buffers({"bn.running_mean": rng.standard_normal(3), "bn.running_var": rng.random(3) + 0.5})
        layer.eval()
    X = rng.standard_normal((3, 3, 3, 2)) * 2 + 1
    fd_check(layer, X, layer.parameters(), rng)


def test_batchnorm_running_statistics_and_eval():
    rng = np.random.default_rng(6)
    layer = BatchNorm2d(2, momentum=0.1, eps=1e-5, name="bn1")
    assert all(not p.decay for p in layer.parameters())
    rm, rv = np.zeros(2), np.ones(2)
    for _ in range(2):
        X = (rng.standard_normal((4, 2, 3, 3)) * 3 + 2).astype(np.float32)
        layer.forward(X)
        Xc = X.astype(np.float64).transpose(1, 0, 2, 3).reshape(2, -1)  # (C, B*H*W)
        rm = 0.9 * rm + 0.1 * Xc.mean(axis=1)
        rv = 0.9 * rv + 0.1 * Xc.var(axis=1, ddof=1)
    buffers = layer.buffers()
    assert set(buffers) == {"bn1.running_mean", "bn1.running_var"}
    np.testing.assert_allclose(buffers["bn1.running_mean"], rm, rtol=1e-5)
    np.testing.assert_allclose(buffers["bn1.running_var"], rv, rtol=1e-5)
    layer.weight.value[...] = [2.0, -1.0]
    layer.bias.value[...] = [0.5, 0.0]
    layer.eval()
    X = rng.standard_normal((1, 2, 1, 1)).astype(np.float32)  # one value per channel is fine in eval mode
    want = (X - rm.reshape(1, 2, 1, 1)) / np.sqrt(rv.reshape(1, 2, 1, 1) + 1e-5)
    want = want * np.array([2.0, -1.0]).reshape(1, 2, 1, 1) + np.array([0.5, 0.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(layer.forward(X), want, rtol=1e-5)
    np.testing.assert_allclose(layer.buffers()["bn1.running_mean"], rm, rtol=1e-5)  # eval updates nothing
    other = BatchNorm2d(2, name="bn1")
    other.load_buffers({k: v.copy() for k, v in buffers.items()})
    np.testing.assert_array_equal(other.running_var, layer.running_var)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        layer.train().forward(X)


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 1)])
def test_maxpool_gradients_fd(kernel, stride, padding):
    rng = np.random.default_rng(7)
    X = rng.permutation(2 * 2 * 5 * 5).reshape(2, 2, 5, 5) / 100.0  # distinct values: no ties
    layer = MaxPool2d(kernel, stride, padding)
    fd_check(layer, X, [], rng)
    if padding == 0 and stride is None:
        want = X[:, :, :4, :4].reshape(2, 2, 2, 2, 2, 2).max(axis=(3, 5))
        np.testing.assert_array_equal(layer.forward(X), want)


def test_maxpool_ties_go_to_the_first_maximum():
    X = np.array([[[[1.0, 3.0], [3.0, 3.0]]]])
    layer = MaxPool2d(2)
    assert layer.forward(X).item() == 3.0
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1, 1))), [[[[0.0, 1.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 1)])
def test_avgpool_gradients_fd(kernel, stride, padding):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((2, 2, 5, 4))
    layer = AvgPool2d(kernel, stride, padding)
    fd_check(layer, X, [], rng)
    if padding == 1 and stride == 2:  # count_include_pad: the corner window sums 4 pixels over 9
        np.testing.assert_allclose(layer.forward(X)[:, :, 0, 0], X[:, :, :2, :2].sum(axis=(2, 3)) / 9)


def test_global_pool_and_flatten_fd():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((2, 3, 4, 5))
    g = GlobalAvgPool2d()
    fd_check(g, X, [], rng)
    np.testing.assert_allclose(g.forward(X), X.mean(axis=(2, 3)))
    f = Flatten()
    fd_check(f, X, [], rng)
    assert f.forward(X).shape == (2, 60)
    assert f.forward(X.astype(np.float32)).dtype == np.float32
    assert g.forward(X.astype(np.float32)).dtype == np.float32


def test_pool_arguments_checked():
    with pytest.raises(ShapeError, match="padding"):
        MaxPool2d(2, padding=2)
    assert repr(MaxPool2d(3, 2, 1)) == "MaxPool2d(kernel=3, stride=2, padding=1)"


# --------------------------------------------------------------------------------------------------
# backends without the convolutional operations are refused (check_host_backend: device backends)


def test_device_backends_are_refused():
    standin = Backend("cuda", types.SimpleNamespace(RESIDENT=True))
    assert standin.resident
    with pytest.raises(ConvBackendError, match="reference and cpu backends only") as info:
        check_host_backend(standin)
    assert isinstance(info.value, PureriglError) and isinstance(info.value, ValueError)
    assert check_host_backend("reference") == get_backend("reference")
    rng = np.random.default_rng(10)
    Wm = random_layer_with_budget("csr", (2, 4), 3, rng)
    for make in (
        lambda: SparseConv2d(Wm, 1, 2, backend=standin),
        lambda: Conv2d(np.zeros((2, 1, 2, 2)), backend=standin),
        lambda: BatchNorm2d(2, backend=standin),
        lambda: MaxPool2d(2, backend=standin),
    ):
        with pytest.raises(ConvBackendError, match="convolutional operations"):
            make()
    layer = SparseConv2d(Wm, 1, 2, backend="cpu")
    with pytest.raises(ConvBackendError):
        layer.set_backend(standin)
