"""Layout helper shared by the CPU kernels: a parallel, cache-blocked transpose of a dense operand.

The batch-heavy kernels work on ``X^T`` of shape (n_in, B), so that the innermost loop runs over the
batch contiguously. NumPy's ``np.ascontiguousarray(X.T)`` is single-threaded and walks one side with
a large stride; this transpose reads rows contiguously, writes whole cache lines and runs on all cores.

The small helpers other kernels inline (the dot products) are in :mod:`._dot`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._serial import by_work

#: Rows of A per parallel task: 16 float32 of one column of A fill one 64-byte line of AT.
ROW_BLOCK = 16

#: Columns of A copied per inner step (keeps the 16 destination lines of a step in L1).
COL_BLOCK = 64

#: L1 data cache geometry assumed when choosing the blocks: 64-byte lines, 64 sets, 8 ways (32 KiB).
L1_LINE, L1_SETS, L1_WAYS = 64, 64, 8


@njit(parallel=True, cache=CACHE)
def _transpose_into(A, AT, row_block, col_block):
    """AT[j, i] = A[i, j] for A (n, m) and AT (m, n); parallel over blocks of ``row_block`` rows of A.

    Each task reads its rows of A contiguously and writes, for every column j, one short contiguous
    run AT[j, i0:i1]; tasks write disjoint runs. ``col_block`` destination lines are live at once.
    """
    n, m = A.shape
    n_tasks = (n + row_block - 1) // row_block
    for task in prange(n_tasks):
        i0 = task * row_block
        i1 = min(n, i0 + row_block)
        for j0 in range(0, m, col_block):
            j1 = min(m, j0 + col_block)
            for i in range(i0, i1):
                src = A[i, j0:j1]  # (j1 - j0,) contiguous view
                dst = AT[j0:j1, i]  # (j1 - j0,) strided view
                for j in range(src.shape[0]):
                    dst[j] = src[j]


def _blocks(row_bytes: int) -> tuple[int, int]:
    """(row_block, col_block) for a destination whose rows are ``row_bytes`` apart.

    A step keeps ``col_block`` destination lines live, one per row of AT. When the row stride is a
    multiple of a large power of two (n a multiple of 1024 float32: 4 KiB, the L1 way size), those
    lines fall into a few cache sets and evict each other (a (4096, 64) transpose took 1.35 ms against
    0.21 ms for NumPy's): then fewer destination lines (at most half the ways of the sets they can
    use) and longer runs per line.
    """
    if row_bytes % L1_LINE:
        return ROW_BLOCK, COL_BLOCK
    sets = L1_SETS // math.gcd(row_bytes // L1_LINE, L1_SETS)  # distinct sets the lines map to
    col_block = min(COL_BLOCK, max(8, sets * L1_WAYS // 2))
    return (ROW_BLOCK if col_block == COL_BLOCK else 2 * ROW_BLOCK), col_block


#: Sources of at most this many rows are copied by NumPy instead. Its copy walks A^T in order, reading
#: down one column of A per row of A^T: the n lines of A it touches stay in L1 for the next 15 rows of
#: A^T when n is small (192 rows: 12 KiB of lines), and then it beats the blocked kernel, whose
#: strided single-element stores cost more than they save (one thread, 2-core machine: (64, 1088)
#: 17 against 33 us, (192, 1088) 130 against 199 us; but (1088, 64) 72 against 35 us, (256, 1088)
#: 328 against 156 us, (1024, 1024) 11.9 against 1.1 ms).
NUMPY_MAX_ROWS = 192


def transpose(A: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``A^T`` as a C-contiguous array, (n, m) -> (m, n); written into ``out`` when given.

    Without ``out``, a free view is returned when ``A`` has a single row or column (no copy needed).
    A source of at most :data:`NUMPY_MAX_ROWS` rows is copied by NumPy, a taller one by the parallel
    blocked kernel; both copy the same values.
    """
    few_rows = A.shape[0] <= NUMPY_MAX_ROWS
    if out is None:
        if A.shape[0] <= 1 or A.shape[1] <= 1 or few_rows:
            return np.ascontiguousarray(A.T)  # (m, n); same memory for a single row or column
        out = np.empty((A.shape[1], A.shape[0]), dtype=A.dtype)
    if A.size == 0:
        return out
    if few_rows:
        out[...] = A.T
    else:
        by_work(_transpose_into, A.size)(A, out, *_blocks(out.strides[0]))
    return out
