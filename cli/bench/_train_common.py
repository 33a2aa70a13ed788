"""What the three benches of ``purerigl bench train`` share (the MLP in ``train.py``, the convolutional
networks in ``_train_cnn.py``, the vision transformer in ``_train_vit.py``): the timed training step
and topology update, the update budgets, alternated timing of two or more calls, and small formatters.
"""

from __future__ import annotations

import os
import time

import numpy as np

from purerigl.dst import LayerUpdate, make_method
from purerigl.dst.dynadiag import DynaDiagOptions, gate_model, gated_layers, temperature_at
from purerigl.formats.budget import layer_budget
from purerigl.optim import Adam, make_optimizer

from .._timing import Timing
from ._shared import SETTLE_CALLS

#: The thread-count variables a report echoes (BLAS reads them once, at load).
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def train_step_fn(model, optimizer, X, y, after=None):
    """One training step on the model's backend, as a call without arguments.

    Parameters
    ----------
    model : Network
    optimizer : Optimizer
        Over ``model.parameters()``.
    X, y : numpy.ndarray
        The batch (rows flattened as the data sets give them) and its labels; moved to the backend
        once, here (the step copies only the loss back, as in the Trainer).
    after : callable or None
        Called after the optimizer step, as part of the step (DynaDiag: alpha's Adam step).

    Returns
    -------
    callable
        Forward, softmax cross-entropy, backward, optimizer step (and ``after``).
    """
    backend = model.backend
    X, y = backend.to_device(X), backend.to_device(y)

    def step():
        logits = model.forward(X)
        _, dlogits, _ = backend.softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        optimizer.step()
        if after is not None:
            after()

    return step


def method_calls(model, method_name: str, fmt: str, sparsity: float, X, y, seed: int):
    """The timed calls of one (method, format) row on ``model``, built in ``fmt`` at ``sparsity``:
    ``(step, update)``, ``update`` None for static and for the dense baseline (``method_name`` "dense").

    The step is forward, loss, backward and SGD with momentum; the update one topology update of
    every sparse layer (:func:`update_fn`). ``dynadiag`` times its soft phase, before the freeze (after
    it, a DynaDiag network is a static diagonal one): the model's diagonal layers are first gated as
    ``purerigl train`` gates them (:func:`purerigl.dst.dynadiag.gate_model` with the default options:
    the window soft mode stores S = 2K diagonals, each gated by the soft top-K of its score alpha, at
    the first epoch's temperature), the step adds alpha's Adam step, and the update is the window's
    swap of stored diagonals (:class:`purerigl.dst.dynadiag.DynaDiag`; the updater's O(P) resetting of
    the entered diagonals' scores is not in it).
    """
    budgets = update_budgets(model, method_name, sparsity)  # before gating: K follows the layer's budget
    after = None
    if method_name == "dynadiag":
        options = DynaDiagOptions()
        gate_model(model, budgets, options, np.random.default_rng([seed, 0xD1A6]),
                   temperature_at(0, 1, options.t_max, options.t_min))
        after = Adam([lin.alpha for lin in gated_layers(model)], lr=options.alpha_lr,
                     weight_decay=options.alpha_weight_decay).step
    optimizer = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9)
    step = train_step_fn(model, optimizer, X, y, after=after)
    if method_name in ("dense", "static"):
        return step, None
    return step, update_fn(model, optimizer, make_method(method_name, fmt), budgets, np.random.default_rng(seed))


def update_fn(model, optimizer, method, budgets, rng, alpha=0.3):
    """One topology update of every sparse layer of ``model`` by ``method``, as a call without arguments.

    Parameters
    ----------
    model : Network
    optimizer : Optimizer
    method : Method
        From :func:`purerigl.dst.make_method`.
    budgets : dict
        Connections by layer name (see :func:`update_budgets`).
    rng : numpy.random.Generator
    alpha : float
        Drop fraction.

    Returns
    -------
    callable
    """
    last = model.linears[-1]

    def update():
        for layer in model.sparse_layers():
            layer.sync_to_host()  # as the DST updater does (a no-op on the host backends)
            method.update(LayerUpdate(layer=layer, optimizer=optimizer, alpha=alpha, rng=rng,
                                      budget=budgets[layer.name], is_output=layer is last))

    return update


def update_budgets(model, method_name: str, sparsity: float) -> dict:
    """The connection budget of every sparse layer, as the DST updater gives it: the stored count, or
    for SRigL (which re-derives its fan-in from it) the layer's uniform budget at ``sparsity``."""
    if method_name == "srigl":
        return {layer.name: layer_budget(layer.shape, sparsity) for layer in model.sparse_layers()}
    return {layer.name: int(layer.W.nnz) for layer in model.sparse_layers()}


