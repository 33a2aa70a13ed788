"""How ``purerigl train`` builds a run from its options: the canonical options stored in config.json,
the model, the DST updater and the schedules (:func:`build_run`, the one path for a fresh run and for
``--resume``), and the checks and the plan line printed before training."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from purerigl import get_backend
from purerigl.data import load_dataset
from purerigl.dst import METHOD_FORMATS, UpdateSchedule, make_method, resolve_format
from purerigl.dst.distribution import layer_budgets
from purerigl.dst.updater import DSTUpdater
from purerigl.nn import build_mlp, parse_hidden
from purerigl.training.loop import TrainConfig, Trainer

from . import _dynadiag, _models
from ._init_masks import install_init_masks


class DeltaT(click.ParamType):
    """``--delta-t``: a positive integer, or ``auto`` (:func:`purerigl.dst.schedule.auto_delta_t` of the
    run's t_end in steps, resolved by :func:`build_run` and stored in config.json as the integer)."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return click.IntRange(min=1).convert(value, param, ctx)


def is_dynamic(opts: dict) -> bool:
    """True for a run whose topology may change: a method other than static, at a sparsity above 0."""
    return opts["method"] != "static" and opts["sparsity"] > 0


def schedule_plan(opts: dict, trainer: Trainer, auto: bool) -> str:
    """The line ``purerigl train`` prints before training: how many topology updates are planned,
    delta_t and t_end in steps (``auto``: delta_t was derived from the run's length)."""
    if is_dynamic(opts) and opts["method"] == "dynadiag":
        return _dynadiag.plan(opts, trainer)
    if not is_dynamic(opts):
        return f"topology: fixed ({'dense' if opts['sparsity'] == 0 else 'static'}): nothing is dropped or grown"
    schedule, total = trainer.topology.schedule, trainer.total_steps
    n = schedule.n_updates(total)
    return (
        f"topology: {n} update{'' if n == 1 else 's'} planned, every delta_t = {schedule.delta_t} steps"
        f"{' (auto)' if auto else ''} up to t_end = step {schedule.t_end} of {total}; "
        f"drop fraction {schedule.alpha:g} decaying to 0"
    )


def check_schedule(opts: dict, trainer: Trainer) -> None:
    """Refuse (a usage error, exit 2) a dynamic run whose schedule never changes the topology: no
    update step before t_end (where alpha_t = 0), or ``--alpha 0``."""
    schedule, total = trainer.topology.schedule, trainer.total_steps
    if not is_dynamic(opts) or schedule.n_updates(total, changing=True) > 0:
        return
    if opts["method"] == "dynadiag" and opts["dynadiag_soft"] == "all":
        return  # every diagonal is stored: the gates alone choose, the schedule has nothing to swap
    method = opts["method"]
    if schedule.alpha == 0:
        raise click.UsageError(
            f"--alpha 0 never changes the topology of a --method {method} run; raise --alpha or train the "
            "fixed topology with --method static"
        )
    raise click.UsageError(
        f"--method {method} would never change the topology: the first update, at step delta_t = "
        f"{schedule.delta_t}, is not before t_end = step {schedule.t_end} ({opts['t_end']:g} of {total} steps); "
        f"lower --delta-t (now {schedule.delta_t}) or raise --epochs / --t-end"
    )


def check_default_method_format(ctx: click.Context, raw: dict) -> None:
    """A ``--format`` the default method cannot use, without ``--method``: one line naming the methods
    that store that format (rather than the bare format mismatch of an explicit method)."""
    method, fmt = raw["method"], raw["fmt"]
    if ctx.get_parameter_source("method") != ParameterSource.DEFAULT or fmt is None:
        return
    if fmt not in METHOD_FORMATS[method]:
        fits = [m for m, formats in METHOD_FORMATS.items() if fmt in formats]
        raise click.UsageError(
            f"--format {fmt} does not fit the default method {method} (it stores "
            f"{', '.join(METHOD_FORMATS[method])}); name a method that stores {fmt}: "
            + ", ".join(f"--method {m}" for m in fits)
        )


def canonical(name: str, value):
    """One option's value as stored in config.json: the backend by name, ``hidden`` as ``"300,100"``,
    ``data_dir`` as an absolute path; other values unchanged."""
    if name == "backend":
        return getattr(value, "name", value)
    if name == "hidden":
        return ",".join(str(w) for w in parse_hidden(value))
    if name in ("data_dir", "init_masks") and value is not None:
        return str(Path(value).resolve())
    return value


def run_options(raw: dict) -> dict:
    """The run options in the canonical, JSON-able form stored in config.json (see :func:`canonical`),
    with the defaults that depend on the method filled in (``fmt``, ``alpha``)."""
    opts = {name: canonical(name, value) for name, value in raw.items()}
    opts["fmt"] = resolve_format(opts["method"], opts["fmt"])
    for side in ("dense_first", "dense_last"):  # the model's own default: CNNs keep both ends dense
        if opts[side] is None:
            opts[side] = opts["model"] != "mlp"
    for name, value in _models.training_defaults(opts["model"]).items():  # the model's own training defaults
        if opts[name] is None:
            opts[name] = value
    if opts["model"] != "mlp" and opts["input_shape"] is not None:
        opts["input_shape"] = ",".join(map(str, _models.parse_shape(opts["input_shape"])))
    if opts["alpha"] is None:
        opts["alpha"] = 0.2 if opts["method"] == "gse" else 0.3
    return opts


def build_run(opts: dict, resuming: bool = False) -> tuple[Trainer, dict]:
    """The Trainer of a run and the metadata its model files carry, from the canonical run options.

    A fresh run and ``--resume`` both build through here, so the model (initialised from ``seed``), the
    DST updater (seeded from ``seed``) and the schedules are exactly those of the original run.
    ``opts["init_masks"]`` (a file of masks, ``--init-masks``) replaces the random structure of a fresh
    run; ``resuming`` skips it, since the checkpoint restores the structure.
    """
    method, fmt, sparsity, seed = opts["method"], opts["fmt"], opts["sparsity"], opts["seed"]
    backend = get_backend(opts["backend"])
    data = load_dataset(opts["dataset"], opts["data_dir"], seed=seed, val_fraction=opts["val_fraction"],
                        train_subset=opts.get("train_subset"))
    if opts["warmup_steps"] == "auto":  # 5% of the run's steps, resolved once and stored as the integer
        opts["warmup_steps"] = max(1, round(0.05 * opts["epochs"] * -(-data.x_train.shape[0] // opts["batch_size"])))
    config = TrainConfig(
        epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], optimizer=opts["optimizer"],
        momentum=opts["momentum"], nesterov=opts["nesterov"], weight_decay=opts["weight_decay"],
        schedule=opts["schedule"], warmup_steps=opts["warmup_steps"], seed=seed,
        lr_step_size=opts["lr_step_size"], lr_gamma=opts["lr_gamma"],
    )
    config.check(data.x_train.shape[0])
    if opts["model"] == "mlp":
        widths = (data.n_features, *parse_hidden(opts["hidden"]), data.n_classes)
        shapes = [(n_out, n_in) for n_in, n_out in zip(widths, widths[1:])]
        if sparsity == 0:
            budgets = [n_out * n_in for n_out, n_in in shapes]
        else:
            budgets = layer_budgets(
                shapes, sparsity, opts["distribution"], dense_first=opts["dense_first"], dense_last=opts["dense_last"]
            )
        model = build_mlp(
            data.n_features, opts["hidden"], data.n_classes, fmt=fmt, sparsity=sparsity, backend=backend,
            rng=np.random.default_rng(seed), budgets=budgets,
        )
        if opts.get("init_masks") is not None and not resuming:  # a resumed run's structure is in its checkpoint
            install_init_masks(model, opts["init_masks"], budgets, fmt, seed)
        budget_of = {f"layer{i}": b for i, b in enumerate(budgets)}
    else:
        model, budget_of = _models.build_network(opts, data, fmt, backend)
        if opts.get("init_masks") is not None and not resuming:
            install_init_masks(model, opts["init_masks"], budget_of, fmt, seed)
    steps = config.epochs * -(-data.x_train.shape[0] // config.batch_size)
    schedule = UpdateSchedule.from_fraction(steps, delta_t=opts["delta_t"], alpha=opts["alpha"], t_end=opts["t_end"])
    if method == "dynadiag" and sparsity > 0:
        updater = _dynadiag.build_dynadiag(opts, model, budget_of, schedule, config.epochs)
    else:
        updater = DSTUpdater(
            make_method(method, fmt, gamma_sal=opts["gamma_sal"], gse_gamma=opts["gse_gamma"],
                        gse_sampler=opts["gse_sampler"]),
            schedule, budget_of, seed=seed, grad_accumulation=opts["grad_accumulation"],
        )
    trainer = Trainer(model, data, config, topology=updater)
    meta = {
        "dataset": opts["dataset"],
        "normalisation": {"mean": data.mean, "std": data.std},
        "method": method if sparsity > 0 else "dense",
        "sparsity": sparsity,
        "model": opts["model"],
        **({"hidden": [row["shape"][0] for row in model.describe()[:-1]]} if opts["model"] == "mlp" else {}),
        "config": config.to_dict(),
    }
    return trainer, meta
