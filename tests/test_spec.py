"""The methods' NumPy specifications (purerigl/dst/spec/) and every backend's fast update held to them.

Pins down:
- for every method and variant, on reference and cpu, on hypothesis-drawn shapes (tall, wide,
  square, tiny), densities, drop fractions (0 and 1 included), seeds and output/hidden layers, the
  fast update equals its specification exactly: structure, Condensed active rows, values, momentum,
  statistics (purerigl.dst.spec.agreement, on integer data where every sum is exact);
- the specifications keep the promises of their methods (nnz or fan-in, new weights 0) on their own;
- the dense gradient helper refuses a layer above its limit; a method without a spec is refused.
(The cuda backend is held to the same specifications under the simulator, on tiny layers, by
tests/test_update_selftest.py and ``purerigl check --backend cuda``.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from purerigl.dst.spec import MAX_DENSE_GRADIENT, SpecError, Step, dense_gradient, positions, spec_update
from purerigl.dst.spec.agreement import compare_with_spec
from purerigl.formats import FORMATS
from purerigl.kernels import get_backend

VARIANTS = (
    ("static", "csr", {}),
    ("rigl", "csr", {}),
    ("set", "csr", {}),
    ("set", "condensed", {}),
    ("srigl", "condensed", {"gamma_sal": 0.0}),
    ("srigl", "condensed", {"gamma_sal": 0.3}),
    ("srigl", "condensed", {"gamma_sal": 0.9}),
    ("srigl", "condensed", {"gamma_sal": 2}),
    ("gse", "csr", {"gse_sampler": "uniform"}),
    ("gse", "csr", {"gse_sampler": "grabo"}),
    ("gse", "csr", {"gse_sampler": "graest", "gse_gamma": 3.0}),
    ("gse", "condensed", {"gse_sampler": "uniform"}),
    ("gse", "condensed", {"gse_sampler": "grabo"}),
    ("gse", "condensed", {"gse_sampler": "graest"}),
    ("diag-rigl", "diagonal", {}),
)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("method, fmt, options", VARIANTS, ids=lambda v: str(v))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from([(12, 8), (8, 12), (10, 10), (3, 17), (17, 3), (1, 9), (9, 1), (40, 24)]),
    density=st.sampled_from([0.15, 0.4, 0.8]),
    alpha=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
    is_output=st.booleans(),
)
def test_fast_update_equals_its_specification(backend, method, fmt, options, shape, density, alpha, seed, is_output):
    a = compare_with_spec(get_backend(backend), method, fmt, options, shape, density, seed, alpha=alpha,
                          is_output=is_output)
    if a.difference.startswith(("MethodError", "FormatError", "ValueError")):
        pytest.skip(f"the layer cannot be built or updated this way: {a.difference}")
    assert a.agree, a.difference


def _step(fmt, shape, density, seed, alpha=0.5, budget=None):
    rng = np.random.default_rng(seed)
    W = FORMATS[fmt].random(shape, density, rng)
    W.values[...] = rng.integers(-3, 4, size=W.values.shape) * 0.5
    X = rng.integers(-2, 3, size=(5, shape[1])).astype(np.float32)
    dY = rng.integers(-2, 3, size=(5, shape[0])).astype(np.float32)
    return Step(W, X, dY, alpha, salt=seed, budget=budget or W.nnz, rng=np.random.default_rng(seed),
                state={"m": np.arange(W.values.size, dtype=np.float32).reshape(W.values.shape)})


@pytest.mark.parametrize("seed", range(5))
def test_specifications_keep_their_promises(seed):
    for method, fmt, options in VARIANTS:
        step = _step(fmt, (12, 10), 0.3, seed)
        old = dict(zip(positions(step.W).tolist(), step.W.values.ravel().tolist()))
        old_m = dict(zip(positions(step.W).tolist(), step.state["m"].ravel().tolist()))
        out = spec_update(method, step, **options)
        new = positions(out.W).tolist()
        assert len(set(new)) == len(new)
        if not (method == "srigl" and options["gamma_sal"] > 0):
            assert out.W.nnz == step.W.nnz, (method, options)
        for p, v, m in zip(new, out.W.values.ravel().tolist(), out.state["m"].ravel().tolist()):
            assert (v, m) == ((old[p], old_m[p]) if p in old else (0.0, 0.0)), (method, p)
        assert out.stats["kept"] + out.stats["grown"] == len(new)
        assert out.stats["kept"] + out.stats["dropped"] == len(old)
        if fmt == "condensed":
            assert len({len(row) for row in out.W.indices.tolist()}) <= 1  # constant fan-in


def test_rigl_specification_by_hand():
    """A 2 x 3 layer: keep the largest |w|, grow the largest |G| outside the kept set."""
    from purerigl.formats import CSR

    W = CSR(np.array([0, 2, 3]), np.array([0, 2, 1], np.int32), np.array([0.5, -3.0, 1.0], np.float32), (2, 3))
    X = np.array([[1.0, 0.0, 2.0]], np.float32)  # G[i, j] = dY[i] X[j]
    dY = np.array([[1.0, -4.0]], np.float32)  # G = [[1, 0, 2], [-4, 0, -8]]
    out = spec_update("rigl", Step(W, X, dY, alpha=0.34, salt=7))  # n_prune = floor(1.02) = 1
    assert sorted(positions(out.W).tolist()) == [0 * 3 + 2, 1 * 3 + 1, 1 * 3 + 2]  # (0,0) dropped, (1,2) grown
    assert out.stats == {"kept": 2, "grown": 1, "dropped": 1}
    assert out.W.values.tolist() == [-3.0, 1.0, 0.0]  # (0,2) kept, (1,1) kept, (1,2) new at 0


def test_dense_gradient_is_refused_above_its_limit():
    n = int(np.sqrt(MAX_DENSE_GRADIENT)) + 1
    with pytest.raises(SpecError, match="limit"):
        dense_gradient(np.zeros((1, n), np.float32), np.zeros((1, n), np.float32))


def test_unknown_method_is_refused():
    with pytest.raises(SpecError, match="no specification for method 'nope'"):
        spec_update("nope", _step("csr", (4, 4), 0.5, 0))
