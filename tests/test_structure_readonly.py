"""Structure cannot change behind a kernel's cache: the structure arrays of every format are read-only.

The cpu backend caches layouts derived from a matrix's structure (uint16 indices, a column-major copy)
per format object (:mod:`purerigl.kernels.cpu._columns`). An in-place edit of ``rows``/``indices``
(Condensed), ``offsets`` (Diagonal) or ``indptr``/``indices`` (CSR) after a product would leave that
cache stale, so every format stores its structure read-only: the edit raises NumPy's ValueError and
the next product is still right, on every backend (cuda on Numba's simulator, tiny shapes, see
tests/conftest.py). ``values`` stays writeable (it is trained in place), and the constructor never
changes the caller's arrays: a writeable array is copied, a read-only one is shared.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from oracles import assert_close, matmul_scipy, matmul_t_oracle, matmul_t_scipy, sddmm_oracle
from purerigl.errors import BackendError
from purerigl.formats import CSR, Condensed, Diagonal

SMALL_BLOCK = 4
SHAPE = (6, 10)  # tiny: the cuda backend runs on the simulator


@pytest.fixture(scope="module", params=["reference", "cpu", "cuda"])
def any_backend(request):
    """Every backend; cuda with THREADS_PER_BLOCK patched to 4 so tiny inputs span several blocks."""
    from purerigl.kernels import get_backend

    try:
        backend = get_backend(request.param)
    except BackendError as err:  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"{request.param} backend unavailable: {err}")
    if request.param != "cuda":
        yield backend
        return
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = SMALL_BLOCK
    yield backend
    _launch.THREADS_PER_BLOCK = saved


def operands(W, B: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(B, W.n_in)).astype(np.float32)
    dY = rng.uniform(-1, 1, size=(B, W.n_out)).astype(np.float32)
    return X, dY


def check_products(backend, W, X, dY, what: str):
    """matmul, matmul_t and sddmm of W on the backend against SciPy / masked-dense oracles."""
    scale_Y = np.abs(X.astype(np.float64)) @ np.abs(W.to_scipy().toarray().astype(np.float64)).T
    assert_close(backend.matmul(W, X), matmul_scipy(W, X), scale_Y, f"matmul {what}", n_terms=W.n_in)
    dX_scale = matmul_t_oracle(W, dY)[1]
    assert_close(backend.matmul_t(W, dY), matmul_t_scipy(W, dY), dX_scale, f"matmul_t {what}", n_terms=W.n_out)
    assert_close(backend.sddmm(W, X, dY), *sddmm_oracle(W, X, dY), f"sddmm {what}", n_terms=X.shape[0])


def build(fmt: str):
    if fmt == "condensed":
        return Condensed.random(SHAPE, None, rng=1, k=4)
    if fmt == "diagonal":
        return Diagonal.random(SHAPE, None, rng=1, K=3)
    return CSR.random(SHAPE, 0.4, rng=1)


#: (format, structure array, an in-place edit of it).
EDITS = [
    ("condensed", "indices", lambda W: W.indices.__setitem__(0, [1, 3, 5, 7])),
    ("condensed", "rows", lambda W: W.rows.__setitem__(slice(None), W.rows)),
    ("diagonal", "offsets", lambda W: W.offsets.__setitem__(slice(None), [0, 4, 8])),
    ("csr", "indices", lambda W: W.indices.__setitem__(slice(0, 2), [0, 9])),
    ("csr", "indptr", lambda W: W.indptr.__setitem__(slice(None), W.indptr)),
]


@pytest.mark.parametrize("fmt, name, edit", EDITS, ids=[f"{f}-{n}" for f, n, _ in EDITS])
def test_structure_cannot_be_edited_after_a_product(any_backend, fmt, name, edit):
    """The reproducer: a product, then an in-place structure edit: it raises, and the next product
    is still right (the cpu backend's cached layouts cannot go stale)."""
    W = build(fmt)
    X, dY = operands(W)
    check_products(any_backend, W, X, dY, "before the edit")
    before = {k: v.copy() for k, v in vars(W).items() if isinstance(v, np.ndarray)}
    assert not getattr(W, name).flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        edit(W)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(W, k), v)
    check_products(any_backend, W, X, dY, "after the refused edit")


