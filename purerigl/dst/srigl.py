"""SRigL: RigL with a constant fan-in per output neuron, and neuron ablation (condensed storage).

Paper: Lasby, Golubeva, Evci, Nica, Ioannou, "Dynamic Sparse Training with Structured Sparsity",
ICLR 2024, arXiv 2305.02299. Official code: calgaryml/condensed-sparsity
(``src/rigl_torch/rigl_constant_fan.py``); PAPERS.md section 3.

The layer is a :class:`~purerigl.formats.Condensed` W of shape (n_out, n_in) whose ``n_active`` active
rows each hold exactly k connections; the other rows are ablated and output only their bias. With the
layer's connection budget C, the drop fraction alpha_t, n = nnz, and the batch just trained on
(X (B, n_in), dY (B, n_out), whose dense weight gradient is :math:`G = dY^T X`, never stored), one
update is:

1. **Counts.** :math:`n_{prune} = \\lfloor \\alpha_t n \\rfloor`, :math:`n_{keep} = n - n_{prune}`.
2. **Neuron ablation** (``gamma_sal > 0``, never on the output layer; :func:`salient_counts`,
   :func:`neurons_to_ablate`). The salient set is the union of the top n_keep |w| over the active
   entries and the top n_prune |G| over **all** n_out * n_in positions; count_r is its size in row r.
   Threshold :math:`\\tau = \\max(1, \\lfloor \\gamma_{sal} K_{ref} \\rfloor)`,
   :math:`K_{ref} = \\lfloor C / n_{out} \\rfloor` (``gamma_sal >= 1``: the absolute count
   :math:`\\lceil \\gamma_{sal} \\rceil`). Floor: with :math:`m = \\lfloor C / n_{in} \\rfloor`, if the
   m-th largest count (0-based) is below tau, tau is lowered to it. Ablated = rows with count < tau;
   the set is recomputed from scratch every update, so an ablated row revives when the gradient half
   of the salient set gives it enough entries. With ablation off, every row is active.
3. **Fan-in** :math:`k = \\lfloor C / n_{active} \\rfloor` (:func:`constant_fan_in`), so
   :math:`nnz = k \\, n_{active} \\le C` with a shortfall below n_active.
4. **Drop, layer-wide**: keep the top n_keep |w| among the active entries of rows that stay active
   (every entry of a newly ablated row is removed).
5. **Trim**: a row holding more than k kept entries keeps only its k largest |w|.
6. **Grow, per row**: an active row with c_r < k kept entries grows the top :math:`k - c_r` of
   :math:`|G_{rj}|` over the columns j it does not keep (just-dropped columns are eligible). The pass
   over G of step 2 (``topk_grad_with_rows``) also keeps each row's top k_old columns over all its
   columns (k_old: the fan-in before the update), and while :math:`k \\le k_{old}` the growth is
   picked from those candidates by their scores: among a row's k_old best columns at most c_r are
   kept, so its top :math:`k - c_r` outside the kept ones are among them. Otherwise (ablation raised
   k, or no ablation) the backend's streamed ``topk_grad_rows`` reads G again. SET on condensed
   storage (:class:`SETCondensed`: steps 1 and 3-7 without ablation, shared through
   :class:`DropAndRegrowCondensed`) draws the columns uniformly at random instead.
7. **Apply** (:func:`~purerigl.dst.topology.apply_structure`): kept and dropped-and-regrown
   connections keep value and optimizer state; new ones start at exactly 0 with zero state; every
   active row is checked to hold exactly k strictly increasing columns.

Ties: equal |w| keep, and equal |G| grow, the position of smaller tie rank
``tie_rank(row * n_in + col, salt)`` (layer-wide and within a row alike; the salt changes with every
update and layer, :mod:`purerigl.dst.topology`). Every backend returns the same sets.

Invariants after every update: every active row holds exactly k strictly increasing columns in
[0, n_in); :math:`k \\, n_{active} \\le C < (k + 1) \\, n_{active}`; at least
:math:`\\lfloor C / n_{in} \\rfloor + 1` rows are active (when n_out allows) and :math:`k \\le n_{in}`;
no output-layer row is ablated; with the ablated set and k unchanged, exactly n_prune connections are
dropped (net of regrowth, as many grown as dropped) and nnz is constant; alpha_t = 0 changes nothing
when the active rows and k stay the same.

purerigl fixes these behaviours of the official code on purpose (PAPERS.md 3.3):

- over-full rows are trimmed **by magnitude** (the official code sorts the boolean row mask, which
  keeps an arbitrary k);
- the **output layer is never ablated** (the official exemption is dead code);
- **structure comes from storage, never values**: active rows and positions are read from
  ``rows`` / ``indices`` (the official code infers them from ``W != 0``, so a zero-sum row or a
  still-zero grown weight vanishes);
- a **broken constant fan-in raises** :class:`~purerigl.dst.base.MethodError` (the official code
  logs a warning);
- **deterministic ties** (above) instead of ``torch.topk``'s unspecified order;
- **streamed growth**: the gradient half of the salient set and the per-row growth read G in tiles
  through the backend (``topk_grad_with_rows``, one pass for both; ``topk_grad_rows`` when the fan-in
  grows) and never store it.

One detail follows PAPERS.md rather than the last official code: the floor uses
:math:`\\lfloor C / n_{in} \\rfloor` rows (the official code rounds up).

Where it runs: every step is written with the layer backend's operations
(:data:`~purerigl.kernels.registry.UPDATE_OPS`) on ``layer.matrix`` and ``layer.saved_batch()``, so on the cuda backend the salient set, the drop,
the trim, the growth selection, the new structure and the remap run on the device. The decisions
that are small host logic stay on the host and read per-row integer vectors (length n_out) that
the operations return on the host (``active_rows``, ``row_counts``): the active rows before the
update, the salient counts (for :func:`neurons_to_ablate`), the kept count per row (for each row's
growth need) and the fan-in check of the result; the active mask, the needs and the new active rows
go back in as host arguments that the operations copy in themselves, so the method's body holds no
data movement. The values, the batch and the optimizer state never cross. SET on condensed
storage's column draw is made by the host generator (the ranks of the chosen columns among each
row's free columns) and turned into positions on the device (``free_positions``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..formats._base import floor_count
from .base import LayerUpdate, Method, MethodError, format_of, saved_batch_of
# the neuron decisions, also reached from here (purerigl.dst.srigl.ablation_threshold, ...)
from .srigl_ablation import ablation_threshold, constant_fan_in, neurons_to_ablate, salient_counts  # noqa: F401
from .topology import apply_structure

# --------------------------------------------------------------------------------------------------
# the grow rules: the columns each active row adds (flat positions, ascending, outside ``kept``)


class GrowthCandidates(NamedTuple):
    """Each row's top ``k_cap`` columns of |G| over all its columns (``topk_grad_with_rows``), found
    in the pass that counted the salient set: row r's columns are ``cols[indptr[r]:indptr[r+1]]``
    (ascending, k_cap of them), their scores ``scores[...]`` (the float32 |G| they were ranked by)."""

    k_cap: int
    indptr: object
    cols: object
    scores: object

    def cover(self, need: np.ndarray, kept_per_row: np.ndarray) -> bool:
        """Whether every row's growth is among its candidates: need[r] <= k_cap - c_r wherever need[r] > 0.

        Row r grows the top need[r] of |G[r, :]| outside its c_r kept columns. Among its k_cap best
        columns at most c_r are kept, so at least k_cap - c_r are not, and those are its best columns
        outside the kept ones (in the same order): the top need[r] is among them when
        need[r] <= k_cap - c_r, that is when the fan-in k = c_r + need[r] did not grow beyond k_cap.
        """
        grows = need > 0
        return bool(np.all(need[grows] <= self.k_cap - kept_per_row[grows]))


def _grow_from_candidates(u: LayerUpdate, kept, need: np.ndarray, candidates: GrowthCandidates):
    """Per row r, the top need[r] of its candidates outside the kept positions, by their scores (ties:
    the tie rule of the flat position, as ``topk_grad_rows``); their flat positions, ascending. The
    same set as :func:`_grow_by_gradient` when ``candidates.cover(need, ...)``, without a second pass
    over G."""
    ops = u.layer.backend
    flat = ops.csr_positions(candidates.indptr, candidates.cols, u.layer.shape[1])  # (n_out * k_cap,) ascending
    n = u.layer.shape[0] * candidates.k_cap
    outside = ops.indicator(ops.compress(ops.arange(n), ops.in_sorted(flat, kept), keep=False), n)
    return ops.top_k_per_row(candidates.scores, flat, candidates.k_cap, need, u.salt, among=outside)


def _grow_by_gradient(u: LayerUpdate, kept, need: np.ndarray, method: str):
    """Per row r, the top need[r] columns of |G[r, :]| outside the kept positions (streamed by the
    backend's ``topk_grad_rows``); their flat positions, ascending."""
    ops = u.layer.backend
    X, dY = saved_batch_of(u.layer, method)
    ex_indptr, ex_cols = ops.exclusion_of(kept, u.layer.shape)
    indptr, cols = ops.topk_grad_rows(X, dY, need, ex_indptr, ex_cols, u.salt)
    return ops.csr_positions(indptr, cols, u.layer.shape[1])


def _grow_at_random(u: LayerUpdate, kept, need: np.ndarray, kept_per_row: np.ndarray):
    """Per row r (ascending), need[r] distinct columns drawn uniformly among the n_in - c_r it does
    not keep; their flat positions, ascending.

    The updater's host generator draws, per row, which of the row's free columns to take (their
    ranks among the free columns, ``rng.choice(n_free, need, replace=False)``: the very draws of
    ``rng.choice(free_columns, ...)``); the backend's ``free_positions`` turns ranks into positions
    where the structure lives.
    """
    n_in = u.layer.shape[1]
    rows, ranks = [], []
    for r in np.flatnonzero(need):
        chosen = np.sort(u.rng.choice(n_in - int(kept_per_row[r]), size=int(need[r]), replace=False))
        rows.append(np.full(chosen.size, r, dtype=np.int64))
        ranks.append(chosen.astype(np.int64))
    return u.layer.backend.free_positions(kept, u.layer.shape, np.concatenate(rows), np.concatenate(ranks))


# --------------------------------------------------------------------------------------------------
# the methods


class DropAndRegrowCondensed(Method):
    """What SRigL and SET on condensed storage share: every active row holds exactly k connections.

    One update (module docstring): drop the smallest |w| layer-wide among the rows that stay active,
    trim a row that keeps more than k to its k largest |w|, refill every active row that keeps fewer
    to k with the subclass's grow rule (:meth:`_grow`), and apply. Which rows stay active is
    :meth:`_active_rows` (here: all of them; SRigL ablates neurons).
    """

    formats = ("condensed",)
    runs_on_backend = True  # written with backend operations: the weights never leave the backend

    def _active_rows(self, u: LayerUpdate, n_keep: int, n_prune: int):
        """(active, candidates): bool (n_out,), the rows that hold k connections after the update (here
        every row), and the growth candidates found on the way (:class:`GrowthCandidates`, or None)."""
        return np.ones(u.layer.shape[0], dtype=bool), None

    def _grow(self, u: LayerUpdate, kept, need: np.ndarray, kept_per_row: np.ndarray, candidates):  # pragma: no cover
        """Per row r, need[r] columns outside ``kept`` (some need[r] > 0); their flat positions, ascending.
        ``candidates``: what :meth:`_active_rows` found, or None."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------

    def update(self, u: LayerUpdate) -> dict:
        """One update of ``u.layer`` (module docstring, steps 1-7; step 2 only in SRigL).

        Nothing changes (the layer keeps its very arrays) when n_prune = 0, the active rows are the
        same and the budget gives the current k; with n_prune = 0 but a new active set or k (a row
        ablated or revived, a budget that no longer fits), rows are trimmed or refilled as usual.

        Returns
        -------
        dict
            ``kept`` / ``grown`` / ``dropped`` (net, from ``apply_structure``: a dropped-and-regrown
            connection counts as kept), ``regrown`` (of those, how many were dropped and regrown),
            ``n_prune``, ``k``, ``active_rows`` and ``ablated`` (n_out - active rows).

        Raises
        ------
        MethodError
            If W is not Condensed, alpha is outside [0, 1], the batch is missing when the gradient is
            needed, the budget gives k = 0 or k > n_in, or a backend breaks the constant fan-in.
        """
        M = u.layer.matrix
        if format_of(M) != "condensed":
            raise MethodError(f"{self.name} works on Condensed storage, the layer holds {type(M).__name__}")
        alpha = float(u.alpha)
        if not 0.0 <= alpha <= 1.0:
            raise MethodError(f"drop fraction alpha must be in [0, 1], got {u.alpha!r}")
        ops = u.layer.backend
        n_out, n_in = u.layer.shape
        budget = int(u.budget)

        # 1. counts
        n = int(M.values.size)
        n_prune = floor_count(alpha, n)
        n_keep = n - n_prune

        # 2. ablation (SRigL: recomputed from scratch), 3. fan-in
        was_active = ops.active_rows(M)
        active, candidates = self._active_rows(u, n_keep, n_prune)
        n_active = int(active.sum())
        k = constant_fan_in(budget, n_active, n_in)
        k_old = int(M.indices.shape[1]) if n else 0
        stats_tail = {"n_prune": int(n_prune), "k": k, "active_rows": n_active, "ablated": n_out - n_active}
        if n_prune == 0 and k == k_old and np.array_equal(active, was_active):
            return {"kept": n, "grown": 0, "dropped": 0, "regrown": 0, **stats_tail}

        # 4.-6. drop, trim, grow; 7. apply
        new, regrown = self._new_structure(u, active, k, n_keep, candidates)
        stats = apply_structure(u.layer, u.optimizer, new)
        return {**stats, "regrown": regrown, **stats_tail}

    def _new_structure(self, u: LayerUpdate, active: np.ndarray, k: int, n_keep: int, candidates=None):
        """Steps 4-6: the new structure (values zero) and how many dropped entries were regrown.

        Entries are handled by flat position ``row * n_in + col``, ascending (the storage order of a
        Condensed matrix), on the layer's backend.
        """
        layer, ops = u.layer, u.layer.backend
        M = layer.matrix
        shape = layer.shape
        n_in = shape[1]
        k_old = int(M.indices.shape[1])  # every stored row holds k_old entries
        flat = ops.flat_positions(M)  # (stored rows * k_old,) ascending
        values = M.values.reshape(-1)

        # 4. drop layer-wide: the n_keep largest |w| among the entries of rows that stay active
        stays = None if active.all() else ops.in_rows(flat, active, n_in)
        kept = ops.top_k(values, flat, n_keep, u.salt, among=stays)
        # 5. trim: a row keeping more than k entries keeps its k largest |w| (ties: the tie rule)
        if k < k_old:
            kept = ops.top_k_per_row(values, flat, k_old, k, u.salt, among=ops.in_sorted(flat, kept))

        # 6. grow per row: an active row keeping c_r < k entries grows k - c_r
        kept_per_row = ops.row_counts(kept, shape)
        need = np.where(active, k - kept_per_row, 0).astype(np.int64)
        positions, regrown = kept, 0
        if need.any():
            grown = self._grow(u, kept, need, kept_per_row, candidates)
            regrown = ops.count_true(ops.in_sorted(grown, flat))  # grown is outside kept: in flat = dropped
            positions = ops.merge_sorted(kept, grown)

        # 7. the new structure, checked: exactly k columns in every active row, none elsewhere
        fan = ops.row_counts(positions, shape)
        want = np.where(active, k, 0)
        if np.any(fan != want):
            bad = int(np.flatnonzero(fan != want)[0])
            raise MethodError(
                f"constant fan-in broken: row {bad} would hold {fan[bad]} connections, expected "
                f"{want[bad]} (growth of backend {ops.name!r})"
            )
        return ops.condensed_from_positions(np.flatnonzero(active), positions, shape), int(regrown)


class SRigL(DropAndRegrowCondensed):
    """SRigL on condensed storage: layer-wide magnitude drop, per-row trim, per-row gradient growth,
    neuron ablation (see the module docstring for the rule).

    Parameters
    ----------
    gamma_sal : float
        Minimum salient fraction of the reference fan-in a neuron needs to stay active (0.3 in the
        paper's CNN runs, 0.95 for ViT); ``>= 1`` is an absolute count; 0 disables ablation.
    """

    name = "srigl"
    scores_by_gradient = True

    def __init__(self, gamma_sal: float = 0.3):
        if isinstance(gamma_sal, bool) or not isinstance(gamma_sal, (int, float, np.integer, np.floating)):
            raise MethodError(f"gamma_sal must be a real number >= 0, got {gamma_sal!r}")
        if not math.isfinite(gamma_sal) or gamma_sal < 0:
            raise MethodError(f"gamma_sal must be a finite number >= 0, got {gamma_sal!r}")
        self.gamma_sal = float(gamma_sal)

    def __repr__(self) -> str:
        return f"SRigL(gamma_sal={self.gamma_sal})"

    def _active_rows(self, u: LayerUpdate, n_keep: int, n_prune: int):
        """Step 2: the rows that are not ablated (all of them with ``gamma_sal = 0`` or on the output
        layer), from the salient counts of the current weights and the batch's gradient.

        The one pass over G that finds the gradient half of the salient set (``topk_grad_with_rows``)
        also keeps each row's top k_cap columns, k_cap the current fan-in: step 6's growth when k does
        not grow (:meth:`GrowthCandidates.cover`), so G is read once per update instead of twice.
        """
        if self.gamma_sal == 0 or u.is_output:
            return super()._active_rows(u, n_keep, n_prune)
        ops, M = u.layer.backend, u.layer.matrix
        X, dY = saved_batch_of(u.layer, self.name)
        grad_top, candidates = None, None
        k_cap = int(M.indices.shape[1]) if M.values.size else 0
        if n_prune > 0 and k_cap > 0:
            counts = np.full(u.layer.shape[0], k_cap, dtype=np.int64)
            g_rows, g_cols, indptr, cols, scores = ops.topk_grad_with_rows(X, dY, int(n_prune), counts, u.salt)
            grad_top, candidates = (g_rows, g_cols), GrowthCandidates(k_cap, indptr, cols, scores)
        counts = salient_counts(M, X, dY, n_keep, n_prune, ops, u.salt, grad_top=grad_top)
        return ~neurons_to_ablate(counts, int(u.budget), u.layer.shape[1], self.gamma_sal), candidates

    def _grow(self, u: LayerUpdate, kept, need: np.ndarray, kept_per_row: np.ndarray, candidates):
        if candidates is not None and candidates.cover(need, kept_per_row):
            return _grow_from_candidates(u, kept, need, candidates)
        return _grow_by_gradient(u, kept, need, self.name)


class SETCondensed(DropAndRegrowCondensed):
    """SET on condensed storage: SRigL's drop and per-row refill with **random** growth, no ablation.

    Every row keeps exactly k: the layer-wide magnitude drop removes n_prune entries (ties: the
    tie rule), and each row regrows as many uniformly random columns, among those it does
    not keep (just-dropped ones eligible), as it lost, drawn from the updater's generator, rows in
    ascending order. No gradient is read. Unlike the paper's SET (PAPERS.md 6) the drop is one
    magnitude ranking rather than separate fractions of the positive and negative weights, and new
    weights start at 0 (the shared step); the CSR variant is :class:`purerigl.dst.set_method.SET`.
    """

    name = "set"

    def __repr__(self) -> str:
        return "SETCondensed()"

    def _grow(self, u: LayerUpdate, kept, need: np.ndarray, kept_per_row: np.ndarray, candidates):
        return _grow_at_random(u, kept, need, kept_per_row)
