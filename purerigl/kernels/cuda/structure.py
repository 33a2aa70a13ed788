"""The operations of a DST update that touch whole structures, on the device (registry.UPDATE_OPS, cuda).

Same names, signatures and results as :mod:`purerigl.kernels.host_topology`, on device matrices
(:class:`.csr.DeviceCSR`, :class:`.condensed.DeviceCondensed`, :class:`.diagonal.DeviceDiagonal`) and
numba device arrays. With them a resident DST method (RigL) changes a layer's structure without its
weights, gradients or optimizer state leaving the device.

Positions are flat indices ``p = row * n_in + col`` (int64). CSR and Condensed store their entries
in ascending p (rows ascending, columns strictly increasing within a row), so their keys are sorted
as stored; every step below relies on that and keeps it:

- :func:`source_of`: the keys of both structures (one thread per entry) and, per new entry, a binary
  search among the old keys (:func:`.topology.source_by_position`). Two Diagonals are matched by
  offset instead: entry (k, t) of the new one comes from entry (j, t) of the old one where the old
  offset j equals the new offset k (positions of different diagonals never coincide).
- :func:`remap_by_source`: one thread per new entry gathers ``old[source]`` or writes 0.
- :func:`count_kept`: per-lane counts in a grid-stride loop, summed on the host (the only number an
  update sends back, besides the candidate counts of :func:`.growth.topk_grad`).
- :func:`keep_by_magnitude`: each entry gets the rank key
  ``bits(|w|) << 32 | (2^32 - 1 - tie_rank(p, salt))`` (:func:`._growth_tiles.rank_key`: larger |w|
  first, the smaller tie rank first on ties: the shared rule of :mod:`purerigl.kernels._rank_key`),
  the keys are sorted descending by the bitonic network of :mod:`._growth_tiles`, the first
  ``n_keep`` are decoded to their positions (:func:`._growth_tiles.index_of_key`) and sorted again to
  come back ascending. O(nnz log^2 nnz) work, O(nnz) memory, deterministic (a sorting network
  compares the same pairs whatever the data).
- :func:`exclusion_of` / :func:`csr_from_positions`: a sorted position list becomes CSR arrays with
  one binary search per row (``indptr[r]`` = the number of positions below ``r * n_in``) and one
  division per entry: no atomics.
- :func:`csr_from_positions`, :func:`condensed_from_positions` and :func:`diagonal_from_offsets` make
  a new matrix with zero values from sorted positions or offsets, copying nothing between host and
  device (except the active rows of a Condensed when the host decided them: ``rows`` is "host or
  backend", see :mod:`.selection`).

Flat positions must fit the rank key's 32 bits: n_out * n_in <= 2^32, as for the growth kernels.
"""

from __future__ import annotations

import numpy as np

from ...errors import DTypeError, FormatError, FormatTypeError, ShapeError
from .. import _checks
from . import _growth_tiles as T
from ._device import find_sorted, lower_bound, segment_of
from ._launch import cuda, empty, launch
from .arrays import zeros
from .condensed import DeviceCondensed
from .csr import DeviceCSR
from .diagonal import DeviceDiagonal
from .elementwise import check_device, device_or_copied
from .elementwise import flat as _flat_view
from .topology import remap_by_source as _gather
from .topology import source_by_position

__all__ = [
    "condensed_from_positions", "count_kept", "csr_from_positions", "diagonal_from_offsets",
    "exclusion_of", "flat_keys", "flat_positions", "keep_by_magnitude", "remap_by_source", "source_of", "top_tags",
]

#: Lanes of :func:`count_kept` (each counts every LANES-th entry).
LANES = 1 << 10


# --------------------------------------------------------------------------------------------------
# Device functions and kernels


@cuda.jit
def _csr_keys(indptr, indices, n_in, keys):
    """keys[e] = row(e) * n_in + indices[e]; the row by binary search of indptr."""
    for e in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        keys[e] = np.int64(segment_of(indptr, e)) * n_in + indices[e]


@cuda.jit
def _condensed_keys(rows, indices, k, n_in, keys):
    """keys[e] = rows[e // k] * n_in + indices[e] (indices read flat)."""
    for e in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        keys[e] = np.int64(rows[e // k]) * n_in + indices[e]


@cuda.jit
def _diagonal_keys(offsets, L, n_out, n_in, keys):
    """keys[k * L + t] = the flat position of element t of diagonal offsets[k]: ((t + d) mod n_out, t)
    when n_out >= n_in, else (t, (t + d) mod n_in) (DESIGN.md section 2)."""
    for e in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        k = e // L
        t = e - k * L
        d = np.int64(offsets[k])
        if n_out >= n_in:
            keys[e] = ((t + d) % n_out) * n_in + t
        else:
            keys[e] = np.int64(t) * n_in + (t + d) % n_in


@cuda.jit
def _diagonal_source(old_offsets, new_offsets, L, source):
    """source[k * L + t] = j * L + t where old_offsets[j] == new_offsets[k], else -1."""
    for e in range(cuda.grid(1), source.shape[0], cuda.gridsize(1)):
        k = e // L
        j = find_sorted(old_offsets, 0, old_offsets.shape[0], new_offsets[k])
        source[e] = np.int64(j) * L + (e - k * L) if j >= 0 else np.int64(-1)


@cuda.jit
def _count_nonnegative(source, lane_counts):
    """lane_counts[l] = how many of source[l], source[l + n_lanes], ... are >= 0."""
    n_lanes = lane_counts.shape[0]
    for lane in range(cuda.grid(1), n_lanes, cuda.gridsize(1)):
        count = 0
        for e in range(lane, source.shape[0], n_lanes):
            if source[e] >= 0:
                count += 1
        lane_counts[lane] = count


@cuda.jit
def _magnitude_keys(value_bits, keys, n, salt, out):
    """out[e] = rank key of |w_e| at position keys[e] (ties: ``tie_rank(keys[e], salt)``) for e < n;
    NO_KEY (padding) up to out's width."""
    for e in range(cuda.grid(1), out.shape[1], cuda.gridsize(1)):
        out[0, e] = T.rank_key(np.int64(value_bits[e]), np.int64(keys[e]), salt) if e < n else T.NO_KEY


@cuda.jit
def _reversed_positions(sorted_keys, k, salt):
    """sorted_keys[0, t] <- 2^32 - 1 - p for t < k, p = index_of_key(key, salt) the position the key
    was made for; NO_KEY beyond (to sort again: descending, the positions come out ascending)."""
    for t in range(cuda.grid(1), sorted_keys.shape[1], cuda.gridsize(1)):
        sorted_keys[0, t] = T.INDEX_MASK - T.index_of_key(sorted_keys[0, t], salt) if t < k else T.NO_KEY


@cuda.jit
def _positions_from_reversed(sorted_reversed, out):
    """out[t] = 2^32 - 1 - sorted_reversed[0, t]: descending reversed positions give ascending ones."""
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[t] = T.INDEX_MASK - sorted_reversed[0, t]


@cuda.jit
def _row_starts(positions, n, n_in, indptr):
    """indptr[r] = the number of positions < r * n_in, for r = 0 .. n_out (ascending positions)."""
    for r in range(cuda.grid(1), indptr.shape[0], cuda.gridsize(1)):
        indptr[r] = lower_bound(positions, 0, n, np.int64(r) * n_in)


@cuda.jit
def _columns(positions, n_in, cols):
    """cols[e] = positions[e] mod n_in, as int32."""
    for e in range(cuda.grid(1), cols.shape[0], cuda.gridsize(1)):
        p = positions[e]
        cols[e] = np.int32(p - (p // n_in) * n_in)


@cuda.jit
def _flat_of(rows, cols, n_in, out):
    """out[e] = rows[e] * n_in + cols[e]."""
    for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[e] = np.int64(rows[e]) * n_in + cols[e]


@cuda.jit
def _merge(a, b, out):
    """a[i] goes to i + |{b < a[i]}|, b[j] to j + |{a <= b[j]}|: the stable merge of a then b."""
    n_a = a.shape[0]
    n_b = b.shape[0]
    for e in range(cuda.grid(1), n_a + n_b, cuda.gridsize(1)):
        if e < n_a:
            out[e + lower_bound(b, 0, n_b, a[e])] = a[e]
        else:
            j = e - n_a
            v = b[j]
            out[j + lower_bound(a, 0, n_a, v + 1)] = v  # integers: a <= v  <=>  a < v + 1


@cuda.jit
def _to_int32(a, out):
    """out[i] = int32(a[i])."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = np.int32(a[i])


# --------------------------------------------------------------------------------------------------
# Drivers


def _check_flat_range(shape) -> None:
    n_out, n_in = shape
    if n_out * n_in > 1 << 32:
        raise ShapeError(
            f"layer {n_out} x {n_in} has {n_out * n_in} positions; the device topology update ranks flat "
            "positions in 32 bits (at most 2^32): use the cpu backend for this layer"
        )


def flat_keys(M):
    """int64 device array (nnz,): the flat position of every stored entry of a DeviceCSR or
    DeviceCondensed, in storage order (ascending)."""
    n_in = M.shape[1]
    nnz = int(M.values.size)
    keys = empty((nnz,), np.int64)
    if isinstance(M, DeviceCSR):
        launch(_csr_keys, nnz, M.indptr, M.indices, n_in, keys)
    elif isinstance(M, DeviceCondensed):
        k = int(M.indices.shape[1]) if M.indices.ndim == 2 else 0
        if nnz:
            launch(_condensed_keys, nnz, M.rows, _flat_view(M.indices), k, n_in, keys)
    else:
        raise FormatTypeError(f"flat_keys takes a DeviceCSR or DeviceCondensed, got {type(M).__name__}")
    return keys


def flat_positions(W):
    """int64 device array (nnz,): the flat position ``row * n_in + col`` of every stored entry of a
    device matrix, in the order of ``W.values`` read flat (implements
    :func:`purerigl.kernels.host_topology.flat_positions`). Ascending for DeviceCSR and
    DeviceCondensed; a DeviceDiagonal's entries go diagonal by diagonal."""
    if isinstance(W, DeviceDiagonal):
        n_out, n_in = W.shape
        keys = empty((int(W.values.size),), np.int64)
        launch(_diagonal_keys, keys.shape[0], W.offsets, min(n_out, n_in), n_out, n_in, keys)
        return keys
    return flat_keys(W)


def source_of(old, new):
    """int64 device array shaped like ``new.values``: for each new entry, the flat index of the same
    position in ``old.values``, or -1 (implements :func:`purerigl.kernels.host_topology.source_of`).

    Both are device matrices of the same format (a resident update keeps the format).
    """
    if type(old) is not type(new):
        raise FormatTypeError(
            f"a device topology change keeps the format: old is {type(old).__name__}, new is {type(new).__name__}"
        )
    shape = tuple(new.values.shape)
    if isinstance(new, DeviceDiagonal):
        L = int(new.values.shape[1]) if len(shape) == 2 else 0
        source = empty((int(new.values.size),), np.int64)
        launch(_diagonal_source, source.shape[0], old.offsets, new.offsets, L, source)
        return source.reshape(shape)
    return source_by_position(flat_keys(old), flat_keys(new)).reshape(shape)


def remap_by_source(old_values, source, out=None):
    """Gather ``old_values`` through ``source``, exactly 0 where it is -1; shaped like ``source``
    (implements :func:`purerigl.kernels.host_topology.remap_by_source`)."""
    n_new = int(source.size)
    if out is None:
        out = empty(tuple(source.shape), np.float32)
    elif int(out.size) != n_new:
        raise ShapeError(f"out has {out.size} entries, source has {n_new}")
    if n_new:
        _gather(_flat_view(source), old_values, out)
    return out


def count_kept(source) -> int:
    """How many entries of the device array ``source`` are >= 0 (one small host copy: the lane sums)."""
    n = int(source.size)
    if n == 0:
        return 0
    lanes = empty((min(LANES, n),), np.int64)
    launch(_count_nonnegative, lanes.shape[0], _flat_view(source), lanes)
    return int(lanes.copy_to_host().sum())


def top_tags(value_bits, tags, n: int, salt: int = 0):
    """int64 device array (n,), ascending: the tags of the n entries of largest |value| (1 <= n <=
    size), equal |value|: the tag of smaller tie rank ``tie_rank(tag, salt)`` first (the shared rule of
    :mod:`purerigl.kernels._rank_key`).

    ``value_bits`` is the int32 view of float32 values (size,), ``tags`` distinct integers in
    [0, 2^32) (size,), ``salt`` in [0, 2^32) (checked by the caller). Each entry gets the rank key
    ``bits(|v|) << 32 | (2^32 - 1 - tie_rank(tag, salt))``, the keys are sorted descending by the
    bitonic network, the first n are decoded to their tags and these, reversed (2^32 - 1 - tag) and
    sorted descending again, give the tags ascending.
    """
    size = int(tags.shape[0])
    salt = np.int64(salt)
    out = empty((n,), np.int64)
    ranked = empty((1, T.next_pow2(size)), np.int64)  # (1, width): the row layout of the bitonic sort
    launch(_magnitude_keys, ranked.shape[1], value_bits, tags, size, salt, ranked)
    T.sort_rows_descending(ranked, launch)
    chosen = ranked[:, : T.next_pow2(n)]
    launch(_reversed_positions, chosen.shape[1], chosen, n, salt)
    T.sort_rows_descending(chosen, launch)
    launch(_positions_from_reversed, n, chosen, out)
    return out


def keep_by_magnitude(W, n_keep: int, salt: int = 0):
    """Flat positions (int64 device array, ascending) of the ``n_keep`` entries of the DeviceCSR or
    DeviceCondensed ``W`` with the largest |w| layer-wide; equal |w|: the position of smaller tie rank
    ``tie_rank(p, salt)`` is kept (the shared rule of :mod:`purerigl.kernels._rank_key`; implements
    :func:`purerigl.kernels.host_topology.keep_by_magnitude`)."""
    salt = _checks.check_salt(salt)
    _check_flat_range(W.shape)
    keys = flat_keys(W)
    n_keep = max(0, min(int(n_keep), keys.shape[0]))
    if n_keep == 0:
        return empty((0,), np.int64)
    return top_tags(_flat_view(W.values).view(np.int32), keys, n_keep, salt)


def _csr_arrays(positions, n: int, shape):
    """(indptr int64 (n_out + 1,), cols int32 (n,)) of the ascending device positions."""
    n_out, n_in = shape
    indptr = empty((n_out + 1,), np.int64)
    cols = empty((n,), np.int32)
    launch(_row_starts, n_out + 1, positions, n, n_in, indptr)
    launch(_columns, n, positions, n_in, cols)
    return indptr, cols


def exclusion_of(flat, shape):
    """(indptr int64 (n_out+1,), cols int32) device arrays: the ascending flat positions ``flat`` as a
    CSR-like set, the form the growth kernels exclude (implements
    :func:`purerigl.kernels.host_topology.exclusion_of`)."""
    positions = check_device("flat", flat, np.int64, ndim=1)
    return _csr_arrays(positions, int(positions.shape[0]), tuple(shape))


def _int32_or_64(name: str, A, ndim: int | None = 1):
    """``A`` after checking that it is an int32 or int64 device array (1-D unless ``ndim`` is None)."""
    check_device(name, A, dtype=None, ndim=ndim)
    if A.dtype not in (np.int32, np.int64):
        raise DTypeError(f"{name} must be int32 or int64, got {A.dtype}")
    return A


def _int32_copy(a):
    """A new int32 device array holding the 1-D integer device array ``a`` (copied on the device: the
    new structure shares no array with its caller's)."""
    out = empty((int(a.shape[0]),), np.int32)
    launch(_to_int32, out.shape[0], a, out)
    return out


def csr_from_positions(flat, shape) -> DeviceCSR:
    """The DeviceCSR (values 0) holding the ascending distinct int64 positions ``flat``: indptr[r] =
    ``|{p < r n_in}|`` (one binary search per row), indices = p mod n_in (int32) (implements
    :func:`purerigl.kernels.host_topology.csr_from_positions`, which also sorts unsorted positions).
    Copies: none."""
    shape = (int(shape[0]), int(shape[1]))
    check_device("flat", flat, np.int64, ndim=1)
    n = int(flat.shape[0])
    indptr, indices = _csr_arrays(flat, n, shape)
    return DeviceCSR(shape, indptr, indices, zeros((n,), np.float32))


def condensed_from_positions(rows, flat, shape) -> DeviceCondensed:
    """The DeviceCondensed (values 0) with the ascending active ``rows`` holding the ascending int64
    positions ``flat``, k = len(flat) / len(rows) per active row: indices[a, t] = flat[a k + t] mod n_in
    (int32) (implements :func:`purerigl.kernels.host_selection.condensed_from_positions`).

    ``rows`` int32 or int64, host or backend: a device array is copied to a new int32 array on the
    device, a host one (the active rows the host decided) is copied in as int32. The caller has checked
    the counts (:func:`row_counts`). Copies: a host ``rows`` in; none on device operands.
    """
    shape = (int(shape[0]), int(shape[1]))
    if isinstance(rows, np.ndarray):
        rows = device_or_copied("rows", rows, np.int32)  # a new array already
    else:
        rows = _int32_copy(_int32_or_64("rows", rows))
    check_device("flat", flat, np.int64, ndim=1)
    n_active, n = int(rows.shape[0]), int(flat.shape[0])
    k = n // n_active if n_active else 0
    if n_active * k != n:
        raise ShapeError(f"{n} positions do not split into {n_active} active rows of equal length")
    if n_active and not k:
        raise FormatError(f"{n_active} active rows with fan-in k=0; an active row needs k >= 1")
    indices = empty((n_active, k), np.int32)
    launch(_columns, n, flat, shape[1], _flat_view(indices))
    return DeviceCondensed(shape, rows, indices, zeros((n_active, k), np.float32))


def diagonal_from_offsets(offsets, shape) -> DeviceDiagonal:
    """The DeviceDiagonal (values 0, (K, min(n_out, n_in))) with the ascending ``offsets`` (implements
    :func:`purerigl.kernels.host_selection.diagonal_from_offsets`). ``offsets`` int64 or int32, copied
    to a new int32 array on the device; their range [0, max(n_out, n_in)) is trusted (checking it would
    read them back). Copies: none between host and device."""
    shape = (int(shape[0]), int(shape[1]))
    _int32_or_64("offsets", offsets)
    K = int(offsets.shape[0])
    return DeviceDiagonal(shape, _int32_copy(offsets), zeros((K, min(shape)), np.float32))
