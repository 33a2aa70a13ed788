"""A sparse convolution's input gradient on device arrays, col2im fused into the product: one gather.

Specification: :func:`purerigl.kernels.host_conv.conv_input_grad_fm`,

.. math:: dX[b, c, y, x] = \\sum_{(i, j) :\\ s h_o + i - p = y,\\ s w_o + j - p = x}\\
          \\sum_{o} W[o, (c, i, j)] \\, dY^T[o, (b, h_o, w_o)]

The composition col2im_t(W^T dY^T) writes W^T dY^T (c_in kh kw, B Ho Wo), kh kw times the input's
size, to device memory and reads it back. Here one thread per input row (b, c, y) computes each pixel
of it directly: for every kernel offset (i, j) whose output pixel (h_o, w_o) exists (the test of
:mod:`.patches`'s col2im), it adds the stored entries of filter-matrix column (c, i, j) times the
output gradient there, so W^T dY^T exists only one term at a time, in a register. A gather: every
output is written by one thread, no atomics, any stride.

Column access per format. Condensed and CSR store W by rows; their device matrices build the column
index (the structure of W^T: :func:`._columns.column_index`, kept per matrix) on first use, and the
kernel walks column (c, i, j)'s entries in ascending row order. A Diagonal column needs no index: a
wide W (n_out < n_in) holds, on diagonal d_k, the entry of column k' at row t = (k' - d_k) mod n_in
when t < n_out; a tall or square one the entry at row (k' + d_k) mod n_out, value V[k, k'].

Order of the sums: offsets (i, j) in row-major order, and within one the column's entries in storage
order, float32 from 0: the same on every run. Not the composition's order (which sums each column of
W^T dY^T first), so the two agree to float32 rounding (tests/test_cuda_conv.py, on the simulator).
"""

from __future__ import annotations

import numpy as np

from ._launch import cuda, empty, launch


@cuda.jit(device=True)
def _output_index(b, y, x, i, j, s, p, Ho, Wo):
    """The column (b, h_o, w_o) of dY^T whose patch took input pixel (y, x) at offset (i, j), or -1."""
    yy = y + p - i
    xx = x + p - j
    if yy < 0 or xx < 0 or yy % s != 0 or xx % s != 0 or yy // s >= Ho or xx // s >= Wo:
        return -1
    return (b * Ho + yy // s) * Wo + xx // s


@cuda.jit
def _input_grad_columns(col_ptr, col_entry, col_row, values, dYT, dX, kh, kw, s, p, Ho, Wo):
    """Row-stored W (Condensed, CSR) through its column index; one thread per input row (b, c, y)."""
    B, C, H, W = dX.shape
    for q in range(cuda.grid(1), B * C * H, cuda.gridsize(1)):
        y = q % H
        c = (q // H) % C
        b = q // (H * C)
        for x in range(W):
            acc = np.float32(0.0)
            for i in range(kh):
                for j in range(kw):
                    r = _output_index(b, y, x, i, j, s, p, Ho, Wo)
                    if r >= 0:
                        k = (c * kh + i) * kw + j
                        for e in range(col_ptr[k], col_ptr[k + 1]):
                            acc += values[col_entry[e]] * dYT[col_row[e], r]
            dX[b, c, y, x] = acc


@cuda.jit
def _input_grad_diagonals(offsets, V, dYT, dX, kh, kw, s, p, Ho, Wo, n_out, n_in):
    """Diagonal W: column k's entries computed from the offsets; one thread per input row (b, c, y)."""
    B, C, H, W = dX.shape
    wide = n_out < n_in
    for q in range(cuda.grid(1), B * C * H, cuda.gridsize(1)):
        y = q % H
        c = (q // H) % C
        b = q // (H * C)
        for x in range(W):
            acc = np.float32(0.0)
            for i in range(kh):
                for j in range(kw):
                    r = _output_index(b, y, x, i, j, s, p, Ho, Wo)
                    if r >= 0:
                        k = (c * kh + i) * kw + j
                        for kd in range(offsets.shape[0]):
                            d = offsets[kd]
                            if wide:
                                t = (k - d + n_in) % n_in  # the row of column k on diagonal d
                                if t < n_out:
                                    acc += V[kd, t] * dYT[t, r]
                            else:
                                acc += V[kd, k] * dYT[(k + d) % n_out, r]
            dX[b, c, y, x] = acc


def input_grad(Wd, dYT, X_shape, kh: int, kw: int, stride: int, padding: int, Ho: int, Wo: int):
    """dX (B, c_in, H, W), a new device array, from the device matrix ``Wd`` (DeviceCondensed,
    DeviceCSR: through their ``column_index``; DeviceDiagonal: ``offsets`` and ``values``) and the
    device array dYT (c_out, B * Ho * Wo); shapes already checked."""
    B, C, H, W = (int(n) for n in X_shape)
    dX = empty((B, C, H, W), np.float32)
    n_out, n_in = (int(n) for n in Wd.shape)
    if hasattr(Wd, "offsets"):
        launch(_input_grad_diagonals, B * C * H, Wd.offsets, Wd.values, dYT, dX, kh, kw, stride, padding, Ho, Wo,
               n_out, n_in)
    else:
        col_ptr, col_entry, col_row = Wd.column_index
        values = Wd.values.reshape(Wd.values.size)  # (nnz,) the flat values the index points into
        launch(_input_grad_columns, B * C * H, col_ptr, col_entry, col_row, values, dYT, dX, kh, kw, stride,
               padding, Ho, Wo)
    return dX
