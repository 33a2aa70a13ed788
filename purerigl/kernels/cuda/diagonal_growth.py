"""numba.cuda kernels of diag-rigl's growth score: the L2 norm of G = dY^T X along each wrap-around diagonal.

Implements :func:`purerigl.kernels.reference.diag_grad_norms` on the tiles of :mod:`.growth` (G is
never stored whole; the tile size and launch limits are that module's, read at each call):

With P = max(n_out, n_in), position (i, j) lies on diagonal :math:`d = (i - j) \\bmod n_{out}` (tall or
square) or :math:`d = (j - i) \\bmod n_{in}` (wide), and a row of G meets each diagonal at most once.
One work item per diagonal adds, tile after tile and row after row, the float64 squares of its
entries:

.. math:: S[d]^2 = \\sum_{i} G[i, j_d(i)]^2, \\qquad j_d(i) = (i - d) \\bmod n_{out}
          \\ (\\text{if} < n_{in}) \\quad \\text{or} \\quad (i + d) \\bmod n_{in}

a private accumulator in a fixed order: no atomics. Extra device memory O(P + tile).
"""

from __future__ import annotations

import math

import numpy as np

from . import _growth_tiles as T
from . import growth
from ._launch import cuda


@cuda.jit
def _fold_diagonals(G, r0, n_rows, n_out, sum_sq):
    """sum_sq[d] += G[t, j]^2 (float64) for the entry of each tile row t (row i = r0 + t) on diagonal d:
    j = (i - d) mod n_out if that is < n_in (tall or square), else j = (i + d) mod n_in (wide)."""
    n_in = G.shape[1]
    for d in range(cuda.grid(1), sum_sq.shape[0], cuda.gridsize(1)):
        acc = sum_sq[d]
        for t in range(n_rows):
            i = r0 + t
            if n_out >= n_in:
                j = (i - d + n_out) % n_out
                if j >= n_in:
                    continue
            else:
                j = (i + d) % n_in
            g = np.float64(G[t, j])
            acc += g * g
        sum_sq[d] = acc


@cuda.jit
def _sqrt_to_float32(sum_sq, out):
    """out[d] = float32(sqrt(sum_sq[d])) (the float64 root, correctly rounded, then rounded to float32)."""
    for d in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[d] = np.float32(math.sqrt(sum_sq[d]))


def diag_grad_norms(X, dY):
    """float32 (P,): the L2 norm of G along each wrap-around diagonal, P = max(n_out, n_in).

    Implements :func:`purerigl.kernels.reference.diag_grad_norms` (operands already checked).
    """
    return diag_grad_norms_device(cuda.to_device(X), cuda.to_device(dY)).copy_to_host()


def diag_grad_norms_device(d_X, d_dY):
    """:func:`diag_grad_norms` on device arrays: a float32 device array (P,), nothing copied
    (operands already checked)."""
    n_out, n_in = d_dY.shape[1], d_X.shape[1]
    P = max(n_out, n_in)
    out = cuda.device_array(P, dtype=np.float32)
    sum_sq = cuda.device_array(P, dtype=np.float64)
    growth._run(T.fill, P, sum_sq, 0, P, np.float64(0.0))
    if n_out and n_in:
        all_rows = growth._arange(n_out)
        tile_rows = growth._tile_rows(n_in, n_out)
        G = cuda.device_array((tile_rows, n_in), dtype=np.float32)
        for r0 in range(0, n_out, tile_rows):
            n_rows = min(tile_rows, n_out - r0)
            growth._run(T.gradient_tile, n_rows * n_in, d_X, d_dY, all_rows, r0, n_rows, G)
            growth._run(_fold_diagonals, P, G, r0, n_rows, n_out, sum_sq)
    growth._run(_sqrt_to_float32, P, sum_sq, out)
    return out
