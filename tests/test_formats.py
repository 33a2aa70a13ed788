"""The three storage formats: construction, validation, bookkeeping, conversions, random constructors.

Pins down (DESIGN.md section 2, PAPERS.md invariants 1-4, 8, 28):

- every documented error case raises FormatError (a ValueError) or FormatTypeError (a TypeError), with
  the offending numbers in the message; cheap checks run on construction, order checks in
  ``validate(full=True)``;
- nnz, density, shape and ``copy()`` independence; ``to_scipy()``/``to_dense()`` equal the oracle
  built from the raw arrays (explicit zeros kept as stored entries); ``to_dense`` refuses big matrices;
- random constructors: the documented k / K / nnz, reproducible by seed, valid, Kaiming-scaled values;
- Diagonal geometry: the P diagonals tile the grid once, density K/P, fan-in K per row when wide,
  fan-out K per column when tall, a tall row may have no inputs; ``to_condensed`` (wide, square).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse
from hypothesis import assume, given
from hypothesis import strategies as st

import strategies as S
from oracles import coo_of, dense_of, mask_of, positions_of, write_counts
from purerigl.errors import DensifyError, FormatError, FormatTypeError
from purerigl.formats import CSR, DEFAULT_MAX_DENSE_ELEMENTS, Condensed, Diagonal

i32, i64, f32 = np.int32, np.int64, np.float32


def arr(values, dtype):
    return np.array(values, dtype=dtype)


def array_attrs(W) -> dict[str, np.ndarray]:
    """The raw arrays a format stores, by attribute name."""
    names = {Condensed: ("rows", "indices", "values"), Diagonal: ("offsets", "values"),
             CSR: ("indptr", "indices", "values")}[type(W)]
    return {n: getattr(W, n) for n in names}


def test_error_classes_subclass_builtins():
    """FormatError is a ValueError and FormatTypeError a TypeError, so callers can catch either."""
    assert issubclass(FormatError, ValueError)
    assert issubclass(FormatTypeError, TypeError)
    assert issubclass(DensifyError, ValueError)


# --------------------------------------------------------------------------------------------------
# Construction errors: each case, its class and the numbers it must quote
# --------------------------------------------------------------------------------------------------

# A valid Condensed: 3 x 5, rows {0, 2} active with k = 2.
C_ROWS, C_IDX, C_VAL = arr([0, 2], i32), arr([[0, 3], [1, 4]], i32), np.ones((2, 2), f32)

CONDENSED_ERRORS = [
    # (description, kwargs overriding the valid ones, error class, regex the message must match)
    ("shape has a zero", dict(shape=(0, 5)), FormatError, r"n_out=0"),
    ("shape is not a pair", dict(shape=(3,)), FormatError, r"\(3,\)"),
    ("rows not an ndarray", dict(rows=[0, 2]), FormatTypeError, r"rows.*list"),
    ("rows float", dict(rows=arr([0, 2], np.float64)), FormatTypeError, r"rows.*float64"),
    ("values float64", dict(values=np.ones((2, 2))), FormatTypeError, r"float32.*float64"),
    ("values int", dict(values=np.ones((2, 2), i32)), FormatTypeError, r"int32"),
    ("indices 1-D", dict(indices=arr([0, 3], i32)), FormatError, r"indices.*2 dimension.*\(2,\)"),
    ("indices rows != len(rows)", dict(indices=arr([[0, 3]], i32), values=np.ones((1, 2), f32)),
     FormatError, r"1 rows.*2 active"),
    ("values shape != indices shape", dict(values=np.ones((2, 3), f32)), FormatError, r"\(2, 3\).*\(2, 2\)"),
    ("more active rows than n_out", dict(rows=arr([0, 1, 2, 3], i32), indices=np.zeros((4, 1), i32),
                                          values=np.ones((4, 1), f32)), FormatError, r"4 active rows.*n_out=3"),
    ("k > n_in", dict(indices=np.tile(np.arange(6, dtype=i32), (2, 1)), values=np.ones((2, 6), f32)),
     FormatError, r"k=6.*n_in=5"),
    ("active rows with k = 0", dict(indices=np.zeros((2, 0), i32), values=np.ones((2, 0), f32)),
     FormatError, r"2 active rows.*k=0"),
    # rows are checked on construction (O(n_active)): duplicates would make kernels write a row twice
    ("rows repeated", dict(rows=arr([1, 1], i32)), FormatError, r"rows\[0\]=1, rows\[1\]=1"),
    ("rows decreasing", dict(rows=arr([2, 0], i32)), FormatError, r"rows\[0\]=2, rows\[1\]=0"),
    ("row out of range", dict(rows=arr([0, 3], i32)), FormatError, r"rows holds 3, outside \[0, 3\)"),
    ("negative row", dict(rows=arr([-1, 2], i32)), FormatError, r"rows holds -1"),
    ("column out of range", dict(indices=arr([[0, 5], [1, 4]], i32)), FormatError,
     r"indices holds 5, outside \[0, 5\)"),
    ("index beyond int32", dict(indices=arr([[0, 2**40], [1, 4]], i64)), FormatError, r"int32"),
]


@pytest.mark.parametrize("case, override, error, message", CONDENSED_ERRORS, ids=[c[0] for c in CONDENSED_ERRORS])
def test_condensed_construction_errors(case, override, error, message):
    """Each malformed Condensed is refused on construction with the documented class and numbers."""
    kwargs = dict(rows=C_ROWS, indices=C_IDX, values=C_VAL, shape=(3, 5)) | override
    with pytest.raises(error, match=message):
        Condensed(**kwargs)


# A valid Diagonal: wide 3 x 5 (P = 5, L = 3), offsets {1, 4}.
DIAGONAL_ERRORS = [
    ("values not (K, L)", dict(values=np.ones((2, 5), f32)), FormatError, r"\(2, 5\).*\(2, 3\)"),
    ("offset = P", dict(offsets=arr([1, 5], i32)), FormatError, r"offsets holds 5, outside \[0, 5\)"),
    ("negative offset", dict(offsets=arr([-1, 4], i32)), FormatError, r"offsets holds -1"),
    ("offsets 2-D", dict(offsets=arr([[1, 4]], i32)), FormatError, r"offsets.*1 dimension"),
    ("values float64", dict(values=np.ones((2, 3))), FormatTypeError, r"float32.*float64"),
    ("offsets float", dict(offsets=arr([1.0, 4.0], np.float32)), FormatTypeError, r"offsets"),
    ("shape negative", dict(shape=(3, -5)), FormatError, r"n_in=-5"),
]


@pytest.mark.parametrize("case, override, error, message", DIAGONAL_ERRORS, ids=[c[0] for c in DIAGONAL_ERRORS])
def test_diagonal_construction_errors(case, override, error, message):
    """Each malformed Diagonal is refused on construction with the documented class and numbers."""
    kwargs = dict(offsets=arr([1, 4], i32), values=np.ones((2, 3), f32), shape=(3, 5)) | override
    with pytest.raises(error, match=message):
        Diagonal(**kwargs)


# A valid CSR: 3 x 4, rows [1, 3], [], [0].
CSR_ERRORS = [
    ("indptr length", dict(indptr=arr([0, 2, 3], i64)), FormatError, r"3 entries.*n_out \+ 1 = 4"),
    ("indptr not starting at 0", dict(indptr=arr([1, 2, 2, 3], i64)), FormatError, r"indptr\[0\]=1"),
    ("indptr not ending at nnz", dict(indptr=arr([0, 2, 2, 2], i64)), FormatError, r"nnz=3.*indptr\[-1\]=2"),
    ("values and indices lengths", dict(values=np.ones(2, f32)), FormatError, r"2 entries.*3"),
    ("column out of range", dict(indices=arr([1, 4, 0], i32)), FormatError, r"indices holds 4, outside \[0, 4\)"),
    ("values float64", dict(values=np.ones(3)), FormatTypeError, r"float32.*float64"),
    ("indices not an ndarray", dict(indices=[1, 3, 0]), FormatTypeError, r"indices.*list"),
]


@pytest.mark.parametrize("case, override, error, message", CSR_ERRORS, ids=[c[0] for c in CSR_ERRORS])
def test_csr_construction_errors(case, override, error, message):
    """Each malformed CSR is refused on construction with the documented class and numbers."""
    kwargs = dict(indptr=arr([0, 2, 2, 3], i64), indices=arr([1, 3, 0], i32), values=np.ones(3, f32),
                  shape=(3, 4)) | override
    with pytest.raises(error, match=message):
        CSR(**kwargs)


# --------------------------------------------------------------------------------------------------
# Full validation: order errors pass the cheap checks and are caught by validate(full=True)
# --------------------------------------------------------------------------------------------------

ORDER_ERRORS = [
    ("condensed row not increasing",
     lambda: Condensed(C_ROWS, arr([[0, 3], [4, 1]], i32), C_VAL, (3, 5)), r"row 1 .*\[4, 1\]"),
    ("condensed duplicate index",
     lambda: Condensed(C_ROWS, arr([[3, 3], [1, 4]], i32), C_VAL, (3, 5)), r"row 0 .*\[3, 3\]"),
    ("diagonal offsets repeated",
     lambda: Diagonal(arr([0, 2, 2], i32), np.ones((3, 3), f32), (3, 5)), r"offsets\[1\]=2, offsets\[2\]=2"),
    ("diagonal offsets decreasing",
     lambda: Diagonal(arr([4, 1], i32), np.ones((2, 3), f32), (3, 5)), r"offsets\[0\]=4, offsets\[1\]=1"),
    ("csr indptr decreasing",
     lambda: CSR(arr([0, 3, 1, 3], i64), arr([0, 1, 2], i32), np.ones(3, f32), (3, 4)), r"row 1: 3 -> 1"),
    ("csr row unsorted",
     lambda: CSR(arr([0, 1, 3, 3], i64), arr([0, 3, 1], i32), np.ones(3, f32), (3, 4)), r"row 1 .*3 then 1"),
    ("csr duplicate in row",
     lambda: CSR(arr([0, 0, 2, 3], i64), arr([2, 2, 0], i32), np.ones(3, f32), (3, 4)), r"row 1 .*2 then 2"),
    ("csr duplicate in last row after empty rows",
     lambda: CSR(arr([0, 0, 0, 2], i64), arr([1, 1], i32), np.ones(2, f32), (3, 4)), r"row 2 .*1 then 1"),
]


@pytest.mark.parametrize("case, build, message", ORDER_ERRORS, ids=[c[0] for c in ORDER_ERRORS])
def test_order_errors_caught_by_full_validation(case, build, message):
    """Order violations are cheap-valid (construction and validate(full=False) pass) but fail the full check."""
    W = build()
    assert W.validate(full=False) is W
    with pytest.raises(FormatError, match=message):
        W.validate(full=True)


def test_csr_row_boundaries_are_not_order_errors():
    """A column index may drop where a new row starts, also across empty rows and at the last row."""
    W = CSR(arr([0, 2, 2, 3, 4, 4], i64), arr([2, 3, 0, 0], i32), np.ones(4, f32), (5, 4))
    assert W.validate(full=True) is W


def test_validate_rechecks_arrays_replaced_after_construction():
    """validate() re-runs the cheap checks, so an index array replaced after construction is caught
    (structure cannot be broken in place: the arrays are read-only, tests/test_structure_readonly.py)."""
    W = Condensed(C_ROWS, C_IDX.copy(), C_VAL, (3, 5))
    with pytest.raises(ValueError, match="read-only"):
        W.indices[1, 1] = 7
    broken = W.indices.copy()
    broken[1, 1] = 7
    W.indices = broken
    with pytest.raises(FormatError, match=r"indices holds 7"):
        W.validate(full=False)


@given(S.sparse_matrices())
def test_drawn_matrices_are_valid(W):
    """Every matrix the strategies draw passes validate(full=True) (the strategies honour the formats)."""
    assert W.validate(full=True) is W


@given(S.sparse_matrices(), st.data())
def test_swapping_two_entries_of_a_row_breaks_full_validation(W, data):
    """Swapping two stored positions inside one row (Condensed, CSR) or two offsets (Diagonal) is caught.

    The structure arrays are read-only: the swap is made in copies, and a new matrix built from them."""
    structure = {name: getattr(W, name).copy() for name in type(W).STRUCTURE}
    if isinstance(W, Diagonal):
        target = structure["offsets"]
        if target.size < 2:
            return
        i = data.draw(st.integers(0, target.size - 2))
        j = data.draw(st.integers(i + 1, target.size - 1))
    elif isinstance(W, Condensed):
        if W.k < 2 or W.n_active == 0:
            return
        target = structure["indices"][data.draw(st.integers(0, W.n_active - 1))]
        i = data.draw(st.integers(0, W.k - 2))
        j = data.draw(st.integers(i + 1, W.k - 1))
    else:
        long_rows = [r for r in range(W.n_out) if W.indptr[r + 1] - W.indptr[r] >= 2]
        if not long_rows:
            return
        r = data.draw(st.sampled_from(long_rows))
        target = structure["indices"][W.indptr[r]:W.indptr[r + 1]]
        i = data.draw(st.integers(0, target.size - 2))
        j = data.draw(st.integers(i + 1, target.size - 1))
    target[[i, j]] = target[[j, i]]
    broken = type(W)(**structure, values=W.values, shape=W.shape)  # cheap checks only: it builds
    with pytest.raises(FormatError):
        broken.validate(full=True)


# --------------------------------------------------------------------------------------------------
# Bookkeeping and conversions against the oracle
# --------------------------------------------------------------------------------------------------


@given(S.sparse_matrices())
def test_nnz_density_shape_match_the_oracle(W):
    """shape is (n_out, n_in); nnz counts stored entries (active zeros included); density = nnz / size."""
    n_out, n_in = W.shape
    assert (W.n_out, W.n_in) == (n_out, n_in)
    mask = mask_of(W)
    assert W.nnz == int(mask.sum()) == W.values.size
    assert W.density == pytest.approx(mask.sum() / (n_out * n_in), rel=1e-12)
    assert np.array_equal(W.row_fan_in(), mask.sum(axis=1))


@given(S.sparse_matrices())
def test_to_scipy_keeps_explicit_zeros_and_equals_oracle(W):
    """to_scipy() stores exactly the active positions (explicit 0.0 kept) with the oracle's values."""
    sp = W.to_scipy()
    assert sp.shape == W.shape
    assert sp.nnz == W.nnz
    coo = sp.tocoo()
    got = set(zip(coo.row.tolist(), coo.col.tolist()))
    rows, cols, _ = coo_of(W)
    assert got == set(zip(rows.tolist(), cols.tolist()))
    assert np.array_equal(sp.toarray().astype(np.float64), dense_of(W))


