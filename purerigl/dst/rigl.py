"""RigL: drop the smallest weights, grow where the gradient is largest (unstructured, CSR).

Paper: Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020, arXiv 1911.11134. Official code: google-research/rigl (PAPERS.md 2).

One update of one layer with active set A (n = |A| = nnz) and drop fraction alpha_t:

1. n_prune = floor(alpha_t * n), n_keep = n - n_prune.
2. Drop: keep the n_keep active entries with the largest |w| over the **whole layer**.
3. Grow: among all positions not kept (the just-dropped ones included), take the n_prune with the
   largest gradient magnitude

   .. math:: |G_{ij}| = \\Big|\\sum_b dY_{bi} X_{bj}\\Big|

   computed by the backend's streamed ``topk_grad``: G is never stored.
4. New A = kept ∪ grown (disjoint), so |A| is unchanged exactly. New connections start at 0 with zero
   optimizer state; a connection dropped and regrown in the same update keeps its value and state
   (:func:`purerigl.dst.topology.apply_structure`).

Ties (equal |w| or |g|): the position of smaller tie rank ``tie_rank(row * n_in + col, salt)`` ranks
higher, on every backend (a salted permutation: no position is preferred, :mod:`purerigl.dst.topology`).

Invariants: nnz constant; every dropped |w| <= every kept |w|; every grown |g| >= the |g| of every
position not kept and not grown.

Where it runs: the rule is written with the layer backend's update operations
(:data:`purerigl.kernels.registry.UPDATE_OPS`) on ``layer.matrix`` and the batch the layer kept
(``layer.saved_batch()``), so on the cuda backend the whole update (drop, growth selection, new
structure, value and optimizer-state remap) runs on the device: only the ``kept`` count and one
candidate count per gradient tile come back to the host.
"""

from __future__ import annotations

from ..formats._base import floor_count
from .base import LayerUpdate, Method
from .topology import apply_structure


class DropAndRegrowCSR(Method):
    """Shared shape of the unstructured methods: drop floor(alpha_t nnz) smallest |w| layer-wide, then
    grow as many positions chosen among those not kept; nnz stays constant."""

    formats = ("csr",)

    def new_structure(self, u: LayerUpdate, n_keep: int, n_grow: int):  # pragma: no cover - abstract
        """The new structure (values 0): the ``n_keep`` largest |w| plus ``n_grow`` grown positions."""
        raise NotImplementedError

    def update(self, u: LayerUpdate) -> dict:
        nnz = int(u.layer.matrix.values.size)
        n_prune = floor_count(u.alpha, nnz)
        if n_prune == 0:
            return {"kept": nnz, "grown": 0, "dropped": 0}
        new = self.new_structure(u, nnz - n_prune, n_prune)
        return apply_structure(u.layer, u.optimizer, new)


class RigL(DropAndRegrowCSR):
    """RigL on CSR storage: layer-wide magnitude drop, layer-wide gradient growth."""

    name = "rigl"
    runs_on_backend = True  # written with backend operations only: runs on the device on cuda
    scores_by_gradient = True

    def new_structure(self, u: LayerUpdate, n_keep: int, n_grow: int):
        """Kept = the n_keep largest |w|; grown = the n_grow largest |G| outside kept (G streamed by the
        backend's ``topk_grad``, never stored); the CSR structure of kept ∪ grown."""
        layer = u.layer
        ops = layer.backend
        X, dY = layer.saved_batch()
        kept = ops.keep_by_magnitude(layer.matrix, n_keep, u.salt)  # flat positions, ascending
        ex_indptr, ex_cols = ops.exclusion_of(kept, layer.shape)
        rows, cols = ops.topk_grad(X, dY, n_grow, ex_indptr, ex_cols, u.salt)  # ascending by position
        grown = ops.flat_of(rows, cols, layer.shape[1])
        return ops.csr_from_positions(ops.merge_sorted(kept, grown), layer.shape)
