r"""GSE, Guided Stochastic Exploration: grow the best of a *sampled* set of inactive connections.

Paper: M. Heddes, N. Srinivasa, T. Givargis, A. Nicolau, "Always-Sparse Training by Growing
Connections with Guided Stochastic Exploration", arXiv 2401.06898 (supplementary Algorithm 2;
official code ``mikeheddes/guided-stochastic-exploration``). See PAPERS.md section 5.

RigL scores every inactive position with the dense gradient :math:`G = dY^T X`, an
O(B n_out n_in) computation. GSE scores only a random sample of about :math:`\gamma |A|` positions,
drawn from a product distribution :math:`f_{out}(i) f_{in}(j)` (:mod:`purerigl.dst.samplers`), so an
update costs O(B (n_in + n_out + \gamma |A|)): linear in the layer's width. The candidate gradient is

.. math:: g(i, j) = \sum_b dY_{bi} X_{bj}

computed pair by pair (``backend.grad_at``) from the batch just trained on.

One update of one CSR layer (:math:`A` = active set, :math:`\alpha` = the scheduled drop fraction):

1. Draw :math:`\lceil \gamma |A| \rceil` pairs from the sampler (with replacement; duplicates
   collapse) and discard the pairs in :math:`A`. What is left is the candidate set :math:`S`, all
   inactive **before** the update, with :math:`|S| \le \lceil \gamma |A| \rceil`.
2. Compute :math:`g(i, j)` for :math:`(i, j) \in S` only.
3. :math:`k = \min(\lceil \alpha |A| \rceil, |S|)`; with :math:`k = 0` nothing changes.
4. Grow the :math:`k` candidates of largest :math:`|g|`.
5. Drop the :math:`k` pre-update actives of smallest :math:`|w|`. Grown connections were not
   active, so they can never be dropped in the same update.
6. :math:`A \leftarrow (A \setminus \text{dropped}) \cup \text{grown}`, so :math:`|A|` is unchanged;
   the shared step (:func:`purerigl.dst.topology.apply_structure`) installs it: kept connections keep
   value and optimizer state bit for bit, new ones start at exactly 0 with zero state.

Ties follow the shared rule of :mod:`purerigl.dst.topology`: among equal scores the lower flat
position ``row * n_in + col`` ranks higher (is grown first, is kept first).

Invariants (PAPERS.md section 7, 24-26): :math:`S \cap A = \emptyset`;
:math:`|S| \le \lceil \gamma |A| \rceil`; :math:`k = \min(\lceil \alpha |A| \rceil, |S|)`; :math:`|A|`
unchanged; the dropped set is the :math:`k` smallest :math:`|w|` of the pre-update actives; grown
connections are never dropped in the same update. With a sampler that returns every position, GSE
equals RigL *restricted to growing positions inactive before the update* (RigL may regrow a
just-dropped position; GSE never does) with the count :math:`\lceil\cdot\rceil` instead of RigL's
:math:`\lfloor\cdot\rfloor`.

Condensed (constant fan-in) layers: a purerigl variant
------------------------------------------------------
The paper has no constant fan-in version; purerigl applies the rule row by row so that every active
row keeps exactly its fan-in :math:`K` (ablated rows stay ablated). With :math:`R` active rows,
:math:`|A| = R K`:

1. Draw :math:`\lceil \gamma R K \rceil` pairs over the **active rows only** (the sampler sees the
   ``R x n_in`` sub-layer; for GraBo/GraEst its :math:`f_{out}` is built from dY's active columns),
   de-duplicate, discard actives. :math:`S_r` is the set of candidates in row :math:`r`.
2. Compute :math:`g` on :math:`S = \bigcup_r S_r`.
3. For every active row :math:`r`: :math:`k_r = \min(\lceil \alpha K \rceil, |S_r|)`.
4. Grow the :math:`k_r` candidates of :math:`S_r` of largest :math:`|g|` (lower column first on ties).
5. Drop the :math:`k_r` entries of row :math:`r` of smallest :math:`|w|` (on ties the higher column
   is dropped first, i.e. the lower column is kept).
6. Row :math:`r` keeps :math:`K - k_r + k_r = K` entries; :math:`|A|` is unchanged.

Where purerigl differs from the paper and the official code
-----------------------------------------------------------
- **Per layer**: the official code defaults to ``scope="global"`` (one top-k over all layers, which
  lets the layers' densities drift); purerigl, like the supplementary pseudocode, decides per layer.
- **Zero initialisation** of grown weights with zero optimizer state, as the official code does
  (``reset_momentum``); also true of every purerigl method via the shared step.
- **Truly sparse**: the official code simulates GSE densely (all masks set to 1, full autograd, scores
  of -inf outside the sample); purerigl never forms G or any (n_out, n_in) array: memory is
  O(nnz + n_in + n_out + \gamma nnz).
- The official code counts :math:`|A|` from nonzero weights and treats layers of sparsity <= 0.5 as
  RigL (all inactive positions are candidates); purerigl reads :math:`|A|` from the storage and always
  samples.
- GraEst signs are independent draws from the generator, not the official 4-wise independent hash.
"""

