"""The array operations of a transformer on host NumPy arrays: the specification (reference and cpu
backends) of the transformer part of :data:`purerigl.kernels.registry.ARRAY_OPS`.

The layers of :mod:`purerigl.nn.transformer`, :mod:`purerigl.nn.attention` and
:mod:`purerigl.nn.vit_layers` call these through their backend (``backend.layer_norm_forward(...)``),
so one model text runs on host arrays here and on device arrays in
:mod:`purerigl.kernels.cuda.transformer` and :mod:`purerigl.kernels.cuda.attention`, which have the
same functions, signatures and results (to float32 rounding). Every function here is the NumPy code
those layers held before they called a backend, moved verbatim, so the reference and cpu backends
compute exactly what they computed before. They compute in the input's dtype (float32 to train,
float64 for the gradient checks).

Shapes: B sequences (images) of T tokens of width d; h heads of width d_h = d / h; p the patch.

- residual and position embedding: :func:`add` (A + B, B broadcast over A's leading axes);
- :func:`layer_norm_forward` / :func:`layer_norm_backward` over the last axis;
- :func:`gelu_forward` / :func:`gelu_backward`, the exact (erf) GELU;
- :func:`self_attention_forward` / :func:`self_attention_backward`: scaled dot-product attention per
  head, read from and written to the fused (B, T, 3d) QKV layout of
  :class:`~purerigl.nn.attention.MultiHeadSelfAttention` (built from :func:`attention_forward`,
  :func:`attention_backward`, :func:`split_heads` and :func:`merge_heads`, the maths over
  (B, h, T, d_h));
- :func:`patchify` / :func:`unpatchify`: images to patch tokens and back (a permutation, so the
  adjoint is the inverse);
- :func:`prepend_token` / :func:`prepend_token_backward`: the class token joined to the patches;
  :func:`first_token` / :func:`first_token_backward`: class-token pooling.

The position embedding's gradient, the sum of dY over the batch, is ``bias_grad`` on the (B, T d)
view (:mod:`purerigl.kernels.host_arrays`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

__all__ = [
    "add", "attention_backward", "attention_forward", "first_token", "first_token_backward", "gelu_backward",
    "gelu_forward", "layer_norm_backward", "layer_norm_forward", "merge_heads", "merge_heads_fm", "patchify",
    "prepend_token", "prepend_token_backward", "self_attention_backward", "self_attention_backward_fm",
    "self_attention_forward", "self_attention_forward_fm", "split_heads", "split_heads_fm", "unpatchify",
]

#: The transformer operations of ARRAY_OPS (what the backends export).
OPS = (
    "add", "layer_norm_forward", "layer_norm_backward", "gelu_forward", "gelu_backward", "self_attention_forward",
    "self_attention_backward", "patchify", "unpatchify", "prepend_token", "prepend_token_backward", "first_token",
    "first_token_backward",
)


# --------------------------------------------------------------------------------------------------
# residual


def add(A, B):
    """``A + B`` as a new array, ``B`` broadcast over the leading axes of ``A`` (B's shape a suffix of
    A's): a residual connection (same shapes) or position embeddings E (T, d) added to X (B, T, d).

    .. math:: \\mathrm{out}[\\ldots, k] = A[\\ldots, k] + B[k]
    """
    return A + B


# --------------------------------------------------------------------------------------------------
# layer normalisation and GELU


def layer_norm_forward(X, gamma, beta, eps):
    """Layer normalisation of every token over its d features: ``(Y, xhat, inv)``.

    .. math::

        \\mu = \\frac{1}{d} \\sum_i x_i, \\qquad \\sigma^2 = \\frac{1}{d} \\sum_i (x_i - \\mu)^2, \\qquad
        \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad y = \\gamma \\odot \\hat x + \\beta

    Parameters
    ----------
    X : ndarray (..., d)
    gamma, beta : ndarray (d,)
    eps : float

    Returns
    -------
    Y, xhat : ndarray (..., d)
    inv : ndarray (..., 1)
        :math:`1 / \\sqrt{\\sigma^2 + \\epsilon}` per token (what the backward needs, with xhat).
    """
    xc = X - X.mean(axis=-1, keepdims=True)  # (..., d)
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xc * inv
    return xhat * gamma + beta, xhat, inv


def layer_norm_backward(dY, xhat, inv, gamma, dgamma, dbeta):
    """The input gradient of :func:`layer_norm_forward`; writes the parameters' gradients in place.

    .. math::

        d\\gamma = \\sum_{\\text{tokens}} dy \\odot \\hat x, \\qquad d\\beta = \\sum_{\\text{tokens}} dy, \\qquad
        g = \\gamma \\odot dy, \\qquad
        dx = \\frac{1}{\\sqrt{\\sigma^2 + \\epsilon}}
             \\big(g - \\overline{g} - \\hat x \\, \\overline{g \\odot \\hat x}\\big)

    with the bars the means over the d features of the token.

    Parameters
    ----------
    dY, xhat : ndarray (..., d)
    inv : ndarray (..., 1)
        From the forward.
    gamma : ndarray (d,)
    dgamma, dbeta : ndarray (d,)
        Overwritten with the gradients of gamma and beta.

    Returns
    -------
    dX : ndarray (..., d)
    """
    lead = tuple(range(dY.ndim - 1))
    dgamma[...] = (dY * xhat).sum(axis=lead)
    dbeta[...] = dY.sum(axis=lead)
    g = dY * gamma  # (..., d)
    return inv * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(X):
    """The exact (erf) GELU, elementwise (erf from :func:`scipy.special.erf`, in the input's dtype).

    .. math:: y = x \\, \\Phi(x) = \\frac{x}{2} \\Big(1 + \\mathrm{erf}\\big(x / \\sqrt 2\\big)\\Big)
    """
    return X * (0.5 * (1.0 + erf(X * _SQRT_HALF))).astype(X.dtype, copy=False)


def gelu_backward(dY, X):
    """The input gradient of :func:`gelu_forward` at its input X.

    .. math:: dx = dy \\, \\big(\\Phi(x) + x \\, \\varphi(x)\\big), \\qquad
              \\varphi(x) = \\frac{e^{-x^2 / 2}}{\\sqrt{2 \\pi}}
    """
    cdf = 0.5 * (1.0 + erf(X * _SQRT_HALF))
    pdf = np.exp(-0.5 * X * X) * _INV_SQRT_2PI
    return dY * (cdf + X * pdf).astype(dY.dtype, copy=False)


# --------------------------------------------------------------------------------------------------
# scaled dot-product attention


def _softmax(S: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the row maximum."""
    E = np.exp(S - S.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def attention_forward(Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(O, A) for Q, K, V (B, h, T, d_h): O (B, h, T, d_h) and the attention weights A (B, h, T, T).

    .. math:: S = \\frac{Q K^T}{\\sqrt{d_h}}, \\qquad
              A_{qk} = \\frac{e^{S_{qk}}}{\\sum_{k'} e^{S_{qk'}}}, \\qquad O = A V
    """
    scale = Q.dtype.type(1.0 / np.sqrt(Q.shape[-1]))
    A = _softmax((Q @ np.swapaxes(K, -1, -2)) * scale)  # (B, h, T, T)
    return A @ V, A


def attention_backward(dO, Q, K, V, A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dQ, dK, dV) (B, h, T, d_h) for the output gradient dO (B, h, T, d_h).

    With s = 1 / sqrt(d_h) the softmax Jacobian-vector product is, per row q,

    .. math::

        dV = A^T dO, \\qquad dA = dO \\, V^T, \\qquad
        dS_{qk} = A_{qk} \\Big(dA_{qk} - \\sum_{k'} A_{qk'} dA_{qk'}\\Big), \\qquad
        dQ = s \\, dS \\, K, \\qquad dK = s \\, dS^T Q
    """
    scale = Q.dtype.type(1.0 / np.sqrt(Q.shape[-1]))
    dV = np.swapaxes(A, -1, -2) @ dO  # (B, h, T, d_h)
    dA = dO @ np.swapaxes(V, -1, -2)  # (B, h, T, T)
    dS = A * (dA - (A * dA).sum(axis=-1, keepdims=True))  # (B, h, T, T)
    dQ = (dS @ K) * scale
    dK = (np.swapaxes(dS, -1, -2) @ Q) * scale
    return dQ, dK, dV


def split_heads(X: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, d) -> (B, h, T, d / h): column j d_h + c of X is column c of head j."""
    B, T, d = X.shape
    return X.reshape(B, T, heads, d // heads).transpose(0, 2, 1, 3)  # (B, T, h, d_h) -> (B, h, T, d_h)


def merge_heads(X: np.ndarray) -> np.ndarray:
    """(B, h, T, d_h) -> (B, T, h * d_h), the inverse of :func:`split_heads` (a C-contiguous copy)."""
    B, h, T, dh = X.shape
    return np.ascontiguousarray(X.transpose(0, 2, 1, 3)).reshape(B, T, h * dh)  # (B, T, h, d_h) -> (B, T, d)


def self_attention_forward(QKV, heads: int):
    """Multi-head scaled dot-product attention read from the fused projection: ``(O, A)``.

    Columns 0 ... d - 1 of QKV are the queries, d ... 2d - 1 the keys, 2d ... 3d - 1 the values, and
    columns j d_h ... (j + 1) d_h - 1 of each the head j (:mod:`purerigl.nn.attention`):

    .. math:: A_j = \\mathrm{softmax}\\Big(\\frac{Q_j K_j^T}{\\sqrt{d_h}}\\Big), \\qquad
              O = [A_1 V_1 \\cdots A_h V_h]

    Parameters
    ----------
    QKV : ndarray (B, T, 3d)
    heads : int
        h, dividing d.

    Returns
    -------
    O : ndarray (B, T, d)
        The heads' outputs side by side (the input of the output projection).
    A : ndarray (B, h, T, T)
        The attention weights (rows sum to 1), for the backward.
    """
    d = QKV.shape[-1] // 3
    Q, K, V = (split_heads(QKV[..., i * d:(i + 1) * d], heads) for i in range(3))  # each (B, h, T, d_h)
    O, A = attention_forward(Q, K, V)
    return merge_heads(O), A  # (B, T, d), (B, h, T, T)


def self_attention_backward(dO, QKV, A, heads: int):
    """The gradient [dQ dK dV] (B, T, 3d) of :func:`self_attention_forward` for dO (B, T, d).

    .. math:: dV_j = A_j^T dO_j, \\qquad
              dS_j = A_j \\odot \\big(dO_j V_j^T - \\mathrm{rowsum}(A_j \\odot dO_j V_j^T)\\big),
              \\qquad dQ_j = \\frac{dS_j K_j}{\\sqrt{d_h}}, \\qquad dK_j = \\frac{dS_j^T Q_j}{\\sqrt{d_h}}

    (:func:`attention_backward` per head).
    """
    d = QKV.shape[-1] // 3
    Q, K, V = (split_heads(QKV[..., i * d:(i + 1) * d], heads) for i in range(3))  # each (B, h, T, d_h)
    grads = attention_backward(split_heads(dO, heads), Q, K, V, A)
    return np.concatenate([merge_heads(g) for g in grads], axis=-1)  # (B, T, 3d)


# The same attention with the tokens feature-major, (width, B * T) with column b T + t the token t of
# sequence b: what the projections compute in from 4 token rows on the host backends. The heads are read
# from and written to that layout directly, so no (B, T, width) copy is made between the projections
# (host only: the cuda backend's projections compute in rows).


def split_heads_fm(XT: np.ndarray, heads: int, B: int, T: int) -> np.ndarray:
    """(d, B*T) -> (B, h, T, d / h), a view: row j d_h + c of X^T is column c of head j."""
    d = XT.shape[0]
    return XT.reshape(heads, d // heads, B, T).transpose(2, 0, 3, 1)  # (h, d_h, B, T) -> (B, h, T, d_h)


def merge_heads_fm(X: np.ndarray) -> np.ndarray:
    """(B, h, T, d_h) -> (h * d_h, B*T), the inverse of :func:`split_heads_fm` (a C-contiguous copy)."""
    B, h, T, dh = X.shape
    return np.ascontiguousarray(X.transpose(1, 3, 0, 2)).reshape(h * dh, B * T)  # (h, d_h, B, T) -> (d, B*T)


def self_attention_forward_fm(QKVT, heads: int, B: int, T: int):
    """:func:`self_attention_forward` on the feature-major fused projection QKV^T (3d, B*T): ``(O^T, A)``,
    O^T (d, B*T) and A (B, h, T, T). Rows 0 ... d - 1 of QKV^T are the queries, then the keys, the values.
    """
    d = QKVT.shape[0] // 3
    Q, K, V = (split_heads_fm(QKVT[i * d:(i + 1) * d], heads, B, T) for i in range(3))  # each (B, h, T, d_h)
    O, A = attention_forward(Q, K, V)
    return merge_heads_fm(O), A  # (d, B*T), (B, h, T, T)


def self_attention_backward_fm(dOT, QKVT, A, heads: int, B: int, T: int):
    """:func:`self_attention_backward` feature-major: [dQ dK dV]^T (3d, B*T) for dO^T (d, B*T)."""
    d = QKVT.shape[0] // 3
    Q, K, V = (split_heads_fm(QKVT[i * d:(i + 1) * d], heads, B, T) for i in range(3))  # each (B, h, T, d_h)
    grads = attention_backward(split_heads_fm(dOT, heads, B, T), Q, K, V, A)
    return np.concatenate([merge_heads_fm(g) for g in grads], axis=0)  # (3d, B*T)


# --------------------------------------------------------------------------------------------------
# the layers around the blocks of a vision transformer


def patchify(X, patch: int):
    """Images (B, C, H, W) -> patch tokens (B, T, C p^2), T = H W / p^2 (a copy).

    Patch (u, v) is token t = u (W / p) + v, flattened in the order (c, i, j):

    .. math:: P[b, t, c p^2 + i p + j] = X[b, c, p u + i, p v + j]
    """
    B, C, H, W = X.shape
    p = int(patch)
    six = X.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return np.ascontiguousarray(six).reshape(B, (H // p) * (W // p), C * p * p)  # (B, T, C*p*p)


def unpatchify(dP, patch: int, image_shape):
    """Patch tokens (B, T, C p^2) -> images (B, C, H, W): the inverse of :func:`patchify`, which is a
    permutation of the pixels, so also its adjoint (the input gradient of the patch extraction).

    .. math:: dX[b, c, p u + i, p v + j] = dP[b, u (W / p) + v, c p^2 + i p + j]

    Parameters
    ----------
    dP : ndarray (B, T, C p^2)
    patch : int
    image_shape : (int, int, int)
        (C, H, W).
    """
    C, H, W = (int(n) for n in image_shape)
    B, p = dP.shape[0], int(patch)
    six = dP.reshape(B, H // p, W // p, C, p, p).transpose(0, 3, 1, 4, 2, 5)  # (B, C, H/p, p, W/p, p)
    return np.ascontiguousarray(six).reshape(B, C, H, W)  # (B, C, H, W)


def prepend_token(X, token):
    """The class token before every sequence: (B, T, d) -> (B, T + 1, d).

    .. math:: Y[b, 0] = c, \\qquad Y[b, 1 + t] = X[b, t]
    """
    B, T, d = X.shape
    Y = np.empty((B, T + 1, d), dtype=np.result_type(X, token))
    Y[:, 0] = token
    Y[:, 1:] = X
    return Y


def prepend_token_backward(dY, dtoken):
    """The gradients of :func:`prepend_token`: returns dX (B, T, d), writes the token's into ``dtoken``.

    .. math:: dc = \\sum_b dY[b, 0], \\qquad dX = dY[:, 1:]
    """
    dtoken[...] = dY[:, 0].sum(axis=0)
    return dY[:, 1:]


def first_token(X):
    """Class-token pooling: (B, T, d) -> X[:, 0] (B, d) (a copy).

    .. math:: Y[b] = X[b, 0]
    """
    return np.ascontiguousarray(X[:, 0])


def first_token_backward(dY, n_tokens: int):
    """The input gradient of :func:`first_token`: dY (B, d) -> dX (B, T, d), zero but at token 0.

    .. math:: dX[b, 0] = dY[b], \\qquad dX[b, t > 0] = 0
    """
    B, d = dY.shape
    dX = np.zeros((B, int(n_tokens), d), dtype=dY.dtype)
    dX[:, 0] = dY
    return dX
