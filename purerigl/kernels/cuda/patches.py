"""CUDA kernels of the convolutions' layout work: patch matrices and output reorders.

The cuda side of part of :data:`purerigl.kernels.registry.CONV_OPS` (``im2col``, ``col2im``,
``im2col_t``, ``col2im_t``, ``fm_to_nchw``, ``nchw_to_fm``, ``rows_to_nchw``, ``nchw_to_rows``):
the same signatures and values as the NumPy specification :mod:`purerigl.kernels.host_conv`, on
float32 numba device arrays (host arrays are refused: no hidden copies). Every function allocates its
output on the device and launches one kernel; none copies to the host or synchronises.

Launches: one thread per *run* of outputs along a spatial row (a patch-matrix run of Wo values, an
input row of W pixels, a (sample, channel) plane for the reorders), not per element: fewer, longer
threads. That keeps Numba's CUDA simulator, whose cost is per thread, fast enough for the tests; on
a GPU a per-element launch would coalesce the memory accesses better (not measured: these kernels
have only run on the simulator).

Exactness. The patch maps and the reorders only move values (the bias add of ``fm_to_nchw`` is one
float32 addition, as in NumPy), so they equal the specification bit for bit. ``col2im`` /
``col2im_t`` *gather*: every input pixel adds the patch entries that came from it, offset
(i, j) by offset in row-major order, starting from 0 in float32: the specification's scatter-adds in
the same order, so the same bits, and no atomics.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ..host_conv import check_cols, output_hw
from ._launch import cuda, empty, launch
from .elementwise import check_device

__all__ = ["col2im", "col2im_t", "fm_to_nchw", "im2col", "im2col_t", "nchw_to_fm", "nchw_to_rows",
           "rows_to_nchw"]


# --------------------------------------------------------------------------------------------------
# Kernels


@cuda.jit
def _im2col_kernel(X, out, kh, kw, s, p, Ho, Wo, fill, transposed):
    """out[(b, ho, wo), (c, i, j)] = X_p[b, c, s ho + i, s wo + j] (``fill`` in the padding); with
    ``transposed`` the same into out[(c, i, j), (b, ho, wo)]. One thread per (c, i, j, b, ho): a run of
    Wo outputs (contiguous in the transposed layout)."""
    B, C, H, W = X.shape
    for q in range(cuda.grid(1), C * kh * kw * B * Ho, cuda.gridsize(1)):
        ho = q % Ho
        b = (q // Ho) % B
        k = q // (Ho * B)  # (c, i, j)
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        y = s * ho + i - p
        r0 = (b * Ho + ho) * Wo
        for wo in range(Wo):
            x = s * wo + j - p
            v = fill
            if 0 <= y < H and 0 <= x < W:
                v = X[b, c, y, x]
            if transposed:
                out[k, r0 + wo] = v
            else:
                out[r0 + wo, k] = v


@cuda.jit
def _col2im_kernel(cols, dX, kh, kw, s, p, Ho, Wo, transposed):
    """dX[b, c, y, x] = sum of the patch entries taken from (y, x): offsets (i, j) in row-major order,
    float32 from 0; cols is (B * Ho * Wo, C * kh * kw), or its transpose with ``transposed``. One thread
    per input row (b, c, y), pixel by pixel (a gather: no atomics)."""
    B, C, H, W = dX.shape
    for q in range(cuda.grid(1), B * C * H, cuda.gridsize(1)):
        y = q % H
        c = (q // H) % C
        b = q // (H * C)
        for x in range(W):
            acc = np.float32(0.0)
            for i in range(kh):
                yy = y + p - i
                if yy >= 0 and yy % s == 0 and yy // s < Ho:
                    ho = yy // s
                    for j in range(kw):
                        xx = x + p - j
                        if xx >= 0 and xx % s == 0 and xx // s < Wo:
                            r = (b * Ho + ho) * Wo + xx // s
                            k = (c * kh + i) * kw + j
                            if transposed:
                                acc += cols[k, r]
                            else:
                                acc += cols[r, k]
            dX[b, c, y, x] = acc


@cuda.jit
def _fm_to_nchw_kernel(YT, bias, Y3):
    """Y3[b, o, e] = YT[o, b * HW + e] + bias[o] for Y3 (B, c, HW); one thread per plane (b, o)."""
    B, c, HW = Y3.shape
    for q in range(cuda.grid(1), B * c, cuda.gridsize(1)):
        o = q % c
        b = q // c
        for e in range(HW):
            Y3[b, o, e] = YT[o, b * HW + e] + bias[o]


@cuda.jit
def _nchw_to_fm_kernel(dY3, out):
    """out[o, b * HW + e] = dY3[b, o, e] for dY3 (B, c, HW); one thread per plane (b, o)."""
    B, c, HW = dY3.shape
    for q in range(cuda.grid(1), B * c, cuda.gridsize(1)):
        o = q % c
        b = q // c
        for e in range(HW):
            out[o, b * HW + e] = dY3[b, o, e]


@cuda.jit
def _rows_to_nchw_kernel(Y2, Y3):
    """Y3[b, o, e] = Y2[b * HW + e, o] for Y3 (B, c, HW); one thread per plane (b, o)."""
    B, c, HW = Y3.shape
    for q in range(cuda.grid(1), B * c, cuda.gridsize(1)):
        o = q % c
        b = q // c
        for e in range(HW):
            Y3[b, o, e] = Y2[b * HW + e, o]


@cuda.jit
def _nchw_to_rows_kernel(dY3, out):
    """out[b * HW + e, o] = dY3[b, o, e] for dY3 (B, c, HW); one thread per plane (b, o)."""
    B, c, HW = dY3.shape
    for q in range(cuda.grid(1), B * c, cuda.gridsize(1)):
        o = q % c
        b = q // c
        for e in range(HW):
            out[b * HW + e, o] = dY3[b, o, e]


# --------------------------------------------------------------------------------------------------
# Drivers


def _nchw(name: str, X):
    """(B, C, H, W) of the float32 device array X, refused unless 4-d."""
    check_device(name, X, ndim=4)
    return tuple(int(n) for n in X.shape)


def im2col(X, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0):
    """The patch matrix of the device array X (B, C, H, W): a new float32 device array
    (B * Ho * Wo, C * kh * kw) (see :func:`purerigl.kernels.host_conv.im2col`).

    .. math:: P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, _, _ = _nchw("X", X)
    Ho, Wo = output_hw(X.shape, kh, kw, stride, padding)
    P = empty((B * Ho * Wo, C * kh * kw), np.float32)
    launch(_im2col_kernel, C * kh * kw * B * Ho, X, P, kh, kw, stride, padding, Ho, Wo, np.float32(fill), False)
    return P


