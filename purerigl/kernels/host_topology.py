"""The topology-change operations of a DST update on host NumPy arrays (the reference and cpu backends).

A DST method decides which connections a layer keeps and grows; these operations carry out the
parts of that decision that touch every connection, so that the method's rule is written once and
runs where its backend computes: here on host arrays, in :mod:`purerigl.kernels.cuda.structure` on
device arrays (same names, signatures and results). The list of names is
:data:`purerigl.kernels.registry.UPDATE_OPS` (with :mod:`purerigl.kernels.host_selection`).

Positions are flat indices ``row * n_in + col`` (int64). Every selection follows the shared tie rule
of :mod:`purerigl.kernels._rank_key`: among equal scores the smaller tie rank ``tie_rank(p, salt)``
ranks higher (a salted permutation of the positions, so no position is preferred).

- :func:`flat_positions`: the flat index of every stored entry, in storage order.
- :func:`source_of` / :func:`remap_by_source`: match the entries of a new structure to the old one
  (rule 1 of :mod:`purerigl.dst.topology`: a surviving position keeps its value and optimizer state)
  and carry an array across (0 at new positions, rule 2).
- :func:`count_kept`: how many new entries have a source (the ``kept`` statistic).
- :func:`keep_by_magnitude`: the ``n_keep`` entries of largest |w| layer-wide (RigL's and SET's drop).
- :func:`exclusion_of`: a sorted set of positions in the CSR-like form the growth kernels exclude.
- :func:`csr_from_positions`: the CSR structure (values 0) of a set of positions (a method's new
  active set; also the exclusion's form).
"""

from __future__ import annotations

import numpy as np

from ..formats import CSR, SparseFormat
from ..formats._base import ascending, is_ascending
from ..formats.triples import triples
from ._checks import check_salt
from ._rank_key import INDEX_MASK, tie_ranks

__all__ = [
    "count_kept", "csr_from_positions", "exclusion_of", "flat_positions", "keep_by_magnitude",
    "remap_by_source", "source_of", "top_mask",
]


def flat_positions(W: SparseFormat) -> np.ndarray:
    """int64 (nnz,): ``row * n_in + col`` of every stored entry, in the order of ``W.values.ravel()``."""
    rows, cols, _ = triples(W)
    return rows * W.n_in + cols


def source_of(old: SparseFormat, new: SparseFormat) -> np.ndarray:
    """int64 shaped like ``new.values``: for each new entry, the flat index of the same position in
    ``old.values``, or -1 if the position was not stored in ``old``."""
    old_flat = flat_positions(old)
    if is_ascending(old_flat):  # CSR and Condensed store their positions in ascending order
        order, sorted_flat = np.arange(old_flat.size), old_flat
    else:
        order = np.argsort(old_flat, kind="stable")
        sorted_flat = old_flat[order]
    new_flat = flat_positions(new)
    if sorted_flat.size == 0:  # nothing was stored: every new entry is new
        return np.full(new.values.shape, -1, dtype=np.int64)
    at = np.searchsorted(sorted_flat, new_flat)
    at_clipped = np.minimum(at, sorted_flat.size - 1)
    found = (at < sorted_flat.size) & (sorted_flat[at_clipped] == new_flat)
    source = np.where(found, order[at_clipped], -1)
    return source.reshape(new.values.shape).astype(np.int64)


