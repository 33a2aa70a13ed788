"""Numba versions of element-wise activations: the ReLU of :mod:`purerigl.kernels.host_arrays` and the
GELU of :mod:`purerigl.kernels.host_transformer` (the specs).

ReLU. The spec computes ``where(X > 0, X, 0)`` with NumPy; on a (4096, 64) activation that took about
1.1 ms per call on the 2-core machine (``np.where`` with a boolean mask), 46% of a training step of the
784-4096-4096-10 MLP at 99%. These loops do the same in one pass, about 0.03 ms: serial, because an
element-wise pass is bound by memory bandwidth and a parallel region would wait for a busy core
(:mod:`._serial`). Same results bit for bit, NaN included (``NaN > 0`` is false, so it gives 0).

GELU. The spec's exact form :math:`x \\Phi(x)` takes erf from SciPy, about 20 ns an element (a
vit-tiny step at batch 64 spent about half its time in it, dense or sparse). In float32 the loops
below compute erf by Abramowitz and Stegun's formula 7.1.26 (absolute error at most 1.5e-7, about one
float32 unit at 1) with one exp that the backward reuses for the density,

.. math::

    z = |x| / \\sqrt 2, \\quad t = \\frac{1}{1 + p z}, \\quad
    \\mathrm{erf}(z) \\approx 1 - (a_1 t + a_2 t^2 + a_3 t^3 + a_4 t^4 + a_5 t^5) e^{-z^2}, \\qquad
    \\varphi(x) = e^{-z^2} / \\sqrt{2 \\pi},

vectorised (LLVM's fast exp and reciprocal; NaN and infinities are kept: no ``nnan`` / ``ninf``): 3-4x
faster than the spec, and as close to the float64 GELU as the float32 spec is (4.6e-7 against 4.5e-7
on (1088, 128) normal activations of scale 2). Other dtypes (float64 gradient checks) run the spec.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .. import host_transformer
from ._cache import CACHE


@njit(cache=CACHE)
def _relu_forward(x, y, mask):
    """mask[i] = x[i] > 0, y[i] = x[i] where mask[i] else 0, over flat contiguous arrays."""
    zero = y.dtype.type(0.0)
    for i in range(x.shape[0]):
        positive = x[i] > 0
        mask[i] = positive
        y[i] = x[i] if positive else zero


@njit(cache=CACHE)
def _relu_backward(dy, mask, dx):
    """dx[i] = dy[i] where mask[i] else 0, over flat contiguous arrays."""
    zero = dx.dtype.type(0.0)
    for i in range(dy.shape[0]):
        dx[i] = dy[i] if mask[i] else zero


def relu_forward(X):
    """``(Y, mask)`` with ``mask = X > 0`` and ``Y = where(mask, X, 0)``, Y of X's dtype.

    Implements :func:`purerigl.kernels.host_arrays.relu_forward`.

    .. math:: m = [X > 0], \\qquad Y = m \\, X
    """
    X = np.ascontiguousarray(X)
    Y = np.empty_like(X)
    mask = np.empty(X.shape, dtype=np.bool_)
    _relu_forward(X.reshape(-1), Y.reshape(-1), mask.reshape(-1))  # flat views of contiguous arrays
    return Y, mask


def relu_backward(dY, mask):
    """``where(mask, dY, 0)``: the gradient passes where the input was positive.

    Implements :func:`purerigl.kernels.host_arrays.relu_backward`.

    .. math:: dX = m \\, dY
    """
    dY = np.ascontiguousarray(dY)
    mask = np.ascontiguousarray(np.broadcast_to(mask, dY.shape))
    dX = np.empty_like(dY)
    _relu_backward(dY.reshape(-1), mask.reshape(-1), dX.reshape(-1))  # flat views of contiguous arrays
    return dX


# --------------------------------------------------------------------------------------------------
# GELU (float32)

_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))
_P = np.float32(0.3275911)  # Abramowitz and Stegun 7.1.26
_A1, _A2, _A3, _A4, _A5 = (np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))

#: LLVM's fast-math flags of the GELU loops: no ``nnan`` / ``ninf``, so NaN and infinities follow IEEE.
_GELU_FASTMATH = {"contract", "afn", "arcp", "reassoc", "nsz"}


@njit(cache=CACHE, fastmath=_GELU_FASTMATH, inline="always")
def _cdf_and_gauss(x):
    """(Phi(x), exp(-x^2 / 2)) in float32, Phi through erf by Abramowitz and Stegun 7.1.26."""
    z = abs(x) * _SQRT_HALF
    t = np.float32(1.0) / (np.float32(1.0) + _P * z)
    gauss = np.exp(-z * z)
    erf_abs = np.float32(1.0) - ((((_A5 * t + _A4) * t + _A3) * t + _A2) * t + _A1) * t * gauss
    return np.float32(0.5) * (np.float32(1.0) + math.copysign(erf_abs, x)), gauss


@njit(cache=CACHE, fastmath=_GELU_FASTMATH)
def _gelu_forward(x, y):
    """y[i] = x[i] Phi(x[i]) over flat contiguous float32 arrays."""
    for i in range(x.shape[0]):
        cdf, _ = _cdf_and_gauss(x[i])
        y[i] = x[i] * cdf


@njit(cache=CACHE, fastmath=_GELU_FASTMATH)
def _gelu_backward(dy, x, dx):
    """dx[i] = dy[i] (Phi(x[i]) + x[i] phi(x[i])) over flat contiguous float32 arrays."""
    for i in range(x.shape[0]):
        cdf, gauss = _cdf_and_gauss(x[i])
        dx[i] = dy[i] * (cdf + x[i] * gauss * _INV_SQRT_2PI)


def gelu_forward(X):
    """The exact (erf) GELU, elementwise; float32 by the loop above, other dtypes by the spec.

    Implements :func:`purerigl.kernels.host_transformer.gelu_forward`.

    .. math:: y = x \\, \\Phi(x) = \\frac{x}{2} \\Big(1 + \\mathrm{erf}\\big(x / \\sqrt 2\\big)\\Big)
    """
    if X.dtype != np.float32:
        return host_transformer.gelu_forward(X)
    X = np.ascontiguousarray(X)
    Y = np.empty_like(X)
    _gelu_forward(X.reshape(-1), Y.reshape(-1))  # flat views of contiguous arrays
    return Y


def gelu_backward(dY, X):
    """The input gradient of :func:`gelu_forward` at its input X; float32 by the loop above.

    Implements :func:`purerigl.kernels.host_transformer.gelu_backward`.

    .. math:: dx = dy \\, \\big(\\Phi(x) + x \\, \\varphi(x)\\big)
    """
    if X.dtype != np.float32 or dY.dtype != np.float32 or dY.shape != X.shape:
        return host_transformer.gelu_backward(dY, X)
    dY, X = np.ascontiguousarray(dY), np.ascontiguousarray(X)
    dX = np.empty_like(dY)
    _gelu_backward(dY.reshape(-1), X.reshape(-1), dX.reshape(-1))  # flat views of contiguous arrays
    return dX
