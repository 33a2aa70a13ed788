"""The cuda backend's products (matmul, matmul_t, sddmm, grad_at) against oracles built another way.

Runs on Numba's CUDA simulator (tests/conftest.py turns it on before numba is imported; with
``PURERIGL_TEST_REAL_GPU=1`` on a real GPU instead). The simulator runs every GPU thread as a Python
thread, so shapes are tiny (dimensions up to 12, batch 1 to 5) and ``THREADS_PER_BLOCK`` is patched
to 4 so that even these inputs span several blocks. Pins down (DESIGN.md sections 3 and 6):

- every product op x every format equals the masked-dense float64 oracle (and SciPy for the
  products) on hypothesis-drawn tall, wide and square problems, bit-exactly when all operands are
  ties; ``out=`` (pre-filled with NaN) is filled and returned; inputs are left untouched;
- hand-picked edge cases: batch 1, k = 1, k = n_in, ablated rows (all of them included), K = 0, 1, P,
  empty and full CSR rows, nnz = 0, batch 0; results are bit-identical from call to call;
- the cuda backend refuses exactly the operands the cpu backend refuses, with the same exception
  types and messages;
- the device-level entry points chain ops on device arrays without host copies, and refuse host
  arrays and wrong shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies as S
from oracles import (
    assert_close,
    grad_at_oracle,
    matmul_oracle,
    matmul_scipy,
    matmul_t_oracle,
    matmul_t_scipy,
    positions_of,
    sddmm_oracle,
)
from purerigl.errors import BackendError, DTypeError, FormatTypeError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal

MAX_DIM = 12
MAX_BATCH = 5
SMALL_BLOCK = 4
EXAMPLES = 12
OPS = ("matmul", "matmul_t", "sddmm", "grad_at")


@pytest.fixture(scope="module")
def cuda_backend():
    """The cuda backend, with THREADS_PER_BLOCK patched to 4 for the whole module."""
    from purerigl.kernels import get_backend

    try:
        backend = get_backend("cuda")
    except BackendError as err:  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"cuda backend unavailable: {err}")
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = SMALL_BLOCK
    yield backend
    _launch.THREADS_PER_BLOCK = saved


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def raw_arrays(W) -> list[np.ndarray]:
    return [v for v in vars(W).values() if isinstance(v, np.ndarray)]


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


def out_shape(op, W, X):
    return {"matmul": (X.shape[0], W.n_out), "matmul_t": (X.shape[0], W.n_in), "sddmm": W.values.shape,
            "grad_at": (W.nnz,)}[op]


def check_against_oracles(backend, op, W, X, dY, exact: bool, use_out: bool):
    """The op's result equals the oracle (and SciPy for the products); inputs untouched; out= honoured."""
    before = [a.copy() for a in (X, dY, *raw_arrays(W))]
    out = np.full(out_shape(op, W, X), np.nan, np.float32) if use_out else None
    got = call(backend, op, W, X, dY, **({"out": out} if use_out else {}))
    if use_out:
        assert got is out
    for b, a in zip(before, (X, dY, *raw_arrays(W))):
        assert np.array_equal(b, a), f"cuda.{op} modified an input"
    if op == "matmul":
        want, scale, n = (*matmul_oracle(W, X), W.n_in)
        assert_close(got, matmul_scipy(W, X), scale, "cuda.matmul vs scipy", n_terms=n)
    elif op == "matmul_t":
        want, scale, n = (*matmul_t_oracle(W, dY), W.n_out)
        assert_close(got, matmul_t_scipy(W, dY), scale, "cuda.matmul_t vs scipy", n_terms=n)
    else:
        want, scale = sddmm_oracle(W, X, dY)
        if op == "grad_at":
            want, scale = want.ravel(), scale.ravel()
        n = X.shape[0]
    assert_close(got, want, scale, f"cuda.{op}", exact=exact, n_terms=n)
    return got


@st.composite
def tiny_problems(draw, fmt: str):
    """(W, X, dY, exact): a tiny tall, wide or square matrix of format ``fmt`` and batch 1..5."""
    shape = draw(S.shapes(max_dim=MAX_DIM))
    exact = draw(st.booleans())
    W = draw(S.FORMAT_STRATEGIES[fmt](shape=shape, ties=True if exact else None))
    exact = exact and bool(np.isin(W.values, S.TIES).all())
    B = draw(st.one_of(st.just(1), st.integers(1, MAX_BATCH)))
    X = draw(S.float32_arrays((B, W.n_in), ties=exact))
    dY = draw(S.float32_arrays((B, W.n_out), ties=exact))
    return W, X, dY, exact


