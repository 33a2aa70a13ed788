"""``purerigl bench``: timings of the kernels, of a training step and of a topology update (issue 6).

Three subcommands, one set of rules (DESIGN.md section 7, the same as ``benchmarks/bench_matmul.py``):
every comparison is a ratio measured in this process on the same inputs; warm-up (Numba compilation)
is excluded; the median of many runs (``--budget`` seconds per product, at least 5 runs) is
reported with :func:`purerigl.cli._timing.time_call`; every product is checked against SciPy before
it is timed. Above each table: the machine (CPUs, Numba threads and layer, BLAS, versions, load
average) and the exact command, every option spelled out.

- ``bench kernels``: matmul, matmul_t, sddmm per format against NumPy dense (BLAS) and SciPy CSR.
- ``bench train``: one training step (forward, loss, backward, optimizer) and one topology update
  of an MLP per method and format, against the dense network trained by the same code.
- ``bench growth``: one topology update per method on a square layer as it widens, beside one dense
  ``dY^T X`` product.

A call that takes longer than ``--max-call`` seconds is not repeated: its time is that of one call
(``runs`` = 1 in the JSON), so that the full grid finishes on a 2-core machine. ``--quick`` shrinks
every grid to a tiny configuration (for tests; the numbers mean nothing).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from contextlib import nullcontext
from pathlib import Path

import click
import numba
import numpy as np

from purerigl.dst import LayerUpdate, make_method
from purerigl.formats import FORMATS
from purerigl.nn import SparseLinear, build_mlp, parse_hidden, softmax_cross_entropy
from purerigl.optim import make_optimizer
from purerigl.sparsity import layer_budget, random_layer

from ._options import SHAPE, backend_option, seed_option
from ._selftest import compare, slot_positions
from ._timing import Timing, blas_info, blas_summary, memcpy_bandwidth, time_call
from .demo import stored_bytes
from .info import library_versions, numba_threading

#: Largest dense matrix (elements) a baseline may allocate: 1 GiB of float32.
MAX_DENSE = 1 << 28
OPS = ("matmul", "matmul_t", "sddmm")
FORMAT_NAMES = tuple(FORMATS)
#: (method, format) pairs of ``bench train``: static in every format, then each DST method on its default.
TRAIN_METHODS = (
    ("static", "condensed"),
    ("static", "diagonal"),
    ("static", "csr"),
    ("rigl", "csr"),
    ("srigl", "condensed"),
    ("gse", "csr"),
    ("set", "csr"),
    ("dynadiag", "diagonal"),
)
GROWTH_METHODS = (("rigl", "csr"), ("srigl", "condensed"), ("gse", "csr"), ("dynadiag", "diagonal"), ("set", "csr"))

QUICK = {
    "kernels": {"shapes": ((64, 96),), "batches": (1, 8), "sparsities": (0.9,)},
    "train": {"hidden": ("32,16",), "sparsities": (0.9,)},
    "growth": {"widths": (64, 128), "gse_widths": (256,), "batch": 8, "sparsity": 0.9},
}


# ----------------------------------------------------------------------------------------------- shared


def measure(fn, *, budget_s: float, max_call_s: float, compiled: bool = False, repeat: int = 1000) -> Timing:
    """Time ``fn`` by :func:`time_call` (median, warm-up excluded); slow calls are timed once.

    The first call is a warm-up. If it took longer than ``max_call_s``, one more call is timed
    (``compiled`` baselines, which have nothing to compile, reuse the first call) and reported
    with ``runs == 1``; otherwise :func:`time_call` runs one more warm-up and the timed calls.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > max_call_s:
        if not compiled:
            t0 = time.perf_counter()
            fn()
            first = time.perf_counter() - t0
        return Timing(first, first, first, 1)
    return time_call(fn, budget_s=budget_s, warmup=1, repeat=repeat)


