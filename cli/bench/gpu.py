"""`purerigl bench gpu`: the cuda backend on a GPU, against the GPU's dense and CSR products (issue 5, section 4).

Two parts, one command, so that a session with a few minutes on a GPU runs one prepared line:

- **kernels**: ``Y = X W^T`` of one layer (default the SRigL paper's 3072 -> 768, W of shape
  768 x 3072) per format, sparsity and batch: the cuda backend's ``matmul`` on device arrays against
  the dense fp32 GEMM and the vendor CSR SpMM of the same matrix, through PyTorch and/or CuPy
  (whichever import; ``--libraries``). Every product is checked against a float64 host reference
  before it is timed (:func:`purerigl.cli._selftest.compare`); a product that disagrees is not timed
  and the command exits 1 once the report is written.
- **train** (:mod:`._gpu_train`): one training step (forward, loss, backward, SGD momentum) and one
  topology update of an MLP (default MNIST 784-300-100-10 at 90%) or a built-in CNN (``--model``) per
  method on its default format, on ``cuda`` and on ``cpu`` in the same process, same seed, by the code
  of ``purerigl bench train`` (:func:`purerigl.cli.bench._train_common.train_step_fn`, ``update_fn``),
  the device synchronised before each clock read; and the same network dense in PyTorch (cuDNN and
  cuBLAS on the GPU: the dense baseline, ``--no-torch-dense`` leaves it out). An error in one cell (a
  method that does not run on a backend yet) is reported in the table and does not change the exit code.

Timing (:func:`time_device`): two warm-up calls (compilation, library handles, memory pools) are
excluded; one synchronised call sizes a sample of ``k`` back-to-back calls (about 2 ms of work, at
most 100 calls); samples repeat until ``--budget`` seconds are spent (at least 5). Each sample is
timed by the library's CUDA events (numba ``cuda.event`` for purerigl, ``torch.cuda.Event``,
``cupy.cuda.Event``) and by ``time.perf_counter`` after the end event synchronised; the reported
time is the median event time per call (the perf_counter time on the CUDA simulator, whose events
record nothing, or when an event API fails). Everything timed stays on the device: inputs, weights
and the purerigl output buffer are allocated before timing, no host copy happens inside a sample.
TF32 is off for torch.

The JSON and markdown reports are rewritten after every row, so a run cut short keeps what it measured.

Exit codes: 0 done; 1 a kernel product disagreed with the reference or raised (the report is
written first); 2 bad input, or no usable cuda backend (no GPU and no simulator).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import click
import numba
import numpy as np

from purerigl import get_backend
from purerigl.dst import METHODS
from purerigl.formats import FORMATS
from purerigl.formats.budget import random_layer
from purerigl.nn import ModelError, parse_hidden

from .._options import FiniteFloatRange, SHAPE, seed_option
from .._selftest import compare
from ..demo import stored_bytes
from . import bench
from ._gpu_devices import (
    MAX_PER_SAMPLE, SAMPLE_S, Product, PureriglClock, _one_line, gpu_meta, load_libraries, time_device,
)
from ._gpu_growth import run_growth
from ._gpu_report import SIMULATOR_WARNING, _fmt_ms, plan_text, row_failures, write_outputs
from ._gpu_train import TrainNet, check_networks, run_train, safe_ratio
from ._shared import CNN_INPUT_SHAPES, MAX_DENSE, command_line, machine_meta, quick_default, thread_limit

#: Defaults of the full run (about 5 minutes on an H200, compilation included).
DEFAULTS = {"sparsities": (0.8, 0.9, 0.95, 0.99), "batches": (1, 256, 2048),
            "hidden": "300,100", "train_batches": (64, 256), "train_sparsity": 0.9, "budget": 0.25}
#: ``--quick``: tiny shapes and budgets, for the tests on the simulator (the numbers mean nothing).
QUICK = {"shape": (12, 48), "sparsities": (0.9,), "batches": (1, 4), "hidden": "8", "train_batches": (4,),
         "train_sparsity": 0.7, "budget": 0.005, "max_call": 0.05, "features": 10, "classes": 3, "min_runs": 2}
#: ``--quick`` with a CNN: tiny images and two channels per layer (the simulator runs a Python thread per
#: GPU thread): (input shape, architecture options).
QUICK_CNNS = {"lenet5": ((1, 4, 4), (("channels", (2, 4)), ("hidden", (8,)))),
              "vgg-small": ((1, 4, 4), (("widths", (2, 2)), ("convs_per_block", 1))),
              "resnet20": ((3, 4, 4), (("widths", (2, 2, 2)), ("blocks", 1)))}
#: Seconds per sample of back-to-back calls, and the most calls in one sample.
SAMPLE_S, MAX_PER_SAMPLE = 2e-3, 100


# ---------------------------------------------------------------------------------------------- kernels


def reference(W, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(expected ``X W^T`` in float64, sum of |terms| per output, most stored terms per row) on the host."""
    W64 = W.to_dense(max_elements=MAX_DENSE).astype(np.float64)
    X64 = X.astype(np.float64)
    terms = int(np.diff(W.to_scipy().indptr).max(initial=0))
    return X64 @ W64.T, np.abs(X64) @ np.abs(W64).T, terms


