"""What every `purerigl bench` subcommand shares: timing with a time budget, the machine description,
the command line, common options, thread limits and the report writer (see the package docstring)."""

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

from purerigl.formats import FORMATS
from purerigl.report.provenance import code_version, describe_code

from .._options import FiniteFloatRange, backend_option, seed_option
from .._timing import Timing, blas_info, blas_summary, time_call
from ..info import library_versions, numba_threading
from ._busy import busy_option, load_text

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
    ("diag-rigl", "diagonal"),
    ("dynadiag", "diagonal"),  # its soft phase: gated layers storing 2K diagonals, alpha's Adam step
)
GROWTH_METHODS = (("rigl", "csr"), ("srigl", "condensed"), ("gse", "csr"), ("diag-rigl", "diagonal"), ("set", "csr"))

#: The convolutional networks ``bench train --model`` times, with the input shape of their synthetic
#: batch (C, H, W): MNIST-shaped for LeNet-5 and the small VGG, CIFAR-shaped for ResNet-20.
CNN_INPUT_SHAPES = {"lenet5": (1, 28, 28), "vgg-small": (1, 28, 28), "resnet20": (3, 32, 32)}

QUICK = {
    "kernels": {"shapes": ((64, 96),), "batches": (1, 8), "sparsities": (0.9,)},
    "train": {"hidden": ("32,16",), "sparsities": (0.9,)},
    # --model with --quick: a tiny image (the smallest each model takes comfortably) and batch
    "train_cnn": {"input_shapes": {"lenet5": (1, 16, 16), "vgg-small": (1, 8, 8), "resnet20": (3, 8, 8)},
                  "batch": 4, "sparsities": (0.9,)},
    "growth": {"widths": (64, 128), "gse_widths": (256,), "batch": 8, "sparsity": 0.9},
}


# ----------------------------------------------------------------------------------------------- shared


#: Most extra calls :func:`measure` makes to let a slow call settle (see there).
SETTLE_CALLS = 4

#: Seconds :func:`measure` pauses after timing a baseline (``compiled``: NumPy's BLAS, SciPy). OpenBLAS's
#: worker threads busy-wait for up to about 0.1 s after a call before they sleep, and while they spin
#: they hold a core: a purerigl kernel timed right after a dense product ran 1.9x slower on the 2-core
#: machine (4096 x 4096 at 90%, batch 64: 13.0 ms against 6.9 ms). The pause is capped at 10x the
#: time budget, so ``--quick`` runs stay quick.
BLAS_SPIN_S = 0.25


def measure(fn, *, budget_s: float, max_call_s: float, compiled: bool = False, repeat: int = 1000) -> Timing:
    """Time ``fn`` by :func:`time_call` (median, warm-up excluded); slow calls are timed once.

    The first call is a warm-up. If it took longer than ``max_call_s``, the call is timed once and
    reported with ``runs == 1`` (``compiled`` baselines, which have nothing to compile, reuse the
    first call). Compilation may reach past the first call: a training step can compile a kernel
    on a later call (a serial twin the first time the machine's load selects it, a path only a
    second step takes), and a call timed while Numba compiled once reported 0.02x for a step that
    runs at 1.2x. So a slow call is repeated until it is no more than 20% faster than the call before
    it (at most :data:`SETTLE_CALLS` more calls) or no slower than ``max_call_s``; if the last is
    still slower than ``max_call_s`` it is reported, else (the first call was slow only because it
    compiled or loaded compiled kernels) the calls are timed by :func:`time_call` as for a fast one.
    Otherwise :func:`time_call` runs one more warm-up and the timed calls. After a baseline
    (``compiled``) it pauses :data:`BLAS_SPIN_S`, so that BLAS's spinning threads do not slow the next
    measurement.
    """
    if compiled:
        timing = _measure(fn, budget_s=budget_s, max_call_s=max_call_s, compiled=True, repeat=repeat)
        let_blas_threads_sleep(budget_s)
        return timing
    return _measure(fn, budget_s=budget_s, max_call_s=max_call_s, compiled=False, repeat=repeat)


