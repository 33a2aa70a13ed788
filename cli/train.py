"""``purerigl train``: train a sparse network and write config.json, metrics.jsonl, checkpoint.npz, model.npz.

A run is built from its options by :func:`build_run` (:mod:`._run`), the one code path for a fresh run and for
``--resume DIR`` (which reads the options back from ``DIR/config.json``), so a resumed run has the
same model construction, DST updater and schedules as the original and ends bit-identical to an
uninterrupted run (``--delta-t auto``, the default, is stored as the integer it resolved to, so a
resumed run never derives it again). Before training the command prints the planned topology updates,
and it refuses a dynamic run whose schedule would never change the topology (:func:`check_schedule`).
Every file of the run directory is written atomically (temporary file, fsync, rename):
``metrics.jsonl`` is rewritten whole after every epoch, so it never holds a torn line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numba
import numpy as np
from click.core import ParameterSource

from purerigl.training.checkpoint import atomic_write, load_training_state, save_model, save_training_checkpoint
from purerigl.data import DATASETS
from purerigl.dst import METHODS
from purerigl.dst.distribution import DISTRIBUTIONS
from purerigl.dst.samplers import SAMPLERS
from purerigl.dst.schedule import AUTO_DELTA_T_MAX, AUTO_MIN_UPDATES
from purerigl.optim.lr_schedule import SCHEDULES
from purerigl.optim import OPTIMIZERS
from purerigl.formats.budget import FORMAT_NAMES
from purerigl.training.loop import Trainer, TrainingDiverged
from purerigl.report.provenance import code_version, describe_code

from . import _dynadiag, _ignored, _models
from ._run import DeltaT, build_run, canonical, check_default_method_format, check_schedule, run_options, schedule_plan
from ._options import FiniteFloatRange, backend_option, seed_option
from ._report import epoch_line, epoch_table_header

RUN_FILES = ("config.json", "metrics.jsonl", "model.npz", "checkpoint.npz")

#: Options that say how the run is written and shown, not what it computes; every other option of
#: the command is a run option, stored in config.json["options"] and fixed for a --resume.
SESSION_OPTIONS = ("out", "overwrite", "progress", "checkpoint_every", "resume", "threads")

#: Run options added after runs were written without them, with the value such a run had in effect:
#: ``--resume`` of an older run directory fills them in.
ADDED_OPTIONS = {"grad_accumulation": 1, "train_subset": None, "init_masks": None, "model": "mlp", "input_shape": None, "vit_width": 64,
                 "vit_depth": 4, "vit_heads": 4, "vit_patch": None, "vit_mlp_ratio": 2, **_dynadiag.OPTION_DEFAULTS}

#: Exit code of a run stopped because the loss became NaN or Inf (0: done, 2: bad input).
EXIT_DIVERGED = 3


class Diverged(click.ClickException):
    """Training diverged: printed as one ``Error:`` line, exit code 3."""

    exit_code = EXIT_DIVERGED


# --------------------------------------------------------------------------------------------------
# the run directory


def _remove_temporaries(out: Path) -> None:
    """Delete the temporary files a killed process may have left behind (``.<run file>.*.tmp``)."""
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink()


def _prepare_out_dir(out: Path | None, overwrite: bool, name: str) -> Path:
    """A fresh run directory; refuse one that already holds a run unless --overwrite."""
    if out is None:
        out = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} exists and is not a directory")
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held and not overwrite:
        raise click.UsageError(
            f"--out {out} already holds a run ({', '.join(held)}); choose another directory, pass --overwrite "
            f"to replace it or --resume {out} to continue it"
        )
    out.mkdir(parents=True, exist_ok=True)
    for f in held:
        (out / f).unlink()
    _remove_temporaries(out)
    return out


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl: one JSON line per epoch of ``history``, the whole file replaced atomically."""
    _write_text(path, "".join(json.dumps(m) + "\n" for m in history))


