"""`purerigl bench growth`: one topology update per method as the layer widens, beside one dense dY^T X."""

from __future__ import annotations

import os

import click
import numpy as np

from purerigl.dst import LayerUpdate, make_method
from purerigl.nn import SparseLinear
from purerigl.optim import make_optimizer
from purerigl.formats.budget import layer_budget, random_layer

from .._options import FiniteFloatRange
from . import bench
from ._busy import busy_processes
from ._shared import (
    GROWTH_METHODS,
    MAX_DENSE,
    QUICK,
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

# ---------------------------------------------------------------------------------------------- growth


def run_growth(backend, widths, gse_widths, batch, sparsity, methods, *, budget_s, max_call_s, seed, fan_in=None):
    """Time one update per (width, method); with ``fan_in`` the sparsity of width w is 1 - fan_in / w
    (connections grow linearly with the width), else it is ``sparsity`` at every width."""

    rng = np.random.default_rng(seed)
    results, notes = [], []
    plan = [(w, methods) for w in widths] + [(w, tuple(m for m in GROWTH_METHODS if m[0] == "gse"))
                                             for w in gse_widths if w not in widths]
    for width, method_list in plan:
        shape = (width, width)
        sparsity_w = 1.0 - fan_in / width if fan_in else sparsity
        X = rng.standard_normal((batch, width)).astype(np.float32)
        dY = rng.standard_normal((batch, width)).astype(np.float32)
        dense = None
        if width * width <= MAX_DENSE:
            Xc, dYT = X, np.ascontiguousarray(dY.T)
            dense = measure(lambda: dYT @ Xc, budget_s=budget_s, max_call_s=max_call_s, compiled=True)
        else:
            notes.append(f"width {width}: dense dY^T X skipped ({width * width * 4 / 2**30:.0f} GiB > "
                         f"{MAX_DENSE * 4 / 2**30:.0f} GiB)")
        for method_name, fmt in method_list:
            W = random_layer(fmt, shape, sparsity_w, rng)
            layer = SparseLinear(W, backend=backend, name="layer0")
            layer.forward(layer.backend.to_device(X))
            layer.backward(layer.backend.to_device(dY))  # sets last_input / last_output_grad, fills the gradients
            optimizer = make_optimizer("sgd", layer.parameters(), lr=1e-3, momentum=0.9)
            optimizer.step()
            layer.sync_to_host()  # the method reads W.values on the host (a no-op on the host backends)
            method = make_method(method_name, fmt)
            budget = layer_budget(shape, sparsity_w) if method_name == "srigl" else int(W.nnz)
            urng = np.random.default_rng(seed)

            def update():
                method.update(LayerUpdate(layer=layer, optimizer=optimizer, alpha=0.3, rng=urng, budget=budget,
                                          is_output=False))

            t = measure(update, budget_s=budget_s, max_call_s=max_call_s)
            ms = t.median_s * 1e3
            nnz = int(layer.W.nnz)
            # the sparse weight gradient at the stored entries (the sddmm every step does): nnz * batch
            # multiply-adds at the rate of the dense dY^T X measured above (issue 19's limit)
            limit_ms = product_limit_s(dense.median_s, nnz, width, width, batch) * 1e3 if dense else None
            results.append({
                "width": width, "method": method_name, "format": fmt, "sparsity": sparsity_w, "batch": batch,
                "nnz": nnz, "update_ms": ms,
                "dense_xtdy_ms": dense.median_s * 1e3 if dense else None,
                "update_over_dense": ms / (dense.median_s * 1e3) if dense else None,
                "limit_ms": limit_ms,
                "update_over_limit": ms / limit_ms if limit_ms else None,
                "runs": {"update": t.runs, "dense": dense.runs if dense else 0},
            })
    return results, notes


def format_growth(report: dict) -> str:
    m = report["meta"]
    lines = header(m, "purerigl bench growth: one topology update of a square layer (drop fraction 0.3) as it "
                      "widens, beside one dense dY^T X")
    density = (f"fan-in {m['fan_in']} (sparsity 1 - {m['fan_in']}/width)" if m.get("fan_in")
               else f"sparsity {m['sparsity']}")
    lines += [f"batch {m['batch']}, {density}; update/dense: update time / dense dY^T X time "
              "(< 1: the update is cheaper than forming the dense gradient)",
              "limit: the layer's sparse gradient at its stored entries (nnz * batch multiply-adds, the sddmm of "
              "every step) at the rate of the dense dY^T X measured in this run, i.e. dense ms * nnz / width^2; "
              "upd/limit: update time in units of it (the update is not one product: a scale, not a bound)"]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append("")
    head = (f"{'width':>7} {'method':<9} {'format':<9} {'nnz':>11} {'update ms':>11} {'dense XtdY ms':>14} "
            f"{'update/dense':>13} {'limit ms':>10} {'upd/limit':>10}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['width']:>7} {r['method']:<9} {r['format']:<9} {r['nnz']:>11} {r['update_ms']:>11.3f} "
            f"{_ms(r['dense_xtdy_ms']):>14} {_ratio(r['update_over_dense']):>13} {_sig(r.get('limit_ms')):>10} "
            f"{_ratio(r.get('update_over_limit')):>10}"
        )
    return "\n".join(lines)


def _sig(x) -> str:
    return "-" if x is None else f"{x:.4g}"


@bench.command()
@click.option("--widths", "widths", type=click.IntRange(min=2), multiple=True,
              default=(1024, 2048, 4096, 8192, 16384), show_default=True, help="Layer width (repeatable).")
@click.option("--gse-widths", "gse_widths", type=click.IntRange(min=2), multiple=True, default=(32768, 65536),
              show_default=True, help="Further widths timed for GSE only (repeatable).")
@click.option("--method", "methods", type=click.Choice([m for m, _ in GROWTH_METHODS]), multiple=True,
              default=tuple(m for m, _ in GROWTH_METHODS), show_default=True, help="Method (repeatable).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size.")
@click.option("--sparsity", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.99,
              show_default=True, help="Sparsity of the layer.")
@click.option("--fan-in", "fan_in", type=click.IntRange(min=1), default=None,
              help="Instead of --sparsity: this many connections per row at every width (nnz grows "
              "linearly with the width, as in a wide sparse network), i.e. sparsity 1 - fan_in / width.")
@common_options
@click.pass_context
def growth(ctx, widths, gse_widths, methods, batch, sparsity, fan_in, budget, max_call, threads, busy, json_path,
           quick, seed, backend):
    """One topology update per method as a square layer widens, beside one dense X^T dY product."""
    q = QUICK["growth"]
    widths = quick_default(ctx, "widths", widths, q["widths"])
    gse_widths = quick_default(ctx, "gse_widths", gse_widths, q["gse_widths"])
    batch = quick_default(ctx, "batch", batch, q["batch"])
    sparsity = quick_default(ctx, "sparsity", sparsity, q["sparsity"])
    budget = quick_default(ctx, "budget", budget, 0.005)
    ctx.params.update(widths=widths, gse_widths=gse_widths, batch=batch, sparsity=sparsity, budget=budget)
    chosen = tuple(m for m in GROWTH_METHODS if m[0] in methods)
    if fan_in is not None and fan_in >= min((*widths, *gse_widths)):
        raise click.BadParameter(f"--fan-in {fan_in} must be below every width (smallest: "
                                 f"{min((*widths, *gse_widths))})", param_hint="'--fan-in'")
    with thread_limit(threads), busy_processes(busy):
        meta = machine_meta()
        results, notes = run_growth(backend, widths, gse_widths, batch, sparsity, chosen, budget_s=budget,
                                    max_call_s=max_call, seed=seed, fan_in=fan_in)
    meta.update(benchmark="growth", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, seed=seed, batch=batch, sparsity=None if fan_in else sparsity, fan_in=fan_in,
                alpha=0.3, busy=busy,
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                widths=list(widths), gse_widths=list(gse_widths), methods=[m for m, _ in chosen])
    report = {"meta": meta, "notes": notes, "results": results}
    finish(report, format_growth(report), json_path)


__all__ = ["bench"]
