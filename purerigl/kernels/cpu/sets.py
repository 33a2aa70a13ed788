"""Numba versions of the set operations on sorted positions of a DST update (the cpu backend).

The spec is the NumPy host versions, :func:`purerigl.kernels.host_selection.in_sorted`,
:func:`purerigl.kernels.host_topology.source_of` and :func:`purerigl.kernels.host_topology.remap_by_source`,
which the ``reference`` backend keeps running; these give the same values, dtypes and shapes.

The host versions look every value up with ``np.searchsorted``: a binary search, about 25-30 ns per
value on 500k int64 positions (a few cache misses each). The positions a DST update looks up are
nearly always ascending (a sampler's sorted candidates, a structure's flat positions), so here one
**linear merge** walks the values and the sorted array together: n + m steps of sequential reads
with no branch to mispredict, 5-6 ns per value. The merge checks the order as it goes; from the first
value smaller than its predecessor on, the rest are looked up by binary search, so unsorted values
give the same results (each search is still cheaper than NumPy's). Against a sorted array more than
:data:`GALLOP_RATIO` times longer than the values, the merge gallops instead (1, 2, 4, ... entries, then
a binary search in the last step): O(n log(m / n)) rather than O(n + m).

``merge_sorted`` stays the host version: NumPy's stable sort (timsort) of the two concatenated runs is
already a galloping merge, and a Numba merge measured no faster on RigL's 70% / 30% split.

Serial kernels: a merge is one pass bound by memory bandwidth, and a parallel region would wait for
a busy core (:mod:`._serial`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...formats import Diagonal
from .. import host_selection, host_topology
from ._cache import CACHE

__all__ = ["in_sorted", "remap_by_source", "source_of"]


# --------------------------------------------------------------------------------------------------
# kernels


@njit(cache=CACHE, inline="always")
def _lower_bound(s, v, lo, hi):
    """The first index t in [lo, hi) with s[t] >= v (hi if none), s ascending on [lo, hi)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if s[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=CACHE, inline="always")
def _gallop(s, v, j):
    """The first index t >= j with s[t] >= v (len(s) if none), s ascending: exponential steps from j,
    then a binary search inside the last step."""
    m = s.shape[0]
    if j >= m or s[j] >= v:
        return j
    lo = j  # s[lo] < v
    step = 1
    hi = j + 1
    while hi < m and s[hi] < v:
        lo = hi
        step <<= 1
        hi = j + step
    return _lower_bound(s, v, lo + 1, min(hi, m))


@njit(cache=CACHE, inline="always")
def _put(out, i, j, hit, index):
    """out[i] = j if hit else -1 (index True: a source), or hit (index False: a membership)."""
    if index:
        out[i] = j if hit else -1
    else:
        out[i] = hit


@njit(cache=CACHE)
def _merge_lookup(values, s, out, index):
    """Look up the ascending prefix of ``values`` in the ascending ``s`` (len >= 1) by one merge;
    returns where that prefix ends (the first i with values[i] < values[i - 1], or n).

    A step compares v = values[i] with w = s[j] and advances i if v <= w, j if w < v: j stays the
    lower bound of every value still to come, and v is in s exactly when v == s[j] as i leaves it. The
    steps have no data-dependent branch to mispredict (the descent test never fires on sorted data),
    n + m of them at most.
    """
    n, m = values.shape[0], s.shape[0]  # (n,), (m,); out (n,)
    i = j = 0
    prev = values[0]
    while i < n and j < m:
        v = values[i]
        if v < prev:
            return i
        w = s[j]
        _put(out, i, j, v == w, index)
        prev = v
        i += v <= w
        j += w < v
    while i < n:  # past the end of s: no more matches
        v = values[i]
        if v < prev:
            return i
        _put(out, i, m, False, index)
        prev = v
        i += 1
    return n


