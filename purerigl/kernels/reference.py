"""The reference backend: the readable specification of every sparse operation, in plain NumPy.

Never compiled, never fast. Every other backend has the same functions with the same signatures and is
tested against an oracle computed by a different route (SciPy CSR products, masked dense products).

One idea carries the whole file: any stored matrix is a list of triples ``(row[e], col[e], value[e])``
laid out in the order of ``W.values.ravel()`` (:func:`purerigl.formats.triples.triples`). With that list, for a weight matrix W
of shape (n_out, n_in), an input X of shape (B, n_in) and an output gradient dY of shape (B, n_out):

.. math::

    Y[b, i]   &= \\sum_j W[i, j] X[b, j]                 &\\text{matmul (forward, } Y = X W^T)\\\\
    dX[b, j]  &= \\sum_i dY[b, i] W[i, j]                &\\text{matmul\\_t (input gradient, } dX = dY W)\\\\
    dW[e]     &= \\sum_b dY[b, row_e] X[b, col_e]        &\\text{sddmm (value gradient at stored entries)}

Sums are accumulated in float64 and returned as float32.

The same three products in the *feature-major* layout, where the batch is the last axis (what a
convolution's transposed patch matrix is, :mod:`purerigl.nn.conv`), are ``matmul_fm``,
``matmul_t_fm`` and ``sddmm_fm``: with X^T (n_in, B) and dY^T (n_out, B),

.. math::

    Y^T[i, b]  &= \\sum_j W[i, j] X^T[j, b]              &\\text{matmul\\_fm } (Y^T = W X^T)\\\\
    dX^T[j, b] &= \\sum_i W[i, j] dY^T[i, b]             &\\text{matmul\\_t\\_fm } (dX^T = W^T dY^T)\\\\
    dW[e]      &= \\sum_b dY^T[row_e, b] X^T[col_e, b]   &\\text{sddmm\\_fm}

i.e. the transposes of the row-layout results for the transposed operands.

The growth selections of DST (``topk_grad``, ``topk_grad_rows``, ``topk_grad_with_rows``,
``diag_grad_norms``: rankings of the
dense gradient G = dY^T X, streamed in tiles and never stored) are specified in
:mod:`purerigl.kernels.reference_growth` and re-exported here, so this module is the whole spec.
"""

from __future__ import annotations

import numpy as np

from ..formats import CSR, Condensed, Diagonal
from ..formats.triples import triples
from . import _checks
from .patch_operand import Patches
from .host_topology import (  # the operations a DST update is written with (registry.UPDATE_OPS)
    count_kept, csr_from_positions, exclusion_of, flat_positions, keep_by_magnitude, remap_by_source, source_of,
)
from .host_selection import (  # registry.UPDATE_OPS, continued
    active_rows, arange, compress, condensed_from_positions, count_true, csr_positions, diagonal_from_offsets,
    flat_of, free_positions, in_rows, in_sorted, indicator, merge_sorted, row_counts, row_norms, top_k,
    top_k_per_row,
)
from .host_transformer import (  # registry.ARRAY_OPS, the transformer's
    add, first_token, first_token_backward, gelu_backward, gelu_forward, layer_norm_backward, layer_norm_forward,
    patchify, prepend_token, prepend_token_backward, self_attention_backward, self_attention_forward, unpatchify,
)
from .host_arrays import (  # the array operations of a training step (registry.ARRAY_OPS)
    adam_step, add_bias, add_bias_fm, bias_grad, bias_grad_fm, dense_grad, dense_matmul, dense_matmul_t,
    fill_zeros, relu_backward, relu_forward, row_dots, scale_rows, sgd_step, softmax_cross_entropy, to_device,
    to_host, transpose, zeros, zeros_like,
)
from .reference_growth import diag_grad_norms, topk_grad, topk_grad_rows, topk_grad_with_rows
from .host_conv import (  # registry.CONV_OPS (part of ARRAY_OPS): the convolutional layers' specification
    avgpool_backward, avgpool_forward, batchnorm_backward, batchnorm_forward, col2im, col2im_t, conv_input_grad_fm,
    fm_to_nchw, global_avgpool_backward, global_avgpool_forward, im2col, im2col_t, maxpool_backward, maxpool_forward,
    nchw_to_fm, nchw_to_rows, rows_to_nchw, takes_patches,
)

