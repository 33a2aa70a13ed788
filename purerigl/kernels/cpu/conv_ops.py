"""The cpu backend's convolutional array operations (:data:`purerigl.kernels.registry.CONV_OPS`).

Same signatures and values as the specification, :mod:`purerigl.kernels.host_conv`: float32 and
float64 operands of one dtype run the Numba kernels of :mod:`.patches` (the same bits for the patch
maps and max pooling; batch normalisation sums its statistics in float64, so it agrees to rounding);
any other dtype, and the pure layout changes (``fm_to_nchw`` & co., ``global_avgpool_*``),
run the NumPy specification itself.
"""

from __future__ import annotations

import numpy as np

from .. import host_conv
from ..host_conv import (  # noqa: F401  (re-exported: the cpu backend runs the specification for these)
    fm_to_nchw, global_avgpool_backward, global_avgpool_forward, nchw_to_fm, nchw_to_rows, rows_to_nchw,
)
from . import patches as kernels
from . import pooling

__all__ = [
    "avgpool_backward", "avgpool_forward", "batchnorm_backward", "batchnorm_forward", "col2im", "col2im_t",
    "fast_path", "fm_to_nchw", "global_avgpool_backward", "global_avgpool_forward", "im2col", "im2col_t",
    "maxpool_backward", "maxpool_forward", "nchw_to_fm", "nchw_to_rows", "rows_to_nchw",
]

#: The dtypes the Numba kernels take; others run the specification.
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fast_path(*arrays) -> bool:
    """Whether the Numba kernels take these arrays: all float32 or all float64 (C order is made by the
    caller). Anything else (integers, float16, mixed dtypes) runs the NumPy specification."""
    dtype = arrays[0].dtype
    return dtype in FAST_DTYPES and all(a.dtype == dtype for a in arrays)


