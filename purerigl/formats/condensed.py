"""Condensed (constant fan-in) storage, the format of SRigL.

Every active output neuron ``rows[r]`` holds exactly ``k`` connections, at the strictly increasing
input positions ``indices[r, :]`` with weights ``values[r, :]``:

.. math:: W[\\mathrm{rows}[r], \\mathrm{indices}[r, t]] = \\mathrm{values}[r, t], \\quad t < k

Rows not listed in ``rows`` are ablated: they hold no weights and a layer outputs only their bias.
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
    check_strictly_increasing_rows,
    floor_count,
    kaiming_values,
    read_only,
)


class Condensed(SparseFormat):
    """Constant fan-in sparse matrix.

    Parameters
    ----------
    rows : int32 ndarray, shape (n_active,)
        The output neurons that are not ablated, strictly increasing, in ``[0, n_out)``.
    indices : int32 ndarray, shape (n_active, k)
        Input positions of each active row, strictly increasing within the row, in ``[0, n_in)``.
    values : float32 ndarray, shape (n_active, k)
        The weights at those positions.
    shape : (int, int)
        ``(n_out, n_in)``.

    Structure is read-only: ``rows`` and ``indices`` are stored read-only (a writeable array passed in
    is copied first, the caller's array is left as it is; a read-only one is shared). An in-place edit
    raises NumPy's ``ValueError: assignment destination is read-only``: the structure arrays are
    read-only, so build a new matrix (``Condensed(rows, indices, values, shape)``) to change the
    structure. ``values`` is kept as passed (no copy) and stays writeable: training updates it in place.
    """

    STRUCTURE = ("rows", "indices")

    def __init__(self, rows, indices, values, shape):
        self.shape = check_shape(shape)
        self.rows = as_index_array("rows", rows, np.int32, 1, structure=True)
        self.indices = as_index_array("indices", indices, np.int32, 2, structure=True)
        self.values = as_value_array("values", values, 2)
        n_out, n_in = self.shape
        n_active = self.rows.shape[0]
        if self.indices.shape[0] != n_active:
            raise FormatError(
                f"indices has {self.indices.shape[0]} rows but rows lists {n_active} active rows"
            )
        if self.values.shape != self.indices.shape:
            raise FormatError(f"values shape {self.values.shape} != indices shape {self.indices.shape}")
        if n_active > n_out:
            raise FormatError(f"{n_active} active rows but n_out={n_out}")
        if self.k > n_in:
            raise FormatError(f"fan-in k={self.k} exceeds n_in={n_in}")
        if n_active and self.k == 0:
            raise FormatError(f"{n_active} active rows with fan-in k=0; an active row needs k >= 1")
        check_bounds("rows", self.rows, n_out)
        check_bounds("indices", self.indices, n_in)
        # O(n_active), cheap: duplicate rows would make the kernels write one output row twice.
        steps = np.diff(self.rows.astype(np.int64))
        if np.any(steps <= 0):
            bad = int(np.flatnonzero(steps <= 0)[0])
            raise FormatError(
                f"rows must be strictly increasing: rows[{bad}]={self.rows[bad]}, "
                f"rows[{bad + 1}]={self.rows[bad + 1]}"
            )

    @property
    def k(self) -> int:
        """The constant fan-in of every active row."""
        return self.indices.shape[1]

    @property
    def n_active(self) -> int:
        return self.rows.shape[0]

    @property
    def nnz(self) -> int:
        return self.n_active * self.k

    def validate(self, full: bool = True) -> "Condensed":
        """Check the invariants; ``full`` adds the O(nnz) order check of the indices. Returns ``self``.

        ``rows`` and ``indices`` are read-only, so a matrix that passed stays valid; to change the
        structure, build a new matrix (``Condensed(rows, indices, values, shape)``), which is validated
        on construction.
        """
        Condensed(self.rows, self.indices, self.values, self.shape)
        if full:
            check_strictly_increasing_rows("indices", self.indices)
        return self

    def copy(self) -> "Condensed":
        """An independent copy: no memory shared with ``self`` (its structure read-only as always)."""
        rows, indices = read_only(self.rows.copy()), read_only(self.indices.copy())
        return Condensed(rows, indices, self.values.copy(), self.shape)

    def row_fan_in(self) -> np.ndarray:
        """int64 (n_out,): number of stored inputs of every output row (k if active, else 0)."""
        fan = np.zeros(self.n_out, dtype=np.int64)
        fan[self.rows] = self.k
        return fan

    def to_scipy(self) -> scipy.sparse.csr_array:
        """A SciPy CSR array holding exactly the stored entries (explicit zeros included)."""
        indptr = np.zeros(self.n_out + 1, dtype=np.int64)
        np.cumsum(self.row_fan_in(), out=indptr[1:])
        return scipy.sparse.csr_array(
            (self.values.ravel().copy(), self.indices.ravel().copy(), indptr), shape=self.shape
        )

    @classmethod
    def random(cls, shape, density: float | None, rng=None, *, k: int | None = None) -> "Condensed":
        """All rows active, each with a uniformly random k-subset of inputs, k = max(1, floor(density * n_in)).

        ``k`` given explicitly (``density=None``) overrides the density rule. Values are Kaiming normal
        with the row's fan-in: N(0, 2 / k).
        """
        n_out, n_in = check_shape(shape)
        rng = as_generator(rng)
        if k is None:
            check_density(density)
            k = max(1, floor_count(density, n_in))
        elif not 1 <= k <= n_in:
            raise FormatError(f"fan-in k={k} must be in [1, n_in={n_in}]")
        indices = np.empty((n_out, k), dtype=np.int32)
        for r in range(n_out):
            chosen = rng.choice(n_in, size=k, replace=False)
            indices[r] = np.sort(chosen)
        read_only(indices)
        values = kaiming_values(rng, np.full((n_out, k), k))
        return cls(np.arange(n_out, dtype=np.int32), indices, values, (n_out, n_in))
