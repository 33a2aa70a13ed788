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

Ties (equal |w| or |g|): the lower flat position ``row * n_in + col`` ranks higher, on every backend.

Invariants: nnz constant; every dropped |w| <= every kept |w|; every grown |g| >= the |g| of every
position not kept and not grown.
"""

from __future__ import annotations

import numpy as np

from ..formats._base import floor_count
from .base import LayerUpdate, Method
from .topology import (
    apply_structure,
    csr_from_flat,
    exclusion_of,
    flat_positions,
    top_mask,
)


def keep_by_magnitude(W, n_keep: int) -> np.ndarray:
    """Flat positions (sorted) of the ``n_keep`` entries of W with the largest |w| layer-wide.

    Ranking is over entries in flat-position order, so equal magnitudes keep the lower position.
    """
    flat = flat_positions(W)
    order = np.argsort(flat, kind="stable")  # entries in flat-position order
    keep = top_mask(np.abs(W.values.ravel()[order]), n_keep)
    return flat[order][keep]


class MagnitudeDropCSR(Method):
    """Shared shape of the unstructured methods: drop floor(alpha_t nnz) smallest |w| layer-wide, then
    grow as many positions chosen by :meth:`grow` among those not kept; nnz stays constant."""

    formats = ("csr",)

    def grow(self, u: LayerUpdate, kept: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover - abstract
        """Flat positions of ``n`` new connections, none of them in the sorted array ``kept``."""
        raise NotImplementedError

    def update(self, u: LayerUpdate) -> dict:
        W = u.layer.W
        n_prune = floor_count(u.alpha * W.nnz)
        if n_prune == 0:
            return {"kept": W.nnz, "grown": 0, "dropped": 0}
        kept = keep_by_magnitude(W, W.nnz - n_prune)
        grown = self.grow(u, kept, n_prune)
        new = csr_from_flat(np.concatenate([kept, grown]), W.shape)
        return apply_structure(u.layer, u.optimizer, new)


class RigL(MagnitudeDropCSR):
    """RigL on CSR storage: layer-wide magnitude drop, layer-wide gradient growth."""

    name = "rigl"

    def grow(self, u: LayerUpdate, kept: np.ndarray, n: int) -> np.ndarray:
        """The n positions of largest |G| outside ``kept``, streamed by the backend's ``topk_grad``."""
        ex_indptr, ex_cols = exclusion_of(kept, u.layer.W.shape)
        rows, cols = u.layer.backend.topk_grad(u.layer.last_input, u.layer.last_output_grad, n, ex_indptr, ex_cols)
        return rows * u.layer.W.n_in + cols