def _read_run_config(ctx: click.Context, run: Path) -> tuple[dict, dict]:
    """(config.json, its run options checked again by the command's own types) of the run in
    ``--resume run``; a usage error if ``run`` is not a resumable run of this version."""
    if not run.is_dir():
        raise click.UsageError(f"--resume {run}: no such directory")
    try:
        stored = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or not isinstance(stored.get("options"), dict):
        raise click.UsageError(f"--resume {run} is not a run directory of purerigl train (no readable config.json)")
    names = {p.name for p in ctx.command.params} - set(SESSION_OPTIONS)
    _dynadiag.legacy_method(stored["options"])
    for name, value in ADDED_OPTIONS.items():  # a run written before the option existed ran as its default
        if name in names:
            stored["options"].setdefault(name, value)
    if set(stored["options"]) != names:
        raise click.UsageError(f"--resume {run}: config.json does not hold the options of this version of purerigl train")
    opts = run_options({name: _stored_value(ctx, run, name, v) for name, v in stored["options"].items()})
    if not (run / "checkpoint.npz").is_file():
        raise click.UsageError(
            f"--resume {run}: the run has no checkpoint.npz yet (it stopped during its first epoch); "
            f"start it again with --out {run} --overwrite"
        )
    return stored, opts


def _stored_value(ctx: click.Context, run: Path, name: str, value):
    """A value read from config.json, checked and converted by the option's own click type."""
    param = next(p for p in ctx.command.params if p.name == name)
    try:
        return value if value is None else param.type.convert(value, param, ctx)
    except click.BadParameter as err:
        raise click.UsageError(f"--resume {run}: config.json holds an invalid value: {err.format_message()}") from None


def _resume_options(ctx: click.Context, raw: dict, session: dict) -> tuple[dict, int]:
    """(run options, checkpoint interval) of the run in --resume DIR.

    Run options given on the command line must equal the stored ones; each one that differs is named.
    """
    run = session["resume"]
    if session["overwrite"]:
        raise click.UsageError("--resume continues a run and --overwrite replaces it; pass only one")
    if session["out"] is not None and session["out"].resolve() != run.resolve():
        raise click.UsageError(f"--out {session['out']} and --resume {run} name different directories")
    stored, opts = _read_run_config(ctx, run)
    given = {
        name: canonical(name, value)
        for name, value in raw.items()
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    if given.get("delta_t") == "auto" and stored.get("schedule", {}).get("delta_t_auto"):
        del given["delta_t"]  # the run's delta_t was derived by auto: the stored integer is that value
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    conflicts = [
        f"{flags[name]} {value!r} (the run has {opts[name]!r})" for name, value in given.items() if value != opts[name]
    ]
    if conflicts:
        raise click.UsageError(
            f"--resume {run}: options differ from the run's config.json: {'; '.join(conflicts)}; "
            "leave them out or give the same values"
        )
    every = session["checkpoint_every"]
    if ctx.get_parameter_source("checkpoint_every") != ParameterSource.COMMANDLINE:
        every = _stored_value(ctx, run, "checkpoint_every", stored.get("checkpoint_every", every))
    return opts, every


# --------------------------------------------------------------------------------------------------
# the command


@click.command(epilog="Exit codes: 0 done; 2 bad input (one 'Error:' line); 3 training diverged (loss NaN or Inf).")
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True, help="Dataset to train on.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PURERIGL_DATA",
    show_envvar=True,
    help="Directory holding the dataset files (downloaded to a cache if absent).",
)
@_models.model_option
@_models.input_shape_option
@_models.vit_options
@click.option("--hidden", default="300,100", show_default=True, help="Hidden widths of --model mlp, comma-separated ('' for none).")
@click.option("--method", type=click.Choice(METHODS), default="rigl", show_default=True, help="DST method (static: the fixed random topology baseline).")
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), default=None, help="Sparse storage format  [default: the method's own: condensed for static/srigl, csr for rigl/set/gse, diagonal for diag-rigl and dynadiag]")
@click.option(
    "--sparsity",
    type=FiniteFloatRange(0.0, 1.0, max_open=True),
    default=0.9,
    show_default=True,
    help="Fraction of zero weights per layer; 0 trains dense layers (NumPy BLAS).",
)
@click.option("--distribution", type=click.Choice(DISTRIBUTIONS), default="uniform", show_default=True, help="How the global sparsity is spread over layers.")
@click.option("--dense-first/--sparse-first", default=None, help="Keep the first layer dense  [default: sparse for mlp, dense for a CNN (its first convolution)]")
@click.option("--dense-last/--sparse-last", default=None, help="Keep the last layer dense  [default: sparse for mlp, dense for a CNN (its classifier)]")
@click.option(
    "--delta-t",
    type=DeltaT(),
    default="auto",
    show_default=True,
    metavar="INTEGER|auto",
    help=f"Optimizer steps between topology updates. auto: min({AUTO_DELTA_T_MAX}, max(1, t_end steps // "
    f"{AUTO_MIN_UPDATES})), so at least {AUTO_MIN_UPDATES} updates up to t_end on any data and never more than "
    f"{AUTO_DELTA_T_MAX} steps apart (the RigL paper's {AUTO_DELTA_T_MAX}, which MNIST at batch 64 keeps; 17 on "
    "the embedded digits for 20 epochs). A dynamic run that would never update is refused.",
)
@click.option("--alpha", type=FiniteFloatRange(0.0, 1.0), default=None, help="Initial drop fraction  [default: 0.3; 0.2 for gse]")
@click.option("--t-end", type=FiniteFloatRange(0.0, 1.0, min_open=True), default=0.75, show_default=True, help="Fraction of all steps after which the topology is frozen.")
@click.option("--gamma-sal", type=FiniteFloatRange(min=0.0), default=0.3, show_default=True, help="SRigL neuron ablation: a neuron with fewer than tau salient connections is ablated. 0: no ablation; "
              "below 1 a fraction of the mean fan-in K_ref = floor(C / n_out), C the layer's connections: "
              "tau = max(1, floor(gamma_sal * K_ref)); "
              "from 1 on a count of connections: tau = ceil(gamma_sal).")