def im2col(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.im2col` by the Numba kernel (copies at cache speed through a
    small transposed tile), the same values.

    .. math:: P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    if not fast_path(X):
        return host_conv.im2col(X, kh, kw, stride, padding, fill)
    Ho, Wo = host_conv.output_hw(X.shape, kh, kw, stride, padding)
    return kernels.im2col(X, kh, kw, stride, padding, Ho, Wo, fill)


def col2im(cols: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.col2im` by the Numba kernel, which adds every pixel's
    contributions in the specification's order: the same bits.

    .. math:: dX[b, c, y, x] = \\sum_{(h_o, w_o, i, j) :\\ s h_o + i - p = y,\\ s w_o + j - p = x}
              dP[(b, h_o, w_o), (c, i, j)]
    """
    _, _, _, _, Ho, Wo = host_conv.check_cols(cols.shape, X_shape, kh, kw, stride, padding, transposed=False)
    if not fast_path(cols):
        return host_conv.col2im(cols, X_shape, kh, kw, stride, padding)
    return kernels.col2im(np.ascontiguousarray(cols), X_shape, kh, kw, stride, padding, Ho, Wo)


def im2col_t(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.im2col_t` built directly by the Numba kernel (no transpose).

    .. math:: P^T[(c, i, j), (b, h_o, w_o)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    if not fast_path(X):
        return host_conv.im2col_t(X, kh, kw, stride, padding, fill)
    Ho, Wo = host_conv.output_hw(X.shape, kh, kw, stride, padding)
    return kernels.im2col_t(X, kh, kw, stride, padding, Ho, Wo, fill)


def col2im_t(cols_t: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.col2im_t` by the Numba kernel (same bits: every pixel adds its
    contributions in the same (i, j) order)."""
    _, _, _, _, Ho, Wo = host_conv.check_cols(cols_t.shape, X_shape, kh, kw, stride, padding, transposed=True)
    if not fast_path(cols_t):
        return host_conv.col2im_t(cols_t, X_shape, kh, kw, stride, padding)
    return kernels.col2im_t(np.ascontiguousarray(cols_t), X_shape, kh, kw, stride, padding, Ho, Wo)


def maxpool_forward(X: np.ndarray, k: int, stride: int, padding: int):
    """:func:`purerigl.kernels.host_conv.maxpool_forward` by the Numba kernel, walking the windows in
    place (same maxima, same tie rule: the first maximum in window order, a NaN winning).

    .. math:: Y[b, c, h_o, w_o] = \\max_{i, j} X_p[b, c, s h_o + i, s w_o + j]
    """
    if not fast_path(X):
        return host_conv.maxpool_forward(X, k, stride, padding)
    Ho, Wo = host_conv.output_hw(X.shape, k, k, stride, padding)
    return pooling.maxpool_forward(np.ascontiguousarray(X), k, stride, padding, Ho, Wo)


def maxpool_backward(dY: np.ndarray, arg: np.ndarray, X_shape, k: int, stride: int, padding: int) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.maxpool_backward` by the Numba kernel (the same additions in
    the same order where windows overlap).

    .. math:: dX[b, c, y^*, x^*] \\mathrel{+}= dY[b, c, h_o, w_o]
    """
    if not fast_path(dY):
        return host_conv.maxpool_backward(dY, arg, X_shape, k, stride, padding)
    return pooling.maxpool_backward(np.ascontiguousarray(dY), arg, X_shape, k, stride, padding)


def avgpool_forward(X: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.avgpool_forward` over this backend's :func:`im2col`.

    .. math:: Y[b, c, h_o, w_o] = \\frac{1}{k^2} \\sum_{i, j} X_p[b, c, s h_o + i, s w_o + j]
    """
    return host_conv.avgpool_forward(X, k, stride, padding, _im2col=im2col)


def avgpool_backward(dY: np.ndarray, X_shape, k: int, stride: int, padding: int) -> np.ndarray:
    """:func:`purerigl.kernels.host_conv.avgpool_backward` over this backend's :func:`col2im`.

    .. math:: dX = \\mathrm{col2im}\\Big(\\frac{dY}{k^2} \\mathbf{1}^T\\Big)
    """
    return host_conv.avgpool_backward(dY, X_shape, k, stride, padding, _col2im=col2im)


def batchnorm_forward(X, gamma, beta, running_mean, running_var, training: bool, momentum: float, eps: float):
    """:func:`purerigl.kernels.host_conv.batchnorm_forward` by the Numba kernels: the per-channel
    statistics in one kernel (float64 sums), then one elementwise pass writing xhat and Y (the
    specification's operations, in its order). Returns ``(Y, xhat, inv)``.

    .. math:: Y = \\gamma_c \\frac{X - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}} + \\beta_c
    """
    if not fast_path(X, gamma, beta):
        return host_conv.batchnorm_forward(X, gamma, beta, running_mean, running_var, training, momentum, eps)
    X = np.ascontiguousarray(X)
    if training:
        mean, var = kernels.bn_stats(X)  # (C,), (C,) in X's dtype
        host_conv.update_running(running_mean, running_var, mean, var, X.shape[0] * X.shape[2] * X.shape[3],
                                 momentum)
    else:
        mean = running_mean.astype(X.dtype, copy=False)
        var = running_var.astype(X.dtype, copy=False)
    inv = 1.0 / np.sqrt(var + eps)  # (C,)
    xhat, Y = kernels.bn_normalise(X, mean, inv, gamma, beta)
    return Y, xhat, inv


def batchnorm_backward(dY, xhat, inv, gamma, training: bool, dgamma_out, dbeta_out):
    """:func:`purerigl.kernels.host_conv.batchnorm_backward` by the Numba kernels: both gradient sums in
    one kernel (float64 sums), then one elementwise pass for dX (the specification's operations).

    .. math:: dX = \\gamma_c \\mathrm{inv}_c \\Big(dY - \\frac{d\\beta_c}{N} - \\hat X \\frac{d\\gamma_c}{N}\\Big)
    """
    if not fast_path(dY, xhat, gamma):
        return host_conv.batchnorm_backward(dY, xhat, inv, gamma, training, dgamma_out, dbeta_out)
    dY = np.ascontiguousarray(dY)
    dgamma, dbeta = kernels.bn_grad_sums(dY, xhat)  # (C,), (C,)
    dgamma_out[...] = dgamma
    dbeta_out[...] = dbeta
    scale = gamma * inv  # (C,)
    if not training:
        return dY * host_conv._per_channel(scale)
    n = dY.shape[0] * dY.shape[2] * dY.shape[3]
    return kernels.bn_input_grad(dY, xhat, scale, dbeta / n, dgamma / n)
