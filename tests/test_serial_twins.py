"""Serial twins of the cpu kernels (issue 19: a busy machine): small work runs on the calling thread.

Pins down that :func:`purerigl.kernels.cpu._serial.by_work` picks the serial twin below the work
thresholds and the parallel kernel from them on, and that both give the same bits in every op,
format and batch regime and in the growth selections, so the choice (which depends on the shapes
only) never changes a result. Timing is never asserted here.
"""

from __future__ import annotations

import numpy as np
import pytest

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.kernels import cpu
from purerigl.kernels.cpu import _serial, condensed

pytest.importorskip("numba")


def test_by_work_picks_the_twin_below_the_threshold(monkeypatch):
    monkeypatch.setattr(_serial, "LOAD_CHECK", False)
    monkeypatch.setattr(_serial, "_LOAD", [0.0, False])  # forget a busy look cached by an earlier test
    k = condensed._matmul_transposed
    twin = _serial.by_work(k, _serial.SERIAL_WORK - 1)
    assert twin is not k and twin.py_func.__qualname__ == k.py_func.__qualname__ + "_serial"
    assert twin is _serial.serial_twin(k)  # built once
    assert not twin.targetoptions.get("parallel")
    assert _serial.by_work(k, _serial.SERIAL_WORK) is k
    assert _serial.by_work(k, _serial.SERIAL_WORK - 1, batch=4) is twin
    assert _serial.by_work(k, _serial.VECTOR_SERIAL_WORK, batch=3) is k  # a matrix-vector product
    assert _serial.by_work(k, _serial.VECTOR_SERIAL_WORK - 1, batch=1) is twin
    assert _serial.by_work(k, _serial.GROWTH_SERIAL_WORK - 1, growth=True) is twin
    assert _serial.by_work(k, _serial.GROWTH_SERIAL_WORK, growth=True) is k


def test_a_written_twin_is_the_one_serial_twin_returns():
    """Max pooling's 2 x 2 kernel has its serial twin written out (its loop vectorises only that way):
    serial_twin returns it, compiled serially, and it gives the parallel kernel's bits (NaN and ties
    included; tests/test_conv_speedpaths.py holds both to the reference on drawn shapes)."""
    from purerigl.kernels.cpu import pooling

    twin = _serial.serial_twin(pooling._maxpool_2x2)
    assert twin is pooling._maxpool_2x2_serial and not twin.targetoptions.get("parallel")
    rng = np.random.default_rng(0)
    X = rng.integers(-2, 3, (3, 2, 7, 9)).astype(np.float32)  # small integers: many tied windows
    X[0, 0, :2, :2] = np.nan
    out = []
    for kernel in (pooling._maxpool_2x2, twin):
        Y, arg = np.empty((3, 2, 3, 4), np.float32), np.empty((3, 2, 3, 4), np.intp)
        kernel(X, Y, arg)
        out.append((Y, arg))
    assert np.array_equal(out[0][0].view(np.uint32), out[1][0].view(np.uint32))
    assert np.array_equal(out[0][1], out[1][1])


def test_a_parallel_kernel_cannot_be_registered_as_a_twin():
    from purerigl.kernels.cpu import pooling

    with pytest.raises(ValueError, match="without parallel=True"):
        _serial.written_twin(pooling._maxpool)(pooling._maxpool_backward)
    assert pooling._maxpool not in _serial._WRITTEN


def test_busy_cores_pick_the_twin_whatever_the_work(monkeypatch):
    """Other runnable processes that leave fewer free cores than Numba threads: serial twins."""
    import numba
    import os

    k = condensed._matmul_transposed
    monkeypatch.setattr(_serial, "LOAD_CHECK", True)
    for others, busy in ((0, os.cpu_count() < numba.get_num_threads()), (os.cpu_count(), True)):
        monkeypatch.setattr(_serial, "_others_running", lambda: others)
        monkeypatch.setattr(_serial, "_LOAD", [0.0, False])  # look now
        assert _serial.cores_taken() is busy
        assert (_serial.by_work(k, 1 << 40) is k) is not busy
    monkeypatch.setattr(_serial, "_others_running", lambda: None)  # /proc says nothing: not busy
    monkeypatch.setattr(_serial, "_LOAD", [0.0, True])
    assert _serial.cores_taken() is False


def _all_serial(monkeypatch):
    monkeypatch.setattr(_serial, "SERIAL_WORK", 1 << 62)
    monkeypatch.setattr(_serial, "VECTOR_SERIAL_WORK", 1 << 62)
    monkeypatch.setattr(_serial, "GROWTH_SERIAL_WORK", 1 << 62)


def _all_parallel(monkeypatch):
    monkeypatch.setattr(_serial, "SERIAL_WORK", 0)
    monkeypatch.setattr(_serial, "LOAD_CHECK", False)
    monkeypatch.setattr(_serial, "VECTOR_SERIAL_WORK", 0)
    monkeypatch.setattr(_serial, "GROWTH_SERIAL_WORK", 0)


def _both(monkeypatch, fn):
    """fn() with every kernel serial, then with every kernel parallel."""
    with monkeypatch.context() as m:
        _all_serial(m)
        serial = fn()
    with monkeypatch.context() as m:
        _all_parallel(m)
        parallel = fn()
    return serial, parallel


def _assert_same_bits(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


MATRICES = {
    "condensed": lambda: Condensed.random((90, 130), 0.7, rng=1),
    "csr": lambda: CSR.random((90, 130), 0.7, rng=2),
    "diagonal-tall": lambda: Diagonal.random((130, 90), 0.7, rng=3),
    "diagonal-wide": lambda: Diagonal.random((90, 130), 0.7, rng=4),
}


@pytest.mark.parametrize("B", [1, 3, 8, 70])
@pytest.mark.parametrize("kind", list(MATRICES))
def test_products_serial_and_parallel_give_the_same_bits(monkeypatch, kind, B):
    W = MATRICES[kind]()
    rng = np.random.default_rng(B)
    X = rng.uniform(-2, 2, size=(B, W.n_in)).astype(np.float32)
    dY = rng.uniform(-2, 2, size=(B, W.n_out)).astype(np.float32)
    serial, parallel = _both(monkeypatch, lambda: (cpu.matmul(W, X), cpu.matmul_t(W, dY), cpu.sddmm(W, X, dY)))
    _assert_same_bits(serial, parallel)


@pytest.mark.parametrize("B", [1, 40])
def test_grad_at_and_growth_serial_and_parallel_give_the_same_bits(monkeypatch, B):
    rng = np.random.default_rng(7)
    n_out, n_in = 120, 700
    X = rng.standard_normal((B, n_in)).astype(np.float32)
    dY = rng.standard_normal((B, n_out)).astype(np.float32)
    W = CSR.random((n_out, n_in), 0.9, rng=8)
    ex = (W.indptr, W.indices)
    rows = rng.integers(0, n_out, 3000).astype(np.int64)
    cols = rng.integers(0, n_in, 3000).astype(np.int64)
    counts = rng.integers(0, 40, n_out).astype(np.int64)

    def run():
        return (cpu.grad_at(X, dY, rows, cols), *cpu.topk_grad(X, dY, 5000, *ex, 3),
                *cpu.topk_grad(X, dY, 20, *ex), *cpu.topk_grad_rows(X, dY, counts, *ex, 3),
                cpu.diag_grad_norms(X, dY), cpu.diag_grad_norms(dY, X))

    serial, parallel = _both(monkeypatch, run)
    _assert_same_bits(serial, parallel)
