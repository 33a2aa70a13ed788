"""Operand checks shared by every backend, so all of them accept and refuse exactly the same inputs.

Rules: dense operands are 2-D float32 (another dtype is refused, never cast silently); a
non-contiguous operand is copied to C order (correct, just slower); ``out=`` must be a C-contiguous
float32 array of exactly the result's shape.
"""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, FormatTypeError, OperandError, ShapeError
from ..formats import SparseFormat


def check_format(W) -> None:
    if not isinstance(W, SparseFormat):
        raise FormatTypeError(
            f"W must be a purerigl Condensed, Diagonal or CSR matrix, got {type(W).__name__}"
        )


def check_dense(name: str, A, width: int | None = None, width_name: str = "") -> np.ndarray:
    """Return ``A`` as a C-contiguous float32 2-D array whose second dimension is ``width``."""
    if not isinstance(A, np.ndarray):
        raise DTypeError(f"{name} must be a numpy float32 array, got {type(A).__name__}")
    if A.dtype != np.float32:
        raise DTypeError(f"{name} must be float32, got {A.dtype}; convert with .astype(np.float32)")
    if A.ndim != 2:
        raise ShapeError(f"{name} must be 2-D (batch, features), got shape {A.shape}")
    if width is not None and A.shape[1] != width:
        raise ShapeError(f"{name} has {A.shape[1]} columns, expected {width_name} = {width}")
    return np.ascontiguousarray(A)


def check_same_batch(a_name: str, A: np.ndarray, b_name: str, B: np.ndarray) -> None:
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"{a_name} has batch {A.shape[0]} but {b_name} has batch {B.shape[0]}")


