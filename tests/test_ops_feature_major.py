"""The feature-major products (``matmul_fm``, ``matmul_t_fm``, ``sddmm_fm``) of the host backends
against oracles built another way.

Feature-major means batch last: X^T (n_in, B), dY^T (n_out, B); a convolution hands the kernels its
transposed patch matrix this way (:mod:`purerigl.nn.conv`). Pins down (DESIGN.md sections 3 and 6):

- ``Y^T = W X^T``, ``dX^T = W^T dY^T`` and ``dW[e] = sum_b dY^T[row_e, b] X^T[col_e, b]`` equal the
  masked-dense float64 products computed in the feature-major layout (``D @ X^T``, ``D^T @ dY^T``,
  ``(dY^T X^T^T)`` gathered) and SciPy's CSR products, on hypothesis-drawn matrices of all three
  formats and batches including 1 (tall, wide, square, ablated rows, empty rows, ties); bit-exactly
  when every operand is a small dyadic number; and the transposes of the same backend's row-layout
  results (within float32 accumulation error);
- rows (columns) that store nothing give exactly 0; results repeat bit for bit and inputs are left
  untouched;
- larger fixed cases whose batches exceed the kernels' batch blocks (256, 1024), and thread-count
  independence;
- operand rules as for the row ops: ``out=`` filled and returned, wrong shapes / dtypes refused with
  the numbers quoted, non-contiguous operands give the same result, batch 0 works, an ``out`` sharing
  memory with an input is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies as S
from oracles import assert_close, dense_of, mask_of, positions_of, scipy_of
from purerigl.errors import DTypeError, OperandError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal

FORMATS = S.FORMAT_NAMES
_NUMPY_MAX_ROWS = 192  # purerigl.kernels.cpu._layout.NUMPY_MAX_ROWS (the test below checks that it still is)
FM_OPS = ("matmul_fm", "matmul_t_fm", "sddmm_fm")
ROW_OF = {"matmul_fm": "matmul", "matmul_t_fm": "matmul_t", "sddmm_fm": "sddmm"}


def T(A: np.ndarray) -> np.ndarray:
    """A C-contiguous transpose (the feature-major copy of a row-layout array)."""
    return np.ascontiguousarray(A.T)


def call_fm(backend, op, W, XT, dYT, **kw):
    if op == "matmul_fm":
        return backend.matmul_fm(W, XT, **kw)
    if op == "matmul_t_fm":
        return backend.matmul_t_fm(W, dYT, **kw)
    return backend.sddmm_fm(W, XT, dYT, **kw)


def call_row(backend, op, W, XT, dYT):
    """The row-layout op on the transposed operands, its result transposed back (sddmm: as it is)."""
    X, dY = T(XT), T(dYT)
    if op == "matmul_fm":
        return T(backend.matmul(W, X))
    if op == "matmul_t_fm":
        return T(backend.matmul_t(W, dY))
    return backend.sddmm(W, X, dY)


def oracle_fm(op, W, XT, dYT):
    """(value, scale, n_terms) in float64, computed in the feature-major layout from the dense W."""
    D = dense_of(W)
    XT, dYT = XT.astype(np.float64), dYT.astype(np.float64)
    if op == "matmul_fm":
        return D @ XT, np.abs(D) @ np.abs(XT), W.n_in
    if op == "matmul_t_fm":
        return D.T @ dYT, np.abs(D).T @ np.abs(dYT), W.n_out
    rows, cols = positions_of(W)
    G, Gs = dYT @ XT.T, np.abs(dYT) @ np.abs(XT).T  # (n_out, n_in)
    return G[rows, cols], Gs[rows, cols], XT.shape[1]


def scipy_fm(op, W, XT, dYT):
    if op == "matmul_fm":
        return scipy_of(W) @ XT.astype(np.float64)
    return scipy_of(W).T @ dYT.astype(np.float64)


def check_fm_op(backend, op, W, XT, dYT, exact=False):
    """The op equals the oracle (and SciPy for the products) and the transposed row-layout result,
    twice bit-identically, leaving the inputs untouched. Returns the result."""
    before = [XT.copy(), dYT.copy(), W.values.copy()]
    got = call_fm(backend, op, W, XT, dYT)
    assert all(np.array_equal(b, a) for b, a in zip(before, [XT, dYT, W.values])), "an input was modified"
    want, scale, n_terms = oracle_fm(op, W, XT, dYT)
    what = f"{backend.name}.{op}"
    assert_close(got, want, scale, what=what, exact=exact, n_terms=n_terms)
    if op != "sddmm_fm":
        assert_close(got, scipy_fm(op, W, XT, dYT), scale, what=f"{what} vs scipy", n_terms=n_terms)
    assert_close(got, call_row(backend, op, W, XT, dYT), 2 * scale, what=f"{what} vs row layout", n_terms=n_terms)
    assert np.array_equal(got, call_fm(backend, op, W, XT, dYT)), f"{what} is not reproducible bit for bit"
    return got


# --------------------------------------------------------------------------------------------------
# Drawn problems


@pytest.mark.parametrize("op", FM_OPS)
@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_feature_major_ops_against_oracles(backend, fmt, op, data):
    """Each feature-major op on drawn matrices (batch 1 often), against the dense and SciPy oracles."""
    p = data.draw(S.problems(fmt), label="problem")
    got = check_fm_op(backend, op, p.W, T(p.X), T(p.dY), exact=p.exact)
    if op == "matmul_fm":
        assert np.all(got[~mask_of(p.W).any(axis=1)] == 0.0)  # rows that store nothing
    elif op == "matmul_t_fm":
        assert np.all(got[~mask_of(p.W).any(axis=0)] == 0.0)  # columns nothing reads
    else:
        assert got.shape == p.W.values.shape


@pytest.mark.parametrize("op", FM_OPS)
@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data())
def test_feature_major_ops_at_batches_of_the_batched_kernels(backend, fmt, op, data):
    """Batches 4-20, where the cpu backend runs its batched kernels (eight entries per pass, a pass of
    four, then single entries: rows of every length up to 24 exercise each), against the oracles."""
    p = data.draw(S.problems(fmt, batch=st.integers(4, 20)), label="problem")
    got = check_fm_op(backend, op, p.W, T(p.X), T(p.dY), exact=p.exact)
    if op == "matmul_fm":
        assert np.all(got[~mask_of(p.W).any(axis=1)] == 0.0)
    elif op == "matmul_t_fm":
        assert np.all(got[~mask_of(p.W).any(axis=0)] == 0.0)


# --------------------------------------------------------------------------------------------------
# Larger fixed cases: batch blocks, chunks, ablated and empty rows


def _ablated(W: Condensed) -> Condensed:
    keep = np.arange(W.n_active) % 3 != 0
    return Condensed(W.rows[keep], W.indices[keep], W.values[keep], shape=W.shape)


def _empty_rows(W: CSR) -> CSR:
    counts = np.diff(W.indptr)
    keep = np.repeat(np.arange(W.n_out) % 2 == 1, counts)
    indptr = np.concatenate([[0], np.cumsum(np.where(np.arange(W.n_out) % 2 == 1, counts, 0))])
    return CSR(indptr, W.indices[keep], W.values[keep], shape=W.shape)


LARGER = [
    _ablated(Condensed.random((32, 288), 0.9, rng=1)),  # a conv filter matrix, wide
    Condensed.random((300, 40), 0.5, rng=2),  # tall
    Diagonal.random((32, 288), 0.9, rng=3),  # wide
    Diagonal.random((150, 60), 0.7, rng=4),  # tall
    Diagonal.random((64, 64), 0.8, rng=5),  # square
    CSR.random((32, 288), 0.9, rng=6),
    _empty_rows(CSR.random((90, 70), 0.6, rng=7)),
]
LARGER_IDS = [f"{type(W).__name__}{W.shape}-{i}" for i, W in enumerate(LARGER)]


def operands_fm(W, B, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-2, 2, (W.n_in, B)).astype(np.float32),
            rng.uniform(-2, 2, (W.n_out, B)).astype(np.float32))


@pytest.mark.parametrize("B", [1, 2, 5, 300, 1500])
@pytest.mark.parametrize("W", LARGER, ids=LARGER_IDS)
def test_larger_matrices_and_batches_beyond_the_blocks(backend, W, B):
    XT, dYT = operands_fm(W, B, seed=B)
    for op in FM_OPS:
        check_fm_op(backend, op, W, XT, dYT)


@pytest.mark.parametrize("W", LARGER, ids=LARGER_IDS)
def test_results_do_not_depend_on_the_thread_count(backend, W):
    numba = pytest.importorskip("numba")
    XT, dYT = operands_fm(W, 1100)
    default = numba.get_num_threads()
    many = [call_fm(backend, op, W, XT, dYT) for op in FM_OPS]
    try:
        numba.set_num_threads(1)
        one = [call_fm(backend, op, W, XT, dYT) for op in FM_OPS]
    finally:
        numba.set_num_threads(default)
    for op, a, b in zip(FM_OPS, one, many):
        assert np.array_equal(a, b), f"{op} changes with the thread count"


def test_cpu_diagonal_layouts_agree_to_float32_rounding():
    """The cpu Diagonal gathers of the two layouts sum the same terms in ascending k; the feature-major
    ones add them eight per pass (issue 19), so the two agree to float32 rounding, not bit for bit."""
    from purerigl.kernels import get_backend

    cpu = get_backend("cpu")
    for W in LARGER[2:5]:
        XT, dYT = operands_fm(W, 77)
        for fm, row in ((cpu.matmul_fm(W, XT), T(cpu.matmul(W, T(XT)))),
                        (cpu.matmul_t_fm(W, dYT), T(cpu.matmul_t(W, T(dYT))))):
            scale = float(np.abs(row).max()) or 1.0
            assert np.max(np.abs(fm - row)) <= 1e-5 * scale * np.sqrt(W.values.shape[0])


# --------------------------------------------------------------------------------------------------
# Operand rules

FIXED = [Condensed.random((5, 7), 0.5, rng=1), Diagonal.random((7, 5), 0.4, rng=2), CSR.random((6, 6), 0.4, rng=3)]
FIXED_IDS = [f"{type(W).__name__}{W.shape}" for W in FIXED]


def out_shape(op, W, B):
    return {"matmul_fm": (W.n_out, B), "matmul_t_fm": (W.n_in, B), "sddmm_fm": W.values.shape}[op]


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("op", FM_OPS)
@pytest.mark.parametrize("W", FIXED, ids=FIXED_IDS)
def test_out_buffer_and_non_contiguous_operands(backend, op, W, B):
    """out= (pre-filled with NaN) is overwritten and returned; transposed and strided views of the
    operands give the same bits as C-contiguous ones."""
    XT, dYT = operands_fm(W, B)
    fresh = call_fm(backend, op, W, XT, dYT)
    out = np.full(out_shape(op, W, B), np.nan, np.float32)
    assert call_fm(backend, op, W, XT, dYT, out=out) is out and np.array_equal(out, fresh)
    for view in (lambda A: np.asfortranarray(A), lambda A: np.repeat(A, 2, axis=1)[:, ::2]):
        got = call_fm(backend, op, W, view(XT), view(dYT))
        assert np.array_equal(got, fresh)


@pytest.mark.parametrize("op", FM_OPS)
def test_refusals(backend, op):
    W = FIXED[0]  # (5, 7)
    XT, dYT = operands_fm(W, 3)
    with pytest.raises(ShapeError, match="expected n_in = 7"):
        backend.matmul_fm(W, T(XT)) if op == "matmul_fm" else backend.sddmm_fm(W, XT[:6], dYT)
    if op == "matmul_t_fm":
        with pytest.raises(ShapeError, match="expected n_out = 5"):
            backend.matmul_t_fm(W, XT)
    if op == "sddmm_fm":
        with pytest.raises(ShapeError, match="batch 3 but dYT has batch 2"):
            backend.sddmm_fm(W, XT, dYT[:, :2])
    with pytest.raises(DTypeError):
        call_fm(backend, op, W, XT.astype(np.float64), dYT.astype(np.float64))
    with pytest.raises(ShapeError):
        call_fm(backend, op, W, XT, dYT, out=np.zeros((1, 1), np.float32))
    with pytest.raises(OperandError, match="shares memory"):
        if op == "matmul_fm":
            backend.matmul_fm(Condensed.random((7, 7), 0.5, rng=0), XT, out=XT)
        elif op == "matmul_t_fm":
            backend.matmul_t_fm(Condensed.random((5, 5), 0.5, rng=0), dYT, out=dYT)
        else:
            backend.sddmm_fm(W, XT, dYT, out=W.values)


@pytest.mark.parametrize("W", FIXED, ids=FIXED_IDS)
def test_batch_zero(backend, W):
    XT, dYT = np.zeros((W.n_in, 0), np.float32), np.zeros((W.n_out, 0), np.float32)
    assert backend.matmul_fm(W, XT).shape == (W.n_out, 0)
    assert backend.matmul_t_fm(W, dYT).shape == (W.n_in, 0)
    out = np.full(W.values.shape, np.nan, np.float32)
    assert np.array_equal(backend.sddmm_fm(W, XT, dYT, out=out), np.zeros(W.values.shape, np.float32))


def test_transpose_array_op(backend):
    """backend.transpose: a C-contiguous A^T (the layout change of the feature-major products)."""
    A = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = backend.transpose(A)
    assert got.flags.c_contiguous and got.shape == (4, 3) and np.array_equal(got, A.T)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (1088, 64), (64, 1024), (1024, 48), (2048, 3), (3072, 20), (17, 4096)])
def test_cpu_transpose_every_block_choice(shape):
    """The cpu transpose picks its blocks from the destination's row stride (fewer live lines when the
    stride is a multiple of the cache's way size): every choice gives A^T exactly, into ``out`` too,
    through the public function (NumPy's copy for sources of few rows) and the blocked kernel itself."""
    from purerigl.kernels.cpu import _layout

    A = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    got = _layout.transpose(A)
    assert got.flags.c_contiguous and np.array_equal(got, A.T)
    out = np.full(shape[::-1], np.nan, np.float32)
    assert _layout.transpose(A, out) is out and np.array_equal(out, A.T)
    row_block, col_block = _layout._blocks(shape[0] * 4)
    assert 8 <= col_block <= _layout.COL_BLOCK and row_block in (_layout.ROW_BLOCK, 2 * _layout.ROW_BLOCK)
    if shape[0] % 1024 == 0:  # rows of AT 4 KiB apart: every line in one cache set
        assert col_block == 8
    kernel_out = np.full(shape[::-1], np.nan, np.float32)
    _layout._transpose_into(A, kernel_out, row_block, col_block)
    assert np.array_equal(kernel_out, A.T)


@pytest.mark.parametrize("n", [_NUMPY_MAX_ROWS - 1, _NUMPY_MAX_ROWS, _NUMPY_MAX_ROWS + 1, 3 * _NUMPY_MAX_ROWS])
def test_cpu_transpose_on_both_sides_of_the_numpy_switch(n):
    """Sources of at most NUMPY_MAX_ROWS rows are copied by NumPy, taller ones by the blocked kernel: the
    same A^T either way, also from a strided view and into ``out``; the backend op is this function."""
    from purerigl.kernels import get_backend
    from purerigl.kernels.cpu import _layout

    assert _layout.NUMPY_MAX_ROWS == _NUMPY_MAX_ROWS
    base = np.random.default_rng(n).standard_normal((n, 2 * 70)).astype(np.float32)
    for A in (np.ascontiguousarray(base[:, :70]), base[:, ::2]):  # contiguous and strided, (n, 70)
        got = _layout.transpose(A)
        assert got.flags.c_contiguous and got.shape == (70, n) and np.array_equal(got, A.T)
        out = np.full((70, n), np.nan, np.float32)
        assert _layout.transpose(A, out) is out and np.array_equal(out, A.T)
    assert get_backend("cpu").transpose is _layout.transpose
