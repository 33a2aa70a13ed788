"""Hold a fast DST update to its specification: the same layer, batch and generator, then compare.

:func:`compare_with_spec` builds one layer on a backend, trains it one SGD step with momentum on an
integer batch, runs a second forward and backward (the batch the update scores growth with), and
applies one update twice: the method's fast version on the backend, and its specification
(:mod:`purerigl.dst.spec`) on host copies of the same arrays, with a generator in the same state and
the same tie salt. The weights are multiples of 1/2 and the batch small integers, so every sum is
exact in float32 in any order and the two must agree **exactly**: on the new structure (every flat
position, and a Condensed matrix's active rows), the values, the momentum and the statistics.

The specification is computed by another route than the fast version (dense G, ``np.lexsort``,
Python sets and loops; no backend or shared selection operation), so a fault in an operation that
every backend shares is caught on every backend, the reference included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...formats import FORMATS, Condensed
from ..base import LayerUpdate
from ..topology import tie_salt
from . import Step, Update as Update_, positions, spec_source, spec_update

#: Drop fraction and batch size of the comparison.
ALPHA = 0.3
BATCH = 8


@dataclass
class Agreement:
    """The outcome of one comparison: ``agree`` and, if not, what differs (one line)."""

    method: str
    fmt: str
    options: dict
    backend: str
    spec: str
    agree: bool
    difference: str = ""
    max_abs_error: float = 0.0


def _problem(W, X, dY, backend):
    """The backend layer after one SGD step and a second forward/backward, and its optimizer."""
    from ...nn import SparseLinear
    from ...optim import SGD

    layer = SparseLinear(W.copy(), backend=backend)
    opt = SGD(layer.parameters(), lr=0.25, momentum=0.5)
    X_b, dY_b = backend.to_device(X), backend.to_device(dY)
    layer.forward(X_b)
    layer.backward(dY_b)
    opt.step()
    layer.forward(X_b)
    layer.backward(dY_b)
    return layer, opt


def _host_state(layer, opt) -> tuple:
    """(host matrix, momentum laid out like its values) of the layer now."""
    layer.sync_to_host()
    momentum = opt.state_arrays(layer.weight)["momentum_buffer"]
    return layer.W.copy(), np.array(layer.backend.to_host(momentum)).reshape(layer.W.values.shape)


def compare_with_spec(backend, method: str, fmt: str, options: dict, shape, density: float, seed: int,
                      alpha: float = ALPHA, is_output: bool = False) -> Agreement:
    """One update of ``method`` on ``backend`` (a :class:`purerigl.kernels.registry.Backend`) against its
    specification; exceptions of the fast version are reported as a difference, not raised."""
    from .. import make_method

    if method == "dynadiag":
        return compare_dynadiag_with_spec(backend, shape, density, seed, alpha)
    rng = np.random.default_rng([seed, 0xD57])
    W = FORMATS[fmt].random(tuple(shape), density, rng)
    W.values[...] = rng.integers(-3, 4, size=W.values.shape) * 0.5  # many exact ties in |w|
    X = rng.integers(-2, 3, size=(BATCH, shape[1])).astype(np.float32)
    dY = rng.integers(-2, 3, size=(BATCH, shape[0])).astype(np.float32)
    salt = tie_salt(seed, 0, 0)
    result = Agreement(method, fmt, dict(options), backend.name, spec_source(method), agree=False)
    try:
        layer, opt = _problem(W, X, dY, backend)
        before, momentum = _host_state(layer, opt)
        step = Step(before, X, dY, alpha, salt=salt, budget=W.nnz, rng=np.random.default_rng([seed, 1]),
                    is_output=is_output, state={"momentum_buffer": momentum})
        want = spec_update(method, step, **options)
        u = LayerUpdate(layer, opt, alpha, np.random.default_rng([seed, 1]), budget=W.nnz, is_output=is_output,
                        salt=salt)
        stats = make_method(method, fmt, **options).update(u)
        got, got_momentum = _host_state(layer, opt)
    except Exception as err:  # a crashing update is a failed comparison, reported with its message
        result.difference = f"{type(err).__name__}: {err}".splitlines()[0]
        return result
    result.difference = _difference(want, got, got_momentum, stats)
    if not result.difference or "values" in result.difference:
        result.max_abs_error = max(
            float(np.max(np.abs(got.values.astype(np.float64) - want.W.values), initial=0.0)),
            float(np.max(np.abs(got_momentum - want.state["momentum_buffer"]), initial=0.0)),
        )
    result.agree = not result.difference
    return result


def _difference(want, got, got_momentum, stats) -> str:
    """'' when the fast update equals the specification's, else the first difference in words."""
    want_pos, got_pos = positions(want.W), positions(got)
    if set(want_pos.tolist()) != set(got_pos.tolist()) or want_pos.size != got_pos.size:
        missing = np.setdiff1d(want_pos, got_pos).size
        extra = np.setdiff1d(got_pos, want_pos).size
        return f"structure differs: {missing} positions of the specification missing, {extra} not in it"
    if isinstance(want.W, Condensed) and not np.array_equal(want.W.rows, got.rows):
        return f"active rows differ: {got.rows.tolist()} instead of {want.W.rows.tolist()}"
    order_w, order_g = np.argsort(want_pos), np.argsort(got_pos)
    if not np.array_equal(want.W.values.ravel()[order_w], got.values.ravel()[order_g]):
        return "values differ at equal positions"
    if not np.array_equal(want.state["momentum_buffer"].ravel()[order_w], got_momentum.ravel()[order_g]):
        return "momentum differs at equal positions"
    if dict(stats) != want.stats:
        return f"statistics differ: {dict(stats)} instead of {want.stats}"
    return ""


