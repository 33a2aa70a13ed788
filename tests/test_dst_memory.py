"""DESIGN.md 6: one training step with a topology update on a wide layer stays far from dense memory.

A 4096 x 4096 layer at 99% sparsity: forward, backward, SGD step and one topology update of each
gradient-driven method, traced with tracemalloc (NumPy allocations, including those Numba makes
through NumPy, are traced). The dense weight or gradient would be 4096 * 4096 * 4 bytes = 64 MiB; the
whole step must stay below a third of that. Measured peaks (2026-11-22): rigl 14.2 MiB, srigl
11.5 MiB, gse 16.4 MiB, diag-rigl 11.1 MiB, most of it the int64 position bookkeeping of the shared
topology step (O(nnz), about 60-100 bytes per stored connection), none of it O(n_out * n_in).

The same holds for a convolution (issue 16): its filter matrix (c_out, c_in * kh * kw) is grown by the
same streamed selections over the patch batch. A 4096-filter 3 x 3 convolution over 512 channels
(filter matrix 4096 x 4608, 72 MiB dense) on 3 x 3 images without padding has one output pixel per
image, so its patch batch is small and a dense filter gradient would be most of the step's memory.
Measured peaks (2026-12-06): rigl 13.3 MiB, srigl 18.7 MiB, gse 17.5 MiB, diag-rigl 8.0 MiB; the same
step with a RigL growth that forms the dense filter gradient first (a planted fault) peaks at 82.4 MiB.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from purerigl.dst import LayerUpdate, make_method
from purerigl.nn import SparseConv2d, SparseLinear
from purerigl.optim import SGD
from purerigl.formats.budget import random_layer
from purerigl.kernels.cpu import _serial

N = 4096
DENSE_BYTES = N * N * 4
BATCH = 32
#: the gradient-driven methods, each on its own format
METHODS = [("rigl", "csr"), ("srigl", "condensed"), ("gse", "csr"), ("diag-rigl", "diagonal")]


@pytest.mark.parametrize("method, fmt", METHODS)
def test_training_step_with_update_stays_far_below_dense_memory(method, fmt, monkeypatch):
    # the kernels' choice between parallel and serial twin by work size only, not by the machine's
    # load (kernels/cpu/_serial.py): the traced step runs the kernels the warm-up step compiled, and
    # tracemalloc does not count a twin's first compilation (Numba's Python objects) as the step's memory
    monkeypatch.setattr(_serial, "LOAD_CHECK", False)
    monkeypatch.setattr(_serial, "_LOAD", [0.0, False])
    rng = np.random.default_rng(0)
    layer = SparseLinear(random_layer(fmt, (N, N), 0.99, rng), backend="cpu")
    X = rng.standard_normal((BATCH, N)).astype(np.float32)
    dY = rng.standard_normal((BATCH, N)).astype(np.float32)
    peak = _traced_peak_of_step(layer, layer, X, dY, method, fmt)
    assert peak < DENSE_BYTES / 3, f"{method}: peak {peak / 2**20:.1f} MiB"


C_IN, KERNEL = 512, 3
CONV_DENSE_BYTES = N * C_IN * KERNEL * KERNEL * 4


@pytest.mark.parametrize("method, fmt", METHODS)
def test_conv_training_step_with_update_stays_far_below_dense_memory(method, fmt, monkeypatch):
    monkeypatch.setattr(_serial, "LOAD_CHECK", False)  # as above: the warm-up compiles what the trace runs
    monkeypatch.setattr(_serial, "_LOAD", [0.0, False])
    rng = np.random.default_rng(0)
    W = random_layer(fmt, (N, C_IN * KERNEL * KERNEL), 0.99, rng)
    conv = SparseConv2d(W, C_IN, KERNEL, backend="cpu")
    X = rng.standard_normal((BATCH, C_IN, KERNEL, KERNEL)).astype(np.float32)  # one output pixel per image
    dY = rng.standard_normal((BATCH, N, 1, 1)).astype(np.float32)
    peak = _traced_peak_of_step(conv, conv.linear, X, dY, method, fmt)
    assert peak < CONV_DENSE_BYTES / 3, f"{method} on a conv: peak {peak / 2**20:.1f} MiB"


def _traced_peak_of_step(layer, sparse, X, dY, method, fmt) -> int:
    """Peak traced bytes of forward, backward, SGD step and one update of ``method``, after a warm-up
    step; ``sparse`` is the SparseLinear that holds the weights (the layer itself, or a conv's)."""
    opt = SGD(layer.parameters(), lr=0.01, momentum=0.9)
    algo = make_method(method, fmt)
    budget = sparse.W.nnz

    def step():
        layer.forward(X)
        layer.backward(dY)
        opt.step()
        algo.update(LayerUpdate(sparse, opt, 0.3, np.random.default_rng(1), budget))

    step()  # compile the kernels outside the trace
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak
