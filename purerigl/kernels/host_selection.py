"""The selection operations of a DST update on host NumPy arrays (the reference and cpu backends).

The building blocks that SET, SRigL, GSE and diag-rigl write their rules with, so that each rule is
written once and runs where its backend computes: here on host arrays, in
:mod:`purerigl.kernels.cuda.selection` on device arrays (same names, signatures and results). The
list of names is :data:`purerigl.kernels.registry.UPDATE_OPS` (with :mod:`purerigl.kernels.host_topology`).

Conventions (shared with :mod:`purerigl.kernels.host_topology`):

- a **position** is the flat index ``p = row * n_in + col`` (int64); a **sorted position list** is
  strictly increasing;
- scores are float32 and ranked by **magnitude** |s|, larger first; among equal magnitudes the entry
  whose position (tag) has the smaller tie rank ``tie_rank(tag, salt)`` ranks higher: the shared tie
  rule of :mod:`purerigl.kernels._rank_key`;
- masks are bool arrays; counts and indices are int64.

Operations:

- building positions: :func:`flat_of` (rows, cols), :func:`csr_positions` (indptr, cols),
  :func:`arange`;
- array plumbing: :func:`compress`, :func:`count_true`, :func:`indicator`;
- sets of positions: :func:`in_sorted`, :func:`merge_sorted`, :func:`in_rows`;
- per-row facts the host decides with: :func:`row_counts`, :func:`active_rows` (host arrays on
  every backend);
- ranking: :func:`top_k` (one layer-wide top-k), :func:`top_k_per_row` (a top-k in every row),
  :func:`row_norms` (L2 norm of each row of values);
- random growth: :func:`free_positions` (the m-th free column of a row, so a host generator's draw
  turns into positions where the structure lives);
- new structures with zero values: :func:`condensed_from_positions`, :func:`diagonal_from_offsets`
  (the CSR one, :func:`~purerigl.kernels.host_topology.csr_from_positions`, lives with the drop
  that also builds CSR sets).

Where the arrays live: on the device backend every operation takes and returns device arrays, with
two documented exceptions that keep data movement out of the methods. (1) An argument that is a
small integer vector a method computes on the host (a per-row count or mask of length n_out, the
active rows, a host generator's draw) may be a host array; the device version copies it in itself,
and each such argument says so ("host or backend"). (2) :func:`row_counts` and :func:`active_rows`
return host arrays on every backend (per-row vectors the host logic reads), and :func:`in_sorted`
given host values returns a host mask. Values, batches and structures never cross implicitly.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..formats import Condensed, Diagonal
from ._checks import check_salt
from ._rank_key import tie_ranks
from .host_topology import top_mask

__all__ = [
    "active_rows", "arange", "compress", "condensed_from_positions", "count_true", "csr_positions",
    "diagonal_from_offsets", "flat_of", "free_positions", "in_rows", "in_sorted", "indicator", "merge_sorted",
    "row_counts", "row_norms", "top_k", "top_k_per_row",
]


# --------------------------------------------------------------------------------------------------
# building positions and array plumbing


def flat_of(rows: np.ndarray, cols: np.ndarray, n_in: int) -> np.ndarray:
    """int64 (m,): ``rows * n_in + cols``."""
    return np.asarray(rows, dtype=np.int64) * int(n_in) + np.asarray(cols, dtype=np.int64)


def csr_positions(indptr: np.ndarray, cols: np.ndarray, n_in: int) -> np.ndarray:
    """int64 (indptr[-1],): the positions of a CSR-like set, row i holding ``cols[indptr[i]:indptr[i+1]]``
    (what :func:`purerigl.kernels.reference.topk_grad_rows` returns), in storage order."""
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
    return flat_of(rows, cols, n_in)


def arange(n: int) -> np.ndarray:
    """int64 (n,): 0, 1, ..., n - 1."""
    return np.arange(int(n), dtype=np.int64)


def compress(a: np.ndarray, mask: np.ndarray, keep: bool = True) -> np.ndarray:
    """The entries of the 1-D ``a`` where ``mask`` is ``keep``, in their order (``a[mask]`` or
    ``a[~mask]``)."""
    a = np.asarray(a).reshape(-1)
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    return a[mask] if keep else a[~mask]


def count_true(mask: np.ndarray) -> int:
    """How many entries of ``mask`` are True."""
    return int(np.count_nonzero(mask))


def indicator(indices: np.ndarray, size: int) -> np.ndarray:
    """bool (size,): True at ``indices`` (int64 in [0, size)), False elsewhere."""
    mask = np.zeros(int(size), dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = True
    return mask


# --------------------------------------------------------------------------------------------------
# sets of positions


def in_sorted(values: np.ndarray, sorted_array: np.ndarray) -> np.ndarray:
    """bool shaped like ``values``: which of them occur in the ascending ``sorted_array``.

    ``np.isin`` by binary search, which avoids the slow hash path NumPy 2's ``np.isin`` takes for
    large-range int64 keys. ``values`` host or backend: host values (a host generator's draw) give a
    host mask on every backend (the device version copies the values in and the mask back).
    """
    values = np.asarray(values)
    sorted_array = np.asarray(sorted_array)
    if sorted_array.size == 0:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_array, values), sorted_array.size - 1)
    return sorted_array[at] == values


def merge_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64: the union of the disjoint ascending int64 arrays ``a`` and ``b``, ascending.

    ``b`` host or backend (a host generator's draw is copied in by the device version)."""
    merged = np.concatenate([np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)])
    merged.sort(kind="stable")
    return merged


