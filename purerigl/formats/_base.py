"""What every sparse weight format shares: shape bookkeeping, validation helpers and conversions.

A weight matrix ``W`` has shape ``(n_out, n_in)`` and a layer computes ``Y = X W^T + b``. Each format
stores only its active entries; structure is always read from the stored indices, never from values
(an active entry whose value is exactly 0.0 is still active).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse

from ..errors import DensifyError, FormatError, FormatTypeError

#: Default size limit of :meth:`SparseFormat.to_dense`: 2**24 elements (64 MiB of float32).
DEFAULT_MAX_DENSE_ELEMENTS = 1 << 24


def _snap(x: float) -> int | None:
    """The integer nearest to x if x is within binary rounding of it, else None."""
    nearest = round(x)
    return int(nearest) if abs(x - nearest) <= 1e-9 * max(1.0, abs(x)) else None


def floor_count(x: float) -> int:
    """floor(x) for a count computed in floating point: 15/22 * 22 gives 15, not 14.

    A product like ``density * n`` that is mathematically an integer can land just below it in
    binary floating point; values within 1e-9 (relative) of an integer are taken as that integer.
    """
    snapped = _snap(x)
    return snapped if snapped is not None else math.floor(x)


def ceil_count(x: float) -> int:
    """ceil(x) for a count computed in floating point: 7/25 * 25 gives 7, not 8 (see floor_count)."""
    snapped = _snap(x)
    return snapped if snapped is not None else math.ceil(x)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """The distinct values of the 1-D array ``a``, ascending (what ``np.unique(a)`` returns).

    Sort, then keep each value that differs from its predecessor: O(n log n). NumPy 2.x's
    ``np.unique`` takes a hash-based path for integers that measured 30-60x slower on the
    large-range int64 position keys purerigl deduplicates (0.5 s against 0.01 s for 700,000 keys).
    """
    s = np.sort(np.asarray(a).ravel())
    if s.size == 0:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def check_shape(shape) -> tuple[int, int]:
    """Return ``shape`` as a tuple of two positive Python ints, or raise FormatError."""
    try:
        n_out, n_in = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise FormatError(f"shape must be a pair (n_out, n_in), got {shape!r}") from None
    if n_out < 1 or n_in < 1:
        raise FormatError(f"shape must be positive, got (n_out={n_out}, n_in={n_in})")
    return n_out, n_in


def as_index_array(name: str, a, dtype, ndim: int) -> np.ndarray:
    """Return ``a`` as a C-contiguous integer array of ``dtype`` and ``ndim`` dimensions.

    Integer arrays of another width are converted when every value fits; anything else is refused.
    """
    if not isinstance(a, np.ndarray):
        raise FormatTypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise FormatError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise FormatTypeError(f"{name} must hold integers ({np.dtype(dtype).name}), got {a.dtype}")
    if a.dtype != dtype:
        info = np.iinfo(dtype)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise FormatError(
                f"{name} has values in [{a.min()}, {a.max()}], outside the range of {np.dtype(dtype).name}"
            )
        a = a.astype(dtype)
    return np.ascontiguousarray(a)


def as_value_array(name: str, a, ndim: int) -> np.ndarray:
    """Return ``a`` as a C-contiguous float32 array; any other dtype is refused, never cast silently."""
    if not isinstance(a, np.ndarray):
        raise FormatTypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise FormatTypeError(
            f"{name} must be float32, got {a.dtype}; convert explicitly with .astype(np.float32)"
        )
    if a.ndim != ndim:
        raise FormatError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return np.ascontiguousarray(a)


def check_bounds(name: str, a: np.ndarray, upper: int) -> None:
    """Raise FormatError unless every entry of ``a`` lies in ``[0, upper)``."""
    if a.size == 0:
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise FormatError(f"{name} holds {bad}, outside [0, {upper})")


def check_strictly_increasing_rows(name: str, a: np.ndarray) -> None:
    """Raise FormatError unless each row of the 2-D array ``a`` is strictly increasing."""
    if a.shape[1] < 2:
        return
    steps = np.diff(a.astype(np.int64), axis=1)
    bad = np.flatnonzero((steps <= 0).any(axis=1))
    if bad.size:
        r = int(bad[0])
        raise FormatError(f"{name} row {r} is not strictly increasing: {a[r].tolist()[:16]}")


def kaiming_values(rng: np.random.Generator, fan_in: np.ndarray) -> np.ndarray:
    """Draw one float32 weight per entry from N(0, 2 / fan_in) (Kaiming normal with actual fan-in).

    ``fan_in`` holds, for every entry to draw, the fan-in of the row it sits in (always >= 1).
    """
    std = np.sqrt(2.0 / fan_in.astype(np.float64))
    return (rng.standard_normal(fan_in.shape) * std).astype(np.float32)


def as_generator(rng) -> np.random.Generator:
    """Accept a Generator, an int seed or None and return a numpy Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise FormatTypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def check_density(density) -> float:
    """Return ``density`` as a float in (0, 1], or raise FormatError."""
    d = float(density)
    if not (0.0 < d <= 1.0):
        raise FormatError(f"density must be in (0, 1], got {density}")
    return d


class SparseFormat:
    """Base class of the three formats. Subclasses set ``shape`` and implement the abstract parts."""

    shape: tuple[int, int]

    @property
    def n_out(self) -> int:
        return self.shape[0]

    @property
    def n_in(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def density(self) -> float:
        """Stored entries over all entries of the (n_out, n_in) matrix."""
        return self.nnz / (self.n_out * self.n_in)

    def to_scipy(self) -> scipy.sparse.csr_array:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self, full: bool = True):  # pragma: no cover - abstract
        raise NotImplementedError

    def copy(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dense(self, max_elements: int = DEFAULT_MAX_DENSE_ELEMENTS) -> np.ndarray:
        """The (n_out, n_in) float32 matrix, for tests and inspection only.

        Refuses (DensifyError) when ``n_out * n_in`` exceeds ``max_elements``: training never calls it.
        """
        size = self.n_out * self.n_in
        if size > max_elements:
            raise DensifyError(
                f"to_dense of a {self.n_out} x {self.n_in} matrix needs {size} elements, "
                f"more than max_elements={max_elements}"
            )
        return self.to_scipy().toarray()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, "
            f"density={self.density:.4g})"
        )