def compare_dynadiag_with_spec(backend, shape, density: float, seed: int, alpha: float = ALPHA) -> Agreement:
    """DynaDiag on ``backend`` against :mod:`purerigl.dst.spec.dynadiag`: the gated layer's forward and
    gradients (values, scores, bias, input) on an integer batch, then one window swap with the
    scores of the diagonals that entered. The gates are not multiples of 1/2, so the products are
    compared to float32 rounding (relative 1e-5); the swap's structure, values, momentum, entering
    scores and statistics exactly."""
    from ...nn import GatedDiagonalLinear
    from ...optim import SGD
    from ..dynadiag import DynaDiag, enter_scores
    from . import dynadiag as spec

    rng = np.random.default_rng([seed, 0xD1A6])
    W = FORMATS["diagonal"].random(tuple(shape), density, rng)
    W.values[...] = rng.integers(-3, 4, size=W.values.shape) * 0.5
    P, S = max(shape), W.offsets.size
    K = max(1, S // 2)
    scores = (rng.integers(-2, 3, size=P) * 0.25).astype(np.float32)  # ties in alpha
    T = 0.5
    X = rng.integers(-2, 3, size=(BATCH, shape[1])).astype(np.float32)
    dY = rng.integers(-2, 3, size=(BATCH, shape[0])).astype(np.float32)
    salt = tie_salt(seed, 0, 0)
    result = Agreement("dynadiag", "diagonal", {}, backend.name, spec_source("dynadiag"), agree=False)
    try:
        layer = GatedDiagonalLinear(W.copy(), K, alpha=scores, temperature=T, backend=backend)
        Y = backend.to_host(layer.forward(backend.to_device(X)))
        dX = backend.to_host(layer.backward(backend.to_device(dY)))
        layer.sync_to_host()
        want_Y = spec.forward(X, W.offsets, W.values, scores, K, T, np.zeros(shape[0]))
        want = spec.backward(X, dY, W.offsets, W.values, scores, K, T)
        got = {"Y": Y, "values": backend.to_host(layer.weight.grad), "alpha": layer.alpha.grad, "X": dX}
        expected = {"Y": want_Y, "values": want["values"], "alpha": want["alpha"], "X": want["X"]}
        for name in ("Y", "values", "alpha", "X"):
            err = float(np.max(np.abs(np.asarray(got[name], np.float64) - expected[name]), initial=0.0))
            result.max_abs_error = max(result.max_abs_error, err)
            if err > 1e-5 * max(1.0, float(np.max(np.abs(expected[name]), initial=0.0))):
                result.difference = f"gradient or output {name} differs by {err:.3g}"
                return result
        opt = SGD(layer.parameters(), lr=0.25, momentum=0.5)
        opt.step()
        layer.forward(backend.to_device(X))
        layer.backward(backend.to_device(dY))
        before, momentum = _host_state(layer, opt)
        step = Step(before, X, dY, alpha, salt=salt, budget=W.nnz, state={"momentum_buffer": momentum})
        want_swap = spec.update(step, scores=scores)
        u = LayerUpdate(layer, opt, alpha, np.random.default_rng([seed, 1]), budget=W.nnz, salt=salt)
        stats = DynaDiag().update(u)
        entered, survivors = stats.pop("entered"), stats.pop("survivors")
        after_scores = layer.alpha.value.copy()
        enter_scores(after_scores, survivors, entered)
        got_W, got_momentum = _host_state(layer, opt)
    except Exception as err:
        result.difference = f"{type(err).__name__}: {err}".splitlines()[0]
        return result
    want_stats = dict(want_swap.stats)
    want_entered, want_scores = want_stats.pop("entered"), np.array(want_stats.pop("scores"), np.float32)
    result.difference = _difference(Update_(want_swap.W, want_swap.state, want_stats), got_W, got_momentum, stats)
    if not result.difference and entered.tolist() != list(want_entered):
        result.difference = f"entering diagonals {entered.tolist()} instead of {list(want_entered)}"
    if not result.difference and not np.array_equal(after_scores, want_scores):
        result.difference = "the scores of the entering diagonals differ"
    result.agree = not result.difference
    return result
