"""Layout helper shared by the CPU kernels: a parallel, cache-blocked transpose of a dense operand.

The batch-heavy kernels work on ``X^T`` of shape (n_in, B), so that the innermost loop runs over the
batch contiguously. NumPy's ``np.ascontiguousarray(X.T)`` is single-threaded and walks one side with
a large stride; this transpose reads rows contiguously, writes whole cache lines and runs on all cores.

The small helpers other kernels inline (the dot products) are in :mod:`._dot`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._serial import by_work

#: Rows of A per parallel task: 16 float32 of one column of A fill one 64-byte line of AT.
ROW_BLOCK = 16

#: Columns of A copied per inner step (keeps the 16 destination lines of a step in L1).
COL_BLOCK = 64


@njit(parallel=True, cache=CACHE)
def _transpose_into(A, AT):
    """AT[j, i] = A[i, j] for A (n, m) and AT (m, n); parallel over blocks of ROW_BLOCK rows of A.

    Each task reads its rows of A contiguously and writes, for every column j, one short contiguous
    run AT[j, i0:i1]; tasks write disjoint runs.
    """
    n, m = A.shape
    n_tasks = (n + ROW_BLOCK - 1) // ROW_BLOCK
    for task in prange(n_tasks):
        i0 = task * ROW_BLOCK
        i1 = min(n, i0 + ROW_BLOCK)
        for j0 in range(0, m, COL_BLOCK):
            j1 = min(m, j0 + COL_BLOCK)
            for i in range(i0, i1):
                src = A[i, j0:j1]  # (j1 - j0,) contiguous view
                dst = AT[j0:j1, i]  # (j1 - j0,) strided view
                for j in range(src.shape[0]):
                    dst[j] = src[j]


def transpose(A: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``A^T`` as a C-contiguous array, (n, m) -> (m, n); written into ``out`` when given.

    Without ``out``, a free view is returned when ``A`` has a single row or column (no copy needed).
    """
    if out is None:
        if A.shape[0] <= 1 or A.shape[1] <= 1:
            return np.ascontiguousarray(A.T)  # same memory, shape (m, n)
        out = np.empty((A.shape[1], A.shape[0]), dtype=A.dtype)
    if A.size:
        by_work(_transpose_into, A.size)(A, out)
    return out
