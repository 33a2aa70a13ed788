"""`purerigl bench train`: one training step and one topology update per method against the dense network."""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager

import click
import numpy as np

from purerigl.dst import LayerUpdate, make_method
from purerigl.formats.budget import layer_budget
from purerigl.nn import Conv2d, ModelError, SparseConv2d, build_model, build_mlp, parse_hidden
from purerigl.optim import make_optimizer

from .._options import FiniteFloatRange
from .._timing import Timing
from . import bench
from ._busy import busy_processes
from ._shared import (
    CNN_INPUT_SHAPES,
    MAX_DENSE,
    QUICK,
    TRAIN_METHODS,
    _ms,
    _ratio,
    command_line,
    common_options,
    finish,
    header,
    machine_meta,
    measure,
    product_limit_s,
    quick_default,
    thread_limit,
)

# ----------------------------------------------------------------------------------------------- train


def _train_step_fn(model, optimizer, X, y):
    """One step on the model's backend; X and y are moved there once (the step copies only the loss
    back, as in the Trainer)."""
    backend = model.backend
    X, y = backend.to_device(X), backend.to_device(y)

    def step():
        logits = model.forward(X)
        _, dlogits, _ = backend.softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        optimizer.step()

    return step


def _update_fn(model, optimizer, method, budgets, rng, alpha=0.3):

    last = model.linears[-1]

    def update():
        for layer in model.sparse_layers():
            layer.sync_to_host()  # as the DST updater does (a no-op on the host backends)
            method.update(LayerUpdate(layer=layer, optimizer=optimizer, alpha=alpha, rng=rng,
                                      budget=budgets[layer.name], is_output=layer is last))

    return update


def dense_products(shapes, batch, rng, *, budget_s, max_call_s) -> list[dict | None]:
    """Per layer shape (n_out, n_in): the medians (seconds) of the three dense BLAS products a training
    step does with that layer at ``batch``, timed like ``bench kernels``' dense baseline: ``matmul``
    X @ W^T, ``matmul_t`` dY @ W, ``sddmm`` (the whole dense gradient) dY^T @ X. ``None`` for a
    layer above :data:`MAX_DENSE` elements."""
    out = []
    for n_out, n_in in shapes:
        if n_out * n_in > MAX_DENSE:
            out.append(None)
            continue
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        X = rng.standard_normal((batch, n_in)).astype(np.float32)
        dY = rng.standard_normal((batch, n_out)).astype(np.float32)
        WT, dYT = W.T, np.ascontiguousarray(dY.T)
        calls = {"matmul": lambda: X @ WT, "matmul_t": lambda: dY @ W, "sddmm": lambda: dYT @ X}
        out.append({op: measure(fn, budget_s=budget_s, max_call_s=max_call_s, compiled=True).median_s
                    for op, fn in calls.items()})
    return out


def step_limit_s(model, products, batch) -> float | None:
    """The limit of one training step (issue 19): the step's products (per linear layer: forward
    ``matmul``, weight gradient ``sddmm``, and ``matmul_t`` unless the layer needs no input gradient),
    each at its stored connections (``nnz * batch`` multiply-adds; all ``n_out * n_in`` for a dense
    layer) and at the rate of the dense product of the same shape measured in this run, summed. The
    rest of a step (bias, ReLU, loss, optimizer) is not counted."""
    total = 0.0
    for layer, times in zip(model.linears, products):
        if times is None:
            return None
        n_out, n_in = layer.shape
        W = getattr(layer, "W", None)
        nnz = int(W.nnz) if W is not None else n_out * n_in
        ops = ("matmul", "sddmm", "matmul_t") if layer.needs_input_grad else ("matmul", "sddmm")
        total += sum(product_limit_s(times[op], nnz, n_out, n_in, batch) for op in ops)
    return total


