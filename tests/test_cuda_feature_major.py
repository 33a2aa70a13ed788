"""The cuda backend's feature-major products (matmul_fm, matmul_t_fm, sddmm_fm) and its ``transpose``.

Runs on Numba's CUDA simulator (tests/conftest.py turns it on before numba is imported), on tiny
shapes with ``THREADS_PER_BLOCK`` patched to 4 so that they span several blocks, as
tests/test_cuda_ops.py does. Pins down:

- every feature-major op x every format equals the masked-dense float64 oracle computed in the
  feature-major layout (and SciPy for the products), bit-exactly when every operand is a tie, on
  hypothesis-drawn tall, wide and square problems with batch 1 often; ``out=`` honoured;
- each is the transposed row-layout cuda result bit for bit (the device code is the row kernels
  between two device transposes);
- the device-level entry points chain on device arrays without host copies and refuse host arrays;
  the cuda ``transpose`` array op equals NumPy's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies as S
from oracles import assert_close, dense_of, positions_of, scipy_of
from purerigl.errors import BackendError, DTypeError, ShapeError
from purerigl.formats import Condensed

MAX_DIM = 12
MAX_BATCH = 5
SMALL_BLOCK = 4
EXAMPLES = 10
FM_OPS = ("matmul_fm", "matmul_t_fm", "sddmm_fm")


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


def T(A):
    return np.ascontiguousarray(A.T)


def call_fm(backend, op, W, XT, dYT, **kw):
    if op == "matmul_fm":
        return backend.matmul_fm(W, XT, **kw)
    if op == "matmul_t_fm":
        return backend.matmul_t_fm(W, dYT, **kw)
    return backend.sddmm_fm(W, XT, dYT, **kw)


@st.composite
def tiny_problems(draw, fmt: str):
    """(W, XT, dYT, exact): a tiny tall, wide or square matrix and feature-major operands, batch 1..5."""
    shape = draw(S.shapes(max_dim=MAX_DIM))
    exact = draw(st.booleans())
    W = draw(S.FORMAT_STRATEGIES[fmt](shape=shape, ties=True if exact else None))
    exact = exact and bool(np.isin(W.values, S.TIES).all())
    B = draw(st.one_of(st.just(1), st.integers(1, MAX_BATCH)))
    X = draw(S.float32_arrays((B, W.n_in), ties=exact))
    dY = draw(S.float32_arrays((B, W.n_out), ties=exact))
    return W, T(X), T(dY), exact


@pytest.mark.parametrize("op", FM_OPS)
@pytest.mark.parametrize("fmt", S.FORMAT_NAMES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_feature_major_op_against_oracles(cuda_backend, fmt, op, data):
    W, XT, dYT, exact = data.draw(tiny_problems(fmt), label="problem")
    use_out = data.draw(st.booleans(), label="use_out")
    shape = {"matmul_fm": (W.n_out, XT.shape[1]), "matmul_t_fm": (W.n_in, XT.shape[1]),
             "sddmm_fm": W.values.shape}[op]
    out = np.full(shape, np.nan, np.float32) if use_out else None
    got = call_fm(cuda_backend, op, W, XT, dYT, **({"out": out} if use_out else {}))
    if use_out:
        assert got is out
    D, X64, dY64 = dense_of(W), XT.astype(np.float64), dYT.astype(np.float64)
    if op == "matmul_fm":
        want, scale, n = D @ X64, np.abs(D) @ np.abs(X64), W.n_in
        assert_close(got, scipy_of(W) @ X64, scale, "cuda.matmul_fm vs scipy", n_terms=n)
        row = T(cuda_backend.matmul(W, T(XT)))
    elif op == "matmul_t_fm":
        want, scale, n = D.T @ dY64, np.abs(D).T @ np.abs(dY64), W.n_out
        assert_close(got, scipy_of(W).T @ dY64, scale, "cuda.matmul_t_fm vs scipy", n_terms=n)
        row = T(cuda_backend.matmul_t(W, T(dYT)))
    else:
        rows, cols = positions_of(W)
        want, scale, n = (dY64 @ X64.T)[rows, cols], (np.abs(dY64) @ np.abs(X64).T)[rows, cols], XT.shape[1]
        row = cuda_backend.sddmm(W, T(XT), T(dYT))
    assert_close(got, want, scale, f"cuda.{op}", exact=exact, n_terms=n)
    assert np.array_equal(got, row), f"cuda.{op} is not the transposed row-layout result"


def test_device_level_chain_and_refusals(cuda_backend):
    """matmul_fm -> matmul_t_fm -> sddmm_fm on device arrays, results equal to the host-level ops."""
    from purerigl.kernels import cuda as C

    W = Condensed.random((6, 9), 0.5, rng=3)
    rng = np.random.default_rng(0)
    XT = rng.uniform(-1, 1, (9, 7)).astype(np.float32)
    Wd = C.to_device(W)
    YTd = C.matmul_fm(Wd, C.to_device(XT))  # a device matrix: the device-level op
    assert C._launch.is_device_array(YTd) and tuple(YTd.shape) == (6, 7)
    dXTd = C.matmul_t_fm_device(Wd, YTd)
    dWd = C.sddmm_fm_device(Wd, C.to_device(XT), YTd)
    YT = cuda_backend.matmul_fm(W, XT)
    assert np.array_equal(YTd.copy_to_host(), YT)
    assert np.array_equal(dXTd.copy_to_host(), cuda_backend.matmul_t_fm(W, YT))
    assert np.array_equal(dWd.copy_to_host(), cuda_backend.sddmm_fm(W, XT, YT))
    with pytest.raises(DTypeError, match="device array"):
        C.matmul_fm_device(Wd, XT)  # a host array: no hidden copy
    with pytest.raises(ShapeError):
        C.matmul_t_fm_device(Wd, C.to_device(XT))  # (9, 7), expected (6, B)
    with pytest.raises(ShapeError, match="batch"):
        C.sddmm_fm_device(Wd, C.to_device(XT), C.to_device(np.zeros((6, 3), np.float32)))


def test_transpose_array_op(cuda_backend):
    A = np.arange(35, dtype=np.float32).reshape(5, 7)
    from purerigl.kernels import cuda as C

    got = C.transpose(C.to_device(A))
    assert tuple(got.shape) == (7, 5) and np.array_equal(got.copy_to_host(), A.T)
    out = C.to_device(np.zeros((7, 5), np.float32))
    assert C.transpose(C.to_device(A), out) is out and np.array_equal(out.copy_to_host(), A.T)


def test_batch_zero(cuda_backend):
    W = Condensed.random((4, 6), 0.5, rng=1)
    assert cuda_backend.matmul_fm(W, np.zeros((6, 0), np.float32)).shape == (4, 0)
    assert cuda_backend.matmul_t_fm(W, np.zeros((4, 0), np.float32)).shape == (6, 0)
    dW = cuda_backend.sddmm_fm(W, np.zeros((6, 0), np.float32), np.zeros((4, 0), np.float32))
    assert np.array_equal(dW, np.zeros_like(W.values))
