"""The Numba CPU-parallel backend: the reference operations, compiled and run on all cores.

Same functions, signatures and semantics as :mod:`purerigl.kernels.reference`; operands are checked
by the same :mod:`purerigl.kernels._checks` functions, so both backends accept and refuse exactly the
same inputs. This file only checks and dispatches on the format; the kernels live one module per
format (:mod:`.condensed`, :mod:`.diagonal`, :mod:`.csr`) plus :mod:`.pairs` for ``grad_at`` and
:mod:`.growth` for the growth selections (``topk_grad``, ``topk_grad_rows``, ``topk_grad_with_rows``,
``diag_grad_norms``). The operations of a DST update are the host versions
(:mod:`purerigl.kernels.host_topology`, :mod:`purerigl.kernels.host_selection`), except the set lookups
``in_sorted``, ``source_of`` and ``remap_by_source``: linear merges in Numba (:mod:`.sets`).
The feature-major products (``matmul_fm``, ``matmul_t_fm``, ``sddmm_fm``: batch last) are the batched
kernels of :mod:`.condensed` and :mod:`.csr` called without their operand transposes, and the gathers
of :mod:`.diagonal_fm`.

Sums are accumulated in float32 (the reference uses float64), so results agree with the reference to
float32 rounding, not bit for bit. Parallel loops run over independent outputs with private
accumulators and fixed partitions: no atomics, and the same inputs give bit-identical results on every
run. Kernels compile on first use and are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np

from ...errors import FormatTypeError
from ...formats import CSR, Condensed, Diagonal
from .. import _checks
from ..host_topology import (  # the operations a DST update is written with (registry.UPDATE_OPS)
    count_kept, csr_from_positions, exclusion_of, flat_positions, keep_by_magnitude,
)
from ..host_selection import (  # registry.UPDATE_OPS, continued
    active_rows, arange, compress, condensed_from_positions, count_true, csr_positions, diagonal_from_offsets,
    flat_of, free_positions, in_rows, indicator, merge_sorted, row_counts, row_norms, top_k, top_k_per_row,
)
from .sets import in_sorted, remap_by_source, source_of  # registry.UPDATE_OPS: Numba merges of the host spec
from ..host_conv import conv_input_grad_operands  # the checks of conv_input_grad_fm
from ..host_transformer import (  # registry.ARRAY_OPS, the transformer's
    add, first_token, first_token_backward, layer_norm_backward, layer_norm_forward,
    patchify, prepend_token, prepend_token_backward, self_attention_backward, self_attention_forward, unpatchify,
)
from ..host_arrays import (  # the array operations of a training step (registry.ARRAY_OPS)
    adam_step, add_bias, add_bias_fm, bias_grad, bias_grad_fm, dense_grad, dense_matmul, dense_matmul_t,
    fill_zeros, row_dots, scale_rows, sgd_step, softmax_cross_entropy, to_device,
    to_host, zeros, zeros_like,
)
from .conv_direct import takes_patches  # registry.CONV_OPS: whether matmul_fm / sddmm_fm read Patches from X
from . import _layout, condensed, conv_direct, conv_products, csr, diagonal, diagonal_fm, growth, host_heap, pairs
from ..patch_operand import Patches
from ._layout import transpose  # the array op: the spec's result, by NumPy or the blocked kernel by shape
from .elementwise import gelu_backward, gelu_forward, relu_backward, relu_forward  # Numba loops of the specs
from .conv_ops import (  # registry.CONV_OPS (part of ARRAY_OPS): the convolutional layers', Numba kernels
    avgpool_backward, avgpool_forward, batchnorm_backward, batchnorm_forward, col2im, col2im_t, fm_to_nchw,
    global_avgpool_backward, global_avgpool_forward, im2col, im2col_t, maxpool_backward, maxpool_forward,
    nchw_to_fm, nchw_to_rows, rows_to_nchw,
)

NAME = "cpu"

__all__ = [
    "NAME", "diag_grad_norms", "grad_at", "matmul", "matmul_t", "sddmm", "topk_grad", "topk_grad_rows",
    "topk_grad_with_rows",
    "matmul_fm", "matmul_t_fm", "sddmm_fm",
    # a convolution's input gradient, W^T dY^T and col2im fused (registry.CONV_OPS)
    "conv_input_grad_fm",
    # the array operations of a training step, on host arrays (registry.ARRAY_OPS)
    "adam_step", "add_bias", "add_bias_fm", "bias_grad", "bias_grad_fm", "dense_grad", "dense_matmul",
    "dense_matmul_t", "fill_zeros", "relu_backward", "relu_forward", "row_dots", "scale_rows", "sgd_step",
    "softmax_cross_entropy", "to_device", "to_host", "transpose", "zeros", "zeros_like",
    # the convolutional layers' array operations, on host arrays (registry.CONV_OPS)
    "avgpool_backward", "avgpool_forward", "batchnorm_backward", "batchnorm_forward", "col2im", "col2im_t",
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


#: What became of the host allocator setting (:mod:`.host_heap`: large freed blocks kept in the heap), in
#: words: "installed: ..." or why not. Set once, when this backend is first imported.
HOST_HEAP = host_heap.install()

#: Batches below this size run the feature-major products through the row-layout kernels (a gathered
#: dot product per output; the batched kernels' axpys over a batch of 1-3 are short and slow: 0.35x
#: dense at batch 1 against 1.2x). The same threshold as the formats' ``TRANSPOSED_MIN_BATCH``.
ROW_KERNEL_BATCH = condensed.TRANSPOSED_MIN_BATCH


def _zeros(B: int, n: int) -> np.ndarray:
    """A zeroed float32 (B, n) result of a row-layout kernel."""
    return np.zeros((B, n), dtype=np.float32)


def _module_for(W):
    """The kernel module of W's format (the operand checks have already accepted W)."""
    if isinstance(W, Condensed):
        return condensed
    if isinstance(W, Diagonal):
        return diagonal
    if isinstance(W, CSR):
        return csr
    raise FormatTypeError(f"the cpu backend has no kernels for {type(W).__name__}")


