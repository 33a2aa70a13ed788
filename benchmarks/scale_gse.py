"""Train a sparse MLP with a million or more hidden neurons with GSE on the ``synthetic`` data set.

Issue 6 section 3. ``purerigl train`` does not expose the synthetic task's width and size options, so
this script uses the library directly: ``load_dataset("synthetic", n_features=..., n_train=...)``,
``build_mlp`` with per-layer budgets from :func:`purerigl.dst.distribution.layer_budgets` (ERK by
default: a uniform sparsity would leave the narrow first layer with a fan-in far below one),
``Trainer`` with a ``DSTUpdater`` running GSE. Weights are never dense: every layer is CSR from the
first step to the last. Reports seconds per epoch (training, and evaluation apart), the phases of the
loop (forward, backward, optimizer, topology), and peak memory: ``ru_maxrss`` of this process (the
resident set high-water mark, which includes Python, NumPy and Numba) and, with ``--tracemalloc``,
the peak of traced Python/NumPy allocations.

The published reference is SET's truly sparse MLP (Liu et al. 2021): 1.8 million neurons at 112
minutes per epoch on a laptop.

Run::

    python benchmarks/scale_gse.py --hidden 500000,500000 --sparsity 0.99996 --n-train 2000 --epochs 1 \\
        --json benchmarks/results/scale-gse.json
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import click
import numpy as np

from purerigl.cli._timing import blas_summary
from purerigl.cli.info import library_versions, numba_threading
from purerigl.report.provenance import code_version
from purerigl.data import load_dataset
from purerigl.dst import UpdateSchedule, make_method
from purerigl.dst.distribution import layer_budgets
from purerigl.dst.updater import DSTUpdater
from purerigl.nn import build_mlp, parse_hidden
from purerigl.training.loop import TrainConfig, Trainer


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@click.command()
@click.option("--hidden", default="500000,500000", show_default=True, help="Hidden widths, comma-separated.")
@click.option("--sparsity", type=float, default=0.99996, show_default=True, help="Global sparsity.")
@click.option("--distribution", type=click.Choice(["erk", "uniform"]), default="erk", show_default=True)
@click.option("--n-features", type=int, default=1024, show_default=True)
@click.option("--n-classes", type=int, default=10, show_default=True)
@click.option("--n-train", type=int, default=2000, show_default=True)
@click.option("--n-test", type=int, default=500, show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--delta-t", type=int, default=10, show_default=True, help="Steps between GSE updates.")
@click.option("--alpha", type=float, default=0.2, show_default=True)
@click.option("--tracemalloc", "use_tracemalloc", is_flag=True, help="Also trace Python/NumPy allocations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(hidden, sparsity, distribution, n_features, n_classes, n_train, n_test, epochs, batch_size, lr, delta_t,
         alpha, use_tracemalloc, seed, json_path):
    """Train a GSE sparse MLP of very wide hidden layers on synthetic data; report s/epoch and peak memory."""
    if use_tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    data = load_dataset("synthetic", n_features=n_features, n_classes=n_classes, n_train=n_train, n_test=n_test)
    widths = (data.n_features, *parse_hidden(hidden), data.n_classes)
    shapes = [(n_out, n_in) for n_in, n_out in zip(widths, widths[1:])]
    budgets = layer_budgets(shapes, sparsity, distribution)
    model = build_mlp(data.n_features, hidden, data.n_classes, fmt="csr", sparsity=sparsity,
                      rng=np.random.default_rng(seed), budgets=budgets)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    steps = epochs * -(-data.x_train.shape[0] // batch_size)
    updater = DSTUpdater(make_method("gse", "csr"),
                         UpdateSchedule.from_fraction(steps, delta_t=delta_t, alpha=alpha, t_end=0.75),
                         {f"layer{i}": b for i, b in enumerate(budgets)}, seed=seed)
    trainer = Trainer(model, data, config, topology=updater)
    setup_s = time.perf_counter() - t0
    hidden_neurons = sum(parse_hidden(hidden))
    nnz = [int(layer.W.nnz) for layer in model.sparse_layers()]
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(f"network {'-'.join(map(str, widths))}: {hidden_neurons:,} hidden neurons, "
          f"{sum(nnz):,} connections ({distribution}, global sparsity {sparsity}); per layer "
          + ", ".join(f"{n:,} ({n / (s[0] * s[1]):.2e})" for n, s in zip(nnz, shapes)))
    print(f"data: synthetic, {n_train} train / {n_test} test samples, {n_features} features; "
          f"{steps} steps of batch {batch_size}; GSE every {delta_t} steps, alpha {alpha}; setup {setup_s:.1f} s")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, numba {numba_threading()}, "
          f"BLAS {blas_summary()}; load average {os.getloadavg()}")
    epochs_out = []

    def on_epoch(tr, m):
        epochs_out.append(m)
        print(f"epoch {m['epoch']}: train {m['seconds']:.1f} s (forward {m['forward_seconds']:.1f}, backward "
              f"{m['backward_seconds']:.1f}, optimizer {m['optimizer_seconds']:.1f}, topology "
              f"{m['topology_seconds']:.1f}), eval {m['eval_seconds']:.1f} s; train loss {m['train_loss']:.4f}, "
              f"test accuracy {m['test_accuracy']:.3f}; peak RSS {peak_rss_bytes() / 2**30:.2f} GiB", flush=True)

    t_fit = time.perf_counter()
    trainer.fit(on_epoch=on_epoch)
    fit_s = time.perf_counter() - t_fit
    traced = tracemalloc.get_traced_memory()[1] if use_tracemalloc else None
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "widths": list(widths), "hidden_neurons": hidden_neurons, "nnz_per_layer": nnz,
        "sparsity": sparsity, "distribution": distribution, "n_train": n_train, "n_test": n_test,
        "batch_size": batch_size, "delta_t": delta_t, "alpha": alpha, "epochs": epochs_out,
        "setup_seconds": setup_s, "fit_seconds_including_warmup": fit_s,
        "peak_rss_bytes": peak_rss_bytes(), "tracemalloc_peak_bytes": traced,
        "loadavg_end": list(os.getloadavg()), "versions": library_versions(), "code": code_version(),
        "numba": numba_threading(),
        "blas": blas_summary(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
    }
    print(f"peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB"
          + (f"; tracemalloc peak {traced / 2**30:.2f} GiB" if traced else ""))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