__all__ = [
    "NAME",
    "diag_grad_norms",
    "grad_at",
    "matmul",
    "matmul_fm",
    "matmul_t",
    "matmul_t_fm",
    "sddmm",
    "sddmm_fm",
    "topk_grad",
    "topk_grad_rows",
    "topk_grad_with_rows",
    # the array operations of a training step, on host arrays (registry.ARRAY_OPS)
    "adam_step", "add_bias", "add_bias_fm", "bias_grad", "bias_grad_fm", "dense_grad", "dense_matmul",
    "dense_matmul_t", "fill_zeros", "relu_backward", "relu_forward", "row_dots", "scale_rows", "sgd_step",
    "softmax_cross_entropy", "to_device", "to_host", "transpose", "zeros", "zeros_like",
    # the convolutional layers' array operations, on host arrays (registry.CONV_OPS)
    "avgpool_backward", "avgpool_forward", "batchnorm_backward", "batchnorm_forward", "col2im", "col2im_t",
    "conv_input_grad_fm",
    "fm_to_nchw", "global_avgpool_backward", "global_avgpool_forward", "im2col", "im2col_t", "maxpool_backward",
    "maxpool_forward", "nchw_to_fm", "nchw_to_rows", "rows_to_nchw", "takes_patches",
    # the transformer's array operations, on host arrays (registry.ARRAY_OPS)
    "add", "first_token", "first_token_backward", "gelu_backward", "gelu_forward", "layer_norm_backward",
    "layer_norm_forward", "patchify", "prepend_token", "prepend_token_backward", "self_attention_backward",
    "self_attention_forward", "unpatchify",
    # the operations a DST update is written with, on host arrays (registry.UPDATE_OPS)
    "active_rows", "arange", "compress", "condensed_from_positions", "count_kept", "count_true",
    "csr_from_positions", "csr_positions", "diagonal_from_offsets", "exclusion_of", "flat_of",
    "flat_positions", "free_positions", "in_rows", "in_sorted", "indicator", "keep_by_magnitude",
    "merge_sorted", "remap_by_source", "row_counts", "row_norms", "source_of", "top_k", "top_k_per_row",
]

NAME = "reference"


def matmul(W, X, out=None):
    """Forward product ``Y = X W^T``.

    .. math:: Y[b, i] = \\sum_{(i, j, w) \\in W} w \\, X[b, j]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    X : float32 ndarray, shape (B, n_in)
    out : float32 ndarray, shape (B, n_out), optional

    Returns
    -------
    Y : float32 ndarray, shape (B, n_out). Rows of W that store nothing give 0.
    """
    X, out = _checks.matmul_operands(W, X, out)
    rows, cols, vals = triples(W)
    Y = np.zeros(out.shape, dtype=np.float64)
    contrib = X[:, cols].astype(np.float64) * vals  # (B, nnz)
    np.add.at(Y, (slice(None), rows), contrib)
    out[...] = Y
    return out


def matmul_t(W, dY, out=None):
    """Input gradient ``dX = dY W``.

    .. math:: dX[b, j] = \\sum_{(i, j, w) \\in W} w \\, dY[b, i]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    dY : float32 ndarray, shape (B, n_out)
    out : float32 ndarray, shape (B, n_in), optional

    Returns
    -------
    dX : float32 ndarray, shape (B, n_in)
    """
    dY, out = _checks.matmul_t_operands(W, dY, out)
    rows, cols, vals = triples(W)
    dX = np.zeros(out.shape, dtype=np.float64)
    contrib = dY[:, rows].astype(np.float64) * vals  # (B, nnz)
    np.add.at(dX, (slice(None), cols), contrib)
    out[...] = dX
    return out


def sddmm(W, X, dY, out=None):
    """Gradient of the loss with respect to each stored value (sampled dense-dense product).

    .. math:: dW[e] = \\sum_b dY[b, \\mathrm{row}_e] \\, X[b, \\mathrm{col}_e]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in); only its structure is read
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    out : float32 ndarray shaped like ``W.values``, optional

    Returns
    -------
    dW : float32 ndarray shaped like ``W.values``
    """
    X, dY, out = _checks.sddmm_operands(W, X, dY, out)
    rows, cols, _ = triples(W)
    out[...] = _dot_columns(dY, rows, X, cols).reshape(out.shape)
    return out


