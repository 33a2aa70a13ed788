"""A sparse convolution's products from its input against through the patch matrix, in one process.

The cpu backend's ``matmul_fm`` and ``sddmm_fm`` take a convolution's patch matrix as its input X
(:class:`purerigl.kernels.patch_operand.Patches`) at stride 1 for every host format and compute
from X (:mod:`purerigl.kernels.cpu.conv_direct`), so a training step builds no patch matrix
(only a topology update does, for the growth scores). Before, the forward built P^T = im2col_t(X)
(C kh kw, B Ho Wo), the product read it, and the backward's value gradient read it again.

This script times, alternating the two routes (:func:`~purerigl.cli.bench._train_common.paired_times`),
for every stride-1 sparse convolution of the built-in networks at their bench input shapes (MNIST
1x28x28 for LeNet-5 and VGG-small, CIFAR 3x32x32 for ResNet-20; batch 64) with the filter matrices of
``bench train``'s RigL (CSR), SRigL (Condensed) and diag-rigl (Diagonal) rows (and, as a whole step
only, DynaDiag's soft phase, whose gated layers take the patches too):

- the forward product: ``matmul_fm(W, im2col_t(X))`` against ``matmul_fm(W, Patches(X))`` (the
  same bits for CSR and Condensed, the script fails if not; Diagonal to float32 rounding);
- the value gradient: ``sddmm_fm(W, P^T, dY^T)`` with P^T already built (the backward's share
  before) against ``sddmm_fm(W, Patches(X), dY^T)`` (the same sums grouped by sample: they agree to
  float32 rounding; the script fails beyond 1e-4 of the largest magnitude);

and a whole training step of each network (forward, loss, backward, SGD momentum) by each route
(the cpu backend's ``takes_patches`` answering no for the built route). Run::

    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_direct.py --threads 1 --json benchmarks/results/conv-direct-2core.json
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

import click
import numba
import numpy as np

import purerigl.kernels.cpu as cpu_module
from purerigl.cli.bench._shared import CNN_INPUT_SHAPES, machine_meta
from purerigl.cli.bench._train_cnn import conv_inputs
from purerigl.cli.bench._train_common import loadavg, method_calls, paired_times, train_step_fn
from purerigl.kernels import get_backend
from purerigl.kernels.patch_operand import Patches
from purerigl.nn import build_model
from purerigl.nn.conv import SparseConv2d
from purerigl.optim import SGD
from purerigl.report.provenance import describe_code

#: The rows timed: (method, format) of ``purerigl bench train`` whose products take Patches.
ROWS = (("rigl", "csr"), ("srigl", "condensed"), ("diag-rigl", "diagonal"))

#: Rows timed as a whole step only: DynaDiag's soft phase (:func:`~purerigl.cli.bench._train_common.method_calls`
#: gates the diagonal layers: 2K stored diagonals, each scaled by its gate), whose products are those of
#: diag-rigl's rows on a gated copy of the values; frozen, a DynaDiag network is diag-rigl's.
STEP_ONLY_ROWS = (("dynadiag", "diagonal"),)

#: The formats whose forward from X has the bits of the product through P^T (the others: to rounding).
SAME_BITS = ("csr", "condensed")

#: Largest difference allowed between the two routes' value gradients, relative to their magnitude.
TOLERANCE = 1e-4


@contextlib.contextmanager
def built_route():
    """The cpu backend's convolutions build their patch matrix (``takes_patches`` answers no)."""
    real = cpu_module.takes_patches
    cpu_module.takes_patches = lambda *args: False
    try:
        yield
    finally:
        cpu_module.takes_patches = real


def layer_rows(model_name, method, fmt, sparsity, batch, budget_s, seed) -> list[dict]:
    be = get_backend("cpu")
    shape = CNN_INPUT_SHAPES[model_name]
    rng = np.random.default_rng(seed)
    model = build_model(model_name, shape, 10, fmt=fmt, sparsity=sparsity, backend=be, rng=np.random.default_rng(seed))
    X = rng.standard_normal((batch, int(np.prod(shape)))).astype(np.float32)
    inputs = conv_inputs(model, X)
    rows = []
    for layer in model.leaves():
        if not isinstance(layer, SparseConv2d) or layer.stride != 1:
            continue
        W = layer.linear.matrix
        A = inputs[layer.name]  # (batch, c_in, H, W)
        conv = (layer.kh, layer.kw, layer.stride, layer.padding)
        PT = be.im2col_t(A, *conv)  # (c_in kh kw, batch Ho Wo)
        held = Patches(A, *conv)
        dYT = rng.standard_normal((W.shape[0], PT.shape[1])).astype(np.float32)  # (c_out, batch Ho Wo)
        Y_built, Y_direct = be.matmul_fm(W, PT), be.matmul_fm(W, held)
        same = bool(np.array_equal(Y_built, Y_direct))
        fdiff = float(np.abs(Y_built - Y_direct).max(initial=0.0) / max(np.abs(Y_built).max(initial=0.0), 1e-30))
        g_built, g_direct = be.sddmm_fm(W, PT, dYT), be.sddmm_fm(W, held, dYT)
        diff = float(np.abs(g_built - g_direct).max(initial=0.0) / max(np.abs(g_built).max(initial=0.0), 1e-30))
        fwd_direct, fwd_built = paired_times(lambda: be.matmul_fm(W, held), lambda: be.matmul_fm(W, be.im2col_t(A, *conv)),
                                             budget_s=budget_s, max_call_s=5.0)
        grad_direct, grad_built = paired_times(lambda: be.sddmm_fm(W, held, dYT), lambda: be.sddmm_fm(W, PT, dYT),
                                               budget_s=budget_s, max_call_s=5.0)
        rows.append({"model": model_name, "method": method, "format": fmt, "layer": layer.name,
                     "shape": list(W.shape), "stored": int(W.values.size), "input": list(A.shape),
                     "patch_mb": PT.nbytes / 2**20,
                     "forward_built_ms": fwd_built.median_s * 1e3, "forward_direct_ms": fwd_direct.median_s * 1e3,
                     "grad_built_ms": grad_built.median_s * 1e3, "grad_direct_ms": grad_direct.median_s * 1e3,
                     "forward_same_bits": same, "forward_relative_difference": fdiff,
                     "grad_relative_difference": diff})
    return rows


