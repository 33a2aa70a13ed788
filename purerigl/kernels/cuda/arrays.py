"""The array operations of a training step on device arrays: the cuda side of ``ARRAY_OPS``.

Same names, signatures and meaning as :mod:`purerigl.kernels.host_arrays` (see
:data:`purerigl.kernels.registry.ARRAY_OPS`), on numba device arrays: the layers, the loss and the
optimizers call them through their backend and never see where the arrays live. Most are the kernels
of :mod:`.elementwise` and :mod:`.loss`, re-exported; this module adds the allocation helpers
(:func:`zeros`, :func:`zeros_like`, :func:`fill_zeros`) and the three dense products of a
:class:`~purerigl.nn.Dense` layer (ERK at low sparsity makes whole layers dense), one thread per
output, summing in float32 in ascending order (no atomics, so results repeat exactly from run to
run; they agree with NumPy's BLAS to float32 rounding).

:func:`to_device` and :func:`to_host` live in :mod:`purerigl.kernels.cuda` (they also convert sparse
matrices); nothing here copies between host and device except the loss's one float64 pair.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ._device import batch_dot
from ._launch import cuda, empty, is_device_array, launch
from .elementwise import (
    adam_step, add_bias, add_bias_fm, bias_grad, bias_grad_fm, check_device, flat, relu_backward, relu_forward,
    sgd_step,
)
from .loss import softmax_cross_entropy

__all__ = [
    "adam_step", "add_bias", "add_bias_fm", "bias_grad", "bias_grad_fm", "dense_grad", "dense_matmul",
    "dense_matmul_t", "fill_zeros", "relu_backward", "relu_forward", "row_dots", "scale_rows", "sgd_step",
    "softmax_cross_entropy", "transpose", "zeros", "zeros_like",
]


@cuda.jit
def _fill_zeros_kernel(a):
    """a[q] = 0 (flat view), one thread per element."""
    for q in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[q] = 0


@cuda.jit
def _dense_matmul_kernel(W, X, Y):
    """Y[b, i] = sum_j W[i, j] X[b, j], ascending j in float32; one thread per output (W may be a
    transposed view: dense_matmul_t passes W^T)."""
    B, n_out = Y.shape
    for q in range(cuda.grid(1), B * n_out, cuda.gridsize(1)):
        b = q // n_out
        i = q % n_out
        s = np.float32(0.0)
        for j in range(W.shape[1]):
            s += W[i, j] * X[b, j]
        Y[b, i] = s


@cuda.jit
def _dense_grad_kernel(X, dY, dW):
    """dW[i, j] = sum_b dY[b, i] X[b, j], ascending b in float32; one thread per output."""
    n_out, n_in = dW.shape
    for q in range(cuda.grid(1), n_out * n_in, cuda.gridsize(1)):
        i = q // n_in
        j = q % n_in
        dW[i, j] = batch_dot(dY, i, X, j)


@cuda.jit
def _transpose_kernel(A, AT):
    """AT[j, i] = A[i, j], one thread per element, consecutive threads writing consecutive AT[j, i]."""
    n, m = A.shape
    for q in range(cuda.grid(1), n * m, cuda.gridsize(1)):
        j = q // n
        i = q % n
        AT[j, i] = A[i, j]


@cuda.jit
def _scale_rows_kernel(A, g, out):
    """out[k, t] = g[k] * A[k, t], one thread per element."""
    for q in range(cuda.grid(1), A.shape[0] * A.shape[1], cuda.gridsize(1)):
        k = q // A.shape[1]
        t = q % A.shape[1]
        out[k, t] = g[k] * A[k, t]


@cuda.jit
def _row_dots_kernel(A, B, out):
    """out[k] = sum_t A[k, t] B[k, t] in float64, ascending t; one thread per row."""
    for k in range(cuda.grid(1), A.shape[0], cuda.gridsize(1)):
        s = np.float64(0.0)
        for t in range(A.shape[1]):
            s += np.float64(A[k, t]) * np.float64(B[k, t])
        out[k] = s


def scale_rows(A, g, out=None):
    """Each row of ``A`` times its factor, on device arrays (see
    :func:`purerigl.kernels.host_arrays.scale_rows`).

    .. math:: \\mathrm{out}[k, t] = g_k \\, A[k, t]

    Parameters
    ----------
    A : float32 device array (K, L)
    g : float32 device array (K,)
    out : float32 device array (K, L), optional; a new one when omitted
    """
    check_device("A", A, ndim=2)
    check_device("g", g, shape=(A.shape[0],))
    if out is None:
        out = empty(tuple(A.shape), np.float32)
    else:
        check_device("out", out, shape=tuple(A.shape))
    if A.size:
        launch(_scale_rows_kernel, A.size, A, g, out)
    return out


def row_dots(A, B):
    """float64 device array (K,): the dot product of every row of ``A`` with the same row of ``B``,
    summed in float64 in ascending t (see :func:`purerigl.kernels.host_arrays.row_dots`).

    .. math:: \\mathrm{out}[k] = \\sum_t A[k, t] \\, B[k, t]
    """
    check_device("A", A, ndim=2)
    check_device("B", B, shape=tuple(A.shape))
    out = empty((A.shape[0],), np.float64)
    if A.shape[0]:
        launch(_row_dots_kernel, A.shape[0], A, B, out)
    return out


def zeros(shape, dtype=np.float32):
    """A new device array of zeros (allocated and filled on the device: no host copy)."""
    return fill_zeros(empty(shape, dtype))


def zeros_like(a):
    """A new device array of zeros shaped and typed like ``a``."""
    return zeros(tuple(a.shape), a.dtype)


def fill_zeros(a):
    """Set every element of the C-contiguous device array ``a`` to 0, in place; returns ``a``."""
    check_device("a", a, dtype=a.dtype)
    if a.size:
        launch(_fill_zeros_kernel, a.size, flat(a))
    return a


def _dense_operands(W, A, name: str, width: int):
    check_device("W", W, ndim=2)
    check_device(name, A, ndim=2)
    if A.shape[1] != width:
        raise ShapeError(f"{name} has shape {tuple(A.shape)}, expected (B, {width}) for W of shape {tuple(W.shape)}")
    return int(A.shape[0])


def dense_matmul(W, X):
    """Dense forward product on device arrays.

    .. math:: Y[b, i] = \\sum_j W[i, j] \\, X[b, j]

    Parameters
    ----------
    W : float32 device array (n_out, n_in)
    X : float32 device array (B, n_in)

    Returns
    -------
    Y : float32 device array (B, n_out)
    """
    B = _dense_operands(W, X, "X", W.shape[1])
    Y = empty((B, W.shape[0]), np.float32)
    launch(_dense_matmul_kernel, Y.size, W, X, Y)
    return Y


def dense_matmul_t(W, dY):
    """Dense input gradient on device arrays.

    .. math:: dX[b, j] = \\sum_i dY[b, i] \\, W[i, j]

    Parameters
    ----------
    W : float32 device array (n_out, n_in)
    dY : float32 device array (B, n_out)

    Returns
    -------
    dX : float32 device array (B, n_in)
    """
    B = _dense_operands(W, dY, "dY", W.shape[0])
    dX = empty((B, W.shape[1]), np.float32)
    launch(_dense_matmul_kernel, dX.size, W.T, dY, dX)  # W^T (n_in, n_out), a strided view: sums in ascending i
    return dX


def dense_grad(X, dY, out):
    """Dense weight gradient into ``out`` on device arrays; returns out.

    .. math:: dW[i, j] = \\sum_b dY[b, i] \\, X[b, j]

    Parameters
    ----------
    X : float32 device array (B, n_in)
    dY : float32 device array (B, n_out)
    out : float32 device array (n_out, n_in); overwritten
    """
    check_device("out", out, ndim=2)
    B = _dense_operands(out, X, "X", out.shape[1])
    check_device("dY", dY, shape=(B, out.shape[0]))
    launch(_dense_grad_kernel, out.size, X, dY, out)
    return out


def transpose(A, out=None):
    """``A^T`` as a new C-contiguous device array, (n, m) -> (m, n) (into ``out`` when given): the
    change between the row layout and the feature-major layout of the products.

    .. math:: A^T[j, i] = A[i, j]

    Parameters
    ----------
    A : 2-D device array, any dtype
    out : device array (m, n) of A's dtype, optional; overwritten

    Returns
    -------
    AT : device array (m, n)
    """
    check_device("A", A, A.dtype if is_device_array(A) else np.float32, ndim=2)
    n, m = (int(d) for d in A.shape)
    if out is None:
        out = empty((m, n), A.dtype)
    else:
        check_device("out", out, A.dtype, shape=(m, n))
    launch(_transpose_kernel, n * m, A, out)
    return out
