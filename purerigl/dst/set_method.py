"""SET: drop the smallest weights, regrow the same number at random positions (unstructured, CSR).

Paper: Mocanu, Mocanu, Stone, Nguyen, Gibescu, Liotta, "Scalable training of artificial neural
networks with adaptive sparse connectivity inspired by network science", Nature Communications 2018.
Official code: dcmocanu/sparse-evolutionary-artificial-neural-networks (PAPERS.md 6).

One update of one layer (n = nnz, drop fraction alpha_t):

1. n_prune = floor(alpha_t * n); keep the n - n_prune entries with the largest |w| layer-wide
   (ties: lower flat position kept).
2. Grow n_prune positions drawn uniformly at random among the positions not kept (just-dropped ones
   eligible), without replacement, from the updater's seeded generator.
3. New connections start at 0 with zero optimizer state (the shared step); nnz is unchanged.

Where purerigl differs from the official code, deliberately: the drop is one layer-wide magnitude
ranking rather than separate fractions of the positive and negative weights, new weights start at 0
rather than N(0, 0.1^2) (so growing alone does not change the network function, as in every other
method here), and the update follows the same delta_t / cosine schedule as RigL (the paper's SET is
delta_t = one epoch with a constant fraction; pass ``--delta-t`` and ``--alpha`` to match it). The
condensed-format SET is :class:`purerigl.dst.srigl.SETCondensed`.
"""

from __future__ import annotations

import numpy as np

from ..formats._base import sorted_unique
from .base import LayerUpdate
from .rigl import MagnitudeDropCSR
from .topology import csr_from_flat, keep_by_magnitude


def in_sorted(values: np.ndarray, sorted_array: np.ndarray) -> np.ndarray:
    """bool mask: which ``values`` occur in the ascending ``sorted_array`` (``np.isin`` by binary
    search, which avoids the slow hash path NumPy 2's ``np.isin`` takes for large-range int64 keys)."""
    if sorted_array.size == 0:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_array, values), sorted_array.size - 1)
    return sorted_array[at] == values


def random_free_positions(rng: np.random.Generator, total: int, taken: np.ndarray, n: int) -> np.ndarray:
    """``n`` distinct flat positions in [0, total) outside the sorted array ``taken``, uniformly.

    Rejection sampling with top-ups: O(n + |taken|) memory, never O(total).
    """
    free = total - taken.size
    if n > free:
        raise ValueError(f"cannot grow {n} connections: only {free} free positions")
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < n:
        draw = rng.integers(0, total, size=2 * (n - chosen.size) + 16, dtype=np.int64)
        draw = draw[~in_sorted(draw, taken)]
        chosen = sorted_unique(np.concatenate([chosen, draw]))
    if chosen.size > n:  # drop a uniformly random surplus so the result stays a uniform n-subset
        chosen = np.sort(rng.choice(chosen, size=n, replace=False))
    return chosen


class SET(MagnitudeDropCSR):
    """SET on CSR storage: layer-wide magnitude drop, uniformly random regrowth."""

    name = "set"
    resident = False  # reads host arrays: the updater refreshes them from the device first

    def new_structure(self, u: LayerUpdate, n_keep: int, n_grow: int):
        """Kept = the n_keep largest |w|; grown = n_grow positions drawn uniformly among those not kept
        from the updater's generator (on the host: the draw depends on the kept set)."""
        W = u.layer.W
        kept = keep_by_magnitude(W, n_keep)
        grown = random_free_positions(u.rng, W.n_out * W.n_in, kept, n_grow)
        return csr_from_flat(np.concatenate([kept, grown]), W.shape)
