"""Numba kernels of the four operations on Diagonal matrices, gather-only (PAPERS.md section 4.2).

A Diagonal matrix of shape (n_out, n_in) stores K wrap-around diagonals ``values`` (K, L) at
``offsets`` (K,), L = min(n_out, n_in), M = P = max(n_out, n_in) (see
:mod:`purerigl.formats.diagonal`). Every output of every operation is an independent sum, and with a
fixed diagonal k the index maps are shifts by ``d_k`` modulo M, contiguous except for one wrap point.
All three operations therefore reduce to three gather kernels, each a sequence of contiguous
multiply-adds (SIMD-friendly) over at most two segments per diagonal:

.. math::

    \\text{plus:}\\quad  out[b, p] &= \\sum_k V[k, p] \\, S[b, (p + d_k) \\bmod M],
        \\qquad p < L \\\\
    \\text{minus:}\\quad out[b, p] &= \\sum_k [u < L] \\, V[k, u] \\, S[b, u],
        \\quad u = (p - d_k) \\bmod M, \\quad p < M \\\\
    \\text{sddmm:}\\quad dV[k, t] &= \\sum_b A[b, t] \\, S[b, (t + d_k) \\bmod M], \\qquad t < L

with, from PAPERS.md 4.2:

=============  ===========================  ===========================
operation      wide (n_out < n_in)          tall or square
=============  ===========================  ===========================
matmul         plus  (S = X)                minus (S = X)
matmul_t       minus (S = dY)               plus  (S = dY)
sddmm          A = dY, S = X                A = X, S = dY
=============  ===========================  ===========================

Determinism. The kernels run in parallel over tiles of the outputs; each output sums its terms over
k (or b) in ascending order whatever the tiling, so results do not depend on the thread count or on
timing, and the tile sizes may be chosen freely (the gathers size them by batch and thread count).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._serial import by_work

#: Batch items per tile of the gathers: a tile of V is reused across this many rows of S.
B_BLOCK = 4

#: Largest run of output positions per tile of the gathers (long runs stream fastest).
MAX_P_BLOCK = 1024

#: Output positions per tile of sddmm.
T_BLOCK = 384

#: Diagonals per tile of sddmm: a row segment of A is reused across this many diagonals.
K_BLOCK = 8


@njit(cache=CACHE, inline="always")
def _fma_into(o, v, s):
    """o[i] += v[i] * s[i] over equal-length contiguous vectors (a loop LLVM vectorises)."""
    for i in range(o.shape[0]):
        o[i] += v[i] * s[i]


@njit(parallel=True, cache=CACHE)
def _gather_plus(offsets, V, S, out, p_block):
    """out[b, p] = sum_k V[k, p] S[b, (p + d_k) mod M] for p < L; parallel over (batch, p) tiles.

    V is (K, L), S is (B, M) with M >= L, out is (B, L) and arrives zeroed. Tiles are ``p_block``
    positions by B_BLOCK batch items. For a tile [p0, p1) and
    diagonal d the source index p + d runs contiguously up to the wrap point ``split = M - d``.
    """
    K, L = V.shape
    B, M = S.shape
    n_p = (L + p_block - 1) // p_block
    n_b = (B + B_BLOCK - 1) // B_BLOCK
    for task in prange(n_b * n_p):
        p0 = (task % n_p) * p_block
        p1 = min(L, p0 + p_block)
        b0 = (task // n_p) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        for k in range(K):
            d = np.int64(offsets[k])
            split = min(max(M - d, p0), p1)  # p < split: no wrap
            for b in range(b0, b1):
                if split > p0:
                    _fma_into(out[b, p0:split], V[k, p0:split], S[b, p0 + d : split + d])
                if p1 > split:
                    _fma_into(out[b, split:p1], V[k, split:p1], S[b, split + d - M : p1 + d - M])


@njit(parallel=True, cache=CACHE)
def _gather_minus(offsets, V, S, out, p_block):
    """out[b, p] = sum_k [u < L] V[k, u] S[b, u], u = (p - d_k) mod M, p < M; parallel over tiles.

    V is (K, L), S is (B, L), out is (B, M) with M >= L and arrives zeroed. Tiles are ``p_block``
    positions by B_BLOCK batch items. For a tile [p0, p1) and
    diagonal d, u = p - d on [d, d + L) and u = p - d + M on [0, d + L - M); elsewhere u >= L.
    """
    K, L = V.shape
    B, M = out.shape
    n_p = (M + p_block - 1) // p_block
    n_b = (B + B_BLOCK - 1) // B_BLOCK
    for task in prange(n_b * n_p):
        p0 = (task % n_p) * p_block
        p1 = min(M, p0 + p_block)
        b0 = (task // n_p) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        for k in range(K):
            d = np.int64(offsets[k])
            lo = max(p0, d)  # segment without wrap: p in [lo, hi), u = p - d
            hi = min(p1, d + L)
            hi_wrap = min(p1, d + L - M)  # wrapped segment: p in [p0, hi_wrap), u = p - d + M
            for b in range(b0, b1):
                if hi > lo:
                    _fma_into(out[b, lo:hi], V[k, lo - d : hi - d], S[b, lo - d : hi - d])
                if hi_wrap > p0:
                    u0 = p0 - d + M
                    u1 = hi_wrap - d + M
                    _fma_into(out[b, p0:hi_wrap], V[k, u0:u1], S[b, u0:u1])


@njit(parallel=True, cache=CACHE)
def _sddmm_diagonals(offsets, A, S, dV):
    """dV[k, t] = sum_b A[b, t] S[b, (t + d_k) mod M] for t < L; parallel over (k, t) tiles.

    A is (B, L), S is (B, M) with M >= L, dV is (K, L) and arrives zeroed. Each element sums over
    the batch in ascending order.
    """
    K, L = dV.shape
    B, M = S.shape
    n_t = (L + T_BLOCK - 1) // T_BLOCK
    n_k = (K + K_BLOCK - 1) // K_BLOCK
    for task in prange(n_k * n_t):
        t0 = (task % n_t) * T_BLOCK
        t1 = min(L, t0 + T_BLOCK)
        k0 = (task // n_t) * K_BLOCK
        k1 = min(K, k0 + K_BLOCK)
        for b in range(B):
            for k in range(k0, k1):
                d = np.int64(offsets[k])
                split = min(max(M - d, t0), t1)  # t < split: no wrap
                if split > t0:
                    _fma_into(dV[k, t0:split], A[b, t0:split], S[b, t0 + d : split + d])
                if t1 > split:
                    _fma_into(dV[k, split:t1], A[b, split:t1], S[b, split + d - M : t1 + d - M])


def _p_block(n_positions: int, B: int) -> int:
    """Tile length of the gathers: as long as possible (at most MAX_P_BLOCK), but short enough that
    every thread gets a tile. Results do not depend on it (see the module docstring)."""
    n_b = max(1, -(-B // B_BLOCK))
    n_p = max(1, -(-numba.get_num_threads() // n_b))
    block = -(-n_positions // n_p)
    return max(64, min(MAX_P_BLOCK, -(-block // 16) * 16))


def matmul(W, X: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Y = X W^T into the zeroed ``out`` (B, n_out)."""
    block = _p_block(W.n_out, X.shape[0])
    B = X.shape[0]
    work = W.values.size * B
    if W.is_wide:
        by_work(_gather_plus, work, B)(W.offsets, W.values, X, out, block)  # out (B, L = n_out), S = X (B, M = n_in)
    else:
        by_work(_gather_minus, work, B)(W.offsets, W.values, X, out, block)  # out (B, M = n_out), S = X (B, L = n_in)
    return out


def matmul_t(W, dY: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dX = dY W into the zeroed ``out`` (B, n_in)."""
    block = _p_block(W.n_in, dY.shape[0])
    B = dY.shape[0]
    work = W.values.size * B
    if W.is_wide:
        by_work(_gather_minus, work, B)(W.offsets, W.values, dY, out, block)  # out (B, M = n_in), S = dY (B, L = n_out)
    else:
        by_work(_gather_plus, work, B)(W.offsets, W.values, dY, out, block)  # out (B, L = n_in), S = dY (B, M = n_out)
    return out


def sddmm(W, X: np.ndarray, dY: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dV[k, t] = G[row(k, t), col(k, t)], G = dY^T X, into the zeroed ``out`` (K, L)."""
    B = X.shape[0]
    work = W.values.size * B
    if W.is_wide:
        by_work(_sddmm_diagonals, work, B)(W.offsets, dY, X, out)  # A = dY (B, L = n_out), S = X (B, M = n_in)
    else:
        by_work(_sddmm_diagonals, work, B)(W.offsets, X, dY, out)  # A = X (B, L = n_in), S = dY (B, M = n_out)
    return out
