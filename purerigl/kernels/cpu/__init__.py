"""The Numba CPU-parallel backend: the reference operations, compiled and run on all cores.

Same functions, signatures and semantics as :mod:`purerigl.kernels.reference`; operands are checked
by the same :mod:`purerigl.kernels._checks` functions, so both backends accept and refuse exactly the
same inputs. This file only checks and dispatches on the format; the kernels live one module per
format (:mod:`.condensed`, :mod:`.diagonal`, :mod:`.csr`) plus :mod:`.pairs` for ``grad_at``.

Sums are accumulated in float32 (the reference uses float64), so results agree with the reference to
float32 rounding, not bit for bit. Parallel loops run over independent outputs with private
accumulators and fixed partitions: no atomics, and the same inputs give bit-identical results on every
run. Kernels compile on first use and are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np

from ...errors import FormatTypeError
from ...formats import CSR, Condensed, Diagonal
from .. import _checks
from . import condensed, csr, diagonal, pairs

NAME = "cpu"

__all__ = ["NAME", "grad_at", "matmul", "matmul_t", "sddmm"]


def _module_for(W):
    """The kernel module of W's format (the operand checks have already accepted W)."""
    if isinstance(W, Condensed):
        return condensed
    if isinstance(W, Diagonal):
        return diagonal
    if isinstance(W, CSR):
        return csr
    raise FormatTypeError(f"the cpu backend has no kernels for {type(W).__name__}")


def matmul(W, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Forward product ``Y = X W^T``.

    Implements :func:`purerigl.kernels.reference.matmul`.

    .. math:: Y[b, i] = \\sum_j W[i, j] \\, X[b, j]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    X : float32 ndarray, shape (B, n_in)
    out : float32 ndarray, shape (B, n_out), optional
        C-contiguous; overwritten.

    Returns
    -------
    Y : float32 ndarray, shape (B, n_out). Rows of W that store nothing give 0.
    """
    X, out = _checks.matmul_operands(W, X, out)
    return _module_for(W).matmul(W, X, out)


def matmul_t(W, dY: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Input gradient ``dX = dY W``.

    Implements :func:`purerigl.kernels.reference.matmul_t`.

    .. math:: dX[b, j] = \\sum_i dY[b, i] \\, W[i, j]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
    dY : float32 ndarray, shape (B, n_out)
    out : float32 ndarray, shape (B, n_in), optional
        C-contiguous; overwritten.

    Returns
    -------
    dX : float32 ndarray, shape (B, n_in)
    """
    dY, out = _checks.matmul_t_operands(W, dY, out)
    return _module_for(W).matmul_t(W, dY, out)


def sddmm(W, X: np.ndarray, dY: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient with respect to each stored value (sampled dense-dense product).

    Implements :func:`purerigl.kernels.reference.sddmm`.

    .. math:: dW[e] = \\sum_b dY[b, \\mathrm{row}_e] \\, X[b, \\mathrm{col}_e]

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in); only its structure is read
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    out : float32 ndarray shaped like ``W.values``, optional
        C-contiguous; overwritten.

    Returns
    -------
    dW : float32 ndarray shaped like ``W.values``
    """
    X, dY, out = _checks.sddmm_operands(W, X, dY, out)
    return _module_for(W).sddmm(W, X, dY, out)


def grad_at(
    X: np.ndarray, dY: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """The dense gradient ``G = dY^T X`` at arbitrary positions, without forming G.

    Implements :func:`purerigl.kernels.reference.grad_at`.

    .. math:: g[m] = \\sum_b dY[b, \\mathrm{rows}[m]] \\, X[b, \\mathrm{cols}[m]]

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    rows, cols : integer ndarrays, shape (m,), in [0, n_out) and [0, n_in)
    out : float32 ndarray, shape (m,), optional
        C-contiguous; overwritten.

    Returns
    -------
    g : float32 ndarray, shape (m,)
    """
    X, dY, rows, cols, out = _checks.grad_at_operands(X, dY, rows, cols, out)
    return pairs.grad_at(X, dY, rows, cols, out)
