"""A training step with glibc's large freed blocks kept in the heap, against glibc's default (separate processes).

The cpu backend sets glibc's mmap and trim thresholds to 1 GiB when it is first imported
(:mod:`purerigl.kernels.cpu.host_heap`): a large array freed at the end of a step then serves the next
step's array of the same size, instead of being unmapped and mapped (and its pages faulted in) afresh.
This script measures what that changes, in separate processes, since the setting is the process's
state (a heap trimmed under one setting must be faulted in again under the other, so switching inside
one process would charge each with the other's cost): per network and round, one process with
``PURERIGL_HOST_HEAP=0`` (``glibc``: glibc's own dynamic thresholds) and one with the backend's setting
(``heap``), one after the other, each timing every row's step after three warm-up steps. Rounds
alternate the two, so that a drifting machine load falls on both alike; reported are the medians over
the rounds and the median of the rounds' ratios.

Rows: the training step (forward, loss, backward, SGD with momentum) of each built-in network at its
``bench train`` input shape, batch 64, dense (sparsity 0: im2col + BLAS) and at 90% for RigL (CSR) and
SRigL (Condensed). Also printed: each process's peak resident memory (``ru_maxrss``).
Run::

    OPENBLAS_NUM_THREADS=1 python benchmarks/host_heap.py --threads 1 --json benchmarks/results/host-heap-2core.json
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import click
import numba
import numpy as np

from purerigl.cli.bench._shared import CNN_INPUT_SHAPES, host_heap_status, machine_meta, measure
from purerigl.cli.bench._train_common import loadavg, method_calls
from purerigl.kernels import get_backend
from purerigl.kernels.cpu import host_heap
from purerigl.nn import build_model
from purerigl.report.provenance import describe_code

#: The rows timed: (method, format, sparsity); "dense" is the network at sparsity 0.
ROWS = (("dense", "csr", 0.0), ("rigl", "csr", 0.9), ("srigl", "condensed", 0.9))

#: Untimed steps before a row is timed (Numba compiles or loads its kernels on the first).
WARMUP_STEPS = 3

#: The two settings: the environment of each one's process (None: unset).
SETTINGS = {"glibc": "0", "heap": None}


def worker(model_name: str, batch: int, budget_s: float, seed: int) -> dict:
    """In a process of one setting: every row's median step time (ms) on ``model_name`` and the process's
    peak resident memory (MiB)."""
    import resource

    be = get_backend("cpu")
    shape = CNN_INPUT_SHAPES[model_name]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, int(np.prod(shape)))).astype(np.float32)  # (batch, c * h * w)
    y = rng.integers(0, 10, size=batch)
    steps = {}
    for method, fmt, sparsity in ROWS:
        model = build_model(model_name, shape, 10, fmt=fmt, sparsity=sparsity, backend=be,
                            rng=np.random.default_rng(seed))
        step, _ = method_calls(model, method, fmt, sparsity, X, y, seed)
        for _ in range(WARMUP_STEPS):
            step()
        steps[method] = measure(step, budget_s=budget_s, max_call_s=60.0).median_s * 1e3
    return {"host_heap": host_heap_status(), "step_ms": steps,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_process(setting: str, model_name: str, batch: int, budget_s: float, seed: int, threads: int | None) -> dict:
    """:func:`worker` in a fresh process with ``setting``'s environment (no glibc ``malloc`` variable in
    either: a Dask nanny's or the user's would stand in for glibc's default)."""
    env = {k: v for k, v in host_heap.with_malloc_variables(os.environ, {}).items() if k != host_heap.ENV_VAR}
    if SETTINGS[setting] is not None:
        env[host_heap.ENV_VAR] = SETTINGS[setting]
    cmd = [sys.executable, __file__, "--worker", model_name, "--batch", str(batch), "--budget", str(budget_s),
           "--seed", str(seed)] + (["--threads", str(threads)] if threads else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"the {setting!r} process for {model_name} failed:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    expected = "not installed" if setting == "glibc" else "installed"
    if not report["host_heap"].startswith(expected + ":"):
        raise click.ClickException(f"the {setting!r} process reports {report['host_heap']!r}")
    return report


def run(model_names, batch, budget_s, seed, rounds, threads) -> list[dict]:
    rows = []
    for model_name in model_names:
        reports = {"glibc": [], "heap": []}
        for _ in range(rounds):
            for setting in reports:
                reports[setting].append(run_process(setting, model_name, batch, budget_s, seed, threads))
        for method, fmt, sparsity in ROWS:
            glibc = [r["step_ms"][method] for r in reports["glibc"]]
            heap = [r["step_ms"][method] for r in reports["heap"]]
            rows.append({"model": model_name, "method": method, "format": fmt, "sparsity": sparsity,
                         "glibc_ms": float(np.median(glibc)), "heap_ms": float(np.median(heap)),
                         "speedup": float(np.median(np.array(glibc) / np.array(heap))), "rounds": rounds,
                         "glibc_ms_rounds": glibc, "heap_ms_rounds": heap,
                         "maxrss_mib_glibc": float(np.median([r["maxrss_mib"] for r in reports["glibc"]])),
                         "maxrss_mib_heap": float(np.median([r["maxrss_mib"] for r in reports["heap"]]))})
    return rows


def table(rows) -> str:
    lines = ["| model | method | format | sparsity | glibc default ms | heap kept ms | speed-up (median of rounds) | "
             "rounds | peak resident MiB of the processes (glibc / heap) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['format']} | {r['sparsity']:g} | {r['glibc_ms']:.1f} | "
                     f"{r['heap_ms']:.1f} | {r['speedup']:.2f}x | {r['rounds']} | "
                     f"{r['maxrss_mib_glibc']:.0f} / {r['maxrss_mib_heap']:.0f} |")
    return "\n".join(lines)


@click.command()
@click.option("--model", "model_names", type=click.Choice(sorted(CNN_INPUT_SHAPES)), multiple=True,
              default=("lenet5", "vgg-small", "resnet20"), show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--budget", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Seconds of timed steps per row and process (at least 5 steps).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Processes of each setting per network, alternated.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Numba threads [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--worker", "worker_model", type=click.Choice(sorted(CNN_INPUT_SHAPES)), default=None, hidden=True)
def main(model_names, batch, budget, rounds, threads, seed, json_path, worker_model):
    """Time training steps with glibc's large freed blocks kept in the heap against glibc's default."""
    if threads is not None:
        numba.set_num_threads(threads)
    if worker_model is not None:
        click.echo(json.dumps(worker(worker_model, batch, budget, seed)))
        return
    if not host_heap.is_glibc():
        raise click.ClickException(f"this benchmark needs glibc (here: {platform.platform()})")
    meta = machine_meta()
    rows = run(model_names, batch, budget, seed, rounds, threads)
    meta.update({"command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "loadavg_end": loadavg(),
                 "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "models": list(model_names),
                 "batch": batch, "rounds": rounds, "warmup_steps": WARMUP_STEPS})
    click.echo(f"training step, glibc's default thresholds against large freed blocks kept in the heap; "
               f"{describe_code(meta['code'])}; batch {batch}")
    click.echo(f"numba {meta['numba']['num_threads']} threads; load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    click.echo(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
