"""What every sparse weight format shares: shape bookkeeping, validation helpers and conversions.

A weight matrix ``W`` has shape ``(n_out, n_in)`` and a layer computes ``Y = X W^T + b``. Each format
stores only its active entries; structure is always read from the stored indices, never from values
(an active entry whose value is exactly 0.0 is still active).
"""

from __future__ import annotations

import math
import numbers
import operator
from decimal import Decimal
from fractions import Fraction

import numpy as np
import scipy.sparse

from ..errors import DensifyError, FormatError, FormatTypeError

#: Default size limit of :meth:`SparseFormat.to_dense`: 2**24 elements (64 MiB of float32).
DEFAULT_MAX_DENSE_ELEMENTS = 1 << 24


#: The largest denominator of the fraction a float count factor is read as (see :func:`exact_fraction`).
RATIO_MAX_DENOMINATOR = 10**6


def exact_fraction(x) -> Fraction:
    """``x`` as an exact rational number: the factor a count is computed from.

    Integers (Python or NumPy), :class:`fractions.Fraction`, :class:`decimal.Decimal` and decimal
    strings (``"0.9"``, ``"15/22"``) are taken exactly as they are. A float only approximates what was
    typed or computed (``0.9`` is 0.9000000000000000222..., ``15 / 22 * 22`` is 14.999999999999998), so
    it is read as the number it spells, by this rule:

    1. the fraction with denominator at most :data:`RATIO_MAX_DENOMINATOR` (10**6) that rounds to
       ``x``, when there is one: ``0.9`` is 9/10, ``0.28`` is 7/25, ``15 / 22`` is 15/22;
    2. otherwise the shortest decimal that rounds to ``x`` (``repr(x)``): ``0.1234567`` is
       1234567/10**7, ``0.1 + 0.2`` is 30000000000000004/10**17.

    For ``|x| < 1`` this reads exactly every decimal with at most 9 places after the point (two such
    numbers, or one and a ratio with denominator <= 10**6, differ by at least 1e-15, more than the
    2**-53 that rounds to one float) and every ratio ``p / q`` of integers with ``q <= 10**6`` (two such
    ratios differ by at least 1e-12). A longer decimal is read as typed unless a ratio with denominator
    <= 10**6 rounds to the same float (a few in 100,000 random 15-digit decimals). A factor built in code
    as a ratio with a larger denominator, or a decimal that must be exact whatever its length, should
    be passed as a Fraction (or a count computed in integers). NumPy floats are read by their float64
    value.
    """
    if isinstance(x, (numbers.Rational, Decimal, str)):
        return Fraction(x)
    f = float(x)
    if not math.isfinite(f):
        raise ValueError(f"a count factor must be finite, got {x!r}")
    near = Fraction(f).limit_denominator(RATIO_MAX_DENOMINATOR)
    return near if float(near) == f else Fraction(repr(f))


def floor_count(x, n: int = 1) -> int:
    """floor(x * n), exact: ``x`` read by :func:`exact_fraction`, ``n`` an integer.

    Pass the factors separately (``floor_count(alpha, nnz)``, not ``floor_count(alpha * nnz)``): the
    float product has already been rounded, so ``15 / 22 * 22`` lands on 14.999999999999998 while
    ``floor_count(15 / 22, 22)`` is 15. A single float is floored exactly (``floor_count(799382.99947)``
    is 799382), at any magnitude; nothing within a tolerance of an integer is snapped to it.
    """
    f = exact_fraction(x) * operator.index(n)
    return f.numerator // f.denominator


