"""Cached derived structure of a format object, and the column-major (gather) form of ``matmul_t``.

Structure cache. The kernels use layouts derived from a matrix's structure: its column indices as
uint16 (half the bytes; unsigned, so a gather needs no negative-index wrap check) or as a free uint32
view, and a column-major copy of the structure (below). Building one costs O(nnz), as much as a
product at batch 1, so it is built once per format object and kept in a weak-keyed table: the entry
dies with the object, and it is rebuilt if the object's structure array is *replaced* (an identity
check). The structure cannot be modified in place behind the cache: the formats store their
structure arrays read-only (see :class:`purerigl.formats.SparseFormat`), so a change of structure is a
new object (DST methods build one at every topology change) or a new array, and only ``values`` (read
afresh on every call) changes between steps.

Column-major structure. ``matmul_t`` (dX = dY W) over row-major storage is a scatter. Given, for every
input column j, the list of the stored entries in column j (``col_ptr``, ``entry`` = flat position in
``values.ravel()``, ``entry_row`` = output row), it becomes a gather in which every output element is
owned by one column: dXT[j, :] = sum over the entries e of column j, in ascending row order, of
values[e] dYT[row(e), :]. No private buffers, no reduction, the order of every sum fixed by the
structure alone, so results do not depend on the thread count.
"""

from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._gather import gather_axpy

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cached(W, key: str, source, build):
    """``build()``, computed once per (W, key) while ``source`` (W's structure array, or a tuple of
    them) holds the same objects."""
    sources = source if isinstance(source, tuple) else (source,)
    try:
        entry = _CACHE[W]
    except KeyError:
        entry = _CACHE[W] = {}
    hit = entry.get(key)
    if hit is not None and len(hit[0]) == len(sources) and all(a is b for a, b in zip(hit[0], sources)):
        return hit[1]
    value = build()
    entry[key] = (sources, value)
    return value


def narrow_indices(indices: np.ndarray, n_in: int) -> np.ndarray:
    """Column indices as uint16 when ``n_in <= 65536`` (a copy), else as a uint32 view (no copy).

    Indices are in [0, n_in) (a format invariant), so both are exact.
    """
    if n_in <= 1 << 16:
        return indices.astype(np.uint16)
    return indices.view(np.uint32)


@njit(cache=CACHE)
def _build_columns(flat_cols, entry_rows, n_in):
    """Counting sort of the entries by column (stable: within a column, in storage order = row order).

    flat_cols (nnz,) the column of every entry in storage order, entry_rows (nnz,) its output row.
    Returns col_ptr int64 (n_in + 1,), entry int64 (nnz,) and row int32 (nnz,) in column order.
    """
    nnz = flat_cols.shape[0]
    col_ptr = np.zeros(n_in + 1, dtype=np.int64)
    for e in range(nnz):
        col_ptr[np.int64(flat_cols[e]) + 1] += 1
    for j in range(n_in):
        col_ptr[j + 1] += col_ptr[j]
    fill = col_ptr[:-1].copy()
    entry = np.empty(nnz, dtype=np.int64)
    row = np.empty(nnz, dtype=np.int32)
    for e in range(nnz):
        j = np.int64(flat_cols[e])
        q = fill[j]
        entry[q] = e
        row[q] = entry_rows[e]
        fill[j] = q + 1
    return col_ptr, entry, row


def columns(W, flat_cols, entry_rows, source):
    """Cached (col_ptr, entry, row) of W; ``entry_rows()`` gives the output row of every stored entry,
    ``flat_cols`` its column (an array, or a function giving it when the structure is built).

    ``row`` comes narrowed like the column indices (:func:`narrow_indices`: uint16 when n_out <= 65536).
    """

    def build():
        cols = flat_cols() if callable(flat_cols) else flat_cols
        col_ptr, entry, row = _build_columns(cols, entry_rows(), W.n_in)
        return col_ptr, entry, narrow_indices(row, W.n_out)

    return cached(W, "columns", source, build)


#: Input columns per parallel task of the column-major kernels.
COL_BLOCK = 16

#: Batch items per parallel task of the column-major kernels (the accumulator, a run of one row of
#: dXT, and the eight rows of dYT a pass reads stay in L1 however long the batch: a convolution's batch
#: is its B * Ho * Wo patches).
B_BLOCK = 256


@njit(parallel=True, cache=CACHE)
def matmul_t_columns(col_ptr, entry, row, values, dYT, dXT):
    """dXT[j, :] = sum_{q in column j} values[entry[q]] dYT[row[q], :]; parallel over (batch block,
    column block) tiles, block-major.

    values is ``W.values.ravel()``, dYT is (n_out, B) and dXT is (n_in, B), arriving zeroed. Two
    passes: the values are first gathered into column order (``col_values[q] = values[entry[q]]``,
    one read of each), so that the product, the CSR forward of W^T, reads them sequentially
    (reaching them through ``entry`` inside the product read one cache line per term, from all over
    the values, and ran 1.2-1.9x slower). A run dXT[j, b0:b1] is the accumulator (L1-resident); the
    column's entries are added to it eight per pass (:func:`._gather.gather_axpy`: contiguous axpys
    over the batch block). Every element sums its terms in ascending q, grouped the same way whatever
    the tiling.
    """
    nnz = entry.shape[0]
    col_values = np.empty(nnz, dtype=values.dtype)  # (nnz,) values in column order
    for q in prange(nnz):
        col_values[q] = values[entry[q]]
    n_in = col_ptr.shape[0] - 1
    B = dXT.shape[1]
    n_cols = (n_in + COL_BLOCK - 1) // COL_BLOCK
    n_b = max(1, (B + B_BLOCK - 1) // B_BLOCK)
    for task in prange(n_b * n_cols):  # block-major: the block of dYT, n_out x B_BLOCK, stays in L2
        j0 = (task % n_cols) * COL_BLOCK
        j1 = min(n_in, j0 + COL_BLOCK)
        b0 = (task // n_cols) * B_BLOCK
        b1 = min(B, b0 + B_BLOCK)
        for j in range(j0, j1):
            q0 = col_ptr[j]
            q1 = col_ptr[j + 1]
            gather_axpy(dXT[j, b0:b1], col_values[q0:q1], row[q0:q1], dYT, b0, b1)