def checked_timing(product: Product, clock, ref, terms: int, timing: dict | None) -> dict:
    """Check ``product`` against the reference, then time it (not when it is wrong or raises).

    Parameters
    ----------
    product : Product
    clock : the adapter of the library that computes ``product``
    ref : (expected, magnitude, terms) from :func:`reference`
    terms : int
        The most terms per output of this product (fan-in of a sparse product, n_in of a dense one).
    timing : dict or None
        Keyword arguments of :func:`time_device`; None: check only.

    Returns
    -------
    dict
        ``ok``, ``max_abs_err``, ``tol``, ``note`` (why it failed, "" when fine) and ``timing``
        (:func:`time_device`'s dict, None when not timed); ``traceback`` when it raised.
    """
    expected, magnitude, _ = ref
    try:
        got = product.fetch(product.run())
        clock.synchronize()
        err, tol, note = compare(np.asarray(got), expected, magnitude, terms)
        if note or timing is None:
            return {"ok": not note, "max_abs_err": err, "tol": tol, "note": note, "timing": None}
        return {"ok": True, "max_abs_err": err, "tol": tol, "note": "",
                "timing": time_device(product.run, clock, **timing)}
    except Exception as err:  # noqa: BLE001 - reported in the row; the command exits 1 at the end
        return {"ok": False, "max_abs_err": None, "tol": None, "timing": None,
                "note": f"raised {type(err).__name__}: {_one_line(err)}",
                "traceback": traceback.format_exc(limit=6)}



def _ms(result: dict | None) -> float | None:
    return None if not result or not result.get("timing") else result["timing"]["ms"]


class Inputs:
    """The batch X of one size, on the host and on every device library, with purerigl's output buffer."""

    def __init__(self, batch: int, shape: tuple[int, int], seed: int, clock: PureriglClock, libs: list):
        n_out, n_in = shape
        self.X = np.random.default_rng([seed, batch]).standard_normal((batch, n_in)).astype(np.float32)
        self.Xd = clock.backend.to_device(self.X)
        self.Yd = clock.backend.zeros((batch, n_out))
        self.lib = {}
        for lib in libs:
            try:
                self.lib[lib.name] = lib.upload(self.X)
            except Exception as err:  # noqa: BLE001 - that library's columns become errors
                self.lib[lib.name] = err


def layer_for(fmt: str, shape, sparsity: float, seed: int):
    """The seeded random layer of one (format, sparsity): the same matrix whatever the rest of the grid."""
    rng = np.random.default_rng([seed, list(FORMATS).index(fmt), round(sparsity * 1e6)])
    return random_layer(fmt, shape, sparsity, rng)


