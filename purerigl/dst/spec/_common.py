"""What every specification shares: the layer as plain arrays, the dense gradient, ranking, the carry.

Nothing here is a backend operation. Positions are flat indices ``p = row * n_in + col`` (for a
diagonal layer also the offset d of a whole diagonal), read straight from the definitions of the
storage formats (DESIGN.md section 2), and every ranking is one ``np.lexsort``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import PureriglError
from ...formats import CSR, Condensed, Diagonal
from ...kernels._rank_key import tie_ranks

#: Largest dense gradient G (n_out * n_in entries) a specification builds: it is a statement of the
#: rule and an oracle for small layers, never the training path (which streams G).
MAX_DENSE_GRADIENT = 1 << 22


class SpecError(PureriglError, ValueError):
    """A specification was asked for something it does not do (a layer too large, a wrong format)."""


@dataclass
class Step:
    """One layer's update, as plain host arrays.

    Attributes
    ----------
    W : CSR, Condensed or Diagonal
        The layer's structure and weights after the optimizer step (host arrays).
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
        The batch the update scores growth with (the last forward and backward).
    alpha : float
        Drop fraction of this update, in [0, 1].
    salt : int
        The tie rule's salt (:func:`purerigl.dst.topology.tie_salt`).
    budget : int
        The layer's connection budget C.
    rng : numpy Generator, optional
        The updater's generator (random growth, GSE's candidates), in the state the method sees.
    is_output : bool
        The network's last layer (SRigL never ablates it).
    state : dict of str to ndarray
        Optimizer state arrays laid out like ``W.values`` (momentum, Adam's moments).
    G : float ndarray, shape (n_out, n_in), optional
        The dense gradient :math:`G = dY^T X` the update scores, when it is known already (a
        researcher's own gradient, ``purerigl verify-update``): the specifications then rank this G
        instead of building it from X and dY (which may be None). See :func:`step_gradient`.
    """

    W: object
    X: np.ndarray
    dY: np.ndarray
    alpha: float
    salt: int = 0
    budget: int = 0
    rng: np.random.Generator | None = None
    is_output: bool = False
    state: dict = field(default_factory=dict)
    G: np.ndarray | None = None


@dataclass
class Update:
    """What an update produces: the new structure with its values, the remapped state, statistics."""

    W: object
    state: dict
    stats: dict


def positions(W) -> np.ndarray:
    """int64, laid out like ``W.values.ravel()``: the flat position of every stored entry, from the
    format's definition (CSR rows by indptr; Condensed ``rows[r] * n_in + indices[r, t]``; Diagonal
    element t of offset d at ((t + d) mod n_out, t) if n_out >= n_in, else (t, (t + d) mod n_in))."""
    n_out, n_in = W.shape
    if isinstance(W, CSR):
        rows = np.repeat(np.arange(n_out, dtype=np.int64), np.diff(W.indptr))
        return rows * n_in + W.indices.astype(np.int64)
    if isinstance(W, Condensed):
        return (W.rows.astype(np.int64)[:, None] * n_in + W.indices.astype(np.int64)).ravel()
    if isinstance(W, Diagonal):
        d = W.offsets.astype(np.int64)[:, None]  # (K, 1)
        t = np.arange(min(n_out, n_in), dtype=np.int64)[None, :]  # (1, L)
        if n_out >= n_in:
            return ((t + d) % n_out * n_in + t).ravel()
        return (t * n_in + (t + d) % n_in).ravel()
    raise SpecError(f"a specification reads CSR, Condensed or Diagonal host matrices, not {type(W).__name__}")


def dense_gradient(X: np.ndarray, dY: np.ndarray) -> np.ndarray:
    """float64 (n_out, n_in): :math:`G = dY^T X`, refused above :data:`MAX_DENSE_GRADIENT` entries."""
    n_out, n_in = dY.shape[1], X.shape[1]
    if n_out * n_in > MAX_DENSE_GRADIENT:
        raise SpecError(
            f"the specification builds the dense gradient, {n_out} x {n_in} = {n_out * n_in} entries: more "
            f"than its limit of {MAX_DENSE_GRADIENT}; run the method itself (it streams G)"
        )
    return dY.T.astype(np.float64) @ X.astype(np.float64)


def step_gradient(step: Step) -> np.ndarray:
    """float64 (n_out, n_in): the gradient ``step`` scores, ``step.G`` when given, else
    :func:`dense_gradient` of ``step.X`` and ``step.dY``."""
    if step.G is None:
        return dense_gradient(step.X, step.dY)
    G = np.asarray(step.G, dtype=np.float64)
    if G.shape != tuple(step.W.shape):
        raise SpecError(f"the given gradient G has shape {G.shape}, the layer {tuple(step.W.shape)}")
    return G


def scores_of(a: np.ndarray) -> np.ndarray:
    """The float32 magnitudes every rule ranks (computed in float64, rounded once)."""
    return np.abs(np.asarray(a, dtype=np.float64)).astype(np.float32)


def best(scores: np.ndarray, where: np.ndarray, n: int, salt: int) -> np.ndarray:
    """The ``n`` entries of ``where`` (positions) of largest ``scores``, best first; equal scores by
    the smaller tie rank ``tie_rank(position, salt)``."""
    order = np.lexsort((tie_ranks(where, salt), -np.asarray(scores, dtype=np.float64)))
    return np.asarray(where, dtype=np.int64)[order[: max(int(n), 0)]]


def csr_of(flat, shape) -> CSR:
    """A CSR structure (values 0) holding the distinct positions ``flat``."""
    n_out, n_in = shape
    flat = np.sort(np.asarray(flat, dtype=np.int64))
    indptr = np.searchsorted(flat, np.arange(n_out + 1, dtype=np.int64) * n_in).astype(np.int64)
    return CSR(indptr, (flat % n_in).astype(np.int32), np.zeros(flat.size, np.float32), shape)


def condensed_of(rows, flat, shape) -> Condensed:
    """A Condensed structure (values 0): active ``rows`` each holding the same number of ``flat``."""
    rows = np.asarray(sorted(rows), dtype=np.int32)
    flat = np.sort(np.asarray(flat, dtype=np.int64))
    k = flat.size // max(rows.size, 1)
    cols = (flat % shape[1]).astype(np.int32).reshape(rows.size, k)  # (n_active, k)
    return Condensed(rows, cols, np.zeros((rows.size, k), np.float32), shape)


def diagonal_of(offsets, shape) -> Diagonal:
    """A Diagonal structure (values 0) with the given offsets."""
    offsets = np.asarray(sorted(offsets), dtype=np.int32)
    return Diagonal(offsets, np.zeros((offsets.size, min(shape)), np.float32), shape)


def carry(step: Step, new) -> Update:
    """Fill ``new`` (values 0) by the shared value rules (PAPERS.md 1.2) and count the change.

    A position stored before and after keeps its value and optimizer state (also one dropped and
    regrown in the same update); a new one starts at exactly 0 with zero state; a dropped one goes.
    """
    old_pos, new_pos = positions(step.W), positions(new)
    index_of = {int(p): e for e, p in enumerate(old_pos)}
    source = np.array([index_of.get(int(p), -1) for p in new_pos], dtype=np.int64)
    found = source >= 0

    def gather(old):
        out = np.zeros(new.values.size, dtype=np.asarray(old).dtype)
        out[found] = np.asarray(old).ravel()[source[found]]
        return out.reshape(new.values.shape)

    new.values[...] = gather(step.W.values)
    state = {name: gather(array) for name, array in step.state.items()}
    kept = int(found.sum())
    stats = {"kept": kept, "grown": int(new_pos.size) - kept, "dropped": int(old_pos.size) - kept}
    return Update(new, state, stats)


def unchanged(step: Step, **extra) -> Update:
    """The layer as it is (an update that changes nothing), with its statistics."""
    nnz = int(step.W.values.size)
    stats = {"kept": nnz, "grown": 0, "dropped": 0, **extra}
    return Update(step.W.copy(), {k: np.array(v) for k, v in step.state.items()}, stats)
