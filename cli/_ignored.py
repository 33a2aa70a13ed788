"""Options that a run does not read: one warning line before it starts, never an error.

``purerigl train`` takes the options of every method and model in one command, so ``--method rigl
--gamma-sal 0.5`` is accepted, and nothing in the run reads the 0.5. Refusing it would break
``purerigl sweep``, which passes the same ``--train-args`` to every cell; saying nothing would let
a reader believe the run used it. :func:`ignored_options` names each such option with the reason,
and :func:`warning_line` is what the command prints (on stderr, so the run's output stays as it is).

Only options given on the command line are checked: a default is never "ignored".
"""

from __future__ import annotations

from purerigl.dst import METHODS
from purerigl.dst.dynadiag import freeze_epoch_of
from purerigl.nn.models import MODELS

from ._dynadiag import OPTION_DEFAULTS as DYNADIAG_OPTIONS
from ._models import VIT_OPTIONS

#: The methods that change the topology during training (all but the static baseline).
DYNAMIC = tuple(m for m in METHODS if m != "static")
#: The methods that score growth by gradient, so read ``--grad-accumulation``
#: (``Method.scores_by_gradient``; tests/test_cli_ignored.py holds this tuple to it).
BY_GRADIENT = ("rigl", "srigl", "gse", "diag-rigl", "dynadiag")

#: Each method-specific option (its run-option name) and the methods that read it.
METHOD_READERS: dict[str, tuple[str, ...]] = {
    "delta_t": DYNAMIC,
    "alpha": DYNAMIC,
    "t_end": DYNAMIC,
    "grad_accumulation": BY_GRADIENT,
    "gamma_sal": ("srigl",),
    "gse_gamma": ("gse",),
    "gse_sampler": ("gse",),
    **{name: ("dynadiag",) for name in DYNADIAG_OPTIONS},
}

#: Each model-specific option and the models that read it (every built-in network reads --input-shape).
MODEL_READERS: dict[str, tuple[str, ...]] = {
    "hidden": ("mlp",),
    "input_shape": tuple(MODELS),
    **{name: ("vit-tiny",) for name in VIT_OPTIONS},
}

#: What a DynaDiag window swap reads: the update schedule, the gradient window and the window's size.
_SWAP_OPTIONS = ("delta_t", "alpha", "t_end", "grad_accumulation", "dynadiag_window")
#: What only matters while DynaDiag's gates are soft.
_SOFT_OPTIONS = _SWAP_OPTIONS + ("dynadiag_soft", "dynadiag_t_max", "dynadiag_t_min", "dynadiag_alpha_lr",
                                 "dynadiag_l1", "dynadiag_freeze_values")


def ignored_options(opts: dict, given: set[str]) -> list[tuple[str, str]]:
    """The options in ``given`` (run-option names given on the command line) that the run described by
    the canonical options ``opts`` never reads, each with the reason, in ``given``'s option order
    (method options first, then model options).

    Rules, checked in this order for each method option:

    1. ``--sparsity 0`` trains dense layers: every method option, and ``--distribution``, is unread.
    2. A method option is unread by a method outside its :data:`METHOD_READERS` entry.
    3. DynaDiag frozen at the start of epoch 1 (``--dynadiag-freeze at_start``, or the default freeze
       of a short run) has no soft phase: the options of :data:`_SOFT_OPTIONS` are unread.
    4. DynaDiag storing all P diagonals while soft (``--dynadiag-soft all``) never swaps: the options
       of :data:`_SWAP_OPTIONS` are unread.

    A model option is unread by a model outside its :data:`MODEL_READERS` entry.
    """
    method, dense = opts["method"], opts["sparsity"] == 0
    freeze = None
    if method == "dynadiag" and not dense:
        freeze = freeze_epoch_of(opts["dynadiag_freeze"], opts["dynadiag_freeze_epoch"], opts["epochs"])
    ignored = []
    for name in [*METHOD_READERS, "distribution"]:
        if name not in given:
            continue
        if dense:
            ignored.append((name, "--sparsity 0 trains dense layers"))
        elif name == "distribution":
            continue
        elif method not in METHOD_READERS[name]:
            readers = METHOD_READERS[name]
            who = "every method but static" if readers == DYNAMIC else " and ".join(readers) + " only"
            ignored.append((name, f"read by {who}, not --method {method}"))
        elif method == "dynadiag" and freeze is None and name == "dynadiag_freeze_values":
            ignored.append((name, "--dynadiag-freeze never: no freeze"))
        elif method == "dynadiag" and freeze == 1 and name in _SOFT_OPTIONS:
            ignored.append((name, "DynaDiag freezes its gates before the first step: no soft phase"))
        elif method == "dynadiag" and opts["dynadiag_soft"] == "all" and name in _SWAP_OPTIONS:
            ignored.append((name, "--dynadiag-soft all stores every diagonal and never swaps"))
    model = opts["model"]
    for name, readers in MODEL_READERS.items():
        if name in given and model not in readers:
            ignored.append((name, f"read by --model {', '.join(readers)} only, not --model {model}"))
    return ignored


def warning_line(ignored: list[tuple[str, str]], flags: dict[str, str]) -> str | None:
    """One line for ``purerigl train`` to print, or None when nothing was ignored.

    ``flags`` maps a run-option name to its command-line flag (``gamma_sal`` -> ``--gamma-sal``).
    """
    if not ignored:
        return None
    by_reason: dict[str, list[str]] = {}
    for name, why in ignored:
        by_reason.setdefault(why, []).append(flags.get(name, name))
    parts = [f"{', '.join(names)} ({why})" for why, names in by_reason.items()]
    return f"warning: no effect on this run: {'; '.join(parts)}"
