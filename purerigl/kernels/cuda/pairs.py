"""CUDA kernels of ``grad_at``: the dense gradient ``G = dY^T X`` at arbitrary (row, col) pairs, and
``row_scores``: |G| at a CSR-like set of columns per row.

``grad_at`` is used by GSE to score a sampled set of candidate positions without forming G;
``row_scores`` gives the scores of SRigL's per-row growth candidates (``topk_grad_with_rows``), with
the very float32 dot product the gradient tiles of the growth selections compute (ascending batch
index), so the scores are the ones the selection ranked. Every pair is an independent dot product over
the batch: one thread per pair, no shared writes. The drivers take device arrays and return a device
array (no host copy).
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
    for m in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        g[m] = batch_dot(dY, rows[m], X, cols[m])


def grad_at(X, dY, rows, cols, out):
    """g[m] = sum_b dY[b, rows[m]] X[b, cols[m]] into the device array ``out`` (m,)."""
    launch(_grad_at_kernel, out.shape[0], X, dY, rows, cols, out)
    return out


@cuda.jit
def _row_scores_kernel(X, dY, indptr, cols, out):
    """out[e] = |sum_b dY[b, i] X[b, cols[e]]| for entry e of row i (indptr[i] <= e < indptr[i + 1]);
    one thread per entry, its row found by binary search in indptr."""
    for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        lo = 0
        hi = indptr.shape[0] - 1  # indptr[lo] <= e < indptr[hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if indptr[mid] <= e:
                lo = mid
            else:
                hi = mid
        out[e] = abs(batch_dot(dY, lo, X, cols[e]))


def row_scores(X, dY, indptr, cols, out):
    """|G[i, cols[e]]| for the entries e of each row i of the CSR-like (indptr, cols), into the device
    array ``out`` (indptr[-1],)."""
    if out.shape[0]:
        launch(_row_scores_kernel, out.shape[0], X, dY, indptr, cols, out)
    return out
