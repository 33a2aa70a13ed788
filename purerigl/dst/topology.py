"""The one topology-change step every DST method shares, and the selection rules they build on.

A method decides *which* connections a layer has after an update; :func:`apply_structure` installs
that structure and applies the value and optimizer-state rules of PAPERS.md 1.2:

1. a connection present before and after keeps its value and optimizer state, **including one that
   the method dropped and regrew in the same update** (it is not new);
2. a connection present only after the update (new) starts at value exactly 0 with zero state;
3. a connection present only before (dropped) is removed together with its state.

Positions are matched by their flat index ``row * n_in + col``, so the rule holds for every format
and even across formats. Nothing dense is allocated: the cost is O(nnz log nnz).

Tie rule shared by all selections (so every backend picks the same sets): among equal scores the
entry with the **lower index** (flat position for layer-wide choices, column within a row) ranks
higher: it is kept before, or grown before, an equal-scored entry with a higher index.
"""

from __future__ import annotations

import numpy as np

from ..formats import CSR, SparseFormat
from ..kernels.reference import triples


def flat_positions(W: SparseFormat) -> np.ndarray:
    """int64 (nnz,): ``row * n_in + col`` of every stored entry, in the order of ``W.values.ravel()``."""
    rows, cols, _ = triples(W)
    return rows * W.n_in + cols


def source_of(old: SparseFormat, new: SparseFormat) -> np.ndarray:
    """int64 shaped like ``new.values``: for each new entry, the flat index of the same position in
    ``old.values``, or -1 if the position was not stored in ``old``."""
    old_flat = flat_positions(old)
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


def apply_structure(layer, optimizer, new: SparseFormat) -> dict:
    """Install ``new``'s structure in ``layer`` (a SparseLinear) following rules 1-3 above.

    ``new.values`` is overwritten: old values where the position existed, exactly 0 elsewhere. The
    optimizer's state for the layer's weight is remapped the same way (``optimizer.remap_state``);
    ``optimizer`` may be None (no state to carry).

    Returns
    -------
    dict with ``kept`` (positions present before and after), ``grown`` (new positions) and ``dropped``
    (positions removed), as ints.
    """
    old = layer.W
    if new.shape != old.shape:
        raise ValueError(f"new structure has shape {new.shape}, the layer has {old.shape}")
    source = source_of(old, new)
    present = source >= 0
    new_values = np.zeros(new.values.shape, dtype=np.float32)
    new_values[present] = old.values.ravel()[source[present]]
    new.values[...] = new_values
    layer.set_structure(new)
    if optimizer is not None:
        optimizer.remap_state(layer.weight, source)
    kept = int(present.sum())
    return {"kept": kept, "grown": int(new.nnz - kept), "dropped": int(old.nnz - kept)}


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` (1-D) from best to worst: higher score first, lower index first on ties."""
    scores = np.asarray(scores)
    return np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))


def top_mask(scores: np.ndarray, n: int) -> np.ndarray:
    """bool mask of the ``n`` best entries of the 1-D ``scores`` under the shared tie rule.

    The same set as ``rank_order(scores)[:n]``, found by selection in O(size) instead of a sort: the
    n-th largest score t splits the entries into those above t (all chosen) and those equal to t, of
    which the lowest indices fill the remaining places.
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
    threshold = np.partition(scores, size - n)[size - n]  # the n-th largest score
    np.greater(scores, threshold, out=mask)
    ties = np.flatnonzero(scores == threshold)  # ascending index: the tie rule's order
    mask[ties[: n - int(mask.sum())]] = True
    return mask


def csr_from_flat(flat: np.ndarray, shape) -> CSR:
    """A CSR structure (values zero) holding the given distinct flat positions ``row * n_in + col``."""
    n_out, n_in = shape
    flat = np.sort(np.asarray(flat, dtype=np.int64))
    rows, cols = np.divmod(flat, n_in)
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_out), out=indptr[1:])
    return CSR(indptr, cols.astype(np.int32), np.zeros(flat.size, dtype=np.float32), shape)


def exclusion_of(flat: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 (n_out+1,), cols int32): a CSR-like set of positions, sorted within each row,
    in the form the growth kernels take for the positions they must not return."""
    S = csr_from_flat(flat, shape)
    return S.indptr, S.indices
