"""Numba kernels of the four operations on Condensed (constant fan-in) matrices.

A Condensed matrix stores, for every active row ``rows[r]``, exactly ``k`` entries at columns
``indices[r, :]`` with weights ``values[r, :]`` (see :mod:`purerigl.formats.condensed`). This module
holds the private ``@njit`` kernels and three thin drivers (:func:`matmul`, :func:`matmul_t`,
:func:`sddmm`) that pick a kernel by batch size and lay the dense operands out for it, plus their
feature-major twins (:func:`matmul_fm`, :func:`matmul_t_fm`, :func:`sddmm_fm`: operands (features,
batch), the batched kernels' own layout, so they call them with no transpose). The drivers
receive operands already checked by :mod:`purerigl.kernels._checks` and a zeroed ``out``.

Layouts. With a small batch a row's dot product gathers straight from ``X[b]``. With a larger batch the
kernels work on transposed copies ``XT = X^T`` of shape (n_in, B): one stored entry then touches one
contiguous row of ``XT``, so the innermost loop runs over the batch and is SIMD-friendly. The column
indices are read as uint16 (a cached copy, when n_in <= 65536) or as a uint32 view: fewer bytes, and
an unsigned gather index needs no negative-index check. ``matmul_t`` at larger batch runs on a cached
column-major copy of the structure (:mod:`._columns`).

Determinism. Every parallel loop writes disjoint outputs and sums in a fixed order. Partitions that
change a summation order (the row chunks of the small-batch matmul_t) depend only on the shapes;
the others (batch blocks) may follow the thread count but leave every sum's order unchanged. Results
are therefore bit-identical from run to run, and also across thread counts. The dot products the kernels inline are :mod:`._dot`'s.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._dot import DOT_CHUNK, gather_dot
from ._gather import gather_axpy, gather_dots
from ._columns import columns, matmul_t_columns, narrow_indices
from ._columns import cached as _cached
from ._layout import transpose
from ._serial import by_work

#: Batches at least this large use the transposed-operand kernels (see the module docstring).
TRANSPOSED_MIN_BATCH = 4

#: Largest batch block of the transposed kernels (a block of XT's columns is walked as one unit).
BATCH_BLOCK = 256

#: Upper bound on the number of row chunks (private dX buffers) of the small-batch matmul_t.
MAX_CHUNKS = 8

#: Target number of multiply-adds per row chunk of the small-batch matmul_t.
CHUNK_WORK = 1 << 15

#: Below this many multiply-adds the small-batch forward runs on one thread (a parallel region costs
#: microseconds to start); the result is the same either way (each output is one dot product).
SERIAL_WORK = 1 << 15


@njit(parallel=True, cache=CACHE)
def _matmul_rowdot(rows, indices, values, X, Y):
    """Y[b, rows[r]] = sum_t values[r, t] X[b, indices[r, t]]; parallel over active rows r.

    Small batch: one gathered dot product per (row, batch item). Y (B, n_out) arrives zeroed; the
    active rows are distinct (a Condensed invariant), so no two tasks write the same element.
    ``indices`` is unsigned (uint16 or uint32), so the gather has no negative-index check.
    """
    n_active = indices.shape[0]
    B = X.shape[0]
    for r in prange(n_active):
        i = rows[r]
        for b in range(B):
            Y[b, i] = gather_dot(values[r], indices[r], X[b])


@njit(cache=CACHE)
def _matmul_rowdot_serial(rows, indices, values, X, Y):
    """:func:`_matmul_rowdot` on one thread, for small work (bit-identical: same dot products)."""
    n_active = indices.shape[0]
    B = X.shape[0]
    for r in range(n_active):
        i = rows[r]
        for b in range(B):
            Y[b, i] = gather_dot(values[r], indices[r], X[b])


@njit(parallel=True, cache=CACHE)
def _matmul_transposed(rows, indices, values, XT, YT, block):
    """YT[rows[r], b] = sum_t values[r, t] XT[indices[r, t], b]; parallel over (batch block, row).

    XT is (n_in, B), YT is (n_out, B) and arrives zeroed; the row of YT is the accumulator, and the
    row's entries are added eight per pass (:func:`._gather.gather_axpy`: contiguous axpys over the
    batch block). Tasks run block-major, so a thread works on one block of XT's columns at a time.
    """
    n_active = indices.shape[0]
    B = XT.shape[1]
    n_blocks = (B + block - 1) // block
    for task in prange(n_blocks * n_active):
        r = task % n_active
        b0 = (task // n_active) * block
        b1 = min(B, b0 + block)
        gather_axpy(YT[rows[r], b0:b1], values[r], indices[r], XT, b0, b1)


@njit(parallel=True, cache=CACHE)
def _matmul_t_chunks(rows, indices, values, dY, n_chunks, dX):
    """dX[b, j] = sum over entries (r, t) with indices[r, t] == j of values[r, t] dY[b, rows[r]].

    Small batch. The scatter into dX would race between rows, so the active rows are cut into
    ``n_chunks`` fixed, contiguous chunks, each scattering into its own private (B, n_in) buffer; the
    buffers are then added in chunk order, in parallel over columns. dX (B, n_in) arrives zeroed.
    """
    n_active, k = indices.shape
    B, n_in = dX.shape
    partial = np.zeros((n_chunks, B, n_in), dtype=np.float32)
    for c in prange(n_chunks):
        r0 = c * n_active // n_chunks
        r1 = (c + 1) * n_active // n_chunks
        for r in range(r0, r1):
            i = rows[r]
            for b in range(B):
                y = dY[b, i]
                dst = partial[c, b]  # (n_in,) view
                for t in range(k):
                    dst[indices[r, t]] += values[r, t] * y
    col_block = 256
    n_col_blocks = (n_in + col_block - 1) // col_block
    for task in prange(B * n_col_blocks):
        b = task // n_col_blocks
        j0 = (task % n_col_blocks) * col_block
        j1 = min(n_in, j0 + col_block)
        dst = dX[b, j0:j1]  # (j1 - j0,) view
        for c in range(n_chunks):
            src = partial[c, b, j0:j1]  # (j1 - j0,) view
            for j in range(dst.shape[0]):
                dst[j] += src[j]


@njit(parallel=True, cache=CACHE, fastmath={"reassoc"})
def _sddmm_transposed(rows, indices, XT, dYT, dW):
    """dW[r, t] = sum_b dYT[rows[r], b] XT[indices[r, t], b]; chunk by chunk, parallel over active rows
    r. dW arrives zeroed.

    XT is (n_in, B) and dYT is (n_out, B), so each entry is a contiguous dot product over the batch,
    eight entries per pass (:func:`._gather.gather_dots`), in chunks of DOT_CHUNK batch items added in
    ascending order. The chunk loop is the outer one (one parallel region per chunk), so the chunk of
    XT every row reads stays in cache across the rows (as in :func:`.csr._sddmm_transposed`).
    """
    B = XT.shape[1]
    for c0 in range(0, B, DOT_CHUNK):
        c1 = min(B, c0 + DOT_CHUNK)
        for r in prange(indices.shape[0]):
            gather_dots(dW[r], dYT[rows[r], c0:c1], indices[r], XT, c0, c1)


def _batch_block(B: int, parallel: bool) -> int:
    """Batch block of the transposed kernels: BATCH_BLOCK, or smaller so that every thread gets a block
    when the blocks are the only parallel axis. Results do not depend on it (each element sums its terms
    in entry order whatever the blocking)."""
    if parallel:
        return max(1, min(BATCH_BLOCK, -(-B // numba.get_num_threads())))
    return BATCH_BLOCK


def _indices(W) -> np.ndarray:
    """W.indices as uint16 (cached copy) or uint32 (view): see :mod:`._columns`."""
    return _cached(W, "indices", W.indices, lambda: narrow_indices(W.indices, W.n_in))


def columns_of(W):
    """Cached column-major structure of W (see :mod:`._columns`)."""
    return columns(W, W.indices.ravel(), lambda: np.repeat(W.rows, W.k), W.indices)


def matmul(W, X: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Y = X W^T into the zeroed ``out`` (B, n_out); rows of W that are ablated stay 0."""
    B = X.shape[0]
    if W.nnz == 0 or B == 0:
        return out
    indices = _indices(W)
    if B < TRANSPOSED_MIN_BATCH:
        if W.nnz * B < SERIAL_WORK:
            _matmul_rowdot_serial(W.rows, indices, W.values, X, out)
        else:
            _matmul_rowdot(W.rows, indices, W.values, X, out)
        return out
    YT = matmul_fm(W, transpose(X), np.zeros((W.n_out, B), dtype=np.float32))  # (n_out, B)
    transpose(YT, out)  # (n_out, B) -> (B, n_out)
    return out


