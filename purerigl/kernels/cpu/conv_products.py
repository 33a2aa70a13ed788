"""The input gradient of a sparse convolution without the patch-sized W^T dY^T: col2im fused into the product.

Specification: :func:`purerigl.kernels.host_conv.conv_input_grad_fm`,

.. math:: dX = \\mathrm{col2im\\_t}(W^T dY^T), \\qquad
          dX[b, c, y, x] = \\sum_{(o, i, j)} W[o, (c, i, j)] \\, dY[b, o, y + p - i, x + p - j]

for a stride of 1 (terms whose output pixel falls outside the output are absent). Through the patch
matrix this costs a product that writes dX^T (c_in kh kw, B Ho Wo), kh kw times the size of the
input (58 MB for VGG-small's second convolution at batch 64), then a pass that reads it back. Here
every stored weight w = W[o, (c, i, j)] adds w times the output-gradient plane dY[b, o] into the
input-gradient plane dX[b, c] shifted by (i, j), and no patch-sized array exists.

Pitched rows. Let the padded input plane be (Hp, Wp), Hp = Ho + kh - 1 and Wp = Wo + kw - 1 at
stride 1, and copy the output-gradient plane into rows of the same pitch Wp, zeros in the last
kw - 1 columns: S[o, h_o Wp + w_o] = dY[b, o, h_o, w_o]. Output pixel (h_o, w_o) meets kernel
offset (i, j) at padded pixel (h_o + i, w_o + j), flat index (h_o + i) Wp + w_o + j = i Wp + j + (its
index in S). So a weight's whole contribution is one contiguous axpy on the flat padded plane,

.. math:: dX_p[b, c].\\mathrm{flat}[a : a + n] \\mathrel{+}= w \\, S[o, 0 : n], \\qquad a = i W_p + j, \\quad
          n = (H_o - 1) W_p + W_o,

in place of Ho axpys of Wo values (rows of 7 to 32 floats in these networks, which barely
vectorise). The pitch columns of S are zeros, so the positions they reach (real pixels of the plane,
a row further on when they wrap) receive w * 0: nothing, for a finite w. (A weight that is infinite
or NaN therefore also makes NaN the pixels it reaches through those zeros, where the specification
leaves them as the other terms make them.) Stride 1 only: at a stride s > 1 the pixels a weight
reaches are s apart, and the cpu backend composes its own ``matmul_t_fm`` and ``col2im_t`` instead
(:func:`purerigl.kernels.cpu.conv_input_grad_fm`).

Order of the sums. The entries of W are walked column by column, (c, i, j) in row-major order and,
within a column, in the order of its column-major structure (:mod:`._columns`: by output channel for
CSR and Condensed, by diagonal for Diagonal), eight per pass
(:func:`._gather.gather_axpy`). Every input pixel therefore adds its terms in an order fixed by the
structure alone: the same bits on every run, for every thread count and for the serial twin. It is
not the order of the specification (which sums over o first, in W^T dY^T, then over (i, j) in
col2im), so results agree with it to float32 rounding (tests/test_conv_products.py).

Parallelism. Over blocks of samples: a block owns its samples' planes of dX (disjoint writes), and
re-pitches one sample's dY at a time into its own scratch S (c_out x Ho Wp floats, in L2), which
every plane of that sample then reads. Each padded plane is accumulated in a scratch of Hp x Wp
floats (in L1) and its interior copied into dX, so dX comes out unpadded and C-contiguous, with no
zeroed padded array in between.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._gather import gather_axpy
from ._serial import by_work

#: Most blocks of samples a batch is split into (one re-pitched scratch per block).
MAX_BLOCKS = 16


@njit(parallel=True, cache=CACHE)
def _input_grad_pitched(col_ptr, entry, row, values, dYT, dX, kh, kw, p, Ho, Wo, n_blocks):
    """dX[b, c] = the sum over the entries of W of w * dY[b, o] shifted by (i, j), stride 1 (module
    docstring); dX (B, C, H, W) is written whole (no need to zero it).

    col_ptr, entry, row: W's column-major structure (:func:`._columns.columns`), values: ``W.values``
    flattened, dYT (c_out, B * Ho * Wo), p the padding. Parallel over ``n_blocks`` blocks of samples;
    a block accumulates one padded plane (Hp, Wp) at a time in its own scratch (L1-resident), then
    copies its interior out.
    """
    nnz = entry.shape[0]
    col_values = np.empty(nnz, dtype=values.dtype)  # (nnz,) the values in column order, read in sequence
    for q in range(nnz):
        col_values[q] = values[entry[q]]
    B, C, H, W = dX.shape
    Hp, Wp = Ho + kh - 1, Wo + kw - 1  # the padded plane at stride 1
    n_out = dYT.shape[0]
    kk = kh * kw
    HW = Ho * Wo
    n = (Ho - 1) * Wp + Wo  # the length of one weight's axpy on the flat plane
    for blk in prange(n_blocks):
        S = np.zeros((n_out, Ho * Wp), dtype=dYT.dtype)  # one sample's dY in rows of pitch Wp, zeros beyond Wo
        plane = np.empty(Hp * Wp, dtype=dX.dtype)  # one padded plane of dX, flat
        for b in range(blk * B // n_blocks, (blk + 1) * B // n_blocks):
            for o in range(n_out):
                for ho in range(Ho):
                    for wo in range(Wo):
                        S[o, ho * Wp + wo] = dYT[o, b * HW + ho * Wo + wo]
            for c in range(C):
                plane[:] = 0.0
                for i in range(kh):
                    for j in range(kw):
                        k = c * kk + i * kw + j
                        q0 = col_ptr[k]
                        q1 = col_ptr[k + 1]
                        if q0 < q1:
                            a = i * Wp + j
                            gather_axpy(plane[a:a + n], col_values[q0:q1], row[q0:q1], S, 0, n)
                for y in range(H):
                    for x in range(W):
                        dX[b, c, y, x] = plane[(y + p) * Wp + x + p]


def input_grad_stride1(col_ptr, entry, row, values, dYT, X_shape, kh: int, kw: int, padding: int,
                       Ho: int, Wo: int) -> np.ndarray:
    """dX (B, C, H, W), C-contiguous, of a stride-1 convolution from W's column-major structure and
    flattened values and dYT (c_out, B * Ho * Wo), C-contiguous, of the values' dtype; shapes checked."""
    B, C, H, W = (int(n) for n in X_shape)
    if not (entry.shape[0] and B * C and Ho * Wo):
        return np.zeros((B, C, H, W), dtype=dYT.dtype)
    dX = np.empty((B, C, H, W), dtype=dYT.dtype)  # (B, C, H, W), every element written by the kernel
    by_work(_input_grad_pitched, entry.shape[0] * B * Ho * Wo, B * Ho * Wo)(
        col_ptr, entry, row, values, dYT, dX, kh, kw, padding, Ho, Wo, min(B, MAX_BLOCKS))
    return dX
