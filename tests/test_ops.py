"""Every sparse operation of every backend against oracles built another way.

Pins down (DESIGN.md sections 3 and 6, PAPERS.md invariants 5, 6, 8):

- ``matmul`` (Y = X W^T), ``matmul_t`` (dX = dY W), ``sddmm`` (dY^T X at the stored positions, laid out
  like ``W.values``) and ``grad_at`` (dY^T X at given pairs) equal the masked-dense float64 oracle and
  the SciPy CSR product, on hypothesis-drawn matrices of all three formats (tall, wide, square, batch 1,
  k = 1, k = n_in, K = 0, 1, P, empty and full CSR rows, ablated rows, ties, explicit zeros); within
  float32 accumulation error, and bit-exactly when every operand is a small dyadic number;
- rows (columns) that store nothing give exactly 0 in matmul (matmul_t);
- results are bit-identical from call to call, inputs are left untouched;
- operand rules: ``out=`` is filled and returned, a wrong shape / dtype / layout is refused;
  float64 or non-array operands raise DTypeError; non-contiguous operands give the same result;
  shape mismatches raise ShapeError quoting the numbers; batch 0 works; grad_at with m = 0 works
  and refuses out-of-range pairs;
- a wide or square Diagonal and its ``to_condensed()`` give the same results for every op;
- a few larger fixed cases, so that blocked / chunked kernel paths are exercised too, and whose
  results do not change with the number of threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import strategies as S
from oracles import (
    assert_close,
    grad_at_oracle,
    mask_of,
    matmul_oracle,
    matmul_scipy,
    matmul_t_oracle,
    matmul_t_scipy,
    positions_of,
    sddmm_oracle,
)
from purerigl.errors import DTypeError, FormatTypeError, OperandError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal

FORMATS = S.FORMAT_NAMES
OPS = ("matmul", "matmul_t", "sddmm", "grad_at")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def raw_arrays(W) -> list[np.ndarray]:
    return [v for v in vars(W).values() if isinstance(v, np.ndarray)]


def snapshot(*arrays) -> list[np.ndarray]:
    return [a.copy() for a in arrays]


def assert_unchanged(before, arrays, what="input"):
    for b, a in zip(before, arrays):
        assert np.array_equal(b, a, equal_nan=True), f"{what} was modified by the op"


def call(backend, op, W, X, dY, **kw):
    """Run one op on (W, X, dY); grad_at is asked for W's own stored positions."""
    if op == "matmul":
        return backend.matmul(W, X, **kw)
    if op == "matmul_t":
        return backend.matmul_t(W, dY, **kw)
    if op == "sddmm":
        return backend.sddmm(W, X, dY, **kw)
    rows, cols = positions_of(W)
    return backend.grad_at(X, dY, rows.ravel(), cols.ravel(), **kw)


def oracle(op, W, X, dY):
    """(value, scale, n_terms) of the oracle for one op, matching ``call``'s layout."""
    if op == "matmul":
        return (*matmul_oracle(W, X), W.n_in)
    if op == "matmul_t":
        return (*matmul_t_oracle(W, dY), W.n_out)
    g, s = sddmm_oracle(W, X, dY)
    if op == "grad_at":
        g, s = g.ravel(), s.ravel()
    return g, s, X.shape[0]


def rng_array(rng, shape) -> np.ndarray:
    return rng.uniform(-2, 2, size=shape).astype(np.float32)


def fixed_matrices():
    """One small matrix per format and orientation (fixed seeds), for the operand-rule tests."""
    out = []
    for shape in [(5, 7), (7, 5), (6, 6)]:
        out.append(Condensed.random(shape, 0.5, rng=1))
        out.append(Diagonal.random(shape, 0.4, rng=2))
        out.append(CSR.random(shape, 0.4, rng=3))
    return out


FIXED = fixed_matrices()
FIXED_IDS = [f"{type(W).__name__}{W.shape}" for W in FIXED]


