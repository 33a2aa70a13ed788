"""Wall time and memory per epoch of DynaDiag's two storage variants and diag-rigl (issue 21).

Builds each run exactly as ``purerigl train`` does (its options parsed by the command itself, then
:func:`purerigl.cli.train.build_run`) in this one process, on the same data, and trains it, reporting
per epoch:

- ``seconds``: the training time of the epoch (the loop's own clock, evaluation excluded);
- ``peak RSS``: the process's peak resident memory during the epoch (Linux: ``VmHWM`` of
  /proc/self/status, reset at the start of every epoch by writing 5 to /proc/self/clear_refs), and
  how far it rose above the resident memory at the epoch's start;
- ``state``: the bytes of the training state held between steps, counted from the arrays: every
  parameter with its gradient, the optimizer's state, DynaDiag's scores alpha with their gradient and
  their Adam state (the per-step temporaries, such as the gated values, are not in it).

    python benchmarks/dynadiag_compare.py --data-dir ../shared/data/mnist --epochs 8
    python benchmarks/dynadiag_compare.py --sparsity 0.95 --run "dynadiag --dynadiag-soft all"
"""

from __future__ import annotations

import gc
import json
import os
import shlex

import click
import numpy as np

from purerigl.cli.train import SESSION_OPTIONS, build_run, run_options
from purerigl.cli.train import train as train_command
from purerigl.nn import GatedDiagonalLinear

RUNS = ("diag-rigl", "dynadiag", "dynadiag --dynadiag-soft all")


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def state_bytes(trainer) -> int:
    """Bytes of the arrays a run holds between steps (see the module docstring)."""
    total = 0
    for p in trainer.model.parameters():
        total += p.value.nbytes + p.grad.nbytes
    for key, value in trainer.optimizer.state_dict().items():
        total += np.asarray(value).nbytes
    for lin in trainer.model.linears:
        if isinstance(lin, GatedDiagonalLinear):
            total += lin.alpha.value.nbytes * 4  # alpha, its gradient, Adam's two moments
    return int(total)


def build(args: list[str]):
    ctx = train_command.make_context("train", args)
    raw = dict(ctx.params)
    for name in SESSION_OPTIONS:
        raw.pop(name)
    return build_run(run_options(raw))[0]


@click.command()
@click.option("--data-dir", default="../shared/data/mnist", show_default=True)
@click.option("--dataset", default="mnist", show_default=True)
@click.option("--sparsity", "sparsities", type=float, multiple=True, default=(0.9, 0.95), show_default=True)
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--run", "runs", multiple=True, default=RUNS, show_default=True,
              help="A method and its options, as given to purerigl train (repeatable).")
@click.option("--train-args", default="", help="Options added to every run (purerigl train's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(data_dir, dataset, sparsities, epochs, runs, train_args, json_path):
    can_reset = _reset_peak()
    print(f"# nproc {os.cpu_count()}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"peak RSS per epoch: {'VmHWM reset every epoch' if can_reset else 'process peak (no reset)'}")
    print(f"{'run':34} {'sparsity':>8} {'epoch':>5} {'seconds':>8} {'peak RSS MiB':>12} {'rise MiB':>9} "
          f"{'state KiB':>10} {'stored/K':>9} {'test acc':>8}")
    rows = []
    for sparsity in sparsities:
        for run in runs:
            method, *options = shlex.split(run)
            args = ["--dataset", dataset, "--data-dir", data_dir, "--method", method, "--sparsity", str(sparsity),
                    "--epochs", str(epochs), *options, *shlex.split(train_args)]
            gc.collect()
            trainer = build(args)
            start = {}

            def on_epoch(tr, metrics):
                peak = _status_kib("VmHWM")
                layers = [lin for lin in tr.model.linears if isinstance(lin, GatedDiagonalLinear)]
                ratio = (sum(lin.W.K for lin in layers) / sum(lin.k for lin in layers)) if layers else 1.0
                row = {"run": run, "sparsity": sparsity, "epoch": metrics["epoch"], "seconds": metrics["seconds"],
                       "peak_rss_mib": peak / 1024 if peak else None,
                       "rise_mib": (peak - start["rss"]) / 1024 if peak is not None and start.get("rss") is not None else None,
                       "state_kib": state_bytes(tr) / 1024, "stored_over_k": ratio,
                       "test_accuracy": metrics["test_accuracy"]}
                rows.append(row)
                nan = float("nan")
                print(f"{run:34} {sparsity:8.2f} {row['epoch']:5d} {row['seconds']:8.2f} "
                      f"{nan if peak is None else row['peak_rss_mib']:12.1f} "
                      f"{nan if row['rise_mib'] is None else row['rise_mib']:9.1f} "
                      f"{row['state_kib']:10.1f} {ratio:9.2f} {row['test_accuracy']:8.4f}", flush=True)
                _reset_peak()
                start["rss"] = _status_kib("VmRSS")

            _reset_peak()
            start["rss"] = _status_kib("VmRSS")
            trainer.fit(on_epoch=on_epoch)
            del trainer
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