def step_row(model_name, method, fmt, sparsity, batch, budget_s, seed) -> dict:
    """A training step of the network by each route, alternating."""
    shape = CNN_INPUT_SHAPES[model_name]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, int(np.prod(shape)))).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    steps = {}
    for route in ("direct", "built"):
        model = build_model(model_name, shape, 10, fmt=fmt, sparsity=sparsity, backend="cpu",
                            rng=np.random.default_rng(seed))
        if method == "dynadiag":  # gated as purerigl train gates it; the step adds alpha's Adam step
            step, _ = method_calls(model, method, fmt, sparsity, X, y, seed)
        else:
            step = train_step_fn(model, SGD(model.parameters(), lr=1e-3, momentum=0.9), X, y)
        if route == "built":
            def step(inner=step):
                with built_route():
                    inner()
        steps[route] = step
    direct, built = paired_times(steps["direct"], steps["built"], budget_s=budget_s, max_call_s=10.0)
    return {"model": model_name, "method": method, "format": fmt, "step_built_ms": built.median_s * 1e3,
            "step_direct_ms": direct.median_s * 1e3, "speedup": built.median_s / direct.median_s, "runs": direct.runs}


def tables(layers, steps) -> str:
    lines = ["| model | format | layer | filters | stored | input | P^T MB | forward built ms | from X ms | speed-up | "
             "value grad built ms | from X ms | speed-up | rel. diff |",
             "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in layers:
        lines.append(
            f"| {r['model']} | {r['format']} | {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['stored']} | "
            f"{'x'.join(map(str, r['input']))} | {r['patch_mb']:.1f} | {r['forward_built_ms']:.2f} | "
            f"{r['forward_direct_ms']:.2f} | {r['forward_built_ms'] / r['forward_direct_ms']:.2f}x | "
            f"{r['grad_built_ms']:.2f} | {r['grad_direct_ms']:.2f} | {r['grad_built_ms'] / r['grad_direct_ms']:.2f}x | "
            f"{r['grad_relative_difference']:.1e} |")
    lines += ["", "| model | method | format | step, patch matrix built ms | step from X ms | speed-up | pairs |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in steps:
        lines.append(f"| {r['model']} | {r['method']} | {r['format']} | {r['step_built_ms']:.1f} | "
                     f"{r['step_direct_ms']:.1f} | {r['speedup']:.2f}x | {r['runs']} |")
    return "\n".join(lines)


@click.command()
@click.option("--model", "model_names", type=click.Choice(sorted(CNN_INPUT_SHAPES)), multiple=True,
              default=("lenet5", "vgg-small", "resnet20"), show_default=True)
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True)
@click.option("--batch", type=click.IntRange(min=4), default=64, show_default=True)
@click.option("--budget", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Seconds of timed pairs per row (at least 5 pairs).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Numba threads [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(model_names, sparsity, batch, budget, threads, seed, json_path):
    """Time a sparse convolution's products from its input against through the patch matrix."""
    if threads is not None:
        numba.set_num_threads(threads)
    meta = machine_meta()
    layers, steps = [], []
    for model_name in model_names:
        for method, fmt in ROWS:
            layers += layer_rows(model_name, method, fmt, sparsity, batch, budget, seed)
            steps.append(step_row(model_name, method, fmt, sparsity, batch, 4 * budget, seed))
        for method, fmt in STEP_ONLY_ROWS:
            steps.append(step_row(model_name, method, fmt, sparsity, batch, 4 * budget, seed))
    meta.update({"command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "loadavg_end": loadavg(),
                 "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "models": list(model_names),
                 "sparsity": sparsity, "batch": batch})
    click.echo(f"conv products on cpu, from the input against through the patch matrix; {describe_code(meta['code'])}; "
               f"sparsity {sparsity:g}, batch {batch}")
    click.echo(f"numba {meta['numba']['num_threads']} threads; load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    click.echo(tables(layers, steps))
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "layers": layers, "steps": steps}, indent=2) + "\n")
    if not all(r["forward_same_bits"] for r in layers if r["format"] in SAME_BITS):
        raise click.ClickException("the forward from the input differs from the product with the built patch matrix")
    for what in ("forward", "grad"):
        worst = max((r[f"{what}_relative_difference"] for r in layers), default=0.0)
        if worst > TOLERANCE:
            raise click.ClickException(f"the {'forwards' if what == 'forward' else 'value gradients'} differ by "
                                       f"{worst:.2e} of their magnitude (> {TOLERANCE:g})")


if __name__ == "__main__":
    main()
