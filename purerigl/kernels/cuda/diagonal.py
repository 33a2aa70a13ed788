"""CUDA kernels of the products on Diagonal matrices: three gathers, one thread per output.

A Diagonal matrix of shape (n_out, n_in) stores K wrap-around diagonals ``values`` (K, L) at
``offsets`` (K,), L = min(n_out, n_in), M = P = max(n_out, n_in) (see
:mod:`purerigl.formats.diagonal`). As in :mod:`purerigl.kernels.cpu.diagonal`, every operation is one
of three gathers, each output an independent sum (no scatter, no atomics):

.. math::

    \\text{plus:}\\quad  out[b, p] &= \\sum_k V[k, p] \\, S[b, (p + d_k) \\bmod M],
        \\qquad p < L \\\\
    \\text{minus:}\\quad out[b, p] &= \\sum_k [u < L] \\, V[k, u] \\, S[b, u],
        \\quad u = (p - d_k) \\bmod M, \\quad p < M \\\\
    \\text{sddmm:}\\quad dV[k, t] &= \\sum_b A[b, t] \\, S[b, (t + d_k) \\bmod M], \\qquad t < L

=============  ===========================  ===========================
operation      wide (n_out < n_in)          tall or square
=============  ===========================  ===========================
matmul         plus  (S = X)                minus (S = X)
matmul_t       minus (S = dY)               plus  (S = dY)
sddmm          A = dY, S = X                A = X, S = dY
=============  ===========================  ===========================

:class:`DeviceDiagonal` holds the arrays on the device; the drivers take device arrays and return
device arrays (no host copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._device import batch_dot
from ._launch import cuda, launch, to_device


@dataclass(frozen=True)
class DeviceDiagonal:
    """A Diagonal matrix on the device: ``offsets`` int32 (K,), ``values`` float32 (K, L), device arrays
    (``values`` may be updated in place).

    The structure (``offsets``) must not be written in place. Device arrays cannot be made read-only as
    the host formats' structure arrays are (:class:`purerigl.formats.SparseFormat`); what holds instead:
    :meth:`from_host` copies (the host matrix and the device one share no memory), no kernel caches
    anything derived from the structure (every product reads it afresh), and a topology update builds a
    new device matrix."""

    shape: tuple[int, int]
    offsets: object
    values: object

    @property
    def is_wide(self) -> bool:
        return self.shape[0] < self.shape[1]

    @classmethod
    def from_host(cls, W) -> DeviceDiagonal:
        return cls(tuple(W.shape), to_device(W.offsets), to_device(W.values))


@cuda.jit
def _gather_plus(offsets, V, S, out):
    """out[b, p] = sum_k V[k, p] S[b, (p + d_k) mod M] for p < L; one thread per (b, p).

    Implements :func:`purerigl.kernels.reference.matmul` of a wide W (S = X) and
    :func:`purerigl.kernels.reference.matmul_t` of a tall or square W (S = dY).

    .. math:: out[b, p] = \\sum_k V[k, p] \\, S[b, (p + d_k) \\bmod M]
    """
    B, L = out.shape
    M = S.shape[1]
    for q in range(cuda.grid(1), B * L, cuda.gridsize(1)):
        b = q // L
        p = q % L
        s = np.float32(0.0)
        for k in range(offsets.shape[0]):
            c = p + offsets[k]
            if c >= M:
                c -= M
            s += V[k, p] * S[b, c]
        out[b, p] = s


@cuda.jit
def _gather_minus(offsets, V, S, out):
    """out[b, p] = sum_k [u < L] V[k, u] S[b, u], u = (p - d_k) mod M, p < M; one thread per (b, p).

    Implements :func:`purerigl.kernels.reference.matmul` of a tall or square W (S = X) and
    :func:`purerigl.kernels.reference.matmul_t` of a wide W (S = dY).

    .. math:: out[b, p] = \\sum_k [u_k < L] \\, V[k, u_k] \\, S[b, u_k], \\qquad u_k = (p - d_k) \\bmod M
    """
    B, M = out.shape
    L = S.shape[1]
    for q in range(cuda.grid(1), B * M, cuda.gridsize(1)):
        b = q // M
        p = q % M
        s = np.float32(0.0)
        for k in range(offsets.shape[0]):
            u = p - offsets[k]
            if u < 0:
                u += M
            if u < L:
                s += V[k, u] * S[b, u]
        out[b, p] = s


@cuda.jit
def _sddmm_kernel(offsets, A, S, dV):
    """dV[k, t] = sum_b A[b, t] S[b, (t + d_k) mod M]; one thread per stored entry (k, t).

    Implements :func:`purerigl.kernels.reference.sddmm` (A = dY, S = X for a wide W; A = X, S = dY
    otherwise).

    .. math:: dV[k, t] = \\sum_b A[b, t] \\, S[b, (t + d_k) \\bmod M]
    """
    K, L = dV.shape
    M = S.shape[1]
    for q in range(cuda.grid(1), K * L, cuda.gridsize(1)):
        k = q // L
        t = q % L
        c = t + offsets[k]
        if c >= M:
            c -= M
        dV[k, t] = batch_dot(A, t, S, c)


def matmul(W: DeviceDiagonal, X, out):
    """Y = X W^T into the device array ``out`` (B, n_out)."""
    kernel = _gather_plus if W.is_wide else _gather_minus  # out (B, L = n_out) / (B, M = n_out)
    launch(kernel, out.size, W.offsets, W.values, X, out)
    return out


def matmul_t(W: DeviceDiagonal, dY, out):
    """dX = dY W into the device array ``out`` (B, n_in)."""
    kernel = _gather_minus if W.is_wide else _gather_plus  # out (B, M = n_in) / (B, L = n_in)
    launch(kernel, out.size, W.offsets, W.values, dY, out)
    return out


def sddmm(W: DeviceDiagonal, X, dY, out):
    """dV[k, t] = G[row(k, t), col(k, t)], G = dY^T X, into the device array ``out`` (K, L)."""
    A, S = (dY, X) if W.is_wide else (X, dY)
    launch(_sddmm_kernel, out.size, W.offsets, A, S, out)
    return out
