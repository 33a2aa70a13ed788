"""DESIGN.md 6: one training step with a topology update on a wide layer stays far from dense memory.

A 4096 x 4096 layer at 99% sparsity: forward, backward, SGD step and one topology update of each
gradient-driven method, traced with tracemalloc (NumPy allocations, including those Numba makes
through NumPy, are traced). The dense weight or gradient would be 4096 * 4096 * 4 bytes = 64 MiB; the
whole step must stay below a third of that. Measured peaks (2026-11-22): rigl 14.2 MiB, srigl
11.5 MiB, gse 16.4 MiB, diag-rigl 11.1 MiB, most of it the int64 position bookkeeping of the shared
topology step (O(nnz), about 60-100 bytes per stored connection), none of it O(n_out * n_in).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from purerigl.dst import LayerUpdate, make_method
from purerigl.nn import SparseLinear
from purerigl.optim import SGD
from purerigl.formats.budget import random_layer
from purerigl.kernels.cpu import _serial

N = 4096
DENSE_BYTES = N * N * 4
BATCH = 32


@pytest.mark.parametrize("method, fmt", [("rigl", "csr"), ("srigl", "condensed"), ("gse", "csr"), ("diag-rigl", "diagonal")])
def test_training_step_with_update_stays_far_below_dense_memory(method, fmt, monkeypatch):
    # the kernels' choice between parallel and serial twin by work size only, not by the machine's
    # load (kernels/cpu/_serial.py): the traced step runs the kernels the warm-up step compiled, and
    # tracemalloc does not count a twin's first compilation (Numba's Python objects) as the step's memory
    monkeypatch.setattr(_serial, "LOAD_CHECK", False)
    monkeypatch.setattr(_serial, "_LOAD", [0.0, False])
    rng = np.random.default_rng(0)
    layer = SparseLinear(random_layer(fmt, (N, N), 0.99, rng), backend="cpu")
    opt = SGD(layer.parameters(), lr=0.01, momentum=0.9)
    X = rng.standard_normal((BATCH, N)).astype(np.float32)
    dY = rng.standard_normal((BATCH, N)).astype(np.float32)
    algo = make_method(method, fmt)
    budget = layer.W.nnz

    def step():
        layer.forward(X)
        layer.backward(dY)
        opt.step()
        algo.update(LayerUpdate(layer, opt, 0.3, np.random.default_rng(1), budget))

    step()  # compile the kernels outside the trace
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < DENSE_BYTES / 3, f"{method}: peak {peak / 2**20:.1f} MiB"