@given(S.sparse_matrices())
def test_to_dense_equals_oracle_and_respects_the_limit(W):
    """to_dense() is the float32 dense matrix; it refuses (DensifyError, numbers quoted) above max_elements."""
    size = W.n_out * W.n_in
    D = W.to_dense(max_elements=size)
    assert D.dtype == np.float32 and D.shape == W.shape
    assert np.array_equal(D.astype(np.float64), dense_of(W))
    with pytest.raises(DensifyError, match=rf"{W.n_out} x {W.n_in}.*{size} elements.*max_elements={size - 1}"):
        W.to_dense(max_elements=size - 1)


def test_to_dense_default_limit():
    """The default limit is DEFAULT_MAX_DENSE_ELEMENTS; a matrix just above it is refused without allocating."""
    W = Diagonal(arr([0], i32), np.ones((1, 1), f32), (DEFAULT_MAX_DENSE_ELEMENTS + 1, 1))
    with pytest.raises(DensifyError):
        W.to_dense()


@given(S.sparse_matrices())
def test_copy_is_independent(W):
    """copy() equals the original and shares no memory: writing the copy's values leaves the original
    intact (its structure arrays are read-only, as every matrix's)."""
    before = {k: v.copy() for k, v in array_attrs(W).items()}
    C = W.copy()
    assert type(C) is type(W) and C.shape == W.shape
    for name, a in array_attrs(C).items():
        assert np.array_equal(a, before[name])
        assert not np.shares_memory(a, getattr(W, name)), name
        if name != "values":
            assert not a.flags.writeable, name
        elif a.size:
            a[...] = a + 1
    for name, a in array_attrs(W).items():
        assert np.array_equal(a, before[name]), f"{name} changed through the copy"