def baseline_cells(lib, W_dense, S, inputs: Inputs, ref, n_in: int, terms: int, timing: dict, dense_cache: dict):
    """The dense and CSR products of one library on one matrix and batch: ``{"dense": ..., "csr": ...}``.

    The dense time depends only on the shape and batch: it is measured once per (library, batch) and
    reused (its result is still checked for every matrix).
    """
    Xd = inputs.lib.get(lib.name)
    cells = {}
    for kind in ("dense", "csr"):
        try:
            if isinstance(Xd, Exception):
                raise Xd
            if kind == "dense":
                product = lib.dense_product(lib.dense_weight(W_dense), Xd)
            else:
                product = lib.csr_product(lib.sparse_weight(S), Xd)
        except Exception as err:  # noqa: BLE001
            cells[kind] = {"ok": False, "timing": None, "note": f"setup raised {type(err).__name__}: {_one_line(err)}",
                           "traceback": traceback.format_exc(limit=6)}
            continue
        key = (lib.name, inputs.X.shape[0])
        if kind == "dense" and key in dense_cache:
            cell = checked_timing(product, lib, ref, n_in, None)
            cell["timing"] = dense_cache[key] if cell["ok"] else None
        else:
            cell = checked_timing(product, lib, ref, n_in if kind == "dense" else terms, timing)
            if kind == "dense" and cell["ok"]:
                dense_cache[key] = cell["timing"]
        cells[kind] = cell
    return cells


def kernel_row(fmt, sparsity, W, Wd, S, W_dense, inputs: Inputs, clock, libs, timing, dense_cache) -> dict:
    """Check and time purerigl and every baseline on one (format, sparsity, batch); one JSON row."""
    batch, n_in = inputs.X.shape
    n_out = W.n_out
    ref = reference(W, inputs.X)
    terms = ref[2]
    pr = checked_timing(clock.product(Wd, inputs.Xd, inputs.Yd), clock, ref, terms, timing)
    pr_ms = _ms(pr)
    moved = stored_bytes(W) + inputs.X.nbytes + batch * n_out * 4
    row = {"format": fmt, "sparsity": sparsity, "batch": batch, "shape": [n_out, n_in], "nnz": int(W.nnz),
           "stored_bytes": stored_bytes(W), "purerigl_ms": pr_ms, "purerigl_gbps": safe_ratio(moved / 1e6, pr_ms),
           "purerigl": pr, "baselines": {}}
    for lib in libs:
        cells = baseline_cells(lib, W_dense, S, inputs, ref, n_in, terms, timing, dense_cache)
        d_ms, c_ms = _ms(cells["dense"]), _ms(cells["csr"])
        row["baselines"][lib.name] = {"dense_ms": d_ms, "csr_ms": c_ms, "dense_ratio": safe_ratio(d_ms, pr_ms),
                                      "csr_ratio": safe_ratio(c_ms, pr_ms), **cells}
    return row




def run_kernels(clock, libs, shape, sparsities, batches, formats, *, seed, timing, progress, rows: list,
                checkpoint=lambda: None) -> list[dict]:
    """Every (sparsity, format, batch) row of the kernels part (see :func:`kernel_row`), appended to
    ``rows`` one at a time; ``checkpoint()`` runs after each (it writes the report so far)."""
    inputs = {b: Inputs(b, shape, seed, clock, libs) for b in batches}
    dense_cache: dict = {}
    for sparsity in sparsities:
        for fmt in formats:
            W = layer_for(fmt, shape, sparsity, seed)
            S = W.to_scipy()
            W_dense = W.to_dense(max_elements=MAX_DENSE)
            Wd = clock.backend.to_device(W)
            for batch in batches:
                row = kernel_row(fmt, sparsity, W, Wd, S, W_dense, inputs[batch], clock, libs, timing, dense_cache)
                rows.append(row)
                progress(f"kernels {fmt:<9} sparsity {sparsity:<5} batch {batch:<5} " + _progress_text(row))
                checkpoint()
    return rows


def _progress_text(row: dict) -> str:
    parts = [f"purerigl {_fmt_ms(row['purerigl_ms'])} ms"]
    for name, b in row["baselines"].items():
        parts.append(f"{name} dense {_fmt_ms(b['dense_ms'])} csr {_fmt_ms(b['csr_ms'])}")
    fails = row_failures(row)
    return "; ".join(parts) + (f"  FAILED: {'; '.join(fails)}" if fails else "")