# --------------------------------------------------------------------------------------------------
# Every op x every format, drawn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("fmt", S.FORMAT_NAMES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_op_against_oracles(cuda_backend, fmt, op, data):
    """Each op on tiny drawn problems (k = 1 / n_in, K = 0 / 1 / P, ablated and empty rows, ties)."""
    W, X, dY, exact = data.draw(tiny_problems(fmt), label="problem")
    use_out = data.draw(st.booleans(), label="use_out")
    check_against_oracles(cuda_backend, op, W, X, dY, exact, use_out)


@st.composite
def pair_problems(draw):
    """X, dY and 0..20 arbitrary (row, col) pairs (duplicates allowed), int32 or int64."""
    n_out, n_in = draw(S.shapes(max_dim=MAX_DIM))
    ties = draw(st.booleans())
    B = draw(st.one_of(st.just(1), st.integers(1, MAX_BATCH)))
    X = draw(S.float32_arrays((B, n_in), ties))
    dY = draw(S.float32_arrays((B, n_out), ties))
    m = draw(st.integers(0, 20))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    rows = np.array(draw(st.lists(st.integers(0, n_out - 1), min_size=m, max_size=m)), dtype=dtype)
    cols = np.array(draw(st.lists(st.integers(0, n_in - 1), min_size=m, max_size=m)), dtype=dtype)
    return X, dY, rows, cols, ties


@settings(max_examples=EXAMPLES)
@given(problem=pair_problems())
def test_grad_at_arbitrary_pairs(cuda_backend, problem):
    """g[m] = sum_b dY[b, rows[m]] X[b, cols[m]] at arbitrary pairs (m = 0 included)."""
    X, dY, rows, cols, ties = problem
    g = cuda_backend.grad_at(X, dY, rows, cols)
    assert_close(g, *grad_at_oracle(X, dY, rows, cols), "cuda.grad_at", exact=ties, n_terms=X.shape[0])


# --------------------------------------------------------------------------------------------------
# Edge cases by hand
# --------------------------------------------------------------------------------------------------


def _condensed(rows, indices, shape, seed=0):
    rows = np.asarray(rows, np.int32)
    indices = np.asarray(indices, np.int32)
    values = np.random.default_rng(seed).uniform(-2, 2, indices.shape).astype(np.float32)
    return Condensed(rows, indices, values, shape)


def _csr(row_cols, n_in, seed=0):
    counts = [len(c) for c in row_cols]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cols = np.array([c for r in row_cols for c in r], np.int32)
    values = np.random.default_rng(seed).uniform(-2, 2, len(cols)).astype(np.float32)
    return CSR(indptr, cols, values, (len(row_cols), n_in))


def _diagonal(offsets, shape, seed=0):
    L = min(shape)
    values = np.random.default_rng(seed).uniform(-2, 2, (len(offsets), L)).astype(np.float32)
    return Diagonal(np.asarray(offsets, np.int32), values, shape)


EDGE = {
    "condensed k=1": _condensed(range(7), [[j % 3] for j in range(7)], (7, 3)),
    "condensed k=n_in": _condensed(range(3), [list(range(9))] * 3, (3, 9)),
    "condensed ablated": _condensed([1, 4, 5], [[0, 2], [1, 3], [2, 3]], (6, 4)),
    "condensed all ablated": _condensed([], np.zeros((0, 2)), (5, 4)),
    "diagonal K=1 tall": _diagonal([3], (11, 5)),
    "diagonal K=P wide": _diagonal(range(10), (4, 10)),
    "diagonal K=P square": _diagonal(range(6), (6, 6)),
    "diagonal K=0": _diagonal([], (5, 8)),
    "diagonal wrap tall": _diagonal([0, 6, 8], (9, 4)),
    "csr empty rows": _csr([[], [0, 2, 5], [], [1], [], [0, 1, 2, 3, 4, 5]], 6),
    "csr full rows": _csr([list(range(5))] * 4, 5),
    "csr nnz=0": _csr([[], [], []], 7),
    "csr 1x1": _csr([[0]], 1),
}