def machine_meta() -> dict:
    """The machine and library description printed above every table and stored in the JSON."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numba": numba_threading(initialise=True),
        "blas": blas_info(),
        "versions": library_versions(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def command_line(ctx: click.Context) -> str:
    """The command with every option spelled out (defaults included), so that it reproduces the run."""
    words = ["purerigl", *ctx.command_path.split()[1:]]  # the root's name is "main" when invoked from Python
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("help",):
            continue
        value = ctx.params.get(param.name)
        flag = param.opts[0]
        if param.is_flag:
            if value:
                words.append(flag)
        elif value is None:
            continue
        elif param.multiple:
            for v in value:
                words += [flag, _render(v)]
        else:
            words += [flag, _render(value)]
    return shlex.join(words)


def _render(v) -> str:
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return f"{v[0]}x{v[1]}"
    if hasattr(v, "name") and not isinstance(v, (str, Path)):
        return v.name
    return str(v)


def header(meta: dict, title: str) -> list[str]:
    v = meta["versions"]
    load = meta.get("loadavg_start")
    end = meta.get("loadavg_end")
    lines = [
        title,
        f"command: {meta['command']}",
        f"machine: {meta['platform']}; {meta['cpu_count']} CPUs ({meta['cpus_usable']} usable); "
        f"numba {meta['numba']['num_threads']} threads ({meta['numba']['threading_layer']}); "
        f"BLAS {blas_summary(meta['blas'])}",
        f"versions: purerigl {v['purerigl']}, python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, "
        f"scipy {v['scipy']}",
    ]
    if load:
        lines.append(
            f"load average (1/5/15 min) at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + (f"; at end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}" if end else "")
        )
    lines.append(
        f"timing: median of timed runs, ~{meta['budget_s']} s per product (at least 5 runs), warm-up "
        f"excluded; a call slower than {meta['max_call_s']} s is timed once"
    )
    return lines


def common_options(fn):
    """``--budget``, ``--max-call``, ``--threads``, ``--json``, ``--quick``, ``--seed``, ``--backend``."""
    decorators = [
        click.option("--budget", type=click.FloatRange(min=0.0), default=0.2, show_default=True,
                     help="Seconds of timed runs per product (at least 5 runs)."),
        click.option("--max-call", "max_call", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
                     help="A call slower than this many seconds is timed once, not repeated."),
        click.option("--threads", type=click.IntRange(1, numba.config.NUMBA_NUM_THREADS), default=None,
                     help="Threads for Numba and BLAS (BLAS via threadpoolctl).  [default: all]"),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Also write meta and results to this JSON file."),
        click.option("--quick", is_flag=True, help="A tiny configuration (for tests; timings mean nothing)."),
        seed_option,
        backend_option,
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def thread_limit(threads):
    if threads is None:
        return nullcontext()
    numba.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        click.echo("note: threadpoolctl is not installed; BLAS threads are not limited", err=True)
        return nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def quick_default(ctx: click.Context, name: str, value, quick_value):
    """``quick_value`` when --quick is set and the option ``name`` was left at its default."""
    if ctx.params.get("quick") and ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
        return quick_value
    return value


def finish(report: dict, text: str, json_path: Path | None) -> None:
    click.echo(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


# ----------------------------------------------------------------------------------------------- group


@click.group()
def bench() -> None:
    """Time kernels, training steps and topology updates against NumPy dense and SciPy CSR."""


# --------------------------------------------------------------------------------------------- kernels


def _kernel_setup(op, W, X, dY):
    """(purerigl call, dense call or None, scipy call or None, expected, magnitude, terms) of one op."""
    S = W.to_scipy()
    S64 = S.astype(np.float64)
    A = abs(S64)
    X64, dY64 = X.astype(np.float64), dY.astype(np.float64)
    dense_ok = W.n_out * W.n_in <= MAX_DENSE
    Wd = W.to_dense(max_elements=MAX_DENSE) if dense_ok else None
    if op == "matmul":
        WdT, ST = (Wd.T if dense_ok else None), S.T
        return ((lambda: W_backend(W, X, "matmul")), (lambda: X @ WdT) if dense_ok else None, lambda: X @ ST,
                X64 @ S64.T, np.abs(X64) @ A.T, int(np.diff(S64.indptr).max(initial=0)))
    if op == "matmul_t":
        fan_out = np.bincount(S64.indices, minlength=W.n_in)
        return ((lambda: W_backend(W, dY, "matmul_t")), (lambda: dY @ Wd) if dense_ok else None, lambda: dY @ S,
                dY64 @ S64, np.abs(dY64) @ A, int(fan_out.max(initial=0)))
    # sddmm: the dense baseline is the whole dense gradient dY^T X (what a dense layer computes);
    # SciPy has no SDDMM, so there is no SciPy baseline.
    pos_row, pos_col = slot_positions(W)
    G = dY64.T @ X64
    aG = np.abs(dY64).T @ np.abs(X64)
    dYT = np.ascontiguousarray(dY.T)
    return ((lambda: W_backend(W, (X, dY), "sddmm")), lambda: dYT @ X, None,
            G[pos_row, pos_col].reshape(W.values.shape), aG[pos_row, pos_col].reshape(W.values.shape), X.shape[0])


_BACKEND = {}


def W_backend(W, arg, op):
    backend = _BACKEND["b"]
    if op == "sddmm":
        return backend.sddmm(W, *arg)
    return getattr(backend, op)(W, arg)


def _moved_bytes(op, W, X, dY) -> int:
    """Bytes a product must move: the stored matrix, its input and its output."""
    if op == "matmul":
        return stored_bytes(W) + X.nbytes + dY.nbytes
    if op == "matmul_t":
        return stored_bytes(W) + dY.nbytes + X.nbytes
    return stored_bytes(W) + X.nbytes + dY.nbytes + W.values.nbytes


def run_kernels(backend, shapes, batches, sparsities, ops, formats, *, budget_s, max_call_s, seed, memcpy_bytes):
    _BACKEND["b"] = backend
    rng = np.random.default_rng(seed)
    memcpy = memcpy_bandwidth(n_bytes=memcpy_bytes) / 1e9
    results, notes = [], []
    for shape in shapes:
        n_out, n_in = shape
        for batch in batches:
            X = rng.standard_normal((batch, n_in)).astype(np.float32)
            dY = rng.standard_normal((batch, n_out)).astype(np.float32)
            dense_cache: dict[str, Timing] = {}  # the dense time depends on shape, batch and op only
            for sparsity in sparsities:
                for fmt in formats:
                    W = random_layer(fmt, shape, sparsity, rng)
                    for op in ops:
                        pr, dense, sp, expected, magnitude, terms = _kernel_setup(op, W, X, dY)
                        err, tol, note = compare(np.asarray(pr()), np.asarray(expected), np.asarray(magnitude), terms)
                        if note:
                            raise click.ClickException(
                                f"{op} {fmt} {n_out}x{n_in} batch {batch} sparsity {sparsity}: "
                                f"{note} (max abs err {err:.3g}, tol {tol:.3g}); its timing would mean nothing")
                        t_pr = measure(pr, budget_s=budget_s, max_call_s=max_call_s)
                        if dense is None:
                            t_dense = None
                            msg = f"dense {op} skipped at {n_out}x{n_in}: over {MAX_DENSE} elements"
                            if msg not in notes:
                                notes.append(msg)
                        else:
                            if op not in dense_cache:
                                dense_cache[op] = measure(dense, budget_s=budget_s, max_call_s=max_call_s,
                                                          compiled=True)
                            t_dense = dense_cache[op]
                        t_sp = None if sp is None else measure(sp, budget_s=budget_s, max_call_s=max_call_s,
                                                               compiled=True)
                        us = t_pr.median_us
                        gbps = _moved_bytes(op, W, X, dY) / (t_pr.median_s) / 1e9
                        results.append({
                            "shape": [n_out, n_in], "batch": batch, "sparsity": sparsity, "op": op, "format": fmt,
                            "nnz": int(W.nnz), "stored_bytes": stored_bytes(W),
                            "purerigl_us": us,
                            "dense_us": t_dense.median_us if t_dense else None,
                            "scipy_us": t_sp.median_us if t_sp else None,
                            "dense_ratio": t_dense.median_us / us if t_dense else None,
                            "scipy_ratio": t_sp.median_us / us if t_sp else None,
                            "purerigl_gbps": gbps,
                            "memcpy_fraction": gbps / memcpy if batch == 1 else None,
                            "runs": {"purerigl": t_pr.runs, "dense": t_dense.runs if t_dense else 0,
                                     "scipy": t_sp.runs if t_sp else 0},
                            "max_abs_err": err, "tol": tol,
                        })
    if "sddmm" in ops:
        notes.append("sddmm: SciPy has no SDDMM, so no SciPy baseline; dense = the whole dY^T X (BLAS)")
    notes.append("dense time depends only on shape, batch and op: it is measured once per (shape, batch, op) "
                 "and shared by the sparsities and formats")
    return results, notes, memcpy


def format_kernels(report: dict) -> str:
    m = report["meta"]
    lines = header(m, "purerigl bench kernels: sparse products against NumPy dense (BLAS) and SciPy CSR, float32")
    lines += [
        f"memcpy bandwidth (read + write) measured in this run: {m['memcpy_gbps']:.2f} GB/s",
        "ops: matmul Y = X W^T; matmul_t dX = dY W; sddmm dW = (dY^T X) at stored entries",
        "ratios: baseline time / purerigl time (> 1: purerigl is faster); GB/s: stored matrix + input + output "
        "bytes per second; %copy at batch 1 only",
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append("")
    head = (f"{'shape':>10} {'sparsity':>8} {'batch':>5} {'op':<8} {'format':<9} {'purerigl us':>12} "
            f"{'dense us':>11} {'scipy us':>11} {'dense/pr':>9} {'scipy/pr':>9} {'GB/s':>7} {'%copy':>6}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        f = r["memcpy_fraction"]
        lines.append(
            f"{str(r['shape'][0]) + 'x' + str(r['shape'][1]):>10} {r['sparsity']:>8.2f} {r['batch']:>5} {r['op']:<8} {r['format']:<9} "
            f"{r['purerigl_us']:>12.1f} {_us(r['dense_us']):>11} {_us(r['scipy_us']):>11} "
            f"{_ratio(r['dense_ratio']):>9} {_ratio(r['scipy_ratio']):>9} {r['purerigl_gbps']:>7.2f} "
            f"{'-' if f is None else f'{f:.0%}':>6}"
        )
    return "\n".join(lines)


def _us(x) -> str:
    return "-" if x is None else f"{x:.1f}"


@bench.command()
@click.option("--shape", "shapes", type=SHAPE, multiple=True, default=("768x3072", "4096x4096"), show_default=True,
              help="W shape N_OUTxN_IN (repeatable).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 8, 64, 256, 2048),
              show_default=True, help="Batch size (repeatable).")
@click.option("--sparsity", "sparsities", type=click.FloatRange(0.0, 1.0, max_open=True), multiple=True,
              default=(0.8, 0.9, 0.95, 0.99), show_default=True, help="Fraction of zero weights (repeatable).")
@click.option("--op", "ops", type=click.Choice(OPS), multiple=True, default=OPS, show_default=True,
              help="Operation (repeatable).")
@click.option("--format", "formats", type=click.Choice(FORMAT_NAMES), multiple=True, default=FORMAT_NAMES,
              show_default=True, help="Storage format (repeatable).")
@common_options
@click.pass_context
def kernels(ctx, shapes, batches, sparsities, ops, formats, budget, max_call, threads, json_path, quick, seed,
            backend):
    """matmul, matmul_t, sddmm per format against NumPy dense (BLAS) and SciPy CSR."""
    q = QUICK["kernels"]
    shapes = quick_default(ctx, "shapes", shapes, q["shapes"])
    batches = quick_default(ctx, "batches", batches, q["batches"])
    sparsities = quick_default(ctx, "sparsities", sparsities, q["sparsities"])
    budget = quick_default(ctx, "budget", budget, 0.005)
    ctx.params.update(shapes=shapes, batches=batches, sparsities=sparsities, budget=budget)
    with thread_limit(threads):
        meta = machine_meta()
        results, notes, memcpy = run_kernels(
            backend, shapes, batches, sparsities, ops, formats, budget_s=budget, max_call_s=max_call, seed=seed,
            memcpy_bytes=(1 << 22) if quick else (1 << 28))
    meta.update(benchmark="kernels", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, memcpy_gbps=memcpy, seed=seed, dtype="float32",
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                shapes=[list(s) for s in shapes], batches=list(batches), sparsities=list(sparsities),
                ops=list(ops), formats=list(formats))
    report = {"meta": meta, "notes": notes, "results": results}
    finish(report, format_kernels(report), json_path)


# ----------------------------------------------------------------------------------------------- train


def _train_step_fn(model, optimizer, X, y):

    def step():
        logits = model.forward(X)
        _, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        optimizer.step()

    return step


def _update_fn(model, optimizer, method, budgets, rng, alpha=0.3):

    last = model.linears[-1]

    def update():
        for layer in model.sparse_layers():
            method.update(LayerUpdate(layer=layer, optimizer=optimizer, alpha=alpha, rng=rng,
                                      budget=budgets[layer.name], is_output=layer is last))

    return update


def run_train(backend, hidden_list, sparsities, batch, delta_t, *, budget_s, max_call_s, seed, repeat=1000,
              n_features=784, n_classes=10):

    rng = np.random.default_rng(seed)
    results = []
    for hidden in hidden_list:
        widths = (n_features, *parse_hidden(hidden), n_classes)
        arch = "-".join(str(w) for w in widths)
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
                    from purerigl.sparsity import layer_budget

                    budgets = {layer.name: layer_budget(layer.shape, sparsity) for layer in model.sparse_layers()}
                t_up = measure(_update_fn(model, optimizer, method, budgets, np.random.default_rng(seed)),
                               budget_s=budget_s, max_call_s=max_call_s, repeat=repeat)
                update_ms, runs_update = t_up.median_s * 1e3, t_up.runs
            if method_name == "dense":
                dense_ms = step_ms
            amortised = step_ms + (update_ms or 0.0) / delta_t
            nnz = sum(int(p.value.size) for p in model.parameters() if p.name.endswith((".values", ".weight")))
            results.append({
                "arch": arch, "method": method_name, "format": fmt, "sparsity": sparsity, "batch": batch,
                "weights": nnz,
                "step_ms": step_ms, "update_ms": update_ms,
                "update_amortised_ms": None if update_ms is None else update_ms / delta_t,
                "step_with_update_ms": amortised,
                "dense_ratio": dense_ms / step_ms if dense_ms else None,
                "dense_ratio_with_update": dense_ms / amortised if dense_ms else None,
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
        "",
    ]
    head = (f"{'network':<16} {'method':<9} {'format':<9} {'sparsity':>8} {'weights':>9} {'step ms':>9} "
            f"{'update ms':>10} {'upd/dt ms':>9} {'dense/sp':>9} {'+upd':>7}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['arch']:<16} {r['method']:<9} {r['format']:<9} {r['sparsity']:>8.2f} {r['weights']:>9} "
            f"{r['step_ms']:>9.3f} {_ms(r['update_ms']):>10} {_ms(r['update_amortised_ms']):>9} "
            f"{_ratio(r['dense_ratio']):>9} {_ratio(r['dense_ratio_with_update']):>7}"
        )
    return "\n".join(lines)


@bench.command()
@click.option("--hidden", "hidden_list", multiple=True, default=("300,100", "4096,4096"), show_default=True,
              help="Hidden widths of one network, comma-separated (repeatable: one network each); "
                   "784 inputs, 10 classes.")
@click.option("--sparsity", "sparsities", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              multiple=True, default=(0.9, 0.99), show_default=True, help="Sparsity (repeatable).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size.")
@click.option("--delta-t", "delta_t", type=click.IntRange(min=1), default=100, show_default=True,
              help="Steps between topology updates (the update time is divided by it).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Most timed runs per measurement.  [default: until --budget is spent]")
@common_options
@click.pass_context
def train(ctx, hidden_list, sparsities, batch, delta_t, steps, budget, max_call, threads, json_path, quick, seed,
          backend):
    """One training step and one topology update per method and format, against the dense network."""

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
    with thread_limit(threads):
        meta = machine_meta()
        results = run_train(backend, hidden_list, sparsities, batch, delta_t, budget_s=budget, max_call_s=max_call,
                            seed=seed, repeat=steps or 1000)
    meta.update(benchmark="train", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, seed=seed, batch=batch, delta_t=delta_t, optimizer="sgd momentum 0.9",
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                hidden=list(hidden_list), sparsities=list(sparsities))
    report = {"meta": meta, "results": results}
    finish(report, format_train(report), json_path)


# ---------------------------------------------------------------------------------------------- growth


def run_growth(backend, widths, gse_widths, batch, sparsity, methods, *, budget_s, max_call_s, seed):

    rng = np.random.default_rng(seed)
    results, notes = [], []
    plan = [(w, methods) for w in widths] + [(w, tuple(m for m in GROWTH_METHODS if m[0] == "gse"))
                                             for w in gse_widths if w not in widths]
    for width, method_list in plan:
        shape = (width, width)
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
            W = random_layer(fmt, shape, sparsity, rng)
            layer = SparseLinear(W, backend=backend, name="layer0")
            layer.forward(X)
            layer.backward(dY)  # sets last_input / last_output_grad, fills the gradients
            optimizer = make_optimizer("sgd", layer.parameters(), lr=1e-3, momentum=0.9)
            optimizer.step()
            method = make_method(method_name, fmt)
            budget = layer_budget(shape, sparsity) if method_name == "srigl" else int(W.nnz)
            urng = np.random.default_rng(seed)

            def update():
                method.update(LayerUpdate(layer=layer, optimizer=optimizer, alpha=0.3, rng=urng, budget=budget,
                                          is_output=False))

            t = measure(update, budget_s=budget_s, max_call_s=max_call_s)
            ms = t.median_s * 1e3
            results.append({
                "width": width, "method": method_name, "format": fmt, "sparsity": sparsity, "batch": batch,
                "nnz": int(layer.W.nnz), "update_ms": ms,
                "dense_xtdy_ms": dense.median_s * 1e3 if dense else None,
                "update_over_dense": ms / (dense.median_s * 1e3) if dense else None,
                "runs": {"update": t.runs, "dense": dense.runs if dense else 0},
            })
    return results, notes


def format_growth(report: dict) -> str:
    m = report["meta"]
    lines = header(m, "purerigl bench growth: one topology update of a square layer (drop fraction 0.3) as it "
                      "widens, beside one dense dY^T X")
    lines += [f"batch {m['batch']}, sparsity {m['sparsity']}; update/dense: update time / dense dY^T X time "
              "(< 1: the update is cheaper than forming the dense gradient)"]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append("")
    head = (f"{'width':>7} {'method':<9} {'format':<9} {'nnz':>11} {'update ms':>11} {'dense XtdY ms':>14} "
            f"{'update/dense':>13}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['width']:>7} {r['method']:<9} {r['format']:<9} {r['nnz']:>11} {r['update_ms']:>11.3f} "
            f"{_ms(r['dense_xtdy_ms']):>14} {_ratio(r['update_over_dense']):>13}"
        )
    return "\n".join(lines)


@bench.command()
@click.option("--widths", "widths", type=click.IntRange(min=2), multiple=True,
              default=(1024, 2048, 4096, 8192, 16384), show_default=True, help="Layer width (repeatable).")
@click.option("--gse-widths", "gse_widths", type=click.IntRange(min=2), multiple=True, default=(32768, 65536),
              show_default=True, help="Further widths timed for GSE only (repeatable).")
@click.option("--method", "methods", type=click.Choice([m for m, _ in GROWTH_METHODS]), multiple=True,
              default=tuple(m for m, _ in GROWTH_METHODS), show_default=True, help="Method (repeatable).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size.")
@click.option("--sparsity", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.99,
              show_default=True, help="Sparsity of the layer.")
@common_options
@click.pass_context
def growth(ctx, widths, gse_widths, methods, batch, sparsity, budget, max_call, threads, json_path, quick, seed,
           backend):
    """One topology update per method as a square layer widens, beside one dense X^T dY product."""
    q = QUICK["growth"]
    widths = quick_default(ctx, "widths", widths, q["widths"])
    gse_widths = quick_default(ctx, "gse_widths", gse_widths, q["gse_widths"])
    batch = quick_default(ctx, "batch", batch, q["batch"])
    sparsity = quick_default(ctx, "sparsity", sparsity, q["sparsity"])
    budget = quick_default(ctx, "budget", budget, 0.005)
    ctx.params.update(widths=widths, gse_widths=gse_widths, batch=batch, sparsity=sparsity, budget=budget)
    chosen = tuple(m for m in GROWTH_METHODS if m[0] in methods)
    with thread_limit(threads):
        meta = machine_meta()
        results, notes = run_growth(backend, widths, gse_widths, batch, sparsity, chosen, budget_s=budget,
                                    max_call_s=max_call, seed=seed)
    meta.update(benchmark="growth", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, seed=seed, batch=batch, sparsity=sparsity, alpha=0.3,
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                widths=list(widths), gse_widths=list(gse_widths), methods=[m for m, _ in chosen])
    report = {"meta": meta, "notes": notes, "results": results}
    finish(report, format_growth(report), json_path)


__all__ = ["bench"]
