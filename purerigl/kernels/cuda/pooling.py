"""CUDA kernels of the pooling layers: max, average and global average pooling, forward and backward.

The cuda side of ``maxpool_forward``, ``maxpool_backward``, ``avgpool_forward``, ``avgpool_backward``,
``global_avgpool_forward`` and ``global_avgpool_backward`` (:data:`purerigl.kernels.registry.CONV_OPS`):
the signatures and values of the NumPy specification :mod:`purerigl.kernels.host_conv`, on float32
device arrays. Every (sample, channel) plane is pooled on its own; no window matrix is built.

Launches: one thread per output row (forwards), input row (backwards) or plane (global pooling),
walking it element by element: fewer, longer threads, which keeps Numba's CUDA simulator (whose cost
is per thread) fast enough for the tests; on a GPU a per-element launch would coalesce better (not
measured: these kernels have only run on the simulator).

- Forwards: each output walks its window in row-major (i, j) order. Max pooling keeps
  the *first* maximum in that order (the padding counts as -inf, a NaN wins over every number and the
  first NaN is kept: ``argmax``'s rule) and records its offset i * k + j in ``arg`` (int64), like
  the specification. Average pooling sums in float32 in that order and divides by k * k (padding
  included in the count), global average pooling sums a plane in ascending order and divides by
  H * W: the specification's NumPy sums use another order, so those two agree to float32 rounding.
- Backwards gather: each input pixel adds, offset (i, j) by offset in row-major order from
  float32 0, what the windows covering it send back (max: dY where the window's ``arg`` points at
  the pixel; average: dY / k^2): the specification's col2im order, so the same bits, and no atomics.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from ..host_conv import output_hw
from ._launch import cuda, empty, launch
from .elementwise import check_device

__all__ = ["avgpool_backward", "avgpool_forward", "global_avgpool_backward", "global_avgpool_forward",
           "maxpool_backward", "maxpool_forward"]


@cuda.jit
def _maxpool_kernel(X, Y, arg, k, s, p):
    """Y[b, c, ho, wo] = the first maximum of the window at (s ho - p, s wo - p), arg its offset; one
    thread per output row (b, c, ho)."""
    B, C, H, W = X.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    for q in range(cuda.grid(1), B * C * Ho, cuda.gridsize(1)):
        ho = q % Ho
        c = (q // Ho) % C
        b = q // (Ho * C)
        for wo in range(Wo):
            best = -math.inf
            at = 0
            first = True
            for i in range(k):
                y = s * ho + i - p
                for j in range(k):
                    x = s * wo + j - p
                    v = -math.inf
                    if 0 <= y < H and 0 <= x < W:
                        v = X[b, c, y, x]
                    if first:
                        best = v
                        first = False
                    elif best == best and (v > best or v != v):  # best is no NaN; v larger, or NaN
                        best = v
                        at = i * k + j
            Y[b, c, ho, wo] = best
            arg[b, c, ho, wo] = at


@cuda.jit
def _pool_backward_kernel(dY, arg, dX, k, s, p, divisor, use_arg):
    """dX[b, c, y, x] = sum over the windows covering (y, x), offsets (i, j) in row-major order, of
    dY / divisor (average: divisor k^2, NumPy's ``dY / k^2``) or, with ``use_arg`` (max), of dY where
    the window's ``arg`` is the pixel's offset. One thread per input row (b, c, y)."""
    B, C, H, W = dX.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    for q in range(cuda.grid(1), B * C * H, cuda.gridsize(1)):
        y = q % H
        c = (q // H) % C
        b = q // (H * C)
        for x in range(W):
            acc = np.float32(0.0)
            for i in range(k):
                yy = y + p - i
                if yy >= 0 and yy % s == 0 and yy // s < Ho:
                    ho = yy // s
                    for j in range(k):
                        xx = x + p - j
                        if xx >= 0 and xx % s == 0 and xx // s < Wo:
                            wo = xx // s
                            if use_arg:
                                if arg[b, c, ho, wo] == i * k + j:
                                    acc += dY[b, c, ho, wo]
                            else:
                                acc += dY[b, c, ho, wo] / divisor
            dX[b, c, y, x] = acc


@cuda.jit
def _avgpool_kernel(X, Y, k, s, p, kk):
    """Y[b, c, ho, wo] = (sum of the window, padding as 0, row-major order, float32) / kk; one thread
    per output row (b, c, ho)."""
    B, C, H, W = X.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    for q in range(cuda.grid(1), B * C * Ho, cuda.gridsize(1)):
        ho = q % Ho
        c = (q // Ho) % C
        b = q // (Ho * C)
        for wo in range(Wo):
            acc = np.float32(0.0)
            for i in range(k):
                y = s * ho + i - p
                for j in range(k):
                    x = s * wo + j - p
                    if 0 <= y < H and 0 <= x < W:
                        acc += X[b, c, y, x]
            Y[b, c, ho, wo] = acc / kk


@cuda.jit
def _gap_kernel(X3, Y, hw):
    """Y[b, c] = (sum_e X3[b, c, e], ascending, float32) / hw; one thread per plane (b, c)."""
    B, C = Y.shape
    for q in range(cuda.grid(1), B * C, cuda.gridsize(1)):
        b = q // C
        c = q % C
        acc = np.float32(0.0)
        for e in range(X3.shape[2]):
            acc += X3[b, c, e]
        Y[b, c] = acc / hw


@cuda.jit
def _gap_backward_kernel(dY, dX3, hw):
    """dX3[b, c, e] = dY[b, c] / hw; one thread per plane (b, c)."""
    B, C, HW = dX3.shape
    for q in range(cuda.grid(1), B * C, cuda.gridsize(1)):
        b = q // C
        c = q % C
        v = dY[b, c] / hw
        for e in range(HW):
            dX3[b, c, e] = v


def _nchw(name: str, X):
    check_device(name, X, ndim=4)
    return tuple(int(n) for n in X.shape)


def _check_grad(dY, X_shape, k: int, stride: int, padding: int):
    """(B, C, H, W) after checking dY (B, C, Ho, Wo) against the input shape."""
    B, C, H, W = (int(n) for n in X_shape)
    Ho, Wo = output_hw((B, C, H, W), k, k, stride, padding)
    check_device("dY", dY, shape=(B, C, Ho, Wo))
    return B, C, H, W


def maxpool_forward(X, k: int, stride: int, padding: int):
    """(Y (B, C, Ho, Wo) float32, arg (B, C, Ho, Wo) int64) of the device array X (see
    :func:`purerigl.kernels.host_conv.maxpool_forward`).

    .. math:: Y[b, c, h_o, w_o] = \\max_{i, j} X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, _, _ = _nchw("X", X)
    Ho, Wo = output_hw(X.shape, k, k, stride, padding)
    Y = empty((B, C, Ho, Wo), np.float32)
    arg = empty((B, C, Ho, Wo), np.int64)
    launch(_maxpool_kernel, B * C * Ho, X, Y, arg, k, stride, padding)
    return Y, arg


def maxpool_backward(dY, arg, X_shape, k: int, stride: int, padding: int):
    """dX (B, C, H, W) of dY (B, C, Ho, Wo), each dY to its window's recorded maximum ``arg`` (see
    :func:`purerigl.kernels.host_conv.maxpool_backward`; the same bits).

    .. math:: dX[b, c, y^*, x^*] \\mathrel{+}= dY[b, c, h_o, w_o]
    """
    B, C, H, W = _check_grad(dY, X_shape, k, stride, padding)
    check_device("arg", arg, np.int64, shape=tuple(dY.shape))
    dX = empty((B, C, H, W), np.float32)
    launch(_pool_backward_kernel, B * C * H, dY, arg, dX, k, stride, padding, np.float32(1.0), True)
    return dX


def avgpool_forward(X, k: int, stride: int, padding: int):
    """Average pooling of the device array X (B, C, H, W) -> (B, C, Ho, Wo), divisor k * k (see
    :func:`purerigl.kernels.host_conv.avgpool_forward`).

    .. math:: Y[b, c, h_o, w_o] = \\frac{1}{k^2} \\sum_{i, j} X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, _, _ = _nchw("X", X)
    Ho, Wo = output_hw(X.shape, k, k, stride, padding)
    Y = empty((B, C, Ho, Wo), np.float32)
    launch(_avgpool_kernel, B * C * Ho, X, Y, k, stride, padding, np.float32(k * k))
    return Y


def avgpool_backward(dY, X_shape, k: int, stride: int, padding: int):
    """dX (B, C, H, W) of dY (B, C, Ho, Wo): every window shares dY / k^2 among its pixels (see
    :func:`purerigl.kernels.host_conv.avgpool_backward`; the same bits).

    .. math:: dX = \\mathrm{col2im}\\Big(\\frac{dY}{k^2} \\mathbf{1}^T\\Big)
    """
    B, C, H, W = _check_grad(dY, X_shape, k, stride, padding)
    dX = empty((B, C, H, W), np.float32)
    launch(_pool_backward_kernel, B * C * H, dY, dY, dX, k, stride, padding, np.float32(k * k), False)
    return dX


def global_avgpool_forward(X):
    """The spatial mean of the device array X (B, C, H, W) -> (B, C) (see
    :func:`purerigl.kernels.host_conv.global_avgpool_forward`).

    .. math:: Y[b, c] = \\frac{1}{HW} \\sum_{y, x} X[b, c, y, x]
    """
    B, C, H, W = _nchw("X", X)
    Y = empty((B, C), np.float32)
    launch(_gap_kernel, Y.size, X.reshape(B, C, H * W), Y, np.float32(H * W))  # (B, C, H*W), a view
    return Y


def global_avgpool_backward(dY, X_shape):
    """dY (B, C) -> dX (B, C, H, W) = dY / (H W) at every pixel (see
    :func:`purerigl.kernels.host_conv.global_avgpool_backward`).

    .. math:: dX[b, c, y, x] = \\frac{dY[b, c]}{HW}
    """
    B, C, H, W = (int(n) for n in X_shape)
    check_device("dY", dY, shape=(B, C))
    if H * W < 1:
        raise ShapeError(f"global pooling needs a non-empty plane, got input shape {tuple(X_shape)}")
    dX = empty((B, C, H, W), np.float32)
    launch(_gap_backward_kernel, B * C, dY, dX.reshape(B, C, H * W), np.float32(H * W))  # a view
    return dX