@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("name", list(EDGE))
def test_edge_cases(cuda_backend, name, B):
    """Every op on each edge case equals the oracle; a second call gives the same bits."""
    W = EDGE[name]
    rng = np.random.default_rng(B)
    X = rng.uniform(-2, 2, (B, W.n_in)).astype(np.float32)
    dY = rng.uniform(-2, 2, (B, W.n_out)).astype(np.float32)
    for op in OPS:
        got = check_against_oracles(cuda_backend, op, W, X, dY, exact=False, use_out=(B == 4))
        assert np.array_equal(got, call(cuda_backend, op, W, X, dY)), f"{op} is not reproducible"


def test_ablated_rows_are_exactly_zero(cuda_backend):
    """Ablated condensed rows output exactly 0, even into an out buffer full of NaN."""
    W = Condensed(np.array([1, 3], np.int32), np.array([[0, 2], [1, 2]], np.int32),
                  np.array([[1.5, -2.0], [0.25, 3.0]], np.float32), (5, 3))
    X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], np.float32)
    Y = cuda_backend.matmul(W, X, out=np.full((2, 5), np.nan, np.float32))
    expected = np.array([[0, 1.5 - 6.0, 0, 0.5 + 9.0, 0], [0, -1.5 - 8.0, 0, 0.125 + 12.0, 0]], np.float32)
    assert np.array_equal(Y, expected)


def test_batch_zero(cuda_backend):
    """B = 0: empty products, zero value gradients (into a NaN-filled out), zero grad_at."""
    W = EDGE["csr empty rows"]
    X, dY = np.zeros((0, W.n_in), np.float32), np.zeros((0, W.n_out), np.float32)
    assert cuda_backend.matmul(W, X).shape == (0, W.n_out)
    assert cuda_backend.matmul_t(W, dY).shape == (0, W.n_in)
    out = np.full(W.values.shape, np.nan, np.float32)
    assert np.array_equal(cuda_backend.sddmm(W, X, dY, out=out), np.zeros(W.nnz, np.float32))
    assert np.array_equal(cuda_backend.grad_at(X, dY, np.array([0, 1]), np.array([1, 0])), np.zeros(2, np.float32))


def test_inputs_span_several_blocks(cuda_backend, monkeypatch):
    """With THREADS_PER_BLOCK = 4, the launches of a 6 x 6 problem use several blocks, and on the
    simulator's capped grid the threads walk more than one item each (the grid-stride loops run); on a
    GPU the grid covers the items."""
    from purerigl.kernels.cuda import _launch

    seen = []
    real = _launch.launch
    monkeypatch.setattr(_launch, "launch", lambda kernel, n, *a: (seen.append(n), real(kernel, n, *a)))
    for module in ("condensed", "csr", "diagonal", "pairs", "_columns"):
        monkeypatch.setattr(f"purerigl.kernels.cuda.{module}.launch", _launch.launch)
    W = EDGE["csr empty rows"]
    X = np.ones((2, W.n_in), np.float32)
    cuda_backend.matmul(W, X)
    cuda_backend.matmul_t(W, np.ones((2, W.n_out), np.float32))
    assert _launch.THREADS_PER_BLOCK == SMALL_BLOCK
    assert seen and max(_launch.blocks(n) for n in seen) >= 3
    if _launch.SIMULATOR:  # the grid is capped: two blocks, whose threads walk several items each
        assert max(_launch.grid_blocks(n) for n in seen) == _launch.SIMULATOR_BLOCKS >= 2
        assert max(n for n in seen) > _launch.SIMULATOR_BLOCKS * SMALL_BLOCK
    else:  # PURERIGL_TEST_REAL_GPU=1: the grid covers the items, one per thread
        assert all(_launch.grid_blocks(n) == _launch.blocks(n) for n in seen)



def test_numba_low_occupancy_warning_is_off(cuda_backend):
    """Numba warns at every launch of fewer than 128 blocks; small layers are normal here, and on an
    H200 a short CLI run printed hundreds of those warnings. The cuda backend turns the warning off in
    the configuration the dispatcher reads (a real GPU is needed to see the warning itself)."""
    import importlib

    configs = []
    for name in ("numba.cuda.core.config", "numba.core.config"):
        try:
            configs.append(importlib.import_module(name))
        except ImportError:
            continue
    flags = [c.CUDA_LOW_OCCUPANCY_WARNINGS for c in configs if hasattr(c, "CUDA_LOW_OCCUPANCY_WARNINGS")]
    assert flags and not any(flags)

