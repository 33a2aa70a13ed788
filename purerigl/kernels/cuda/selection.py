"""The operations of a DST update on positions, masks and scores, on the device (registry.UPDATE_OPS, cuda).

Same names, signatures and results as :mod:`purerigl.kernels.host_selection`, on numba device arrays.
Host NumPy arrays are refused (no hidden copies) except where an argument is documented "host or
backend": a small integer vector a method computes on the host (a per-row count or mask, a host
generator's draw), which the operation copies in itself (:func:`.elementwise.device_or_copied`).
:func:`row_counts` and :func:`active_rows` return host vectors of length n_out (the per-row facts the
host logic decides with), and :func:`in_sorted` given host values returns a host mask. Positions are flat indices ``p = row * n_in + col``
(int64); scores are float32, ranked by |s|, larger first; among equal magnitudes the entry whose tag
(position) has the smaller tie rank ``tie_rank(tag, salt)`` first, ``salt`` chosen by the caller: the
shared tie rule of :mod:`purerigl.kernels._rank_key`, compared as one int64 rank key
``bits(|s|) << 32 | (2^32 - 1 - tie_rank(tag, salt))`` per entry. Every kernel runs one thread per
independent output and uses no atomics, so results depend on the data only, never on block size or
thread timing:

- element-wise maps (:func:`flat_of`, :func:`csr_positions`, :func:`arange`,
  :func:`in_rows`): one thread per output; the row of a CSR entry by a binary search of indptr.
- :func:`compress` / :func:`count_true`: :data:`LANES` lanes each take a **contiguous** chunk of the
  mask and count its selected entries; one thread turns the counts into offsets (an exclusive scan),
  and each lane writes its entries, in order, from its offset: an order-preserving compaction. The
  total is the one int copied back (it sizes the output).
- :func:`indicator`: a fill, then one thread per index writes True (duplicates write the same value).
- sets of sorted positions (:func:`in_sorted`, :func:`row_counts`, :func:`free_positions`): binary
  searches, one per output; :func:`merge_sorted` merges by rank (each element's place is its own index
  plus the number of elements of the other list before it).
- :func:`top_k`: rank keys sorted descending by the bitonic network of :mod:`._growth_tiles`,
  the first k decoded back to their tags and sorted ascending, as :func:`.structure.keep_by_magnitude`
  does (``among``: the entries compacted first).
- :func:`top_k_per_row`: one thread per entry counts the eligible entries of its row whose rank key
  is larger than its own (larger |score|, or equal |score| and smaller tie rank of the tag);
  O(row length) per entry, meant for short rows (the rows of a layer); the chosen tags compacted.
- :func:`row_norms`: one thread per row, float64 squares summed in ascending column order.

Host-device traffic: none on device operands, except the output size of :func:`compress` (and so of
``top_k(among=...)`` and :func:`top_k_per_row`) and the count of :func:`count_true` (one int64 each),
the per-row vectors :func:`row_counts` and :func:`active_rows` return, and the host arguments
documented "host or backend" (copied in; :func:`in_sorted`'s host mask copied back). Tags and
positions that are ranked must lie in [0, 2^32).
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import DTypeError, ShapeError
from .. import _checks
from . import _growth_tiles as T
from ._device import find_sorted, lower_bound, segment_of
from ..host_selection import _row_layout
from ._launch import cuda, empty, is_device_array, launch, to_device, to_host
from .elementwise import check_device, device_or_copied
from .elementwise import flat as _flat
from .growth import _arange as _arange_device
from .growth import _exclusive_scan
from .structure import _csr_keys, _flat_of, _int32_or_64, _merge, top_tags

__all__ = [
    "active_rows", "arange", "compress", "count_true", "csr_positions", "flat_of", "free_positions", "in_rows",
    "in_sorted", "indicator", "merge_sorted", "row_counts", "row_norms", "top_k", "top_k_per_row",
]

#: Most lanes of :func:`compress` and :func:`count_true` (each takes one contiguous chunk); read at
#: every call, so tests may patch it small.
LANES = 1 << 10


# --------------------------------------------------------------------------------------------------
# Kernels


@cuda.jit
def _count_chunks(mask, keep, chunk, counts):
    """counts[l] = how many of mask[l * chunk : (l + 1) * chunk] equal keep."""
    for lane in range(cuda.grid(1), counts.shape[0], cuda.gridsize(1)):
        c = 0
        for e in range(lane * chunk, min(mask.shape[0], (lane + 1) * chunk)):
            if mask[e] == keep:
                c += 1
        counts[lane] = c


@cuda.jit
def _scatter_chunks(a, mask, keep, chunk, offsets, out):
    """Lane l writes the a[e] of its chunk with mask[e] == keep, in order, to out[offsets[l]:]."""
    for lane in range(cuda.grid(1), offsets.shape[0], cuda.gridsize(1)):
        q = offsets[lane]
        for e in range(lane * chunk, min(mask.shape[0], (lane + 1) * chunk)):
            if mask[e] == keep:
                out[q] = a[e]
                q += 1


@cuda.jit
def _set_true(indices, mask):
    """mask[indices[e]] = True (threads with equal indices write the same value)."""
    for e in range(cuda.grid(1), indices.shape[0], cuda.gridsize(1)):
        mask[indices[e]] = True


@cuda.jit
def _in_sorted(values, sorted_array, out):
    """out[e] = whether values[e] occurs in the ascending sorted_array (a binary search)."""
    for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[e] = find_sorted(sorted_array, 0, sorted_array.shape[0], values[e]) >= 0


@cuda.jit
def _in_rows(flat, row_mask, n_in, out):
    """out[e] = row_mask[flat[e] // n_in]."""
    for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[e] = row_mask[flat[e] // n_in]


@cuda.jit
def _row_counts(flat, n_in, counts):
    """counts[r] = |{flat in [r n_in, (r + 1) n_in)}| for the ascending flat: two binary searches."""
    for r in range(cuda.grid(1), counts.shape[0], cuda.gridsize(1)):
        n = flat.shape[0]
        lo = lower_bound(flat, 0, n, np.int64(r) * n_in)
        counts[r] = lower_bound(flat, lo, n, np.int64(r + 1) * n_in) - lo


@cuda.jit
def _top_k_per_row(score_bits, tags, starts, counts, eligible, all_eligible, salt, chosen):
    """chosen[e] = e eligible and fewer than counts[q] eligible entries of its row q outrank it:
    have a larger rank key (larger |score|, or equal |score| and smaller ``tie_rank(tag, salt)``).
    ``score_bits``: the int32 view of the float32 scores."""
    for e in range(cuda.grid(1), chosen.shape[0], cuda.gridsize(1)):
        if not (all_eligible or eligible[e]):
            chosen[e] = False
            continue
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
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        acc = np.float64(0.0)
        for t in range(values.shape[1]):
            v = np.float64(values[k, t])
            acc += v * v
        out[k] = np.float32(math.sqrt(acc))


@cuda.jit
def _free_positions(kept, n_in, rows, ranks, out):
    """out[m] = rows[m] * n_in + ranks[m] + t, t = |{i : k_i - i <= ranks[m]}| over the kept columns
    k_0 < k_1 < ... of row rows[m] (found by binary search: k_i - i never decreases)."""
    for m in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
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
        out[m] = r0 + rank + (a - lo)


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
    """bool array shaped like ``values``: ``out_e = (values_e in sorted_array)``, one binary search of
    the ascending device ``sorted_array`` per value (empty: all False) (implements
    :func:`purerigl.kernels.host_selection.in_sorted`). Both int32 or int64.

    ``values`` host or backend: device values give a device mask (copies: none); host values (a
    host generator's draw, int64) are copied in and their mask comes back as a host bool ndarray.
    """
    on_host = isinstance(values, np.ndarray)
    if on_host:
        values = to_device(np.ascontiguousarray(values, dtype=np.int64))
    _int32_or_64("values", values, ndim=None)
    _int32_or_64("sorted_array", sorted_array)
    out = empty(tuple(values.shape), np.bool_)
    launch(_in_sorted, out.size, _flat(values), sorted_array, _flat(out))
    return to_host(out) if on_host else out


def merge_sorted(a, b):
    """int64 device array: the ascending union of the disjoint ascending int64 ``a`` and ``b``, each
    element placed at its own index plus the number of smaller elements of the other list (implements
    :func:`purerigl.kernels.host_selection.merge_sorted`; with equal elements, those of ``a`` first, as
    the host's stable sort). ``b`` host or backend (a host generator's draw is copied in). Copies: none
    on device operands."""
    check_device("a", a, np.int64, ndim=1)
    b = device_or_copied("b", b, np.int64)
    out = empty((int(a.shape[0]) + int(b.shape[0]),), np.int64)
    launch(_merge, out.shape[0], a, b, out)
    return out


def in_rows(flat, row_mask, n_in: int):
    """bool device array shaped like ``flat``: ``row_mask[flat // n_in]``, whether each position lies in
    a selected row (implements :func:`purerigl.kernels.host_selection.in_rows`). ``flat`` int64 device,
    ``row_mask`` bool (n_out,), host or backend. Copies: none on device operands; a host ``row_mask`` in."""
    check_device("flat", flat, np.int64)
    row_mask = device_or_copied("row_mask", row_mask, np.bool_)
    out = empty(tuple(flat.shape), np.bool_)
    launch(_in_rows, out.size, _flat(flat), row_mask, int(n_in), _flat(out))
    return out


def row_counts(flat, shape) -> np.ndarray:
    """int64 **host** ndarray (n_out,): ``|{p in flat : p // n_in = r}|`` for the **ascending** int64
    device positions ``flat``, one pair of binary searches per row (implements
    :func:`purerigl.kernels.host_selection.row_counts`, which also takes unsorted positions).
    Copies: the counts back (a per-row vector for the host logic)."""
    check_device("flat", flat, np.int64, ndim=1)
    out = empty((int(shape[0]),), np.int64)
    launch(_row_counts, out.shape[0], flat, int(shape[1]), out)
    return to_host(out)


def active_rows(W) -> np.ndarray:
    """bool **host** ndarray (n_out,): True at the active rows ``W.rows`` of a DeviceCondensed
    (implements :func:`purerigl.kernels.host_selection.active_rows`). Copies: ``W.rows`` back."""
    check_device("W.rows", W.rows, dtype=None, ndim=1)
    mask = np.zeros(int(W.shape[0]), dtype=bool)
    mask[to_host(W.rows).astype(np.int64)] = True
    return mask


# --------------------------------------------------------------------------------------------------
# Ranking


def top_k(scores, tags, k: int, salt: int = 0, among=None):
    """int64 device array (min(k, size),), ascending: the ``tags`` of the ``k`` entries of largest
    |scores| (only those where the bool device array ``among`` is True, when given), equal magnitudes:
    the tag of smaller tie rank ``tie_rank(tag, salt)`` first (implements
    :func:`purerigl.kernels.host_selection.top_k`).

    .. math:: \\operatorname{top}_k \\{ \\mathrm{tags}_e : \\mathrm{among}_e \\text{ by }
              (|s_e|, -r_{salt}(\\mathrm{tags}_e)) \\}

    ``scores`` float32 (size,), ``tags`` int64 or int32 (size,) strictly increasing in [0, 2^32) (not
    checked: that would read them back), ``salt`` an int in [0, 2^32). ``among`` compacts scores and
    tags first (:func:`compress`). Rank keys ``bits(|s|) << 32 | (2^32 - 1 - tie_rank(tag, salt))``
    sorted descending (bitonic, O(size log^2 size)); the first k decoded to their tags and sorted again
    give the tags ascending. Copies: none (with ``among``: the two compactions' sizes, one int64 each).
    """
    check_device("scores", scores, np.float32)
    _int32_or_64("tags", tags)
    _same_size("scores", scores, "tags", tags)
    salt = _checks.check_salt(salt)
    if among is not None:
        check_device("among", among, np.bool_)
        _same_size("scores", scores, "among", among)
        scores, tags = compress(scores, among), compress(tags, among)
    k = max(0, min(int(k), int(tags.shape[0])))
    if k == 0:
        return empty((0,), np.int64)
    return top_tags(_flat(scores).view(np.int32), tags, k, salt)


def top_k_per_row(scores, tags, row_sizes, k, salt: int = 0, among=None):
    """int64 device array, in the order of ``tags``: in every row q (the next ``row_sizes[q]`` entries),
    the tags of the ``k[q]`` eligible entries of largest |scores|, equal magnitudes: the entry whose tag
    has the smaller tie rank ``tie_rank(tag, salt)`` first (implements
    :func:`purerigl.kernels.host_selection.top_k_per_row`).

    .. math:: \\mathrm{chosen}_e \\iff \\mathrm{among}_e \\wedge |\\{ f \\in \\mathrm{row}(e) :
              \\mathrm{among}_f, \\kappa_f > \\kappa_e \\}| < k_{\\mathrm{row}(e)}, \\qquad
              \\kappa_e = \\mathrm{bits}(|s_e|) \\cdot 2^{32} + 2^{32} - 1 - r_{salt}(\\mathrm{tags}_e)

    One thread per entry finds its row by binary search and scans it, comparing whole rank keys:
    O(row length) per entry (O(sum of squared row lengths) in all), meant for short rows such as the
    rows of a layer; the chosen tags are then compacted (:func:`compress`). ``scores`` float32 (size,),
    ``tags`` int64 (size,) distinct in [0, 2^32) (not checked), ``row_sizes`` an int or an
    int64 host ndarray (n_rows,), ``k`` an int or int64 (n_rows,) host or backend, ``among`` bool
    (size,) device array or None (all), ``salt`` an int in [0, 2^32). Copies: the row starts in, a host
    ``k`` in, the output size back (one int64).
    """
    check_device("scores", scores, np.float32, ndim=1)
    check_device("tags", tags, np.int64, ndim=1)
    _same_size("scores", scores, "tags", tags)
    salt = _checks.check_salt(salt)
    size = int(scores.shape[0])
    if is_device_array(row_sizes):
        raise DTypeError("row_sizes must be an int or a host array (the row starts are summed on the host)")
    if is_device_array(k):
        check_device("k", k, np.int64, ndim=1)
        sizes, _ = _row_layout(size, row_sizes, np.zeros(int(k.shape[0]), dtype=np.int64))
        counts = k
    else:
        sizes, counts = _row_layout(size, row_sizes, k)
        counts = to_device(counts)
    starts = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    starts = to_device(starts)
    all_eligible = among is None
    if all_eligible:
        among = empty((1,), np.bool_)  # never read
    else:
        check_device("among", among, np.bool_, ndim=1)
        _same_size("scores", scores, "among", among)
    chosen = empty((size,), np.bool_)
    launch(_top_k_per_row, size, scores.view(np.int32), tags, starts, counts, among, all_eligible,
           np.int64(salt), chosen)
    return compress(tags, chosen) if size else empty((0,), np.int64)


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


def free_positions(kept, shape, rows, ranks):
    """int64 device array (m,): the flat position of free column number ``ranks[m]`` of row ``rows[m]``,
    free meaning not held by the ascending int64 device positions ``kept`` (implements
    :func:`purerigl.kernels.host_selection.free_positions`).

    ``c = r + |{i : k_i - i <= r}|`` over the row's kept columns k_0 < k_1 < ...: one thread per pair,
    the row's slice of ``kept`` by two binary searches (``lower_bound`` of ``row * n_in``), then one
    binary search on ``k_i - i``; the position is ``row * n_in + c``. ``rows``, ``ranks``: int64 (m,),
    host or backend (a host generator's draw). Copies: host ``rows`` and ``ranks`` in.
    """
    check_device("kept", kept, np.int64, ndim=1)
    rows = device_or_copied("rows", rows, np.int64)
    ranks = device_or_copied("ranks", ranks, np.int64)
    _same_size("rows", rows, "ranks", ranks)
    out = empty((int(rows.shape[0]),), np.int64)
    launch(_free_positions, out.shape[0], kept, int(shape[1]), rows, ranks, out)
    return out
