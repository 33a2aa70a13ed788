"""A sparse convolution's input gradient, fused against through the patch matrix, in one process.

The cpu backend's ``conv_input_grad_fm(W, dY^T, ...)`` computes col2im_t(W^T dY^T). At stride 1 it
runs the kernel of :mod:`purerigl.kernels.cpu.conv_products`: every stored weight adds its
output-gradient plane, shifted, into the input gradient, and the (c_in kh kw, B Ho Wo) product W^T dY^T
is never written. Before (and at other strides) the same gradient took the backend's ``matmul_t_fm``,
which writes that product, then ``col2im_t``, which reads it back.

This script times both routes on the cpu backend (or, with ``--backend cuda``, on the GPU, where
``conv_input_grad_fm`` is one gather kernel, :mod:`purerigl.kernels.cuda.conv_products`, against the
cuda backend's ``matmul_t_fm`` then ``col2im_t``; each call synchronised), alternating them
(:func:`~purerigl.cli.bench._train_common.paired_times`), for every sparse convolution of the built-in
networks at their bench input shapes (``purerigl bench train``: MNIST 1x28x28 for LeNet-5 and
VGG-small, CIFAR 3x32x32 for ResNet-20; batch 64), with the filter matrices each method row of
``bench train`` trains (DynaDiag's soft phase stores 2K diagonals) and random output gradients. The
two routes add the same terms in another order, so they agree to float32 rounding; the script fails
when the largest difference exceeds 1e-4 of the largest magnitude. Run::

    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_input_grad.py --threads 1 --json benchmarks/results/conv-input-grad-2core.json
    python benchmarks/conv_input_grad.py --backend cuda --json <OUT>/conv-input-grad-gpu.json   # on a GPU machine
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click
import numba
import numpy as np

from purerigl.cli.bench._shared import CNN_INPUT_SHAPES, machine_meta
from purerigl.cli.bench._train_cnn import conv_inputs
from purerigl.cli.bench._train_common import loadavg, method_calls, paired_times
from purerigl.errors import BackendError
from purerigl.kernels import get_backend
from purerigl.nn import build_model
from purerigl.nn.conv import SparseConv2d
from purerigl.report.provenance import describe_code

#: The rows timed: (method, format) of ``purerigl bench train``.
ROWS = (("rigl", "csr"), ("srigl", "condensed"), ("static", "diagonal"), ("dynadiag", "diagonal"))

#: Largest difference allowed between the two routes, relative to the largest magnitude of the result.
TOLERANCE = 1e-4


def run(model_names, sparsity, batch, budget_s, seed, backend="cpu") -> list[dict]:
    be = get_backend(backend)
    rows = []
    for model_name in model_names:
        shape = CNN_INPUT_SHAPES[model_name]
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((batch, int(np.prod(shape)))).astype(np.float32)
        y = rng.integers(0, 10, size=batch)
        for method, fmt in ROWS:
            model = build_model(model_name, shape, 10, fmt=fmt, sparsity=sparsity, backend=be,
                                rng=np.random.default_rng(seed))
            method_calls(model, method, fmt, sparsity, X, y, seed)  # DynaDiag: gate the layers (2K diagonals)
            inputs = conv_inputs(model, be.to_device(X))
            for layer in model.leaves():
                if not isinstance(layer, SparseConv2d):
                    continue
                W = layer.linear.matrix
                A = inputs[layer.name]  # (batch, c_in, H, W)
                conv = (layer.kh, layer.kw, layer.stride, layer.padding)
                Y = layer.forward(A)  # (batch, c_out, Ho, Wo)
                dYT = be.to_device(rng.standard_normal((W.shape[0], Y.size // W.shape[0])).astype(np.float32))  # (c_out, B')
                X_shape = tuple(int(n) for n in A.shape)

                def fused():
                    dX = be.conv_input_grad_fm(W, dYT, X_shape, *conv)
                    be.synchronize()  # a no-op on the cpu backend; on cuda the clock then counts the kernel
                    return dX

                def through_patches():
                    dX = be.col2im_t(be.matmul_t_fm(W, dYT), X_shape, *conv)
                    be.synchronize()
                    return dX

                a, b = be.to_host(fused()), be.to_host(through_patches())
                diff = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
                t_fused, t_patches = paired_times(fused, through_patches, budget_s=budget_s, max_call_s=5.0)
                rows.append({"model": model_name, "method": method, "format": fmt, "layer": layer.name,
                             "shape": list(W.shape), "stored": int(W.values.size), "stride": layer.stride,
                             "input": list(X_shape), "patches": int(dYT.shape[1]),
                             "patches_ms": t_patches.median_s * 1e3, "fused_ms": t_fused.median_s * 1e3,
                             "speedup": t_patches.median_s / t_fused.median_s, "runs": t_fused.runs,
                             "relative_difference": diff})
    return rows


def table(rows) -> str:
    lines = ["| model | method | format | layer | filters | stored | stride | input | through patches ms | fused ms | speed-up | rel. diff |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['format']} | {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | "
                     f"{r['stored']} | {r['stride']} | {'x'.join(map(str, r['input']))} | {r['patches_ms']:.2f} | "
                     f"{r['fused_ms']:.2f} | {r['speedup']:.2f}x | {r['relative_difference']:.1e} |")
    return "\n".join(lines)


@click.command()
@click.option("--model", "model_names", type=click.Choice(sorted(CNN_INPUT_SHAPES)), multiple=True,
              default=("lenet5", "vgg-small", "resnet20"), show_default=True)
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True)
@click.option("--batch", type=click.IntRange(min=4), default=64, show_default=True)
@click.option("--budget", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Seconds of timed pairs per row (at least 5 pairs).")
@click.option("--backend", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Numba threads [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(model_names, sparsity, batch, budget, backend, threads, seed, json_path):
    """Time a sparse convolution's input gradient, fused against through the patch matrix."""
    if threads is not None:
        numba.set_num_threads(threads)
    meta = machine_meta()
    try:
        rows = run(model_names, sparsity, batch, budget, seed, backend)
    except BackendError as error:
        raise click.BadParameter(str(error), param_hint="--backend") from None
    meta.update({"command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "loadavg_end": loadavg(),
                 "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "models": list(model_names),
                 "sparsity": sparsity, "batch": batch, "backend": backend})
    click.echo(f"conv input gradient on {backend}, fused against through patches; {describe_code(meta['code'])}; sparsity "
               f"{sparsity:g}, batch {batch}")
    click.echo(f"numba {meta['numba']['num_threads']} threads; load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    click.echo(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    worst = max((r["relative_difference"] for r in rows), default=0.0)
    if worst > TOLERANCE:
        raise click.ClickException(f"the two routes differ by {worst:.2e} of the result's magnitude (> {TOLERANCE:g})")


if __name__ == "__main__":
    main()
