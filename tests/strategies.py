"""Hypothesis strategies drawing small sparse matrices of every format, and dense operands.

Shapes are tall, wide or square with dimensions in 1..24. Structures hit the edge cases on purpose:

- Condensed: k = 1, k = n_in or anything between; all rows active, or a strict (possibly empty) subset
  of rows active, the others ablated.
- Diagonal: K = 0, 1, P or anything between.
- CSR: each row empty, full, or any count between.

Values: either *ties* only (drawn from ``TIES`` = {-1, -0.5, 0, 0.5, 1}: repeated values and explicit
zeros; every product and partial sum is then exact in float32), or mixed float32 in [-2, 2] with ties
sprinkled in. A drawn :class:`Problem` carries ``exact=True`` when all its operands are ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from purerigl.formats import CSR, Condensed, Diagonal

MAX_DIM = 24
MAX_BATCH = 6
TIES = (-1.0, -0.5, 0.0, 0.5, 1.0)

_tie_elements = st.sampled_from(TIES)
_mixed_elements = st.one_of(
    _tie_elements,
    st.floats(-2.0, 2.0, width=32, allow_subnormal=False),
)


# --------------------------------------------------------------------------------------------------
# Shapes and dense arrays
# --------------------------------------------------------------------------------------------------


@st.composite
def shapes(draw, orientation: str | None = None, max_dim: int = MAX_DIM) -> tuple[int, int]:
    """(n_out, n_in): ``orientation`` "tall" (n_out > n_in), "wide" (n_out < n_in) or "square"."""
    if orientation is None:
        orientation = draw(st.sampled_from(["tall", "wide", "square"]))
    if orientation == "square":
        n = draw(st.integers(1, max_dim))
        return n, n
    small = draw(st.integers(1, max_dim - 1))
    large = draw(st.integers(small + 1, max_dim))
    return (large, small) if orientation == "tall" else (small, large)


def float32_arrays(shape, ties: bool):
    """float32 arrays of ``shape``: ties only, or mixed moderate floats with ties among them."""
    return hnp.arrays(np.float32, shape, elements=_tie_elements if ties else _mixed_elements)


def _sorted_subset(draw, n: int, size: int) -> list[int]:
    """A uniformly drawn ``size``-subset of range(n), sorted ascending."""
    return sorted(draw(st.permutations(range(n)))[:size])


# --------------------------------------------------------------------------------------------------
# The three formats
# --------------------------------------------------------------------------------------------------


@st.composite
def condensed(draw, shape=None, ties: bool | None = None, ablate: bool | None = None) -> Condensed:
    """Condensed with k in {1, n_in, any}; ``ablate`` makes the active rows a strict subset (maybe empty)."""
    n_out, n_in = shape if shape is not None else draw(shapes())
    ties = draw(st.booleans()) if ties is None else ties
    ablate = draw(st.booleans()) if ablate is None else ablate
    k = draw(st.one_of(st.just(1), st.just(n_in), st.integers(1, n_in)))
    if ablate:
        rows = sorted(draw(st.sets(st.integers(0, n_out - 1), max_size=n_out - 1)))
    else:
        rows = list(range(n_out))
    indices = np.array([_sorted_subset(draw, n_in, k) for _ in rows], dtype=np.int32).reshape(len(rows), k)
    values = draw(float32_arrays((len(rows), k), ties))
    return Condensed(np.array(rows, dtype=np.int32), indices, values, (n_out, n_in))


@st.composite
def diagonal(draw, shape=None, ties: bool | None = None, orientation: str | None = None) -> Diagonal:
    """Diagonal with K in {1, P, any in [0, P]} distinct sorted offsets."""
    n_out, n_in = shape if shape is not None else draw(shapes(orientation))
    ties = draw(st.booleans()) if ties is None else ties
    P, L = max(n_out, n_in), min(n_out, n_in)
    K = draw(st.one_of(st.just(1), st.just(P), st.integers(0, P)))
    offsets = np.array(_sorted_subset(draw, P, K), dtype=np.int32)
    values = draw(float32_arrays((K, L), ties))
    return Diagonal(offsets, values, (n_out, n_in))


@st.composite
def csr(draw, shape=None, ties: bool | None = None) -> CSR:
    """CSR whose rows are each empty, full, or hold any count of sorted unique columns."""
    n_out, n_in = shape if shape is not None else draw(shapes())
    ties = draw(st.booleans()) if ties is None else ties
    counts = [draw(st.one_of(st.just(0), st.just(n_in), st.integers(0, n_in))) for _ in range(n_out)]
    cols = [c for count in counts for c in _sorted_subset(draw, n_in, count)]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = draw(float32_arrays((len(cols),), ties))
    return CSR(indptr, np.array(cols, dtype=np.int32), values, (n_out, n_in))


FORMAT_STRATEGIES = {"condensed": condensed, "diagonal": diagonal, "csr": csr}
FORMAT_NAMES = tuple(FORMAT_STRATEGIES)


def sparse_matrices(fmt: str | None = None, **kwargs):
    """Matrices of the named format, or of any of the three."""
    if fmt is not None:
        return FORMAT_STRATEGIES[fmt](**kwargs)
    return st.one_of(*(s(**kwargs) for s in FORMAT_STRATEGIES.values()))


# --------------------------------------------------------------------------------------------------
# Whole problems: a matrix and the dense operands of every op
# --------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """W (n_out, n_in), X (B, n_in), dY (B, n_out); ``exact`` when every operand is a tie value."""

    W: object
    X: np.ndarray
    dY: np.ndarray
    exact: bool

    def __repr__(self) -> str:  # hypothesis prints this on failure: keep it reproducible by eye
        return (
            f"Problem(W={self.W!r}, B={self.X.shape[0]}, exact={self.exact},\n"
            f"  W arrays={ {k: v.tolist() for k, v in vars(self.W).items() if isinstance(v, np.ndarray)} },\n"
            f"  X={self.X.tolist()},\n  dY={self.dY.tolist()})"
        )


@st.composite
def problems(draw, fmt: str | None = None, batch=None) -> Problem:
    """A drawn matrix of format ``fmt`` with X and dY of batch 1 (often) up to MAX_BATCH."""
    exact = draw(st.booleans())
    W = draw(sparse_matrices(fmt, ties=True) if exact else sparse_matrices(fmt))
    exact = exact and bool(np.isin(W.values, TIES).all())
    B = draw(batch if batch is not None else st.one_of(st.just(1), st.integers(1, MAX_BATCH)))
    X = draw(float32_arrays((B, W.shape[1]), ties=exact))
    dY = draw(float32_arrays((B, W.shape[0]), ties=exact))
    return Problem(W, X, dY, exact)
