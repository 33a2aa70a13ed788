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

Determinism. Each output of the gathers sums over k in ascending order, the same order as the
row-layout kernels of :mod:`.diagonal` (so ``matmul_fm`` is the transposed ``matmul`` bit for bit).
``sddmm`` sums every dot product in chunks of :data:`._dot.DOT_CHUNK` batch items (pairwise within a chunk,
the chunks in ascending order): the order depends on B alone, not on the tiling or the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._dot import DOT_CHUNK, pow2, tree_dot
from ._serial import by_work

#: Batch items per task of the gathers (one accumulator of this many floats stays in L1).
B_BLOCK = 1024



@njit(cache=CACHE, inline="always")
def _axpy(o, v, s):
    """o[i] += v * s[i] over equal-length contiguous vectors (a loop LLVM vectorises)."""
    for i in range(o.shape[0]):
        o[i] += v * s[i]


@njit(parallel=True, cache=CACHE)
def _gather_plus_fm(offsets, V, ST, outT):
    """outT[p, b] = sum_k V[k, p] ST[(p + d_k) mod M, b] for p < L; parallel over (p, batch block).

    V is (K, L), ST is (M, B) with M >= L, outT is (L, B) and arrives zeroed.
    """
    K, L = V.shape
    M, B = ST.shape
    n_b = (B + B_BLOCK - 1) // B_BLOCK
    for task in prange(L * n_b):
        p = task // n_b
        b0 = (task % n_b) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        acc = outT[p, b0:b1]  # (b1 - b0,) view
        for k in range(K):
            src = p + np.int64(offsets[k])
            if src >= M:
                src -= M
            _axpy(acc, V[k, p], ST[src, b0:b1])


@njit(parallel=True, cache=CACHE)
def _gather_minus_fm(offsets, V, ST, outT):
    """outT[p, b] = sum_k [u < L] V[k, u] ST[u, b], u = (p - d_k) mod M, p < M; parallel over
    (p, batch block).

    V is (K, L), ST is (L, B), outT is (M, B) with M >= L and arrives zeroed.
    """
    K, L = V.shape
    M, B = outT.shape
    n_b = (B + B_BLOCK - 1) // B_BLOCK
    for task in prange(M * n_b):
        p = task // n_b
        b0 = (task % n_b) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        acc = outT[p, b0:b1]  # (b1 - b0,) view
        for k in range(K):
            u = p - np.int64(offsets[k])
            if u < 0:
                u += M
            if u < L:
                _axpy(acc, V[k, u], ST[u, b0:b1])


@njit(parallel=True, cache=CACHE)
def _sddmm_diagonals_fm(offsets, AT, ST, dV):
    """dV[k, t] = sum_b AT[t, b] ST[(t + d_k) mod M, b] for t < L; parallel over t.

    AT is (L, B), ST is (M, B) with M >= L, dV is (K, L) and arrives zeroed. Every dot product runs
    in chunks of DOT_CHUNK batch items (a pairwise sum each, :func:`._dot.tree_dot`), added in
    ascending order; a chunk of AT[t] is reused across all K diagonals.
    """
    K, L = dV.shape
    M, B = ST.shape
    for t in prange(L):
        tmp = np.empty(pow2(min(B, DOT_CHUNK)), dtype=np.float32)  # scratch of tree_dot, one per task
        for c0 in range(0, B, DOT_CHUNK):
            c1 = min(B, c0 + DOT_CHUNK)
            scratch = tmp[: pow2(c1 - c0)]
            a = AT[t, c0:c1]  # (c1 - c0,) view
            for k in range(K):
                src = t + np.int64(offsets[k])
                if src >= M:
                    src -= M
                dV[k, t] += tree_dot(a, ST[src, c0:c1], scratch)


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