@click.option("--gse-gamma", type=FiniteFloatRange(0.0, min_open=True), default=1.0, show_default=True, help="GSE: candidates sampled per active connection.")
@click.option("--gse-sampler", type=click.Choice(SAMPLERS), default="uniform", show_default=True, help="GSE: candidate sampler.")
@click.option(
    "--grad-accumulation",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="RigL, SRigL, GSE, diag-rigl: score growth by the gradient summed over the last N batches "
    "(SRigL's grad_accumulation_n), streamed from the N kept (X, dY) pairs of each sparse layer: memory "
    "N * batch * (n_in + n_out) floats per layer, kept in checkpoint.npz too. 1: the last batch. SET ignores it.",
)
@_dynadiag.dynadiag_options
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=FiniteFloatRange(0.0, min_open=True), default=None, help="Base learning rate  [default: 0.05; 1e-3 for vit-tiny]")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="[default: sgd; adamw for vit-tiny]")
@click.option("--momentum", type=FiniteFloatRange(0.0, 1.0, max_open=True), default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=False, show_default=True)
@click.option("--weight-decay", type=FiniteFloatRange(min=0.0), default=None, help="[default: 1e-4; 0.05 for vit-tiny]")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True, help="Learning-rate schedule.")
@click.option("--lr-step-size", type=click.IntRange(min=1), default=None, help="Step schedule: epochs between decays  [default: a third of --epochs]")
@click.option("--lr-gamma", type=FiniteFloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True, help="Step schedule: factor applied at each decay.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None, help="Linear learning-rate warm-up  [default: 0; 5% of the steps for vit-tiny]")
@click.option("--val-fraction", type=FiniteFloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True)
@click.option(
    "--train-subset",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train on N samples of the training set only (stratified, the same N for every --seed), a reduced "
    "budget for quick tables; the test set stays whole. config.json's data.n_train records it  [default: all]",
)
@click.option(
    "--init-masks",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Start from your masks instead of random ones: a .npz or .safetensors file with layer0.mask, "
    "layer1.mask, ... (bool, n_out x n_in) for an MLP, conv1.mask, fc0.mask, ... (the names the run "
    "prints; a convolution's also c_out x c_in x kh x kw) for a CNN or the ViT, each holding its layer's "
    "budget in the run's format (exit 2 naming the layer otherwise); values are drawn as for a random "
    "start. Only a fresh run reads it (--resume restores the structure from the checkpoint). See "
    "docs/interop.md.",
)
@seed_option
@backend_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory  [default: runs/<time>-<dataset>-<method>-<format>-s<sparsity>]")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1, show_default=True, help="Write checkpoint.npz every N epochs; the last epoch always writes one.")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Continue the run in DIR from its checkpoint.npz with the options in its config.json (a run "
    "option given as well must be equal); ends exactly as an uninterrupted run would.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: on a terminal]")
