"""CUDA kernels of the products on Condensed (constant fan-in) matrices.

A Condensed matrix stores, for every active row ``rows[r]`` (strictly increasing), exactly ``k``
entries at the strictly increasing columns ``indices[r, :]`` with weights ``values[r, :]``; rows not
listed are ablated (see :mod:`purerigl.formats.condensed`). :class:`DeviceCondensed` holds those
arrays on the device; the drivers take device arrays and return device arrays (no host copy).

- matmul: one thread per output ``Y[b, i]``; it finds ``r`` with ``rows[r] == i`` by binary search
  and sums the row's k products (an ablated row writes 0).
- matmul_t: the column index of :mod:`._columns` (k entries per segment; built once per device
  matrix), then one thread per ``dX[b, j]``.
- sddmm: one thread per stored entry ``(r, t)``, a dot product over the batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import _columns
from ._device import batch_dot, find_sorted, row_dot
from ._launch import cuda, launch, to_device


@dataclass(frozen=True)
class DeviceCondensed:
    """A Condensed matrix on the device: ``rows`` int32 (n_active,), ``indices`` int32 (n_active, k),
    ``values`` float32 (n_active, k), all device arrays (``values`` may be updated in place).

    The structure (``rows``, ``indices``) must not be written in place. Device arrays cannot be made
    read-only as the host formats' structure arrays are (:class:`purerigl.formats.SparseFormat`); what
    holds instead: :meth:`from_host` copies (the host matrix and the device one share no memory), no
    operation of the backend writes a device matrix's structure (a topology update builds a new device
    matrix), and the one thing derived from it, ``matmul_t``'s :attr:`column_index`, is kept by the
    matrix it was built from."""

    shape: tuple[int, int]
    rows: object
    indices: object
    values: object

    @classmethod
    def from_host(cls, W) -> DeviceCondensed:
        return cls(tuple(W.shape), to_device(W.rows), to_device(W.indices), to_device(W.values))

    @functools.cached_property
    def column_index(self):
        """The structure by columns (:func:`._columns.column_index`, segment r = active row r, its k
        entries at [r k, (r + 1) k)), built on the first ``matmul_t`` and kept."""
        n_active, k = self.indices.shape
        seg_ptr = _columns.arange(n_active + 1, k, np.int64)
        return _columns.column_index(seg_ptr, self.rows, self.indices.reshape(n_active * k), self.shape[1])


@cuda.jit
def _matmul_kernel(rows, indices, values, X, Y):
    """Forward product, one thread per output; implements :func:`purerigl.kernels.reference.matmul`.

    .. math:: Y[b, i] = \\sum_{t < k} V[r, t] \\, X[b, C[r, t]] \\ \\text{ if } \\mathrm{rows}[r] = i,
              \\text{ else } 0

    ``indices`` and ``values`` are the flat (n_active * k,) views; Y (B, n_out) is fully written.
    """
    B, n_out = Y.shape
    for q in range(cuda.grid(1), B * n_out, cuda.gridsize(1)):
        b = q // n_out
        i = q % n_out
        r = find_sorted(rows, 0, rows.shape[0], i)
        if r < 0:
            Y[b, i] = 0.0
        else:
            k = indices.shape[0] // rows.shape[0]
            Y[b, i] = row_dot(values, indices, r * k, (r + 1) * k, X, b)


@cuda.jit
def _sddmm_kernel(rows, indices, X, dY, dW):
    """Value gradient, one thread per stored entry; implements :func:`purerigl.kernels.reference.sddmm`.

    .. math:: dW[r, t] = \\sum_b dY[b, \\mathrm{rows}[r]] \\, X[b, C[r, t]]

    ``dW`` (n_active, k) is fully written.
    """
    n_active, k = dW.shape
    for q in range(cuda.grid(1), n_active * k, cuda.gridsize(1)):
        r = q // k
        t = q % k
        dW[r, t] = batch_dot(dY, rows[r], X, indices[r, t])


def matmul(W: DeviceCondensed, X, out):
    """Y = X W^T into the device array ``out`` (B, n_out)."""
    n = W.values.size
    launch(_matmul_kernel, out.size, W.rows, W.indices.reshape(n), W.values.reshape(n), X, out)
    return out


def matmul_t(W: DeviceCondensed, dY, out):
    """dX = dY W into the device array ``out`` (B, n_in)."""
    return _columns.matmul_t(W.column_index, W.values.reshape(W.values.size), dY, out)


def sddmm(W: DeviceCondensed, X, dY, out):
    """dW[r, t] = sum_b dY[b, rows[r]] X[b, indices[r, t]] into the device array ``out`` (n_active, k)."""
    launch(_sddmm_kernel, out.size, W.rows, W.indices, X, dY, out)
    return out
