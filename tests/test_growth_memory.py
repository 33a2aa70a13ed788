"""The growth selections never hold the dense gradient: a memory test on a wide layer.

Pins down DESIGN.md section 6 and PAPERS.md invariant 12: on a 4096 x 4096 layer at 99% sparsity
(the exclusion set is the layer's ~167,772 active positions, batch 32), ``topk_grad`` (m = 0.3 nnz),
``topk_grad_rows`` and ``diag_grad_norms`` allocate far less than the n_out * n_in * 4 bytes
(64 MiB) a dense float32 G would take: their peak extra memory stays below 1/8 of it.

Measured with tracemalloc, which sees NumPy's allocations and Numba's (its runtime allocates through
the Python raw allocator, which tracemalloc hooks). Each cpu op runs once before tracing, so Numba's
compilation and caches are not counted (the reference compiles nothing and runs once); the inputs
are allocated before tracing starts too.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from purerigl.kernels import get_backend
from purerigl.kernels.cpu import _serial

N_OUT = N_IN = 4096
BATCH = 32
NNZ = round(0.01 * N_OUT * N_IN)  # 167,772 active positions: the exclusion set
DENSE_BYTES = N_OUT * N_IN * 4
BOUND = DENSE_BYTES // 8


@pytest.fixture(scope="module")
def layer():
    """X (32, 4096), dY (32, 4096), the exclusion CSR of 167,772 random positions, per-row counts."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((BATCH, N_IN), dtype=np.float32)
    dY = rng.standard_normal((BATCH, N_OUT), dtype=np.float32)
    flat = np.sort(rng.choice(N_OUT * N_IN, size=NNZ, replace=False))  # (nnz,) distinct flat positions
    rows, cols = np.divmod(flat, N_IN)
    indptr = np.zeros(N_OUT + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=N_OUT), out=indptr[1:])
    indices = cols.astype(np.int32)
    counts = np.full(N_OUT, int(0.3 * NNZ) // N_OUT, dtype=np.int64)  # SRigL-like regrowth per row
    return X, dY, indptr, indices, counts


@pytest.fixture(autouse=True)
def _kernels_chosen_by_work_only(monkeypatch):
    """The cpu kernels choose between parallel and serial twin by work size only here, not by the
    machine's load (kernels/cpu/_serial.py): the traced call runs what the warm-up call compiled."""
    monkeypatch.setattr(_serial, "LOAD_CHECK", False)
    monkeypatch.setattr(_serial, "_LOAD", [0.0, False])


def peak_extra_bytes(fn, warm_up: bool = True) -> int:
    """Peak bytes allocated while ``fn()`` runs (after one untraced warm-up call, which compiles)."""
    if warm_up:
        fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - before


def test_tracemalloc_sees_numba_allocations():
    """The measurement itself: an array allocated inside a Numba kernel is traced."""
    from numba import njit

    @njit
    def alloc(n):
        return np.zeros(n).sum()

    assert peak_extra_bytes(lambda: alloc(1_000_000)) >= 8_000_000


CASES = {
    "topk_grad": lambda B, X, dY, indptr, indices, counts: B.topk_grad(X, dY, int(0.3 * NNZ), indptr, indices),
    "topk_grad_rows": lambda B, X, dY, indptr, indices, counts: B.topk_grad_rows(X, dY, counts, indptr, indices),
    "diag_grad_norms": lambda B, X, dY, indptr, indices, counts: B.diag_grad_norms(X, dY),
}


@pytest.mark.parametrize(
    "backend_name, op",
    [("cpu", op) for op in CASES] + [("reference", "topk_grad")],
)
def test_growth_peak_memory_far_below_dense(layer, backend_name, op):
    """Peak extra memory < n_out * n_in * 4 / 8 bytes (8 MiB) for a 4096 x 4096 layer at 99%."""
    backend = get_backend(backend_name)
    peak = peak_extra_bytes(lambda: CASES[op](backend, *layer), warm_up=backend_name != "reference")
    assert peak < BOUND, f"{backend_name}.{op} peaked at {peak / 2**20:.1f} MiB (bound {BOUND / 2**20:.0f} MiB)"
