"""The feature-major products of the cpu backend at a base commit against the code as it is, in one process.

Session 9 changed the loop order of the cpu kernels that read a convolution's patch matrix, without
changing any sum: the Diagonal gathers (``matmul_fm``, ``matmul_t_fm``) run their tasks block-major
(one batch block of every position before the next block), the ``sddmm_fm`` of all three formats takes
the batch chunk as its outer loop (the rows or positions in parallel inside it), and the column-major
``matmul_t_fm`` of CSR and Condensed runs block-major too. Position- or row-major order streamed each
position's stored entries' whole rows of the patch matrix from memory; block-major keeps one block of
it in L2 while every position re-reads it.

This script copies the four kernel modules of ``--base`` (``git show``) into a temporary package
(removed at exit; never into purerigl's folder, whose sources stamp Numba's cache), then times each product of
each sparse convolution of a built-in network both ways, alternating the two
(:func:`~purerigl.cli.bench._train_common.paired_times`), on random operands of the layer's shapes
(the patch batch B * H_out * W_out of a batch of 64 MNIST images). Every pair must agree bit for bit
(the change reorders tasks, not additions); the script fails otherwise. Run from a git checkout::

    OPENBLAS_NUM_THREADS=1 python benchmarks/loop_order.py --threads 1 --json benchmarks/results/loop-order-2core.json
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numba
import numpy as np

import purerigl.kernels.cpu as cpu_package
from purerigl.cli.bench._shared import machine_meta
from purerigl.cli.bench._train_cnn import conv_inputs
from purerigl.cli.bench._train_common import loadavg, method_calls, paired_times
from purerigl.kernels import get_backend
from purerigl.nn import build_model
from purerigl.nn.conv import SparseConv2d
from purerigl.nn.shape_inference import output_shape
from purerigl.report.provenance import describe_code

#: The kernel modules the change touched; csr and condensed import _columns, redirected to its copy.
MODULES = ("diagonal_fm", "csr", "condensed", "_columns")

#: The rows timed: (method, format) of ``purerigl bench train``; DynaDiag's soft phase stores 2K diagonals.
ROWS = (("rigl", "csr"), ("srigl", "condensed"), ("static", "diagonal"), ("dynadiag", "diagonal"))

OPS = ("matmul_fm", "matmul_t_fm", "sddmm_fm")


#: The package name of the scratch copies (in a temporary directory, never in purerigl's own folder:
#: a file there would change the kernel-sources stamp of Numba's cache, kernels/cpu/_cache.py).
SCRATCH_PACKAGE = "purerigl_loop_order_base"


@contextlib.contextmanager
def base_kernels(base: str):
    """The base commit's kernel modules, imported from a temporary package: yields {module name: module}.

    Each copy imports the current package's helper modules (``._cache``, ``._gather``, ...: the same at
    the base, checked by the bit-for-bit comparison), except ``._columns``, which is the base's own copy.
    The temporary directory (and Numba's cache of the copies in it) is removed at exit.
    """
    folder = Path(cpu_package.__file__).parent
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True,
                          check=True).stdout.strip()
    relative = folder.relative_to(root).as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / SCRATCH_PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name in MODULES:
            text = subprocess.run(["git", "show", f"{base}:{relative}/{name}.py"], cwd=root, capture_output=True,
                                  text=True, check=True).stdout
            text = re.sub(r"^from \.(\w+) import", lambda m: m.group(0) if m.group(1) in MODULES
                          else f"from {cpu_package.__name__}.{m.group(1)} import", text, flags=re.M)
            (package / f"{name}.py").write_text(text)
        sys.path.insert(0, tmp)
        try:
            yield {name: importlib.import_module(f"{SCRATCH_PACKAGE}.{name}") for name in MODULES}
        finally:
            sys.path.remove(tmp)
            for key in [key for key in sys.modules if key.split(".")[0] == SCRATCH_PACKAGE]:
                del sys.modules[key]


def _call(module, op, W, XT, dYT):
    n_out, n_in = W.shape
    B = XT.shape[1]
    if op == "matmul_fm":
        return module.matmul_fm(W, XT, np.zeros((n_out, B), np.float32))
    if op == "matmul_t_fm":
        return module.matmul_t_fm(W, dYT, np.zeros((n_in, B), np.float32))
    return module.sddmm_fm(W, XT, dYT, np.zeros(W.values.shape, np.float32))


def run(model_name, sparsity, batch, base_modules, budget_s, seed) -> list[dict]:
    backend = get_backend("cpu")
    current = {name: importlib.import_module(f"purerigl.kernels.cpu.{name}") for name in MODULES}
    module_of = {"csr": "csr", "condensed": "condensed", "diagonal": "diagonal_fm"}
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    rows = []
    for method, fmt in ROWS:
        model = build_model(model_name, (1, 28, 28), 10, fmt=fmt, sparsity=sparsity, backend=backend,
                            rng=np.random.default_rng(seed))
        method_calls(model, method, fmt, sparsity, X, y, seed)  # DynaDiag: gate the layers (2K diagonals)
        inputs = conv_inputs(model, backend.to_device(X))
        for layer in model.leaves():
            if not isinstance(layer, SparseConv2d):
                continue
            W = layer.linear._matrix
            A = inputs[layer.name]  # (batch, c_in, H, W)
            H_out, W_out = output_shape(layer, A.shape[1:])[1:]
            patches = A.shape[0] * H_out * W_out
            XT = rng.standard_normal((W.shape[1], patches)).astype(np.float32)  # (c_in * kh * kw, B')
            dYT = rng.standard_normal((W.shape[0], patches)).astype(np.float32)  # (c_out, B')
            for op in OPS:
                old = base_modules[module_of[fmt]]
                new = current[module_of[fmt]]
                same = bool(np.array_equal(_call(old, op, W, XT, dYT), _call(new, op, W, XT, dYT)))
                t_old, t_new = paired_times(lambda: _call(old, op, W, XT, dYT), lambda: _call(new, op, W, XT, dYT),
                                            budget_s=budget_s, max_call_s=5.0)
                rows.append({"method": method, "format": fmt, "layer": layer.name, "shape": list(W.shape),
                             "stored": int(W.values.size), "patches": patches, "op": op,
                             "base_ms": t_old.median_s * 1e3, "current_ms": t_new.median_s * 1e3,
                             "speedup": t_old.median_s / t_new.median_s, "runs": t_old.runs, "same_bits": same})
    return rows


def table(rows) -> str:
    lines = ["| method | format | layer | shape | stored | patches | product | base ms | now ms | base / now | same bits |",
             "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['format']} | {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | "
                     f"{r['stored']} | {r['patches']} | {r['op']} | {r['base_ms']:.2f} | {r['current_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {'yes' if r['same_bits'] else 'NO'} |")
    return "\n".join(lines)


@click.command()
@click.option("--base", default="510a866", show_default=True, help="The commit whose kernels are the baseline.")
@click.option("--model", "model_name", type=click.Choice(["lenet5", "vgg-small", "resnet20"]), default="vgg-small",
              show_default=True)
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True)
@click.option("--batch", type=click.IntRange(min=4), default=64, show_default=True)
@click.option("--budget", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Seconds of timed pairs per row (at least 5 pairs).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Numba threads [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(base, model_name, sparsity, batch, budget, threads, seed, json_path):
    """Time the cpu feature-major products at --base against the current code on a network's convolutions."""
    if threads is not None:
        numba.set_num_threads(threads)
    meta = machine_meta()
    try:
        with base_kernels(base) as base_modules:
            rows = run(model_name, sparsity, batch, base_modules, budget, seed)
    except subprocess.CalledProcessError as error:
        raise click.BadParameter(f"cannot read the kernels of {base!r} from git: {error.stderr.strip()}",
                                 param_hint="--base") from None
    meta.update({"command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "loadavg_end": loadavg(),
                 "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "base": base, "model": model_name,
                 "sparsity": sparsity, "batch": batch})
    click.echo(f"cpu feature-major products, {base} against {describe_code(meta['code'])}; {model_name} at "
               f"{sparsity:g}, batch {batch}")
    click.echo(f"numba {meta['numba']['num_threads']} threads; load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    click.echo(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if not all(r["same_bits"] for r in rows):
        raise click.ClickException("the base and current kernels disagree: the change was meant to reorder tasks only")


if __name__ == "__main__":
    main()