def let_blas_threads_sleep(budget_s: float) -> None:
    """Pause :data:`BLAS_SPIN_S` (at most 10x ``budget_s``) after BLAS ran, so that its spinning threads
    do not take a core from the next measurement."""
    time.sleep(min(BLAS_SPIN_S, 10 * budget_s))


def _measure(fn, *, budget_s: float, max_call_s: float, compiled: bool, repeat: int) -> Timing:
    """:func:`measure` without the pause after a baseline."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > max_call_s:
        if compiled:
            return Timing(first, first, first, 1)
        previous = first
        for _ in range(SETTLE_CALLS):
            t0 = time.perf_counter()
            fn()
            last = time.perf_counter() - t0
            if last <= max_call_s or last >= 0.8 * previous:
                break
            previous = last
        if last > max_call_s:
            return Timing(last, last, last, 1)
        return time_call(fn, budget_s=budget_s, warmup=0, repeat=repeat)  # it settled below max_call_s
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
        "code": code_version(),
        "host_heap": host_heap_status(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def host_heap_status() -> str:
    """The cpu backend's host allocator setting (:mod:`purerigl.kernels.cpu.host_heap`), in words: the
    timings of the cpu backend and of the NumPy baselines both run under it."""
    from purerigl.kernels import cpu

    return cpu.HOST_HEAP


def command_line(ctx: click.Context) -> str:
    """The command with every option spelled out (defaults included), so that it reproduces the run."""
    names, c = [], ctx
    while c.parent is not None:  # the subcommands' names; the root is "purerigl" however it was started
        names.append(c.info_name)
        c = c.parent
    words = ["purerigl", *reversed(names)]
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
        f"BLAS {blas_summary(meta['blas'])}; host heap: {meta.get('host_heap', 'not recorded')}",
        f"versions: purerigl {v['purerigl']}, python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, "
        f"scipy {v['scipy']}; {describe_code(meta.get('code'))}",
    ]
    if load:
        lines.append(
            f"load average (1/5/15 min) at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + (f"; at end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}" if end else "")
        )
    if "busy" in meta:
        lines.append(load_text(meta["busy"]))
    lines.append(
        f"timing: median of timed runs, ~{meta['budget_s']} s per product (at least 5 runs), warm-up "
        f"excluded; a call slower than {meta['max_call_s']} s is timed once"
    )
    return lines


def common_options(fn):
    """``--budget``, ``--max-call``, ``--threads``, ``--busy``, ``--json``, ``--quick``, ``--seed``, ``--backend``."""
    decorators = [
        click.option("--budget", type=FiniteFloatRange(min=0.0), default=0.2, show_default=True,
                     help="Seconds of timed runs per product (at least 5 runs)."),
        click.option("--max-call", "max_call", type=FiniteFloatRange(min=0.0), default=2.0, show_default=True,
                     help="A call slower than this many seconds is timed once, not repeated."),
        click.option("--threads", type=click.IntRange(1, numba.config.NUMBA_NUM_THREADS), default=None,
                     help="Threads for Numba and BLAS (BLAS via threadpoolctl).  [default: all]"),
        busy_option,
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Also write meta and results to this JSON file."),
        click.option("--quick", is_flag=True, help="A tiny configuration (for tests; timings mean nothing)."),
        seed_option,
        backend_option,
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def product_limit_s(dense_s: float, nnz: int, n_out: int, n_in: int, batch: int) -> float:
    """The "limit" of a batched sparse product (issue 19): the seconds its ``nnz * batch`` multiply-adds
    take at the multiply-add rate of the dense BLAS product of the same shape and batch measured in the
    same run, ``dense_s / (n_out * n_in * batch)`` seconds each.

    It equals ``dense_s * nnz / (n_out * n_in)`` (the batch cancels). A kernel's "% of limit" is this
    limit over its own time: 100% runs the sparse work at BLAS's rate, above 100% beats it.
    """
    seconds_per_mac = dense_s / (n_out * n_in * batch)
    return nnz * batch * seconds_per_mac


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