def im2col_t(X, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0):
    """The transposed patch matrix (C * kh * kw, B * Ho * Wo) of the device array X, built directly
    (see :func:`purerigl.kernels.host_conv.im2col_t`).

    .. math:: P^T[(c, i, j), (b, h_o, w_o)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, _, _ = _nchw("X", X)
    Ho, Wo = output_hw(X.shape, kh, kw, stride, padding)
    PT = empty((C * kh * kw, B * Ho * Wo), np.float32)
    launch(_im2col_kernel, C * kh * kw * B * Ho, X, PT, kh, kw, stride, padding, Ho, Wo, np.float32(fill), True)
    return PT


def _col2im(cols, X_shape, kh, kw, stride, padding, transposed):
    check_device("cols_t" if transposed else "cols", cols, ndim=2)
    B, C, H, W, Ho, Wo = check_cols(cols.shape, X_shape, kh, kw, stride, padding, transposed)
    dX = empty((B, C, H, W), np.float32)
    launch(_col2im_kernel, B * C * H, cols, dX, kh, kw, stride, padding, Ho, Wo, transposed)
    return dX


def col2im(cols, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """The adjoint of :func:`im2col` on device arrays: cols (B * Ho * Wo, C * kh * kw) -> dX (B, C, H, W)
    (see :func:`purerigl.kernels.host_conv.col2im`; the same bits).

    .. math:: dX[b, c, y, x] = \\sum_{(h_o, w_o, i, j) :\\ s h_o + i - p = y,\\ s w_o + j - p = x}
              dP[(b, h_o, w_o), (c, i, j)]
    """
    return _col2im(cols, X_shape, kh, kw, stride, padding, False)


def col2im_t(cols_t, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """The adjoint of :func:`im2col_t` on device arrays: cols_t (C * kh * kw, B * Ho * Wo) -> dX
    (B, C, H, W) (see :func:`purerigl.kernels.host_conv.col2im_t`; the same bits)."""
    return _col2im(cols_t, X_shape, kh, kw, stride, padding, True)


def fm_to_nchw(YT, bias, B: int, Ho: int, Wo: int):
    """(c, B * Ho * Wo) feature-major plus ``bias`` (c,) per channel -> a new device array
    (B, c, Ho, Wo) (see :func:`purerigl.kernels.host_conv.fm_to_nchw`).

    .. math:: Y[b, o, h_o, w_o] = Y_2^T[o, (b, h_o, w_o)] + \\mathrm{bias}[o]
    """
    check_device("YT", YT, ndim=2)
    c = int(YT.shape[0])
    if int(YT.shape[1]) != B * Ho * Wo:
        raise ShapeError(f"YT has shape {tuple(YT.shape)}, expected ({c}, {B * Ho * Wo})")
    check_device("bias", bias, shape=(c,))
    Y = empty((B, c, Ho, Wo), np.float32)
    launch(_fm_to_nchw_kernel, B * c, YT, bias, Y.reshape(B, c, Ho * Wo))  # (B, c, Ho*Wo), a view
    return Y


def nchw_to_fm(dY):
    """(B, c, Ho, Wo) -> a new device array (c, B * Ho * Wo), columns ordered (b, ho, wo) (see
    :func:`purerigl.kernels.host_conv.nchw_to_fm`).

    .. math:: dY_2^T[o, (b, h_o, w_o)] = dY[b, o, h_o, w_o]
    """
    B, c, Ho, Wo = _nchw("dY", dY)
    out = empty((c, B * Ho * Wo), np.float32)
    launch(_nchw_to_fm_kernel, B * c, dY.reshape(B, c, Ho * Wo), out)  # (B, c, Ho*Wo), a view
    return out


def rows_to_nchw(Y2, B: int, Ho: int, Wo: int):
    """(B * Ho * Wo, c), rows ordered (b, ho, wo) -> a new device array (B, c, Ho, Wo) (see
    :func:`purerigl.kernels.host_conv.rows_to_nchw`).

    .. math:: Y[b, o, h_o, w_o] = Y_2[(b, h_o, w_o), o]
    """
    check_device("Y2", Y2, ndim=2)
    c = int(Y2.shape[1])
    if int(Y2.shape[0]) != B * Ho * Wo:
        raise ShapeError(f"Y2 has shape {tuple(Y2.shape)}, expected ({B * Ho * Wo}, {c})")
    Y = empty((B, c, Ho, Wo), np.float32)
    launch(_rows_to_nchw_kernel, B * c, Y2, Y.reshape(B, c, Ho * Wo))  # (B, c, Ho*Wo), a view
    return Y


def nchw_to_rows(dY):
    """(B, c, Ho, Wo) -> a new device array (B * Ho * Wo, c), rows ordered (b, ho, wo) (see
    :func:`purerigl.kernels.host_conv.nchw_to_rows`).

    .. math:: dY_2[(b, h_o, w_o), o] = dY[b, o, h_o, w_o]
    """
    B, c, Ho, Wo = _nchw("dY", dY)
    out = empty((B * Ho * Wo, c), np.float32)
    launch(_nchw_to_rows_kernel, B * c, dY.reshape(B, c, Ho * Wo), out)  # (B, c, Ho*Wo), a view
    return out