def matmul_fm(W, XT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """YT = W XT into the zeroed ``out`` (n_out, B), XT (n_in, B): the batch-transposed kernel, whose
    operands are already in its layout (no transpose); ablated rows stay 0."""
    B = XT.shape[1]
    if W.nnz and B:
        by_work(_matmul_transposed, W.nnz * B, B)(W.rows, _indices(W), W.values, XT, out, _batch_block(B, False))
    return out


def matmul_t(W, dY: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dX = dY W into the zeroed ``out`` (B, n_in).

    Row-major storage makes this a scatter, ``dX[b, j] += w dY[b, i]``, which would race between
    rows. Why two strategies, and no atomics:

    - small batch: fixed row chunks with private dX buffers added in chunk order. Batch blocks give
      no parallelism at B = 1, and building a column-major (transposed) copy of the structure is a
      serial O(nnz) pass as costly as the product itself.
    - larger batch: the cached column-major structure (:mod:`._columns`) turns the scatter into a
      gather in which every row of dXT (n_in, B) is owned by one column, parallel over columns, each
      sum in ascending row order. (Batch blocks, each walking the whole structure, left only B /
      threads columns per task: at B = 8 on 2 threads, rows of 4 floats.)
    """
    B = dY.shape[0]
    if W.nnz == 0 or B == 0:
        return out
    if B < TRANSPOSED_MIN_BATCH:
        work = W.nnz * max(B, 1)
        n_chunks = max(1, min(MAX_CHUNKS, W.n_active, work // CHUNK_WORK))
        by_work(_matmul_t_chunks, work, B)(W.rows, _indices(W), W.values, dY, n_chunks, out)
        return out
    dXT = matmul_t_fm(W, transpose(dY), np.zeros((W.n_in, B), dtype=np.float32))  # (n_in, B)
    transpose(dXT, out)  # (n_in, B) -> (B, n_in)
    return out


def matmul_t_fm(W, dYT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dXT = W^T dYT into the zeroed ``out`` (n_in, B), dYT (n_out, B): the gather over the cached
    column-major structure (see :func:`matmul_t`), operands already in its layout."""
    B = dYT.shape[1]
    if W.nnz and B:
        col_ptr, entry, row = columns_of(W)
        by_work(matmul_t_columns, W.nnz * B, B)(col_ptr, entry, row, W.values.reshape(-1), dYT, out)
    return out


def sddmm(W, X: np.ndarray, dY: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dW[r, t] = sum_b dY[b, rows[r]] X[b, indices[r, t]] into ``out`` (n_active, k)."""
    if W.nnz == 0:
        return out
    return sddmm_fm(W, transpose(X), transpose(dY), out)


def sddmm_fm(W, XT: np.ndarray, dYT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dW[r, t] = sum_b dYT[rows[r], b] XT[indices[r, t], b] into ``out`` (n_active, k): contiguous
    dot products over the batch, operands already in the kernel's layout."""
    if W.nnz:
        by_work(_sddmm_transposed, W.nnz * XT.shape[1], XT.shape[1])(W.rows, _indices(W), XT, dYT, out)
    return out
