"""A sparse matrix in any of the three formats from its stored positions, and back.

The one builder is :func:`from_positions`: (row, col, value) triples, in any order, to a CSR, Condensed
or Diagonal matrix. Everything else goes through it: a masked-dense ``(weight, mask)`` pair
(:func:`from_masked_dense`), another format (:func:`convert`), a SciPy matrix (:func:`from_scipy`),
a torch sparse tensor (:mod:`.pytorch`). Whether a set of positions fits a format:

- CSR holds any set;
- Condensed holds it when every row holds the same count k or nothing (an ablated row):

  .. math:: |\\{j : (i, j) \\in S\\}| \\in \\{0, k\\} \\quad \\text{for every row } i;

- Diagonal holds it when it is a union of whole wrap-around diagonals (DESIGN.md 2): element t of
  diagonal d sits at ((t + d) mod n_out, t) if n_out >= n_in, else (t, (t + d) mod n_in), so the
  position (i, j) lies on diagonal d = (i - j) mod n_out (tall or square) or (j - i) mod n_in (wide),
  at t = j (tall or square) or t = i (wide); every diagonal must hold all L = min(n_out, n_in) of its
  positions or none.

Anything else raises :class:`InteropError` naming the row or diagonal that does not fit. The structure
is always the positions given (the mask), never the nonzero values: an active weight may be 0.0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..errors import DensifyError, FormatTypeError, PureriglError
from ..formats import CSR, DEFAULT_MAX_DENSE_ELEMENTS, FORMATS, Condensed, Diagonal
from ..formats._base import check_shape, read_only
from ..formats.triples import triples


class InteropError(PureriglError, ValueError):
    """Arrays from outside purerigl that do not make a matrix of the asked format: a mask the format
    cannot hold, a shape or dtype that does not fit, a missing key; the message names what."""


def _format_name(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InteropError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def diagonal_of(rows: np.ndarray, cols: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(d, t), int64 like ``rows``: the wrap-around diagonal of every position and its place along it.

    .. math:: d = (i - j) \\bmod n_{out},\\ t = j \\ (n_{out} \\ge n_{in}); \\qquad
              d = (j - i) \\bmod n_{in},\\ t = i \\ (n_{out} < n_{in})
    """
    n_out, n_in = shape
    if n_out >= n_in:
        return (rows - cols) % n_out, cols
    return (cols - rows) % n_in, rows


def from_positions(rows, cols, values, shape, fmt: str = "csr", *, where: str = "matrix"):
    """The matrix of ``fmt`` holding ``values[e]`` at ``(rows[e], cols[e])``, the positions in any order.

    Parameters
    ----------
    rows, cols : integer ndarray, shape (nnz,)
        Distinct positions in ``[0, n_out) x [0, n_in)``.
    values : float32 ndarray, shape (nnz,)
    shape : (int, int)
        ``(n_out, n_in)``.
    fmt : {"csr", "condensed", "diagonal"}
    where : str
        What the positions are, for the error messages (``"layer1.mask"``).

    Raises :class:`InteropError` for positions out of bounds, repeated, or that ``fmt`` cannot hold
    (see the module docstring).
    """
    fmt = _format_name(fmt)
    n_out, n_in = check_shape(shape)
    rows = np.asarray(rows).astype(np.int64, copy=False).ravel()
    cols = np.asarray(cols).astype(np.int64, copy=False).ravel()
    values = np.asarray(values)
    if values.dtype != np.float32:
        raise FormatTypeError(f"{where}: values must be float32, got {values.dtype}; convert with .astype(np.float32)")
    values = values.ravel()
    if not rows.size == cols.size == values.size:
        raise InteropError(f"{where}: {rows.size} rows, {cols.size} cols and {values.size} values; "
                           "expected one of each per entry")
    for name, a, n in (("row", rows, n_out), ("column", cols, n_in)):
        if a.size and (a.min() < 0 or a.max() >= n):
            bad = int(a.min()) if a.min() < 0 else int(a.max())
            raise InteropError(f"{where}: {name} index {bad} is outside [0, {n}) of a {n_out} x {n_in} matrix")
    order = np.lexsort((cols, rows))  # row-major, columns ascending within a row
    rows, cols, values = rows[order], cols[order], values[order]
    flat = rows * n_in + cols
    repeated = np.flatnonzero(flat[1:] == flat[:-1])
    if repeated.size:
        e = int(repeated[0])
        raise InteropError(f"{where}: position ({rows[e]}, {cols[e]}) is given more than once")
    if fmt == "csr":
        indptr = np.zeros(n_out + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_out), out=indptr[1:])
        return CSR(read_only(indptr), read_only(cols.astype(np.int32)), values, (n_out, n_in))  # values: our copy
    if fmt == "condensed":
        return _condensed(rows, cols, values, (n_out, n_in), where)
    return _diagonal(rows, cols, values, (n_out, n_in), where)


def _condensed(rows, cols, values, shape, where) -> Condensed:
    """Condensed from row-major sorted positions: every row holds k of them or none (ablated)."""
    n_out, _ = shape
    count = np.bincount(rows, minlength=n_out)
    active = np.flatnonzero(count)
    if active.size == 0:
        empty = np.zeros((0, 0), dtype=np.int32)
        return Condensed(np.zeros(0, np.int32), empty, np.zeros((0, 0), np.float32), shape)
    k = int(count[active[0]])
    unequal = active[count[active] != k]
    if unequal.size:
        r = int(unequal[0])
        raise InteropError(
            f"{where}: the condensed format needs the same count in every row that is not empty (constant "
            f"fan-in), but row {int(active[0])} holds {k} and row {r} holds {int(count[r])} "
            f"({unequal.size} row{'s' if unequal.size > 1 else ''} differ{'' if unequal.size > 1 else 's'} from {k}); "
            "csr holds any mask"
        )
    n_active = active.size
    return Condensed(read_only(active.astype(np.int32)), read_only(cols.reshape(n_active, k).astype(np.int32)),
                     values.reshape(n_active, k), shape)


