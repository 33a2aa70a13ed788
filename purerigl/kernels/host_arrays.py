"""The array operations of a training step on host NumPy arrays (the reference and cpu backends).

Layers, the loss and the optimizers never compute on arrays themselves: they call these operations
through their backend (``backend.add_bias(Y, b)``, ``backend.sgd_step(...)``), so the same model code
runs on host arrays here and on device arrays in :mod:`purerigl.kernels.cuda.arrays`, which has the
same functions, signatures and results (to float32 rounding). The list of names is
:data:`purerigl.kernels.registry.ARRAY_OPS`.

Every function here is the NumPy code the layers and optimizers held before they called a backend,
moved verbatim: the reference and cpu backends give bit-identical results to that code.

Residency: on the host there is nothing to move, so :func:`to_device` and :func:`to_host` return
their argument itself (no copy) unless ``out`` names another array to copy into.
"""

from __future__ import annotations

import math

import numpy as np

from .host_loss import softmax_cross_entropy as _softmax_cross_entropy

__all__ = [
    "adam_step", "add_bias", "add_bias_fm", "bias_grad", "bias_grad_fm", "dense_grad", "dense_matmul",
    "dense_matmul_t", "fill_zeros", "relu_backward", "relu_forward", "row_dots", "scale_rows", "sgd_step",
    "softmax_cross_entropy", "to_device", "to_host", "transpose", "zeros", "zeros_like",
]


# --------------------------------------------------------------------------------------------------
# Residency (nothing to do on the host)


def to_device(a, out=None):
    """The array (or sparse matrix) ``a`` where this backend computes: ``a`` itself on the host.

    Parameters
    ----------
    a : ndarray | Condensed | Diagonal | CSR
    out : ndarray, optional
        When given (and not ``a``), ``a`` is copied into it and ``out`` is returned.
    """
    if out is None or out is a:
        return a
    np.copyto(out, a)
    return out


def to_host(a, out=None):
    """The host NumPy array of ``a``: ``a`` itself here (see :func:`to_device` for ``out``)."""
    return to_device(a, out)


def zeros(shape, dtype=np.float32):
    """A new array of zeros."""
    return np.zeros(shape, dtype=dtype)


def zeros_like(a):
    """A new array of zeros shaped and typed like ``a``."""
    return np.zeros_like(a)


def fill_zeros(a):
    """Set every element of ``a`` to 0, in place; returns ``a``."""
    a[...] = 0.0
    return a


# --------------------------------------------------------------------------------------------------
# Layer pieces


def add_bias(Y, b):
    """``Y[b, i] += bias[i]`` in place; returns Y.

    .. math:: Y \\mathrel{+}= \\mathbf{1} \\, \\mathrm{bias}^T
    """
    Y += b
    return Y


def bias_grad(dY, out):
    """Column sums of dY (B, n) into ``out`` (n,); returns out.

    .. math:: \\mathrm{out}[i] = \\sum_b dY[b, i]
    """
    np.sum(dY, axis=0, out=out)
    return out


def add_bias_fm(YT, b):
    """``YT[i, b] += bias[i]`` in place, the feature-major layout of :func:`add_bias` (batch last,
    YT (n, B)); returns YT.

    .. math:: Y^T \\mathrel{+}= \\mathrm{bias} \\, \\mathbf{1}^T
    """
    YT += b[:, None]  # (n, 1) broadcast over the batch
    return YT


def bias_grad_fm(dYT, out):
    """Row sums of dYT (n, B) into ``out`` (n,), the feature-major layout of :func:`bias_grad`;
    returns out.

    .. math:: \\mathrm{out}[i] = \\sum_b dY^T[i, b]
    """
    np.sum(dYT, axis=1, out=out)
    return out


def relu_forward(X):
    """``(Y, mask)`` with ``mask = X > 0`` and ``Y = where(mask, X, 0)``.

    .. math:: m = [X > 0], \\qquad Y = m \\, X
    """
    mask = X > 0
    return np.where(mask, X, np.float32(0.0)), mask


def relu_backward(dY, mask):
    """``where(mask, dY, 0)``: the gradient passes where the input was positive.

    .. math:: dX = m \\, dY
    """
    return np.where(mask, dY, np.float32(0.0))


def dense_matmul(W, X):
    """Dense forward product of W (n_out, n_in) and X (B, n_in) (BLAS).

    .. math:: Y = X W^T
    """
    return X @ W.T


def dense_matmul_t(W, dY):
    """Dense input gradient of W (n_out, n_in) and dY (B, n_out) (BLAS).

    .. math:: dX = dY \\, W
    """
    return dY @ W