def check_out(out, shape: tuple[int, ...], inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Return ``out`` zeroed if given (after checking it), else a new zeroed float32 array.

    ``out`` may not share memory with any of ``inputs``: it is zeroed before the inputs are read.
    """
    if out is None:
        return np.zeros(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise DTypeError(f"out must be a float32 numpy array, got {getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != tuple(shape):
        raise ShapeError(f"out has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.c_contiguous:
        raise ShapeError("out must be C-contiguous")
    for name, a in (inputs or {}).items():
        if np.shares_memory(out, a):
            raise OperandError(f"out shares memory with {name}; pass a separate output buffer")
    out[...] = 0.0
    return out


def check_pairs(rows, cols, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate (row, col) candidate pairs for grad_at; returns them as contiguous int64 arrays."""
    for name, a in (("rows", rows), ("cols", cols)):
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.integer):
            raise DTypeError(f"{name} must be an integer numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim != 1:
            raise ShapeError(f"{name} must be 1-D, got shape {a.shape}")
    if rows.shape != cols.shape:
        raise ShapeError(f"rows has {rows.shape[0]} entries but cols has {cols.shape[0]}")
    for name, a, upper in (("rows", rows, n_out), ("cols", cols, n_in)):
        if a.size and (a.min() < 0 or a.max() >= upper):
            bad = int(a.min()) if a.min() < 0 else int(a.max())
            raise ShapeError(f"{name} holds {bad}, outside [0, {upper})")
    return np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(cols, dtype=np.int64)


def matmul_operands(W, X, out):
    check_format(W)
    X = check_dense("X", X, W.n_in, "n_in")
    return X, check_out(out, (X.shape[0], W.n_out), {"X": X, "W.values": W.values})


def matmul_t_operands(W, dY, out):
    check_format(W)
    dY = check_dense("dY", dY, W.n_out, "n_out")
    return dY, check_out(out, (dY.shape[0], W.n_in), {"dY": dY, "W.values": W.values})


def sddmm_operands(W, X, dY, out):
    check_format(W)
    X = check_dense("X", X, W.n_in, "n_in")
    dY = check_dense("dY", dY, W.n_out, "n_out")
    check_same_batch("X", X, "dY", dY)
    return X, dY, check_out(out, W.values.shape, {"X": X, "dY": dY, "W.values": W.values})


# Feature-major products (matmul_fm, matmul_t_fm, sddmm_fm): the batch is the last axis.


def check_dense_fm(name: str, A, height: int, height_name: str) -> np.ndarray:
    """``A`` (features, batch) as a C-contiguous float32 2-D array whose first dimension is ``height``."""
    A = check_dense(name, A)
    if A.shape[0] != height:
        raise ShapeError(f"{name} has {A.shape[0]} rows, expected {height_name} = {height} (feature-major: "
                         "features first, batch last)")
    return A


def matmul_fm_operands(W, XT, out):
    check_format(W)
    XT = check_dense_fm("XT", XT, W.n_in, "n_in")
    return XT, check_out(out, (W.n_out, XT.shape[1]), {"XT": XT, "W.values": W.values})


def matmul_t_fm_operands(W, dYT, out):
    check_format(W)
    dYT = check_dense_fm("dYT", dYT, W.n_out, "n_out")
    return dYT, check_out(out, (W.n_in, dYT.shape[1]), {"dYT": dYT, "W.values": W.values})


def sddmm_fm_operands(W, XT, dYT, out):
    check_format(W)
    XT = check_dense_fm("XT", XT, W.n_in, "n_in")
    dYT = check_dense_fm("dYT", dYT, W.n_out, "n_out")
    if XT.shape[1] != dYT.shape[1]:
        raise ShapeError(f"XT has batch {XT.shape[1]} but dYT has batch {dYT.shape[1]}")
    return XT, dYT, check_out(out, W.values.shape, {"XT": XT, "dYT": dYT, "W.values": W.values})


def patches_operand(W, PT):
    """The input of a :class:`~purerigl.kernels.patch_operand.Patches` P^T, checked against W: a
    float32 (B, C, H, W) array whose patch matrix has W's n_in rows."""
    check_format(W)
    X = PT.X
    if not isinstance(X, np.ndarray) or X.dtype != np.float32:
        raise DTypeError(f"the patches' X must be a numpy float32 array, got {getattr(X, 'dtype', type(X).__name__)}")
    if X.ndim != 4:
        raise ShapeError(f"the patches' X must be (B, C, H, W), got shape {X.shape}")
    if PT.shape[0] != W.n_in:
        raise ShapeError(f"the patch matrix has {PT.shape[0]} rows (C kh kw), expected n_in = {W.n_in}")
    return X


def matmul_patches_operands(W, PT, out):
    X = patches_operand(W, PT)
    return check_out(out, (W.n_out, PT.shape[1]), {"the patches' X": X, "W.values": W.values})


def sddmm_patches_operands(W, PT, dYT, out):
    X = patches_operand(W, PT)
    dYT = check_dense_fm("dYT", dYT, W.n_out, "n_out")
    if PT.shape[1] != dYT.shape[1]:
        raise ShapeError(f"the patch matrix has batch {PT.shape[1]} (B Ho Wo) but dYT has batch {dYT.shape[1]}")
    return dYT, check_out(out, W.values.shape, {"the patches' X": X, "dYT": dYT, "W.values": W.values})


def grad_at_operands(X, dY, rows, cols, out):
    X = check_dense("X", X)
    dY = check_dense("dY", dY)
    check_same_batch("X", X, "dY", dY)
    rows, cols = check_pairs(rows, cols, dY.shape[1], X.shape[1])
    return X, dY, rows, cols, check_out(out, rows.shape, {"X": X, "dY": dY})


# --------------------------------------------------------------------------------------------------
# Growth selections (topk_grad, topk_grad_rows, diag_grad_norms)
# --------------------------------------------------------------------------------------------------

#: topk_grad ranks positions by one int64 key per position holding the flat index in 32 bits, so a
#: layer may have at most this many positions (n_out * n_in); a dense G of that size is 16 GiB.
MAX_GROWTH_POSITIONS = 1 << 32


def growth_operands(X, dY) -> tuple[np.ndarray, np.ndarray]:
    """X (B, n_in) and dY (B, n_out): float32, 2-D, the same batch, and finite.

    Non-finite values are refused (OperandError): a NaN score has no place in the ranking, and every
    backend must return the same sets.
    """
    X = check_dense("X", X)
    dY = check_dense("dY", dY)
    check_same_batch("X", X, "dY", dY)
    for name, A in (("X", X), ("dY", dY)):
        if not np.isfinite(A).all():
            raise OperandError(f"{name} holds non-finite values (NaN or inf); growth scores need finite inputs")
    return X, dY


def check_count(m, name: str = "m") -> int:
    """A non-negative integer (Python or NumPy; not bool), returned as int."""
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)):
        raise DTypeError(f"{name} must be a non-negative integer, got {m!r} ({type(m).__name__})")
    if m < 0:
        raise OperandError(f"{name} must be non-negative, got {m}")
    return int(m)


def check_counts(counts, n_out: int) -> np.ndarray:
    """Per-row counts: an integer array of shape (n_out,), all >= 0; returned as contiguous int64."""
    if not isinstance(counts, np.ndarray) or not np.issubdtype(counts.dtype, np.integer):
        raise DTypeError(
            f"counts must be an integer numpy array, got {getattr(counts, 'dtype', type(counts).__name__)}"
        )
    if counts.shape != (n_out,):
        raise ShapeError(f"counts has shape {counts.shape}, expected (n_out,) = ({n_out},)")
    if n_out and counts.min() < 0:
        row = int(np.argmin(counts))
        raise OperandError(f"counts must be non-negative; row {row} asks for {int(counts[row])}")
    return np.ascontiguousarray(counts, dtype=np.int64)