def test_csr_from_scipy_keeps_explicit_zeros_and_sorts():
    """from_scipy keeps stored zeros as active entries and returns sorted, unique rows."""
    sp = scipy.sparse.coo_array(
        (np.array([0.0, 2.0, 0.0, 3.0]), (np.array([1, 0, 0, 2]), np.array([2, 3, 1, 0]))), shape=(3, 4)
    ).tocsr()
    W = CSR.from_scipy(sp).validate(full=True)
    assert W.nnz == 4
    assert np.array_equal(mask_of(W), np.array([[0, 1, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0]], bool))
    assert np.array_equal(dense_of(W), sp.toarray())


@given(S.sparse_matrices())
def test_structure_round_trip_through_scipy(W):
    """Invariant 4: format -> SciPy -> CSR keeps every active position (zeros and zero-sum rows included)."""
    back = CSR.from_scipy(W.to_scipy()).validate(full=True)
    assert np.array_equal(mask_of(back), mask_of(W))
    assert np.array_equal(dense_of(back), dense_of(W))


# --------------------------------------------------------------------------------------------------
# Random constructors
# --------------------------------------------------------------------------------------------------

RANDOM_CASES = [((7, 3), 0.5), ((5, 12), 0.25), ((6, 6), 1.0), ((24, 17), 0.1), ((3, 40), 0.01), ((1, 1), 0.3)]