# ------------------------------------------------------------------------------------------------ train


# ---------------------------------------------------------------------------------------------- command


def _progress_printer():
    """A ``progress(msg)`` that prints to stderr with the seconds since it was made (the pace of a run)."""
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        click.echo(f"[{time.perf_counter() - t0:7.1f} s] {msg}", err=True)

    return progress


def _load_data(data_dir: Path | None):
    """The MNIST data set from ``data_dir`` (never downloaded), or None; a DataError ends in exit 2."""
    if data_dir is None:
        return None
    from purerigl.data import load_dataset

    return load_dataset("mnist", data_dir, download=False)


def _resolve(ctx, params: dict) -> dict:
    """The options with their ``--quick`` values (for those left at their defaults) and the derived
    settings: ``widths_hidden``, ``min_runs``, ``repeat`` and the parts to run."""
    for name in ("shape", "sparsities", "batches", "hidden", "train_batches", "train_sparsity", "budget", "max_call"):
        params[name] = quick_default(ctx, name, params[name], QUICK[name])
    try:
        params["widths_hidden"] = parse_hidden(params["hidden"])
    except Exception as err:  # noqa: BLE001 - ModelError / ValueError: bad input
        raise click.BadParameter(" ".join(str(err).split()), ctx=ctx, param_hint="'--hidden'") from None
    quick = params["quick"]
    params.update(min_runs=QUICK["min_runs"] if quick else 5, repeat=QUICK["min_runs"] if quick else 1000,
                  kernels=params["part"] in ("kernels", "all"), train=params["part"] in ("train", "all"),
                  growth=params["part"] in ("growth", "all"))
    return params


def _timer_text(p: dict, timed: bool) -> str:
    return (f"median per call over samples of back-to-back calls (~{SAMPLE_S * 1e3:g} ms each, at most "
            f"{MAX_PER_SAMPLE} calls), ~{p['budget']} s of samples per product (at least {p['min_runs']}); 2 "
            "warm-up calls excluded; clock: "
            + ("CUDA events (numba, torch, cupy)" if timed else "perf_counter after synchronize (simulator)")
            + f"; a call slower than {p['max_call']} s is timed once; training: median of synchronised steps "
              "(perf_counter)")


def _meta(ctx, p: dict, clock: PureriglClock, libs: list, notes: list[str]) -> dict:
    """The report's ``meta``: machine, GPU, libraries, command, plan and estimate (the plan is also printed)."""
    n_rows = len(p["sparsities"]) * len(p["batches"]) * len(p["formats"]) if p["kernels"] else 0
    methods = p["methods"] if p["train"] else ()
    n_growth = len(p["sparsities"]) * len(p["batches"]) if p["growth"] else 0
    plan, estimate = plan_text(n_rows, len(p["batches"]) if p["kernels"] else 0, len(libs), len(methods),
                               sum(m != "static" for m in methods), len(p["train_batches"]), p["budget"], n_growth)
    meta = machine_meta()
    meta.update(benchmark="gpu", command=command_line(ctx), gpu=gpu_meta(clock), seed=p["seed"], dtype="float32",
                budget_s=p["budget"], max_call_s=p["max_call"], plan=plan, estimate_s=round(estimate),
                libraries={lib.name: lib.describe() for lib in libs}, notes=list(notes), shape=list(p["shape"]),
                timer=_timer_text(p, clock.timed))
    if meta["gpu"]["simulator"]:
        meta["notes"].insert(0, SIMULATOR_WARNING)
    return meta


