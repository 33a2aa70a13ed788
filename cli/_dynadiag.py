"""The ``--dynadiag-*`` options of ``purerigl train`` and what a DynaDiag run is built from them.

The method itself is :mod:`purerigl.dst.dynadiag`; this module only declares its options, turns them
into :class:`~purerigl.dst.dynadiag.DynaDiagOptions`, gates a built model and says what the run will do.
"""

from __future__ import annotations

import click
import numpy as np

from purerigl.dst.dynadiag import (
    FREEZE_MODES, FREEZE_VALUES, SOFT_MODES, DynaDiagOptions, DynaDiagUpdater, freeze_epoch_of, gate_model, temperature_at,
)

from ._options import FiniteFloatRange

#: The run options this module adds, with the value a run written before they existed had in effect
#: (none: such a run's ``dynadiag`` was today's diag-rigl, see :func:`legacy_method`).
OPTION_DEFAULTS = {
    "dynadiag_soft": "window", "dynadiag_window": 2.0, "dynadiag_freeze": "at_epoch", "dynadiag_freeze_epoch": None,
    "dynadiag_t_max": 5.0, "dynadiag_t_min": 0.05, "dynadiag_alpha_lr": 1e-3, "dynadiag_l1": 0.0,
    "dynadiag_freeze_values": "keep",
}

_OPTIONS = [
    click.option("--dynadiag-soft", type=click.Choice(SOFT_MODES), default="window", show_default=True,
                 help="DynaDiag: which diagonals are stored while the gates are soft. window: the ceil(c K) of "
                      "largest alpha, swapped every delta_t steps by gradient norm (memory O(c K L + P)); all: all "
                      "P of them, as the official code (the dense matrix's memory and work until the freeze)."),
    click.option("--dynadiag-window", type=FiniteFloatRange(min=1.0), default=2.0, show_default=True, metavar="C",
                 help="DynaDiag window: store ceil(C * K) diagonals while soft (C >= 1)."),
    click.option("--dynadiag-freeze", type=click.Choice(FREEZE_MODES), default="at_epoch", show_default=True,
                 help="DynaDiag: when the gates freeze to the top K diagonals by alpha (gate 1, alpha fixed): at "
                      "--dynadiag-freeze-epoch, at the start, or never (the final model then stays soft)."),
    click.option("--dynadiag-freeze-epoch", type=click.IntRange(min=1), default=None, metavar="E",
                 help="DynaDiag at_epoch: freeze at the start of epoch E (1-based)  [default: round(0.3 * "
                      "--epochs), at least 1: the official README's epoch 30 of 100]"),
    click.option("--dynadiag-freeze-values", type=click.Choice(FREEZE_VALUES), default="keep", show_default=True,
                 help="DynaDiag: the kept diagonals' values at the freeze. keep: as they are, the gate jumps to 1 (the "
                      "official code); fold: multiplied by their last gate, so each layer computes what it did "
                      "before (the gates are near K/P while the temperature is high: keep then scales every "
                      "gated layer's output by about P/K at once, which a network without normalisation may not "
                      "survive; fold also keeps the small scale of a soft phase that learned little)."),
    click.option("--dynadiag-t-max", type=FiniteFloatRange(0.0, min_open=True), default=5.0, show_default=True,
                 help="DynaDiag: temperature of the first epoch (cosine to --dynadiag-t-min at the last)."),
    click.option("--dynadiag-t-min", type=FiniteFloatRange(0.0, min_open=True), default=0.05, show_default=True,
                 help="DynaDiag: temperature of the last epoch."),
    click.option("--dynadiag-alpha-lr", type=FiniteFloatRange(0.0, min_open=True), default=1e-3, show_default=True,
                 help="DynaDiag: learning rate of the Adam that trains the diagonal scores alpha (weight decay 1e-4)."),
    click.option("--dynadiag-l1", type=FiniteFloatRange(min=0.0), default=0.0, show_default=True,
                 help="DynaDiag: weight of an l1 term on alpha (the paper's text; not in the official code)."),
]