def in_rows(flat: np.ndarray, row_mask: np.ndarray, n_in: int) -> np.ndarray:
    """bool shaped like ``flat``: whether each position lies in a selected row, ``row_mask[flat // n_in]``.

    ``row_mask`` bool (n_out,), host or backend."""
    return np.asarray(row_mask, dtype=bool)[np.asarray(flat, dtype=np.int64) // int(n_in)]


def row_counts(flat: np.ndarray, shape) -> np.ndarray:
    """int64 host ndarray (n_out,): how many of the ascending positions ``flat`` lie in each row of a
    ``shape`` layer (the host counts any order; the device version needs them ascending, and copies
    the counts back: a per-row vector for the host logic)."""
    n_out, n_in = int(shape[0]), int(shape[1])
    return np.bincount(np.asarray(flat, dtype=np.int64) // n_in, minlength=n_out).astype(np.int64)


def active_rows(W: Condensed) -> np.ndarray:
    """bool host ndarray (n_out,): True at the active (not ablated) rows ``W.rows`` of a Condensed
    matrix (on the device backend: one copy back of ``W.rows``)."""
    mask = np.zeros(int(W.shape[0]), dtype=bool)
    mask[np.asarray(W.rows, dtype=np.int64)] = True
    return mask


# --------------------------------------------------------------------------------------------------
# ranking


def top_k(scores: np.ndarray, tags: np.ndarray, k: int, salt: int = 0, among=None) -> np.ndarray:
    """int64 (min(k, size),), ascending: the ``tags`` of the ``k`` entries of largest |scores|
    (only entries where ``among`` is True take part, when it is given).

    .. math:: \\operatorname{top}_k \\{ \\mathrm{tags}_e : \\mathrm{among}_e \\text{ by }
              (|s_e|, -r_{salt}(\\mathrm{tags}_e)) \\}

    Parameters
    ----------
    scores : float32 ndarray, shape (size,)
    tags : int64 ndarray, shape (size,)
        Strictly increasing, in [0, 2^32) (positions, offsets, indices): equal magnitudes rank the
        tag of smaller tie rank ``tie_rank(tag, salt)`` first.
    k : int >= 0
    salt : int in [0, 2^32)
    among : bool ndarray, shape (size,), optional (every entry)
    """
    salt = check_salt(salt)
    scores = np.asarray(scores).reshape(-1)
    tags = np.asarray(tags, dtype=np.int64).reshape(-1)
    if among is not None:
        scores, tags = compress(scores, among), compress(tags, among)
    return tags[top_mask(np.abs(scores), k, tie_ranks(tags, salt))]  # tags ascending: index order is tag order


def top_k_per_row(scores: np.ndarray, tags: np.ndarray, row_sizes, k, salt: int = 0, among=None) -> np.ndarray:
    """int64, in the order of ``tags``: in every row, the tags of the ``k[r]`` entries of largest |scores|
    (only entries where ``among`` is True take part, when it is given).

    .. math:: \\bigcup_r \\operatorname{top}_{k_r}
              \\{ \\mathrm{tags}_e : e \\in \\mathrm{row}\\ r, \\mathrm{among}_e \\text{ by } |\\mathrm{scores}_e| \\}

    The entries are laid out row after row: row r holds the next ``row_sizes[r]`` entries. A row with
    fewer than ``k[r]`` eligible entries gives all of them; an entry outside ``among`` is never
    chosen. Equal magnitudes: the smaller tie rank ``tie_rank(tags_e, salt)`` first.

    Parameters
    ----------
    scores : float32 ndarray, shape (size,)
    tags : int64 ndarray, shape (size,)
        The position of every entry (distinct, in [0, 2^32)): what the tie rule ranks.
    row_sizes : int, or int64 host ndarray (n_rows,)
        Entries per row; an int is every row's (size // row_sizes rows, or len(k) when k is a vector).
    k : int, or int64 ndarray (n_rows,), >= 0, host or backend
    salt : int in [0, 2^32)
    among : bool ndarray, shape (size,), optional (every entry)
    """
    salt = check_salt(salt)
    scores = np.abs(np.asarray(scores).reshape(-1)).astype(np.float64)
    tags = np.asarray(tags).reshape(-1)
    ties = tie_ranks(tags, salt)
    sizes, counts = _row_layout(scores.size, row_sizes, k)
    starts = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    size = scores.size
    ok = np.ones(size, dtype=bool) if among is None else np.asarray(among, dtype=bool).reshape(-1)
    if counts.size and size and np.all(sizes == sizes[0]):  # equal rows (the rows of a Condensed)
        keys = np.where(ok, scores, -1.0).reshape(counts.size, -1)  # (n_rows, L); outside among: below all
        order = np.lexsort((ties.reshape(keys.shape), -keys), axis=-1)  # per row: best first
        rank = np.empty(keys.shape, dtype=np.int64)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(keys.shape[1]), keys.shape), axis=1)
        return np.asarray(tags, dtype=np.int64)[ok & (rank < counts[:, None]).reshape(-1)]
    row = np.repeat(np.arange(counts.size, dtype=np.int64), sizes)  # row of each entry
    # eligible entries first, then by row, larger |score| first, smaller tie rank first
    order = np.lexsort((ties, -scores, ~ok, row))
    first = starts[row[order]]  # start of the entry's row, in sorted order
    rank = np.empty(size, dtype=np.int64)
    rank[order] = np.arange(size) - first
    return np.asarray(tags, dtype=np.int64)[ok & (rank < counts[row])]


