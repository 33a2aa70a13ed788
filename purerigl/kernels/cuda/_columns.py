"""The input gradient ``dX = dY W`` of the row-stored formats (Condensed, CSR), without atomics.

Condensed and CSR store W by rows: segment s holds the entries ``e`` in ``[seg_ptr[s], seg_ptr[s+1])``
of output row ``seg_row[s]``, at the strictly increasing columns ``indices[e]``. A thread per output
``dX[b, j]`` needs W by *columns*, so :func:`column_index` first builds a column index (the structure
of W^T, like CSC), then :func:`matmul_t` gathers along it:

.. math::

    dX[b, j] = \\sum_{p = \\mathrm{col\\_ptr}[j]}^{\\mathrm{col\\_ptr}[j+1] - 1}
               v[\\mathrm{col\\_entry}[p]] \\; dY[b, \\mathrm{col\\_row}[p]]

Why no scatter: ``dX[b, indices[e]] += v[e] dY[b, row]`` from a thread per stored row would race
between rows (it needs atomics, and float atomics make the summation order, hence the bits, depend on
timing). The column index instead costs two passes of one thread per column, each a binary search of
every stored row (:func:`~purerigl.kernels.cuda._device.find_sorted`, relying on the format invariant
that a row's indices are strictly increasing), plus a serial prefix sum over the n_in column counts.
That is O(n_in * n_rows * log k) work on the structure only, independent of the batch; each column
then sums its entries in ascending row order, so results are the same on every run. The index depends
on the structure alone, which a device matrix never changes in place: :class:`~.csr.DeviceCSR` and
:class:`~.condensed.DeviceCondensed` build it on their first ``matmul_t`` and keep it (a topology
update builds a new device matrix, hence a new index).
"""

from __future__ import annotations

import numpy as np

from ._device import find_sorted
from ._launch import cuda, empty, launch


@cuda.jit(device=True)
def _walk_column(seg_ptr, seg_row, indices, j, col_entry, col_row, p, write):
    """Count (and with ``write`` record from position p on) the stored entries of column j, row by row."""
    count = 0
    for s in range(seg_row.shape[0]):
        e = find_sorted(indices, seg_ptr[s], seg_ptr[s + 1], j)
        if e >= 0:
            if write:
                col_entry[p + count] = e
                col_row[p + count] = seg_row[s]
            count += 1
    return count


@cuda.jit
def _count_kernel(seg_ptr, seg_row, indices, col_ptr):
    """col_ptr[j + 1] = number of stored entries in column j; one thread per column."""
    for j in range(cuda.grid(1), col_ptr.shape[0] - 1, cuda.gridsize(1)):
        col_ptr[j + 1] = _walk_column(seg_ptr, seg_row, indices, j, col_ptr, col_ptr, 0, False)


@cuda.jit
def _prefix_sum_kernel(col_ptr):
    """col_ptr[0] = 0, col_ptr[j + 1] += col_ptr[j]: a serial scan by one thread (O(n_in), tiny)."""
    if cuda.grid(1) == 0:
        col_ptr[0] = 0
        for j in range(1, col_ptr.shape[0]):
            col_ptr[j] += col_ptr[j - 1]


@cuda.jit
def _fill_kernel(seg_ptr, seg_row, indices, col_ptr, col_entry, col_row):
    """col_entry / col_row of column j at positions [col_ptr[j], col_ptr[j+1]); one thread per column."""
    for j in range(cuda.grid(1), col_ptr.shape[0] - 1, cuda.gridsize(1)):
        _walk_column(seg_ptr, seg_row, indices, j, col_entry, col_row, col_ptr[j], True)


@cuda.jit
def _matmul_t_kernel(col_ptr, col_entry, col_row, values, dY, dX):
    """dX[b, j] = sum_p values[col_entry[p]] dY[b, col_row[p]] over column j; one thread per (b, j).

    Implements :func:`purerigl.kernels.reference.matmul_t` on the column index.
    """
    B, n_in = dX.shape
    for q in range(cuda.grid(1), B * n_in, cuda.gridsize(1)):
        b = q // n_in
        j = q % n_in
        s = np.float32(0.0)
        for p in range(col_ptr[j], col_ptr[j + 1]):
            s += values[col_entry[p]] * dY[b, col_row[p]]
        dX[b, j] = s


@cuda.jit
def _arange_kernel(a, step):
    """a[i] = i * step; one thread per element."""
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = i * step


def arange(n: int, step: int, dtype):
    """Device array ``[0, step, 2 step, ...]`` of length n, built on the device (no host copy)."""
    a = empty((n,), dtype)
    launch(_arange_kernel, n, a, step)
    return a


def column_index(seg_ptr, seg_row, indices, n_in: int):
    """(col_ptr int64 (n_in + 1,), col_entry int64 (nnz,), col_row int32 (nnz,)) of row-stored W.

    ``seg_ptr`` int64 (n_seg + 1,), ``seg_row`` int32 (n_seg,) and the flat ``indices`` (nnz,) are
    device arrays; so are the results. Entries of a column are listed in ascending row order.
    """
    nnz = indices.shape[0]
    col_ptr = empty((n_in + 1,), np.int64)
    launch(_count_kernel, n_in, seg_ptr, seg_row, indices, col_ptr)
    launch(_prefix_sum_kernel, 1, col_ptr)
    col_entry = empty((max(nnz, 1),), np.int64)
    col_row = empty((max(nnz, 1),), np.int32)
    launch(_fill_kernel, n_in, seg_ptr, seg_row, indices, col_ptr, col_entry, col_row)
    return col_ptr, col_entry, col_row


def matmul_t(index, values, dY, out):
    """dX = dY W into the device array ``out`` (B, n_in) for row-stored W: ``index`` is W's
    :func:`column_index` (col_ptr, col_entry, col_row), ``values`` its flat values (nnz,). The index
    holds positions into ``values``, never values: values updated in place are read afresh."""
    B, n_in = out.shape
    col_ptr, col_entry, col_row = index
    launch(_matmul_t_kernel, B * n_in, col_ptr, col_entry, col_row, values, dY, out)
    return out