def _diagonal(rows, cols, values, shape, where) -> Diagonal:
    """Diagonal from positions that make whole wrap-around diagonals."""
    n_out, n_in = shape
    P, L = max(n_out, n_in), min(n_out, n_in)
    d, t = diagonal_of(rows, cols, shape)
    count = np.bincount(d, minlength=P)
    partial = np.flatnonzero((count != 0) & (count != L))
    if partial.size:
        p = int(partial[0])
        raise InteropError(
            f"{where}: the diagonal format stores whole wrap-around diagonals, but diagonal {p} holds "
            f"{int(count[p])} of its {L} positions ({partial.size} partial diagonal{'s' if partial.size > 1 else ''}); "
            "csr holds any mask"
        )
    offsets = np.flatnonzero(count)
    out = np.zeros((offsets.size, L), dtype=np.float32)  # (K, L)
    out[np.searchsorted(offsets, d), t] = values
    return Diagonal(read_only(offsets.astype(np.int32)), out, shape)


def _as_mask(mask, shape, where: str) -> np.ndarray:
    """``mask`` as a bool array of ``shape``: bool, or numbers that are all 0 or 1."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InteropError(f"{where}: mask has shape {mask.shape}, the weight {tuple(shape)}")
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind not in "biuf" or not np.all((mask == 0) | (mask == 1)):
        raise InteropError(f"{where}: mask has dtype {mask.dtype} with values other than 0 and 1; expected bool")
    return mask != 0


def _as_weight(weight, where: str) -> np.ndarray:
    """``weight`` as float32: float32 as it is, float16 widened (exactly); any other dtype refused."""
    weight = np.asarray(weight)
    if weight.dtype == np.float16:
        return weight.astype(np.float32)
    if weight.dtype != np.float32:
        raise FormatTypeError(f"{where}: weight must be float32, got {weight.dtype}; convert with .astype(np.float32)")
    return weight


def from_masked_dense(weight, mask, fmt: str = "csr", *, where: str = "mask"):
    """The sparse matrix of ``fmt`` whose stored positions are ``mask`` and values ``weight`` there.

    .. math:: W_{ij} = \\mathrm{weight}_{ij} \\text{ stored for every } (i, j) \\text{ with } \\mathrm{mask}_{ij}

    Parameters
    ----------
    weight : float32 ndarray, shape (n_out, n_in)
        float16 is widened exactly; values off the mask are ignored (``torch.ao.pruning``'s
        ``original`` holds them).
    mask : bool ndarray (or 0/1 numbers), shape (n_out, n_in)
        The structure: an active weight that is exactly 0.0 is stored all the same.
    fmt : {"csr", "condensed", "diagonal"}
        CSR holds any mask; Condensed one whose non-empty rows hold equal counts; Diagonal a union of
        whole wrap-around diagonals. Otherwise :class:`InteropError` names the row or diagonal.
    """
    weight = _as_weight(weight, where)
    if weight.ndim != 2:
        raise InteropError(f"{where}: weight has shape {weight.shape}, expected (n_out, n_in)")
    mask = _as_mask(mask, weight.shape, where)
    rows, cols = np.nonzero(mask)
    return from_positions(rows, cols, weight[rows, cols], weight.shape, fmt, where=where)


def to_masked_dense(W, max_elements: int = DEFAULT_MAX_DENSE_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """(weight float32, mask bool), each (n_out, n_in): the stored values, zero off the mask, and the
    stored positions (an entry stored as 0.0 is in the mask). For tests and interchange only: refuses
    (:class:`~purerigl.errors.DensifyError`) above ``max_elements`` positions, like ``to_dense``."""
    n_out, n_in = W.shape
    if n_out * n_in > max_elements:
        raise DensifyError(
            f"to_masked_dense of a {n_out} x {n_in} matrix needs {n_out * n_in} elements, "
            f"more than max_elements={max_elements}"
        )
    rows, cols, vals = triples(W)
    weight = np.zeros((n_out, n_in), dtype=np.float32)
    mask = np.zeros((n_out, n_in), dtype=bool)
    weight[rows, cols] = vals
    mask[rows, cols] = True
    return weight, mask


def convert(W, fmt: str):
    """``W`` in another format (``W`` itself, copied, for its own): no dense matrix is built.
    :class:`InteropError` when ``fmt`` cannot hold W's positions (see the module docstring)."""
    rows, cols, vals = triples(W)
    return from_positions(rows, cols, vals, W.shape, fmt, where=f"{type(W).__name__} {W.shape[0]} x {W.shape[1]}")


def from_scipy(m, fmt: str = "csr"):
    """A purerigl matrix of ``fmt`` from any SciPy sparse matrix or array. Stored entries are the
    structure, explicit zeros included; duplicates are summed (SciPy's meaning) and values cast to
    float32, as :meth:`purerigl.CSR.from_scipy` does."""
    W = CSR.from_scipy(m)
    return W if _format_name(fmt) == "csr" else convert(W, fmt)


def to_scipy(W) -> scipy.sparse.csr_array:
    """A SciPy CSR array holding exactly W's stored entries (explicit zeros included): ``W.to_scipy()``."""
    return W.to_scipy()
