"""DynaDiag's soft step in the row layout against the feature-major layout, in one process.

Before commit 47dfff5, :func:`purerigl.nn.layers.has_feature_major_step` answered False for
DynaDiag's :class:`~purerigl.nn.GatedDiagonalLinear`, so the MLP and the ViT's token-wise layers ran
its soft (gated) step in the row layout: ``matmul`` / ``matmul_t`` / ``sddmm``, each transposing its
batch operand, with transposes around the layer where its neighbours ran feature-major. The gated
layer now has its own feature-major step (written for convolutions), and the predicate accepts every
SparseLinear subclass that overrides each feature-major method whose row twin it overrides.

This script times one training step of the DynaDiag soft phase (forward, loss, backward, SGD with
momentum, alpha's Adam step: :func:`purerigl.cli.bench._train_common.method_calls`) of the same network
both ways, alternating the two (:func:`~purerigl.cli.bench._train_common.paired_times`): "row" forces
the old answer for gated layers, "fm" is the code as it is. Before timing, one forward of each from
the same weights is compared (they must agree to float32 rounding).

Run::

    OPENBLAS_NUM_THREADS=1 python benchmarks/gated_layout.py --threads 1 --json benchmarks/results/gated-layout-2core.json
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path

import click
import numba
import numpy as np

import purerigl.nn.attention as attention_module
import purerigl.nn.model as model_module
from purerigl.cli.bench._shared import machine_meta
from purerigl.cli.bench._train_common import loadavg, method_calls, paired_times
from purerigl.kernels import get_backend
from purerigl.nn import GatedDiagonalLinear, build_mlp, build_model
from purerigl.nn.layers import has_feature_major_step
from purerigl.report.provenance import describe_code

#: vit-tiny's options here (those of `purerigl train --model vit-tiny` on MNIST).
VIT_ARCH = {"patch": 7, "width": 64, "depth": 4, "heads": 4, "mlp_ratio": 2}


def _row_for_gated(layer) -> bool:
    """The predicate before the change: a gated layer has no feature-major step."""
    return has_feature_major_step(layer) and not isinstance(layer, GatedDiagonalLinear)


def _with_predicate(predicate, fn):
    """``fn`` run with ``predicate`` as the layout test of the MLP and the token-wise layers."""

    def call():
        model_module.has_feature_major_step = predicate
        attention_module.has_feature_major_step = predicate
        try:
            return fn()
        finally:
            model_module.has_feature_major_step = has_feature_major_step
            attention_module.has_feature_major_step = has_feature_major_step

    return call


def _build(network: str, sparsity: float, backend, seed: int):
    if network == "mlp":
        return build_mlp(784, "300,100", 10, fmt="diagonal", sparsity=sparsity, backend=backend,
                         rng=np.random.default_rng(seed))
    return build_model("vit-tiny", (1, 28, 28), 10, fmt="diagonal", sparsity=sparsity, backend=backend,
                       rng=np.random.default_rng(seed), **VIT_ARCH)


def run(networks, batches, sparsity, budget_s, seed) -> list[dict]:
    backend = get_backend("cpu")
    rows = []
    for network in networks:
        for batch in batches:
            rng = np.random.default_rng(seed)
            X = rng.standard_normal((batch, 784)).astype(np.float32)
            y = rng.integers(0, 10, size=batch)
            steps, logits = {}, {}
            for layout, predicate in (("row", _row_for_gated), ("fm", has_feature_major_step)):
                model = _build(network, sparsity, backend, seed)
                step, _ = method_calls(model, "dynadiag", "diagonal", sparsity, X, y, seed)
                logits[layout] = _with_predicate(predicate, lambda m=model: np.array(m.forward(backend.to_device(X))))()
                steps[layout] = _with_predicate(predicate, step)
            scale = float(np.max(np.abs(logits["row"]))) or 1.0
            difference = float(np.max(np.abs(logits["row"] - logits["fm"]))) / scale
            t_row, t_fm = paired_times(steps["row"], steps["fm"], budget_s=budget_s, max_call_s=5.0)
            rows.append({"network": network, "batch": batch, "sparsity": sparsity,
                         "row_ms": t_row.median_s * 1e3, "fm_ms": t_fm.median_s * 1e3,
                         "speedup": t_row.median_s / t_fm.median_s, "runs": t_row.runs,
                         "logits_max_rel_difference": difference})
    return rows


def table(rows) -> str:
    lines = ["| network | batch | row layout ms | feature-major ms | row / fm | runs | logits max rel. diff |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {r['row_ms']:.3f} | {r['fm_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['runs']} | {r['logits_max_rel_difference']:.1e} |")
    return "\n".join(lines)


@click.command()
@click.option("--network", "networks", multiple=True, type=click.Choice(["mlp", "vit-tiny"]),
              default=("mlp", "vit-tiny"), show_default=True)
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=4), default=(64, 256), show_default=True)
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True)
@click.option("--budget", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds of timed pairs per row (at least 5 pairs).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Numba threads [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(networks, batches, sparsity, budget, threads, seed, json_path):
    """Time DynaDiag's soft training step with its gated layers in the row and the feature-major layout."""
    if threads is not None:
        numba.set_num_threads(threads)
    meta = machine_meta()  # machine, threads, library versions, code, load at the start
    rows = run(networks, batches, sparsity, budget, seed)
    meta.update({"command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "loadavg_end": loadavg(),
                 "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "vit": VIT_ARCH})
    click.echo(f"DynaDiag soft step, row vs feature-major layout of the gated layers; {describe_code(meta['code'])}")
    click.echo(f"numba {meta['numba']['num_threads']} threads; load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    click.echo(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if any(not math.isfinite(r["logits_max_rel_difference"]) or r["logits_max_rel_difference"] > 1e-4 for r in rows):
        raise click.ClickException("the two layouts disagree beyond float32 rounding")


if __name__ == "__main__":
    main()
