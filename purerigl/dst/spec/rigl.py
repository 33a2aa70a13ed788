"""RigL, one update of one CSR layer, as the paper states it (Evci et al. 2020, arXiv 1911.11134).

1. n = |A| active connections; n_prune = floor(alpha * n).
2. Drop: keep the n - n_prune active connections of largest |w|, layer-wide.
3. Grow: among every position not kept (the just-dropped ones included) take the n_prune of largest
   |G|, G = dY^T X.
4. A' = kept ∪ grown; survivors keep value and optimizer state, new connections start at 0.

Equal scores: the smaller tie rank ``tie_rank(position, salt)``. The fast version is
:class:`purerigl.dst.rigl.RigL` (it streams G instead of building it).
"""

from __future__ import annotations

import numpy as np

from ...formats._base import floor_count
from ._common import Step, Update, best, carry, csr_of, positions, scores_of, step_gradient, unchanged


def update(step: Step) -> Update:
    W, salt = step.W, step.salt
    n_out, n_in = W.shape
    A = positions(W)  # active positions, laid out like W.values
    n_prune = floor_count(step.alpha, A.size)  # 1.
    if n_prune == 0:
        return unchanged(step)
    kept = best(scores_of(W.values.ravel()), A, A.size - n_prune, salt)  # 2.
    G = step_gradient(step)
    not_kept = np.setdiff1d(np.arange(n_out * n_in, dtype=np.int64), kept)
    grown = best(scores_of(G.ravel()[not_kept]), not_kept, n_prune, salt)  # 3.
    return carry(step, csr_of(np.concatenate([kept, grown]), W.shape))  # 4.
