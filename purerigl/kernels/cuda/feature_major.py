"""The feature-major products on the cuda backend: ``matmul_fm``, ``matmul_t_fm``, ``sddmm_fm``.

Specified in :mod:`purerigl.kernels.reference`: the operands have the batch last, X^T (n_in, B) and
dY^T (n_out, B),

.. math::

    Y^T = W X^T, \\qquad dX^T = W^T dY^T, \\qquad dW[e] = \\sum_b dY^T[\\mathrm{row}_e, b] \\, X^T[\\mathrm{col}_e, b]

On the device they are written simply, with the row-layout kernels of each format between two device
transposes (:func:`purerigl.kernels.cuda.arrays.transpose`): no host copy, and the same float32 sums
in the same order as ``matmul`` / ``matmul_t`` / ``sddmm``, so each result is the transposed row-layout
result bit for bit. (On the host backends the layout exists to spare the cpu kernels their operand
transposes. Here it saves nothing, so the MLP and the ViT's token-wise layers run this backend in the
row layout (``FEATURE_MAJOR_NATIVE = False`` in :mod:`purerigl.kernels.cuda`); the convolution layers,
whose patch matrix is built transposed, call these ops.)

As in :mod:`purerigl.kernels.cuda`: the ``*_device`` functions take a device matrix and device arrays
and return device arrays; the backend ops take host arrays (checked by :mod:`purerigl.kernels._checks`
like every backend's) and return host arrays, or, given a device matrix, are the ``*_device`` ones.
"""

from __future__ import annotations

import numpy as np

from ...errors import DTypeError, FormatTypeError, ShapeError
from ...formats import CSR, Condensed, Diagonal
from .. import _checks
from . import _launch, condensed, csr, diagonal
from .arrays import transpose
from .condensed import DeviceCondensed
from .csr import DeviceCSR
from .diagonal import DeviceDiagonal
from .elementwise import check_device

_DEVICE_TYPES = {Condensed: DeviceCondensed, Diagonal: DeviceDiagonal, CSR: DeviceCSR}
_MODULES = {DeviceCondensed: condensed, DeviceDiagonal: diagonal, DeviceCSR: csr}


def _module_for(Wd):
    module = _MODULES.get(type(Wd))
    if module is None:
        raise FormatTypeError(
            f"W must be a device matrix from purerigl.kernels.cuda.to_device(W), got {type(Wd).__name__}"
        )
    return module


def _batch_of(name: str, A, height: int) -> int:
    """B of the 2-D float32 device array ``A`` of shape (height, B)."""
    if not _launch.is_device_array(A):
        raise DTypeError(f"{name} must be a numba device array (cuda.to_device), got {type(A).__name__}")
    if len(A.shape) != 2:
        raise ShapeError(f"{name} must be 2-D (features, batch), got shape {tuple(A.shape)}")
    B = int(A.shape[1])
    check_device(name, A, np.float32, shape=(height, B))
    return B


def _out(out, shape: tuple):
    """``out`` checked, or a new uninitialised float32 device array (every element gets written)."""
    if out is None:
        return _launch.empty(shape, np.float32)
    return check_device("out", out, np.float32, shape=shape)


# --------------------------------------------------------------------------------------------------
# Device level


def matmul_fm_device(W, XT, out=None):
    """``Y^T = W X^T`` on device arrays: XT (n_in, B) -> YT (n_out, B).

    .. math:: Y^T[i, b] = \\sum_j W[i, j] \\, X^T[j, b]
    """
    module = _module_for(W)
    n_out, n_in = W.shape
    B = _batch_of("XT", XT, n_in)
    out = _out(out, (n_out, B))
    Y = module.matmul(W, transpose(XT), _launch.empty((B, n_out), np.float32))  # (B, n_out)
    return transpose(Y, out)  # (B, n_out) -> (n_out, B)


def matmul_t_fm_device(W, dYT, out=None):
    """``dX^T = W^T dY^T`` on device arrays: dYT (n_out, B) -> dXT (n_in, B).

    .. math:: dX^T[j, b] = \\sum_i W[i, j] \\, dY^T[i, b]
    """
    module = _module_for(W)
    n_out, n_in = W.shape
    B = _batch_of("dYT", dYT, n_out)
    out = _out(out, (n_in, B))
    dX = module.matmul_t(W, transpose(dYT), _launch.empty((B, n_in), np.float32))  # (B, n_in)
    return transpose(dX, out)  # (B, n_in) -> (n_in, B)


def sddmm_fm_device(W, XT, dYT, out=None):
    """The value gradient at the stored positions from feature-major device arrays, laid out like
    ``W.values``.

    .. math:: dW[e] = \\sum_b dY^T[\\mathrm{row}_e, b] \\, X^T[\\mathrm{col}_e, b]
    """
    module = _module_for(W)
    n_out, n_in = W.shape
    B = _batch_of("XT", XT, n_in)
    if _batch_of("dYT", dYT, n_out) != B:
        raise ShapeError(f"XT has batch {B} but dYT has batch {int(dYT.shape[1])}")
    return module.sddmm(W, transpose(XT), transpose(dYT), _out(out, tuple(W.values.shape)))


# --------------------------------------------------------------------------------------------------
# Host level: the backend's ops


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

    Given a device matrix (from :func:`purerigl.kernels.cuda.to_device`) this is
    :func:`matmul_fm_device`: device arrays in and out, no copy.
    """
    if type(W) in _MODULES:
        return matmul_fm_device(W, XT, out)
    XT, out = _checks.matmul_fm_operands(W, XT, out)
    if out.size == 0 or W.nnz == 0:  # out is already zeroed
        return out
    matmul_fm_device(_DEVICE_TYPES[type(W)].from_host(W), _launch.to_device(XT)).copy_to_host(out)
    return out


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

    Given a device matrix this is :func:`matmul_t_fm_device` (device arrays, no copy).
    """
    if type(W) in _MODULES:
        return matmul_t_fm_device(W, dYT, out)
    dYT, out = _checks.matmul_t_fm_operands(W, dYT, out)
    if out.size == 0 or W.nnz == 0:
        return out
    matmul_t_fm_device(_DEVICE_TYPES[type(W)].from_host(W), _launch.to_device(dYT)).copy_to_host(out)
    return out


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

    Given a device matrix this is :func:`sddmm_fm_device` (device arrays, no copy).
    """
    if type(W) in _MODULES:
        return sddmm_fm_device(W, XT, dYT, out)
    XT, dYT, out = _checks.sddmm_fm_operands(W, XT, dYT, out)
    if out.size == 0 or XT.shape[1] == 0:  # an empty batch sums nothing: zeros
        return out
    to = _launch.to_device
    sddmm_fm_device(_DEVICE_TYPES[type(W)].from_host(W), to(XT), to(dYT)).copy_to_host(out)
    return out