def check_op_against_oracles(backend, op, p: S.Problem):
    """The op's result equals the oracle (and SciPy for the products), twice bit-identically,
    leaving every input untouched. Returns the result."""
    W, X, dY = p.W, p.X, p.dY
    before = snapshot(X, dY, *raw_arrays(W))
    got = call(backend, op, W, X, dY)
    assert_unchanged(before, [X, dY, *raw_arrays(W)])
    want, scale, n_terms = oracle(op, W, X, dY)
    assert_close(got, want, scale, what=f"{backend.name}.{op}", exact=p.exact, n_terms=n_terms)
    if op == "matmul":
        assert_close(got, matmul_scipy(W, X), scale, what=f"{backend.name}.matmul vs scipy", n_terms=n_terms)
    if op == "matmul_t":
        assert_close(got, matmul_t_scipy(W, dY), scale, what=f"{backend.name}.matmul_t vs scipy", n_terms=n_terms)
    again = call(backend, op, W, X, dY)
    assert np.array_equal(got, again), f"{backend.name}.{op} is not reproducible bit for bit"
    return got


# --------------------------------------------------------------------------------------------------
# The four ops against the oracles, on drawn problems
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_matmul(backend, fmt, data):
    """Y = X W^T; rows storing nothing (ablated, empty CSR rows, tall-diagonal rows) are exactly 0."""
    p = data.draw(S.problems(fmt), label="problem")
    Y = check_op_against_oracles(backend, "matmul", p)
    empty_rows = ~mask_of(p.W).any(axis=1)
    assert np.all(Y[:, empty_rows] == 0.0)


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_matmul_t(backend, fmt, data):
    """dX = dY W; input columns that no stored entry reads are exactly 0."""
    p = data.draw(S.problems(fmt), label="problem")
    dX = check_op_against_oracles(backend, "matmul_t", p)
    empty_cols = ~mask_of(p.W).any(axis=0)
    assert np.all(dX[:, empty_cols] == 0.0)


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_sddmm(backend, fmt, data):
    """dW = (dY^T X) gathered at the stored positions, laid out like W.values (shape included)."""
    p = data.draw(S.problems(fmt), label="problem")
    dW = check_op_against_oracles(backend, "sddmm", p)
    assert dW.shape == p.W.values.shape


@st.composite
def grad_at_problems(draw):
    """X (B, n_in), dY (B, n_out) and m in [0, 40] candidate pairs (duplicates allowed), int32 or int64."""
    n_out, n_in = draw(S.shapes())
    ties = draw(st.booleans())
    B = draw(st.one_of(st.just(1), st.integers(1, S.MAX_BATCH)))
    X = draw(S.float32_arrays((B, n_in), ties))
    dY = draw(S.float32_arrays((B, n_out), ties))
    m = draw(st.integers(0, 40))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    rows = np.array(draw(st.lists(st.integers(0, n_out - 1), min_size=m, max_size=m)), dtype=dtype)
    cols = np.array(draw(st.lists(st.integers(0, n_in - 1), min_size=m, max_size=m)), dtype=dtype)
    return X, dY, rows, cols, ties


@given(problem=grad_at_problems())
def test_grad_at(backend, problem):
    """g[m] = sum_b dY[b, rows[m]] X[b, cols[m]] at arbitrary pairs (m = 0 included), inputs untouched."""
    X, dY, rows, cols, ties = problem
    before = snapshot(X, dY, rows, cols)
    g = backend.grad_at(X, dY, rows, cols)
    assert_unchanged(before, [X, dY, rows, cols])
    want, scale = grad_at_oracle(X, dY, rows, cols)
    assert_close(g, want, scale, what=f"{backend.name}.grad_at", exact=ties, n_terms=X.shape[0])
    assert np.array_equal(g, backend.grad_at(X, dY, rows, cols))


# --------------------------------------------------------------------------------------------------
# Structure edge cases, by hand
# --------------------------------------------------------------------------------------------------


def test_ablated_rows_are_exactly_zero(backend):
    """Condensed rows not listed in ``rows`` output exactly 0, even into an out buffer full of NaN."""
    W = Condensed(np.array([1, 3], np.int32), np.array([[0, 2], [1, 2]], np.int32),
                  np.array([[1.5, -2.0], [0.25, 3.0]], np.float32), (5, 3))
    X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], np.float32)
    out = np.full((2, 5), np.nan, np.float32)
    Y = backend.matmul(W, X, out=out)
    expected = np.array([[0, 1.5 - 6.0, 0, 0.5 + 9.0, 0], [0, -1.5 - 8.0, 0, 0.125 + 12.0, 0]], np.float32)
    assert np.array_equal(Y, expected)


