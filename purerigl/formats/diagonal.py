"""Diagonal storage, the format of DynaDiag and diag-rigl: whole wrap-around diagonals.

A matrix of shape (n_out, n_in) has ``P = max(n_out, n_in)`` candidate diagonals, each of length
``L = min(n_out, n_in)``, wrapping modulo the larger dimension. Element ``t`` of diagonal ``d`` sits at

.. math::

    (\\mathrm{row}, \\mathrm{col}) =
    \\begin{cases}
      ((t + d) \\bmod n_{out},\\ t) & n_{out} \\ge n_{in} \\text{ (tall or square)} \\\\
      (t,\\ (t + d) \\bmod n_{in}) & n_{out} < n_{in} \\text{ (wide)}
    \\end{cases}

The P diagonals are disjoint and cover the matrix exactly once, so ``density = K / P`` for K stored
diagonals. A wide layer has constant fan-in K (it *is* a condensed layer, see :meth:`to_condensed`);
a tall one has constant fan-out K and a varying fan-in (a row may have none).
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
    ceil_count,
    check_bounds,
    check_density,
    check_shape,
    kaiming_values,
    read_only,
)
from .condensed import Condensed


class Diagonal(SparseFormat):
    """Diagonal-sparse matrix holding K whole wrap-around diagonals.

    Parameters
    ----------
    offsets : int32 ndarray, shape (K,)
        The stored diagonals, strictly increasing, in ``[0, P)``, ``P = max(n_out, n_in)``.
    values : float32 ndarray, shape (K, L)
        ``values[k, t]`` is element t of diagonal ``offsets[k]``, ``L = min(n_out, n_in)``.
    shape : (int, int)
        ``(n_out, n_in)``.

    Structure is read-only: ``offsets`` are stored read-only (a writeable array passed in is copied
    first, the caller's array is left as it is; a read-only one is shared). An in-place edit raises
    NumPy's ``ValueError: assignment destination is read-only``: the structure arrays are read-only, so
    build a new matrix (``Diagonal(offsets, values, shape)``) to change the structure. ``values`` is
    kept as passed (no copy) and stays writeable: training updates it in place.
    """

    STRUCTURE = ("offsets",)

    def __init__(self, offsets, values, shape):
        self.shape = check_shape(shape)
        self.offsets = as_index_array("offsets", offsets, np.int32, 1, structure=True)
        self.values = as_value_array("values", values, 2)
        if self.values.shape != (self.K, self.L):
            raise FormatError(
                f"values has shape {self.values.shape}, expected (K, L) = ({self.K}, {self.L}) "
                f"for {self.K} offsets of a {self.n_out} x {self.n_in} matrix"
            )
        check_bounds("offsets", self.offsets, self.P)

    @property
    def P(self) -> int:
        """Number of candidate diagonals, max(n_out, n_in)."""
        return max(self.shape)

    @property
    def L(self) -> int:
        """Length of every diagonal, min(n_out, n_in)."""
        return min(self.shape)

    @property
    def K(self) -> int:
        """Number of stored diagonals."""
        return self.offsets.shape[0]

    @property
    def is_wide(self) -> bool:
        """True when n_out < n_in: diagonals wrap over the columns and every row has fan-in K."""
        return self.n_out < self.n_in

    @property
    def nnz(self) -> int:
        return self.K * self.L

    def validate(self, full: bool = True) -> "Diagonal":
        """Check the invariants; ``full`` adds strictly increasing offsets. Returns ``self``.

        ``offsets`` is read-only, so a matrix that passed stays valid; to change the structure, build
        a new matrix (``Diagonal(offsets, values, shape)``).
        """
        Diagonal(self.offsets, self.values, self.shape)
        if full and self.K > 1:
            steps = np.diff(self.offsets.astype(np.int64))
            if np.any(steps <= 0):
                i = int(np.flatnonzero(steps <= 0)[0])
                raise FormatError(
                    f"offsets must be strictly increasing: offsets[{i}]={self.offsets[i]}, "
                    f"offsets[{i + 1}]={self.offsets[i + 1]}"
                )
        return self

    def copy(self) -> "Diagonal":
        """An independent copy: no memory shared with ``self`` (its structure read-only as always)."""
        return Diagonal(read_only(self.offsets.copy()), self.values.copy(), self.shape)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols), each int64 of shape (K, L): where every stored value sits in the matrix."""
        t = np.arange(self.L, dtype=np.int64)[None, :]  # (1, L)
        d = self.offsets.astype(np.int64)[:, None]  # (K, 1)
        if self.is_wide:
            return np.broadcast_to(t, (self.K, self.L)).copy(), (t + d) % self.n_in
        return (t + d) % self.n_out, np.broadcast_to(t, (self.K, self.L)).copy()

    def row_fan_in(self) -> np.ndarray:
        """int64 (n_out,): number of stored entries in every output row."""
        rows, _ = self.positions()
        return np.bincount(rows.ravel(), minlength=self.n_out)

    def to_scipy(self) -> scipy.sparse.csr_array:
        """A SciPy CSR array holding exactly the stored entries (explicit zeros included)."""
        rows, cols = self.positions()
        rows, cols, vals = rows.ravel(), cols.ravel(), self.values.ravel()
        order = np.lexsort((cols, rows))  # row-major, columns ascending within a row
        indptr = np.zeros(self.n_out + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n_out), out=indptr[1:])
        return scipy.sparse.csr_array(
            (vals[order], cols[order].astype(np.int32), indptr), shape=self.shape
        )

    def to_condensed(self) -> Condensed:
        """The same matrix as a Condensed one; only for wide or square shapes (constant fan-in K).

        Row r holds the columns ``(r + d_k) mod n_in`` sorted ascending, with the values permuted along.
        """
        if self.n_out > self.n_in:
            raise FormatError(
                f"a tall {self.n_out} x {self.n_in} diagonal matrix has no constant fan-in; "
                "only wide or square ones convert to Condensed"
            )
        if self.K == 0:  # nothing stored: every row ablated
            empty = np.zeros((0, 0), dtype=np.int32)
            return Condensed(np.zeros(0, np.int32), empty, empty.astype(np.float32), self.shape)
        r = np.arange(self.n_out, dtype=np.int64)[:, None]  # (n_out, 1)
        cols = (r + self.offsets.astype(np.int64)[None, :]) % self.n_in  # (n_out, K)
        if self.is_wide:
            vals = self.values.T  # (n_out, K): values[k, r] sits in row r
        else:
            # Square: element t of diagonal d sits at row (t + d) mod n, so row r holds t = (r - d) mod n.
            t = (r - self.offsets.astype(np.int64)[None, :]) % self.n_in  # (n_out, K)
            vals = self.values[np.arange(self.K)[None, :], t]  # (n_out, K)
            cols = t
        order = np.argsort(cols, axis=1, kind="stable")
        return Condensed(
            read_only(np.arange(self.n_out, dtype=np.int32)),  # new arrays: handed over, not copied
            read_only(np.take_along_axis(cols, order, axis=1).astype(np.int32)),
            np.ascontiguousarray(np.take_along_axis(vals, order, axis=1)),
            self.shape,
        )

    @staticmethod
    def count_for_density(shape, density: float) -> int:
        """K = max(1, ceil(density * max(n_out, n_in))): diagonals stored at this density."""
        n_out, n_in = check_shape(shape)
        check_density(density)
        return max(1, ceil_count(density, max(n_out, n_in)))

    @classmethod
    def random(cls, shape, density: float | None, rng=None, *, K: int | None = None) -> "Diagonal":
        """K = max(1, ceil(density * P)) uniformly random distinct diagonals.

        ``K`` given explicitly (``density=None``) overrides the density rule. Values are Kaiming normal
        with the fan-in of the row each value sits in, N(0, 2 / fan_in).
        """
        n_out, n_in = check_shape(shape)
        rng = as_generator(rng)
        P, L = max(n_out, n_in), min(n_out, n_in)
        if K is None:
            K = cls.count_for_density((n_out, n_in), density)
        elif not 1 <= K <= P:
            raise FormatError(f"K={K} diagonals must be in [1, P={P}]")
        offsets = read_only(np.sort(rng.choice(P, size=K, replace=False)).astype(np.int32))
        layout = cls(offsets, np.zeros((K, L), dtype=np.float32), (n_out, n_in))
        rows, _ = layout.positions()
        layout.values[...] = kaiming_values(rng, layout.row_fan_in()[rows])
        return layout
