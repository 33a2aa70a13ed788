"""Device building blocks of the cuda growth selections: the gradient tile, rank keys, a bitonic sort.

Used by :mod:`purerigl.kernels.cuda.growth`, which holds the tile constants and launches the kernels
(through :func:`purerigl.kernels.cuda._launch.launch`, block size ``THREADS_PER_BLOCK``).

- :func:`gradient_tile`: one work item per entry of a tile of rows of G,

  .. math:: G_{tile}[t, j] = \\sum_{b=0}^{B-1} dY[b, \\mathrm{rows}[s + t]] \\, X[b, j]

  summed in float32, b ascending (consecutive threads read consecutive X[b, j]: coalesced).
- every kernel here and in :mod:`.growth` loops over its work items with a grid-stride loop, so a
  launch may have fewer threads than items (tests cap them at a handful: the simulator runs one
  Python thread per thread).
- :func:`rank_key`: the int64 key ``bits(|g|) << 32 | (2^32 - 1 - tie_rank(p, salt))`` of the shared
  tie rule (:mod:`purerigl.kernels._rank_key`), p the entry's position (flat index ``i * n_in + j``,
  or a tag) and ``salt`` the caller's 32-bit salt. The float32 bit pattern of a non-negative number
  orders like the number, so a larger key is exactly "larger score, or equal score and smaller tie
  rank"; tie_rank is a permutation of [0, 2^32), so no two positions share a key. Excluded positions
  get the key -1, below every real key (>= 0). :func:`index_of_key` recovers p from a key (through
  :func:`tie_unrank`): after a selection by keys, the chosen positions are decoded and sorted again
  to come back ascending by position.
- :func:`sort_rows_descending`: a bitonic sorting network over each row of an (n_rows, W) int64
  array, W a power of two: log2(W) (log2(W) + 1) / 2 launches of one compare-exchange per pair of
  entries. A sorting network makes the same comparisons whatever the data, so the result depends on
  the data only, never on thread timing; no atomics.
"""

from __future__ import annotations

import types

import numpy as np

from .. import _rank_key
from ._launch import cuda

INDEX_MASK = _rank_key.INDEX_MASK  # low 32 bits of a rank key: 2^32 - 1 - tie rank
NO_KEY = _rank_key.NO_KEY  # the key of an excluded position or of padding, below every real key


# --------------------------------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------------------------------


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def sort_rows_descending(A, launch) -> None:
    """Sort every row of the device int64 array A (n_rows, W), W a power of two, descending, in place.

    ``launch(kernel, n_items, *args)`` runs a grid-stride kernel over n_items work items.
    """
    n_rows, W = A.shape
    k = 2
    while k <= W:  # merge bitonic runs of length k
        j = k // 2
        while j >= 1:
            launch(_bitonic_step, n_rows * (W // 2), A, j, k)
            j //= 2
        k *= 2


# --------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------


def _device_function(fn, **callees):
    """``cuda.jit(device=True)`` of the plain Python ``fn`` of :mod:`purerigl.kernels._rank_key`, its
    calls to other functions of that module bound to their device versions ``callees``: the text
    compiled is exactly ``fn``'s, and its callees are device functions whether or not the installed
    numba-cuda would compile a call to a plain Python function by itself (0.30 does; older releases
    refuse an untyped global)."""
    namespace = dict(fn.__globals__, **callees)
    rebound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    rebound.__doc__, rebound.__qualname__, rebound.__module__ = fn.__doc__, fn.__qualname__, fn.__module__
    return cuda.jit(device=True)(rebound)


#: The shared tie rule (:mod:`purerigl.kernels._rank_key`) on the device: the same Python functions
#: that the cpu backend compiles with njit. ``tie_rank(p, salt)`` / ``tie_unrank(r, salt)``: the
#: salted permutation of positions and its inverse; ``rank_key(score_bits, p, salt)``: the int64 key
#: (give it int64 operands: the score's int32 bits widened first); ``index_of_key(key, salt)``: p.
tie_rank = _device_function(_rank_key.tie_rank)
tie_unrank = _device_function(_rank_key.tie_unrank)
rank_key = _device_function(_rank_key.rank_key, tie_rank=tie_rank)
index_of_key = _device_function(_rank_key.index_of_key, tie_unrank=tie_unrank)


@cuda.jit(device=True)
def is_excluded(ex_indptr, ex_indices, i, j):
    """Whether column j is among row i's excluded columns (sorted): a binary search."""
    lo = ex_indptr[i]
    hi = ex_indptr[i + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if ex_indices[mid] < j:
            lo = mid + 1
        else:
            hi = mid
    return lo < ex_indptr[i + 1] and ex_indices[lo] == j


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@cuda.jit
def gradient_tile(X, dY, rows, start, n_rows, G):
    """G[t, j] = sum_b dY[b, rows[start + t]] X[b, j] for t < n_rows, j < n_in; one item per entry."""
    n_in = X.shape[1]
    for p in range(cuda.grid(1), n_rows * n_in, cuda.gridsize(1)):
        t = p // n_in
        j = p - t * n_in
        i = rows[start + t]
        acc = np.float32(0.0)
        for b in range(X.shape[0]):
            acc += dY[b, i] * X[b, j]
        G[t, j] = acc


@cuda.jit
def fill(a, start, stop, value):
    """a[start:stop] = value (1-D)."""
    for p in range(start + cuda.grid(1), stop, cuda.gridsize(1)):
        a[p] = value


@cuda.jit
def _bitonic_step(A, j, k):
    """One stage of the bitonic network on every row of A: compare-exchange entries i and i + j, the
    pair ordered descending where bit k of i is 0, ascending elsewhere (k = W: all descending)."""
    half = A.shape[1] // 2
    for p in range(cuda.grid(1), A.shape[0] * half, cuda.gridsize(1)):
        r = p // half
        s = p - r * half  # pair index within the row
        i = (s // j) * (2 * j) + s % j  # s with a 0 bit inserted at position log2(j)
        a = A[r, i]
        b = A[r, i + j]
        if (a < b) if (i & k) == 0 else (a > b):
            A[r, i] = b
            A[r, i + j] = a
