"""Seconds per epoch of ``purerigl train`` with N CPU-bound processes beside it (issue 19).

Runs ``purerigl train --dataset digits --epochs E`` once per (method, busy count) in a fresh process,
with the busy processes of ``purerigl bench --busy`` (:func:`cli.bench._busy.busy_processes`) started
before and stopped after, and prints the median of the epochs' ``seconds`` (metrics.jsonl; the first
epoch is left out: it loads the compiled kernels) and its ratio to the quiet run.

    python benchmarks/busy_epoch.py                       # static and rigl, busy 0 1 2, 20 epochs
    python benchmarks/busy_epoch.py --method static --busy 0 --busy 2 --env NUMBA_NUM_THREADS=1
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import click

from purerigl.cli.bench._busy import busy_processes


def epoch_seconds(method: str, epochs: int, env: dict, extra: tuple[str, ...], entry: str | None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        start = [entry] if entry else ["-c", "from purerigl.cli.main import main; main()"]
        cmd = [sys.executable, *start, "train", "--dataset", "digits", "--method", method,
               "--epochs", str(epochs), "--out", out, "--no-progress", *extra]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [json.loads(line)["seconds"] for line in f if line.strip()]


@click.command()
@click.option("--method", multiple=True, default=("static", "rigl"), show_default=True)
@click.option("--busy", "busy", type=int, multiple=True, default=(0, 1, 2), show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--env", "envs", multiple=True, help="NAME=VALUE for the training process (repeatable).")
@click.option("--train-arg", "extra", multiple=True, help="Extra argument to purerigl train (repeatable).")
@click.option("--entry", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A Python file to run as the purerigl command instead of the installed one (for example a "
                   "launcher of another checkout, to measure before and after a change).")
def main(method, busy, epochs, envs, extra, entry):
    env = dict(os.environ)
    for item in envs:
        name, _, value = item.partition("=")
        env[name] = value
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# nproc {os.cpu_count()}; load {load}; env {list(envs)}; train args {list(extra)}; entry {entry}")
    print(f"{'method':8} {'busy':>4} {'median s':>9} {'mean s':>7} {'min s':>7} {'max s':>7} {'x quiet':>8} "
          f"{'mean x quiet':>12}")
    for m in method:
        quiet = quiet_mean = None
        for n in busy:
            t0 = time.perf_counter()
            with busy_processes(n):
                secs = epoch_seconds(m, epochs, env, extra, entry)[1:]
            med, mean = statistics.median(secs), statistics.fmean(secs)
            if n == 0:
                quiet, quiet_mean = med, mean
            ratio = f"{med / quiet:8.2f} {mean / quiet_mean:12.2f}" if quiet else f"{'-':>8} {'-':>12}"
            print(f"{m:8} {n:4d} {med:9.4f} {mean:7.4f} {min(secs):7.4f} {max(secs):7.4f} {ratio}  "
                  f"(wall {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