from __future__ import annotations

import math

import numpy as np

from ..formats import CSR, Condensed
from ..formats._base import ceil_count, sorted_unique
from .base import LayerUpdate, Method, MethodError
from .samplers import Sampler, get_sampler
from .topology import apply_structure, csr_from_flat, flat_positions, top_mask

__all__ = ["GSE"]


class GSE(Method):
    r"""Guided Stochastic Exploration (Heddes et al. 2024), on CSR and condensed layers.

    Parameters
    ----------
    gamma : float
        Sampling factor :math:`\gamma > 0`: each update draws :math:`\lceil \gamma |A| \rceil` candidate
        pairs (before de-duplication and removal of actives). Default 1.0, the paper's default.
    sampler : str or callable
        ``"uniform"`` (default), ``"grabo"`` or ``"graest"`` (:data:`purerigl.dst.samplers.SAMPLERS`),
        or any callable ``sampler(rng, n_out, n_in, n_samples, X, dY) -> (rows, cols)`` returning at
        most ``n_samples`` integer pairs in bounds (duplicates are tolerated and collapsed). A
        callable is the hook the tests use to make the candidate set cover every position.

    Notes
    -----
    CSR: with :math:`S` the candidates (inactive before the update) and
    :math:`k = \min(\lceil \alpha |A| \rceil, |S|)`,

    .. math::

        A' = \big(A \setminus \operatorname{bottom}_k(|w|, A)\big)
             \cup \operatorname{top}_k(|g|, S), \qquad |A'| = |A|.

    Condensed: the same per active row with :math:`k_r = \min(\lceil \alpha K \rceil, |S_r|)`
    (module docstring), so every active row keeps exactly :math:`K` entries.
    """

    name = "gse"
    resident = False  # reads host arrays: the updater refreshes them from the device first
    formats = ("csr", "condensed")

    def __init__(self, gamma: float = 1.0, sampler: str | Sampler = "uniform"):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)):
            raise MethodError(f"gse: gamma must be a real number > 0, got {gamma!r}")
        gamma = float(gamma)
        if not (math.isfinite(gamma) and gamma > 0.0):
            raise MethodError(f"gse: gamma must be a finite number > 0, got {gamma!r}")
        self.gamma = gamma
        self.sampler = get_sampler(sampler)
        if isinstance(sampler, str):
            self.sampler_name = sampler.strip().lower()
        else:
            self.sampler_name = getattr(sampler, "__name__", repr(sampler))

    def __repr__(self) -> str:
        return f"GSE(gamma={self.gamma}, sampler={self.sampler_name!r})"

    # ---------------------------------------------------------------------------------------------

    def update(self, u: LayerUpdate) -> dict:
        """Apply one GSE update to ``u.layer``.

        Parameters
        ----------
        u : LayerUpdate
            Reads ``layer.W`` (CSR or Condensed), ``layer.last_input`` X (B, n_in),
            ``layer.last_output_grad`` dY (B, n_out), ``layer.backend.grad_at``, ``alpha`` in [0, 1]
            and ``rng`` (the sampler's generator); ``optimizer`` goes to the shared step.

        Returns
        -------
        dict
            ``kept``, ``grown``, ``dropped`` (ints, from the shared step) and ``candidates`` = |S|,
            the number of sampled inactive positions whose gradient was computed (0 when the update
            changes nothing by count alone, i.e. :math:`\\lceil \\alpha \\cdot \\rceil = 0`).
        """
        alpha = float(u.alpha)
        if not (0.0 <= alpha <= 1.0):
            raise MethodError(f"gse: alpha must be in [0, 1], got {u.alpha!r}")
        W = u.layer.W
        if isinstance(W, CSR):
            return self._update_csr(u, W, alpha)
        if isinstance(W, Condensed):
            return self._update_condensed(u, W, alpha)
        raise MethodError(
            f"method 'gse' cannot update a {type(W).__name__} layer; it works on: {', '.join(self.formats)}"
        )

    # ---------------------------------------------------------------------------------------------

    def _update_csr(self, u: LayerUpdate, W: CSR, alpha: float) -> dict:
        nnz = W.nnz
        n_change = ceil_count(alpha * nnz)
        if n_change == 0:
            return _unchanged(nnz, 0)
        X, dY = _batch(u.layer, W)
        active = flat_positions(W)  # sorted: CSR rows ascending, columns sorted within rows
        S = self._candidates(u.rng, W.n_out, W.n_in, nnz, X, dY, active)
        k = min(n_change, S.size)
        if k == 0:
            return _unchanged(nnz, S.size)
        rows, cols = np.divmod(S, W.n_in)
        g = u.layer.backend.grad_at(X, dY, rows, cols)
        grow = top_mask(np.abs(g), k)  # S is sorted by flat position: the shared tie rule applies
        keep = top_mask(np.abs(W.values), nnz - k)  # the k smallest |w| are the ones not kept
        new = csr_from_flat(np.concatenate([active[keep], S[grow]]), W.shape)
        stats = apply_structure(u.layer, u.optimizer, new)
        stats["candidates"] = int(S.size)
        return stats

    def _update_condensed(self, u: LayerUpdate, W: Condensed, alpha: float) -> dict:
        R, K, n_in = W.n_active, W.k, W.n_in
        nnz = W.nnz
        n_change = ceil_count(alpha * K) if R else 0
        if n_change == 0:
            return _unchanged(nnz, 0)
        X, dY = _batch(u.layer, W)
        # Work in the compact (R, n_in) sub-layer of the active rows: compact row r is W.rows[r].
        dY_active = dY if R == W.n_out else dY[:, W.rows]
        compact_rows = np.arange(R, dtype=np.int64)
        active = (compact_rows[:, None] * n_in + W.indices).ravel()  # sorted, like W.values.ravel()
        S = self._candidates(u.rng, R, n_in, nnz, X, dY_active, active)
        s_rows, s_cols = np.divmod(S, n_in)
        k_r = np.minimum(n_change, np.bincount(s_rows, minlength=R))
        if not k_r.any():
            return _unchanged(nnz, S.size)
        g = u.layer.backend.grad_at(X, dY, W.rows.astype(np.int64)[s_rows], s_cols)
        grow = _top_per_group(s_rows, np.abs(g), k_r)
        keep = _row_ranks(np.abs(W.values)) < (K - k_r)[:, None]
        new_flat = np.sort(np.concatenate([active[keep.ravel()], S[grow]]))
        new_cols = (new_flat % n_in).reshape(R, K).astype(np.int32)
        new = Condensed(W.rows.copy(), new_cols, np.zeros((R, K), dtype=np.float32), W.shape)
        stats = apply_structure(u.layer, u.optimizer, new)
        stats["candidates"] = int(S.size)
        return stats

    # ---------------------------------------------------------------------------------------------

    def _candidates(self, rng, n_out, n_in, nnz, X, dY, active) -> np.ndarray:
        """Sorted distinct flat positions ``row * n_in + col`` of the sampled pairs not in ``active``.

        ``active`` holds the sorted flat positions of the current entries in the same row numbering.
        """
        n_samples = ceil_count(self.gamma * nnz)
        rows, cols = self.sampler(rng, n_out, n_in, n_samples, X, dY)
        rows, cols = _check_pairs(self.sampler_name, rows, cols, n_out, n_in, n_samples)
        S = sorted_unique(rows * n_in + cols)
        if active.size and S.size:
            at = np.minimum(np.searchsorted(active, S), active.size - 1)
            S = S[active[at] != S]
        return S


