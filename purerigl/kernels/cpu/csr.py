"""Numba kernels of the four operations on CSR (unstructured) matrices.

Row ``i`` of a CSR matrix stores its entries at columns ``indices[indptr[i]:indptr[i+1]]`` with
weights ``values[indptr[i]:indptr[i+1]]`` (see :mod:`purerigl.formats.csr`). This module holds the
private ``@njit`` kernels and three thin drivers (:func:`matmul`, :func:`matmul_t`, :func:`sddmm`)
that pick a kernel by batch size and lay the dense operands out for it, plus their feature-major
twins (:func:`matmul_fm`, :func:`matmul_t_fm`, :func:`sddmm_fm`: operands (features, batch), which is
the batched kernels' own layout, so they call them with no transpose). The drivers receive operands
already checked by :mod:`purerigl.kernels._checks` and a zeroed ``out``.

The kernels mirror :mod:`purerigl.kernels.cpu.condensed` (same strategies, same layouts) with
variable-length rows: with a small batch a row's dot product gathers straight from ``X[b]``; with a
larger batch the kernels work on ``XT = X^T`` (n_in, B) so the innermost loop runs over the batch.

Determinism. Every parallel loop writes disjoint outputs and sums in a fixed order. Partitions that
change a summation order (the row chunks of the small-batch matmul_t) depend only on the shapes and
the structure; the others (batch blocks) may follow the thread count but leave every sum's order
unchanged. Results are bit-identical from run to run, and also across thread counts. The dot products the kernels inline are :mod:`._dot`'s.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._dot import DOT_CHUNK, gather_dot
from ._gather import gather_axpy, gather_dots
from ._columns import columns, matmul_t_columns
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


@njit(parallel=True, cache=CACHE)
def _matmul_rowdot(indptr, indices, values, X, Y):
    """Y[b, i] = sum_{e in row i} values[e] X[b, indices[e]]; parallel over rows i.

    Small batch: one gathered dot product per (row, batch item). Y (B, n_out) arrives zeroed.
    """
    n_out = indptr.shape[0] - 1
    B = X.shape[0]
    for i in prange(n_out):
        e0 = indptr[i]
        e1 = indptr[i + 1]
        for b in range(B):
            Y[b, i] = gather_dot(values[e0:e1], indices[e0:e1], X[b])


@njit(parallel=True, cache=CACHE)
def _matmul_transposed(indptr, indices, values, XT, YT, block):
    """YT[i, b] = sum_{e in row i} values[e] XT[indices[e], b]; parallel over (batch block, row).

    XT is (n_in, B), YT is (n_out, B) and arrives zeroed; the row of YT is the accumulator and the
    row's entries are added eight per pass (:func:`._gather.gather_axpy`). Tasks run block-major.
    """
    n_out = indptr.shape[0] - 1
    B = XT.shape[1]
    n_blocks = (B + block - 1) // block
    for task in prange(n_blocks * n_out):
        i = task % n_out
        b0 = (task // n_out) * block
        b1 = min(B, b0 + block)
        e0 = indptr[i]
        e1 = indptr[i + 1]
        gather_axpy(YT[i, b0:b1], values[e0:e1], indices[e0:e1], XT, b0, b1)


@njit(parallel=True, cache=CACHE)
def _matmul_t_chunks(indptr, indices, values, dY, chunk_rows, dX):
    """dX[b, j] = sum over entries e with indices[e] == j of values[e] dY[b, row(e)].

    Small batch. The scatter into dX would race between rows, so the rows are cut into fixed chunks
    ``chunk_rows[c]:chunk_rows[c+1]`` (balanced by nnz), each scattering into its own private
    (B, n_in) buffer; the buffers are then added in chunk order, in parallel over columns.
    dX (B, n_in) arrives zeroed.
    """
    n_chunks = chunk_rows.shape[0] - 1
    B, n_in = dX.shape
    partial = np.zeros((n_chunks, B, n_in), dtype=np.float32)
    for c in prange(n_chunks):
        for i in range(chunk_rows[c], chunk_rows[c + 1]):
            for b in range(B):
                y = dY[b, i]
                dst = partial[c, b]  # (n_in,) view
                for e in range(indptr[i], indptr[i + 1]):
                    dst[indices[e]] += values[e] * y
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
def _sddmm_transposed(indptr, indices, XT, dYT, dW):
    """dW[e] = sum_b dYT[row(e), b] XT[indices[e], b]; chunk by chunk, parallel over rows. dW arrives
    zeroed.

    XT is (n_in, B) and dYT is (n_out, B), so each entry is a contiguous dot product over the batch,
    eight entries per pass (:func:`._gather.gather_dots`), in chunks of DOT_CHUNK batch items added in
    ascending order. The chunk loop is the outer one (one parallel region per chunk): the chunk of XT
    that every row reads, n_in x DOT_CHUNK floats, stays in cache across the rows, so XT comes from
    memory once per call (row by row, every row streamed its entries' whole rows of XT: nnz * B floats,
    2-3x slower on a convolution's patch matrix; benchmarks/results/loop-order-2core.md).
    """
    n_out = indptr.shape[0] - 1
    B = XT.shape[1]
    for c0 in range(0, B, DOT_CHUNK):
        c1 = min(B, c0 + DOT_CHUNK)
        for i in prange(n_out):
            e0 = indptr[i]
            e1 = indptr[i + 1]
            gather_dots(dW[e0:e1], dYT[i, c0:c1], indices[e0:e1], XT, c0, c1)


def _batch_block(B: int, parallel: bool) -> int:
    """Batch block of the transposed kernels: BATCH_BLOCK, or smaller so that every thread gets a block
    when the blocks are the only parallel axis. Results do not depend on it (each element sums its
    terms in entry order whatever the blocking)."""
    if parallel:
        return max(1, min(BATCH_BLOCK, -(-B // numba.get_num_threads())))
    return BATCH_BLOCK


def _chunk_rows(indptr: np.ndarray, n_chunks: int) -> np.ndarray:
    """int64 (n_chunks + 1,): row boundaries cutting the entries into n_chunks runs of about equal nnz."""
    nnz = int(indptr[-1])
    targets = (np.arange(n_chunks + 1, dtype=np.int64) * nnz) // n_chunks  # (n_chunks + 1,)
    bounds = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, indptr.shape[0] - 1
    return bounds


def _indices(W) -> np.ndarray:
    """W.indices as uint32, a free view: indices are in [0, n_in), and an unsigned gather index needs
    no negative-index check."""
    return W.indices.view(np.uint32)


def columns_of(W):
    """Cached column-major structure of W (see :mod:`._columns`)."""
    return columns(
        W, W.indices, lambda: np.repeat(np.arange(W.n_out, dtype=np.int32), np.diff(W.indptr)),
        (W.indptr, W.indices),
    )


def matmul(W, X: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Y = X W^T into the zeroed ``out`` (B, n_out); empty rows stay 0."""
    B = X.shape[0]
    if B < TRANSPOSED_MIN_BATCH:
        by_work(_matmul_rowdot, W.nnz * B, B)(W.indptr, _indices(W), W.values, X, out)
        return out
    YT = matmul_fm(W, transpose(X), np.zeros((W.n_out, B), dtype=np.float32))  # (n_out, B)
    transpose(YT, out)  # (n_out, B) -> (B, n_out)
    return out


def matmul_fm(W, XT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """YT = W XT into the zeroed ``out`` (n_out, B), XT (n_in, B): the batch-transposed kernel, whose
    operands are already in its layout (no transpose)."""
    B = XT.shape[1]
    if W.nnz and B:
        by_work(_matmul_transposed, W.nnz * B, B)(W.indptr, _indices(W), W.values, XT, out, _batch_block(B, False))
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
      sum in ascending row order.
    """
    B = dY.shape[0]
    if W.nnz == 0 or B == 0:
        return out
    if B < TRANSPOSED_MIN_BATCH:
        work = W.nnz * max(B, 1)
        n_chunks = max(1, min(MAX_CHUNKS, W.n_out, work // CHUNK_WORK))
        by_work(_matmul_t_chunks, work, B)(W.indptr, _indices(W), W.values, dY, _chunk_rows(W.indptr, n_chunks), out)
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
        by_work(matmul_t_columns, W.nnz * B, B)(col_ptr, entry, row, W.values, dYT, out)
    return out


def sddmm(W, X: np.ndarray, dY: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dW[e] = sum_b dY[b, row(e)] X[b, indices[e]] into ``out`` (nnz,)."""
    return sddmm_fm(W, transpose(X), transpose(dY), out)


def sddmm_fm(W, XT: np.ndarray, dYT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dW[e] = sum_b dYT[row(e), b] XT[indices[e], b] into ``out`` (nnz,): contiguous dot products
    over the batch, operands already in the kernel's layout."""
    if W.nnz:
        by_work(_sddmm_transposed, W.nnz * XT.shape[1], XT.shape[1])(W.indptr, _indices(W), XT, dYT, out)
    return out