def _warm_round(fns) -> list[float]:
    """Call each of ``fns`` once, in turn: the seconds of each call."""
    seconds = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def interleaved_times(fns, *, budget_s: float, max_call_s: float, repeat: int = 1000,
                      min_runs: int = 5) -> tuple[Timing, ...]:
    """Time the calls ``fns`` in turn (a, b, c, a, b, c, ...): one :class:`Timing` each.

    One warm-up call of each, then rounds until ``len(fns) * budget_s`` seconds are spent or ``repeat``
    rounds are timed, at least ``min_runs`` rounds. Alternating makes a drifting machine load (other
    jobs starting and stopping) fall on all of them alike, so their ratios hold where separate medians
    taken minutes apart would not.

    A call slower than ``max_call_s`` is timed once, but only once it has settled, as in
    :func:`._shared.measure`: a warm-up call that compiles (or loads compiled kernels from Numba's
    cache) can take seconds for a step of milliseconds, and the timing of a whole row then rested
    on a single pair of calls (seen: LeNet-5 rows of `bench train --model` timed once, 0.85x for a
    step that runs at 1.37x). So while a warm-up round has a call slower than ``max_call_s``, the
    round is repeated until no call is more than 20% faster than in the round before (at most
    :data:`._shared.SETTLE_CALLS` more rounds). If a call of the last round is still slower than
    ``max_call_s``, that round is the timing (``runs == 1``); otherwise the rounds are timed as above.

    Parameters
    ----------
    fns : sequence of callable
    budget_s, max_call_s : float
    repeat, min_runs : int

    Returns
    -------
    tuple of Timing
        Median, fastest, slowest and the number of runs of each call, in the order of ``fns``.
    """
    warm = _warm_round(fns)
    for _ in range(SETTLE_CALLS):
        if max(warm) <= max_call_s:
            break
        again = _warm_round(fns)
        settled = all(now >= 0.8 * before for now, before in zip(again, warm))
        warm = again
        if settled:
            break
    if max(warm) > max_call_s:
        return tuple(Timing(t, t, t, 1) for t in warm)
    samples = tuple([] for _ in fns)
    rounds = max(1, repeat)
    floor = min(min_runs, rounds)
    spent = 0.0
    while len(samples[0]) < rounds and (spent < len(fns) * budget_s or len(samples[0]) < floor):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            out.append(dt)
            spent += dt
    return tuple(Timing(float(np.median(t)), min(t), max(t), len(t)) for t in samples)


def paired_times(fn_a, fn_b, *, budget_s: float, max_call_s: float, repeat: int = 1000, min_runs: int = 5):
    """Time ``fn_a`` and ``fn_b`` alternately (a, b, a, b, ...): (Timing of a, Timing of b).

    :func:`interleaved_times` of the two: one warm-up call of each, then pairs until ``2 * budget_s``
    seconds are spent or ``repeat`` pairs are timed, at least ``min_runs`` pairs; one pair if a
    warm-up call took longer than ``max_call_s``.
    """
    return interleaved_times((fn_a, fn_b), budget_s=budget_s, max_call_s=max_call_s, repeat=repeat,
                             min_runs=min_runs)


def run_parts(step, spent: dict, runs: int) -> tuple[list, dict]:
    """Run ``step`` ``runs`` times while a probe adds seconds to ``spent`` (by part): each run's step
    seconds, and per part each run's seconds in it (for :func:`median_share`)."""
    steps, parts = [], {key: [] for key in spent}
    for _ in range(runs):
        before = dict(spent)
        t0 = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t0)
        for key in parts:
            parts[key].append(spent[key] - before[key])
    return steps, parts


def median_share(part: list, steps: list) -> tuple[float, float | None]:
    """(median seconds, median share of its step) of one part over the runs of :func:`run_parts`.

    Medians, not totals: one step that compiles a kernel (a serial twin is compiled the first time a
    busy machine selects it) would otherwise weigh a whole run's shares; the median of three is the
    share of a step that did not.
    """
    shares = [p / t for p, t in zip(part, steps) if t > 0]
    return float(np.median(part)), (float(np.median(shares)) if shares else None)


def stored_weights(model) -> int:
    """Connections stored by the weight layers (a dense layer counts n_out * n_in)."""
    return sum(int(row["nnz"]) for row in model.describe())


def thread_env() -> dict:
    """The thread-count variables set in the environment (:data:`THREAD_VARIABLES`), by name."""
    return {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}


def loadavg() -> list | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def pct(x) -> str:
    """A fraction as a whole percentage, "-" for None."""
    return "-" if x is None else f"{x:.0%}"


def sig(x) -> str:
    """Four significant digits, "-" for None."""
    return "-" if x is None else f"{x:.4g}"