def dense_grad(X, dY, out):
    """Dense weight gradient into ``out`` (n_out, n_in); returns out.

    .. math:: dW = dY^T X
    """
    np.matmul(dY.T, X, out=out)
    return out


def transpose(A):
    """``A^T`` as a new C-contiguous array, (n, m) -> (m, n): a change between the row layout
    (batch first) and the feature-major layout (batch last) of the products ``matmul_fm`` & co.

    .. math:: A^T[j, i] = A[i, j]
    """
    return np.ascontiguousarray(A.T)  # (m, n)


# --------------------------------------------------------------------------------------------------
# Loss


def scale_rows(A, g, out=None):
    """Each row of ``A`` times its factor (DynaDiag's gated diagonal values and their gradient).

    .. math:: \\mathrm{out}[k, t] = g_k \\, A[k, t]

    Parameters
    ----------
    A : float32 ndarray (K, L)
    g : float32 ndarray (K,)
    out : float32 ndarray (K, L), optional
        Written in place and returned; a new array when omitted.
    """
    return np.multiply(A, g[:, None], out=out)


def row_dots(A, B):
    """float64 (K,): the dot product of every row of ``A`` with the same row of ``B``, summed in float64
    (the gradient of a loss with respect to DynaDiag's gates: :math:`\\sum_t V_{k,t} G_{k,t}`).

    .. math:: \\mathrm{out}[k] = \\sum_t A[k, t] \\, B[k, t]
    """
    return np.einsum("kt,kt->k", A.astype(np.float64), B.astype(np.float64))


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy, its gradient and the number of correct predictions.

    :func:`purerigl.nn.softmax_cross_entropy` plus ``(logits.argmax(axis=1) == labels).sum()``.

    .. math::

        L = \\frac{1}{B} \\sum_b \\Big( \\log \\sum_c e^{z_{bc}} - z_{b, y_b} \\Big), \\qquad
        \\frac{\\partial L}{\\partial z_{bc}} = \\frac{\\mathrm{softmax}(z_b)_c - [c = y_b]}{B}

    Returns
    -------
    loss : float
    dlogits : float32 ndarray (B, C)
    n_correct : int
    """
    loss, grad = _softmax_cross_entropy(logits, labels)
    return loss, grad, int((logits.argmax(axis=1) == labels).sum())


# --------------------------------------------------------------------------------------------------
# Optimizer updates


def sgd_step(w, g, buf, lr, momentum=0.0, nesterov=False, weight_decay=0.0, decay=True):
    """One SGD update in place (PyTorch's SGD without dampening); ``buf`` is None without momentum.

    .. math::

        g &= \\nabla_w L + \\lambda w \\quad (\\lambda \\ne 0 \\text{ and } decay), \\qquad
        b \\leftarrow \\mu b + g

        u &= g + \\mu b \\ \\text{(Nesterov)} \\quad\\text{or}\\quad u = b
             \\quad (u = g \\text{ when } \\mu = 0), \\qquad w \\leftarrow w - \\eta u
    """
    if weight_decay and decay:
        g = g + np.float32(weight_decay) * w  # new array: the gradient is left untouched
    if momentum:
        mu = np.float32(momentum)
        buf *= mu
        buf += g
        update = g + mu * buf if nesterov else buf
    else:
        update = g
    w -= np.float32(lr) * update
    return w


def adam_step(w, g, m, v, lr, step, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decay=True,
              decoupled=False):
    """One Adam (L2) or AdamW (``decoupled``) update in place; ``step`` t >= 1 includes this step.

    .. math::

        w &\\leftarrow w (1 - \\eta \\lambda) \\ \\text{(AdamW)}, \\qquad
        g = \\nabla_w L + \\lambda w \\ \\text{(Adam)}

        m &\\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\qquad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2

        w &\\leftarrow w - \\frac{\\eta}{1 - \\beta_1^t} \\,
             \\frac{m}{\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon}
    """
    wd = weight_decay if decay else 0.0
    if wd and decoupled:
        w *= np.float32(1.0 - lr * wd)
    elif wd:
        g = g + np.float32(wd) * w  # new array: the gradient is left untouched
    b1, b2 = betas
    m *= np.float32(b1)
    m += np.float32(1.0 - b1) * g
    v *= np.float32(b2)
    v += np.float32(1.0 - b2) * (g * g)
    t = step
    step_size = np.float32(lr / (1.0 - b1**t))
    sqrt_bc2 = np.float32(math.sqrt(1.0 - b2**t))
    scratch = np.sqrt(v)  # one float32 temporary, reused for the whole update
    scratch /= sqrt_bc2
    scratch += np.float32(eps)
    np.divide(m, scratch, out=scratch)
    scratch *= step_size
    w -= scratch
    return w
