"""SET: drop the smallest weights, regrow the same number at random positions (unstructured, CSR).

Paper: Mocanu, Mocanu, Stone, Nguyen, Gibescu, Liotta, "Scalable training of artificial neural
networks with adaptive sparse connectivity inspired by network science", Nature Communications 2018.
Official code: dcmocanu/sparse-evolutionary-artificial-neural-networks (PAPERS.md 6).

One update of one layer (n = nnz, drop fraction alpha_t):

1. n_prune = floor(alpha_t * n); keep the n - n_prune entries with the largest |w| layer-wide
   (ties: the smaller tie rank ``tie_rank(row * n_in + col, salt)`` kept).
2. Grow n_prune positions drawn uniformly at random among the positions not kept (just-dropped ones
   eligible), without replacement, from the updater's seeded generator.
3. New connections start at 0 with zero optimizer state (the shared step); nnz is unchanged.

Where purerigl differs from the official code, deliberately: the drop is one layer-wide magnitude
ranking rather than separate fractions of the positive and negative weights, new weights start at 0
rather than N(0, 0.1^2) (so growing alone does not change the network function, as in every other
method here), and the update follows the same delta_t / cosine schedule as RigL (the paper's SET is
delta_t = one epoch with a constant fraction; pass ``--delta-t`` and ``--alpha`` to match it). The
condensed-format SET is :class:`purerigl.dst.srigl.SETCondensed`.

Where it runs: the drop and the new structure run on the layer's backend (on the device on cuda);
the random draw is made by the updater's host generator, so the same seed gives the same topology
on every backend. Per update on cuda: the draws go to the device, one membership bit per draw comes
back, the grown positions go in; the values and optimizer state never leave the device.
"""

from __future__ import annotations

import numpy as np

from ..formats._base import sorted_unique
from ..kernels.host_selection import in_sorted
from .base import LayerUpdate
from .rigl import DropAndRegrowCSR

__all__ = ["SET", "random_free_positions"]


def random_free_positions(rng: np.random.Generator, total: int, taken, n: int, ops=None) -> np.ndarray:
    """``n`` distinct flat positions in [0, total) outside the sorted array ``taken``, uniformly.

    Rejection sampling with top-ups: O(n + |taken|) memory, never O(total). The draws come from the
    host generator ``rng``, so they are the same whatever computes the membership test.

    Parameters
    ----------
    rng : numpy Generator
    total : int
        Number of positions, n_out * n_in.
    taken : int64 array, ascending
        A host array, or an array of the backend ``ops`` (then ``ops.in_sorted`` tests each round's
        host draw where ``taken`` lives: on cuda the draw goes in and one bool per draw comes back).
    n : int
    ops : Backend, optional

    Returns
    -------
    int64 host ndarray (n,), ascending
    """
    free = total - int(taken.size)
    if n > free:
        raise ValueError(f"cannot grow {n} connections: only {free} free positions")
    member = in_sorted if ops is None else ops.in_sorted  # host draws in, a host mask out
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < n:
        draw = rng.integers(0, total, size=2 * (n - chosen.size) + 16, dtype=np.int64)
        draw = draw[~member(draw, taken)]
        chosen = sorted_unique(np.concatenate([chosen, draw]))
    if chosen.size > n:  # drop a uniformly random surplus so the result stays a uniform n-subset
        chosen = np.sort(rng.choice(chosen, size=n, replace=False))
    return chosen


class SET(DropAndRegrowCSR):
    """SET on CSR storage: layer-wide magnitude drop, uniformly random regrowth."""

    name = "set"
    runs_on_backend = True  # written with backend operations: the structure never leaves the backend

    def new_structure(self, u: LayerUpdate, n_keep: int, n_grow: int):
        """Kept = the n_keep largest |w|; grown = n_grow positions drawn uniformly among those not kept
        from the updater's generator; the CSR structure of kept ∪ grown.

        The draw is made on the host (so the same seed gives the same topology on every backend);
        on cuda each round's draw goes to the device, its membership in the kept set comes back
        (one bool per draw), and the grown positions go to the device.
        """
        layer = u.layer
        ops = layer.backend
        n_out, n_in = layer.shape
        kept = ops.keep_by_magnitude(layer.matrix, n_keep, u.salt)  # flat positions, ascending
        grown = random_free_positions(u.rng, n_out * n_in, kept, n_grow, ops)
        return ops.csr_from_positions(ops.merge_sorted(kept, grown), layer.shape)  # grown: a host draw
