"""Multi-head scaled dot-product self-attention on device arrays, read from and written to the fused
QKV layout: the cuda side of ``self_attention_forward`` / ``self_attention_backward``.

Same signatures and meaning as :func:`purerigl.kernels.host_transformer.self_attention_forward` and
:func:`~purerigl.kernels.host_transformer.self_attention_backward` (the specification): QKV
(B, T, 3d) with the queries in columns 0 ... d - 1, the keys in d ... 2d - 1, the values in
2d ... 3d - 1, head j in columns j d_h ... (j + 1) d_h - 1 of each; s = 1 / sqrt(d_h).

Why two fused operations and not batched products plus a row softmax: the kernels index the heads
inside the (B, T, 3d) projection output and write the (B, T, d) input of the output projection (and
the (B, T, 3d) gradient of the fused projection) directly, so no head split or merge is ever copied
(a strided (B, h, T, d_h) view of a device array cannot be reshaped without a copy), and a step
launches four kernels for the whole attention instead of about a dozen.

Kernels, each with one thread per independent output and private float32 accumulators summed in
ascending index order (no atomics: results repeat exactly from run to run):

1. scores and softmax, one thread per query row (b, j, q): A[b, j, q, :] = softmax(s Q K^T), the
   scores written into A, then shifted by the row maximum, exponentiated and normalised in place;
2. O[b, q, j d_h + c] = sum_k A[b, j, q, k] V[b, k, j d_h + c], one thread per output element;
3. backward, one thread per row (b, j, q): dA[q, k] = dO[q] . V[k], then
   dS[q, k] = A[q, k] (dA[q, k] - sum_k' A[q, k'] dA[q, k']) (a (B, h, T, T) scratch array);
4. backward, one thread per element of dQKV (B, T, 3d):
   dQ = s dS K, dK = s dS^T Q, dV = A^T dO.

Memory: A (B, h, T, T) is kept by the layer for the backward (as on the host); the backward adds
dS of the same size, released when it returns.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from ._launch import cuda, empty, launch
from .elementwise import check_device

__all__ = ["self_attention_backward", "self_attention_forward"]

_NEG_INF = np.float32(-np.inf)


@cuda.jit
def _scores_softmax_kernel(QKV, heads, scale, A):
    """A[b, j, q, :] = softmax_k(s sum_c Q[b, q, j dh + c] K[b, k, j dh + c]); one thread per row."""
    B, h, T, _ = A.shape
    for r in range(cuda.grid(1), B * h * T, cuda.gridsize(1)):
        b = r // (h * T)
        j = (r // T) % h
        q = r % T
        d = QKV.shape[2] // 3
        dh = d // heads
        qo = j * dh
        ko = d + j * dh
        m = _NEG_INF
        for k in range(T):
            s = np.float32(0.0)
            for c in range(dh):
                s += QKV[b, q, qo + c] * QKV[b, k, ko + c]
            s = s * scale
            A[b, j, q, k] = s
            if s > m:
                m = s
        total = np.float32(0.0)
        for k in range(T):
            e = math.exp(A[b, j, q, k] - m)
            A[b, j, q, k] = e
            total += e
        for k in range(T):
            A[b, j, q, k] = A[b, j, q, k] / total


@cuda.jit
def _weighted_values_kernel(QKV, A, O):
    """O[b, q, j dh + c] = sum_k A[b, j, q, k] V[b, k, j dh + c]; one thread per element of O."""
    B, T, d = O.shape
    for e in range(cuda.grid(1), B * T * d, cuda.gridsize(1)):
        b = e // (T * d)
        q = (e // d) % T
        col = e % d
        j = col // (d // A.shape[1])
        s = np.float32(0.0)
        for k in range(T):
            s += A[b, j, q, k] * QKV[b, k, 2 * d + col]
        O[b, q, col] = s


@cuda.jit
def _score_grad_kernel(dO, QKV, A, dS):
    """dS[b, j, q, k] = A (dA - sum_k' A dA), dA[q, k] = sum_c dO[b, q, j dh + c] V[b, k, j dh + c];
    one thread per row (b, j, q)."""
    B, h, T, _ = A.shape
    for r in range(cuda.grid(1), B * h * T, cuda.gridsize(1)):
        b = r // (h * T)
        j = (r // T) % h
        q = r % T
        d = dO.shape[2]
        dh = d // h
        vo = 2 * d + j * dh
        dot = np.float32(0.0)
        for k in range(T):
            s = np.float32(0.0)
            for c in range(dh):
                s += dO[b, q, j * dh + c] * QKV[b, k, vo + c]
            dS[b, j, q, k] = s
            dot += A[b, j, q, k] * s
        for k in range(T):
            dS[b, j, q, k] = A[b, j, q, k] * (dS[b, j, q, k] - dot)


@cuda.jit
def _qkv_grad_kernel(dO, QKV, A, dS, scale, dQKV):
    """One thread per element of dQKV (B, T, 3d): column part * d + j dh + c of token t gets
    dQ = s sum_k dS[q=t, k] K[k], dK = s sum_q dS[q, k=t] Q[q] or dV = sum_q A[q, k=t] dO[q]."""
    B, T, d3 = dQKV.shape
    for e in range(cuda.grid(1), B * T * d3, cuda.gridsize(1)):
        b = e // (T * d3)
        t = (e // d3) % T
        col3 = e % d3
        d = d3 // 3
        part = col3 // d
        col = col3 % d
        j = col // (d // A.shape[1])
        s = np.float32(0.0)
        if part == 0:
            for k in range(T):
                s += dS[b, j, t, k] * QKV[b, k, d + col]
            s = s * scale
        elif part == 1:
            for q in range(T):
                s += dS[b, j, q, t] * QKV[b, q, col]
            s = s * scale
        else:
            for q in range(T):
                s += A[b, j, q, t] * dO[b, q, col]
        dQKV[b, t, col3] = s


def _check_qkv(QKV, heads: int) -> tuple[int, int, int, int]:
    """(B, T, d, h) of the fused projection output QKV (B, T, 3d), h dividing d."""
    check_device("QKV", QKV, ndim=3)
    B, T, d3 = (int(n) for n in QKV.shape)
    h = int(heads)
    if d3 % 3 or h < 1 or (d3 // 3) % h:
        raise ShapeError(f"self-attention needs QKV (B, T, 3d) with d divisible by heads = {heads}, "
                         f"got shape {tuple(QKV.shape)}")
    return B, T, d3 // 3, h


def _scale(d: int, h: int) -> np.float32:
    """s = 1 / sqrt(d_h), rounded to float32 as the specification rounds it."""
    return np.float32(1.0 / np.sqrt(d // h))


def self_attention_forward(QKV, heads: int):
    """Multi-head attention on device arrays: ``(O, A)`` (see
    :func:`purerigl.kernels.host_transformer.self_attention_forward`).

    .. math:: A_j = \\mathrm{softmax}\\Big(\\frac{Q_j K_j^T}{\\sqrt{d_h}}\\Big), \\qquad
              O = [A_1 V_1 \\cdots A_h V_h]

    Parameters
    ----------
    QKV : float32 device array (B, T, 3d)
    heads : int

    Returns
    -------
    O : float32 device array (B, T, d)
    A : float32 device array (B, h, T, T)
    """
    B, T, d, h = _check_qkv(QKV, heads)
    A = empty((B, h, T, T), np.float32)
    O = empty((B, T, d), np.float32)
    launch(_scores_softmax_kernel, B * h * T, QKV, h, _scale(d, h), A)
    launch(_weighted_values_kernel, O.size, QKV, A, O)
    return O, A


def self_attention_backward(dO, QKV, A, heads: int):
    """The gradient [dQ dK dV] (B, T, 3d) of :func:`self_attention_forward` on device arrays (see
    :func:`purerigl.kernels.host_transformer.self_attention_backward`).

    .. math:: dS_j = A_j \\odot \\big(dO_j V_j^T - \\mathrm{rowsum}(A_j \\odot dO_j V_j^T)\\big), \\quad
              dQ_j = s \\, dS_j K_j, \\quad dK_j = s \\, dS_j^T Q_j, \\quad dV_j = A_j^T dO_j

    Parameters
    ----------
    dO : float32 device array (B, T, d)
    QKV : float32 device array (B, T, 3d)
    A : float32 device array (B, h, T, T), from the forward
    heads : int

    Returns
    -------
    dQKV : float32 device array (B, T, 3d)
    """
    B, T, d, h = _check_qkv(QKV, heads)
    check_device("dO", dO, shape=(B, T, d))
    check_device("A", A, shape=(B, h, T, T))
    dS = empty((B, h, T, T), np.float32)  # scratch, released on return
    dQKV = empty((B, T, 3 * d), np.float32)
    launch(_score_grad_kernel, B * h * T, dO, QKV, A, dS)
    launch(_qkv_grad_kernel, dQKV.size, dO, QKV, A, dS, _scale(d, h), dQKV)
    return dQKV