@click.option(
    "--threads",
    type=click.IntRange(1, numba.config.NUMBA_NUM_THREADS),
    default=None,
    metavar="N",
    help="Numba threads of the cpu kernels (the results do not depend on it; 1 is the fastest choice on a "
    "machine whose cores are busy with other work). Small products run on one thread whatever N is.  "
    "[default: $NUMBA_NUM_THREADS, else all cores]",
)
@click.pass_context
def train(ctx, **raw):
    """Train a sparse MLP with a DST method (default rigl; the fixed random topology: --method static).

    Weights live only in the chosen sparse format from the first step to the last. If the loss becomes
    NaN or Inf, training stops (exit code 3), keeps the last checkpoint and writes no model.npz.
    """
    session = {k: raw.pop(k) for k in SESSION_OPTIONS}
    previous_threads = numba.get_num_threads()
    if session["threads"] is not None:
        numba.set_num_threads(session["threads"])
    try:
        _train(ctx, raw, session)
    finally:
        numba.set_num_threads(previous_threads)


def _train(ctx, raw: dict, session: dict) -> None:
    if session["resume"] is not None:
        opts, every = _resume_options(ctx, raw, session)
        trainer, meta = build_run(opts, resuming=True)
        out = session["resume"]
        _remove_temporaries(out)
        load_training_state(out / "checkpoint.npz", trainer)
        _write_metrics(out / "metrics.jsonl", trainer.history)  # drops the epochs after the checkpoint
        click.echo(f"resuming {out} after epoch {trainer.epoch} of {trainer.config.epochs}")
        stored = json.loads((out / "config.json").read_text())
        _record_resuming_code(out, stored, trainer.epoch)
        click.echo(schedule_plan(opts, trainer, bool(stored.get("schedule", {}).get("delta_t_auto"))))
    else:
        check_default_method_format(ctx, raw)
        opts, every = run_options(raw), session["checkpoint_every"]
        trainer, meta = build_run(opts)
        check_schedule(opts, trainer)
        schedule, auto = trainer.topology.schedule, opts["delta_t"] == "auto"
        opts["delta_t"] = schedule.delta_t  # config.json holds the integer: --resume reuses it as it is
        fmt = opts["fmt"] if opts["sparsity"] > 0 else "dense"
        out = _prepare_out_dir(
            session["out"], session["overwrite"], f"{opts['dataset']}-{opts['method']}-{fmt}-s{opts['sparsity']:g}"
        )
        run_config = {
            **meta, "format": fmt, "backend": opts["backend"],
            "dst": {k: opts[k] for k in ("distribution", "dense_first", "dense_last", "delta_t", "alpha", "t_end",
                                         "gamma_sal", "gse_gamma", "gse_sampler", "grad_accumulation",
                                         *(_dynadiag.OPTION_DEFAULTS if opts["method"] == "dynadiag" else ()))},
            "schedule": {"delta_t": schedule.delta_t, "delta_t_auto": auto, "t_end_steps": schedule.t_end,
                         "total_steps": trainer.total_steps, "updates": schedule.n_updates(trainer.total_steps)},
            "data": trainer.data.describe(), "layers": trainer.model.describe(), "command": " ".join(sys.argv),
            "options": opts, "checkpoint_every": every, "threads": numba.get_num_threads(),
            "code": code_version(),
        }
        _write_text(out / "config.json", json.dumps(run_config, indent=2) + "\n")
        click.echo(f"run directory: {out}")
        click.echo(schedule_plan(opts, trainer, auto))
        _warn_ignored(ctx, opts)
    _fit(trainer, meta, out, every, session["progress"])


