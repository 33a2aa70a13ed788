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
entry whose position p (flat index ``row * n_in + col``, or a diagonal's offset) has the smaller
**tie rank** :math:`r_s(p)` ranks higher: it is kept before, or grown before, the other. The rank is a
salted permutation of the positions (:mod:`purerigl.kernels._rank_key`); the salt s of an update is
:func:`tie_salt` (seed, update number, layer), so ties favour no position (an all-zero gradient grows
uniformly over the free positions, not into columns 0, 1, 2, ...), change from update to update, and
are the same on every backend and in every run with the same seed.
"""

from __future__ import annotations

import numpy as np

from ..formats import SparseFormat
from ..kernels._rank_key import tie_ranks


def apply_structure(layer, optimizer, new) -> dict:
    """Install ``new``'s structure in ``layer`` (a SparseLinear) following rules 1-3 above.

    ``new.values`` is overwritten: old values where the position existed, exactly 0 elsewhere. The
    optimizer's state for the layer's weight is remapped the same way (``optimizer.remap_state``);
    ``optimizer`` may be None (no state to carry).

    The step runs where the layer's backend computes, through its update operations
    (:data:`purerigl.kernels.registry.UPDATE_OPS`): ``source_of`` matches the new entries to the
    old ones by flat position, ``remap_by_source`` carries the values (and, inside
    ``remap_state``, each optimizer state array). ``new`` is a host format (Condensed, Diagonal,
    CSR) or, on a device backend, a matrix of that backend (what a method computed there); a host
    format given to a device backend is copied there first.

    Returns
    -------
    dict with ``kept`` (positions present before and after), ``grown`` (new positions) and ``dropped``
    (positions removed), as ints. (On a device backend, ``kept`` is the one number that comes back
    to the host.)
    """
    backend = layer.backend
    old = layer.matrix
    if tuple(new.shape) != tuple(old.shape):
        raise ValueError(f"new structure has shape {tuple(new.shape)}, the layer has {tuple(old.shape)}")
    host = new if isinstance(new, SparseFormat) and backend.resident else None  # a host method's choice
    new = backend.to_device(new)  # no copy on a host backend, or for a matrix already there
    source = backend.source_of(old, new)  # shaped like new.values: old flat index or -1
    backend.remap_by_source(old.values, source, out=new.values)
    old_nnz, new_nnz = _nnz(old), _nnz(new)
    layer.set_structure(new, host=host)
    if optimizer is not None:
        optimizer.remap_state(layer.weight, source)
    kept = backend.count_kept(source)
    return {"kept": kept, "grown": int(new_nnz - kept), "dropped": int(old_nnz - kept)}


def _nnz(M) -> int:
    """Stored entries of a host or device matrix (the size of its values)."""
    return int(M.values.size)


def tie_salt(seed: int, update: int, layer: int) -> int:
    """The tie rule's salt of one layer's update: 32 bits of NumPy's ``SeedSequence([seed, update,
    layer])`` (a well-mixed, platform-independent hash of the three numbers).

    Parameters
    ----------
    seed : int >= 0
        The run's seed.
    update : int >= 0
        How many topology updates came before this one (0 for the first).
    layer : int >= 0
        The layer's number among the network's sparse layers.
    """
    state = np.random.SeedSequence([int(seed), int(update), int(layer), 0x7153]).generate_state(1, np.uint32)
    return int(state[0])


def rank_order(scores: np.ndarray, positions: np.ndarray | None = None, salt: int = 0) -> np.ndarray:
    """Indices of ``scores`` (1-D) from best to worst: higher score first; equal scores by the smaller
    tie rank ``tie_rank(positions[e], salt)`` (``positions`` default: the indices)."""
    scores = np.asarray(scores)
    positions = np.arange(scores.size) if positions is None else np.asarray(positions)
    return np.lexsort((tie_ranks(positions, salt), -scores.astype(np.float64)))
