"""CUDA kernels of batch normalisation (NCHW, per channel): ``batchnorm_forward`` and ``batchnorm_backward``.

The cuda side of the two operations of :data:`purerigl.kernels.registry.CONV_OPS`, with the signatures
and meaning of the NumPy specification :func:`purerigl.kernels.host_conv.batchnorm_forward` /
:func:`~purerigl.kernels.host_conv.batchnorm_backward`, on float32 device arrays. The running
statistics are device arrays updated in place on the device, so a training step never leaves it.

Sums (the per-channel mean and variance, the two gradient sums) run in two deterministic stages, as
the cpu kernels sum them, in float64: one thread per (sample, channel) plane sums its H * W values in
ascending order into a float64 partial, then one thread per channel adds the B partials in ascending
b. The elementwise passes run one thread per plane too (few, long threads: what keeps Numba's CUDA
simulator, whose cost is per thread, fast enough for the tests; not measured on a GPU). No atomics;
the same inputs give the same bits on every run. The variance sums squares of differences taken in
float32, as the specification's ``xc``; a gradient sum adds products rounded to float32, as NumPy's
``(dY * xhat).sum()``. The elementwise passes repeat the specification's float32
operations in its order (a real GPU may fuse a multiply and an add into one FMA: a few ulps), so the
whole agrees with the specification to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from ._launch import cuda, empty, launch
from .elementwise import check_device

__all__ = ["batchnorm_backward", "batchnorm_forward"]


# --------------------------------------------------------------------------------------------------
# Kernels


@cuda.jit
def _plane_sums_kernel(A3, B3, center, part, mode):
    """part[b, c] = float64 sum over e of, by ``mode``: 0: A3[b, c, e]; 1: (A3[b, c, e] - center[c])^2,
    the difference in float32; 2: A3[b, c, e] * B3[b, c, e] rounded to float32. One thread per plane."""
    B, C, HW = A3.shape
    for q in range(cuda.grid(1), B * C, cuda.gridsize(1)):
        b = q // C
        c = q % C
        acc = np.float64(0.0)
        for e in range(HW):
            if mode == 0:
                acc += np.float64(A3[b, c, e])
            elif mode == 1:
                d = np.float64(A3[b, c, e] - center[c])
                acc += d * d
            else:
                acc += np.float64(A3[b, c, e] * B3[b, c, e])
        part[b, c] = acc


@cuda.jit
def _channel_sums_kernel(part, out, divisor):
    """out[c] = float32((sum_b part[b, c], ascending) / divisor); one thread per channel."""
    for c in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        acc = np.float64(0.0)
        for b in range(part.shape[0]):
            acc += part[b, c]
        out[c] = np.float32(acc / divisor)


@cuda.jit
def _running_kernel(mean, var, running_mean, running_var, keep, a, unbias):
    """running_mean = keep m + a mean, running_var = keep v + (a var) unbias, in float32, per channel
    (keep = 1 - a; unbias = N / (N - 1))."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        running_mean[c] = keep * running_mean[c] + a * mean[c]
        running_var[c] = keep * running_var[c] + a * var[c] * unbias


@cuda.jit
def _inv_kernel(var, eps, inv):
    """inv[c] = 1 / sqrt(var[c] + eps) in float32."""
    for c in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        inv[c] = np.float32(1.0) / math.sqrt(var[c] + eps)


@cuda.jit
def _normalise_kernel(X3, mean, inv, gamma, beta, xhat3, Y3):
    """xhat = (X - mean[c]) * inv[c]; Y = xhat * gamma[c] + beta[c]; one thread per plane (b, c)."""
    B, C, HW = X3.shape
    for q in range(cuda.grid(1), B * C, cuda.gridsize(1)):
        c = q % C
        b = q // C
        m, v, g, t = mean[c], inv[c], gamma[c], beta[c]
        for e in range(HW):
            h = (X3[b, c, e] - m) * v
            xhat3[b, c, e] = h
            Y3[b, c, e] = h * g + t


