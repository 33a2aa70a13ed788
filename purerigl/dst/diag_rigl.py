"""diag-rigl: RigL over whole wrap-around diagonals (diagonal storage), always sparse.

The diagonal format is the one of Tyagi, Iyer, Renninger, Kanan, Zhu, "Dynamic Sparse Training of
Diagonally Sparse Networks", ICML 2025, arXiv 2506.11449; the rule below is not that paper's method
(which learns gated diagonal importances: :mod:`purerigl.dst.dynadiag`) but RigL restricted to whole
diagonals (PAPERS.md 4.4), close to the paper's "DiagHeur" baseline. It was purerigl's
``--method dynadiag`` before the paper's method existed here.

A layer W (n_out, n_in) stores K of its :math:`P = \\max(n_{out}, n_{in})` diagonals, each of length
:math:`L = \\min(n_{out}, n_{in})` (:class:`~purerigl.formats.Diagonal`). One update of one layer with
drop fraction :math:`\\alpha_t` replaces q diagonals (:func:`swap_count`),

.. math:: q = \\min\\big(K, \\max(1, \\lfloor \\alpha_t K \\rfloor)\\big) \\text{ while } \\alpha_t > 0,
          \\qquad q = 0 \\text{ when } \\alpha_t = 0:

at least one diagonal while the schedule's drop fraction is above 0. A plain
:math:`\\lfloor \\alpha_t K \\rfloor` would be 0 for every layer with :math:`K < 1 / \\alpha_t` (K <= 3 at
the default alpha 0.3), and such layers would never change at all: at 99% with uniform budgets, the
100 x 300 and 10 x 100 layers of the 784-300-100-10 MLP (K = 3 and K = 1).

1. **Drop**: score every active diagonal k by the L2 norm of its values,
   :math:`\\lVert V_k \\rVert_2 = \\sqrt{\\sum_t V_{k,t}^2}`; keep the K - q highest.
2. **Grow**: score every offset d in [0, P) by the L2 norm of the dense gradient along it,

   .. math:: S_d = \\sqrt{\\sum_{t=0}^{L-1} G_{\\mathrm{row}(d,t),\\,\\mathrm{col}(d,t)}^2},
             \\qquad G = dY^T X,

   computed by the backend's ``diag_grad_norms(X, dY)`` from the batch just trained on (streamed:
   O(B N) work, O(P) memory, G never stored). Among the offsets **not kept** (the just-dropped ones
   are eligible) take the q with the largest :math:`S_d`.
3. **Apply** (:func:`purerigl.dst.topology.apply_structure`, PAPERS.md 1.2): the new offsets are
   kept ∪ grown, sorted ascending; a kept diagonal keeps its values and optimizer state, a newly
   grown one starts at exactly 0 with zero state, and a diagonal dropped and regrown in the same
   update is not new: it keeps its old values and state.

Both steps rank float32 scores: the value norms are summed in float64 and rounded once to float32
(the backend's ``row_norms``), the gradient norms come as float32 from ``diag_grad_norms``. Ties
(equal scores in step 1 or in step 2): the offset of smaller tie rank ``tie_rank(d, salt)`` ranks
higher, on every backend (the shared rule of :mod:`purerigl.dst.topology`).

Where it runs: the rule is written with the layer backend's operations
(:data:`purerigl.kernels.registry.UPDATE_OPS`) on ``layer.matrix`` and
``layer.saved_batch()``, so on the cuda backend the whole update runs on the device: the norms, the
two selections, the new offsets and the remap; only the ``kept`` count, the sizes of two
compactions and a few small index arrays (none larger than P) cross to the host.

Invariants after every update: K unchanged (so nnz = K L and density K / P); offsets strictly
increasing in [0, P); the q dropped diagonals have the smallest norms, the q grown the largest
:math:`S_d` among the offsets inactive after the drop; new diagonals hold exact zeros with zero
optimizer state; while :math:`\\alpha_t > 0` at least one diagonal is dropped (q >= 1; it may be
regrown at once if its gradient norm ranks among the q best); :math:`\\alpha_t = 0` (q = 0) leaves
the layer untouched.

How it differs from the paper's method (:mod:`purerigl.dst.dynadiag`, PAPERS.md 4.3): no gate
parameters and no temperature; only the K active diagonals are ever stored, and the set changes by
this drop/grow rule every :math:`\\Delta T` steps instead of by learned importances.
"""

from __future__ import annotations

import numpy as np

from ..formats import Diagonal
from ..formats._base import floor_count
from .base import LayerUpdate, Method, MethodError, format_of, saved_batch_of
from .topology import apply_structure

__all__ = ["DiagRigL", "diagonal_norms", "swap_count"]


