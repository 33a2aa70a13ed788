"""`purerigl bench train`: one training step and one topology update per method against the dense network.

This module holds the command and the MLP bench (``--hidden``); ``--model`` hands over to the network
benches: ``_train_cnn.py`` (lenet5, vgg-small, resnet20) and ``_train_vit.py`` (vit-tiny). What they
share (the timed step and update, alternated timing) is in ``_train_common.py``.
"""

from __future__ import annotations

import click
import numpy as np

from purerigl.nn import build_mlp, parse_hidden

from .._models import vit_options
from .._options import FiniteFloatRange
from . import bench
from ._busy import busy_processes
from ._shared import (
    let_blas_threads_sleep,
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
from ._train_cnn import train_cnn_command
from ._train_common import loadavg
from ._train_common import pct as _pct
from ._train_common import sig as _sig
from ._train_common import method_calls
from ._train_vit import VIT_MODEL, VIT_OPTION_NAMES, VIT_SPARSITIES, train_vit_command

# ----------------------------------------------------------------------------------------------- train


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
            step, update = method_calls(model, method_name, fmt, sparsity, X, y, seed)
            t_step = measure(step, budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
            if method_name == "dense":  # the dense step ran on BLAS
                let_blas_threads_sleep(budget_s)
            step_ms = t_step.median_s * 1e3
            update_ms = None
            runs_update = 0
            if update is not None:
                t_up = measure(update, budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
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



@bench.command()
@click.option("--hidden", "hidden_list", multiple=True, default=("300,100", "4096,4096"), show_default=True,
              help="Hidden widths of one network, comma-separated (repeatable: one network each); "
                   "784 inputs, 10 classes.")
@click.option("--model", "models", type=click.Choice([*CNN_INPUT_SHAPES, VIT_MODEL]), multiple=True,
              help="Time this network instead of the MLPs (repeatable), on synthetic inputs of shape "
                   + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in CNN_INPUT_SHAPES.items())
                   + "; also the conv forward against the dense one and the share of the step in im2col + col2im. "
                   f"Or {VIT_MODEL} (alone; 1x28x28 inputs, --vit-* options): the step against the dense ViT, the "
                   "attention's share of the step, and each block projection's forward + backward against the "
                   "dense products of its shape."
                   "  [default: the MLPs of --hidden]")
@click.option("--sparsity", "sparsities", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True),
              multiple=True, default=(0.9, 0.99), show_default=True,
              help="Sparsity (repeatable); with --model vit-tiny the default is "
                   + " and ".join(f"{s:g}" for s in VIT_SPARSITIES) + ".")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size.")
@click.option("--delta-t", "delta_t", type=click.IntRange(min=1), default=100, show_default=True,
              help="Steps between topology updates (the update time is divided by it).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Most timed runs per measurement.  [default: until --budget is spent]")
@vit_options
@common_options
@click.pass_context
def train(ctx, hidden_list, models, sparsities, batch, delta_t, steps, budget, max_call, threads, busy, json_path,
          quick, seed, backend, **vit):
    """One training step and one topology update per method and format, against the dense network."""

    if VIT_MODEL not in models:
        for name in VIT_OPTION_NAMES:
            if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
                flag = "--" + name.replace("_", "-")
                raise click.BadParameter(f"{flag} sets the vision transformer; it applies with --model {VIT_MODEL} "
                                         "only", ctx=ctx, param_hint=f"'{flag}'")
        ctx.params.update({name: None for name in VIT_OPTION_NAMES})  # not echoed in the command line
    if models:
        if ctx.get_parameter_source("hidden_list") != click.core.ParameterSource.DEFAULT:
            raise click.BadParameter("--hidden sets the MLP's widths; it does not apply with --model", ctx=ctx,
                                     param_hint="'--hidden'")
        if VIT_MODEL in models:
            if set(models) != {VIT_MODEL}:
                raise click.BadParameter(f"--model {VIT_MODEL} is timed alone; time the convolutional networks in "
                                         "another command", ctx=ctx, param_hint="'--model'")
            return train_vit_command(ctx, sparsities, batch, delta_t, steps, budget, max_call, threads, busy,
                                     json_path, seed, backend, vit)
        return train_cnn_command(ctx, models, sparsities, batch, delta_t, steps, budget, max_call, threads, busy,
                                 json_path, seed, backend)
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
                dense_products=products, loadavg_end=loadavg(), hidden=list(hidden_list), sparsities=list(sparsities))
    report = {"meta": meta, "results": results}
    finish(report, format_train(report), json_path)