def dynadiag_options(command):
    """Decorate ``command`` with the ``--dynadiag-*`` options (in the order of :data:`_OPTIONS`)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def options_of(opts: dict) -> DynaDiagOptions:
    """The method's settings from the canonical run options (checked: a bad combination is a usage error)."""
    if opts["dynadiag_t_min"] > opts["dynadiag_t_max"]:
        raise click.UsageError(f"--dynadiag-t-min {opts['dynadiag_t_min']:g} is above --dynadiag-t-max "
                               f"{opts['dynadiag_t_max']:g}")
    epoch = opts["dynadiag_freeze_epoch"]
    if epoch is not None and opts["dynadiag_freeze"] != "at_epoch":
        raise click.UsageError(f"--dynadiag-freeze-epoch is read only with --dynadiag-freeze at_epoch, not "
                               f"{opts['dynadiag_freeze']}")
    if epoch is not None and epoch > opts["epochs"]:
        raise click.UsageError(f"--dynadiag-freeze-epoch {epoch} is after the run's last epoch ({opts['epochs']})")
    return DynaDiagOptions(
        soft=opts["dynadiag_soft"], window=opts["dynadiag_window"], freeze=opts["dynadiag_freeze"],
        freeze_epoch=epoch, t_max=opts["dynadiag_t_max"], t_min=opts["dynadiag_t_min"],
        alpha_lr=opts["dynadiag_alpha_lr"], l1=opts["dynadiag_l1"],
        freeze_values=opts["dynadiag_freeze_values"],
    )


def build_dynadiag(opts: dict, model, budgets: dict, schedule, epochs: int) -> DynaDiagUpdater:
    """Gate ``model``'s diagonal layers (their stored diagonals drawn from the run's seed) and return
    the run's DST hook."""
    if opts.get("init_masks") is not None:
        raise click.UsageError("--init-masks is not read by --method dynadiag (its window is drawn and then "
                               "learned); start diag-rigl or static from your masks instead")
    settings = options_of(opts)
    t0 = temperature_at(0, epochs, settings.t_max, settings.t_min)
    gate_model(model, budgets, settings, np.random.default_rng([opts["seed"], 0xD1A6]), t0)
    return DynaDiagUpdater(schedule, budgets, settings, epochs, seed=opts["seed"],
                           grad_accumulation=opts["grad_accumulation"])


def plan(opts: dict, trainer) -> str:
    """The line ``purerigl train`` prints before a DynaDiag run."""
    up = trainer.topology
    s = up.options
    F = freeze_epoch_of(s.freeze, s.freeze_epoch, up.epochs)
    if F == 1:  # --dynadiag-freeze at_start, or the default 30% of a short run rounded to epoch 1
        hint = "; --dynadiag-freeze-epoch 2 or later keeps the gates soft for a while" if s.freeze == "at_epoch" else ""
        return ("topology: DynaDiag frozen to K diagonals at the start of epoch 1 (before the first step: no soft "
                f"phase and no swaps, a fixed set of K diagonals{hint})")
    freeze = "never frozen (the final model stays soft)" if F is None else f"frozen to K diagonals at the start of epoch {F}"
    if F is not None and s.freeze_values == "fold":
        freeze += ", their last gates folded into the values"
    if s.soft == "all":
        stored = "all P diagonals stored while soft (the official code's memory)"
    else:
        n = up.schedule.n_updates(trainer.total_steps)
        stored = (f"a window of ceil({s.window:g} K) diagonals, swapped every delta_t = {up.schedule.delta_t} steps "
                  f"({n} swap{'' if n == 1 else 's'} planned up to t_end, none after the freeze)")
    return f"topology: DynaDiag gates, temperature {s.t_max:g} -> {s.t_min:g} over {up.epochs} epochs; {stored}; {freeze}"


def legacy_method(options: dict) -> None:
    """In place: a run directory written before DynaDiag's own method existed named today's diag-rigl
    ``dynadiag``; it resumes as diag-rigl."""
    if options.get("method") == "dynadiag" and "dynadiag_soft" not in options:
        options["method"] = "diag-rigl"