@njit(cache=CACHE)
def _gallop_lookup(values, s, out, index):
    """:func:`_merge_lookup` for few values against a long ``s``: j moves to each value's lower bound
    by galloping, O(n log(m / n)) steps instead of n + m."""
    n, m = values.shape[0], s.shape[0]  # (n,), (m,); out (n,)
    j = 0
    for i in range(n):
        v = values[i]
        if i > 0 and v < values[i - 1]:
            return i
        j = _gallop(s, v, j)
        _put(out, i, j, j < m and s[j] == v, index)
    return n


@njit(cache=CACHE)
def _search_lookup(values, s, out, index, start):
    """Look up values[start:] in the ascending ``s`` (len >= 1), any order: a binary search each (the
    lower bound, as ``np.searchsorted``)."""
    m = s.shape[0]
    for i in range(start, values.shape[0]):
        v = values[i]
        t = _lower_bound(s, v, 0, m)
        _put(out, i, t, t < m and s[t] == v, index)


#: Above this many sorted entries per value, the ascending values are looked up by galloping
#: (:func:`_gallop_lookup`) instead of the plain merge (:func:`_merge_lookup`).
GALLOP_RATIO = 3


def _lookup(values: np.ndarray, s: np.ndarray, out: np.ndarray, index: bool) -> None:
    """Fill ``out`` (n,) with the membership (bool) or source (int64) of the flat ``values`` (n >= 1)
    in the ascending ``s`` (m >= 1): a merge over the ascending prefix, a binary search after."""
    lookup = _gallop_lookup if s.shape[0] > GALLOP_RATIO * values.shape[0] else _merge_lookup
    done = lookup(values, s, out, index)
    if done < values.shape[0]:
        _search_lookup(values, s, out, index, done)


@njit(cache=CACHE)
def _is_ascending(a):
    """Whether the 1-D a is non-decreasing."""
    for i in range(1, a.shape[0]):
        if a[i] < a[i - 1]:
            return False
    return True


@njit(cache=CACHE)
def _remap(old, src, out):
    """out[e] = old[src[e]] if src[e] >= 0 else 0, over flat arrays; False (out unfinished) if some
    src[e] >= len(old)."""
    zero = out.dtype.type(0.0)
    m = old.shape[0]
    for e in range(src.shape[0]):
        t = src[e]
        if t >= m:
            return False
        out[e] = old[t] if t >= 0 else zero
    return True


# --------------------------------------------------------------------------------------------------
# drivers


def _integer(a: np.ndarray) -> bool:
    """Whether the kernels compare a's entries as NumPy does: signed, or unsigned below 64 bits (NumPy
    and Numba promote uint64 against int64 differently; floats may hold NaN, which sorts last)."""
    return a.dtype.kind == "i" or (a.dtype.kind == "u" and a.dtype.itemsize < 8)


def in_sorted(values: np.ndarray, sorted_array: np.ndarray) -> np.ndarray:
    """bool shaped like ``values``: which of them occur in the ascending ``sorted_array``.

    Implements :func:`purerigl.kernels.host_selection.in_sorted`.

    .. math:: \\mathrm{found}_i = [\\, v_i \\in S \\,]

    One merge of ``values`` with ``sorted_array`` while ``values`` ascends (duplicates allowed), a
    binary search per value from the first descent on: O(n + m) for ascending values, O(n log m)
    otherwise. Inputs other than integer arrays (floats, 0-d values, a ``sorted_array`` that is not
    1-D) go to the host version.

    Parameters
    ----------
    values : integer ndarray, any shape
    sorted_array : integer ndarray, shape (m,), ascending

    Returns
    -------
    found : bool ndarray, shaped like ``values``
    """
    values = np.asarray(values)
    sorted_array = np.asarray(sorted_array)
    if values.ndim == 0 or sorted_array.ndim != 1 or not (_integer(values) and _integer(sorted_array)):
        return host_selection.in_sorted(values, sorted_array)
    found = np.zeros(values.shape, dtype=bool)
    if sorted_array.size == 0 or values.size == 0:
        return found
    flat = np.ascontiguousarray(values).reshape(-1)  # (n,)
    _lookup(flat, np.ascontiguousarray(sorted_array), found.reshape(-1), False)
    return found