def test_tall_diagonal_rows_without_inputs_are_zero(backend):
    """(12, 5) with K = 1 at offset 3: rows 3..7 get x[t], every other row is exactly 0."""
    W = Diagonal(np.array([3], np.int32), np.array([[1, 2, 3, 4, 5]], np.float32), (12, 5))
    X = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0, -1.0]], np.float32)
    Y = backend.matmul(W, X, out=np.full((2, 12), np.nan, np.float32))
    expected = np.zeros((2, 12), np.float32)
    expected[0, 3:8] = [1, 2, 3, 4, 5]
    expected[1, 3], expected[1, 7] = 2.0, -5.0
    assert np.array_equal(Y, expected)


def test_empty_matrices(backend):
    """Matrices that store nothing (no active row, K = 0, nnz = 0) give zeros of the right shapes."""
    X, dY = np.ones((3, 4), np.float32), np.ones((3, 2), np.float32)
    for W in [Condensed(np.zeros(0, np.int32), np.zeros((0, 2), np.int32), np.zeros((0, 2), np.float32), (2, 4)),
              Diagonal(np.zeros(0, np.int32), np.zeros((0, 2), np.float32), (2, 4)),
              CSR(np.zeros(3, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (2, 4))]:
        assert np.array_equal(backend.matmul(W, X), np.zeros((3, 2), np.float32))
        assert np.array_equal(backend.matmul_t(W, dY), np.zeros((3, 4), np.float32))
        assert backend.sddmm(W, X, dY).shape == W.values.shape


# --------------------------------------------------------------------------------------------------
# Wide / square Diagonal == its Condensed form (invariant 8)
# --------------------------------------------------------------------------------------------------


def condensed_slot_of(C: Condensed) -> dict[tuple[int, int], tuple[int, int]]:
    """(row, col) -> (r, t) such that C.values[r, t] sits at (row, col), from the oracle's positions."""
    rows, cols = positions_of(C)
    return {(int(rows[r, t]), int(cols[r, t])): (r, t) for r in range(rows.shape[0]) for t in range(rows.shape[1])}


@given(data=st.data())
def test_wide_and_square_diagonal_equal_their_condensed_form(backend, data):
    """Every op gives the same result on a wide/square Diagonal and on ``to_condensed()`` of it;
    sddmm is compared entry by entry after mapping diagonal slot (k, t) to condensed slot (r, t')."""
    orientation = data.draw(st.sampled_from(["wide", "square"]), label="orientation")
    ties = data.draw(st.booleans(), label="ties")
    D = data.draw(S.diagonal(orientation=orientation, ties=ties), label="D")
    assume(D.K >= 1)
    C = D.to_condensed()
    B = data.draw(st.one_of(st.just(1), st.integers(1, S.MAX_BATCH)), label="B")
    X = data.draw(S.float32_arrays((B, D.n_in), ties), label="X")
    dY = data.draw(S.float32_arrays((B, D.n_out), ties), label="dY")

    want, scale = matmul_oracle(D, X)
    assert_close(backend.matmul(D, X), want, scale, "matmul(diagonal)", exact=ties)
    assert_close(backend.matmul(C, X), want, scale, "matmul(condensed)", exact=ties)

    want, scale = matmul_t_oracle(D, dY)
    assert_close(backend.matmul_t(D, dY), want, scale, "matmul_t(diagonal)", exact=ties)
    assert_close(backend.matmul_t(C, dY), want, scale, "matmul_t(condensed)", exact=ties)

    gD, gC = backend.sddmm(D, X, dY), backend.sddmm(C, X, dY)
    slot = condensed_slot_of(C)
    d_rows, d_cols = positions_of(D)
    gC_as_D = np.array([[gC[slot[(int(d_rows[k, t]), int(d_cols[k, t]))]] for t in range(D.L)] for k in range(D.K)],
                       dtype=np.float32)
    want, scale = sddmm_oracle(D, X, dY)
    assert_close(gD, want, scale, "sddmm(diagonal)", exact=ties)
    assert_close(gC_as_D, want, scale, "sddmm(condensed) mapped to diagonal slots", exact=ties)


# --------------------------------------------------------------------------------------------------
# out= buffers
# --------------------------------------------------------------------------------------------------


def out_shape(op, W, X):
    B = X.shape[0]
    return {"matmul": (B, W.n_out), "matmul_t": (B, W.n_in), "sddmm": W.values.shape, "grad_at": (W.nnz,)}[op]


def operands(W, B=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng_array(rng, (B, W.n_in)), rng_array(rng, (B, W.n_out))


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("W", FIXED, ids=FIXED_IDS)
def test_out_buffer_is_filled_and_returned(backend, op, W, B):
    """out= (pre-filled with NaN) is overwritten with the same result as without it, and returned."""
    X, dY = operands(W, B=B)
    fresh = call(backend, op, W, X, dY)
    out = np.full(out_shape(op, W, X), np.nan, np.float32)
    got = call(backend, op, W, X, dY, out=out)
    assert got is out
    assert np.array_equal(out, fresh)


@pytest.mark.parametrize("op", OPS)
def test_out_buffer_refusals(backend, op):
    """A wrong out shape is a ShapeError quoting both shapes, a float64 out a DTypeError, a
    non-C-contiguous out a ShapeError; the op writes nothing useful into a refused buffer."""
    W = FIXED[0]
    X, dY = operands(W)
    shape = out_shape(op, W, X)
    wrong = tuple(s + 1 for s in shape)
    with pytest.raises(ShapeError, match=rf"{wrong}.*{tuple(shape)}".replace("(", r"\(").replace(")", r"\)")):
        call(backend, op, W, X, dY, out=np.zeros(wrong, np.float32))
    with pytest.raises(DTypeError, match="float64"):
        call(backend, op, W, X, dY, out=np.zeros(shape, np.float64))
    if len(shape) == 2:
        non_contiguous = np.zeros(shape[::-1], np.float32).T
    else:
        non_contiguous = np.zeros(2 * shape[0], np.float32)[::2]
    assert non_contiguous.shape == tuple(shape) and not non_contiguous.flags.c_contiguous
    with pytest.raises(ShapeError, match="contiguous"):
        call(backend, op, W, X, dY, out=non_contiguous)


# --------------------------------------------------------------------------------------------------
# Operand rules
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_float64_and_non_array_operands_are_refused(backend, op):
    """X or dY of dtype float64 (or int, or a list) raises DTypeError, which is a TypeError."""
    assert issubclass(DTypeError, TypeError)
    W = FIXED[0]
    X, dY = operands(W)
    bad_X = [X.astype(np.float64), X.astype(np.int32), X.tolist()]
    bad_dY = [dY.astype(np.float64), dY.astype(np.float16), dY.tolist()]
    if op in ("matmul", "sddmm", "grad_at"):
        for bad in bad_X:
            with pytest.raises(DTypeError, match="X"):
                call(backend, op, W, bad, dY)
    if op in ("matmul_t", "sddmm", "grad_at"):
        for bad in bad_dY:
            with pytest.raises(DTypeError, match="dY"):
                call(backend, op, W, X, bad)


@pytest.mark.parametrize("op", ["matmul", "matmul_t", "sddmm"])
def test_non_format_weight_is_refused(backend, op):
    """W must be a purerigl format: a SciPy matrix or a dense array raises FormatTypeError."""
    W = FIXED[0]
    X, dY = operands(W)
    for bad in [W.to_scipy(), W.to_dense()]:
        with pytest.raises(FormatTypeError, match=type(bad).__name__):
            call(backend, op, bad, X, dY)


def non_contiguous_views(A: np.ndarray) -> dict[str, np.ndarray]:
    """Views of the same values as A that are not C-contiguous: Fortran order, strided, reversed."""
    fortran = np.ascontiguousarray(A.T).T  # a transposed view
    big = np.zeros((A.shape[0], 2 * A.shape[1]), np.float32)
    big[:, ::2] = A
    strided = big[:, ::2]
    reversed_rows = np.ascontiguousarray(A[::-1])[::-1]
    return {"transposed": fortran, "strided": strided, "reversed": reversed_rows}


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("W", FIXED, ids=FIXED_IDS)
def test_non_contiguous_operands(backend, op, W, B):
    """X and dY given as transposed, strided or reversed views give the same result as C-contiguous ones."""
    X, dY = operands(W, B=B)
    want = call(backend, op, W, X, dY)
    ref, scale, n_terms = oracle(op, W, X, dY)
    assert_close(want, ref, scale, f"{op} contiguous", n_terms=n_terms)
    Xs, dYs = non_contiguous_views(X), non_contiguous_views(dY)
    assert not Xs["strided"].flags.c_contiguous and not dYs["strided"].flags.c_contiguous
    for kind in Xs:  # with B = 1 a transposed or reversed view is still C-contiguous: harmless
        assert np.array_equal(Xs[kind], X) and np.array_equal(dYs[kind], dY)
        got = call(backend, op, W, Xs[kind], dYs[kind])
        assert np.array_equal(got, want), f"{op} with {kind} operands differs"


@pytest.mark.parametrize("W", FIXED[:3], ids=FIXED_IDS[:3])
def test_shape_mismatches(backend, W):
    """Wrong feature widths, batch mismatches and non-2-D operands raise ShapeError quoting the numbers."""
    n_out, n_in = W.shape
    X, dY = operands(W, B=3)
    X_wide = np.zeros((3, n_in + 1), np.float32)
    dY_wide = np.zeros((3, n_out + 2), np.float32)
    with pytest.raises(ShapeError, match=rf"X has {n_in + 1} columns, expected n_in = {n_in}"):
        backend.matmul(W, X_wide)
    with pytest.raises(ShapeError, match=rf"dY has {n_out + 2} columns, expected n_out = {n_out}"):
        backend.matmul_t(W, dY_wide)
    with pytest.raises(ShapeError, match=rf"{n_in + 1} columns"):
        backend.sddmm(W, X_wide, dY)
    with pytest.raises(ShapeError, match=rf"{n_out + 2} columns"):
        backend.sddmm(W, X, dY_wide)
    with pytest.raises(ShapeError, match=r"batch 3.*batch 2"):
        backend.sddmm(W, X, dY[:2])
    with pytest.raises(ShapeError, match=r"batch 2.*batch 3"):
        backend.grad_at(X[:2], dY, np.zeros(1, np.int64), np.zeros(1, np.int64))
    with pytest.raises(ShapeError, match=rf"\({n_in},\)"):
        backend.matmul(W, X[0])
    with pytest.raises(ShapeError, match=r"2-D"):
        backend.matmul_t(W, dY[None])


@pytest.mark.parametrize("W", FIXED, ids=FIXED_IDS)
def test_batch_zero(backend, W):
    """B = 0 is a valid batch: empty outputs of the right shape, and all-zero value gradients."""
    X, dY = np.zeros((0, W.n_in), np.float32), np.zeros((0, W.n_out), np.float32)
    assert backend.matmul(W, X).shape == (0, W.n_out)
    assert backend.matmul_t(W, dY).shape == (0, W.n_in)
    out = np.full(W.values.shape, np.nan, np.float32)
    assert np.array_equal(backend.sddmm(W, X, dY, out=out), np.zeros(W.values.shape, np.float32))
    g = backend.grad_at(X, dY, np.array([0, W.n_out - 1]), np.array([W.n_in - 1, 0]))
    assert np.array_equal(g, np.zeros(2, np.float32))


def test_grad_at_empty_and_refusals(backend):
    """m = 0 gives an empty float32 result; pairs out of range, of unequal length, 2-D or
    non-integer are refused (ShapeError quoting the bad index / DTypeError)."""
    X, dY = np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)
    g = backend.grad_at(X, dY, np.zeros(0, np.int64), np.zeros(0, np.int32))
    assert g.shape == (0,) and g.dtype == np.float32
    ok = np.array([0, 1])
    with pytest.raises(ShapeError, match=r"rows holds 3, outside \[0, 3\)"):
        backend.grad_at(X, dY, np.array([0, 3]), ok)
    with pytest.raises(ShapeError, match=r"cols holds -1"):
        backend.grad_at(X, dY, ok, np.array([-1, 0]))
    with pytest.raises(ShapeError, match=r"cols holds 4, outside \[0, 4\)"):
        backend.grad_at(X, dY, ok, np.array([4, 0]))
    with pytest.raises(ShapeError, match=r"2 entries.*3"):
        backend.grad_at(X, dY, ok, np.array([0, 1, 2]))
    with pytest.raises(ShapeError, match="1-D"):
        backend.grad_at(X, dY, ok[None], ok[None])
    with pytest.raises(DTypeError):
        backend.grad_at(X, dY, ok.astype(np.float64), ok)


# --------------------------------------------------------------------------------------------------
# Larger fixed cases: blocked and chunked kernel paths
# --------------------------------------------------------------------------------------------------

def _ablate_every_third_row(W: Condensed) -> Condensed:
    keep = np.arange(W.n_active) % 3 != 1
    return Condensed(W.rows[keep], W.indices[keep], W.values[keep], W.shape)


def _empty_every_other_row(W: CSR) -> CSR:
    counts = np.diff(W.indptr)
    keep_row = np.arange(W.n_out) % 2 == 0
    keep = np.repeat(keep_row, counts)
    indptr = np.concatenate([[0], np.cumsum(np.where(keep_row, counts, 0))])
    return CSR(indptr, W.indices[keep], W.values[keep], W.shape)


LARGER = [
    Condensed.random((96, 300), 0.8, rng=11),  # nnz 23040: batch 3 gives multi-chunk scatters
    _ablate_every_third_row(Condensed.random((90, 200), 0.5, rng=16)),
    Diagonal.random((150, 400), 0.5, rng=12),  # wide, K = 200
    Diagonal.random((400, 150), 0.5, rng=13),  # tall
    Diagonal.random((200, 200), 0.6, rng=14),  # square
    CSR.random((140, 300), 0.7, rng=15),  # nnz 29400
    _empty_every_other_row(CSR.random((100, 250), 0.6, rng=17)),
]
LARGER_IDS = [f"{type(W).__name__}{W.shape}-{i}" for i, W in enumerate(LARGER)]


@pytest.mark.parametrize("B", [1, 3, 5, 70, 300])
@pytest.mark.parametrize("W", LARGER, ids=LARGER_IDS)
def test_larger_matrices(backend, W, B):
    """Every op on a few larger matrices (ablated rows, empty rows included) and batches 1 to 300,
    against the oracles: catches bugs in tiled, chunked or batch-blocked kernel paths that tiny drawn
    shapes never reach."""
    X, dY = operands(W, B=B, seed=B)
    for op in ("matmul", "matmul_t", "sddmm"):
        got = call(backend, op, W, X, dY)
        want, scale, n_terms = oracle(op, W, X, dY)
        assert_close(got, want, scale, f"{backend.name}.{op}", n_terms=n_terms)
    rng = np.random.default_rng(B)
    rows, cols = rng.integers(0, W.n_out, 500), rng.integers(0, W.n_in, 500)
    g = backend.grad_at(X, dY, rows, cols)
    assert_close(g, *grad_at_oracle(X, dY, rows, cols), f"{backend.name}.grad_at", n_terms=B)


@pytest.mark.parametrize("W", LARGER, ids=LARGER_IDS)
def test_results_do_not_depend_on_the_thread_count(backend, W):
    """Fixed partitions and private accumulators: one thread and all threads give identical bits."""
    numba = pytest.importorskip("numba")
    X, dY = operands(W, B=5)
    rows, cols = np.arange(W.n_out).repeat(2), np.arange(2 * W.n_out) % W.n_in
    ops = {
        "matmul": lambda: backend.matmul(W, X), "matmul_t": lambda: backend.matmul_t(W, dY),
        "matmul_t B=3": lambda: backend.matmul_t(W, dY[:3]), "sddmm": lambda: backend.sddmm(W, X, dY),
        "grad_at": lambda: backend.grad_at(X, dY, rows, cols),
    }
    default = numba.get_num_threads()
    many = {name: f() for name, f in ops.items()}
    try:
        numba.set_num_threads(1)
        one = {name: f() for name, f in ops.items()}
    finally:
        numba.set_num_threads(default)
    for name in ops:
        assert np.array_equal(one[name], many[name]), f"{name} changes with the thread count"


@pytest.mark.parametrize("op", ["matmul", "matmul_t", "sddmm"])
def test_out_overlapping_an_input_is_refused(backend, op):
    """An out= buffer that shares memory with an input would be zeroed before it is read: refused."""
    W = Condensed.random((4, 4), 0.5, rng=0)
    X = np.ones((2, 4), np.float32)
    be = backend
    with pytest.raises(OperandError, match="shares memory"):
        if op == "matmul":
            be.matmul(W, X, out=X)
        elif op == "matmul_t":
            be.matmul_t(W, X, out=X)
        else:
            be.sddmm(W, X, X, out=W.values)

