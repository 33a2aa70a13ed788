"""The cuda backend's growth selections: operand checks and the dispatch to :mod:`.growth`.

``topk_grad`` (RigL), ``topk_grad_rows`` (SRigL) and ``diag_grad_norms`` (diag-rigl) with the
reference signatures (the two selections take the tie rule's ``salt``, see
:mod:`purerigl.kernels._rank_key`). Given host NumPy arrays they check the operands as every backend
does (:mod:`purerigl.kernels._checks`), copy them in and the result out; given device arrays (what a
resident DST update holds) they check types, dtypes and shapes only and return device arrays. The
kernels are in :mod:`.growth`, imported on first use.
"""

from __future__ import annotations

import numpy as np

from ...errors import DTypeError, ShapeError
from .. import _checks
from . import _launch
from .elementwise import check_device, device_or_copied

__all__ = ["diag_grad_norms", "topk_grad", "topk_grad_rows", "topk_grad_with_rows"]


def topk_grad(X: np.ndarray, dY: np.ndarray, m: int, exclude_indptr: np.ndarray, exclude_indices: np.ndarray,
              salt: int = 0):
    """The m positions of largest gradient magnitude over the whole layer, excluded positions aside (RigL).

    Implements :func:`purerigl.kernels.reference.topk_grad` (kernels in :mod:`.growth`).

    .. math:: \\mathrm{top}_m \\{ (i, j) \\notin E : |G[i, j]| \\}, \\qquad G[i, j] = \\sum_b dY[b, i] X[b, j]

    Ranked by the float32 score |G[i, j]|, larger first; equal scores: the smaller tie rank
    ``tie_rank(i * n_in + j, salt)`` first (the shared tie rule, :mod:`purerigl.kernels._rank_key`).

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    m : int >= 0
    exclude_indptr : integer ndarray, shape (n_out + 1,)
    exclude_indices : integer ndarray, shape (nnz,)
        The excluded set, CSR-like, strictly increasing within each row.
    salt : int in [0, 2^32)
        Chooses the order among equal scores.

    Returns
    -------
    rows, cols : int64 ndarrays, shape (min(m, n_out * n_in - nnz),), sorted by ``rows * n_in + cols``.

    Given device arrays (X, dY and the excluded set, as a resident DST update holds them) it takes
    and returns device arrays: nothing is copied but one candidate count per gradient tile. Their
    checks are cheap (types, dtypes, shapes); the exclusion's order is trusted.
    """
    from . import growth  # imported on first use

    if _launch.is_device_array(X):
        m = _checks.check_count(m)
        salt = _checks.check_salt(salt)
        _device_growth_operands("topk_grad", X, dY)
        n_out = dY.shape[1]
        check_device("exclude_indptr", exclude_indptr, np.int64, shape=(n_out + 1,))
        if not _launch.is_device_array(exclude_indices) or exclude_indices.ndim != 1:
            raise DTypeError("exclude_indices must be a 1-D numba device array when X is one")
        return growth.topk_grad_device(X, dY, m, exclude_indptr, exclude_indices, salt)
    X, dY, m, indptr, indices = _checks.topk_grad_operands(X, dY, m, exclude_indptr, exclude_indices)
    salt = _checks.check_salt(salt)
    return growth.topk_grad(X, dY, m, indptr, indices, salt)


def _device_growth_operands(op: str, X, dY) -> None:
    """Cheap checks of device X (B, n_in) and dY (B, n_out) for a growth selection ``op`` (a
    selection ranks flat positions in 32 bits: at most 2^32 of them)."""
    check_device("X", X, np.float32, ndim=2)
    check_device("dY", dY, np.float32, ndim=2)
    if X.shape[0] != dY.shape[0]:
        raise ShapeError(f"X has batch {X.shape[0]} but dY has batch {dY.shape[0]}")
    n_out, n_in = dY.shape[1], X.shape[1]
    if op != "diag_grad_norms" and n_out * n_in > _checks.MAX_GROWTH_POSITIONS:
        raise ShapeError(f"{op} supports at most 2**32 positions, the layer has {n_out} x {n_in} = {n_out * n_in}")


