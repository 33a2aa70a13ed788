"""Numba kernels of the convolutional layout work: im2col, col2im, batch normalisation (max pooling:
:mod:`.pooling`).

The specifications are the NumPy functions of :mod:`purerigl.nn.patches`, :mod:`purerigl.nn.pool`
and :mod:`purerigl.nn.norm` (``im2col_reference``, ``col2im_reference``, ``maxpool_reference``,
``maxpool_backward_reference``, ``BatchNorm2d._forward_reference`` / ``_backward_reference``); these
kernels compute the same values with fewer passes over memory: no strided six-axis view made
contiguous, no (B * C * Ho * Wo, k * k) window matrix for pooling, no temporary per elementwise
operation of batch normalisation. tests/test_conv_speedpaths.py holds them to the specifications.

Layout. A row of the patch matrix is made of C * kh runs of only kw values, and copying runs of 3
or 5 values costs several times a long copy. The patch kernels therefore go through a small tile in
the transposed layout: per (sample, output row) the tile T (C * kh * kw, Wo) is filled by long copies
along the input's rows, then transposed into the Wo rows of P (and the reverse for col2im). The tile
stays in the core's cache, so both passes run at cache speed. :func:`im2col_t` and
:func:`col2im_t` build and read the transposed patch matrix (C * kh * kw, B * Ho * Wo) itself, in
long runs and without a tile (the layout the batched sparse kernels transpose their operand to).
Inputs are padded first (a copy 1 / (kh kw) the size of the patch matrix), so the inner loops have
no bounds to check; indices are unsigned, so they have no negative-index checks either.

Exactness. im2col and max pooling only copy values. col2im and the max-pooling backward add the
contributions of overlapping windows to a pixel in the specification's order: the specification
adds kernel offset (i, j) by (i, j) in row-major order; a pixel (y, x) receives offset (i, j) from
output pixel (ho, wo) = ((y + p - i) / s, (x + p - j) / s), so walking the output rows backwards
(ho descending) and the offsets forwards meets a pixel's contributions in ascending (i, j) order.
Both therefore give the same bits as the specification. Batch normalisation sums its per-channel
statistics in float64, plane by plane, each plane's sum a vectorised reduction (:data:`REDUCE`; the
specification sums in the input's dtype, in NumPy's pairwise order), so its mean, variance and the
two gradient sums agree with the specification to rounding; every elementwise operation is the
specification's, in the same order and dtype (no fused multiply-add).

Parallelism. Each parallel loop writes disjoint outputs: the patch kernels over blocks of samples
(a sample's rows on one thread), max pooling over (sample, channel) planes, batch normalisation over
channels (sums) and planes (elementwise). Every output is computed by the same operations in the same
order whatever the partition, so the serial twins (:mod:`._serial`, used for small work and on a
busy machine) give the same bits.

The kernels take C-contiguous float32 or float64 arrays of one dtype; the drivers here allocate the
outputs and pick the parallel kernel or its serial twin by the work size (:func:`._serial.by_work`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._serial import by_work

# ------------------------------------------------------------------------------------ patch matrices


#: Most blocks of samples the patch kernels split a batch into (each block has its own tile).
MAX_BLOCKS = 16


@njit(parallel=True, cache=CACHE)
def _im2col(Xp, P, kh, kw, s, Ho, Wo, tiles):
    """P[(b, ho, wo), (c, i, j)] = Xp[b, c, s ho + i, s wo + j] for the padded input Xp (B, C, Hp, Wp)
    and P (B * Ho * Wo, C * kh * kw); parallel over blocks of samples.

    Per (b, ho) the Wo rows of P are built in a tile T (C * kh * kw, Wo), the transposed layout, by
    long copies along the input's rows (T[(c, i, j), :] = Xp[b, c, s ho + i, j::s]), then written
    out row by row: T is small (it stays in the core's cache), so both passes run at cache speed,
    where a direct build would copy runs of only kw values. ``tiles`` (n_blocks, C * kh * kw * Wo) is
    scratch, one tile per block. Indices are unsigned (no negative-index checks in the inner loops).
    """
    B, C, Hp, Wp = Xp.shape
    K = C * kh * kw
    n_blocks = tiles.shape[0]
    Pf = P.reshape(-1)
    Xf = Xp.reshape(-1)
    uW, us, uK = np.uint64(Wo), np.uint64(s), np.uint64(K)
    for blk in prange(n_blocks):
        T = tiles[blk]
        for b in range(blk * B // n_blocks, (blk + 1) * B // n_blocks):
            for ho in range(Ho):
                t = np.uint64(0)
                for c in range(C):
                    for i in range(kh):
                        q0 = np.uint64(((b * C + c) * Hp + s * ho + i) * Wp)
                        for j in range(kw):
                            q = q0 + np.uint64(j)
                            if s == 1:
                                for wo in range(Wo):
                                    T[t + np.uint64(wo)] = Xf[q + np.uint64(wo)]
                            else:
                                for wo in range(Wo):
                                    T[t + np.uint64(wo)] = Xf[q + np.uint64(wo) * us]
                            t += uW
                o = np.uint64((b * Ho + ho) * Wo) * uK
                for wo in range(Wo):
                    tt = np.uint64(wo)
                    for k in range(K):
                        Pf[o + np.uint64(k)] = T[tt]
                        tt += uW
                    o += uK


@njit(parallel=True, cache=CACHE)
def _col2im(dP, dXp, kh, kw, s, Ho, Wo, tiles):
    """dXp[b, c, s ho + i, s wo + j] += dP[(b, ho, wo), (c, i, j)] into the padded dXp (B, C, Hp, Wp),
    zeroed on entry; parallel over blocks of samples, each sample on one thread.

    The mirror of :func:`_im2col`: per (b, ho) the Wo rows of dP are transposed into the tile T
    (C * kh * kw, Wo), then added along the input's rows. Output rows ho are walked backwards and the
    offsets (i, j) forwards, so every pixel adds its contributions in ascending (i, j) order, the
    specification's (see the module docstring).
    """
    B, C, Hp, Wp = dXp.shape
    K = C * kh * kw
    n_blocks = tiles.shape[0]
    Pf = dP.reshape(-1)
    Xf = dXp.reshape(-1)
    uW, us, uK = np.uint64(Wo), np.uint64(s), np.uint64(K)
    for blk in prange(n_blocks):
        T = tiles[blk]
        for b in range(blk * B // n_blocks, (blk + 1) * B // n_blocks):
            for ho in range(Ho - 1, -1, -1):
                o = np.uint64((b * Ho + ho) * Wo) * uK
                for wo in range(Wo):
                    tt = np.uint64(wo)
                    for k in range(K):
                        T[tt] = Pf[o + np.uint64(k)]
                        tt += uW
                    o += uK
                t = np.uint64(0)
                for c in range(C):
                    for i in range(kh):
                        q0 = np.uint64(((b * C + c) * Hp + s * ho + i) * Wp)
                        for j in range(kw):
                            q = q0 + np.uint64(j)
                            if s == 1:
                                for wo in range(Wo):
                                    Xf[q + np.uint64(wo)] += T[t + np.uint64(wo)]
                            else:
                                for wo in range(Wo):
                                    Xf[q + np.uint64(wo) * us] += T[t + np.uint64(wo)]
                            t += uW


def _tiles(B: int, K: int, Wo: int, dtype) -> np.ndarray:
    """Scratch tiles of the patch kernels: (n_blocks, K * Wo), n_blocks = min(B, MAX_BLOCKS)."""
    return np.empty((max(1, min(B, MAX_BLOCKS)), K * Wo), dtype=dtype)


def im2col(X: np.ndarray, kh: int, kw: int, stride: int, padding: int, Ho: int, Wo: int, fill) -> np.ndarray:
    """The patch matrix (B * Ho * Wo, C * kh * kw) of X (B, C, H, W), in X's dtype.

    The input is padded by ``padding`` values ``fill`` first (a copy 1 / (kh kw) the size of the
    patch matrix), so that the kernel has no bounds to check.
    """
    B, C = X.shape[:2]
    K = C * kh * kw
    P = np.empty((B * Ho * Wo, K), dtype=X.dtype)
    if P.size:
        by_work(_im2col, P.size)(_padded(X, padding, fill), P, kh, kw, stride, Ho, Wo, _tiles(B, K, Wo, X.dtype))
    return P


def col2im(dP: np.ndarray, X_shape, kh: int, kw: int, stride: int, padding: int, Ho: int, Wo: int) -> np.ndarray:
    """The adjoint of :func:`im2col`: the C-contiguous dP (B * Ho * Wo, C * kh * kw) -> dX (B, C, H, W),
    accumulated in a zero-padded buffer of which dX is the inner view (as the specification's)."""
    B, C, H, W = (int(n) for n in X_shape)
    p = padding
    dXp = np.zeros((B, C, H + 2 * p, W + 2 * p), dtype=dP.dtype)  # (B, C, Hp, Wp)
    if dP.size:
        by_work(_col2im, dP.size)(dP, dXp, kh, kw, stride, Ho, Wo, _tiles(B, C * kh * kw, Wo, dP.dtype))
    return dXp[:, :, p:p + H, p:p + W] if p else dXp


@njit(parallel=True, cache=CACHE)
def _im2col_t(Xp, PT, kh, kw, s, Ho, Wo):
    """PT[(c, i, j), (b, ho, wo)] = Xp[b, c, s ho + i, s wo + j]: the transposed patch matrix
    (C * kh * kw, B * Ho * Wo) of the padded Xp (B, C, Hp, Wp); parallel over its rows. Every row is
    written front to back in runs of Wo values read along the input's rows."""
    B, C, Hp, Wp = Xp.shape
    kk = kh * kw
    Xf = Xp.reshape(-1)
    us = np.uint64(s)
    for col in prange(C * kk):
        c = col // kk
        i = (col - c * kk) // kw
        j = col - c * kk - i * kw
        row = PT[col]
        o = np.uint64(0)
        for b in range(B):
            for ho in range(Ho):
                q = np.uint64(((b * C + c) * Hp + s * ho + i) * Wp + j)
                if s == 1:
                    for wo in range(Wo):
                        row[o + np.uint64(wo)] = Xf[q + np.uint64(wo)]
                else:
                    for wo in range(Wo):
                        row[o + np.uint64(wo)] = Xf[q + np.uint64(wo) * us]
                o += np.uint64(Wo)


@njit(parallel=True, cache=CACHE)
def _col2im_t(dPT, dXp, kh, kw, s, Ho, Wo):
    """dXp[b, c, s ho + i, s wo + j] += dPT[(c, i, j), (b, ho, wo)] into the padded dXp (B, C, Hp, Wp),
    zeroed on entry; parallel over (b, c) planes, offsets (i, j) in row-major order (the
    specification's order of additions, literally)."""
    B, C, Hp, Wp = dXp.shape
    kk = kh * kw
    Xf = dXp.reshape(-1)
    us = np.uint64(s)
    for plane in prange(B * C):
        b = plane // C
        c = plane - b * C
        for i in range(kh):
            for j in range(kw):
                row = dPT[c * kk + i * kw + j]
                o = np.uint64(b * Ho * Wo)
                for ho in range(Ho):
                    q = np.uint64((plane * Hp + s * ho + i) * Wp + j)
                    if s == 1:
                        for wo in range(Wo):
                            Xf[q + np.uint64(wo)] += row[o + np.uint64(wo)]
                    else:
                        for wo in range(Wo):
                            Xf[q + np.uint64(wo) * us] += row[o + np.uint64(wo)]
                    o += np.uint64(Wo)


def _padded(X: np.ndarray, padding: int, fill) -> np.ndarray:
    """X (B, C, H, W) padded by ``padding`` values ``fill`` on both sides of both spatial axes, C-contiguous."""
    p = padding
    if not p:
        return np.ascontiguousarray(X)
    B, C, H, W = X.shape
    Xp = np.full((B, C, H + 2 * p, W + 2 * p), fill, dtype=X.dtype)  # (B, C, Hp, Wp)
    Xp[:, :, p:p + H, p:p + W] = X
    return Xp


def im2col_t(X: np.ndarray, kh: int, kw: int, stride: int, padding: int, Ho: int, Wo: int, fill) -> np.ndarray:
    """The transposed patch matrix (C * kh * kw, B * Ho * Wo) of X (B, C, H, W): ``im2col(X).T``,
    C-contiguous, built directly (the layout the batched sparse kernels work on)."""
    B, C = X.shape[:2]
    PT = np.empty((C * kh * kw, B * Ho * Wo), dtype=X.dtype)
    if PT.size:
        by_work(_im2col_t, PT.size)(_padded(X, padding, fill), PT, kh, kw, stride, Ho, Wo)
    return PT


def col2im_t(dPT: np.ndarray, X_shape, kh: int, kw: int, stride: int, padding: int, Ho: int, Wo: int) -> np.ndarray:
    """The adjoint of :func:`im2col_t`: the C-contiguous dPT (C * kh * kw, B * Ho * Wo) -> dX (B, C, H, W),
    ``col2im(dPT.T)`` with the same bits."""
    B, C, H, W = (int(n) for n in X_shape)
    p = padding
    dXp = np.zeros((B, C, H + 2 * p, W + 2 * p), dtype=dPT.dtype)  # (B, C, Hp, Wp)
    if dPT.size:
        by_work(_col2im_t, dPT.size)(dPT, dXp, kh, kw, stride, Ho, Wo)
    return dXp[:, :, p:p + H, p:p + W] if p else dXp


# ------------------------------------------------------------------------------ batch normalisation


#: The per-plane sums of batch normalisation are reductions: compiled with reassociation allowed, LLVM
#: splits each into vector lanes (3x the speed of four scalar float64 chains on the 2-core machine). The
#: order of the additions is then fixed by the compiled code: the same on every run, thread count and
#: partition on one machine, possibly another on another CPU (as for :func:`._gather.dots8`).
REDUCE = {"reassoc"}


@njit(cache=CACHE, fastmath=REDUCE)
def _sum(a):
    """float64 sum of the 1-d array a (a vectorised reduction, :data:`REDUCE`)."""
    s = 0.0
    for t in range(a.shape[0]):
        s += np.float64(a[t])
    return s


@njit(cache=CACHE, fastmath=REDUCE)
def _sum_sq_dev(a, m):
    """float64 sum of (a - m)^2 over the 1-d array a, the difference taken in a's dtype (a vectorised
    reduction, :data:`REDUCE`)."""
    s = 0.0
    for t in range(a.shape[0]):
        d = np.float64(a[t] - m)
        s += d * d
    return s


@njit(cache=CACHE, fastmath=REDUCE)
def _sum_prod_and_sum(a, b):
    """(float64 sum of a * b, float64 sum of a) over 1-d arrays in one pass, each product rounded to
    the operands' dtype first (as NumPy's ``(a * b).sum()``); vectorised reductions (:data:`REDUCE`)."""
    g = 0.0
    t = 0.0
    for e in range(a.shape[0]):
        x = a[e]
        g += np.float64(x * b[e])
        t += np.float64(x)
    return g, t


@njit(parallel=True, cache=CACHE)
def _bn_stats(X, mean, var):
    """Per channel c of X (B, C, H * W): mean[c] = sum X / N, then var[c] = sum (X - mean[c])^2 / N with
    the difference taken in X's dtype (as the specification's ``xc``); float64 sums, sample by
    sample; parallel over c."""
    B, C, HW = X.shape
    n = B * HW
    for c in prange(C):
        acc = 0.0
        for b in range(B):
            acc += _sum(X[b, c])
        mean[c] = acc / n
        m = mean[c]  # in X's dtype
        acc = 0.0
        for b in range(B):
            acc += _sum_sq_dev(X[b, c], m)
        var[c] = acc / n


@njit(parallel=True, cache=CACHE)
def _bn_normalise(X, mean, inv, gamma, beta, xhat, Y):
    """xhat = (X - mean[c]) * inv[c]; Y = xhat * gamma[c] + beta[c] for X (B, C, H * W); parallel over
    (b, c) planes."""
    B, C, HW = X.shape
    for plane in prange(B * C):
        b = plane // C
        c = plane - b * C
        m, v, g, t = mean[c], inv[c], gamma[c], beta[c]
        x, h_out, y_out = X[b, c], xhat[b, c], Y[b, c]
        for e in range(HW):
            h = (x[e] - m) * v
            h_out[e] = h
            y_out[e] = h * g + t


@njit(parallel=True, cache=CACHE)
def _bn_grad_sums(dY, xhat, dgamma, dbeta):
    """dgamma[c] = sum dY * xhat, dbeta[c] = sum dY over (b, h * w) of (B, C, H * W) arrays; float64
    sums, the products rounded to the operands' dtype first; parallel over c."""
    B, C, HW = dY.shape
    for c in prange(C):
        g = 0.0
        t = 0.0
        for b in range(B):
            gb, tb = _sum_prod_and_sum(dY[b, c], xhat[b, c])  # one pass over the plane
            g += gb
            t += tb
        dgamma[c] = g
        dbeta[c] = t


@njit(parallel=True, cache=CACHE)
def _bn_input_grad(dY, xhat, scale, c1, c2, dX):
    """dX = scale[c] * ((dY - c1[c]) - xhat * c2[c]) for (B, C, H * W) arrays; parallel over planes."""
    B, C, HW = dY.shape
    for plane in prange(B * C):
        b = plane // C
        c = plane - b * C
        a, u, v = scale[c], c1[c], c2[c]
        d, h, out = dY[b, c], xhat[b, c], dX[b, c]
        for e in range(HW):
            out[e] = a * ((d[e] - u) - h[e] * v)


def _planes(A: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, C, H * W), a view of the C-contiguous A."""
    return A.reshape(A.shape[0], A.shape[1], -1)


def bn_stats(X: np.ndarray):
    """(mean (C,), biased var (C,)) of the C-contiguous X (B, C, H, W), in X's dtype."""
    C = X.shape[1]
    mean, var = np.empty(C, dtype=X.dtype), np.empty(C, dtype=X.dtype)
    by_work(_bn_stats, 2 * X.size)(_planes(X), mean, var)
    return mean, var


def bn_normalise(X: np.ndarray, mean, inv, gamma, beta):
    """(xhat, Y), both like X (B, C, H, W): xhat = (X - mean) inv, Y = xhat gamma + beta per channel."""
    xhat, Y = np.empty_like(X), np.empty_like(X)
    by_work(_bn_normalise, X.size)(_planes(X), mean, inv, gamma, beta, _planes(xhat), _planes(Y))
    return xhat, Y


def bn_grad_sums(dY: np.ndarray, xhat: np.ndarray):
    """(dgamma (C,), dbeta (C,)) in dY's dtype: per channel sum(dY * xhat) and sum(dY)."""
    C = dY.shape[1]
    dgamma, dbeta = np.empty(C, dtype=dY.dtype), np.empty(C, dtype=dY.dtype)
    by_work(_bn_grad_sums, 2 * dY.size)(_planes(dY), _planes(xhat), dgamma, dbeta)
    return dgamma, dbeta


def bn_input_grad(dY: np.ndarray, xhat: np.ndarray, scale, c1, c2) -> np.ndarray:
    """dX = scale * ((dY - c1) - xhat * c2), per channel (the training-mode input gradient)."""
    dX = np.empty_like(dY)
    by_work(_bn_input_grad, dY.size)(_planes(dY), _planes(xhat), scale, c1, c2, _planes(dX))
    return dX
