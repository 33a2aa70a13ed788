"""Self-test of a backend's DST updates against the reference backend: one update per method.

``purerigl check`` runs the products against SciPy (:mod:`._selftest`); this module adds the
topology update of every method, which on a device backend runs the growth selections, the
selection and structure operations and the remap there. Each case builds the same layer twice, on
the reference backend (the NumPy specification) and on the backend under test, trains it one SGD
step with momentum on the same batch, runs a second forward and backward (the batch the update
scores growth with) and applies one update of the method with generators in the same state.

The inputs are small integers and the step sizes powers of two, so every sum is exact in float32
whatever its order: the two backends must then agree **exactly** on the new structure (every flat
position), the values and the momentum, and the method's statistics. A single differing position
is a failed check.
"""

from __future__ import annotations

import numpy as np

from purerigl.dst import make_method
from purerigl.dst.base import LayerUpdate
from purerigl.dst.topology import flat_positions
from purerigl.formats import FORMATS
from purerigl.kernels import get_backend
from purerigl.nn import SparseLinear
from purerigl.optim import SGD

from ._selftest import Result, _describe

#: (method, format, make_method options) of the update checks: every method and variant.
UPDATE_METHODS = (
    ("rigl", "csr", {}),
    ("set", "csr", {}),
    ("set", "condensed", {}),
    ("srigl", "condensed", {"gamma_sal": 0.3}),
    ("srigl", "condensed", {"gamma_sal": 0.9}),
    ("gse", "csr", {"gse_sampler": "uniform"}),
    ("gse", "condensed", {"gse_sampler": "grabo"}),
    ("gse", "csr", {"gse_sampler": "graest"}),
    ("dynadiag", "diagonal", {}),
)
#: (shape, density) of the layer each update check uses; the tiny one for the CUDA simulator.
UPDATE_CASE = ((96, 64), 0.2)
TINY_UPDATE_CASE = ((12, 8), 0.4)
BATCH = 8
ALPHA = 0.3


def _layer(W, backend):
    layer = SparseLinear(W.copy(), backend=backend)
    return layer, SGD(layer.parameters(), lr=0.25, momentum=0.5)


def _train(layer, opt, X, dY) -> None:
    """One SGD step on (X, dY), then a forward and backward on them again (the batch the update reads)."""
    X, dY = layer.backend.to_device(X), layer.backend.to_device(dY)
    layer.forward(X)
    layer.backward(dY)
    opt.step()
    layer.forward(X)
    layer.backward(dY)


def _state(layer, opt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat positions, values, momentum) of the layer, on the host."""
    layer.sync_to_host()
    W = layer.W
    momentum = opt.state_arrays(layer.weight)["momentum_buffer"]
    return flat_positions(W), W.values.reshape(-1), np.asarray(layer.backend.to_host(momentum)).reshape(-1)


def check_update(backend, method: str, fmt: str, options: dict, shape, density, seed: int) -> Result:
    """One update of ``method`` on ``backend`` against the reference backend; one Result."""
    label = f"update {method}" + "".join(f" {v}" for v in options.values())
    rng = np.random.default_rng([seed, 0xD57])
    W = FORMATS[fmt].random(shape, density, rng)
    W.values[...] = rng.integers(-3, 4, size=W.values.shape) * 0.5  # many exact ties in |w|
    X = rng.integers(-2, 3, size=(BATCH, shape[1])).astype(np.float32)
    dY = rng.integers(-2, 3, size=(BATCH, shape[0])).astype(np.float32)
    states, stats = [], []
    try:
        for name in ("reference", backend):
            layer, opt = _layer(W, get_backend(name))
            _train(layer, opt, X, dY)
            update = LayerUpdate(layer, opt, ALPHA, np.random.default_rng([seed, 1]), budget=W.nnz)
            stats.append(make_method(method, fmt, **options).update(update))
            states.append(_state(layer, opt))
    except Exception as err:  # a crashing update is a failed check, reported with its message
        return Result(fmt, label, tuple(shape), BATCH, float("nan"), 0.0, False, _describe(err))
    (want_pos, want_val, want_mom), (got_pos, got_val, got_mom) = states
    if not np.array_equal(got_pos, want_pos):
        n_diff = np.setxor1d(got_pos, want_pos).size
        return Result(fmt, label, tuple(shape), BATCH, float("nan"), 0.0, False,
                      f"structure differs from the reference: {n_diff} positions")
    err = max(float(np.max(np.abs(got_val - want_val), initial=0.0)),
              float(np.max(np.abs(got_mom - want_mom), initial=0.0)))
    note = ""
    if err > 0.0:
        note = "values or momentum differ from the reference"
    elif stats[0] != stats[1]:
        note = f"statistics differ: {stats[1]} vs {stats[0]}"
    return Result(fmt, label, tuple(shape), BATCH, err, 0.0, not note, note)


def run_update_selftest(backend, seed: int = 0, tiny: bool = False) -> list[Result]:
    """One :func:`check_update` per entry of :data:`UPDATE_METHODS`."""
    shape, density = TINY_UPDATE_CASE if tiny else UPDATE_CASE
    return [check_update(backend, m, f, o, shape, density, seed) for m, f, o in UPDATE_METHODS]
