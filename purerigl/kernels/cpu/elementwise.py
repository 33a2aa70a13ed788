"""Numba versions of the element-wise ReLU of :mod:`purerigl.kernels.host_arrays` (the spec).

The spec computes ``where(X > 0, X, 0)`` with NumPy; on a (4096, 64) activation that took about 1.1 ms
per call on the 2-core machine (``np.where`` with a boolean mask), 46% of a training step of the
784-4096-4096-10 MLP at 99%. These loops do the same in one pass, about 0.03 ms: serial, because an
element-wise pass is bound by memory bandwidth and a parallel region would wait for a busy core
(:mod:`._serial`). Same results bit for bit, NaN included (``NaN > 0`` is false, so it gives 0).
"""

from __future__ import annotations

import numpy as np
from numba import njit

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
