"""SET, one update (Mocanu et al. 2018): drop the smallest weights, regrow as many at random.

CSR (layer-wide), with n = |A| and n_prune = floor(alpha * n):

1. Drop: keep the n - n_prune active connections of largest |w|, layer-wide.
2. Grow: n_prune positions drawn uniformly among the positions not kept (just-dropped ones included):
   the updater's generator draws ``rng.integers(0, n_out * n_in, 2 * missing + 16)`` in rounds,
   discarding kept positions and repeats, until n_prune distinct positions are in hand, then keeps a
   uniform n_prune-subset of them (``rng.choice(..., replace=False)``), so the draw is the method's.

Condensed (constant fan-in, no ablation): the same layer-wide drop among the active rows, then every
row refills to its fan-in k with uniformly random columns among those it does not keep, rows in
ascending order, ``rng.choice(n_free, need, replace=False)`` choosing the ranks of the new columns
among the row's free columns.

Equal |w|: the smaller tie rank ``tie_rank(position, salt)`` is kept. The fast versions:
:class:`purerigl.dst.set_method.SET` (CSR), :class:`purerigl.dst.srigl.SETCondensed` (Condensed).
"""

from __future__ import annotations

import numpy as np

from ...formats import Condensed
from ...formats._base import floor_count
from ._common import Step, Update, best, carry, csr_of, positions, scores_of, unchanged


def update(step: Step) -> Update:
    if isinstance(step.W, Condensed):
        return _update_condensed(step)
    W, rng = step.W, step.rng
    n_out, n_in = W.shape
    A = positions(W)
    n_prune = floor_count(step.alpha, A.size)
    if n_prune == 0:
        return unchanged(step)
    kept = best(scores_of(W.values.ravel()), A, A.size - n_prune, step.salt)  # 1.
    chosen = np.zeros(0, dtype=np.int64)  # 2.
    while chosen.size < n_prune:
        draw = rng.integers(0, n_out * n_in, size=2 * (n_prune - chosen.size) + 16, dtype=np.int64)
        chosen = np.unique(np.concatenate([chosen, draw[~np.isin(draw, kept)]]))
    if chosen.size > n_prune:
        chosen = np.sort(rng.choice(chosen, size=n_prune, replace=False))
    return carry(step, csr_of(np.concatenate([kept, chosen]), W.shape))


def _update_condensed(step: Step) -> Update:
    """SET on Condensed storage is SRigL without ablation whose per-row growth is random."""
    from . import srigl

    return srigl.update(step, gamma_sal=0.0, grow="random")