def _expected_structure_count(cls, shape, density) -> int:
    """The documented count: Condensed k, Diagonal K, CSR nnz."""
    n_out, n_in = shape
    if cls is Condensed:
        return max(1, math.floor(density * n_in))
    if cls is Diagonal:
        return max(1, math.ceil(density * max(n_out, n_in)))
    return math.floor(density * n_out * n_in)


def _structure_count(W) -> int:
    return {Condensed: lambda: W.k, Diagonal: lambda: W.K, CSR: lambda: W.nnz}[type(W)]()


@pytest.mark.parametrize("cls", [Condensed, Diagonal, CSR])
@pytest.mark.parametrize("shape, density", RANDOM_CASES)
def test_random_counts_and_validity(cls, shape, density):
    """random(): Condensed k = max(1, floor(d n_in)) on every row, Diagonal K = max(1, ceil(d P)),
    CSR exactly floor(d n_out n_in) entries; the result passes validate(full=True); float32 values."""
    want = _expected_structure_count(cls, shape, density)
    if cls is CSR and want == 0:
        with pytest.raises(FormatError, match="nnz = 0"):
            cls.random(shape, density, rng=0)
        return
    W = cls.random(shape, density, rng=0).validate(full=True)
    assert W.shape == shape and W.values.dtype == np.float32
    assert _structure_count(W) == want
    if cls is Condensed:
        assert np.array_equal(W.rows, np.arange(shape[0]))
        assert np.array_equal(mask_of(W).sum(axis=1), np.full(shape[0], want))
    assert int(mask_of(W).sum()) == W.nnz


