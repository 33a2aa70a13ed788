"""The numba.cuda backend: the reference operations as CUDA kernels, one thread per output.

Same functions, signatures and semantics as :mod:`purerigl.kernels.reference` and
:mod:`purerigl.kernels.cpu`: host NumPy arrays in, host NumPy arrays out, operands checked by the same
:mod:`purerigl.kernels._checks` functions (so all backends accept and refuse exactly the same inputs),
``out=`` filled and returned. Each call copies its operands to the device, launches the kernels and
copies the result back. The kernels live one module per format (:mod:`.condensed`, :mod:`.diagonal`,
:mod:`.csr`) plus :mod:`.pairs` for ``grad_at`` and :mod:`.growth_ops` / :mod:`.growth` for the growth
selections; the
shared per-element sums are in :mod:`._device`, the launch configuration in :mod:`._launch`.

Device-level entry points, for chaining ops without host round trips (a GPU-resident training step):

- :func:`to_device` copies a Condensed, Diagonal or CSR matrix to the device once and returns a
  ``DeviceCondensed`` / ``DeviceDiagonal`` / ``DeviceCSR`` whose ``values`` is a device array (an
  optimizer may update it in place);
- :func:`matmul_device`, :func:`matmul_t_device`, :func:`sddmm_device` and :func:`grad_at_device`
  take that device matrix and numba device arrays (``cuda.to_device(...)`` or the result of another
  ``*_device`` call), and return a float32 device array (``out=`` a device array to reuse one). They
  neither copy to the host nor synchronise; call :func:`synchronize` before reading a clock. Their
  checks are cheap (types, dtypes, shapes), never a pass over the data. The feature-major products
  (batch last) have the same pair of levels in :mod:`.feature_major`.

Training on the device (the ``ARRAY_OPS`` of :mod:`purerigl.kernels.registry`): :func:`to_device`
also takes a NumPy array (a device copy) and :func:`to_host` copies a device array back;
:func:`matmul`, :func:`matmul_t` and :func:`sddmm` given a device matrix (from :func:`to_device`)
take and return device arrays, exactly like the ``*_device`` functions; the element-wise pieces of a
step (bias, ReLU, loss, SGD/Adam, dense products) come from :mod:`.arrays`. A layer on this backend
keeps its matrix and parameters on the device and calls these; only the batch goes in and the loss
comes out per step (see :mod:`purerigl.nn.layers`).

Sums are accumulated in float32 in a fixed order (each output's terms in ascending index order), so
results agree with the reference to float32 rounding and are identical from run to run. No kernel
uses atomics: ``matmul_t`` of the row-stored formats reads a column index, built once per device
matrix (see :mod:`._columns`).

Availability: the registry calls :func:`check_available`, which raises one
:class:`~purerigl.errors.BackendError` naming the fixes when numba.cuda cannot run (no GPU and the
simulator off). With ``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported, everything runs on
Numba's CUDA simulator (slow; for tests). This package is imported only when the cuda backend is
asked for, so importing :mod:`purerigl` never imports numba.cuda.
"""

from __future__ import annotations

import numpy as np

from ...errors import DTypeError, FormatTypeError, ShapeError
from ...formats import CSR, Condensed, Diagonal
from .. import _checks
from ..host_conv import check_conv_input_grad
from ..host_conv import takes_patches  # registry.CONV_OPS: False, a convolution builds its patch matrix here
from . import _launch, condensed, conv_products, csr, diagonal, pairs
from .arrays import (
    adam_step, add_bias, add_bias_fm, bias_grad, bias_grad_fm, dense_grad, dense_matmul, dense_matmul_t, fill_zeros,
    relu_backward, relu_forward, row_dots, scale_rows, sgd_step, softmax_cross_entropy, transpose, zeros, zeros_like,
)
from .condensed import DeviceCondensed
from .csr import DeviceCSR
from .diagonal import DeviceDiagonal
from .elementwise import check_device
from .feature_major import (  # the feature-major products (registry.OPS)
    matmul_fm, matmul_fm_device, matmul_t_fm, matmul_t_fm_device, sddmm_fm, sddmm_fm_device,
)
from .growth_ops import (  # the growth selections (registry.OPS)
    diag_grad_norms, topk_grad, topk_grad_rows, topk_grad_with_rows,
)
from .batchnorm import batchnorm_backward, batchnorm_forward  # registry.CONV_OPS (part of ARRAY_OPS)
from .patches import (  # registry.CONV_OPS, continued
    col2im, col2im_t, fm_to_nchw, im2col, im2col_t, nchw_to_fm, nchw_to_rows, rows_to_nchw,
)
from .pooling import (  # registry.CONV_OPS, continued
    avgpool_backward, avgpool_forward, global_avgpool_backward, global_avgpool_forward, maxpool_backward,
    maxpool_forward,
)
from .attention import self_attention_backward, self_attention_forward  # registry.ARRAY_OPS, the transformer's
from .transformer import (  # registry.ARRAY_OPS, the transformer's
    add, first_token, first_token_backward, gelu_backward, gelu_forward, layer_norm_backward, layer_norm_forward,
    patchify, prepend_token, prepend_token_backward, unpatchify,
)
from .structure import (  # the operations a DST update is written with (registry.UPDATE_OPS)
    condensed_from_positions, count_kept, csr_from_positions, diagonal_from_offsets, exclusion_of, flat_positions,
    keep_by_magnitude, remap_by_source, source_of,
)
from .selection import (  # registry.UPDATE_OPS, continued
    active_rows, arange, compress, count_true, csr_positions, flat_of, free_positions, in_rows, in_sorted, indicator,
    merge_sorted, row_counts, row_norms, top_k, top_k_per_row,
)

