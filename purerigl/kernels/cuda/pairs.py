"""CUDA kernel of ``grad_at``: the dense gradient ``G = dY^T X`` at arbitrary (row, col) pairs.

Used by GSE to score a sampled set of candidate positions without forming G. Every pair is an
independent dot product over the batch: one thread per pair, no shared writes. The driver takes
device arrays and returns a device array (no host copy).
"""

from __future__ import annotations

from ._device import batch_dot
from ._launch import cuda, launch


@cuda.jit
def _grad_at_kernel(X, dY, rows, cols, g):
    """g[m] = sum_b dY[b, rows[m]] X[b, cols[m]]; one thread per pair m.

    Implements :func:`purerigl.kernels.reference.grad_at`.

    .. math:: g[m] = \\sum_b dY[b, \\mathrm{rows}[m]] \\, X[b, \\mathrm{cols}[m]]
    """
    m = cuda.grid(1)
    if m < g.shape[0]:
        g[m] = batch_dot(dY, rows[m], X, cols[m])


def grad_at(X, dY, rows, cols, out):
    """g[m] = sum_b dY[b, rows[m]] X[b, cols[m]] into the device array ``out`` (m,)."""
    launch(_grad_at_kernel, out.shape[0], X, dY, rows, cols, out)
    return out