# --------------------------------------------------------------------------------------------------
# Refusals: the same as the cpu backend
# --------------------------------------------------------------------------------------------------

_W = Condensed.random((5, 7), 0.5, rng=1)
_X = np.ones((3, 7), np.float32)
_dY = np.ones((3, 5), np.float32)
_PAIR = np.array([0, 1])
_EMPTY = (np.zeros(6, np.int64), np.zeros(0, np.int32))

BAD_CALLS = {
    "X float64": lambda be: be.matmul(_W, _X.astype(np.float64)),
    "X list": lambda be: be.matmul(_W, _X.tolist()),
    "X too wide": lambda be: be.matmul(_W, np.ones((3, 8), np.float32)),
    "X 1-D": lambda be: be.matmul(_W, _X[0]),
    "W dense": lambda be: be.matmul(np.ones((5, 7), np.float32), _X),
    "dY float16": lambda be: be.matmul_t(_W, _dY.astype(np.float16)),
    "dY 3-D": lambda be: be.matmul_t(_W, _dY[None]),
    "batch mismatch": lambda be: be.sddmm(_W, _X, _dY[:2]),
    "out wrong shape": lambda be: be.matmul(_W, _X, out=np.zeros((3, 6), np.float32)),
    "out float64": lambda be: be.matmul_t(_W, _dY, out=np.zeros((3, 7), np.float64)),
    "out not contiguous": lambda be: be.matmul(_W, _X, out=np.zeros((5, 3), np.float32).T),
    "out shares memory": lambda be: be.sddmm(_W, _X, _dY, out=_W.values),
    "pairs out of range": lambda be: be.grad_at(_X, _dY, np.array([0, 5]), _PAIR),
    "pairs float": lambda be: be.grad_at(_X, _dY, _PAIR.astype(np.float64), _PAIR),
    "pairs unequal": lambda be: be.grad_at(_X, _dY, _PAIR, np.array([0, 1, 2])),
    "topk m negative": lambda be: be.topk_grad(_X, _dY, -1, *_EMPTY),
    "topk m bool": lambda be: be.topk_grad(_X, _dY, True, *_EMPTY),
    "topk NaN": lambda be: be.topk_grad(np.full((3, 7), np.nan, np.float32), _dY, 1, *_EMPTY),
    "topk_rows counts shape": lambda be: be.topk_grad_rows(_X, _dY, np.ones(4, np.int64), *_EMPTY),
    "topk exclusion unsorted": lambda be: be.topk_grad(_X, _dY, 1, np.array([0, 2, 2, 2, 2, 2]), np.array([3, 1])),
    "diag norms batch mismatch": lambda be: be.diag_grad_norms(_X, _dY[:1]),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_refuses_what_cpu_refuses(cuda_backend, name):
    """Bad operands raise the same exception type, with the same message, on cuda as on cpu."""
    from purerigl.kernels import get_backend

    with pytest.raises(Exception) as on_cpu:
        BAD_CALLS[name](get_backend("cpu"))
    with pytest.raises(type(on_cpu.value)) as on_cuda:
        BAD_CALLS[name](cuda_backend)
    assert type(on_cuda.value) is type(on_cpu.value)
    assert str(on_cuda.value) == str(on_cpu.value)


# --------------------------------------------------------------------------------------------------
# Device-level entry points
# --------------------------------------------------------------------------------------------------


def test_device_ops_chain_without_host_copies(cuda_backend):
    """Two layers forward and backward on device arrays equal the host functions, result by result."""
    from purerigl.kernels import cuda as K

    W1, W2 = Condensed.random((6, 9), 0.5, rng=3), Diagonal.random((4, 6), 0.5, rng=4)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (3, 9)).astype(np.float32)
    dY = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    d1, d2 = K.to_device(W1), K.to_device(W2)
    X_d, dY_d = K._launch.to_device(X), K._launch.to_device(dY)

    H_d = K.matmul_device(d1, X_d)  # (3, 6)
    Y_d = K.matmul_device(d2, H_d)  # (3, 4)
    dH_d = K.matmul_t_device(d2, dY_d)  # (3, 6)
    dW1_d = K.sddmm_device(d1, X_d, dH_d)  # like W1.values
    rows = K._launch.to_device(np.array([0, 5, 2], np.int64))
    cols = K._launch.to_device(np.array([8, 0, 4], np.int64))
    g_d = K.grad_at_device(X_d, dH_d, rows, cols)
    for A in (H_d, Y_d, dH_d, dW1_d, g_d):
        assert not isinstance(A, np.ndarray) and K._launch.is_device_array(A)
    K.synchronize()

    H = cuda_backend.matmul(W1, X)
    dH = cuda_backend.matmul_t(W2, dY)
    assert np.array_equal(H_d.copy_to_host(), H)
    assert np.array_equal(Y_d.copy_to_host(), cuda_backend.matmul(W2, H))
    assert np.array_equal(dH_d.copy_to_host(), dH)
    assert np.array_equal(dW1_d.copy_to_host(), cuda_backend.sddmm(W1, X, dH))
    assert np.array_equal(g_d.copy_to_host(), cuda_backend.grad_at(X, dH, np.array([0, 5, 2]), np.array([8, 0, 4])))

    out = K._launch.empty((3, 6))
    assert K.matmul_device(d1, X_d, out=out) is out