def test_condensed_reproducer_changed_structure_is_a_new_matrix(any_backend):
    """The issue's reproducer: W.indices[0] = [1, 3, 5, 7] raises; building a new matrix with that
    structure (the documented way) gives the right product on every backend."""
    W = Condensed.random(SHAPE, None, rng=3, k=4)
    X, dY = operands(W, seed=4)
    any_backend.matmul(W, X)
    with pytest.raises(ValueError, match="read-only"):
        W.indices[0] = [1, 3, 5, 7]
    indices = W.indices.copy()
    indices[0] = [1, 3, 5, 7]
    W2 = Condensed(W.rows, indices, W.values.copy(), W.shape).validate(full=True)
    assert W2.rows is W.rows  # read-only structure is shared, not copied
    check_products(any_backend, W2, X, dY, "of the new matrix")
    check_products(any_backend, W, X, dY, "of the old matrix")


@pytest.mark.parametrize("fmt", ["condensed", "diagonal", "csr"])
def test_values_stay_writeable(any_backend, fmt):
    """Values are trained in place: an in-place update is seen by the next product."""
    W = build(fmt)
    X, dY = operands(W, seed=5)
    any_backend.matmul(W, X), any_backend.matmul_t(W, dY)
    assert W.values.flags.writeable
    W.values *= np.float32(-2.0)
    W.values.ravel()[0] = 0.5
    check_products(any_backend, W, X, dY, "after a values update")


# --------------------------------------------------------------------------------------------------
# construction: copy or share, never freeze the caller's array


def test_constructor_copies_writeable_arrays_and_leaves_them_writeable():
    rows = np.arange(3, dtype=np.int32)
    indices = np.array([[0, 2], [1, 3], [2, 4]], dtype=np.int32)
    values = np.ones((3, 2), dtype=np.float32)
    W = Condensed(rows, indices, values, (3, 5))
    assert rows.flags.writeable and indices.flags.writeable  # the caller's arrays are untouched
    assert not W.rows.flags.writeable and not W.indices.flags.writeable
    assert not np.shares_memory(W.indices, indices) and not np.shares_memory(W.rows, rows)
    indices[0, 0] = 1  # the caller edits its own array: the matrix does not change
    assert W.indices[0, 0] == 0
    assert W.values is values  # values are not copied: the caller may keep training them


def test_read_only_arrays_are_shared_read_only_views_of_writeable_memory_are_copied():
    offsets = np.array([0, 3], dtype=np.int32)
    offsets.flags.writeable = False
    D = Diagonal(offsets, np.ones((2, 4), np.float32), (4, 6))
    assert D.offsets is offsets
    base = np.array([0, 3], dtype=np.int32)
    view = base[:]
    view.flags.writeable = False  # read-only, but `base` can still change it
    D2 = Diagonal(view, np.ones((2, 4), np.float32), (4, 6))
    assert not np.shares_memory(D2.offsets, base)
    base[1] = 5
    assert D2.offsets.tolist() == [0, 3]


def test_converted_arrays_and_copies_are_read_only():
    """int64 input (converted), from_scipy, copy(), to_condensed: the structure is read-only."""
    C = CSR(np.array([0, 1, 2], np.int64), np.array([1, 0], np.int64), np.ones(2, np.float32), (2, 3))
    mats = [C, CSR.from_scipy(C.to_scipy()), C.copy(), Diagonal.random((3, 5), None, rng=0, K=2).to_condensed()]
    for M in mats:
        for name in type(M).STRUCTURE:
            assert not getattr(M, name).flags.writeable, (type(M).__name__, name)


def test_replacing_a_structure_array_stores_it_read_only():
    """Assigning a new array to a structure attribute freezes it too (a copy if it was writeable)."""
    W = Condensed.random((4, 8), None, rng=0, k=3)
    fresh = np.sort(np.random.default_rng(1).permuted(np.tile(np.arange(8), (4, 1)), axis=1)[:, :3], axis=1)
    W.indices = fresh.astype(np.int32)
    assert not W.indices.flags.writeable
    W.validate(full=True)


def test_pickle_and_deepcopy_keep_structure_read_only():
    W = Condensed.random((4, 8), None, rng=0, k=3)
    for other in (pickle.loads(pickle.dumps(W)), copy.deepcopy(W)):
        assert not other.rows.flags.writeable and not other.indices.flags.writeable
        assert other.values.flags.writeable
        np.testing.assert_array_equal(other.indices, W.indices)


@pytest.mark.parametrize("any_backend", ["cuda"], indirect=True)
def test_device_matrix_round_trip_is_read_only(any_backend):
    """On cuda, a device matrix copied back to the host has read-only structure too (device arrays
    themselves cannot be made read-only: see DeviceCondensed / DeviceDiagonal / DeviceCSR)."""
    W = build("csr")
    back = any_backend.to_host(any_backend.to_device(W))
    assert not back.indices.flags.writeable and not back.indptr.flags.writeable
    np.testing.assert_array_equal(back.indices, W.indices)