def topk_grad_rows(
    X: np.ndarray, dY: np.ndarray, counts: np.ndarray, exclude_indptr: np.ndarray, exclude_indices: np.ndarray,
    salt: int = 0,
):
    """Per row i, the counts[i] columns of largest gradient magnitude among those not excluded (SRigL).

    Implements :func:`purerigl.kernels.reference.topk_grad_rows` (kernels in :mod:`.growth`).

    .. math:: C_i = \\mathrm{top}_{c_i} \\{ j : (i, j) \\notin E, \\text{ by } |G[i, j]| \\},
              \\qquad c_i = \\min(\\mathrm{counts}[i], n_{in} - |E_i|)

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    counts : integer ndarray, shape (n_out,), >= 0
    exclude_indptr, exclude_indices : the excluded set, as in :func:`topk_grad`
    salt : int in [0, 2^32), as in :func:`topk_grad`

    Returns
    -------
    indptr : int64 ndarray, shape (n_out + 1,)
    cols : int64 ndarray, shape (sum c_i,), ascending within each row; equal scores: the smaller tie
        rank ``tie_rank(i * n_in + j, salt)`` of the flat position first (not of the column: every row
        orders its ties differently)

    Given device arrays (X, dY and the excluded set) it takes and returns device arrays: nothing is
    copied but two sizes (the number of chosen columns and of rows that need the gradient). ``counts``
    may then be a device array or a host one (the per-row need the host decided; copied in). Their checks are cheap (types, dtypes, shapes); counts >= 0 and the exclusion's order
    are trusted.
    """
    from . import growth  # imported on first use

    if _launch.is_device_array(X):
        salt = _checks.check_salt(salt)
        _device_growth_operands("topk_grad_rows", X, dY)
        n_out = dY.shape[1]
        counts = device_or_copied("counts", counts, np.int64)  # the per-row need: host or device
        check_device("counts", counts, np.int64, shape=(n_out,))
        check_device("exclude_indptr", exclude_indptr, np.int64, shape=(n_out + 1,))
        if not _launch.is_device_array(exclude_indices) or exclude_indices.ndim != 1:
            raise DTypeError("exclude_indices must be a 1-D numba device array when X is one")
        return growth.topk_grad_rows_device(X, dY, counts, exclude_indptr, exclude_indices, salt)
    X, dY, counts, indptr, indices = _checks.topk_grad_rows_operands(X, dY, counts, exclude_indptr, exclude_indices)
    salt = _checks.check_salt(salt)
    return growth.topk_grad_rows(X, dY, counts, indptr, indices, salt)


def topk_grad_with_rows(X: np.ndarray, dY: np.ndarray, m: int, counts: np.ndarray, salt: int = 0):
    """RigL's layer-wide top m and SRigL's per-row top counts[i] of |G| over every position, with the
    per-row scores (SRigL's salient set and its growth candidates).

    Implements :func:`purerigl.kernels.reference.topk_grad_with_rows` (kernels in :mod:`.growth`; on
    this backend the two selections still read G in two passes).

    .. math:: T = \\mathrm{top}_m \\{ (i, j) : |G[i, j]| \\}, \\qquad
              C_i = \\mathrm{top}_{c_i} \\{ j : |G[i, j]| \\}, \\quad c_i = \\min(\\mathrm{counts}[i], n_{in})

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    m : int >= 0
    counts : integer ndarray, shape (n_out,), >= 0
    salt : int in [0, 2^32), as in :func:`topk_grad`

    Returns
    -------
    rows, cols : int64 ndarrays, shape (min(m, n_out * n_in),), sorted by ``rows * n_in + cols``
    indptr : int64 ndarray, shape (n_out + 1,)
    row_cols : int64 ndarray, shape (sum c_i,), ascending within each row
    row_scores : float32 ndarray, shape (sum c_i,): |G[i, j]| at each (i, row_cols)

    Given device arrays (X and dY) it takes and returns device arrays; ``counts`` may then be a host
    array (copied in) or a device one, and is trusted to be >= 0.
    """
    from . import growth  # imported on first use

    if _launch.is_device_array(X):
        m = _checks.check_count(m)
        salt = _checks.check_salt(salt)
        _device_growth_operands("topk_grad_with_rows", X, dY)
        counts = device_or_copied("counts", counts, np.int64)
        check_device("counts", counts, np.int64, shape=(dY.shape[1],))
        return growth.topk_grad_with_rows_device(X, dY, m, counts, salt)
    X, dY, m, counts = _checks.topk_grad_with_rows_operands(X, dY, m, counts)
    return growth.topk_grad_with_rows(X, dY, m, counts, _checks.check_salt(salt))


def diag_grad_norms(X: np.ndarray, dY: np.ndarray) -> np.ndarray:
    """The L2 norm of the gradient along each of the P wrap-around diagonals (diag-rigl growth scores).

    Implements :func:`purerigl.kernels.reference.diag_grad_norms` (kernels in :mod:`.diagonal_growth`).

    .. math:: S[d] = \\Big( \\sum_{t=0}^{L-1} G[\\mathrm{row}(d, t), \\mathrm{col}(d, t)]^2 \\Big)^{1/2}

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)

    Returns
    -------
    S : float32 ndarray, shape (P,), P = max(n_out, n_in)

    Given device arrays X and dY it returns a float32 device array and copies nothing.
    """
    from . import diagonal_growth  # imported on first use

    if _launch.is_device_array(X):
        _device_growth_operands("diag_grad_norms", X, dY)
        return diagonal_growth.diag_grad_norms_device(X, dY)
    X, dY = _checks.growth_operands(X, dY)
    return diagonal_growth.diag_grad_norms(X, dY)