def _built(XT):
    """``XT`` itself, or the patch matrix ``im2col_t(X)`` a :class:`~purerigl.kernels.patch_operand.Patches`
    stands for: what the products with a Patches mean (the cpu backend computes them from X)."""
    if isinstance(XT, Patches):
        return im2col_t(XT.X, XT.kh, XT.kw, XT.stride, XT.padding)
    return XT


def matmul_fm(W, XT, out=None):
    """Forward product in the feature-major layout, ``Y^T = W X^T``.

    .. math:: Y^T[i, b] = \\sum_{(i, j, w) \\in W} w \\, X^T[j, b]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    XT : float32 ndarray, shape (n_in, B), or a convolution's
        :class:`~purerigl.kernels.patch_operand.Patches`, which stands for ``im2col_t(X)`` (built here)
    out : float32 ndarray, shape (n_out, B), optional

    Returns
    -------
    YT : float32 ndarray, shape (n_out, B). Rows of W that store nothing give 0.
    """
    XT, out = _checks.matmul_fm_operands(W, _built(XT), out)
    rows, cols, vals = triples(W)
    YT = np.zeros(out.shape, dtype=np.float64)
    contrib = XT[cols].astype(np.float64) * vals[:, None]  # (nnz, B): row e is w_e X^T[col_e]
    np.add.at(YT, rows, contrib)
    out[...] = YT
    return out


def matmul_t_fm(W, dYT, out=None):
    """Input gradient in the feature-major layout, ``dX^T = W^T dY^T``.

    .. math:: dX^T[j, b] = \\sum_{(i, j, w) \\in W} w \\, dY^T[i, b]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    dYT : float32 ndarray, shape (n_out, B)
    out : float32 ndarray, shape (n_in, B), optional

    Returns
    -------
    dXT : float32 ndarray, shape (n_in, B)
    """
    dYT, out = _checks.matmul_t_fm_operands(W, dYT, out)
    rows, cols, vals = triples(W)
    dXT = np.zeros(out.shape, dtype=np.float64)
    contrib = dYT[rows].astype(np.float64) * vals[:, None]  # (nnz, B): row e is w_e dY^T[row_e]
    np.add.at(dXT, cols, contrib)
    out[...] = dXT
    return out


def sddmm_fm(W, XT, dYT, out=None):
    """Value gradient at the stored positions, feature-major operands.

    .. math:: dW[e] = \\sum_b dY^T[\\mathrm{row}_e, b] \\, X^T[\\mathrm{col}_e, b]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in); only its structure is read
    XT : float32 ndarray, shape (n_in, B), or a convolution's
        :class:`~purerigl.kernels.patch_operand.Patches` (built here, as in :func:`matmul_fm`)
    dYT : float32 ndarray, shape (n_out, B)
    out : float32 ndarray shaped like ``W.values``, optional

    Returns
    -------
    dW : float32 ndarray shaped like ``W.values``
    """
    XT, dYT, out = _checks.sddmm_fm_operands(W, _built(XT), dYT, out)
    rows, cols, _ = triples(W)
    g = np.einsum("mb,mb->m", dYT[rows].astype(np.float64), XT[cols].astype(np.float64))  # (nnz,)
    out[...] = g.reshape(out.shape)
    return out


def grad_at(X, dY, rows, cols, out=None):
    """The dense gradient ``G = dY^T X`` at arbitrary positions, without forming G.

    .. math:: g[m] = \\sum_b dY[b, \\mathrm{rows}[m]] \\, X[b, \\mathrm{cols}[m]]

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    rows, cols : integer ndarrays, shape (m,), in [0, n_out) and [0, n_in)
    out : float32 ndarray, shape (m,), optional

    Returns
    -------
    g : float32 ndarray, shape (m,)
    """
    X, dY, rows, cols, out = _checks.grad_at_operands(X, dY, rows, cols, out)
    out[...] = _dot_columns(dY, rows, X, cols)
    return out


def _dot_columns(A, a_cols, B, b_cols):
    """g[m] = sum_b A[b, a_cols[m]] * B[b, b_cols[m]], in float64; the core of sddmm and grad_at."""
    return np.einsum("bm,bm->m", A[:, a_cols].astype(np.float64), B[:, b_cols].astype(np.float64))