@pytest.mark.parametrize("cls", [Condensed, Diagonal, CSR])
def test_random_same_seed_same_arrays(cls):
    """The same seed (int or fresh Generator) gives identical arrays; another seed gives another draw."""
    a = cls.random((20, 30), 0.2, rng=7)
    b = cls.random((20, 30), 0.2, rng=np.random.default_rng(7))
    c = cls.random((20, 30), 0.2, rng=8)
    for name in array_attrs(a):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize("cls", [Condensed, Diagonal, CSR])
@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_random_refuses_bad_density(cls, density):
    """A density outside (0, 1] is a FormatError quoting it."""
    with pytest.raises(FormatError, match=str(density)):
        cls.random((4, 4), density, rng=0)


def test_random_refuses_bad_rng():
    """rng must be a Generator, an int seed or None."""
    with pytest.raises(FormatTypeError, match="str"):
        CSR.random((4, 4), 0.5, rng="seed")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Condensed.random((300, 400), 0.05, rng=1),  # k = 20
        lambda: CSR.random((300, 400), 0.05, rng=1),  # fan-in ~ Binomial(400, 0.05), varies per row
        lambda: Diagonal.random((150, 600), 0.05, rng=1),  # wide: fan-in K = 30
        lambda: Diagonal.random((600, 60), 0.1, rng=1),  # tall: fan-in varies per row, some rows 0
    ],
    ids=["condensed", "csr", "diagonal-wide", "diagonal-tall"],
)
def test_kaiming_init_std(make):
    """Invariant 28: each value ~ N(0, 2 / fan_in of its row), fan_in counted from the stored structure.

    Dividing each value by sqrt(2 / fan_in) must give a sample with mean ~ 0 and std ~ 1 (several thousand
    values: tolerance 5%, about 5 standard errors). The std is sqrt(2/fan_in), not 2/fan_in.
    """
    W = make()
    rows, _ = positions_of(W)
    fan_in = mask_of(W).sum(axis=1)[rows]  # per stored value, the oracle's fan-in of its row
    z = W.values.astype(np.float64) / np.sqrt(2.0 / fan_in)
    assert z.size > 3000
    assert abs(z.mean()) < 0.05
    assert z.std() == pytest.approx(1.0, rel=0.05)


