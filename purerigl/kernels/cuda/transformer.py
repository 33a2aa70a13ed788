"""The transformer's array operations on device arrays, attention aside: residual add, layer
normalisation, GELU, patch extraction, class token and class-token pooling.

Same names, signatures and meaning as :mod:`purerigl.kernels.host_transformer` (the specification),
on float32 numba device arrays; the attention is in :mod:`.attention`. Nothing here copies between
host and device (a host array is refused) and nothing synchronises.

Launches are one thread per output element, except where a thread owns a reduction: the layer
normalisation's forward and input gradient (one thread per token, the d features in ascending
order) and the parameter gradients (one thread per feature, the tokens or the batch in ascending
order). No atomics, so results repeat exactly from run to run; sums are float32 in ascending order,
so they agree with NumPy's (pairwise) sums to float32 rounding. ``erf`` and ``exp`` are CUDA's
float32 functions (Python's ``math`` on the simulator).
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from ._launch import cuda, empty, launch
from .arrays import fill_zeros
from .elementwise import check_device, flat

__all__ = [
    "add", "first_token", "first_token_backward", "gelu_backward", "gelu_forward", "layer_norm_backward",
    "layer_norm_forward", "patchify", "prepend_token", "prepend_token_backward", "unpatchify",
]

_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@cuda.jit
def _add_kernel(A, B, out):
    """out[q] = A[q] + B[q mod |B|] (flat views: B repeats over A's leading axes)."""
    for q in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[q] = A[q] + B[q % B.shape[0]]


@cuda.jit
def _layer_norm_kernel(X, gamma, beta, eps, Y, xhat, inv):
    """One thread per token n of X (N, d): mean, variance, xhat and Y, features in ascending order."""
    for n in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        d = X.shape[1]
        s = np.float32(0.0)
        for i in range(d):
            s += X[n, i]
        mu = s / np.float32(d)
        v = np.float32(0.0)
        for i in range(d):
            c = X[n, i] - mu
            v += c * c
        r = np.float32(1.0) / math.sqrt(v / np.float32(d) + eps)
        inv[n] = r
        for i in range(d):
            h = (X[n, i] - mu) * r
            xhat[n, i] = h
            Y[n, i] = h * gamma[i] + beta[i]


@cuda.jit
def _layer_norm_params_kernel(dY, xhat, dgamma, dbeta):
    """dgamma[i] = sum_n dY[n, i] xhat[n, i], dbeta[i] = sum_n dY[n, i]; one thread per feature."""
    for i in range(cuda.grid(1), dgamma.shape[0], cuda.gridsize(1)):
        sg = np.float32(0.0)
        sb = np.float32(0.0)
        for n in range(dY.shape[0]):
            sg += dY[n, i] * xhat[n, i]
            sb += dY[n, i]
        dgamma[i] = sg
        dbeta[i] = sb


@cuda.jit
def _layer_norm_input_kernel(dY, xhat, inv, gamma, dX):
    """dX[n] = inv[n] (g - mean(g) - xhat mean(g xhat)), g = gamma dY[n]; one thread per token."""
    for n in range(cuda.grid(1), dY.shape[0], cuda.gridsize(1)):
        d = dY.shape[1]
        sg = np.float32(0.0)
        sgx = np.float32(0.0)
        for i in range(d):
            g = dY[n, i] * gamma[i]
            sg += g
            sgx += g * xhat[n, i]
        mg = sg / np.float32(d)
        mgx = sgx / np.float32(d)
        for i in range(d):
            dX[n, i] = inv[n] * (dY[n, i] * gamma[i] - mg - xhat[n, i] * mgx)


@cuda.jit
def _gelu_forward_kernel(X, Y):
    """Y[q] = X[q] Phi(X[q]) (flat views)."""
    for q in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        x = X[q]
        Y[q] = x * (np.float32(0.5) * (np.float32(1.0) + math.erf(x * _SQRT_HALF)))


@cuda.jit
def _gelu_backward_kernel(dY, X, dX):
    """dX[q] = dY[q] (Phi(x) + x phi(x)), x = X[q] (flat views)."""
    for q in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        x = X[q]
        cdf = np.float32(0.5) * (np.float32(1.0) + math.erf(x * _SQRT_HALF))
        pdf = math.exp(np.float32(-0.5) * x * x) * _INV_SQRT_2PI
        dX[q] = dY[q] * (cdf + x * pdf)


@cuda.jit
def _patchify_kernel(X, p, P):
    """P[b, t, c p^2 + i p + j] = X[b, c, p u + i, p v + j], t = u (W / p) + v; one thread per element of P."""
    B, T, width = P.shape
    for q in range(cuda.grid(1), B * T * width, cuda.gridsize(1)):
        b = q // (T * width)
        t = (q // width) % T
        col = q % width
        wp = X.shape[3] // p
        c = col // (p * p)
        i = (col // p) % p
        j = col % p
        P[b, t, col] = X[b, c, p * (t // wp) + i, p * (t % wp) + j]


@cuda.jit
def _unpatchify_kernel(dP, p, dX):
    """dX[b, c, y, x] = dP[b, (y // p) (W / p) + x // p, c p^2 + (y % p) p + x % p]; one thread per
    element of dX (a gather: every pixel is in exactly one patch)."""
    B, C, H, W = dX.shape
    for q in range(cuda.grid(1), B * C * H * W, cuda.gridsize(1)):
        b = q // (C * H * W)
        c = (q // (H * W)) % C
        y = (q // W) % H
        x = q % W
        dX[b, c, y, x] = dP[b, (y // p) * (W // p) + x // p, c * p * p + (y % p) * p + x % p]


@cuda.jit
def _prepend_token_kernel(X, token, Y):
    """Y[b, 0, i] = token[i], Y[b, 1 + t, i] = X[b, t, i]; one thread per element of Y."""
    B, T1, d = Y.shape
    for q in range(cuda.grid(1), B * T1 * d, cuda.gridsize(1)):
        b = q // (T1 * d)
        t = (q // d) % T1
        i = q % d
        Y[b, t, i] = token[i] if t == 0 else X[b, t - 1, i]


@cuda.jit
def _drop_first_token_kernel(dY, dX):
    """dX[b, t, i] = dY[b, t + 1, i]; one thread per element of dX."""
    B, T, d = dX.shape
    for q in range(cuda.grid(1), B * T * d, cuda.gridsize(1)):
        b = q // (T * d)
        t = (q // d) % T
        i = q % d
        dX[b, t, i] = dY[b, t + 1, i]


@cuda.jit
def _first_token_sum_kernel(dY, out):
    """out[i] = sum_b dY[b, 0, i], ascending b; one thread per feature."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        s = np.float32(0.0)
        for b in range(dY.shape[0]):
            s += dY[b, 0, i]
        out[i] = s


@cuda.jit
def _first_token_kernel(X, Y):
    """Y[b, i] = X[b, 0, i]; one thread per element of Y."""
    B, d = Y.shape
    for q in range(cuda.grid(1), B * d, cuda.gridsize(1)):
        Y[q // d, q % d] = X[q // d, 0, q % d]


@cuda.jit
def _first_token_backward_kernel(dY, dX):
    """dX[b, t, i] = dY[b, i] at t = 0, else 0; one thread per element of dX."""
    B, T, d = dX.shape
    for q in range(cuda.grid(1), B * T * d, cuda.gridsize(1)):
        b = q // (T * d)
        t = (q // d) % T
        i = q % d
        dX[b, t, i] = dY[b, i] if t == 0 else np.float32(0.0)


# --------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------


def _rows(A, d: int):
    """The (N, d) view of the C-contiguous device array ``A`` (..., d), N = A.size / d (no copy)."""
    return A.reshape(A.size // d, d)  # (..., d) -> (N, d)


def add(A, B):
    """``A + B`` as a new device array, ``B`` broadcast over the leading axes of ``A`` (see
    :func:`purerigl.kernels.host_transformer.add`).

    .. math:: \\mathrm{out}[\\ldots, k] = A[\\ldots, k] + B[k]

    Parameters
    ----------
    A : float32 device array, C-contiguous
    B : float32 device array whose shape is a suffix of A's (A's shape: a residual connection)
    """
    check_device("A", A)
    check_device("B", B)
    if len(B.shape) > len(A.shape) or tuple(A.shape)[len(A.shape) - len(B.shape):] != tuple(B.shape):
        raise ShapeError(f"add: B of shape {tuple(B.shape)} does not repeat over A of shape {tuple(A.shape)}")
    out = empty(tuple(A.shape), np.float32)
    if A.size and B.size:
        launch(_add_kernel, A.size, flat(A), flat(B), flat(out))
    return out


def layer_norm_forward(X, gamma, beta, eps):
    """Layer normalisation over the last axis on device arrays: ``(Y, xhat, inv)`` (see
    :func:`purerigl.kernels.host_transformer.layer_norm_forward`).

    .. math:: \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad y = \\gamma \\odot \\hat x + \\beta

    Parameters
    ----------
    X : float32 device array (..., d)
    gamma, beta : float32 device arrays (d,)
    eps : float

    Returns
    -------
    Y, xhat : float32 device arrays (..., d)
    inv : float32 device array (..., 1)
    """
    check_device("X", X)
    d = int(tuple(X.shape)[-1])  # tuple(): the simulator's shapes take no negative index
    check_device("gamma", gamma, shape=(d,))
    check_device("beta", beta, shape=(d,))
    Y, xhat = empty(tuple(X.shape), np.float32), empty(tuple(X.shape), np.float32)
    inv = empty((*tuple(X.shape)[:-1], 1), np.float32)
    n = X.size // d if d else 0
    if n:
        launch(_layer_norm_kernel, n, _rows(X, d), gamma, beta, np.float32(eps), _rows(Y, d), _rows(xhat, d),
               flat(inv))
    return Y, xhat, inv


def layer_norm_backward(dY, xhat, inv, gamma, dgamma, dbeta):
    """The input gradient of :func:`layer_norm_forward` on device arrays; writes ``dgamma`` and
    ``dbeta`` in place (see :func:`purerigl.kernels.host_transformer.layer_norm_backward`).

    .. math:: d\\gamma = \\sum dy \\odot \\hat x, \\quad d\\beta = \\sum dy, \\quad
              dx = \\frac{1}{\\sqrt{\\sigma^2 + \\epsilon}}
                   \\big(g - \\overline{g} - \\hat x \\, \\overline{g \\odot \\hat x}\\big),
              \\quad g = \\gamma \\odot dy

    Parameters
    ----------
    dY, xhat : float32 device arrays (..., d)
    inv : float32 device array (..., 1)
    gamma, dgamma, dbeta : float32 device arrays (d,)

    Returns
    -------
    dX : float32 device array (..., d)
    """
    check_device("dY", dY)
    d = int(tuple(dY.shape)[-1])
    check_device("xhat", xhat, shape=tuple(dY.shape))
    check_device("inv", inv, shape=(*tuple(dY.shape)[:-1], 1))
    for name, a in (("gamma", gamma), ("dgamma", dgamma), ("dbeta", dbeta)):
        check_device(name, a, shape=(d,))
    dX = empty(tuple(dY.shape), np.float32)
    n = dY.size // d if d else 0
    if not n:  # no token: the parameter gradients are sums of nothing
        fill_zeros(dgamma)
        fill_zeros(dbeta)
    else:
        launch(_layer_norm_params_kernel, d, _rows(dY, d), _rows(xhat, d), dgamma, dbeta)
        launch(_layer_norm_input_kernel, n, _rows(dY, d), _rows(xhat, d), flat(inv), gamma, _rows(dX, d))
    return dX


def gelu_forward(X):
    """The exact GELU elementwise on a device array (see :func:`purerigl.kernels.host_transformer.gelu_forward`).

    .. math:: y = \\frac{x}{2} \\Big(1 + \\mathrm{erf}\\big(x / \\sqrt 2\\big)\\Big)
    """
    check_device("X", X)
    Y = empty(tuple(X.shape), np.float32)
    launch(_gelu_forward_kernel, X.size, flat(X), flat(Y))
    return Y


def gelu_backward(dY, X):
    """The input gradient of :func:`gelu_forward` (see :func:`purerigl.kernels.host_transformer.gelu_backward`).

    .. math:: dx = dy \\, \\big(\\Phi(x) + x \\, \\varphi(x)\\big)
    """
    check_device("X", X)
    check_device("dY", dY, shape=tuple(X.shape))
    dX = empty(tuple(X.shape), np.float32)
    launch(_gelu_backward_kernel, X.size, flat(dY), flat(X), flat(dX))
    return dX


def patchify(X, patch: int):
    """Images (B, C, H, W) -> patch tokens (B, T, C p^2) on device arrays (see
    :func:`purerigl.kernels.host_transformer.patchify`).

    .. math:: P[b, u (W / p) + v, c p^2 + i p + j] = X[b, c, p u + i, p v + j]
    """
    check_device("X", X, ndim=4)
    B, C, H, W = (int(n) for n in X.shape)
    p = int(patch)
    if p < 1 or H % p or W % p:
        raise ShapeError(f"patchify: patch {p} does not divide the {H} x {W} images")
    P = empty((B, (H // p) * (W // p), C * p * p), np.float32)
    launch(_patchify_kernel, P.size, X, p, P)
    return P


def unpatchify(dP, patch: int, image_shape):
    """Patch tokens (B, T, C p^2) -> images (B, C, H, W) on device arrays, the inverse and adjoint of
    :func:`patchify` (see :func:`purerigl.kernels.host_transformer.unpatchify`).

    .. math:: dX[b, c, p u + i, p v + j] = dP[b, u (W / p) + v, c p^2 + i p + j]
    """
    C, H, W = (int(n) for n in image_shape)
    p = int(patch)
    check_device("dP", dP, ndim=3)
    B = int(dP.shape[0])
    check_device("dP", dP, shape=(B, (H // p) * (W // p), C * p * p))
    dX = empty((B, C, H, W), np.float32)
    launch(_unpatchify_kernel, dX.size, dP, p, dX)
    return dX


def prepend_token(X, token):
    """The class token before every sequence on device arrays, (B, T, d) -> (B, T + 1, d) (see
    :func:`purerigl.kernels.host_transformer.prepend_token`).

    .. math:: Y[b, 0] = c, \\qquad Y[b, 1 + t] = X[b, t]
    """
    check_device("X", X, ndim=3)
    B, T, d = (int(n) for n in X.shape)
    check_device("token", token, shape=(d,))
    Y = empty((B, T + 1, d), np.float32)
    launch(_prepend_token_kernel, Y.size, X, token, Y)
    return Y


def prepend_token_backward(dY, dtoken):
    """The gradients of :func:`prepend_token` on device arrays: returns dX (B, T, d) (a new
    C-contiguous array), writes the token's into ``dtoken`` (see
    :func:`purerigl.kernels.host_transformer.prepend_token_backward`).

    .. math:: dc = \\sum_b dY[b, 0], \\qquad dX = dY[:, 1:]
    """
    check_device("dY", dY, ndim=3)
    B, T1, d = (int(n) for n in dY.shape)
    check_device("dtoken", dtoken, shape=(d,))
    launch(_first_token_sum_kernel, d, dY, dtoken)
    dX = empty((B, T1 - 1, d), np.float32)
    launch(_drop_first_token_kernel, dX.size, dY, dX)
    return dX


def first_token(X):
    """Class-token pooling on device arrays, (B, T, d) -> X[:, 0] (B, d) (see
    :func:`purerigl.kernels.host_transformer.first_token`).

    .. math:: Y[b] = X[b, 0]
    """
    check_device("X", X, ndim=3)
    Y = empty((int(X.shape[0]), int(X.shape[2])), np.float32)
    launch(_first_token_kernel, Y.size, X, Y)
    return Y


def first_token_backward(dY, n_tokens: int):
    """The input gradient of :func:`first_token` on device arrays: dY (B, d) -> dX (B, T, d), zero
    but at token 0 (see :func:`purerigl.kernels.host_transformer.first_token_backward`).

    .. math:: dX[b, 0] = dY[b], \\qquad dX[b, t > 0] = 0
    """
    check_device("dY", dY, ndim=2)
    dX = empty((int(dY.shape[0]), int(n_tokens), int(dY.shape[1])), np.float32)
    launch(_first_token_backward_kernel, dX.size, dY, dX)
    return dX