def ceil_count(x, n: int = 1) -> int:
    """ceil(x * n), exact (see :func:`floor_count`): ``ceil_count(7 / 25, 25)`` is 7, not 8."""
    f = exact_fraction(x) * operator.index(n)
    return -(-f.numerator // f.denominator)


def is_ascending(a: np.ndarray) -> bool:
    """Whether the 1-D array ``a`` is already in non-decreasing order: one O(n) pass, which lets a
    caller skip an O(n log n) sort of positions that arrive sorted (a CSR or Condensed structure's
    flat positions are, in storage order)."""
    return bool(a.size < 2 or np.all(a[1:] >= a[:-1]))


def ascending(a: np.ndarray) -> np.ndarray:
    """``np.sort(a)`` for a 1-D array, without the sort when ``a`` is already ascending (then ``a``
    itself, not a copy)."""
    return a if is_ascending(a) else np.sort(a)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """The distinct values of the 1-D array ``a``, ascending (what ``np.unique(a)`` returns).

    Sort (skipped when ``a`` is already ascending), then keep each value that differs from its
    predecessor: O(n log n). NumPy 2.x's
    ``np.unique`` takes a hash-based path for integers that measured 30-60x slower on the
    large-range int64 position keys purerigl deduplicates (0.5 s against 0.01 s for 700,000 keys).
    """
    s = ascending(np.asarray(a).ravel())
    if s.size == 0:
        return s.copy()
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def read_only(a: np.ndarray) -> np.ndarray:
    """Mark the array ``a`` read-only and return it (for an array just built that nobody else holds)."""
    a.flags.writeable = False
    return a


def frozen(a: np.ndarray) -> np.ndarray:
    """A read-only array equal to ``a``, leaving the caller's array as it is.

    ``a`` itself when it is read-only all the way down (``a`` and every array whose memory it views
    are read-only, the last one owning its memory), so read-only structure is shared between matrices
    at no cost; otherwise a read-only copy, so that no writeable array the caller holds can change it.
    """
    x = a
    while isinstance(x, np.ndarray) and not x.flags.writeable:
        if x.base is None:
            return a
        x = x.base
    return read_only(a.copy())


def check_shape(shape) -> tuple[int, int]:
    """Return ``shape`` as a tuple of two positive Python ints, or raise FormatError."""
    try:
        n_out, n_in = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise FormatError(f"shape must be a pair (n_out, n_in), got {shape!r}") from None
    if n_out < 1 or n_in < 1:
        raise FormatError(f"shape must be positive, got (n_out={n_out}, n_in={n_in})")
    return n_out, n_in


def as_index_array(name: str, a, dtype, ndim: int, structure: bool = False) -> np.ndarray:
    """Return ``a`` as a C-contiguous integer array of ``dtype`` and ``ndim`` dimensions.

    Integer arrays of another width are converted when every value fits; anything else is refused.
    ``structure``: return it read-only (a conversion is frozen as it is, ``a`` itself goes through
    :func:`frozen`: shared if read-only, else copied).
    """
    if not isinstance(a, np.ndarray):
        raise FormatTypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    given = a
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
    out = np.ascontiguousarray(a)
    if not structure:
        return out
    return read_only(out) if out is not given and out.base is None else frozen(out)


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
    """Base class of the three formats. Subclasses set ``shape`` and implement the abstract parts.

    Structure arrays are read-only. The arrays named in :attr:`STRUCTURE` (the row and column
    indices, the offsets) are stored read-only whenever they are set, in the constructor or by a
    later assignment (:func:`frozen`): an array that is already read-only all the way down is kept
    as it is (shared), any other is copied first, so the caller's array is never made read-only
    and no writeable array can change a matrix's structure. An in-place edit such as
    ``W.indices[0] = ...`` raises NumPy's ``ValueError: assignment destination is read-only``; to
    change the structure, build a new matrix (``Condensed(rows, indices, values, shape)``). Kernels may
    cache layouts derived from the structure per matrix object (the cpu backend does), which this
    keeps valid. ``values`` stays writeable: it is trained in place, and no kernel caches it. (An
    array the caller froze itself is shared: it must have no writeable view left, and its flag must
    not be set back.)
    """

    shape: tuple[int, int]

    #: Names of the structure arrays, stored read-only (see the class docstring).
    STRUCTURE: tuple[str, ...] = ()

    def __setattr__(self, name, value):
        if name in self.STRUCTURE and isinstance(value, np.ndarray):
            value = frozen(value)
        super().__setattr__(name, value)

    def __setstate__(self, state):
        """Unpickling and ``copy.deepcopy`` go through :meth:`__setattr__`, so structure stays read-only."""
        for name, value in state.items():
            setattr(self, name, value)

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