def _row_layout(size: int, row_sizes, k) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, k) of :func:`top_k_per_row` as int64 host arrays of one length (n_rows,)."""
    if np.ndim(row_sizes) == 0:
        n_rows = np.size(k) if np.ndim(k) else (size // int(row_sizes) if int(row_sizes) else 0)
        sizes = np.full(n_rows, int(row_sizes), dtype=np.int64)
    else:
        sizes = np.asarray(row_sizes, dtype=np.int64).reshape(-1)
    counts = np.full(sizes.size, int(k), dtype=np.int64) if np.ndim(k) == 0 else np.asarray(k, dtype=np.int64)
    if counts.shape != sizes.shape or int(sizes.sum()) != size:
        raise ShapeError(
            f"top_k_per_row: {counts.size} row counts for {sizes.size} rows holding {int(sizes.sum())} entries; "
            f"the scores have {size}"
        )
    return sizes, counts


def row_norms(values: np.ndarray) -> np.ndarray:
    """float32 (K,): the L2 norm of each row of the 2-D float32 ``values`` (K, L), summed in float64.

    .. math:: \\lVert V_k \\rVert_2 = \\Big(\\sum_t V_{k,t}^2\\Big)^{1/2}
    """
    v = np.asarray(values, dtype=np.float64)
    return np.sqrt(np.einsum("kl,kl->k", v, v)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# random growth


def free_positions(kept: np.ndarray, shape, rows: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """int64 (m,): for each pair, the flat position of free column number ``ranks[m]`` (0-based,
    ascending) of row ``rows[m]``, free meaning not held by the ascending positions ``kept``.

    With :math:`k_0 < k_1 < \\dots` the kept columns of the row, the r-th free column is
    :math:`c = r + t`, :math:`t = |\\{ i : k_i - i \\le r \\}|` (``k_i - i`` counts the free columns
    before :math:`k_i` and never decreases), one binary search per pair; the position is
    ``rows[m] * n_in + c``. A host generator draws the ranks; this turns them into positions where the
    structure lives, so the draw is the same on every backend. ``rows``, ``ranks``: int64 (m,), host or
    backend.
    """
    n_out, n_in = int(shape[0]), int(shape[1])
    kept = np.asarray(kept, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.int64)
    kept_rows = kept // n_in
    starts = np.searchsorted(kept, np.arange(n_out + 1, dtype=np.int64) * n_in)  # row bounds in kept
    free_before = (kept - kept_rows * n_in) - (np.arange(kept.size) - starts[kept_rows])  # k_i - i, in [0, n_in]
    # One search over all rows at once: row-major keys row * (n_in + 1) + (k_i - i) ascend through kept.
    keys = kept_rows * (n_in + 1) + free_before
    t = np.searchsorted(keys, rows * (n_in + 1) + ranks, side="right") - starts[rows]
    return flat_of(rows, ranks + t, n_in)


# --------------------------------------------------------------------------------------------------
# new structures (values zero)


def condensed_from_positions(rows: np.ndarray, flat: np.ndarray, shape) -> Condensed:
    """A Condensed structure (values 0) with active ``rows`` (ascending; host or backend) holding the
    ascending positions ``flat``, the same number k = len(flat) / len(rows) in every active row and
    none elsewhere (the caller has checked the counts: :func:`row_counts`)."""
    n_out, n_in = int(shape[0]), int(shape[1])
    rows = np.array(rows, dtype=np.int32)  # a copy: the new matrix shares no array with the old one
    flat = np.asarray(flat, dtype=np.int64)
    k = flat.size // rows.size if rows.size else 0
    indices = (flat - (flat // n_in) * n_in).astype(np.int32).reshape(rows.size, k)  # (n_active, k)
    return Condensed(rows, indices, np.zeros((rows.size, k), dtype=np.float32), (n_out, n_in))


def diagonal_from_offsets(offsets: np.ndarray, shape) -> Diagonal:
    """A Diagonal structure (values 0) with the ascending ``offsets``."""
    n_out, n_in = int(shape[0]), int(shape[1])
    offsets = np.array(offsets, dtype=np.int32)  # a copy: the new matrix shares no array with its caller
    return Diagonal(offsets, np.zeros((offsets.size, min(n_out, n_in)), dtype=np.float32), (n_out, n_in))