def source_of(old, new) -> np.ndarray:
    """int64 shaped like ``new.values``: for each new entry, the flat index of the same position in
    ``old.values``, or -1 if the position was not stored in ``old``.

    Implements :func:`purerigl.kernels.host_topology.source_of`.

    .. math:: \\mathrm{source}_e = t \\text{ if } p^{old}_t = p^{new}_e, \\text{ else } -1

    Two Diagonal matrices of one shape: a diagonal's entries sit at the same positions in both
    whenever its offset is stored in both (entry t of offset d), so the sources follow from the
    offsets alone, O(nnz). When the old positions ascend (CSR, Condensed), one merge of the new
    positions into them (a binary search per entry once they stop ascending); otherwise the host
    version's sort (a Diagonal's positions do not ascend: 0.3 s at 4096 x 4096 and 90%).

    Parameters
    ----------
    old, new : Condensed | Diagonal | CSR, the same shape

    Returns
    -------
    source : int64 ndarray, shaped like ``new.values``, entries in [-1, old.nnz)
    """
    if isinstance(old, Diagonal) and isinstance(new, Diagonal) and old.shape == new.shape:
        return _diagonal_source(old, new)
    old_flat = host_topology.flat_positions(old)  # (m,) int64
    if not _is_ascending(old_flat):
        return host_topology.source_of(old, new)
    new_flat = host_topology.flat_positions(new)  # (n,) int64
    source = np.empty(new_flat.size, dtype=np.int64)
    if old_flat.size == 0:
        source[:] = -1
    elif new_flat.size:
        _lookup(new_flat, old_flat, source, True)
    return source.reshape(new.values.shape)


def _diagonal_source(old: Diagonal, new: Diagonal) -> np.ndarray:
    """:func:`source_of` between two Diagonal matrices of one shape, from their offsets: entry (k, t) of
    ``new`` (offset d = new.offsets[k]) was entry (k', t) of ``old`` if old.offsets[k'] = d."""
    K_old, L = old.values.shape
    offsets = np.asarray(new.offsets, dtype=np.int64)  # (K,)
    old_offsets = np.asarray(old.offsets, dtype=np.int64)  # (K_old,) strictly increasing
    at = np.searchsorted(old_offsets, offsets)  # (K,)
    hit = at < K_old
    hit[hit] = old_offsets[at[hit]] == offsets[hit]
    source = at[:, None] * L + np.arange(L, dtype=np.int64)[None, :]  # (K, L): old entry (k', t)
    source[~hit] = -1
    return source.reshape(new.values.shape)


def remap_by_source(old_values: np.ndarray, source: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gather ``old_values`` through ``source``, exactly 0 where the source is -1.

    Implements :func:`purerigl.kernels.host_topology.remap_by_source`.

    .. math:: \\mathrm{out}_e = \\mathrm{old}_{\\mathrm{source}_e} \\text{ if } \\mathrm{source}_e \\ge 0
              \\text{ else } 0

    One pass writing every entry of ``out`` (the host version zeroes it, then gathers). Other
    dtypes than one float dtype for both arrays, a non-contiguous ``out``, or a source entry past the
    end of ``old_values`` (the host version's IndexError) go to the host version.

    Parameters
    ----------
    old_values : float32 ndarray, any shape (read flat)
    source : int64 ndarray, entries in [-1, old_values.size)
    out : float32 ndarray shaped like ``source``, optional (a new one if omitted); not ``old_values``

    Returns
    -------
    out : float32 ndarray shaped like ``source``
    """
    new_out = out is None
    if new_out:
        out = np.empty(source.shape, dtype=np.float32)
    fast = (
        isinstance(old_values, np.ndarray)
        and isinstance(out, np.ndarray)
        and old_values.dtype == out.dtype
        and out.dtype.kind == "f"
        and source.dtype.kind == "i"
        and out.shape == source.shape
        and out.flags.c_contiguous
        and out.flags.writeable
    )
    if fast and _remap(old_values.reshape(-1), np.ascontiguousarray(source).reshape(-1), out.reshape(-1)):
        return out
    if new_out:
        out = None
    return host_topology.remap_by_source(old_values, source, out)