NAME = "cuda"

#: Arrays of this backend live on the device (see :attr:`purerigl.kernels.registry.Backend.resident`).
RESIDENT = True

#: The feature-major products here are the row-layout kernels between two device transposes
#: (:mod:`.feature_major`): models run this backend in the row layout (see
#: :attr:`purerigl.kernels.registry.Backend.feature_major_native`).
FEATURE_MAJOR_NATIVE = False

__all__ = [
    "NAME", "DeviceCSR", "DeviceCondensed", "DeviceDiagonal", "check_available", "diag_grad_norms",
    "grad_at", "grad_at_device", "matmul", "matmul_device", "matmul_t", "matmul_t_device", "on_simulator", "sddmm",
    "sddmm_device", "synchronize", "to_device", "to_host", "topk_grad", "topk_grad_rows", "topk_grad_with_rows",
    "matmul_fm", "matmul_fm_device", "matmul_t_fm", "matmul_t_fm_device", "sddmm_fm", "sddmm_fm_device",
    # the array operations of a training step (registry.ARRAY_OPS)
    "adam_step", "add_bias", "add_bias_fm", "bias_grad", "bias_grad_fm", "dense_grad", "dense_matmul",
    "dense_matmul_t", "fill_zeros", "relu_backward", "relu_forward", "row_dots", "scale_rows", "sgd_step",
    "softmax_cross_entropy", "transpose", "zeros", "zeros_like",
    # the convolutional layers' array operations (registry.CONV_OPS)
    "avgpool_backward", "avgpool_forward", "batchnorm_backward", "batchnorm_forward", "col2im", "col2im_t",
    "conv_input_grad_fm", "fm_to_nchw", "global_avgpool_backward", "global_avgpool_forward", "im2col", "im2col_t", "maxpool_backward",
    "maxpool_forward", "nchw_to_fm", "nchw_to_rows", "rows_to_nchw", "takes_patches",
    # the transformer's array operations (registry.ARRAY_OPS)
    "add", "first_token", "first_token_backward", "gelu_backward", "gelu_forward", "layer_norm_backward",
    "layer_norm_forward", "patchify", "prepend_token", "prepend_token_backward", "self_attention_backward",
    "self_attention_forward", "unpatchify",
    # the operations a DST update is written with (registry.UPDATE_OPS)
    "active_rows", "arange", "compress", "condensed_from_positions", "count_kept", "count_true",
    "csr_from_positions", "csr_positions", "diagonal_from_offsets", "exclusion_of", "flat_of",
    "flat_positions", "free_positions", "in_rows", "in_sorted", "indicator", "keep_by_magnitude",
    "merge_sorted", "remap_by_source", "row_counts", "row_norms", "source_of", "top_k", "top_k_per_row",
]

_DEVICE_TYPES = {Condensed: DeviceCondensed, Diagonal: DeviceDiagonal, CSR: DeviceCSR}
_MODULES = {DeviceCondensed: condensed, DeviceDiagonal: diagonal, DeviceCSR: csr}
_HOST_TYPES = {device: host for host, device in _DEVICE_TYPES.items()}
_FIELDS = {DeviceCondensed: ("rows", "indices", "values"), DeviceDiagonal: ("offsets", "values"),
           DeviceCSR: ("indptr", "indices", "values")}


def check_available() -> None:
    """Raise :class:`~purerigl.errors.BackendError` naming the fixes unless CUDA kernels can run here."""
    _launch.require()


def on_simulator() -> bool:
    """True when the kernels run on Numba's CUDA simulator (Python threads on the CPU; slow)."""
    return _launch.SIMULATOR