@cuda.jit
def _input_grad_kernel(dY3, xhat3, gamma, inv, dgamma, dbeta, n, training, dX3):
    """dX = scale ((dY - dbeta / n) - xhat dgamma / n) (training) or scale dY (evaluation), with
    scale = gamma[c] inv[c]; one thread per plane (b, c)."""
    B, C, HW = dY3.shape
    for q in range(cuda.grid(1), B * C, cuda.gridsize(1)):
        c = q % C
        b = q // C
        scale = gamma[c] * inv[c]
        c1 = dbeta[c] / n
        c2 = dgamma[c] / n
        for e in range(HW):
            if training:
                dX3[b, c, e] = scale * ((dY3[b, c, e] - c1) - xhat3[b, c, e] * c2)
            else:
                dX3[b, c, e] = dY3[b, c, e] * scale


# --------------------------------------------------------------------------------------------------
# Drivers


def _planes(A):
    """(B, C, H, W) -> (B, C, H * W), a view of the C-contiguous device array A."""
    B, C, H, W = (int(n) for n in A.shape)
    return A.reshape(B, C, H * W)  # (B, C, H*W)


def _channel_sums(A3, B3, center, mode: int, divisor: float, out):
    """``out`` (C,) = the per-channel float64 sums of :func:`_plane_sums_kernel` / divisor, in float32."""
    B, C, _ = (int(n) for n in A3.shape)
    part = empty((B, C), np.float64)
    launch(_plane_sums_kernel, B * C, A3, B3, center, part, mode)
    launch(_channel_sums_kernel, C, part, out, np.float64(divisor))
    return out


def batchnorm_forward(X, gamma, beta, running_mean, running_var, training: bool, momentum: float, eps: float):
    """Batch normalisation of the device array X (B, C, H, W): ``(Y, xhat, inv)`` device arrays (see
    :func:`purerigl.kernels.host_conv.batchnorm_forward`); in training the running statistics (device
    arrays (C,)) are updated in place.

    .. math:: \\hat X = \\frac{X - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}}, \\qquad Y = \\gamma_c \\hat X + \\beta_c
    """
    check_device("X", X, ndim=4)
    B, C, H, W = (int(n) for n in X.shape)
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        check_device(name, v, shape=(C,))
    X3 = _planes(X)
    if training:
        n = B * H * W
        if n < 2:
            raise ShapeError(f"batch normalisation in training mode needs more than one value per channel, "
                             f"got an input of shape {(B, C, H, W)}")
        mean = _channel_sums(X3, X3, gamma, 0, n, empty((C,), np.float32))
        var = _channel_sums(X3, X3, mean, 1, n, empty((C,), np.float32))
        a = float(momentum)
        launch(_running_kernel, C, mean, var, running_mean, running_var, np.float32(1 - a), np.float32(a),
               np.float32(n / (n - 1)))
    else:
        mean, var = running_mean, running_var
    inv = empty((C,), np.float32)
    launch(_inv_kernel, C, var, np.float32(eps), inv)
    xhat, Y = empty((B, C, H, W), np.float32), empty((B, C, H, W), np.float32)
    launch(_normalise_kernel, B * C, X3, mean, inv, gamma, beta, _planes(xhat), _planes(Y))
    return Y, xhat, inv


def batchnorm_backward(dY, xhat, inv, gamma, training: bool, dgamma_out, dbeta_out):
    """The batch-normalisation backward on device arrays: dX (B, C, H, W), with dgamma and dbeta (C,)
    written into ``dgamma_out`` / ``dbeta_out`` (see :func:`purerigl.kernels.host_conv.batchnorm_backward`).

    .. math:: d\\gamma_c = \\sum dY \\hat X, \\quad d\\beta_c = \\sum dY, \\quad
              dX = \\gamma_c \\mathrm{inv}_c \\Big(dY - \\frac{d\\beta_c}{N} - \\hat X \\frac{d\\gamma_c}{N}\\Big)
    """
    check_device("dY", dY, ndim=4)
    B, C, H, W = (int(n) for n in dY.shape)
    check_device("xhat", xhat, shape=(B, C, H, W))
    for name, v in (("inv", inv), ("gamma", gamma), ("dgamma_out", dgamma_out), ("dbeta_out", dbeta_out)):
        check_device(name, v, shape=(C,))
    dY3, xhat3 = _planes(dY), _planes(xhat)
    _channel_sums(dY3, xhat3, inv, 2, 1.0, dgamma_out)
    _channel_sums(dY3, dY3, inv, 0, 1.0, dbeta_out)
    dX = empty((B, C, H, W), np.float32)
    launch(_input_grad_kernel, B * C, dY3, xhat3, gamma, inv, dgamma_out, dbeta_out, np.float32(B * H * W),
           bool(training), _planes(dX))
    return dX
