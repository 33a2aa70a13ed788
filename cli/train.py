"""``purerigl train``: train a sparse MLP and write config.json, metrics.jsonl, checkpoint.npz, model.npz."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from purerigl.checkpoint import save_model, save_training_checkpoint
from purerigl.data import DATASETS, load_dataset
from purerigl.dst import METHODS, UpdateSchedule, make_method, resolve_format
from purerigl.dst.distribution import DISTRIBUTIONS, layer_budgets
from purerigl.dst.samplers import SAMPLERS
from purerigl.dst.updater import DSTUpdater
from purerigl.lr_schedule import SCHEDULES
from purerigl.nn import build_mlp, parse_hidden
from purerigl.optim import OPTIMIZERS
from purerigl.sparsity import FORMAT_NAMES
from purerigl.train import TrainConfig, Trainer

from ._options import backend_option, seed_option
from ._report import epoch_line, epoch_table_header

RUN_FILES = ("config.json", "metrics.jsonl", "model.npz", "checkpoint.npz")


def _prepare_out_dir(out: Path | None, overwrite: bool, name: str) -> Path:
    """A fresh run directory; refuse one that already holds a run unless --overwrite."""
    if out is None:
        out = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} exists and is not a directory")
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held and not overwrite:
        raise click.UsageError(
            f"--out {out} already holds a run ({', '.join(held)}); choose another directory or pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    for f in held:
        (out / f).unlink()
    return out


def _append_line(path: Path, record: dict) -> None:
    """Append one JSON line in a single write, flushed to disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