# --------------------------------------------------------------------------------------------------
# helpers


def _unchanged(nnz: int, candidates: int) -> dict:
    return {"kept": int(nnz), "grown": 0, "dropped": 0, "candidates": int(candidates)}


def _batch(layer, W) -> tuple[np.ndarray, np.ndarray]:
    """The layer's last X (B, n_in) and dY (B, n_out), or a clear error."""
    X, dY = layer.last_input, layer.last_output_grad
    if X is None or dY is None:
        raise MethodError(
            "gse needs the layer's last input and output gradient: run a forward and a backward "
            "pass on the layer before updating its topology"
        )
    fits = X.ndim == 2 and dY.ndim == 2 and X.shape[0] == dY.shape[0]
    if not (fits and X.shape[1] == W.n_in and dY.shape[1] == W.n_out):
        raise MethodError(
            f"gse: the layer's last input {X.shape} and output gradient {dY.shape} do not fit its "
            f"shape (n_out={W.n_out}, n_in={W.n_in})"
        )
    return X, dY


def _check_pairs(name, rows, cols, n_out, n_in, n_samples) -> tuple[np.ndarray, np.ndarray]:
    """A sampler's output as int64 arrays, or a MethodError naming what is wrong."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    for what, a in (("rows", rows), ("cols", cols)):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise MethodError(
                f"gse sampler {name!r} must return 1-D integer arrays; {what} is {a.dtype} {a.shape}"
            )
    if rows.shape != cols.shape:
        raise MethodError(f"gse sampler {name!r} returned {rows.size} rows but {cols.size} cols")
    if rows.size > n_samples:
        raise MethodError(f"gse sampler {name!r} returned {rows.size} pairs, more than n_samples={n_samples}")
    for what, a, upper in (("rows", rows, n_out), ("cols", cols, n_in)):
        if a.size and (a.min() < 0 or a.max() >= upper):
            raise MethodError(f"gse sampler {name!r} returned {what} outside [0, {upper})")
    return rows.astype(np.int64), cols.astype(np.int64)


def _top_per_group(groups: np.ndarray, scores: np.ndarray, n_per_group: np.ndarray) -> np.ndarray:
    """bool mask: in each group ``q``, the ``n_per_group[q]`` best entries under the shared tie rule.

    ``groups`` (m,) must be non-decreasing (entries sorted by flat position, so grouped by row);
    higher score first, lower index first on ties, as :func:`purerigl.dst.topology.rank_order`.
    """
    m = scores.size
    order = np.lexsort((np.arange(m), -scores.astype(np.float64), groups))
    counts = np.bincount(groups, minlength=n_per_group.size)
    starts = np.cumsum(counts) - counts
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m) - starts[groups[order]]
    return rank < n_per_group[groups]


def _row_ranks(scores: np.ndarray) -> np.ndarray:
    """int64 like ``scores`` (R, K): each entry's rank within its row, best (highest) first, lower
    column first on ties (a stable sort of the negated scores)."""
    order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")
    ranks = np.empty(scores.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(scores.shape[1]), scores.shape), axis=1)
    return ranks