def remap_by_source(old_values: np.ndarray, source: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gather ``old_values`` through ``source``, exactly 0 where the source is -1.

    .. math:: \\mathrm{out}_e = \\mathrm{old}_{\\mathrm{source}_e} \\text{ if } \\mathrm{source}_e \\ge 0
              \\text{ else } 0

    Parameters
    ----------
    old_values : float32 ndarray, any shape (read flat)
    source : int64 ndarray, entries in [-1, old_values.size)
    out : float32 ndarray shaped like ``source``, optional (a new one if omitted); not ``old_values``

    Returns
    -------
    out : float32 ndarray shaped like ``source``
    """
    if out is None:
        out = np.zeros(source.shape, dtype=np.float32)
    else:
        out[...] = 0.0
    src = source.reshape(-1)
    kept = src >= 0
    out.reshape(-1)[kept] = old_values.reshape(-1)[src[kept]]
    return out


def count_kept(source: np.ndarray) -> int:
    """How many entries of ``source`` are >= 0 (new entries at a position that was stored before)."""
    return int(np.count_nonzero(source >= 0))


def top_mask(scores: np.ndarray, n: int, ties: np.ndarray | None = None) -> np.ndarray:
    """bool mask of the ``n`` best entries of the 1-D ``scores``: larger score first, then smaller tie.

    The same set as ``rank_order(scores, ties)[:n]`` (:func:`purerigl.dst.topology.rank_order`), found
    by selection in O(size) instead of a sort. float32 scores are ranked by one distinct int64 key
    per entry, ``bits(|s|) * 2^32 + (2^32 - 1 - tie)`` (the rank key of :mod:`purerigl.kernels._rank_key`),
    and the n largest keys are the n best entries: a selection over distinct keys stays O(size) when
    many scores are equal (NumPy's ``partition`` of a float array full of equal values, such as the
    zeros of newly grown weights, was 15x slower). Other scores: the n-th largest score t splits the
    entries into those above t (all chosen) and those equal to t, of which the smallest ``ties`` fill
    the remaining places.

    Parameters
    ----------
    scores : ndarray, shape (size,)
    n : int
    ties : int64 ndarray, shape (size,), distinct, optional
        The tie ranks (smaller first among equal scores); the entries' indices if omitted.
    """
    scores = np.asarray(scores)
    size = scores.size
    mask = np.zeros(size, dtype=bool)
    n = min(int(n), size)
    if n <= 0:
        return mask
    if n == size:
        mask[:] = True
        return mask
    if scores.dtype == np.float32:  # one distinct int64 rank key per entry: no ties left to settle
        rank = np.arange(size, dtype=np.int64) if ties is None else np.asarray(ties, dtype=np.int64)
        keys = (scores.view(np.int32) & np.int32(0x7FFFFFFF)).astype(np.int64) << 32
        keys |= INDEX_MASK - rank  # bits(|s|) * 2^32 + (2^32 - 1 - tie rank), as in _rank_key
        np.greater_equal(keys, np.partition(keys, size - n)[size - n], out=mask)
        return mask
    threshold = np.partition(scores, size - n)[size - n]  # the n-th largest score
    np.greater(scores, threshold, out=mask)
    ties_at = np.flatnonzero(scores == threshold)  # the entries tied at the threshold, by index
    if ties is not None:
        ties_at = ties_at[np.argsort(np.asarray(ties)[ties_at], kind="stable")]
    mask[ties_at[: n - int(mask.sum())]] = True
    return mask


def keep_by_magnitude(W: SparseFormat, n_keep: int, salt: int = 0) -> np.ndarray:
    """Flat positions (int64, sorted ascending) of the ``n_keep`` entries of W with the largest |w|
    layer-wide; equal magnitudes keep the smaller tie rank ``tie_rank(p, salt)``."""
    salt = check_salt(salt)
    flat = flat_positions(W)
    keep = top_mask(np.abs(W.values.ravel()), n_keep, tie_ranks(flat, salt))
    return ascending(flat[keep])


def csr_from_positions(flat: np.ndarray, shape) -> CSR:
    """A CSR structure (values 0) holding the distinct flat positions ``flat`` (``row * n_in + col``,
    in any order: they are sorted here; the cuda version takes them ascending)."""
    n_out, n_in = shape
    flat = ascending(np.asarray(flat, dtype=np.int64))
    rows, cols = np.divmod(flat, n_in)
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_out), out=indptr[1:])
    return CSR(indptr, cols.astype(np.int32), np.zeros(flat.size, dtype=np.float32), shape)


def exclusion_of(flat: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 (n_out+1,), cols int32): a CSR-like set of positions, sorted within each row,
    in the form the growth kernels take for the positions they must not return."""
    S = csr_from_positions(flat, shape)
    return S.indptr, S.indices