def check_exclusion(indptr, indices, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a CSR-like set of excluded positions; returns (indptr int64, indices int32), contiguous.

    Row i excludes the columns ``indices[indptr[i]:indptr[i+1]]``, strictly increasing, in [0, n_in).
    Integer arrays of any width are accepted. Wrong dtype: DTypeError; wrong length or a column
    outside [0, n_in): ShapeError; ``indptr`` not starting at 0, decreasing, or not ending at
    ``len(indices)``, or a row not strictly increasing: OperandError. Cost O(n_out + nnz).
    """
    for name, a in (("exclude_indptr", indptr), ("exclude_indices", indices)):
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.integer):
            raise DTypeError(f"{name} must be an integer numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim != 1:
            raise ShapeError(f"{name} must be 1-D, got shape {a.shape}")
    if indptr.shape[0] != n_out + 1:
        raise ShapeError(f"exclude_indptr has {indptr.shape[0]} entries, expected n_out + 1 = {n_out + 1}")
    nnz = indices.shape[0]
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise OperandError(
            f"exclude_indptr must run from 0 to len(exclude_indices) = {nnz}, got {int(indptr[0])} .. {int(indptr[-1])}"
        )
    steps = np.diff(indptr)  # (n_out,)
    if n_out and steps.min() < 0:
        row = int(np.argmin(steps))
        raise OperandError(f"exclude_indptr decreases at row {row}: {int(indptr[row])} > {int(indptr[row + 1])}")
    if nnz:
        if indices.min() < 0 or indices.max() >= n_in:
            bad = int(indices.min()) if indices.min() < 0 else int(indices.max())
            raise ShapeError(f"exclude_indices holds {bad}, outside [0, n_in) = [0, {n_in})")
        ok = indices[1:] > indices[:-1]  # (nnz - 1,): strictly increasing ...
        starts = indptr[1:-1]
        ok[starts[(starts > 0) & (starts < nnz)] - 1] = True  # ... except across a row boundary
        if not ok.all():
            e = int(np.argmin(ok)) + 1
            row = int(np.searchsorted(indptr, e, side="right")) - 1
            raise OperandError(f"exclude_indices of row {row} are not strictly increasing (entry {e})")
    return np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(indices, dtype=np.int32)


def topk_grad_operands(X, dY, m, exclude_indptr, exclude_indices):
    X, dY = growth_operands(X, dY)
    n_out, n_in = dY.shape[1], X.shape[1]
    if n_out * n_in > MAX_GROWTH_POSITIONS:
        raise ShapeError(
            f"topk_grad supports at most 2**32 positions, the layer has {n_out} x {n_in} = {n_out * n_in}"
        )
    m = check_count(m, "m")
    indptr, indices = check_exclusion(exclude_indptr, exclude_indices, n_out, n_in)
    return X, dY, m, indptr, indices


def topk_grad_rows_operands(X, dY, counts, exclude_indptr, exclude_indices):
    X, dY = growth_operands(X, dY)
    n_out, n_in = dY.shape[1], X.shape[1]
    if n_out * n_in > MAX_GROWTH_POSITIONS:  # ties are ranked by the flat position
        raise ShapeError(
            f"topk_grad_rows supports at most 2**32 positions, the layer has {n_out} x {n_in} = {n_out * n_in}"
        )
    counts = check_counts(counts, n_out)
    indptr, indices = check_exclusion(exclude_indptr, exclude_indices, n_out, n_in)
    return X, dY, counts, indptr, indices


def topk_grad_with_rows_operands(X, dY, m, counts):
    X, dY = growth_operands(X, dY)
    n_out, n_in = dY.shape[1], X.shape[1]
    if n_out * n_in > MAX_GROWTH_POSITIONS:  # ties are ranked by the flat position
        raise ShapeError(
            f"topk_grad_with_rows supports at most 2**32 positions, the layer has {n_out} x {n_in} = "
            f"{n_out * n_in}"
        )
    return X, dY, check_count(m, "m"), check_counts(counts, n_out)


def check_salt(salt) -> int:
    """The tie rule's salt (:mod:`purerigl.kernels._rank_key`) as a Python int in [0, 2^32)."""
    if isinstance(salt, (bool, np.bool_)) or not isinstance(salt, (int, np.integer)):
        raise OperandError(f"salt must be an integer in [0, 2**32), got {salt!r}")
    if not 0 <= int(salt) < 1 << 32:
        raise OperandError(f"salt must be in [0, 2**32), got {int(salt)}")
    return int(salt)
