"""The selection inside one row of the dense gradient G, shared by the growth kernels of
:mod:`.growth`: rank keys, a running top k of distinct keys, and the row scan over strided column groups.

A row of G arrives as int32 bit patterns (a view of its float32 values). :func:`_score_bits` turns them
into score bits (|g|'s bits order like |g|; excluded columns -1), :func:`_group_maxima` takes the
maxima of strided column groups, :func:`_scan_row` folds the columns whose rank key beats a threshold
into a running top k (skipping groups whose maximum is below it), and :func:`_row_threshold` gives a
per-row starting threshold that at least k positions reach. The top k of distinct keys does not depend
on the order in which columns are offered, so the growth kernels' results do not either.

The rank key is compiled in from :mod:`purerigl.kernels._rank_key`; the cpu kernels' disk cache is
stamped with the source of every kernel module (:mod:`._cache`), so an edit here recompiles them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._rank_key import index_of_key, rank_key
from ._cache import CACHE

#: The rank key of the shared tie rule and its inverse (:mod:`purerigl.kernels._rank_key`), the same
#: Python functions that the cuda backend compiles for the device.
_key = njit(cache=CACHE, inline="always")(rank_key)
_index_of_key = njit(cache=CACHE, inline="always")(index_of_key)


@njit(cache=CACHE)
def _nth_element(a, lo, hi, kth):
    """Rearrange the distinct values a[lo:hi] so that a[kth] holds what sorting would put there, with
    only smaller values before it and larger after.

    Quickselect with a median-of-three pivot and a branch-free Lomuto partition (no mispredicted
    branches on random keys), then a sort of what remains once the range is small or after too many
    rounds (so the worst case stays O(n log n)).
    """
    rounds = 0
    limit = 8
    size = hi - lo
    while size > 1:
        limit += 2
        size //= 2
    while hi - lo > 16 and rounds <= limit:
        rounds += 1
        x, y, z = a[lo], a[(lo + hi - 1) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))  # median of three: some sampled value is smaller
        store = lo
        for i in range(lo, hi):  # a[lo:store] < pivot <= a[store:i]
            v = a[i]
            a[i] = a[store]
            a[store] = v
            store += v < pivot
        if kth < store:  # lo < store < hi: the pivot itself lies in a[store:hi]
            hi = store
        else:
            lo = store
    a[lo:hi].sort()


@njit(cache=CACHE)
def _keep_largest(keys, n, k):
    """Move the k largest of the distinct keys[:n] (0 < k <= n) to keys[:k], in no particular order;
    return the smallest of them."""
    if k < n:
        _nth_element(keys, 0, n, n - k)
        for t in range(k):  # forward copy: the source index n - k + t is never below t
            keys[t] = keys[n - k + t]
    smallest = keys[0]
    for t in range(1, k):
        smallest = min(smallest, keys[t])
    return smallest


@njit(cache=CACHE)
def _score_bits(g_bits, ex_cols):
    """Turn one row of G, viewed as int32 bit patterns, into score bits in place: ``& 0x7FFFFFFF``
    gives |g|'s bits (for non-negative float32 the bit pattern orders like the value), and the
    excluded columns ``ex_cols`` become -1, below every score."""
    for j in range(g_bits.shape[0]):
        g_bits[j] &= 0x7FFFFFFF
    for e in range(ex_cols.shape[0]):
        g_bits[ex_cols[e]] = -1


def _n_groups(n_cols: int) -> int:
    """How many strided column groups a row scan uses (:func:`_group_maxima`): about 16 columns a
    group on long rows; depends on the shape only."""
    return 256 if n_cols >= 4096 else 64 if n_cols >= 256 else 16


@njit(cache=CACHE)
def _group_maxima(g_bits, gm):
    """gm[c] = the largest of g_bits[c::NC] (NC = len(gm): strided groups of columns), -1 if empty.

    Strided groups make the loop an elementwise maximum of contiguous runs of NC values, which
    vectorises (about 0.2 ns a column), where the maxima of contiguous chunks did not (1.5 ns).
    """
    NC = gm.shape[0]
    n_cols = g_bits.shape[0]
    for c in range(NC):
        gm[c] = -1
    for b in range(0, n_cols, NC):
        w = g_bits[b : b + NC]  # (<= NC,) contiguous: column b + c belongs to group c
        for c in range(w.shape[0]):
            x = w[c]
            y = gm[c]
            gm[c] = x if x > y else y


@njit(cache=CACHE)
def _scan_row(g_bits, gm, base, salt, keys, n, k, threshold):
    """Fold one row of score bits (:func:`_score_bits`) into a running top k: return the new
    (n, threshold).

    ``gm`` holds the row's group maxima (:func:`_group_maxima`); ``base`` is the flat index of column
    0. Every column whose rank key (position ``base + j``, ``salt``) exceeds the key ``threshold``
    (>= -1) appends it to keys[n:]; a score below the threshold's own score is skipped without
    computing the key, and a group whose maximum is below it is skipped whole (with a good threshold,
    most are). When the buffer is full it is cut back to its k largest keys and the threshold becomes
    the k-th of them. The order in which columns are offered does not change the result: the top k of
    distinct keys is the same for any order.
    """
    capacity = keys.shape[0]
    n_cols = g_bits.shape[0]
    NC = gm.shape[0]
    for c in range(NC):
        if gm[c] < 0 or gm[c] < (threshold >> 32):
            continue
        for j in range(c, n_cols, NC):
            s = g_bits[j]
            if s < 0 or s < (threshold >> 32):
                continue
            key = _key(s, base + j, salt)
            if key > threshold:
                if n == capacity:
                    threshold = _keep_largest(keys, n, k)
                    n = k
                    if key <= threshold:
                        continue
                keys[n] = key
                n += 1
    return n, threshold


@njit(cache=CACHE)
def _row_threshold(gm, k, scratch):
    """A rank key that at least k positions of a row reach, from its group maxima ``gm``
    (:func:`_group_maxima` of its score bits): -1 (no filter) unless at least k groups hold a score.

    The k largest group maxima are k distinct positions, so the row's k-th largest score is at least
    the k-th largest group maximum T; every position of the row's top k has a score >= T, and the key
    ``(T << 32) - 1`` lets exactly the scores >= T in. ``scratch`` holds at least len(gm) int64.
    """
    n = 0
    for c in range(gm.shape[0]):
        if gm[c] >= 0:
            scratch[n] = (np.int64(gm[c]) << 32) | c  # distinct: the group breaks ties
            n += 1
    if k <= 0 or n < k:
        return np.int64(-1)
    score = _keep_largest(scratch, n, k) >> 32
    return (score << 32) - 1 if score > 0 else np.int64(-1)
