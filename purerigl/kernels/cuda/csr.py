"""CUDA kernels of the products on CSR (unstructured) matrices.

Row ``i`` stores its entries ``e`` in ``[indptr[i], indptr[i+1])`` at the strictly increasing columns
``indices[e]`` with weights ``values[e]`` (see :mod:`purerigl.formats.csr`). :class:`DeviceCSR` holds
those arrays on the device; the drivers take device arrays and return device arrays (no host copy).

- matmul: one thread per output ``Y[b, i]``, the gathered dot product of row i (an empty row gives 0).
- matmul_t: the column index of :mod:`._columns` (segments = rows; built once per device matrix),
  then one thread per ``dX[b, j]``.
- sddmm: one thread per stored entry e; its row is found by binary search of ``indptr``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import _columns
from ._device import batch_dot, row_dot, segment_of
from ._launch import cuda, launch, to_device


@dataclass(frozen=True)
class DeviceCSR:
    """A CSR matrix on the device: ``indptr`` int64 (n_out + 1,), ``indices`` int32 (nnz,), ``values``
    float32 (nnz,), all device arrays (``values`` may be updated in place).

    The structure (``indptr``, ``indices``) must not be written in place. Device arrays cannot be made
    read-only as the host formats' structure arrays are (:class:`purerigl.formats.SparseFormat`); what
    holds instead: :meth:`from_host` copies (the host matrix and the device one share no memory), no
    operation of the backend writes a device matrix's structure (a topology update builds a new device
    matrix), and the one thing derived from it, ``matmul_t``'s :attr:`column_index`, is kept by the
    matrix it was built from."""

    shape: tuple[int, int]
    indptr: object
    indices: object
    values: object

    @classmethod
    def from_host(cls, W) -> DeviceCSR:
        return cls(tuple(W.shape), to_device(W.indptr), to_device(W.indices), to_device(W.values))

    @functools.cached_property
    def column_index(self):
        """The structure by columns (:func:`._columns.column_index`, segment i = row i), built on the
        first ``matmul_t`` and kept (a step's backward then launches no index kernels)."""
        seg_row = _columns.arange(self.shape[0], 1, np.int32)  # segment i is row i
        return _columns.column_index(self.indptr, seg_row, self.indices, self.shape[1])


@cuda.jit
def _matmul_kernel(indptr, indices, values, X, Y):
    """Forward product, one thread per output; implements :func:`purerigl.kernels.reference.matmul`.

    .. math:: Y[b, i] = \\sum_{e = \\mathrm{indptr}[i]}^{\\mathrm{indptr}[i+1] - 1} v[e] \\, X[b, c[e]]

    Y (B, n_out) is fully written.
    """
    B, n_out = Y.shape
    for q in range(cuda.grid(1), B * n_out, cuda.gridsize(1)):
        b = q // n_out
        i = q % n_out
        Y[b, i] = row_dot(values, indices, indptr[i], indptr[i + 1], X, b)


@cuda.jit
def _sddmm_kernel(indptr, indices, X, dY, dW):
    """Value gradient, one thread per stored entry; implements :func:`purerigl.kernels.reference.sddmm`.

    .. math:: dW[e] = \\sum_b dY[b, i_e] \\, X[b, c[e]], \\qquad \\mathrm{indptr}[i_e] \\le e < \\mathrm{indptr}[i_e + 1]

    ``dW`` (nnz,) is fully written.
    """
    for e in range(cuda.grid(1), dW.shape[0], cuda.gridsize(1)):
        dW[e] = batch_dot(dY, segment_of(indptr, e), X, indices[e])


def matmul(W: DeviceCSR, X, out):
    """Y = X W^T into the device array ``out`` (B, n_out)."""
    launch(_matmul_kernel, out.size, W.indptr, W.indices, W.values, X, out)
    return out


def matmul_t(W: DeviceCSR, dY, out):
    """dX = dY W into the device array ``out`` (B, n_in)."""
    return _columns.matmul_t(W.column_index, W.values, dY, out)


def sddmm(W: DeviceCSR, X, dY, out):
    """dW[e] = sum_b dY[b, row(e)] X[b, indices[e]] into the device array ``out`` (nnz,)."""
    launch(_sddmm_kernel, out.size, W.indptr, W.indices, X, dY, out)
    return out