@click.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True, help="Dataset to train on.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PURERIGL_DATA",
    show_envvar=True,
    help="Directory holding the dataset files (downloaded to a cache if absent).",
)
@click.option("--hidden", default="300,100", show_default=True, help="Hidden widths, comma-separated ('' for none).")
@click.option("--method", type=click.Choice(METHODS), default="static", show_default=True, help="DST method (static: fixed random topology).")
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), default=None, help="Sparse storage format  [default: the method's own: condensed for static/srigl, csr for rigl/set/gse, diagonal for dynadiag]")
@click.option(
    "--sparsity",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.9,
    show_default=True,
    help="Fraction of zero weights per layer; 0 trains dense layers (NumPy BLAS).",
)
@click.option("--distribution", type=click.Choice(DISTRIBUTIONS), default="uniform", show_default=True, help="How the global sparsity is spread over layers.")
@click.option("--dense-first/--sparse-first", default=False, show_default=True, help="Keep the first layer dense.")
@click.option("--dense-last/--sparse-last", default=False, show_default=True, help="Keep the last layer dense.")
@click.option("--delta-t", type=click.IntRange(min=1), default=100, show_default=True, help="Optimizer steps between topology updates.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=None, help="Initial drop fraction  [default: 0.3; 0.2 for gse]")
@click.option("--t-end", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.75, show_default=True, help="Fraction of all steps after which the topology is frozen.")
@click.option("--gamma-sal", type=click.FloatRange(min=0.0), default=0.3, show_default=True, help="SRigL: salient fraction below which a neuron is ablated (0: no ablation).")
@click.option("--gse-gamma", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True, help="GSE: candidates sampled per active connection.")
@click.option("--gse-sampler", type=click.Choice(SAMPLERS), default="uniform", show_default=True, help="GSE: candidate sampler.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(0.0, min_open=True), default=0.05, show_default=True, help="Base learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option("--momentum", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=False, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True, help="Learning-rate schedule.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True)
@seed_option
@backend_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory  [default: runs/<time>-<dataset>-<format>-s<sparsity>]")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: on a terminal]")
def train(dataset, data_dir, hidden, method, fmt, sparsity, distribution, dense_first, dense_last, delta_t, alpha,
          t_end, gamma_sal, gse_gamma, gse_sampler, epochs, batch_size, lr, optimizer, momentum, nesterov,
          weight_decay, schedule, warmup_steps, val_fraction, seed, backend, out, overwrite, progress):
    """Train a sparse MLP with a DST method (or a fixed random topology: --method static).

    Weights live only in the chosen sparse format from the first step to the last.
    """
    fmt = resolve_format(method, fmt)
    data = load_dataset(dataset, data_dir, seed=seed, val_fraction=val_fraction)
    widths = (data.n_features, *parse_hidden(hidden), data.n_classes)
    shapes = [(n_out, n_in) for n_in, n_out in zip(widths, widths[1:])]
    budgets = (
        [n_out * n_in for n_out, n_in in shapes]
        if sparsity == 0
        else layer_budgets(shapes, sparsity, distribution, dense_first=dense_first, dense_last=dense_last)
    )
    model = build_mlp(
        data.n_features, hidden, data.n_classes, fmt=fmt, sparsity=sparsity, backend=backend,
        rng=np.random.default_rng(seed), budgets=budgets,
    )
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps, seed=seed,
    )
    if alpha is None:
        alpha = 0.2 if method == "gse" else 0.3
    steps = config.epochs * -(-data.x_train.shape[0] // config.batch_size)
    updater = DSTUpdater(
        make_method(method, fmt, gamma_sal=gamma_sal, gse_gamma=gse_gamma, gse_sampler=gse_sampler),
        UpdateSchedule.from_fraction(steps, delta_t=delta_t, alpha=alpha, t_end=t_end),
        {f"layer{i}": b for i, b in enumerate(budgets)},
        seed=seed,
    )
    trainer = Trainer(model, data, config, topology=updater)
    out = _prepare_out_dir(out, overwrite, f"{dataset}-{method}-{fmt if sparsity > 0 else 'dense'}-s{sparsity:g}")
    meta = {
        "dataset": dataset,
        "normalisation": {"mean": data.mean, "std": data.std},
        "method": method if sparsity > 0 else "dense",
        "sparsity": sparsity,
        "hidden": list(model.describe()[i]["shape"][0] for i in range(len(model.linears) - 1)),
        "config": config.to_dict(),
    }
    run_config = {
        **meta, "format": fmt if sparsity > 0 else "dense", "backend": backend.name,
        "dst": {"distribution": distribution, "dense_first": dense_first, "dense_last": dense_last,
                "delta_t": delta_t, "alpha": alpha, "t_end": t_end, "gamma_sal": gamma_sal,
                "gse_gamma": gse_gamma, "gse_sampler": gse_sampler},
        "data": data.describe(), "layers": model.describe(), "command": " ".join(sys.argv),
    }
    (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")

    click.echo(f"run directory: {out}")
    for row in model.describe():
        click.echo(
            f"  layer{row['index']}: {row['format']:9s} {row['shape'][0]:>5d} x {row['shape'][1]:<5d} "
            f"nnz {row['nnz']:>8d}  density {row['density']:.4f}"
        )
    click.echo(epoch_table_header())

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None

    def on_batch(n, loss):
        if bar is not None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch(tr, metrics):
        nonlocal bar
        if bar is not None:
            bar.close()
        _append_line(out / "metrics.jsonl", metrics)
        save_training_checkpoint(out / "checkpoint.npz", tr, **meta)
        click.echo(epoch_line(metrics))
        if show_bar and tr.epoch < config.epochs:
            bar = _new_bar(len(data.y_train), tr.epoch + 1, config.epochs)

    if show_bar:
        bar = _new_bar(len(data.y_train), 1, config.epochs)
    history = trainer.fit(on_epoch=on_epoch, on_batch=on_batch)
    save_model(out / "model.npz", model, **meta)
    last = history[-1]
    total = sum(m["seconds"] for m in history)
    click.echo(
        f"done: test accuracy {last['test_accuracy']:.4f}, test loss {last['test_loss']:.4f}, "
        f"{total / len(history):.2f} s/epoch of training; model saved to {out / 'model.npz'}"
    )


def _new_bar(total: int, epoch: int, epochs: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="sample", leave=False, file=sys.stderr)