def _train_net(p: dict, data) -> TrainNet:
    """The training part's network: the MLP of ``--hidden`` or the CNN of ``--model``, on MNIST's shape
    when ``--data-dir`` gives MNIST, else on synthetic inputs (a CNN: ``bench train``'s image shapes)."""
    n_classes = data.n_classes if data is not None else QUICK["classes"] if p["quick"] else 10
    if p["model"] == "mlp":
        n_features = data.n_features if data is not None else QUICK["features"] if p["quick"] else 784
        return TrainNet("mlp", widths=(n_features, *p["widths_hidden"], n_classes), n_classes=n_classes)
    if p["quick"]:
        shape, arch = QUICK_CNNS[p["model"]]
    else:
        shape, arch = CNN_INPUT_SHAPES[p["model"]], ()
    shape = (1, 28, 28) if data is not None else tuple(shape)
    return TrainNet(p["model"], input_shape=shape, n_classes=n_classes, options=arch)


def _train_meta(p: dict, net: TrainNet, data) -> dict:
    """The training part's settings: network, sparsity, batches, methods and where inputs come from."""
    return {"arch": net.arch, "model": net.model, "widths": list(net.widths), "input_shape": list(net.input_shape),
            "sparsity": p["train_sparsity"], "batches": list(p["train_batches"]), "methods": list(p["methods"]),
            "torch_dense": p["torch_dense"],
            "inputs": f"MNIST training images from {p['data_dir']}" if data is not None
            else "synthetic inputs (step time does not depend on the values)"}


@bench.command()
@click.option("--part", type=click.Choice(("kernels", "growth", "train", "all")), default="all", show_default=True,
              help="Which part to run (growth: RigL's growth selection against the dense route; it uses the "
                   "kernels' --shape, --sparsity, --batch and --libraries).")
@click.option("--shape", type=SHAPE, default="768x3072", show_default=True, help="Kernels: W shape N_OUTxN_IN.")
@click.option("--sparsity", "sparsities", type=FiniteFloatRange(0.0, 1.0, max_open=True), multiple=True,
              default=DEFAULTS["sparsities"], show_default=True, help="Kernels: fraction of zero weights (repeatable).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=DEFAULTS["batches"],
              show_default=True, help="Kernels: batch size (repeatable).")
@click.option("--format", "formats", type=click.Choice(tuple(FORMATS)), multiple=True, default=tuple(FORMATS),
              show_default=True, help="Kernels: storage format (repeatable).")
@click.option("--libraries", type=click.Choice(("auto", "cupy", "torch", "none")), default="auto", show_default=True,
              help="Kernels: baseline libraries (auto: every one that imports and sees a GPU).")
@click.option("--model", type=click.Choice(("mlp", "lenet5", "vgg-small", "resnet20")), default="mlp",
              show_default=True,
              help="Train: the network: an MLP (--hidden) or a built-in CNN (synthetic images of bench train's "
                   "shapes: 1x28x28, resnet20 3x32x32; MNIST's with --data-dir).")
@click.option("--hidden", default=DEFAULTS["hidden"], show_default=True,
              help="Train: hidden widths of --model mlp, comma-separated (784 inputs, 10 classes).")
@click.option("--torch-dense/--no-torch-dense", "torch_dense", default=True, show_default=True,
              help="Train: also time the network's dense PyTorch twin (cuDNN / cuBLAS on the GPU torch sees, "
                   "else on the CPU), the dense baseline.")
@click.option("--train-batch", "train_batches", type=click.IntRange(min=1), multiple=True,
              default=DEFAULTS["train_batches"], show_default=True, help="Train: batch size (repeatable).")
@click.option("--train-sparsity", "train_sparsity", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True),
              default=DEFAULTS["train_sparsity"], show_default=True, help="Train: sparsity of every layer.")
@click.option("--method", "methods", type=click.Choice(METHODS), multiple=True, default=METHODS, show_default=True,
              help="Train: DST method, each on its default format (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Train: directory with the MNIST files (inputs from its training set).  [default: synthetic "
                   "inputs of the same shape]")
@click.option("--budget", type=FiniteFloatRange(min=0.0), default=DEFAULTS["budget"], show_default=True,
              help="Seconds of timed runs per product or step (at least 5 runs).")
@click.option("--max-call", "max_call", type=FiniteFloatRange(min=0.0), default=2.0, show_default=True,
              help="A call slower than this many seconds is timed once, not repeated.")
