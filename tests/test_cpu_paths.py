"""The cpu backend's internal paths, each against the oracles (tests/oracles.py).

- Condensed column indices read as a cached uint16 copy (n_in <= 65536) and as a uint32 view
  (n_in > 65536), in every op and batch regime;
- the serial small-work forward equals the parallel one bit for bit;
- matmul_t at batch >= 4 on the cached column-major structure (Condensed and CSR), with ablated rows,
  empty rows and columns no entry reads;
- the structure cache is rebuilt when a structure array of the object is replaced, and is not kept
  alive by the cache once the object is gone.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from oracles import assert_close, matmul_oracle, matmul_t_oracle, sddmm_oracle
from purerigl.formats import CSR, Condensed
from purerigl.kernels import cpu
from purerigl.kernels.cpu import _columns, condensed

pytest.importorskip("numba")


def _operands(W, B, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(B, W.n_in)).astype(np.float32)
    dY = rng.uniform(-2, 2, size=(B, W.n_out)).astype(np.float32)
    return X, dY


def _check_all_ops(W, B, seed=0):
    X, dY = _operands(W, B, seed)
    assert_close(cpu.matmul(W, X), *matmul_oracle(W, X), "cpu.matmul", n_terms=W.n_in)
    assert_close(cpu.matmul_t(W, dY), *matmul_t_oracle(W, dY), "cpu.matmul_t", n_terms=W.n_out)
    assert_close(cpu.sddmm(W, X, dY), *sddmm_oracle(W, X, dY), "cpu.sddmm", n_terms=B)


def _ablate_rows(W: Condensed, keep_every: int = 3) -> Condensed:
    keep = np.arange(W.n_active) % keep_every != 0
    return Condensed(W.rows[keep], W.indices[keep], W.values[keep], W.shape)


@pytest.mark.parametrize("B", [1, 2, 5, 40])
def test_condensed_uint16_indices(B):
    W = _ablate_rows(Condensed.random((60, 500), 0.3, rng=1))
    assert condensed._indices(W).dtype == np.uint16
    _check_all_ops(W, B)


@pytest.mark.parametrize("B", [1, 5])
def test_condensed_uint32_indices_past_65536_inputs(B):
    """n_in > 65536: the indices are read through a uint32 view (no copy), columns above 65535 included."""
    n_in = 70_003
    W = Condensed.random((4, n_in), None, rng=2, k=40)
    indices = W.indices.copy()  # structure is read-only: edit a copy, build a new matrix
    indices[:, -1] = n_in - 1 - np.arange(4)  # the last columns are read (rows stay increasing)
    W = Condensed(W.rows, np.sort(indices, axis=1), W.values, W.shape)
    ix = condensed._indices(W)
    assert ix.dtype == np.uint32 and np.shares_memory(ix, W.indices)
    _check_all_ops(W, B)


def test_uint16_boundary_at_65536_inputs():
    """n_in = 65536 still fits uint16: column 65535 is read correctly."""
    indices = np.array([[0, 5, 65535], [1, 2, 65534], [3, 65000, 65535]], np.int32)
    values = np.random.default_rng(3).uniform(-1, 1, size=(3, 3)).astype(np.float32)
    W = Condensed(np.arange(3, dtype=np.int32), indices, values, (3, 1 << 16))
    assert condensed._indices(W).dtype == np.uint16
    _check_all_ops(W, 1)
    _check_all_ops(W, 5)


def test_serial_small_work_forward_equals_parallel():
    """The small-work forward runs on one thread; it computes the same dot products, so the same bits."""
    W = Condensed.random((30, 40), 0.5, rng=4)
    X, _ = _operands(W, 2)
    assert W.nnz * 2 < condensed.SERIAL_WORK
    serial = cpu.matmul(W, X)
    parallel = np.zeros_like(serial)
    condensed._matmul_rowdot(W.rows, condensed._indices(W), W.values, X, parallel)
    assert np.array_equal(serial, parallel)
    assert_close(serial, *matmul_oracle(W, X), "serial matmul", n_terms=W.n_in)


def _csr_with_empty_rows_and_columns() -> CSR:
    W = CSR.random((50, 120), 0.3, rng=5)
    counts = np.diff(W.indptr)
    keep_row = np.arange(W.n_out) % 4 != 1
    keep = np.repeat(keep_row, counts) & (W.indices % 7 != 3)  # columns 3, 10, ... never read
    new_counts = np.add.reduceat(keep.astype(np.int64), W.indptr[:-1]) * (counts > 0)
    indptr = np.concatenate([[0], np.cumsum(new_counts)])
    return CSR(indptr, W.indices[keep], W.values[keep], W.shape)


@pytest.mark.parametrize("B", [4, 9, 130])
@pytest.mark.parametrize("kind", ["condensed", "csr"])
def test_matmul_t_column_major_path(kind, B):
    """matmul_t at batch >= 4: the column-major gather, against the oracle; unread columns are exactly 0."""
    W = _ablate_rows(Condensed.random((70, 90), 0.4, rng=6)) if kind == "condensed" else _csr_with_empty_rows_and_columns()
    _, dY = _operands(W, B, seed=B)
    dX = cpu.matmul_t(W, dY)
    assert_close(dX, *matmul_t_oracle(W, dY), f"cpu.matmul_t {kind}", n_terms=W.n_out)
    read = np.zeros(W.n_in, bool)
    read[W.indices.ravel()] = True
    assert np.all(dX[:, ~read] == 0.0)
    assert np.array_equal(dX, cpu.matmul_t(W, dY))


def test_column_major_structure_is_a_stable_counting_sort():
    W = Condensed.random((20, 30), 0.3, rng=7)
    col_ptr, entry, row = condensed.columns_of(W)
    cols = W.indices.ravel()
    order = np.argsort(cols, kind="stable")
    assert np.array_equal(entry, order)
    assert np.array_equal(row, np.repeat(W.rows, W.k)[order])
    assert np.array_equal(col_ptr, np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=W.n_in))]))


def test_cache_follows_replaced_structure_arrays():
    """Replacing W.indices (a new array) rebuilds the cached layouts; the cache does not keep W alive."""
    W = Condensed.random((10, 40), 0.5, rng=8)
    X, dY = _operands(W, 6)
    cpu.matmul(W, X[:1]), cpu.matmul_t(W, dY)
    other = Condensed.random((10, 40), 0.5, rng=9)
    W.indices = other.indices
    assert np.array_equal(condensed._indices(W), other.indices)
    assert_close(cpu.matmul(W, X[:1]), *matmul_oracle(W, X[:1]), "matmul after replace", n_terms=W.n_in)
    assert_close(cpu.matmul_t(W, dY), *matmul_t_oracle(W, dY), "matmul_t after replace", n_terms=W.n_out)
    ref = weakref.ref(W)
    del W
    gc.collect()
    assert ref() is None
    assert all(key() is not None for key in _columns._CACHE.keyrefs())


@pytest.mark.parametrize("kind", ["condensed", "csr", "diagonal"])
@pytest.mark.parametrize("B", [1, 2, 3])
def test_feature_major_products_below_four_use_the_row_kernels(kind, B, monkeypatch):
    """matmul_fm / matmul_t_fm at batch 1-3 run the row-layout kernels (the batched kernels' axpys over
    1-3 items were 3-4x slower), and still compute Y^T = W X^T and dX^T = W^T dY^T."""
    from purerigl.formats import Diagonal
    from purerigl.kernels.cpu import csr as csr_kernels, diagonal_fm

    rng = np.random.default_rng(3)
    W = {"condensed": Condensed.random((30, 50), 0.3, rng=rng), "csr": CSR.random((30, 50), 0.3, rng=rng),
         "diagonal": Diagonal.random((30, 50), 0.3, rng=rng)}[kind]
    X, dY = _operands(W, B)

    def refuse(*args, **kwargs):
        raise AssertionError("a batched feature-major kernel ran at batch < 4")

    for module in (condensed, csr_kernels, diagonal_fm):
        monkeypatch.setattr(module, "matmul_fm", refuse)
        monkeypatch.setattr(module, "matmul_t_fm", refuse)
    YT = cpu.matmul_fm(W, np.ascontiguousarray(X.T))
    dXT = cpu.matmul_t_fm(W, np.ascontiguousarray(dY.T))
    assert YT.shape == (W.n_out, B) and dXT.shape == (W.n_in, B)
    assert_close(YT.T, *matmul_oracle(W, X), f"cpu.matmul_fm {kind} B={B}", n_terms=W.n_in)
    assert_close(dXT.T, *matmul_t_oracle(W, dY), f"cpu.matmul_t_fm {kind} B={B}", n_terms=W.n_out)
