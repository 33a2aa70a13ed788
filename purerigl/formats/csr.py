"""CSR (unstructured) storage, the format of RigL, SET and GSE.

Same meaning as ``scipy.sparse.csr_array((values, indices, indptr), shape)``: the entries of output row
``i`` sit at input positions ``indices[indptr[i]:indptr[i+1]]`` (sorted, unique) with weights
``values[indptr[i]:indptr[i+1]]``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..errors import FormatError
from ._base import (
    SparseFormat,
    as_generator,
    as_index_array,
    as_value_array,
    check_bounds,
    check_density,
    check_shape,
    floor_count,
    kaiming_values,
    read_only,
    sorted_unique,
)


def sample_flat_positions(rng: np.random.Generator, total: int, n: int) -> np.ndarray:
    """``n`` distinct integers drawn uniformly from ``[0, total)``, sorted, as int64.

    Dense draws (n > total / 4) use a permutation-based choice; sparse draws use rejection with
    top-ups, so memory stays O(n) even when ``total`` is huge (wide layers).
    """
    if n > total:
        raise FormatError(f"cannot draw {n} distinct positions out of {total}")
    if n * 4 > total:
        return np.sort(rng.choice(total, size=n, replace=False).astype(np.int64))
    chosen = sorted_unique(rng.integers(0, total, size=n, dtype=np.int64))
    while chosen.size < n:
        extra = rng.integers(0, total, size=2 * (n - chosen.size), dtype=np.int64)
        chosen = sorted_unique(np.concatenate([chosen, extra]))
    # Trim a uniformly random surplus so the kept set is still a uniform n-subset.
    if chosen.size > n:
        chosen = np.sort(rng.choice(chosen, size=n, replace=False))
    return chosen


class CSR(SparseFormat):
    """Unstructured sparse matrix in compressed sparse row form.

    Parameters
    ----------
    indptr : int64 ndarray, shape (n_out + 1,)
        Row pointers, ``indptr[0] == 0``, non-decreasing, ``indptr[-1] == nnz``.
    indices : int32 ndarray, shape (nnz,)
        Input positions, sorted and unique within each row, in ``[0, n_in)``.
    values : float32 ndarray, shape (nnz,)
    shape : (int, int)
        ``(n_out, n_in)``.

    Structure is read-only: ``indptr`` and ``indices`` are stored read-only (a writeable array passed in
    is copied first, the caller's array is left as it is; a read-only one is shared). An in-place edit
    raises NumPy's ``ValueError: assignment destination is read-only``: the structure arrays are
    read-only, so build a new matrix (``CSR(indptr, indices, values, shape)``) to change the structure.
    ``values`` is kept as passed (no copy) and stays writeable: training updates it in place.
    """

    STRUCTURE = ("indptr", "indices")

    def __init__(self, indptr, indices, values, shape):
        self.shape = check_shape(shape)
        self.indptr = as_index_array("indptr", indptr, np.int64, 1, structure=True)
        self.indices = as_index_array("indices", indices, np.int32, 1, structure=True)
        self.values = as_value_array("values", values, 1)
        n_out, n_in = self.shape
        if self.indptr.shape[0] != n_out + 1:
            raise FormatError(f"indptr has {self.indptr.shape[0]} entries, expected n_out + 1 = {n_out + 1}")
        if self.values.shape != self.indices.shape:
            raise FormatError(f"values has {self.values.shape[0]} entries but indices has {self.indices.shape[0]}")
        if self.indptr[0] != 0 or self.indptr[-1] != self.indices.shape[0]:
            raise FormatError(
                f"indptr must start at 0 and end at nnz={self.indices.shape[0]}, "
                f"got indptr[0]={self.indptr[0]}, indptr[-1]={self.indptr[-1]}"
            )
        check_bounds("indices", self.indices, n_in)

    @property
    def nnz(self) -> int:
        return self.indices.shape[0]

    def validate(self, full: bool = True) -> "CSR":
        """Check the invariants; ``full`` adds monotone indptr and sorted, unique rows. Returns ``self``.

        ``indptr`` and ``indices`` are read-only, so a matrix that passed stays valid; to change the
        structure, build a new matrix (``CSR(indptr, indices, values, shape)``).
        """
        CSR(self.indptr, self.indices, self.values, self.shape)
        if full:
            counts = np.diff(self.indptr)
            if np.any(counts < 0):
                i = int(np.flatnonzero(counts < 0)[0])
                raise FormatError(f"indptr decreases at row {i}: {self.indptr[i]} -> {self.indptr[i + 1]}")
            steps = np.diff(self.indices.astype(np.int64))
            # A step <= 0 is allowed only where a new row starts.
            row_starts = np.zeros(self.nnz, dtype=bool)
            row_starts[self.indptr[1:-1][self.indptr[1:-1] < self.nnz]] = True
            bad = np.flatnonzero((steps <= 0) & ~row_starts[1:])
            if bad.size:
                pos = int(bad[0]) + 1
                row = int(np.searchsorted(self.indptr, pos, side="right") - 1)
                raise FormatError(
                    f"row {row} indices are not sorted and unique: "
                    f"{self.indices[pos - 1]} then {self.indices[pos]}"
                )
        return self

    def copy(self) -> "CSR":
        """An independent copy: no memory shared with ``self`` (its structure read-only as always)."""
        indptr, indices = read_only(self.indptr.copy()), read_only(self.indices.copy())
        return CSR(indptr, indices, self.values.copy(), self.shape)

    def row_fan_in(self) -> np.ndarray:
        """int64 (n_out,): number of stored entries of every row."""
        return np.diff(self.indptr)

    def to_scipy(self) -> scipy.sparse.csr_array:
        """A SciPy CSR array holding exactly the stored entries (explicit zeros included)."""
        return scipy.sparse.csr_array(
            (self.values.copy(), self.indices.copy(), self.indptr.copy()), shape=self.shape
        )

    @classmethod
    def from_scipy(cls, m) -> "CSR":
        """Build from any SciPy sparse matrix or array; entries (zeros included) are kept as stored."""
        m = scipy.sparse.csr_array(m, copy=True)  # a copy: sorting must not reorder the caller's arrays
        m.sum_duplicates()
        m.sort_indices()
        # m is our own copy: its structure is handed over read-only rather than copied again.
        indptr, indices = read_only(m.indptr.astype(np.int64)), read_only(m.indices)
        return cls(indptr, indices, m.data.astype(np.float32), m.shape)

    @classmethod
    def random(cls, shape, density: float | None, rng=None, *, nnz: int | None = None) -> "CSR":
        """Exactly floor(density * n_out * n_in) entries at uniformly random distinct positions.

        ``nnz`` given explicitly (``density=None``) overrides the density rule. Values are Kaiming
        normal with each row's actual fan-in, N(0, 2 / nnz_row).
        """
        n_out, n_in = check_shape(shape)
        rng = as_generator(rng)
        if nnz is None:
            check_density(density)
            nnz = floor_count(density, n_out * n_in)
        elif not 1 <= nnz <= n_out * n_in:
            raise FormatError(f"nnz={nnz} must be in [1, n_out * n_in = {n_out * n_in}]")
        if nnz < 1:
            raise FormatError(
                f"density {density} of a {n_out} x {n_in} matrix gives nnz = 0; raise the density"
            )
        flat = sample_flat_positions(rng, n_out * n_in, nnz)
        rows, cols = np.divmod(flat, n_in)
        counts = np.bincount(rows, minlength=n_out)
        indptr = np.zeros(n_out + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        values = kaiming_values(rng, counts[rows])
        return cls(read_only(indptr), read_only(cols.astype(np.int32)), values, (n_out, n_in))
