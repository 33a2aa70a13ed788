"""Numba kernel of ``grad_at``: the dense gradient ``G = dY^T X`` at arbitrary (row, col) pairs.

Used by GSE to score a sampled set of candidate positions without forming G. Every pair is an
independent dot product over the batch, so the kernel runs in parallel over blocks of pairs with no
shared writes. It works on the transposed operands ``XT = X^T`` (n_in, B) and ``dYT = dY^T``
(n_out, B), so each dot product reads two contiguous rows.

The dot product it inlines is :func:`._dot.lane_dot` (eight interleaved partial sums, a fixed order).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._dot import lane_dot
from ._layout import transpose
from ._serial import by_work

#: Pairs per parallel task (one scratch buffer per task).
PAIR_BLOCK = 256


@njit(parallel=True, cache=CACHE)
def _grad_at_transposed(XT, dYT, rows, cols, g):
    """g[p] = sum_b dYT[rows[p], b] XT[cols[p], b]; parallel over blocks of PAIR_BLOCK pairs.

    XT is (n_in, B), dYT is (n_out, B); rows and cols are int64 (m,).
    """
    n_pairs = rows.shape[0]
    n_tasks = (n_pairs + PAIR_BLOCK - 1) // PAIR_BLOCK
    for task in prange(n_tasks):
        for p in range(task * PAIR_BLOCK, min(n_pairs, (task + 1) * PAIR_BLOCK)):
            g[p] = lane_dot(dYT[rows[p]], XT[cols[p]])


def grad_at(X: np.ndarray, dY: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray):
    """g[p] = sum_b dY[b, rows[p]] X[b, cols[p]] into ``out`` (m,)."""
    if rows.shape[0]:
        kernel = by_work(_grad_at_transposed, rows.shape[0] * X.shape[0], X.shape[0])
        kernel(transpose(X), transpose(dY), rows, cols, out)
    return out