# --------------------------------------------------------------------------------------------------
# Diagonal geometry
# --------------------------------------------------------------------------------------------------


def all_diagonals(shape) -> Diagonal:
    P, L = max(shape), min(shape)
    values = np.arange(1, P * L + 1, dtype=f32).reshape(P, L)
    return Diagonal(np.arange(P, dtype=i32), values, shape)


@pytest.mark.parametrize("shape", [(7, 3), (5, 12), (6, 6), (1, 9), (9, 1), (1, 1), (12, 5)])
def test_all_diagonals_tile_the_grid_once(shape):
    """Invariant 2: the P diagonals are disjoint and cover every position exactly once."""
    W = all_diagonals(shape)
    assert np.array_equal(write_counts(W), np.ones(shape, np.int64))
    assert W.nnz == shape[0] * shape[1] and W.density == 1.0
    # Every value lands on its own position: to_scipy holds each of 1..P*L exactly once.
    assert sorted(W.to_scipy().data.tolist()) == list(range(1, shape[0] * shape[1] + 1))


@given(S.diagonal())
def test_diagonal_positions_and_density(W):
    """positions() agrees with the definition; density = K / P; nnz = K * L."""
    rows, cols = W.positions()
    o_rows, o_cols = positions_of(W)
    assert np.array_equal(rows, o_rows) and np.array_equal(cols, o_cols)
    P, L = max(W.shape), min(W.shape)
    assert (W.P, W.L, W.K) == (P, L, W.offsets.size)
    assert W.nnz == W.K * L
    assert W.density == pytest.approx(W.K / P, rel=1e-12)


@given(S.diagonal())
def test_diagonal_fan_in_and_fan_out(W):
    """Invariant 3: fan-in K on every row when wide, fan-out K on every column when tall, both when square."""
    mask = mask_of(W)
    fan_in, fan_out = mask.sum(axis=1), mask.sum(axis=0)
    n_out, n_in = W.shape
    if n_out <= n_in:
        assert np.all(fan_in == W.K)
    if n_out >= n_in:
        assert np.all(fan_out == W.K)
    assert np.array_equal(W.row_fan_in(), fan_in)