def _record_resuming_code(out: Path, stored: dict, epoch: int) -> None:
    """Note in config.json when a run is resumed by code other than the code that wrote its last epochs.

    ``config.json["code"]`` is the code that started the run; each resume by a different source
    fingerprint appends ``{"after_epoch": epoch, **code_version()}`` to ``config.json["code_resumed"]``
    and says so on stderr, so a result's every epoch can be traced to the code that trained it. A run
    written before runs recorded their code gains no entry: there is nothing to compare with.
    """
    current = code_version()
    history = [stored["code"], *stored.get("code_resumed", [])] if isinstance(stored.get("code"), dict) else []
    if not history or history[-1].get("source") == current["source"]:
        return
    click.echo(f"note: the run's epochs up to {epoch} were last trained by {describe_code(history[-1])}; "
               f"it goes on with {describe_code(current)} (recorded in config.json as code_resumed)", err=True)
    stored["code_resumed"] = [*stored.get("code_resumed", []), {"after_epoch": epoch, **current}]
    _write_text(out / "config.json", json.dumps(stored, indent=2) + "\n")


def _warn_ignored(ctx, opts: dict) -> None:
    """One line on stderr naming the options given on the command line that this run never reads."""
    given = {p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE}
    line = _ignored.warning_line(_ignored.ignored_options(opts, given), {p.name: p.opts[0] for p in ctx.command.params})
    if line is not None:
        click.echo(line, err=True)


def _fit(trainer: Trainer, meta: dict, out: Path, every: int, progress: bool | None) -> None:
    """Train the remaining epochs, writing metrics.jsonl every epoch and checkpoint.npz every ``every``
    epochs and after the last; then model.npz. Divergence: a :class:`Diverged` error (exit 3)."""
    model, epochs = trainer.model, trainer.config.epochs
    for row in model.describe():
        click.echo(
            f"  {row.get('name', 'layer' + str(row['index']))}: {row['format']:9s} {row['shape'][0]:>5d} x {row['shape'][1]:<5d} "
            f"nnz {row['nnz']:>8d}  density {row['density']:.4f}"
        )
    click.echo(epoch_table_header())

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None
    checkpointed = trainer.epoch  # epoch of the last checkpoint on disk (0: none)

    def on_batch(n, loss):
        if bar is not None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch(tr, metrics):
        nonlocal bar, checkpointed
        if bar is not None:
            bar.close()
            bar = None
        _write_metrics(out / "metrics.jsonl", tr.history)
        if tr.epoch % every == 0 or tr.epoch == epochs:
            save_training_checkpoint(out / "checkpoint.npz", tr, **meta)
            checkpointed = tr.epoch
        click.echo(epoch_line(metrics))
        if show_bar and tr.epoch < epochs:
            bar = _new_bar(len(tr.data.y_train), tr.epoch + 1, epochs)

    if show_bar and trainer.epoch < epochs:
        bar = _new_bar(len(trainer.data.y_train), trainer.epoch + 1, epochs)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run ends in one Error line below
            history = trainer.fit(on_epoch=on_epoch, on_batch=on_batch)
    except TrainingDiverged as err:
        kept = (
            f"kept the last good checkpoint {out / 'checkpoint.npz'} (epoch {checkpointed})"
            if checkpointed
            else "no checkpoint was written"
        )
        raise Diverged(f"{err}; {kept}; no model.npz was written (lower --lr?)") from None
    finally:
        if bar is not None:
            bar.close()
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