def swap_count(alpha: float, K: int) -> int:
    """q, the number of diagonals one update drops and grows: at least one while ``alpha`` > 0.

    .. math:: q = \\min\\big(K, \\max(1, \\lfloor \\alpha K \\rfloor)\\big) \\text{ if } \\alpha > 0,
              \\qquad q = 0 \\text{ if } \\alpha = 0 \\text{ or } K = 0

    The floor is exact (:func:`~purerigl.formats._base.floor_count`, RigL's rounding of n_prune).
    At most K: there is always room to grow q, since the P - K + q offsets not kept (the q just
    dropped among them) are eligible.
    """
    if not alpha > 0.0 or K <= 0:
        return 0
    return min(K, max(1, floor_count(alpha, K)))


def diagonal_norms(W: Diagonal) -> np.ndarray:
    """float64 (K,): the L2 norm of every stored diagonal of a host matrix (for inspection and the
    tour; the update ranks the backend's float32 ``row_norms``, the same norms rounded once).

    .. math:: \\lVert V_k \\rVert_2 = \\sqrt{\\sum_{t=0}^{L-1} V_{k,t}^2}
    """
    v = W.values.astype(np.float64)
    return np.sqrt(np.einsum("kl,kl->k", v, v))


class DiagRigL(Method):
    """diag-rigl on diagonal storage: whole diagonals dropped by value norm, grown by
    gradient norm (see the module docstring for the rule and its invariants)."""

    name = "diag-rigl"
    scores_by_gradient = True
    runs_on_backend = True  # written with backend operations only: runs on the device on cuda
    formats = ("diagonal",)

    def update(self, u: LayerUpdate) -> dict:
        """Drop the ``q = swap_count(alpha, K)`` weakest diagonals of ``u.layer`` (at least one while
        ``alpha`` > 0) and grow as many.

        .. math::

            \\mathcal{K} = \\operatorname{top}_{K-q}\\big(\\lVert V_k \\rVert_2\\big), \\qquad
            \\mathcal{G} = \\operatorname{top}_{q,\\ d \\notin \\mathcal{K}}(S_d), \\qquad
            \\text{offsets}' = \\operatorname{sort}(\\mathcal{K} \\cup \\mathcal{G})

        Parameters
        ----------
        u : LayerUpdate
            ``u.layer`` a SparseLinear over a :class:`~purerigl.formats.Diagonal`, with the input and
            output gradient of the batch just trained on; ``u.optimizer`` (or None) carries the
            state; ``u.alpha`` in [0, 1].

        Returns
        -------
        dict
            ``kept``, ``grown``, ``dropped``: positions (entries) as counted by
            :func:`~purerigl.dst.topology.apply_structure`; ``diagonals``: K.

        Raises
        ------
        MethodError
            If the layer is not diagonal, ``alpha`` is outside [0, 1], the layer has no stored batch
            to score growth with, or the backend returns scores of the wrong shape.
        """
        layer = u.layer
        M = layer.matrix  # the layer's Diagonal where its backend computes
        if format_of(M) != "diagonal":
            raise MethodError(
                f"method 'diag-rigl' needs a Diagonal weight, layer {getattr(layer, 'name', '?')!r} "
                f"stores a {type(M).__name__}"
            )
        alpha = float(u.alpha)
        if not 0.0 <= alpha <= 1.0:
            raise MethodError(f"drop fraction alpha must be in [0, 1], got {u.alpha!r}")
        ops = layer.backend
        K = int(M.values.shape[0])
        P = max(layer.shape)
        q = swap_count(alpha, K)  # floor(alpha K) as RigL's n_prune, but at least 1 while alpha > 0
        if q == 0:
            return {"kept": int(M.values.size), "grown": 0, "dropped": 0, "diagonals": K}
        X, dY = saved_batch_of(layer, "diag-rigl")

        # 1. Drop: keep the K - q diagonals with the largest norms (ties: the tie rule on the offsets;
        #    they are strictly increasing, so they are valid tags).
        kept = ops.top_k(ops.row_norms(M.values), M.offsets, K - q, u.salt)  # offsets, ascending

        # 2. Grow: the q largest gradient norms among the offsets not kept (just-dropped included).
        S = ops.diag_grad_norms(X, dY)  # (P,)
        if tuple(S.shape) != (P,):
            raise MethodError(
                f"backend {ops.name!r} diag_grad_norms returned shape {tuple(S.shape)}, expected (P,) = ({P},)"
            )
        is_kept = ops.indicator(kept, P)
        grown = ops.top_k(ops.compress(S, is_kept, keep=False),
                          ops.compress(ops.arange(P), is_kept, keep=False), q, u.salt)

        # 3. Apply: values and optimizer state follow the positions (PAPERS.md 1.2).
        new = ops.diagonal_from_offsets(ops.merge_sorted(kept, grown), layer.shape)
        stats = apply_structure(layer, u.optimizer, new)
        stats["diagonals"] = K
        return stats