@click.option("--threads", type=click.IntRange(1, numba.config.NUMBA_NUM_THREADS), default=None,
              help="Threads for Numba and BLAS on the cpu side.  [default: all]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write meta and results to this JSON file.")
@click.option("--out-md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the markdown report to this file.")
@click.option("--quick", is_flag=True, help="A tiny configuration (for tests; timings mean nothing).")
@seed_option
@click.pass_context
def gpu(ctx, part, shape, sparsities, batches, formats, libraries, model, hidden, torch_dense, train_batches,
        train_sparsity, methods, data_dir, budget, max_call, threads, json_path, md_path, quick, seed):
    """The cuda backend on the GPU: matmul per format against the GPU's dense and CSR products (torch/CuPy),
    RigL's growth selection against one dense dY^T X and a dense top-k, and a training step and topology
    update per method against the cpu backend."""
    if model != "mlp" and ctx.get_parameter_source("hidden") == click.core.ParameterSource.COMMANDLINE:
        raise click.BadParameter(f"--hidden is read by --model mlp only, not {model}", ctx=ctx,
                                 param_hint="'--hidden'")
    p = _resolve(ctx, dict(ctx.params))
    ctx.params.update({k: p[k] for k in ctx.params})  # the command line shows the values used
    cuda = get_backend("cuda")  # no GPU and no simulator: BackendError, reported as one "Error:" line (exit 2)
    clock = PureriglClock(cuda)
    libs, notes = load_libraries(libraries) if p["kernels"] or p["growth"] else ([], [])
    data = _load_data(data_dir) if p["train"] else None
    net = _train_net(p, data) if p["train"] else None
    train_meta = _train_meta(p, net, data) if p["train"] else None
    if net is not None:  # a network the formats cannot hold is bad input: exit 2 before anything is timed
        try:
            check_networks(net, p["methods"], p["train_sparsity"])
        except ModelError as err:
            raise click.BadParameter(" ".join(str(err).split()), ctx=ctx,
                                     param_hint="'--model' / '--hidden' / '--train-sparsity'") from None
    progress, t_start = _progress_printer(), time.perf_counter()
    with thread_limit(threads):
        meta = _meta(ctx, p, clock, libs, notes)
        progress(meta["plan"])
        report = {"meta": meta, "kernels": None, "growth": None, "train": None, "failures": [], "errors": []}

        def checkpoint():  # after every row: a run cut short keeps what it measured
            write_outputs(report, json_path, md_path)

        timing = {"budget_s": p["budget"], "max_call_s": p["max_call"], "min_runs": p["min_runs"]}
        if p["kernels"]:
            report["kernels"] = []
            run_kernels(clock, libs, tuple(p["shape"]), p["sparsities"], p["batches"], formats, seed=seed,
                        timing=timing, progress=progress, rows=report["kernels"], checkpoint=checkpoint)
        if p["growth"]:
            report["growth"] = []
            run_growth(clock, libs, tuple(p["shape"]), p["sparsities"], p["batches"], seed=seed, timing=timing,
                       progress=progress, rows=report["growth"], checkpoint=checkpoint)
        if p["train"]:
            meta["train"], report["train"] = train_meta, []
            run_train((get_backend("cpu"), cuda), p["methods"], p["train_batches"], data=data, net=net,
                      sparsity=p["train_sparsity"], seed=seed, torch_dense=p["torch_dense"],
                      budget_s=p["budget"], max_call_s=p["max_call"], repeat=p["repeat"], progress=progress,
                      rows=report["train"], checkpoint=checkpoint, once=p["quick"])
        meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        meta["seconds"] = round(time.perf_counter() - t_start, 1)
    click.echo(write_outputs(report, json_path, md_path), nl=False)
    for path in (json_path, md_path):
        if path is not None:
            click.echo(f"wrote {path}")
    progress("done")
    if report["failures"]:
        raise click.ClickException(
            f"{len(report['failures'])} product(s) disagreed with the float64 reference or raised (not timed; "
            f"see the report): {report['failures'][0]}")
