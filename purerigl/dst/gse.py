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

Ties follow the shared rule of :mod:`purerigl.dst.topology`: among equal scores the position of
smaller tie rank ``tie_rank(row * n_in + col, salt)`` ranks higher (is grown first, is kept first).

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
4. Grow the :math:`k_r` candidates of :math:`S_r` of largest :math:`|g|` (ties: the tie rule).
5. Drop the :math:`k_r` entries of row :math:`r` of smallest :math:`|w|` (ties: the tie rule decides
   which are kept).
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

Where it runs
-------------
The rule is written with the layer backend's operations (:data:`~purerigl.kernels.registry.UPDATE_OPS`)
on ``layer.matrix`` and ``layer.saved_batch()``. The
candidates are drawn by the updater's host generator (so a seed gives the same candidates on every
backend); on cuda the distinct pairs go to the device, one membership bit per pair comes back (the
discarding of active pairs: ``in_sorted`` given host positions returns a host mask), the surviving
candidates go in (the one explicit ``to_device`` of the method: the pairs feed both ``grad_at`` and
the ranking, so moving them once beats letting each operation copy them), and the gradient at them,
both selections, the new structure and the remap run on the device. GraBo and GraEst compute their
marginals on the host from a copy of X and dY (float64 sums whose order must match the cpu
backend's for the draws to match); the uniform sampler reads no batch at all. The weights and the
optimizer state never cross.
"""

from __future__ import annotations

import math

import numpy as np

from ..formats._base import ceil_count, sorted_unique
from .base import LayerUpdate, Method, MethodError, format_of, saved_batch_of
from .samplers import Sampler, get_sampler, uniform
from .topology import apply_structure

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
    scores_by_gradient = True
    runs_on_backend = True  # written with backend operations: the structure never leaves the backend
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
            Reads ``layer.matrix`` (CSR or Condensed) and ``layer.saved_batch()`` X (B, n_in), dY
            (B, n_out) through the layer's backend, ``alpha`` in [0, 1] and ``rng`` (the sampler's
            generator); ``optimizer`` goes to the shared step.

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
        M = u.layer.matrix
        fmt = format_of(M)
        if fmt == "csr":
            return self._update_csr(u, M, alpha)
        if fmt == "condensed":
            return self._update_condensed(u, M, alpha)
        raise MethodError(
            f"method 'gse' cannot update a {type(M).__name__} layer; it works on: {', '.join(self.formats)}"
        )

    # ---------------------------------------------------------------------------------------------

    def _update_csr(self, u: LayerUpdate, M, alpha: float) -> dict:
        layer, ops = u.layer, u.layer.backend
        n_out, n_in = layer.shape
        nnz = int(M.values.size)
        n_change = ceil_count(alpha, nnz)
        if n_change == 0:
            return _unchanged(nnz, 0)
        X, dY = _batch(layer)
        active = ops.flat_positions(M)  # ascending: CSR rows ascending, columns sorted within rows
        S = self._candidates(u.rng, layer, n_out, n_in, nnz, active, rows=None)  # host, ascending
        k = min(n_change, S.size)
        if k == 0:
            return _unchanged(nnz, S.size)
        rows, cols = (ops.to_device(a) for a in np.divmod(S, n_in))  # the sampled candidates go in, once
        g = ops.grad_at(X, dY, rows, cols)
        grown = ops.top_k(g, ops.flat_of(rows, cols, n_in), k, u.salt)  # S ascending
        kept = ops.keep_by_magnitude(M, nnz - k, u.salt)  # the k smallest |w| are the ones not kept
        new = ops.csr_from_positions(ops.merge_sorted(kept, grown), layer.shape)
        stats = apply_structure(layer, u.optimizer, new)
        stats["candidates"] = int(S.size)
        return stats

    def _update_condensed(self, u: LayerUpdate, M, alpha: float) -> dict:
        layer, ops = u.layer, u.layer.backend
        n_out, n_in = layer.shape
        R, K = (int(d) for d in M.indices.shape)
        nnz = R * K
        n_change = ceil_count(alpha, K) if R else 0
        if n_change == 0:
            return _unchanged(nnz, 0)
        X, dY = _batch(layer)
        # The sampler sees the compact (R, n_in) sub-layer of the active rows: compact row r is
        # layer row rows[r] (ascending, so compact and layer positions sort alike).
        rows = np.flatnonzero(ops.active_rows(M))  # (R,)
        active = ops.flat_positions(M)  # (nnz,) ascending layer positions
        S = self._candidates(u.rng, layer, R, n_in, nnz, active, rows=rows)  # compact positions
        s_rows, s_cols = np.divmod(S, n_in)
        per_row = np.bincount(s_rows, minlength=R)  # |S_r|
        k_r = np.minimum(n_change, per_row)
        if not k_r.any():
            return _unchanged(nnz, S.size)
        layer_rows, cols = ops.to_device(rows[s_rows]), ops.to_device(s_cols)  # the candidates go in, once
        g = ops.grad_at(X, dY, layer_rows, cols)
        # grow: per row r the k_r candidates of largest |g|; drop: the k_r smallest |w| of row r
        grown = ops.top_k_per_row(g, ops.flat_of(layer_rows, cols, n_in), per_row, k_r, u.salt)
        kept = ops.top_k_per_row(M.values.reshape(-1), active, K, K - k_r, u.salt)
        new = ops.condensed_from_positions(M.rows, ops.merge_sorted(kept, grown), layer.shape)
        stats = apply_structure(layer, u.optimizer, new)
        stats["candidates"] = int(S.size)
        return stats

    # ---------------------------------------------------------------------------------------------

    def _candidates(self, rng, layer, n_out, n_in, nnz, active, rows) -> np.ndarray:
        """Sorted distinct flat positions ``row * n_in + col`` of the sampled pairs not active (host).

        ``active`` (a backend array) holds the ascending flat positions of the layer's entries. The
        sampler draws over an (n_out, n_in) layer: the layer itself (``rows`` None) or the compact
        sub-layer of its active rows ``rows`` (ascending host int64), whose compact positions map to
        layer positions in the same order. The membership test runs on the backend: on cuda the
        distinct pairs go to the device and one bool per pair comes back. GraBo, GraEst and custom
        samplers read the batch on the host (``last_input`` / ``last_output_grad``: a copy of X and
        dY on cuda); the uniform sampler reads nothing.
        """
        ops = layer.backend
        n_samples = ceil_count(self.gamma, nnz)
        X = dY = None
        if self.sampler is not uniform:
            X, dY = layer.last_input, layer.last_output_grad
            if rows is not None and rows.size != layer.shape[0]:
                dY = dY[:, rows]  # (B, R): the active rows' output gradients
        pairs_r, pairs_c = self.sampler(rng, n_out, n_in, n_samples, X, dY)
        pairs_r, pairs_c = _check_pairs(self.sampler_name, pairs_r, pairs_c, n_out, n_in, n_samples)
        S = sorted_unique(pairs_r * n_in + pairs_c)
        if S.size == 0:
            return S
        in_layer = S if rows is None else rows[S // n_in] * n_in + S % n_in
        return S[~ops.in_sorted(in_layer, active)]  # host positions in: a host mask out


# --------------------------------------------------------------------------------------------------
# helpers


def _unchanged(nnz: int, candidates: int) -> dict:
    return {"kept": int(nnz), "grown": 0, "dropped": 0, "candidates": int(candidates)}


def _batch(layer):
    """The layer's last X (B, n_in) and dY (B, n_out) as backend arrays, or a clear error."""
    X, dY = saved_batch_of(layer, "gse")
    n_out, n_in = layer.shape
    fits = len(X.shape) == 2 and len(dY.shape) == 2 and X.shape[0] == dY.shape[0]
    if not (fits and X.shape[1] == n_in and dY.shape[1] == n_out):
        raise MethodError(
            f"gse: the layer's last input {tuple(X.shape)} and output gradient {tuple(dY.shape)} do not "
            f"fit its shape (n_out={n_out}, n_in={n_in})"
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
