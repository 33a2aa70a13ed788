"""diag-rigl, one update of one Diagonal layer: drop and grow whole diagonals (PAPERS.md 4.4).

The layer stores K of its P = max(n_out, n_in) wrap-around diagonals (DESIGN.md section 2).

1. q = max(1, floor(alpha * K)) while alpha > 0 (at most K); q = 0 leaves the layer as it is.
2. Drop: keep the K - q stored diagonals of largest L2 norm of their values (float32).
3. Grow: among the offsets not kept (just-dropped ones included), the q of largest L2 norm of the
   dense gradient G = dY^T X along the diagonal.
4. Survivors keep value and optimizer state, new diagonals start at 0.

Equal norms: the smaller tie rank ``tie_rank(offset, salt)``. The fast version is
:class:`purerigl.dst.diag_rigl.DiagRigL`.
"""

from __future__ import annotations

import numpy as np

from ...formats._base import floor_count
from ._common import Step, Update, best, carry, diagonal_of, step_gradient, unchanged


def _diagonal_of_positions(n_out: int, n_in: int) -> np.ndarray:
    """int64 (n_out, n_in): the offset d of the diagonal through every position (i, j)."""
    i = np.arange(n_out)[:, None]
    j = np.arange(n_in)[None, :]
    return (i - j) % n_out if n_out >= n_in else (j - i) % n_in


def update(step: Step) -> Update:
    W, salt = step.W, step.salt
    n_out, n_in = W.shape
    P, K = max(n_out, n_in), W.offsets.size
    q = min(K, max(1, floor_count(step.alpha, K))) if step.alpha > 0 and K > 0 else 0  # 1.
    if q == 0:
        return unchanged(step, diagonals=K)
    norms = np.sqrt(np.sum(W.values.astype(np.float64) ** 2, axis=1)).astype(np.float32)
    kept = best(norms, W.offsets.astype(np.int64), K - q, salt)  # 2.
    G = step_gradient(step)
    S = np.sqrt(np.bincount(_diagonal_of_positions(n_out, n_in).ravel(), weights=(G * G).ravel(), minlength=P))
    others = np.setdiff1d(np.arange(P, dtype=np.int64), kept)
    grown = best(S.astype(np.float32)[others], others, q, salt)  # 3.
    result = carry(step, diagonal_of(np.concatenate([kept, grown]), W.shape))  # 4.
    result.stats["diagonals"] = K
    return result