def synchronize() -> None:
    """Wait until every queued kernel and copy has finished; call before reading a clock."""
    _launch.synchronize()


# --------------------------------------------------------------------------------------------------
# Device level: device arrays in, device arrays out
# --------------------------------------------------------------------------------------------------


def conv_input_grad_fm(W, dYT, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """The input gradient of a convolution with the sparse filter matrix W (host or device matrix),
    ``col2im_t(W^T dY^T)``, from the device array dYT (c_out, B * Ho * Wo): dX (B, c_in, H, W), a new
    device array. Implements :func:`purerigl.kernels.host_conv.conv_input_grad_fm`.

    One gather kernel (:mod:`.conv_products`): a thread per input row adds, for each kernel offset,
    the stored entries of that filter-matrix column times the output gradient, so the patch-sized
    W^T dY^T is never written (float32 sums in another order than the specification's: rounding apart).
    """
    Wd = to_device(W)  # a device matrix as it is; a host matrix copied (checked)
    _module_for(Wd)
    check_device("dYT", dYT, np.float32, ndim=2)
    _, _, _, _, Ho, Wo = check_conv_input_grad(Wd, dYT, X_shape, kh, kw, stride, padding)
    return conv_products.input_grad(Wd, dYT, X_shape, kh, kw, stride, padding, Ho, Wo)


def to_device(W, out=None):
    """Copy a Condensed, Diagonal or CSR matrix, or a NumPy array, to the device.

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in); or ndarray
        A device matrix or device array is returned as it is (no copy).
    out : device array, optional
        For an ndarray ``W``: copy it into this device array (same shape and dtype) instead of a new one.

    Returns
    -------
    DeviceCondensed | DeviceDiagonal | DeviceCSR
        For a matrix: the same arrays as device arrays, with ``shape``.
    device array
        For an array.
    """
    if isinstance(W, np.ndarray):
        return _launch.to_device(W, out)
    if out is None and (_launch.is_device_array(W) or type(W) in _MODULES):
        return W
    _checks.check_format(W)
    return _DEVICE_TYPES[type(W)].from_host(W)


def to_host(a, out: np.ndarray | None = None) -> np.ndarray:
    """A host NumPy copy of the device array ``a`` (into ``out`` when given).

    A NumPy array is returned as it is, or copied into ``out`` when that is another array, as on the
    host backends (:func:`purerigl.kernels.host_arrays.to_host`). A device matrix (from
    :func:`to_device`, or built on the device by a topology update) comes back as the host format
    (Condensed, Diagonal or CSR), every array copied.
    """
    if type(a) in _MODULES:
        host = {name: _launch.to_host(getattr(a, name)) for name in _FIELDS[type(a)]}
        return _HOST_TYPES[type(a)](**host, shape=a.shape)
    if _launch.is_device_array(a):
        return _launch.to_host(a, out)
    if out is None or out is a:
        return a
    np.copyto(out, a)
    return out


def _module_for(Wd):
    module = _MODULES.get(type(Wd))
    if module is None:
        raise FormatTypeError(
            f"W must be a device matrix from purerigl.kernels.cuda.to_device(W), got {type(Wd).__name__}"
        )
    return module


def _device_out(out, shape: tuple):
    """``out`` checked, or a new uninitialised float32 device array (the kernels write every element)."""
    if out is None:
        return _launch.empty(shape, np.float32)
    return check_device("out", out, np.float32, shape=shape)


def _dims(name: str, A) -> tuple[int, int]:
    """(batch, features) of the 2-D device array ``A``."""
    if not _launch.is_device_array(A):
        raise DTypeError(f"{name} must be a numba device array (cuda.to_device), got {type(A).__name__}")
    if len(A.shape) != 2:
        raise ShapeError(f"{name} must be 2-D (batch, features), got shape {tuple(A.shape)}")
    return int(A.shape[0]), int(A.shape[1])


def matmul_device(W, X, out=None):
    """Forward product ``Y = X W^T`` on device arrays.

    .. math:: Y[b, i] = \\sum_j W[i, j] \\, X[b, j]

    Parameters
    ----------
    W : DeviceCondensed | DeviceDiagonal | DeviceCSR, shape (n_out, n_in)
    X : float32 device array, shape (B, n_in)
    out : float32 device array, shape (B, n_out), optional

    Returns
    -------
    Y : float32 device array, shape (B, n_out)
    """
    module = _module_for(W)
    n_out, n_in = W.shape
    B = _dims("X", X)[0]
    check_device("X", X, np.float32, shape=(B, n_in))
    return module.matmul(W, X, _device_out(out, (B, n_out)))


def matmul_t_device(W, dY, out=None):
    """Input gradient ``dX = dY W`` on device arrays.

    .. math:: dX[b, j] = \\sum_i dY[b, i] \\, W[i, j]

    Parameters
    ----------
    W : DeviceCondensed | DeviceDiagonal | DeviceCSR, shape (n_out, n_in)
    dY : float32 device array, shape (B, n_out)
    out : float32 device array, shape (B, n_in), optional

    Returns
    -------
    dX : float32 device array, shape (B, n_in)
    """
    module = _module_for(W)
    n_out, n_in = W.shape
    B = _dims("dY", dY)[0]
    check_device("dY", dY, np.float32, shape=(B, n_out))
    return module.matmul_t(W, dY, _device_out(out, (B, n_in)))


def sddmm_device(W, X, dY, out=None):
    """Value gradient at the stored positions on device arrays, laid out like ``W.values``.

    .. math:: dW[e] = \\sum_b dY[b, \\mathrm{row}_e] \\, X[b, \\mathrm{col}_e]

    Parameters
    ----------
    W : DeviceCondensed | DeviceDiagonal | DeviceCSR, shape (n_out, n_in); only its structure is read
    X : float32 device array, shape (B, n_in)
    dY : float32 device array, shape (B, n_out)
    out : float32 device array shaped like ``W.values``, optional

    Returns
    -------
    dW : float32 device array shaped like ``W.values``
    """
    module = _module_for(W)
    n_out, n_in = W.shape
    B = _dims("X", X)[0]
    check_device("X", X, np.float32, shape=(B, n_in))
    check_device("dY", dY, np.float32, shape=(B, n_out))
    return module.sddmm(W, X, dY, _device_out(out, tuple(W.values.shape)))


def grad_at_device(X, dY, rows, cols, out=None):
    """The dense gradient ``G = dY^T X`` at (row, col) pairs, on device arrays.

    .. math:: g[m] = \\sum_b dY[b, \\mathrm{rows}[m]] \\, X[b, \\mathrm{cols}[m]]

    Parameters
    ----------
    X : float32 device array, shape (B, n_in)
    dY : float32 device array, shape (B, n_out)
    rows, cols : int64 device arrays, shape (m,), in [0, n_out) and [0, n_in) (not checked: no pass
        over the data)
    out : float32 device array, shape (m,), optional

    Returns
    -------
    g : float32 device array, shape (m,)
    """
    B = _dims("X", X)[0]
    check_device("dY", dY, np.float32, shape=(B, _dims("dY", dY)[1]))
    m = int(rows.shape[0]) if _launch.is_device_array(rows) else 0
    check_device("rows", rows, np.int64, shape=(m,))
    check_device("cols", cols, np.int64, shape=(m,))
    return pairs.grad_at(X, dY, rows, cols, _device_out(out, (m,)))


# --------------------------------------------------------------------------------------------------
# Host level: the backend's ops, NumPy in and out
# --------------------------------------------------------------------------------------------------


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

    Given a device matrix (from :func:`to_device`) this is :func:`matmul_device`: device arrays in
    and out, no copy.
    """
    if type(W) in _MODULES:
        return matmul_device(W, X, out)
    X, out = _checks.matmul_operands(W, X, out)
    if out.size == 0 or W.nnz == 0:  # out is already zeroed
        return out
    matmul_device(to_device(W), _launch.to_device(X)).copy_to_host(out)
    return out


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

    Given a device matrix this is :func:`matmul_t_device` (device arrays, no copy).
    """
    if type(W) in _MODULES:
        return matmul_t_device(W, dY, out)
    dY, out = _checks.matmul_t_operands(W, dY, out)
    if out.size == 0 or W.nnz == 0:
        return out
    matmul_t_device(to_device(W), _launch.to_device(dY)).copy_to_host(out)
    return out


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

    Given a device matrix this is :func:`sddmm_device` (device arrays, no copy).
    """
    if type(W) in _MODULES:
        return sddmm_device(W, X, dY, out)
    X, dY, out = _checks.sddmm_operands(W, X, dY, out)
    if out.size == 0 or X.shape[0] == 0:  # an empty batch sums nothing: zeros
        return out
    sddmm_device(to_device(W), _launch.to_device(X), _launch.to_device(dY)).copy_to_host(out)
    return out


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

    Given a device X this is :func:`grad_at_device` (device arrays in and out, no copy).
    """
    if _launch.is_device_array(X):
        return grad_at_device(X, dY, rows, cols, out)
    X, dY, rows, cols, out = _checks.grad_at_operands(X, dY, rows, cols, out)
    if out.size == 0 or X.shape[0] == 0:
        return out
    to = _launch.to_device
    grad_at_device(to(X), to(dY), to(rows), to(cols)).copy_to_host(out)
    return out