@pytest.mark.parametrize("fmt", ["condensed", "csr"])
def test_matmul_t_builds_its_column_index_once_per_device_matrix(cuda_backend, fmt, monkeypatch):
    """The row-stored formats' input gradient reads a column index of the structure: built by the
    first matmul_t of a device matrix and kept (the structure never changes in place), while values
    changed in place are read afresh; a new device matrix (a topology update) builds its own."""
    from purerigl.kernels import cuda as K
    from purerigl.kernels.cuda import _columns

    built = []
    real = _columns.column_index
    monkeypatch.setattr(_columns, "column_index", lambda *a: (built.append(1), real(*a))[1])
    W = (Condensed.random((5, 7), 0.5, rng=1) if fmt == "condensed" else CSR.random((5, 7), 0.6, rng=1))
    dY = np.random.default_rng(2).uniform(-1, 1, (3, 5)).astype(np.float32)
    d, dY_d = K.to_device(W), K._launch.to_device(dY)
    first = K.matmul_t_device(d, dY_d).copy_to_host()
    np.testing.assert_allclose(first, dY @ W.to_dense(), rtol=1e-5, atol=1e-6)
    d.values.copy_to_device(np.ascontiguousarray(2 * W.values))  # values in place: the index stays valid
    second = K.matmul_t_device(d, dY_d).copy_to_host()
    np.testing.assert_allclose(second, 2 * (dY @ W.to_dense()), rtol=1e-5, atol=1e-6)
    assert len(built) == 1
    K.matmul_t_device(K.to_device(W), dY_d)
    assert len(built) == 2


def test_device_ops_refuse_host_arrays_and_wrong_shapes(cuda_backend):
    """The device entry points take device arrays only (no hidden copies) and check shapes and types."""
    from purerigl.kernels import cuda as K

    W = Condensed.random((6, 9), 0.5, rng=3)
    d = K.to_device(W)
    X = np.ones((2, 9), np.float32)
    with pytest.raises(DTypeError, match="device array"):
        K.matmul_device(d, X)
    with pytest.raises(FormatTypeError, match="to_device"):
        K.matmul_device(W, K._launch.to_device(X))
    with pytest.raises(ShapeError, match=r"\(2, 8\).*\(2, 9\)"):
        K.matmul_device(d, K._launch.to_device(np.ones((2, 8), np.float32)))
    with pytest.raises(DTypeError, match="float32"):
        K.matmul_device(d, K._launch.to_device(X.astype(np.float64)))
    with pytest.raises(ShapeError, match="out"):
        K.matmul_t_device(d, K._launch.to_device(np.ones((2, 6), np.float32)), out=K._launch.empty((2, 6)))
    with pytest.raises(FormatTypeError):
        K.to_device([[1.0, 2.0]])  # neither a sparse matrix nor an ndarray
    ones = K.to_device(np.ones((3, 3), np.float32))  # an ndarray: its device copy (the array op)
    assert K._launch.is_device_array(ones) and np.array_equal(K.to_host(ones), np.ones((3, 3)))
    assert K.to_device(ones) is ones and K.to_device(d) is d  # already on the device: no copy