def run_train(backend, hidden_list, sparsities, batch, delta_t, *, budget_s, max_call_s, seed, repeat=1000,
              n_features=784, n_classes=10, products_out=None):
    """Time each configuration's step and update; ``products_out`` (a list) receives the dense product
    times behind the limit column, one dict per network."""
    rng = np.random.default_rng(seed)
    results = []
    for hidden in hidden_list:
        widths = (n_features, *parse_hidden(hidden), n_classes)
        arch = "-".join(str(w) for w in widths)
        shapes = [(n_out, n_in) for n_in, n_out in zip(widths, widths[1:])]
        products = dense_products(shapes, batch, np.random.default_rng(seed), budget_s=budget_s,
                                  max_call_s=max_call_s)
        if products_out is not None:
            products_out.append({"arch": arch, "batch": batch, "layers": [
                {"shape": list(shape), **({f"{op}_ms": t * 1e3 for op, t in times.items()} if times else {})}
                for shape, times in zip(shapes, products)]})
        X = rng.standard_normal((batch, n_features)).astype(np.float32)
        y = rng.integers(0, n_classes, size=batch)
        configs = [("dense", "dense", 0.0)] + [(m, f, s) for s in sparsities for m, f in TRAIN_METHODS]
        dense_ms = None
        for method_name, fmt, sparsity in configs:
            model = build_mlp(n_features, hidden, n_classes, fmt="csr" if fmt == "dense" else fmt,
                              sparsity=sparsity, backend=backend, rng=np.random.default_rng(seed))
            optimizer = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9)
            step = _train_step_fn(model, optimizer, X, y)
            t_step = measure(step, budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
            step_ms = t_step.median_s * 1e3
            update_ms = None
            runs_update = 0
            if method_name not in ("dense", "static"):
                method = make_method(method_name, fmt)
                budgets = {layer.name: int(layer.W.nnz) for layer in model.sparse_layers()}
                if method_name == "srigl":  # SRigL re-derives its fan-in from the layer budget
                    budgets = {layer.name: layer_budget(layer.shape, sparsity) for layer in model.sparse_layers()}
                t_up = measure(_update_fn(model, optimizer, method, budgets, np.random.default_rng(seed)),
                               budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
                update_ms, runs_update = t_up.median_s * 1e3, t_up.runs
            if method_name == "dense":
                dense_ms = step_ms
            amortised = step_ms + (update_ms or 0.0) / delta_t
            limit_s = step_limit_s(model, products, batch)
            nnz = sum(int(p.value.size) for p in model.parameters() if p.name.endswith((".values", ".weight")))
            results.append({
                "arch": arch, "method": method_name, "format": fmt, "sparsity": sparsity, "batch": batch,
                "weights": nnz,
                "step_ms": step_ms, "update_ms": update_ms,
                "update_amortised_ms": None if update_ms is None else update_ms / delta_t,
                "step_with_update_ms": amortised,
                "dense_ratio": dense_ms / step_ms if dense_ms else None,
                "dense_ratio_with_update": dense_ms / amortised if dense_ms else None,
                "limit_ms": None if limit_s is None else limit_s * 1e3,
                "limit_fraction": None if limit_s is None else limit_s / t_step.median_s,
                "runs": {"step": t_step.runs, "update": runs_update},
            })
    return results


def format_train(report: dict) -> str:
    m = report["meta"]
    lines = header(m, "purerigl bench train: one training step (forward, loss, backward, SGD momentum) and one "
                      "topology update, float32, synthetic inputs")
    lines += [
        f"batch {m['batch']}; topology update: every sparse layer, drop fraction 0.3, amortised over "
        f"delta_t = {m['delta_t']} steps",
        "dense = the same network with sparsity 0 (Dense layers, NumPy BLAS), trained by the same code",
        "dense/sparse: dense step time / sparse step time (> 1: sparse is faster); '+upd' includes the "
        "amortised update",
        "limit: the step's products (per layer: matmul, sddmm, and matmul_t except in the first layer), each "
        "nnz * batch multiply-adds at the rate of the dense BLAS product of that layer's shape measured in this "
        "run; bias, ReLU, loss and optimizer are not counted; %limit = limit / step time",
        "",
    ]
    head = (f"{'network':<16} {'method':<9} {'format':<9} {'sparsity':>8} {'weights':>9} {'step ms':>9} "
            f"{'update ms':>10} {'upd/dt ms':>9} {'dense/sp':>9} {'+upd':>7} {'limit ms':>9} {'%limit':>7}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['arch']:<16} {r['method']:<9} {r['format']:<9} {r['sparsity']:>8.2f} {r['weights']:>9} "
            f"{r['step_ms']:>9.3f} {_ms(r['update_ms']):>10} {_ms(r['update_amortised_ms']):>9} "
            f"{_ratio(r['dense_ratio']):>9} {_ratio(r['dense_ratio_with_update']):>7} "
            f"{_sig(r.get('limit_ms')):>9} {_pct(r.get('limit_fraction')):>7}"
        )
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def _sig(x) -> str:
    return "-" if x is None else f"{x:.4g}"


# ------------------------------------------------------------------------------ convolutional networks


def _update_budgets(model, method_name: str, sparsity: float) -> dict:
    """The connection budget of every sparse layer, as the DST updater gives it: the stored count, or
    for SRigL (which re-derives its fan-in from it) the layer's uniform budget at ``sparsity``."""
    if method_name == "srigl":
        return {layer.name: layer_budget(layer.shape, sparsity) for layer in model.sparse_layers()}
    return {layer.name: int(layer.W.nnz) for layer in model.sparse_layers()}


@contextmanager
def patch_timer():
    """Seconds and calls spent in im2col and col2im (the convolutions' patch work) while active.

    Wraps the two functions where the convolution layers look them up (:mod:`purerigl.nn.conv`) and
    in :mod:`purerigl.nn.patches`; a wrapper costs well under a microsecond per call.
    """
    import purerigl.nn.conv as conv_module
    import purerigl.nn.patches as patches_module

    spent = {"s": 0.0, "calls": 0}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - t0
                spent["calls"] += 1

        return wrapper

    saved = [(m, name, getattr(m, name)) for m in (conv_module, patches_module) for name in ("im2col", "col2im")
             if hasattr(m, name)]
    for m, name, fn in saved:
        setattr(m, name, timed(fn))
    try:
        yield spent
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)


def patch_share(step, runs: int = 3) -> dict:
    """Run ``step`` ``runs`` times with :func:`patch_timer`: seconds per step in im2col + col2im, whole
    step seconds, and the fraction."""
    with patch_timer() as spent:
        t0 = time.perf_counter()
        for _ in range(runs):
            step()
        total = time.perf_counter() - t0
    return {"patch_s": spent["s"] / runs, "step_s": total / runs, "fraction": spent["s"] / total if total else None,
            "calls_per_step": spent["calls"] / runs}


def conv_layers(model) -> list:
    """The convolutions of a network (sparse and dense), in network order."""
    return [layer for layer in model.leaves() if isinstance(layer, (SparseConv2d, Conv2d))]


def conv_inputs(model, X) -> dict:
    """The input of every convolution in one forward pass of X, by layer name."""
    layers, seen = conv_layers(model), {}
    for layer in layers:
        def grab(A, layer=layer, forward=layer.forward):
            seen[layer.name] = A
            return forward(A)

        layer.forward = grab  # an instance attribute over the class's method, removed below
    try:
        model.forward(X)
    finally:
        for layer in layers:
            del layer.forward
    return seen


def paired_times(fn_a, fn_b, *, budget_s: float, max_call_s: float, repeat: int = 1000, min_runs: int = 5):
    """Time ``fn_a`` and ``fn_b`` alternately (a, b, a, b, ...): (Timing of a, Timing of b).

    One warm-up call of each, then pairs until ``2 * budget_s`` seconds are spent or ``repeat`` pairs
    are timed, at least ``min_runs`` pairs. Alternating makes a drifting machine load (other jobs
    starting and stopping) fall on both alike, so their ratio holds where two separate medians taken
    minutes apart would not. If a warm-up call took longer than ``max_call_s``, one pair is timed.
    """
    samples = ([], [])
    firsts = []
    for fn in (fn_a, fn_b):
        t0 = time.perf_counter()
        fn()
        firsts.append(time.perf_counter() - t0)
    pairs = 1 if max(firsts) > max_call_s else max(1, repeat)
    floor = 1 if pairs == 1 else min(min_runs, pairs)
    spent = 0.0
    while len(samples[0]) < pairs and (spent < 2 * budget_s or len(samples[0]) < floor):
        for fn, out in zip((fn_a, fn_b), samples):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            out.append(dt)
            spent += dt
    return tuple(Timing(float(np.median(t)), min(t), max(t), len(t)) for t in samples)


def conv_forward_pairs(model, X, dense_layers: dict, dense_inputs: dict, *, budget_s, max_call_s) -> list[dict]:
    """Each sparse convolution's forward on its input in the network, timed in alternation with the
    dense convolution of the same layer (``dense_layers[name]``, on ``dense_inputs[name]``):
    [{"name", "format", "shape", "nnz", "forward_ms", "dense_forward_ms", "ratio"}]."""
    inputs = conv_inputs(model, X)
    rows = []
    for layer in conv_layers(model):
        if not isinstance(layer, SparseConv2d):
            continue
        dense, A, D = dense_layers[layer.name], inputs[layer.name], dense_inputs[layer.name]
        t_sp, t_dense = paired_times(lambda: layer.forward(A), lambda: dense.forward(D), budget_s=budget_s,
                                     max_call_s=max_call_s)
        n_out, n_in = layer.shape
        rows.append({"name": layer.name, "format": type(layer.W).__name__.lower(), "shape": [int(n_out), int(n_in)],
                     "nnz": int(layer.W.nnz), "forward_ms": t_sp.median_s * 1e3,
                     "dense_forward_ms": t_dense.median_s * 1e3, "ratio": t_dense.median_s / t_sp.median_s})
    return rows


def _stored_weights(model) -> int:
    """Connections stored by the weight layers (a dense layer counts n_out * n_in)."""
    return sum(int(row["nnz"]) for row in model.describe())


def _build(name, shape, n_classes, fmt, sparsity, backend, seed):
    return build_model(name, shape, n_classes, fmt=fmt, sparsity=sparsity, backend=backend,
                       rng=np.random.default_rng(seed))


def run_train_cnn(backend, model_names, sparsities, batch, delta_t, *, budget_s, max_call_s, seed, repeat=1000,
                  input_shapes=None, n_classes=10, patch_runs=3):
    """Per model: the training step and topology update of each (method, format) at each sparsity
    against the same network dense (sparsity 0, im2col + BLAS), all in this process; plus the share
    of each step spent in im2col + col2im and the forward of every sparse convolution against the
    dense convolution of the same layer.

    Every sparse step is timed in alternation with the dense network's step (:func:`paired_times`),
    and so is every sparse convolution's forward with its dense twin: the ratios compare times taken
    under the same load. The dense row shows the dense step timed alone, first.
    """
    input_shapes = input_shapes or CNN_INPUT_SHAPES
    results = []
    for name in model_names:
        shape = tuple(input_shapes[name])
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((batch, math.prod(shape))).astype(np.float32)  # flattened rows, as the data sets
        y = rng.integers(0, n_classes, size=batch)
        X_dev = backend.to_device(X)
        dense_model = _build(name, shape, n_classes, "csr", 0.0, backend, seed)
        dense_step = _train_step_fn(dense_model, make_optimizer("sgd", dense_model.parameters(), lr=1e-3,
                                                                momentum=0.9), X, y)
        t_dense = measure(dense_step, budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
        dense_share = patch_share(dense_step, patch_runs)
        dense_convs = {layer.name: layer for layer in conv_layers(dense_model)}
        dense_inputs = conv_inputs(dense_model, X_dev)
        results.append({
            "model": name, "input_shape": list(shape), "method": "dense", "format": "dense", "sparsity": 0.0,
            "batch": batch, "weights": _stored_weights(dense_model), "step_ms": t_dense.median_s * 1e3,
            "dense_step_ms": t_dense.median_s * 1e3, "update_ms": None, "update_amortised_ms": None,
            "step_with_update_ms": t_dense.median_s * 1e3, "dense_ratio": 1.0, "dense_ratio_with_update": 1.0,
            "conv_forward_ms": None, "dense_conv_forward_ms": None, "conv_forward_ratio": None,
            "patch_ms": dense_share["patch_s"] * 1e3, "patch_fraction": dense_share["fraction"],
            "runs": {"step": t_dense.runs, "update": 0}, "conv_layers": [],
        })
        for sparsity in sparsities:
            for method_name, fmt in TRAIN_METHODS:
                row = {"model": name, "input_shape": list(shape), "method": method_name, "format": fmt,
                       "sparsity": sparsity, "batch": batch}
                try:
                    model = _build(name, shape, n_classes, fmt, sparsity, backend, seed)
                except ModelError as err:  # e.g. a condensed layer left with k = 0 inputs per row at 99%
                    results.append({**row, "skipped": " ".join(str(err).split())})
                    continue
                optimizer = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9)
                step = _train_step_fn(model, optimizer, X, y)
                t_step, t_pair = paired_times(step, dense_step, budget_s=budget_s, max_call_s=max_call_s,
                                              repeat=repeat)
                update_ms, runs_update = None, 0
                if method_name != "static":
                    method = make_method(method_name, fmt)
                    budgets = _update_budgets(model, method_name, sparsity)
                    t_up = measure(_update_fn(model, optimizer, method, budgets, np.random.default_rng(seed)),
                                   budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
                    update_ms, runs_update = t_up.median_s * 1e3, t_up.runs
                share = patch_share(step, patch_runs)
                convs = conv_forward_pairs(model, X_dev, dense_convs, dense_inputs, budget_s=budget_s,
                                           max_call_s=max_call_s)
                conv_s = sum(c["forward_ms"] for c in convs) if convs else None
                dense_conv_s = sum(c["dense_forward_ms"] for c in convs) if convs else None
                step_ms, dense_ms = t_step.median_s * 1e3, t_pair.median_s * 1e3
                amortised = step_ms + (update_ms or 0.0) / delta_t
                results.append({
                    **row, "weights": _stored_weights(model), "step_ms": step_ms, "dense_step_ms": dense_ms,
                    "update_ms": update_ms, "update_amortised_ms": None if update_ms is None else update_ms / delta_t,
                    "step_with_update_ms": amortised, "dense_ratio": dense_ms / step_ms,
                    "dense_ratio_with_update": dense_ms / amortised,
                    "conv_forward_ms": conv_s, "dense_conv_forward_ms": dense_conv_s,
                    "conv_forward_ratio": dense_conv_s / conv_s if conv_s else None,
                    "patch_ms": share["patch_s"] * 1e3, "patch_fraction": share["fraction"],
                    "runs": {"step": t_step.runs, "update": runs_update}, "conv_layers": convs,
                })
    return results


#: The step-time targets of the convolutional networks (issue 16 section 3).
CNN_TARGET = "at 90% no sparse step slower than its dense step, at 99% every one faster"


def cnn_targets(results) -> dict:
    """Per model: the target at 90% (every sparse step at most its dense step's time) and at 99% (every
    one faster), each {"met", "n", "n_ok", "worst", "best"} or None where that sparsity was not run;
    and "met" overall (None when neither sparsity was run)."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name and r["method"] != "dense" and "skipped" not in r]
        entry = {}
        for key, sparsity, ok in (("90", 0.9, lambda x: x >= 1.0), ("99", 0.99, lambda x: x > 1.0)):
            rs = [r for r in rows if abs(r["sparsity"] - sparsity) < 1e-9]
            if not rs:
                entry[key] = None
                continue
            worst, best = min(rs, key=lambda r: r["dense_ratio"]), max(rs, key=lambda r: r["dense_ratio"])
            n_ok = sum(ok(r["dense_ratio"]) for r in rs)
            n_skipped = sum(1 for r in results if r["model"] == name and "skipped" in r
                            and abs(r["sparsity"] - sparsity) < 1e-9)
            entry[key] = {"met": n_ok == len(rs), "n": len(rs), "n_ok": n_ok, "n_skipped": n_skipped,
                          "worst": {k: worst[k] for k in ("method", "format")} | {"ratio": worst["dense_ratio"]},
                          "best": {k: best[k] for k in ("method", "format")} | {"ratio": best["dense_ratio"]}}
        measured = [e for e in (entry["90"], entry["99"]) if e is not None]
        entry["met"] = all(e["met"] for e in measured) if measured else None
        out[name] = entry
    return out


def _target_lines(targets: dict) -> list[str]:
    lines = []
    for name, t in targets.items():
        verdict = {True: "met", False: "missed", None: "not measured"}[t["met"]]
        if t["met"] and (t["90"] is None or t["99"] is None):
            verdict = "met where measured"
        lines.append(f"target ({name}): {CNN_TARGET}: {verdict}")
        for key, what, flag in (("90", "sparse steps no slower than dense", "0.9"),
                                ("99", "sparse steps faster than dense", "0.99")):
            e = t[key]
            if e is None:
                lines.append(f"  {key}%: not measured (add --sparsity {flag})")
                continue
            lines.append(
                f"  {key}%: {'met' if e['met'] else 'missed'}: {e['n_ok']} of {e['n']} {what}; dense/sparse from "
                f"{e['worst']['ratio']:.2f}x ({e['worst']['method']} {e['worst']['format']}) to "
                f"{e['best']['ratio']:.2f}x ({e['best']['method']} {e['best']['format']})"
                + (f"; {e['n_skipped']} skipped (see above)" if e["n_skipped"] else ""))
    return lines


def format_train_cnn(report: dict) -> str:
    m = report["meta"]
    lines = header(m, "purerigl bench train --model: one training step (forward, loss, backward, SGD momentum) and "
                      "one topology update of a convolutional network, float32, synthetic inputs")
    shapes = "; ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in m["input_shapes"].items())
    env = ", ".join(f"{k}={v}" for k, v in m.get("thread_env", {}).items()) or "none set"
    lines += [
        f"batch {m['batch']}; input {shapes}; topology update: every sparse layer, drop fraction 0.3, amortised "
        f"over delta_t = {m['delta_t']} steps; thread variables: {env}",
        "dense = the same network with sparsity 0 (Conv2d: im2col + NumPy BLAS; Dense), trained by the same code. "
        "Each sparse step is timed in alternation with the dense step ('dense ms', same load); the dense row "
        "is the dense step timed alone",
        "dense/sp: dense step time / sparse step time (> 1: sparse is faster); '+upd' includes the amortised update",
        "conv fwd: the forward of the row's sparse convolutions (SparseConv2d: im2col, sparse product, layout) summed, "
        "each timed in alternation with the dense Conv2d forward of the same layer ('dense cv'); patch %: share of "
        f"the step in im2col + col2im (over {m['patch_runs']} instrumented step(s))",
        "",
    ]
    head = (f"{'model':<10} {'method':<9} {'format':<9} {'sparsity':>8} {'weights':>9} {'step ms':>9} "
            f"{'dense ms':>9} {'update ms':>10} {'upd/dt ms':>9} {'dense/sp':>9} {'+upd':>7} {'conv fwd':>9} "
            f"{'dense cv':>9} {'conv d/sp':>9} {'patch %':>7}")
    lines += [head, "-" * len(head)]
    skipped = []
    for r in report["results"]:
        lead = f"{r['model']:<10} {r['method']:<9} {r['format']:<9} {r['sparsity']:>8.2f}"
        if "skipped" in r:
            skipped.append(f"skipped {r['model']} {r['method']} {r['format']} {r['sparsity']:.2f}: {r['skipped']}")
            lines.append(f"{lead} {'-':>9} {'skipped':>9}")
            continue
        lines.append(
            f"{lead} {r['weights']:>9} {r['step_ms']:>9.3f} {r['dense_step_ms']:>9.3f} "
            f"{_ms(r['update_ms']):>10} {_ms(r['update_amortised_ms']):>9} "
            f"{_ratio(r['dense_ratio']):>9} {_ratio(r['dense_ratio_with_update']):>7} "
            f"{_ms(r['conv_forward_ms']):>9} {_ms(r['dense_conv_forward_ms']):>9} "
            f"{_ratio(r['conv_forward_ratio']):>9} {_pct(r['patch_fraction']):>7}"
        )
    lines += [""] + skipped + _target_lines(report["meta"]["targets"])
    return "\n".join(lines)


@bench.command()
@click.option("--hidden", "hidden_list", multiple=True, default=("300,100", "4096,4096"), show_default=True,
              help="Hidden widths of one network, comma-separated (repeatable: one network each); "
                   "784 inputs, 10 classes.")
@click.option("--model", "models", type=click.Choice(list(CNN_INPUT_SHAPES)), multiple=True,
              help="Time this convolutional network instead of the MLPs (repeatable), on synthetic inputs of "
                   "shape " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in CNN_INPUT_SHAPES.items())
                   + "; also the conv forward against the dense one and the share of the step in im2col + col2im."
                   "  [default: the MLPs of --hidden]")
@click.option("--sparsity", "sparsities", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True),
              multiple=True, default=(0.9, 0.99), show_default=True, help="Sparsity (repeatable).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size.")
@click.option("--delta-t", "delta_t", type=click.IntRange(min=1), default=100, show_default=True,
              help="Steps between topology updates (the update time is divided by it).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Most timed runs per measurement.  [default: until --budget is spent]")
@common_options
@click.pass_context
def train(ctx, hidden_list, models, sparsities, batch, delta_t, steps, budget, max_call, threads, busy, json_path,
          quick, seed, backend):
    """One training step and one topology update per method and format, against the dense network."""

    if models:
        if ctx.get_parameter_source("hidden_list") != click.core.ParameterSource.DEFAULT:
            raise click.BadParameter("--hidden sets the MLP's widths; it does not apply with --model", ctx=ctx,
                                     param_hint="'--hidden'")
        return _train_cnn(ctx, models, sparsities, batch, delta_t, steps, budget, max_call, threads, busy, json_path,
                          seed, backend)
    q = QUICK["train"]
    hidden_list = quick_default(ctx, "hidden_list", hidden_list, q["hidden"])
    sparsities = quick_default(ctx, "sparsities", sparsities, q["sparsities"])
    budget = quick_default(ctx, "budget", budget, 0.005)
    for h in hidden_list:
        try:
            parse_hidden(h)
        except Exception as err:
            raise click.BadParameter(" ".join(str(err).split()), ctx=ctx, param_hint="'--hidden'") from None
    ctx.params.update(hidden_list=hidden_list, sparsities=sparsities, budget=budget)
    products: list = []
    with thread_limit(threads), busy_processes(busy):
        meta = machine_meta()
        results = run_train(backend, hidden_list, sparsities, batch, delta_t, budget_s=budget, max_call_s=max_call,
                            seed=seed, repeat=steps or 1000, products_out=products)
    meta.update(benchmark="train", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, seed=seed, batch=batch, delta_t=delta_t, optimizer="sgd momentum 0.9", busy=busy,
                dense_products=products,
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                hidden=list(hidden_list), sparsities=list(sparsities))
    report = {"meta": meta, "results": results}
    finish(report, format_train(report), json_path)


def _thread_env() -> dict:
    """The thread-count variables set in the environment (BLAS reads them once, at load)."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    return {k: os.environ[k] for k in names if k in os.environ}


def _train_cnn(ctx, models, sparsities, batch, delta_t, steps, budget, max_call, threads, busy, json_path, seed,
               backend):
    """``bench train --model``: the convolutional networks (see :func:`run_train_cnn`)."""
    from purerigl.nn.patches import check_host_backend

    try:
        check_host_backend(backend, "convolutional networks")
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param_hint="'--backend'") from None
    q = QUICK["train_cnn"]
    sparsities = quick_default(ctx, "sparsities", sparsities, q["sparsities"])
    batch = quick_default(ctx, "batch", batch, q["batch"])
    budget = quick_default(ctx, "budget", budget, 0.005)
    input_shapes = q["input_shapes"] if ctx.params.get("quick") else CNN_INPUT_SHAPES
    ctx.params.update(sparsities=sparsities, batch=batch, budget=budget, hidden_list=None)  # no --hidden echoed
    patch_runs = 1 if ctx.params.get("quick") else 3
    with thread_limit(threads), busy_processes(busy):
        meta = machine_meta()
        results = run_train_cnn(backend, models, sparsities, batch, delta_t, budget_s=budget, max_call_s=max_call,
                                seed=seed, repeat=steps or 1000, input_shapes=input_shapes, patch_runs=patch_runs)
    meta.update(benchmark="train-cnn", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, seed=seed, batch=batch, delta_t=delta_t, optimizer="sgd momentum 0.9", busy=busy,
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                models=list(models), sparsities=list(sparsities), patch_runs=patch_runs,
                input_shapes={name: list(input_shapes[name]) for name in models}, thread_env=_thread_env(),
                target=CNN_TARGET, targets=cnn_targets(results))
    report = {"meta": meta, "results": results}
    finish(report, format_train_cnn(report), json_path)