def _fm_module_for(W):
    """The module holding the feature-major kernels of W's format."""
    module = _module_for(W)
    return diagonal_fm if module is diagonal else module


def matmul(W, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Forward product ``Y = X W^T``.

    Implements :func:`purerigl.kernels.reference.matmul`.

    .. math:: Y[b, i] = \\sum_j W[i, j] \\, X[b, j]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    X : float32 ndarray, shape (B, n_in)
    out : float32 ndarray, shape (B, n_out), optional
        C-contiguous; overwritten.

    Returns
    -------
    Y : float32 ndarray, shape (B, n_out). Rows of W that store nothing give 0.
    """
    X, out = _checks.matmul_operands(W, X, out)
    return _module_for(W).matmul(W, X, out)


def matmul_t(W, dY: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Input gradient ``dX = dY W``.

    Implements :func:`purerigl.kernels.reference.matmul_t`.

    .. math:: dX[b, j] = \\sum_i dY[b, i] \\, W[i, j]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    dY : float32 ndarray, shape (B, n_out)
    out : float32 ndarray, shape (B, n_in), optional
        C-contiguous; overwritten.

    Returns
    -------
    dX : float32 ndarray, shape (B, n_in)
    """
    dY, out = _checks.matmul_t_operands(W, dY, out)
    return _module_for(W).matmul_t(W, dY, out)


def sddmm(W, X: np.ndarray, dY: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient with respect to each stored value (sampled dense-dense product).

    Implements :func:`purerigl.kernels.reference.sddmm`.

    .. math:: dW[e] = \\sum_b dY[b, \\mathrm{row}_e] \\, X[b, \\mathrm{col}_e]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in); only its structure is read
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    out : float32 ndarray shaped like ``W.values``, optional
        C-contiguous; overwritten.

    Returns
    -------
    dW : float32 ndarray shaped like ``W.values``
    """
    X, dY, out = _checks.sddmm_operands(W, X, dY, out)
    return _module_for(W).sddmm(W, X, dY, out)


def matmul_fm(W, XT: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Forward product in the feature-major layout, ``Y^T = W X^T``.

    Implements :func:`purerigl.kernels.reference.matmul_fm`.

    .. math:: Y^T[i, b] = \\sum_j W[i, j] \\, X^T[j, b]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    XT : float32 ndarray, shape (n_in, B)
    out : float32 ndarray, shape (n_out, B), optional
        C-contiguous; overwritten.

    Returns
    -------
    YT : float32 ndarray, shape (n_out, B). Rows of W that store nothing give 0.
    """
    if isinstance(XT, Patches):  # a convolution's patch matrix, held as its input (conv_direct)
        if XT.shape[1] >= ROW_KERNEL_BATCH and takes_patches(W, XT.stride, XT.dtype):
            return conv_direct.matmul_patches(W, XT, _checks.matmul_patches_operands(W, XT, out))
        XT = im2col_t(XT.X, XT.kh, XT.kw, XT.stride, XT.padding)  # built: the product through P^T
    XT, out = _checks.matmul_fm_operands(W, XT, out)
    if XT.shape[1] < ROW_KERNEL_BATCH:  # the row kernels' regime: X^T (n_in, 1) is X (1, n_in) as it lies
        return _layout.transpose(_module_for(W).matmul(W, _layout.transpose(XT), _zeros(XT.shape[1], W.n_out)), out)
    return _fm_module_for(W).matmul_fm(W, XT, out)


def matmul_t_fm(W, dYT: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Input gradient in the feature-major layout, ``dX^T = W^T dY^T``.

    Implements :func:`purerigl.kernels.reference.matmul_t_fm`.

    .. math:: dX^T[j, b] = \\sum_i W[i, j] \\, dY^T[i, b]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    dYT : float32 ndarray, shape (n_out, B)
    out : float32 ndarray, shape (n_in, B), optional
        C-contiguous; overwritten.

    Returns
    -------
    dXT : float32 ndarray, shape (n_in, B)
    """
    dYT, out = _checks.matmul_t_fm_operands(W, dYT, out)
    if dYT.shape[1] < ROW_KERNEL_BATCH:  # the row kernels' regime (see matmul_fm)
        return _layout.transpose(_module_for(W).matmul_t(W, _layout.transpose(dYT), _zeros(dYT.shape[1], W.n_in)), out)
    return _fm_module_for(W).matmul_t_fm(W, dYT, out)


def conv_input_grad_fm(W, dYT: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The input gradient of a convolution with the sparse filter matrix W, ``col2im_t(W^T dY^T)``.

    Implements :func:`purerigl.kernels.host_conv.conv_input_grad_fm`.

    .. math:: dX[b, c, y, x] = \\sum_{(o, i, j)} W[o, (c, i, j)] \\, dY[b, o, y + p - i, x + p - j]
              \\quad \\text{(stride 1)}

    At stride 1 (the 3x3 convolutions of VGG and ResNet) the kernel of :mod:`.conv_products` adds
    every stored weight's shifted output-gradient plane into the input gradient directly: no
    (c_in kh kw, B Ho Wo) W^T dY^T is written and read back. At other strides, and below
    ``ROW_KERNEL_BATCH`` output pixels, it is this backend's ``matmul_t_fm`` then ``col2im_t``.
    Either way the sums are float32 in an order fixed by the structure (not the specification's).

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (c_out, c_in * kh * kw)
    dYT : float32 ndarray, shape (c_out, B * Ho * Wo)
        Columns ordered (b, ho, wo).
    X_shape : (B, c_in, H, W)
    kh, kw, stride, padding : int

    Returns
    -------
    dX : float32 ndarray, shape (B, c_in, H, W)
    """
    dYT, Ho, Wo = conv_input_grad_operands(W, dYT, X_shape, kh, kw, stride, padding)
    if stride != 1 or dYT.shape[1] < ROW_KERNEL_BATCH:
        return col2im_t(matmul_t_fm(W, dYT), X_shape, kh, kw, stride, padding)
    col_ptr, entry, row = _fm_module_for(W).columns_of(W)
    return conv_products.input_grad_stride1(col_ptr, entry, row, W.values.reshape(-1), dYT, X_shape, kh, kw,
                                            padding, Ho, Wo)


def sddmm_fm(W, XT: np.ndarray, dYT: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Value gradient at the stored positions, feature-major operands.

    Implements :func:`purerigl.kernels.reference.sddmm_fm`.

    .. math:: dW[e] = \\sum_b dY^T[\\mathrm{row}_e, b] \\, X^T[\\mathrm{col}_e, b]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in); only its structure is read
    XT : float32 ndarray, shape (n_in, B)
    dYT : float32 ndarray, shape (n_out, B)
    out : float32 ndarray shaped like ``W.values``, optional
        C-contiguous; overwritten.

    Returns
    -------
    dW : float32 ndarray shaped like ``W.values``
    """
    if isinstance(XT, Patches):  # a convolution's patch matrix, held as its input (conv_direct)
        if takes_patches(W, XT.stride, XT.dtype):
            dYT, out = _checks.sddmm_patches_operands(W, XT, dYT, out)
            return conv_direct.sddmm_patches(W, XT, dYT, out)
        XT = im2col_t(XT.X, XT.kh, XT.kw, XT.stride, XT.padding)  # built: the product through P^T
    XT, dYT, out = _checks.sddmm_fm_operands(W, XT, dYT, out)
    return _fm_module_for(W).sddmm_fm(W, XT, dYT, out)


def grad_at(
    X: np.ndarray, dY: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """The dense gradient ``G = dY^T X`` at arbitrary positions, without forming G.

    Implements :func:`purerigl.kernels.reference.grad_at`.

    .. math:: g[m] = \\sum_b dY[b, \\mathrm{rows}[m]] \\, X[b, \\mathrm{cols}[m]]

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    rows, cols : integer ndarrays, shape (m,), in [0, n_out) and [0, n_in)
    out : float32 ndarray, shape (m,), optional
        C-contiguous; overwritten.

    Returns
    -------
    g : float32 ndarray, shape (m,)
    """
    X, dY, rows, cols, out = _checks.grad_at_operands(X, dY, rows, cols, out)
    return pairs.grad_at(X, dY, rows, cols, out)


def topk_grad(
    X: np.ndarray, dY: np.ndarray, m: int, exclude_indptr: np.ndarray, exclude_indices: np.ndarray, salt: int = 0
):
    """The m positions of largest gradient magnitude over the whole layer, excluded positions aside (RigL).

    Implements :func:`purerigl.kernels.reference.topk_grad`; G = dY^T X is streamed in tiles of rows
    and never stored (extra memory O(m + tile)).

    .. math:: \\mathrm{top}_m \\{ (i, j) \\notin E : |G[i, j]| \\}, \\qquad G[i, j] = \\sum_b dY[b, i] X[b, j]

    Ranked by the float32 score |G[i, j]| (summed in float32), larger first; equal scores: smaller tie
    rank ``tie_rank(i * n_in + j, salt)`` first (:mod:`purerigl.kernels._rank_key`).

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    m : int >= 0
    exclude_indptr : integer ndarray, shape (n_out + 1,)
    exclude_indices : integer ndarray, shape (nnz,)
        The excluded set, CSR-like, strictly increasing within each row.
    salt : int in [0, 2^32)
        Chooses the order among equal scores.

    Returns
    -------
    rows, cols : int64 ndarrays, shape (min(m, n_out * n_in - nnz),), sorted by ``rows * n_in + cols``.
    """
    X, dY, m, indptr, indices = _checks.topk_grad_operands(X, dY, m, exclude_indptr, exclude_indices)
    return growth.topk_grad(X, dY, m, indptr, indices, _checks.check_salt(salt))


def topk_grad_rows(
    X: np.ndarray,
    dY: np.ndarray,
    counts: np.ndarray,
    exclude_indptr: np.ndarray,
    exclude_indices: np.ndarray,
    salt: int = 0,
):
    """Per row i, the counts[i] columns of largest gradient magnitude among those not excluded (SRigL).

    Implements :func:`purerigl.kernels.reference.topk_grad_rows`; rows run in parallel, G is streamed.

    .. math:: C_i = \\mathrm{top}_{c_i} \\{ j : (i, j) \\notin E, \\text{ by } |G[i, j]| \\},
              \\qquad c_i = \\min(\\mathrm{counts}[i], n_{in} - |E_i|)

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    counts : integer ndarray, shape (n_out,), >= 0
    exclude_indptr, exclude_indices : the excluded set, as in :func:`topk_grad`
    salt : int in [0, 2^32), as in :func:`topk_grad`

    Returns
    -------
    indptr : int64 ndarray, shape (n_out + 1,)
    cols : int64 ndarray, shape (sum c_i,), ascending within each row; equal scores: smaller tie rank
        ``tie_rank(i * n_in + j, salt)`` first
    """
    X, dY, counts, indptr, indices = _checks.topk_grad_rows_operands(X, dY, counts, exclude_indptr, exclude_indices)
    return growth.topk_grad_rows(X, dY, counts, indptr, indices, _checks.check_salt(salt))


def topk_grad_with_rows(X: np.ndarray, dY: np.ndarray, m: int, counts: np.ndarray, salt: int = 0):
    """RigL's layer-wide top m and SRigL's per-row top counts[i] of |G| over every position, with the
    per-row scores, from one pass over G (SRigL's salient set and its growth candidates).

    Implements :func:`purerigl.kernels.reference.topk_grad_with_rows`: exactly ``topk_grad(X, dY, m,
    E=∅, salt)`` and ``topk_grad_rows(X, dY, counts, E=∅, salt)`` of this backend, each row of G
    computed once.

    .. math:: T = \\mathrm{top}_m \\{ (i, j) : |G[i, j]| \\}, \\qquad
              C_i = \\mathrm{top}_{c_i} \\{ j : |G[i, j]| \\}, \\quad c_i = \\min(\\mathrm{counts}[i], n_{in})

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    m : int >= 0
    counts : integer ndarray, shape (n_out,), >= 0
    salt : int in [0, 2^32), as in :func:`topk_grad`

    Returns
    -------
    rows, cols : int64 ndarrays, shape (min(m, n_out * n_in),), sorted by ``rows * n_in + cols``
    indptr : int64 ndarray, shape (n_out + 1,)
    row_cols : int64 ndarray, shape (sum c_i,), ascending within each row
    row_scores : float32 ndarray, shape (sum c_i,): the float32 |G[i, j]| the selection ranked
    """
    X, dY, m, counts = _checks.topk_grad_with_rows_operands(X, dY, m, counts)
    return growth.topk_grad_with_rows(X, dY, m, counts, _checks.check_salt(salt))


def diag_grad_norms(X: np.ndarray, dY: np.ndarray) -> np.ndarray:
    """The L2 norm of the gradient along each of the P wrap-around diagonals (diag-rigl growth scores).

    Implements :func:`purerigl.kernels.reference.diag_grad_norms`; G is streamed (memory O(P + tile)).

    .. math:: S[d] = \\Big( \\sum_{t=0}^{L-1} G[\\mathrm{row}(d, t), \\mathrm{col}(d, t)]^2 \\Big)^{1/2}

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)

    Returns
    -------
    S : float32 ndarray, shape (P,), P = max(n_out, n_in)
    """
    X, dY = _checks.growth_operands(X, dY)
    return growth.diag_grad_norms(X, dY)
