"""The operations of a DST update on positions, masks and scores, on the device (registry.UPDATE_OPS, cuda).

Same names, signatures and results as :mod:`purerigl.kernels.host_selection`, on numba device arrays
(host NumPy arrays are refused: no hidden copies). Positions are flat indices ``p = row * n_in + col``
(int64); scores are float32, ranked by |s|, larger first; among equal magnitudes the entry whose tag
(position) has the smaller tie rank ``tie_rank(tag, salt)`` first, ``salt`` chosen by the caller: the
shared tie rule of :mod:`purerigl.kernels._rank_key`, compared as one int64 rank key
``bits(|s|) << 32 | (2^32 - 1 - tie_rank(tag, salt))`` per entry. Every kernel runs one thread per
independent output and uses no atomics, so results depend on the data only, never on block size or
thread timing:

- element-wise maps (:func:`flat_of`, :func:`csr_positions`, :func:`arange`,
  :func:`rows_selected`): one thread per output; the row of a CSR entry by a binary search of indptr.
- :func:`compress` / :func:`count_true`: :data:`LANES` lanes each take a **contiguous** chunk of the
  mask and count its selected entries; one thread turns the counts into offsets (an exclusive scan),
  and each lane writes its entries, in order, from its offset: an order-preserving compaction. The
  total is the one int copied back (it sizes the output).
- :func:`indicator`: a fill, then one thread per index writes True (duplicates write the same value).
- sets of sorted positions (:func:`in_sorted`, :func:`row_counts`, :func:`columns_not_in`): binary
  searches, one per output; :func:`merge_sorted` merges by rank (each element's place is its own index
  plus the number of elements of the other list before it).
- :func:`top_positions`: rank keys sorted descending by the bitonic network of :mod:`._growth_tiles`,
  the first n decoded back to their tags and sorted ascending, as :func:`.structure.keep_by_magnitude`
  does.
- :func:`segment_top`: one thread per entry counts the eligible entries of its segment whose rank key
  is larger than its own (larger |score|, or equal |score| and smaller tie rank of the tag);
  O(segment length) per entry, meant for short segments (the rows of a layer).
- :func:`row_norms`: one thread per row, float64 squares summed in ascending column order.

Host-device traffic: none, except the output size of :func:`compress` and the count of
:func:`count_true` (one int64 each). Tags and positions that are ranked must lie in [0, 2^32).
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from .. import _checks
from . import _growth_tiles as T
from ._device import find_sorted, lower_bound, segment_of
from ._launch import cuda, empty, launch, to_host
from .elementwise import check_device
from .elementwise import flat as _flat
from .growth import _arange as _arange_device
from .growth import _exclusive_scan
from .structure import _csr_keys, _flat_of, _int32_or_64, _merge, top_tags

__all__ = [
    "arange", "columns_not_in", "compress", "count_true", "csr_positions", "flat_of", "in_sorted", "indicator",
    "merge_sorted", "row_counts", "row_norms", "rows_selected", "segment_top", "top_positions",
]

#: Most lanes of :func:`compress` and :func:`count_true` (each takes one contiguous chunk); read at
#: every call, so tests may patch it small.
LANES = 1 << 10


# --------------------------------------------------------------------------------------------------
# Kernels


@cuda.jit
def _count_chunks(mask, keep, chunk, counts):
    """counts[l] = how many of mask[l * chunk : (l + 1) * chunk] equal keep."""
    lane = cuda.grid(1)
    if lane < counts.shape[0]:
        c = 0
        for e in range(lane * chunk, min(mask.shape[0], (lane + 1) * chunk)):
            if mask[e] == keep:
                c += 1
        counts[lane] = c


@cuda.jit
def _scatter_chunks(a, mask, keep, chunk, offsets, out):
    """Lane l writes the a[e] of its chunk with mask[e] == keep, in order, to out[offsets[l]:]."""
    lane = cuda.grid(1)
    if lane < offsets.shape[0]:
        q = offsets[lane]
        for e in range(lane * chunk, min(mask.shape[0], (lane + 1) * chunk)):
            if mask[e] == keep:
                out[q] = a[e]
                q += 1


@cuda.jit
def _set_true(indices, mask):
    """mask[indices[e]] = True (threads with equal indices write the same value)."""
    e = cuda.grid(1)
    if e < indices.shape[0]:
        mask[indices[e]] = True


@cuda.jit
def _in_sorted(values, sorted_array, out):
    """out[e] = whether values[e] occurs in the ascending sorted_array (a binary search)."""
    e = cuda.grid(1)
    if e < out.shape[0]:
        out[e] = find_sorted(sorted_array, 0, sorted_array.shape[0], values[e]) >= 0


@cuda.jit
def _rows_selected(flat, row_mask, n_in, out):
    """out[e] = row_mask[flat[e] // n_in]."""
    e = cuda.grid(1)
    if e < out.shape[0]:
        out[e] = row_mask[flat[e] // n_in]


@cuda.jit
def _row_counts(flat, n_in, counts):
    """counts[r] = |{flat in [r n_in, (r + 1) n_in)}| for the ascending flat: two binary searches."""
    r = cuda.grid(1)
    if r < counts.shape[0]:
        n = flat.shape[0]
        lo = lower_bound(flat, 0, n, np.int64(r) * n_in)
        counts[r] = lower_bound(flat, lo, n, np.int64(r + 1) * n_in) - lo


@cuda.jit
def _segment_top(score_bits, tags, starts, counts, eligible, all_eligible, salt, chosen):
    """chosen[e] = e eligible and fewer than counts[q] eligible entries of its segment q outrank it:
    have a larger rank key (larger |score|, or equal |score| and smaller ``tie_rank(tag, salt)``).
    ``score_bits``: the int32 view of the float32 scores."""
    e = cuda.grid(1)
    if e < chosen.shape[0]:
        if not (all_eligible or eligible[e]):
            chosen[e] = False
            return
        q = segment_of(starts, e)
        c = counts[q]
        key = T.rank_key(np.int64(score_bits[e]), np.int64(tags[e]), salt)
        ahead = 0
        for f in range(starts[q], starts[q + 1]):
            if ahead >= c:
                break
            if all_eligible or eligible[f]:
                if T.rank_key(np.int64(score_bits[f]), np.int64(tags[f]), salt) > key:
                    ahead += 1
        chosen[e] = ahead < c


@cuda.jit
def _row_norms(values, out):
    """out[k] = float32(sqrt(sum_t float64(values[k, t])^2)), t ascending."""
    k = cuda.grid(1)
    if k < out.shape[0]:
        acc = np.float64(0.0)
        for t in range(values.shape[1]):
            v = np.float64(values[k, t])
            acc += v * v
        out[k] = np.float32(math.sqrt(acc))


@cuda.jit
def _columns_not_in(kept, n_in, rows, ranks, out):
    """out[m] = ranks[m] + t, t = |{i : k_i - i <= ranks[m]}| over the kept columns k_0 < k_1 < ... of
    row rows[m] (found by binary search: k_i - i never decreases)."""
    m = cuda.grid(1)
    if m < out.shape[0]:
        r0 = np.int64(rows[m]) * n_in
        rank = ranks[m]
        n = kept.shape[0]
        lo = lower_bound(kept, 0, n, r0)  # the row's kept entries: kept[lo:hi]
        a = lo
        b = lower_bound(kept, lo, n, r0 + n_in)
        while a < b:  # first i in [lo, hi) with (free columns before kept[i]) > rank
            mid = (a + b) // 2
            if (kept[mid] - r0) - (mid - lo) <= rank:
                a = mid + 1
            else:
                b = mid
        out[m] = rank + (a - lo)


# --------------------------------------------------------------------------------------------------
# Checks and helpers


def _array(name: str, A):
    """``A`` after checking that it is a device array (any dtype)."""
    return check_device(name, A, dtype=getattr(A, "dtype", None))


def _same_size(name_a: str, a, name_b: str, b) -> None:
    if int(a.size) != int(b.size):
        raise ShapeError(f"{name_a} has {a.size} entries, {name_b} has {b.size}: they must match")


def _kept_offsets(mask, keep: bool):
    """(offsets int64 (n_lanes,), chunk, total): lane l takes mask[l chunk : (l + 1) chunk] and writes
    its entries equal to ``keep`` from offsets[l]; ``total`` (copied back) is how many there are."""
    n = int(mask.shape[0])
    chunk = -(-n // min(LANES, n))
    n_lanes = -(-n // chunk)
    offsets = empty((n_lanes,), np.int64)
    total = empty((1,), np.int64)
    launch(_count_chunks, n_lanes, mask, keep, chunk, offsets)
    launch(_exclusive_scan, 1, offsets, total)
    return offsets, chunk, int(to_host(total)[0])


# --------------------------------------------------------------------------------------------------
# Building positions and array plumbing


def flat_of(rows, cols, n_in: int):
    """int64 device array shaped like ``rows``: ``rows * n_in + cols`` (implements
    :func:`purerigl.kernels.host_selection.flat_of`). ``rows``, ``cols``: int64. Copies: none."""
    check_device("rows", rows, np.int64)
    check_device("cols", cols, np.int64)
    _same_size("rows", rows, "cols", cols)
    out = empty(tuple(rows.shape), np.int64)
    launch(_flat_of, out.size, _flat(rows), _flat(cols), int(n_in), _flat(out))
    return out


def csr_positions(indptr, cols, n_in: int):
    """int64 device array (indptr[-1],): ``row(e) * n_in + cols[e]``, the row by binary search of indptr
    (implements :func:`purerigl.kernels.host_selection.csr_positions`).

    ``indptr`` int64 (n_out + 1,), ``cols`` int64 with indptr[-1] entries (its size is the output's, so
    nothing is read back). Copies: none.
    """
    check_device("indptr", indptr, np.int64, ndim=1)
    check_device("cols", cols, np.int64, ndim=1)
    out = empty((int(cols.shape[0]),), np.int64)
    launch(_csr_keys, out.shape[0], indptr, cols, int(n_in), out)
    return out


def arange(n: int):
    """int64 device array (n,): ``i`` at i (implements :func:`purerigl.kernels.host_selection.arange`).
    Copies: none."""
    return _arange_device(max(0, int(n)))


def compress(a, mask, keep: bool = True):
    """The entries of the (flattened) device array ``a`` where the bool ``mask`` is ``keep``, in order:
    ``a[mask == keep]`` (implements :func:`purerigl.kernels.host_selection.compress`).

    Lane counts over contiguous chunks, an exclusive scan and an order-preserving scatter. Copies: one
    int64 back (the output size).
    """
    _array("a", a)
    check_device("mask", mask, np.bool_)
    _same_size("a", a, "mask", mask)
    if a.size == 0:
        return empty((0,), a.dtype)
    a, mask, keep = _flat(a), _flat(mask), bool(keep)
    offsets, chunk, total = _kept_offsets(mask, keep)
    out = empty((total,), a.dtype)
    if total:
        launch(_scatter_chunks, offsets.shape[0], a, mask, keep, chunk, offsets, out)
    return out


def count_true(mask) -> int:
    """``|{e : mask_e}|`` of the bool device array ``mask`` (implements
    :func:`purerigl.kernels.host_selection.count_true`). Copies: one int64 back (the count, from the lane
    counts' scan)."""
    check_device("mask", mask, np.bool_)
    if mask.size == 0:
        return 0
    return _kept_offsets(_flat(mask), True)[2]


def indicator(indices, size: int):
    """bool device array (size,): ``out_i = (i in indices)`` for int64 ``indices`` in [0, size)
    (implements :func:`purerigl.kernels.host_selection.indicator`). Copies: none."""
    check_device("indices", indices, np.int64)
    out = empty((int(size),), np.bool_)
    launch(T.fill, out.shape[0], out, 0, out.shape[0], False)
    launch(_set_true, indices.size, _flat(indices), out)
    return out


# --------------------------------------------------------------------------------------------------
# Sets of positions


def in_sorted(values, sorted_array):
    """bool device array shaped like ``values``: ``out_e = (values_e in sorted_array)``, one binary
    search of the ascending ``sorted_array`` per value (empty: all False) (implements
    :func:`purerigl.kernels.host_selection.in_sorted`). Both int32 or int64. Copies: none."""
    _int32_or_64("values", values, ndim=None)
    _int32_or_64("sorted_array", sorted_array)
    out = empty(tuple(values.shape), np.bool_)
    launch(_in_sorted, out.size, _flat(values), sorted_array, _flat(out))
    return out


def merge_sorted(a, b):
    """int64 device array: the ascending union of the disjoint ascending int64 ``a`` and ``b``, each
    element placed at its own index plus the number of smaller elements of the other list (implements
    :func:`purerigl.kernels.host_selection.merge_sorted`; with equal elements, those of ``a`` first, as
    the host's stable sort). Copies: none."""
    check_device("a", a, np.int64, ndim=1)
    check_device("b", b, np.int64, ndim=1)
    out = empty((int(a.shape[0]) + int(b.shape[0]),), np.int64)
    launch(_merge, out.shape[0], a, b, out)
    return out


def rows_selected(flat, row_mask, n_in: int):
    """bool device array shaped like ``flat``: ``row_mask[flat // n_in]`` (implements
    :func:`purerigl.kernels.host_selection.rows_selected`). ``flat`` int64, ``row_mask`` bool.
    Copies: none."""
    check_device("flat", flat, np.int64)
    check_device("row_mask", row_mask, np.bool_, ndim=1)
    out = empty(tuple(flat.shape), np.bool_)
    launch(_rows_selected, out.size, _flat(flat), row_mask, int(n_in), _flat(out))
    return out


def row_counts(flat, shape):
    """int64 device array (n_out,): ``|{p in flat : p // n_in = r}|`` for the **ascending** int64
    positions ``flat``, one pair of binary searches per row (implements
    :func:`purerigl.kernels.host_selection.row_counts`, which also takes unsorted positions).
    Copies: none."""
    check_device("flat", flat, np.int64, ndim=1)
    out = empty((int(shape[0]),), np.int64)
    launch(_row_counts, out.shape[0], flat, int(shape[1]), out)
    return out


# --------------------------------------------------------------------------------------------------
# Ranking


def top_positions(scores, tags, n: int, salt: int = 0):
    """int64 device array (min(n, size),), ascending: the ``tags`` of the ``n`` entries of largest
    |scores|, equal magnitudes: the tag of smaller tie rank ``tie_rank(tag, salt)`` first (implements
    :func:`purerigl.kernels.host_selection.top_positions`).

    .. math:: \\operatorname{top}_n \\{ \\mathrm{tags}_e \\text{ by } (|s_e|, -r_{salt}(\\mathrm{tags}_e)) \\}

    ``scores`` float32 (size,), ``tags`` int64 or int32 (size,) strictly increasing in [0, 2^32) (not
    checked: that would read them back), ``salt`` an int in [0, 2^32). Rank keys
    ``bits(|s|) << 32 | (2^32 - 1 - tie_rank(tag, salt))`` sorted descending (bitonic,
    O(size log^2 size)); the first n decoded to their tags and sorted again give the tags ascending.
    Copies: none.
    """
    check_device("scores", scores, np.float32)
    _int32_or_64("tags", tags)
    _same_size("scores", scores, "tags", tags)
    salt = _checks.check_salt(salt)
    n = max(0, min(int(n), int(tags.shape[0])))
    if n == 0:
        return empty((0,), np.int64)
    return top_tags(_flat(scores).view(np.int32), tags, n, salt)


def segment_top(scores, tags, starts, counts, eligible=None, salt: int = 0):
    """bool device array (size,): in each segment q = [starts[q], starts[q+1]), the ``counts[q]``
    eligible entries of largest |scores|, equal magnitudes: the entry whose tag has the smaller tie
    rank ``tie_rank(tag, salt)`` first (implements :func:`purerigl.kernels.host_selection.segment_top`).

    .. math:: \\mathrm{chosen}_e \\iff \\mathrm{eligible}_e \\wedge |\\{ f \\in \\mathrm{seg}(e) :
              \\mathrm{eligible}_f, \\kappa_f > \\kappa_e \\}| < c_{\\mathrm{seg}(e)}, \\qquad
              \\kappa_e = \\mathrm{bits}(|s_e|) \\cdot 2^{32} + 2^{32} - 1 - r_{salt}(\\mathrm{tags}_e)

    One thread per entry finds its segment by binary search and scans it, comparing whole rank keys:
    O(segment length) per entry (O(sum of squared segment lengths) in all), meant for short segments
    such as the rows of a layer. ``scores`` float32 (size,), ``tags`` int64 or int32 (size,) distinct
    in [0, 2^32) (not checked), ``starts`` int64 (n_seg + 1,) with starts[-1] = size (not checked),
    ``counts`` int64 (n_seg,), ``eligible`` bool (size,) or None (all), ``salt`` an int in [0, 2^32).
    Copies: none.
    """
    check_device("scores", scores, np.float32, ndim=1)
    _int32_or_64("tags", tags)
    _same_size("scores", scores, "tags", tags)
    check_device("starts", starts, np.int64, ndim=1)
    check_device("counts", counts, np.int64, shape=(int(starts.shape[0]) - 1,))
    salt = _checks.check_salt(salt)
    all_eligible = eligible is None
    if all_eligible:
        eligible = empty((1,), np.bool_)  # never read
    else:
        check_device("eligible", eligible, np.bool_, ndim=1)
        _same_size("scores", scores, "eligible", eligible)
    out = empty((int(scores.shape[0]),), np.bool_)
    launch(_segment_top, out.shape[0], scores.view(np.int32), tags, starts, counts, eligible, all_eligible,
           np.int64(salt), out)
    return out


def row_norms(values):
    """float32 device array (K,): ``sqrt(sum_t V[k, t]^2)`` of the float32 (K, L) ``values``, one thread
    per row summing float64 squares in ascending t (implements
    :func:`purerigl.kernels.host_selection.row_norms`; the host's einsum may sum in another order, so
    the two agree exactly where the sums are exact, e.g. small dyadic values, and to float32 rounding
    elsewhere). Copies: none."""
    check_device("values", values, np.float32, ndim=2)
    out = empty((int(values.shape[0]),), np.float32)
    launch(_row_norms, out.shape[0], values, out)
    return out


# --------------------------------------------------------------------------------------------------
# Random growth


def columns_not_in(kept, shape, rows, ranks):
    """int64 device array (m,): free column number ``ranks[m]`` of row ``rows[m]``, the columns that the
    ascending int64 positions ``kept`` do not hold (implements
    :func:`purerigl.kernels.host_selection.columns_not_in`).

    ``c = r + |{i : k_i - i <= r}|`` over the row's kept columns k_0 < k_1 < ...: one thread per pair,
    the row's slice of ``kept`` by two binary searches (``lower_bound`` of ``row * n_in``), then one
    binary search on ``k_i - i``. ``rows``, ``ranks``: int64 (m,). Copies: none.
    """
    check_device("kept", kept, np.int64, ndim=1)
    check_device("rows", rows, np.int64, ndim=1)
    check_device("ranks", ranks, np.int64, ndim=1)
    _same_size("rows", rows, "ranks", ranks)
    out = empty((int(rows.shape[0]),), np.int64)
    launch(_columns_not_in, out.shape[0], kept, int(shape[1]), rows, ranks, out)
    return out