def test_tall_diagonal_row_can_have_no_inputs():
    """Invariant 3: a tall (12, 5) matrix with K = 1 leaves 7 rows with no inputs (no fan-in promise)."""
    W = Diagonal(arr([3], i32), np.ones((1, 5), f32), (12, 5))
    fan_in = mask_of(W).sum(axis=1)
    assert np.array_equal(np.flatnonzero(fan_in), [3, 4, 5, 6, 7])
    assert np.array_equal(W.row_fan_in(), fan_in)


@given(st.data())
def test_to_condensed_wide_and_square_is_the_same_matrix(data):
    """Invariant 8: wide/square Diagonal -> Condensed: all rows active with k = K, same dense matrix."""
    W = data.draw(S.diagonal(orientation=data.draw(st.sampled_from(["wide", "square"]))))
    assume(W.K >= 1)  # K = 0 is reported separately: to_condensed raises "k=0" for it
    C = W.to_condensed().validate(full=True)
    assert C.shape == W.shape and C.k == W.K
    assert np.array_equal(C.rows, np.arange(W.n_out))
    assert np.array_equal(dense_of(C), dense_of(W))
    assert np.array_equal(mask_of(C), mask_of(W))  # explicit zeros stay active


def test_to_condensed_square_hand_case():
    """Square 3 x 3, diagonal d = 1: element t sits at ((t + 1) % 3, t)."""
    W = Diagonal(arr([1], i32), arr([[10, 20, 30]], f32), (3, 3))
    C = W.to_condensed()
    assert C.indices.tolist() == [[2], [0], [1]]
    assert C.values.tolist() == [[30.0], [10.0], [20.0]]


@given(S.diagonal(orientation="tall"))
def test_to_condensed_refuses_tall(W):
    """A tall diagonal matrix has no constant fan-in: to_condensed raises FormatError quoting the shape."""
    with pytest.raises(FormatError, match=rf"{W.n_out} x {W.n_in}"):
        W.to_condensed()


@pytest.mark.parametrize(
    "shape, density, K", [((100, 10), 0.1, 10), ((10, 100), 0.05, 5), ((256, 256), 0.1, 26), ((7, 3), 0.01, 1)]
)
def test_count_for_density(shape, density, K):
    """K = max(1, ceil(density * P)), P = max(n_out, n_in) (hand-computed)."""
    assert Diagonal.count_for_density(shape, density) == K


def test_counts_survive_binary_rounding():
    """Counts from densities that are exact fractions are not off by one (15/22 * 22 < 15 in floats)."""
    assert Condensed.random((3, 22), 15 / 22, rng=0).k == 15
    assert Condensed.random((3, 47), 3 / 47, rng=0).k == 3
    assert CSR.random((1, 22), 15 / 22, rng=0).nnz == 15
    assert Diagonal.count_for_density((25, 1), 7 / 25) == 7


def test_from_scipy_leaves_the_callers_matrix_alone():
    """CSR.from_scipy sorts a copy: the caller's unsorted SciPy matrix keeps its index order."""
    S_ = scipy.sparse.csr_array(
        (np.ones(3, np.float32), np.array([2, 0, 1]), np.array([0, 2, 3])), shape=(2, 3)
    )
    W = CSR.from_scipy(S_)
    assert S_.indices.tolist() == [2, 0, 1]
    assert W.indices.tolist() == [0, 2, 1]


def test_empty_diagonal_converts_to_all_ablated_condensed():
    """A Diagonal with K = 0 stores nothing; as Condensed every row is ablated."""
    D = Diagonal(np.zeros(0, np.int32), np.zeros((0, 3), np.float32), (3, 5))
    C = D.to_condensed()
    assert C.n_active == 0 and C.nnz == 0 and C.shape == (3, 5)


@given(st.lists(st.integers(-(2**40), 2**40), max_size=60))
def test_sorted_unique_equals_numpy_unique(values):
    """sorted_unique (the fast dedup of position keys) returns exactly what np.unique returns."""
    from purerigl.formats._base import sorted_unique

    a = np.array(values, dtype=np.int64)
    got = sorted_unique(a)
    assert got.dtype == np.int64 and np.array_equal(got, np.unique(a))
