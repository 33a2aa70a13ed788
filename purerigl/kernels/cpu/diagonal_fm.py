"""Numba kernels of the Diagonal products in the feature-major layout (batch last), gather-only.

The feature-major products (``matmul_fm``, ``matmul_t_fm``, ``sddmm_fm``, specified in
:mod:`purerigl.kernels.reference`) take X^T (n_in, B) and dY^T (n_out, B). They are the three gathers
of :mod:`.diagonal` with the operands transposed; with L = min(n_out, n_in), M = max(n_out, n_in),
V (K, L) the stored diagonals and d_k their offsets:

.. math::

    \\text{plus:}\\quad  out^T[p, b] &= \\sum_k V[k, p] \\, S^T[(p + d_k) \\bmod M, b],
        \\qquad p < L \\\\
    \\text{minus:}\\quad out^T[p, b] &= \\sum_k [u < L] \\, V[k, u] \\, S^T[u, b],
        \\quad u = (p - d_k) \\bmod M, \\quad p < M \\\\
    \\text{sddmm:}\\quad dV[k, t] &= \\sum_b A^T[t, b] \\, S^T[(t + d_k) \\bmod M, b], \\qquad t < L

with the same table of operations as :mod:`.diagonal` (wide: matmul = plus with S = X, matmul_t =
minus with S = dY, sddmm with A = dY, S = X; tall or square: the other way round). In this layout one
output row ``out^T[p]`` is a sum of K whole rows of S^T scaled by one value each (contiguous axpys
over the batch), and one gradient value is a contiguous dot product over the batch.

Determinism. Each output of the gathers sums its terms in ascending k, eight per pass
(:mod:`._gather`: a fixed tree within a pass), so its order depends on the offsets alone. ``sddmm``
sums every dot product in chunks of :data:`._dot.DOT_CHUNK` batch items, the chunks in ascending
order, each a vectorised reduction (:func:`._gather.dots8`). Neither depends on the tiling or the
thread count. (The row-layout kernels of :mod:`.diagonal` add one diagonal at a time, so the two
layouts agree to float32 rounding, not bit for bit.)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._columns import columns
from ._dot import DOT_CHUNK
from ._gather import UNROLL, axpy, axpy8, dot, dots8
from ._serial import by_work

#: Batch items per task of the gathers (the accumulator and the eight rows a pass reads stay in L1).
B_BLOCK = 256

# Loop order. The tasks run block-major: a thread takes the positions of one batch block (or, in
# sddmm, of one chunk) before the next, so the block of S^T it reads, at most M x B_BLOCK floats (M x
# DOT_CHUNK in sddmm), stays in L2 while every position re-reads it: S^T comes from memory once per
# call. Position-major (every block of one position, then the next) streamed K whole rows of S^T per
# position, K * L * B floats from memory, and ran 2-3x slower on a convolution's patch matrix
# (benchmarks/results/loop-order-2core.md). The order of the tasks changes no sum.


@njit(cache=CACHE, inline="always")
def _source(p, d, M):
    """(p + d) mod M for 0 <= p, d < M."""
    src = p + np.int64(d)
    if src >= M:
        src -= M
    return src


@njit(parallel=True, cache=CACHE)
def _gather_plus_fm(offsets, V, ST, outT):
    """outT[p, b] = sum_k V[k, p] ST[(p + d_k) mod M, b] for p < L; parallel over (batch block, p),
    block-major.

    V is (K, L), ST is (M, B) with M >= L, outT is (L, B) and arrives zeroed. The K diagonals are
    added eight per pass (:func:`._gather.axpy8`), then one at a time.
    """
    K, L = V.shape
    M, B = ST.shape
    n_b = (B + B_BLOCK - 1) // B_BLOCK
    K8 = K - K % UNROLL
    for task in prange(n_b * L):
        p = task % L
        b0 = (task // L) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        acc = outT[p, b0:b1]  # (b1 - b0,) view
        for k in range(0, K8, UNROLL):
            axpy8(
                acc,
                V[k, p], ST[_source(p, offsets[k], M), b0:b1],
                V[k + 1, p], ST[_source(p, offsets[k + 1], M), b0:b1],
                V[k + 2, p], ST[_source(p, offsets[k + 2], M), b0:b1],
                V[k + 3, p], ST[_source(p, offsets[k + 3], M), b0:b1],
                V[k + 4, p], ST[_source(p, offsets[k + 4], M), b0:b1],
                V[k + 5, p], ST[_source(p, offsets[k + 5], M), b0:b1],
                V[k + 6, p], ST[_source(p, offsets[k + 6], M), b0:b1],
                V[k + 7, p], ST[_source(p, offsets[k + 7], M), b0:b1],
            )
        for k in range(K8, K):
            axpy(acc, V[k, p], ST[_source(p, offsets[k], M), b0:b1])


@njit(cache=CACHE, inline="always")
def _minus_run(acc, offsets, V, ST, p, M, k0, k1, b0, b1):
    """acc += sum_{k0 <= k < k1} V[k, u] ST[u, b0:b1], u = (p - d_k) mod M, for a run of diagonals
    whose u are all < L; eight per pass (:func:`._gather.axpy8`), then one at a time."""
    n8 = k1 - (k1 - k0) % UNROLL
    for k in range(k0, n8, UNROLL):
        u0 = _source(p, M - offsets[k], M)
        u1 = _source(p, M - offsets[k + 1], M)
        u2 = _source(p, M - offsets[k + 2], M)
        u3 = _source(p, M - offsets[k + 3], M)
        u4 = _source(p, M - offsets[k + 4], M)
        u5 = _source(p, M - offsets[k + 5], M)
        u6 = _source(p, M - offsets[k + 6], M)
        u7 = _source(p, M - offsets[k + 7], M)
        axpy8(
            acc,
            V[k, u0], ST[u0, b0:b1], V[k + 1, u1], ST[u1, b0:b1], V[k + 2, u2], ST[u2, b0:b1],
            V[k + 3, u3], ST[u3, b0:b1], V[k + 4, u4], ST[u4, b0:b1], V[k + 5, u5], ST[u5, b0:b1],
            V[k + 6, u6], ST[u6, b0:b1], V[k + 7, u7], ST[u7, b0:b1],
        )
    for k in range(n8, k1):
        u = _source(p, M - offsets[k], M)
        axpy(acc, V[k, u], ST[u, b0:b1])


@njit(parallel=True, cache=CACHE)
def _gather_minus_fm(offsets, V, ST, outT):
    """outT[p, b] = sum_k [u < L] V[k, u] ST[u, b], u = (p - d_k) mod M, p < M; parallel over
    (batch block, p), block-major.

    V is (K, L), ST is (L, B), outT is (M, B) with M >= L and arrives zeroed. u < L exactly when d_k
    lies in the circular window (p - L, p] modulo M; the offsets are sorted, so the diagonals that
    contribute are one run of k, or two when the window wraps past 0 (found by binary search), and
    each run is added in ascending k, eight per pass (:func:`_minus_run`).
    """
    K, L = V.shape
    M, B = outT.shape
    n_b = (B + B_BLOCK - 1) // B_BLOCK
    for task in prange(n_b * M):
        p = task % M
        b0 = (task // M) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        acc = outT[p, b0:b1]  # (b1 - b0,) view
        lo = p - L + 1  # the window is [lo, p], or [0, p] and [lo + M, M) when lo < 0
        end = np.searchsorted(offsets, p, side="right")
        if lo >= 0:
            _minus_run(acc, offsets, V, ST, p, M, np.searchsorted(offsets, lo), end, b0, b1)
        else:
            _minus_run(acc, offsets, V, ST, p, M, 0, end, b0, b1)
            _minus_run(acc, offsets, V, ST, p, M, np.searchsorted(offsets, lo + M), K, b0, b1)


@njit(parallel=True, cache=CACHE, fastmath={"reassoc"})
def _sddmm_diagonals_fm(offsets, AT, ST, dV):
    """dV[k, t] = sum_b AT[t, b] ST[(t + d_k) mod M, b] for t < L; chunk by chunk, parallel over t.

    AT is (L, B), ST is (M, B) with M >= L, dV is (K, L) and arrives zeroed. Every dot product runs
    in chunks of DOT_CHUNK batch items added in ascending order, eight diagonals per pass
    (:func:`._gather.dots8`, one read of the chunk of AT[t] for eight of them). The chunk loop is the
    outer one (one parallel region per chunk), so the chunk of ST every t reads stays in cache.
    """
    K, L = dV.shape
    M, B = ST.shape
    K8 = K - K % UNROLL
    for c0 in range(0, B, DOT_CHUNK):
        c1 = min(B, c0 + DOT_CHUNK)
        for t in prange(L):
            a = AT[t, c0:c1]  # (c1 - c0,) view
            for k in range(0, K8, UNROLL):
                s = dots8(
                    a,
                    ST[_source(t, offsets[k], M), c0:c1], ST[_source(t, offsets[k + 1], M), c0:c1],
                    ST[_source(t, offsets[k + 2], M), c0:c1], ST[_source(t, offsets[k + 3], M), c0:c1],
                    ST[_source(t, offsets[k + 4], M), c0:c1], ST[_source(t, offsets[k + 5], M), c0:c1],
                    ST[_source(t, offsets[k + 6], M), c0:c1], ST[_source(t, offsets[k + 7], M), c0:c1],
                )
                for i in range(UNROLL):
                    dV[k + i, t] += s[i]
            for k in range(K8, K):
                dV[k, t] += dot(a, ST[_source(t, offsets[k], M), c0:c1])


def matmul_fm(W, XT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """YT = W XT into the zeroed ``out`` (n_out, B), XT (n_in, B)."""
    B = XT.shape[1]
    work = W.values.size * B
    if work == 0:
        return out
    if W.is_wide:
        by_work(_gather_plus_fm, work, B)(W.offsets, W.values, XT, out)  # out (L = n_out, B), S = XT (M = n_in, B)
    else:
        by_work(_gather_minus_fm, work, B)(W.offsets, W.values, XT, out)  # out (M = n_out, B), S = XT (L = n_in, B)
    return out


def matmul_t_fm(W, dYT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dXT = W^T dYT into the zeroed ``out`` (n_in, B), dYT (n_out, B)."""
    B = dYT.shape[1]
    work = W.values.size * B
    if work == 0:
        return out
    if W.is_wide:
        by_work(_gather_minus_fm, work, B)(W.offsets, W.values, dYT, out)  # out (M = n_in, B), S = dYT (L = n_out, B)
    else:
        by_work(_gather_plus_fm, work, B)(W.offsets, W.values, dYT, out)  # out (L = n_in, B), S = dYT (M = n_out, B)
    return out


def sddmm_fm(W, XT: np.ndarray, dYT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dV[k, t] = G[row(k, t), col(k, t)], G = dYT XT^T, into the zeroed ``out`` (K, L)."""
    B = XT.shape[1]
    work = W.values.size * B
    if work == 0:
        return out
    if W.is_wide:
        by_work(_sddmm_diagonals_fm, work, B)(W.offsets, dYT, XT, out)  # A = dYT (L = n_out, B), S = XT (M = n_in, B)
    else:
        by_work(_sddmm_diagonals_fm, work, B)(W.offsets, XT, dYT, out)  # A = XT (L = n_in, B), S = dYT (M = n_out, B)
    return out


def columns_of(W):
    """Cached column-major structure (col_ptr, entry, row) of the Diagonal W (see :mod:`._columns`): its
    entries by input column, by diagonal within a column. Entry k * L + t of ``W.values.ravel()`` is
    value t of diagonal k, at ``W.positions()``. (The products above need none; the convolution's
    fused input gradient does, :mod:`.conv_products`.)"""
    return columns(W, lambda: W.positions()[1].ravel(), lambda: W.positions()[0].ravel().astype(np.int32),
                   W.offsets)
