"""The convolution's feature-major path (:mod:`purerigl.nn.conv`) and the linear layer's feature-major
products (:meth:`SparseLinear.forward_fm` / :meth:`SparseLinear.backward_fm`).

Pins down:

- a SparseConv2d step (forward_fm on im2col_t, backward_fm, conv_input_grad_fm) equals the row-layout step of
  the same linear (forward on im2col, backward, col2im) on every host backend and format, within
  float32 accumulation error; the bias is added / summed exactly as the row layout's;
- :func:`fm_to_nchw` and :func:`nchw_to_fm` are the row layout's :func:`to_nchw` / :func:`to_rows`
  transposed, bit for bit (bias included);
- what DST reads is unchanged: ``saved_batch`` / ``last_input`` / ``last_output_grad`` are the row
  layout (P and dY2), with one batch and with the ring of :meth:`SparseLinear.keep_batches`, and
  ``kept_batches`` / ``set_kept_batches`` round-trip in the row layout;
- a backward of the other layout than the forward is refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.nn.conv import SparseConv2d, fm_to_nchw, nchw_to_fm, to_nchw, to_rows
from purerigl.nn.layers import SparseLinear
from purerigl.nn.patches import col2im, im2col

FORMATS = {
    "csr": lambda shape: CSR.random(shape, 0.3, rng=1),
    "condensed": lambda shape: Condensed.random(shape, 0.3, rng=2),
    "diagonal": lambda shape: Diagonal.random(shape, 0.3, rng=3),
}


def _layer(fmt, backend, c_in=3, c_out=5, k=3, stride=1, padding=1, **kw):
    W = FORMATS[fmt]((c_out, c_in * k * k))
    bias = np.linspace(-1, 1, c_out).astype(np.float32)
    return SparseConv2d(W, c_in, k, stride=stride, padding=padding, bias=bias, backend=backend, name="c", **kw)


def _row_step(layer, X, dY):
    """The row-layout step of the same linear layer: what SparseConv2d computed before."""
    conv = (layer.kh, layer.kw, layer.stride, layer.padding)
    lin = layer.linear
    lin.needs_input_grad = True  # a convolution's linear computes no input gradient; this row-layout twin does
    B, _, Ho, Wo = dY.shape
    Y = to_nchw(lin.forward(im2col(X, *conv)), B, Ho, Wo)
    dX = col2im(lin.backward(to_rows(dY)), X.shape, *conv)
    return Y, dX, lin.weight.grad.copy(), lin.bias.grad.copy()


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_feature_major_step_equals_the_row_layout_step(backend, fmt, B, stride, padding):
    rng = np.random.default_rng(B)
    layer = _layer(fmt, backend, stride=stride, padding=padding)
    X = rng.standard_normal((B, 3, 9, 8)).astype(np.float32)
    Y = layer.forward(X)
    dY = rng.standard_normal(Y.shape).astype(np.float32)
    dX = layer.backward(dY)
    gW, gb = layer.weight.grad.copy(), layer.bias.grad.copy()
    Y_r, dX_r, gW_r, gb_r = _row_step(_layer(fmt, backend, stride=stride, padding=padding), X, dY)
    assert Y.flags.c_contiguous and Y.shape == Y_r.shape
    np.testing.assert_allclose(Y, Y_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dX, dX_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gW, gW_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, gb_r, rtol=1e-5, atol=1e-5)


def test_layout_helpers_are_the_row_layout_transposed():
    rng = np.random.default_rng(0)
    B, c, Ho, Wo = 3, 4, 5, 6
    Y2 = rng.standard_normal((B * Ho * Wo, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    got = fm_to_nchw(np.ascontiguousarray(Y2.T), bias, B, Ho, Wo)
    assert got.flags.c_contiguous and np.array_equal(got, to_nchw(Y2 + bias, B, Ho, Wo))
    dY = rng.standard_normal((B, c, Ho, Wo)).astype(np.float32)
    dYT = nchw_to_fm(dY)
    assert dYT.flags.c_contiguous and np.array_equal(dYT, to_rows(dY).T)


def test_saved_batch_is_the_row_layout(backend):
    rng = np.random.default_rng(1)
    layer = _layer("csr", backend)
    X = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    dY = rng.standard_normal(layer.forward(X).shape).astype(np.float32)
    layer.backward(dY)
    P, dY2 = layer.linear.saved_batch()
    assert P.flags.c_contiguous and np.array_equal(P, im2col(X, 3, 3, 1, 1))
    assert dY2.flags.c_contiguous and np.array_equal(dY2, to_rows(dY))
    assert layer.linear.saved_batch()[0] is P  # made once per step
    np.testing.assert_array_equal(layer.linear.last_input, P)
    np.testing.assert_array_equal(layer.linear.last_output_grad, dY2)
    layer.forward(X)  # a new step drops the copies
    assert layer.linear.saved_batch()[0] is not P


def test_ring_of_kept_batches_is_the_row_layout(backend):
    rng = np.random.default_rng(2)
    layer = _layer("condensed", backend)
    lin = layer.linear
    lin.keep_batches(2)
    batches = []
    for _ in range(3):
        X = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
        dY = rng.standard_normal(layer.forward(X).shape).astype(np.float32)
        layer.backward(dY)
        batches.append((im2col(X, 3, 3, 1, 1), to_rows(dY)))
    P, dY2 = lin.saved_batch()  # the last two, stacked oldest first
    np.testing.assert_array_equal(P, np.vstack([batches[1][0], batches[2][0]]))
    np.testing.assert_array_equal(dY2, np.vstack([batches[1][1], batches[2][1]]))
    kept = lin.kept_batches()
    assert len(kept) == 2 and all(np.array_equal(k[0], b[0]) for k, b in zip(kept, batches[1:]))
    other = _layer("condensed", backend).linear
    other.keep_batches(2)
    other.set_kept_batches(kept)
    for a, b in zip(other.saved_batch(), (P, dY2)):
        np.testing.assert_array_equal(a, b)


def test_mixed_layouts_are_refused(backend):
    lin = SparseLinear(CSR.random((4, 6), 0.5, rng=0), backend=backend, name="l")
    lin.forward_fm(np.ones((6, 3), np.float32))
    with pytest.raises(ValueError, match="backward after forward_fm"):
        lin.backward(np.ones((3, 4), np.float32))
    lin.forward(np.ones((3, 6), np.float32))
    with pytest.raises(ValueError, match="backward_fm after forward"):
        lin.backward_fm(np.ones((4, 3), np.float32))


def test_tiled_feature_major_conv_matches_the_whole_batch(backend):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 3, 7, 7)).astype(np.float32)
    whole = _layer("diagonal", backend)
    tiled = _layer("diagonal", backend, max_tile_bytes=1)  # one sample per chunk
    Y = whole.forward(X)
    np.testing.assert_array_equal(tiled.forward(X), Y)
    dY = rng.standard_normal(Y.shape).astype(np.float32)
    np.testing.assert_allclose(tiled.backward(dY), whole.backward(dY), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiled.weight.grad, whole.weight.grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tiled.bias.grad, whole.bias.grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tiled.linear.last_input, im2col(X[4:], 3, 3, 1, 1))
