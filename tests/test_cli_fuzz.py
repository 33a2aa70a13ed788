"""``purerigl train`` over its option space (hypothesis): each input gets the outcome it deserves.

Every draw is a command line built from option values of three kinds, and a run directory:

- **valid** values (``OPTIONS[option][0]``), chosen so that *every combination* of them is a run that
  trains and, for a dynamic method, changes its topology at least once: a draw made only of them
  must exit 0 and write model.npz (``--schedule step`` is one of them: ``--lr-step-size`` defaults
  to a third of the epochs);
- **invalid** items, refused whatever else is drawn: a value of ``OPTIONS[option][1]``, a method
  with a format it cannot use, ``--nesterov`` without SGD momentum, ``--alpha 0`` for a dynamic
  method, MNIST from a missing data directory, or an unusable run directory (``--out`` a
  file or a finished run, ``--resume`` of nothing, of an empty directory, of a truncated checkpoint,
  of an edited config.json, with a differing run option or with ``--overwrite``). A draw holding
  exactly one of them must exit 2 with exactly one ``Error:`` line that names the offending option
  or value (with more, the line names one of them);
- **risky** values, valid alone but not with everything (``--hidden 8`` at 90% in Condensed has
  k = 0, ``--dense-first`` above the global budget, ``--val-fraction 0.99`` below the batch size,
  ``--delta-t 100`` beyond t_end, a huge ``--lr`` that diverges): a draw with them and nothing invalid ends in exit 0, or 2
  with one ``Error:`` line, or 3 (training diverged) only with the huge --lr.

Whatever the draw, no exception other than SystemExit escapes (CliRunner reports any other one as
``result.exception``: a failure) and no traceback is printed. Runs are tiny (one epoch of digits or
synthetic data, at most 24 hidden units): 300 examples take about 30 s on 2 cores.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from purerigl.cli._models import training_defaults
from purerigl.cli.main import main
from purerigl.cli.train import train as train_command
from test_cli_train import CLEAN_ENV

#: Which storage formats each method works on (DESIGN.md section 1's table); any other is an error.
METHOD_FORMATS = {
    "static": ("condensed", "diagonal", "csr"),
    "set": ("csr", "condensed"),
    "rigl": ("csr",),
    "srigl": ("condensed",),
    "gse": ("csr", "condensed"),
    "diag-rigl": ("diagonal",),
    "dynadiag": ("diagonal",),
}
FORMATS = ("condensed", "diagonal", "csr")
#: The command's own defaults (``--method``, ``--delta-t``, ...), read from its options.
DEFAULTS = {p.opts[0]: p.default for p in train_command.params if p.opts}
# options whose default is the model's own (None on the command line): the MLP's values, what a run gets
DEFAULTS.update({f"--{name.replace('_', '-')}": value for name, value in training_defaults("mlp").items()
                 if DEFAULTS.get(f"--{name.replace('_', '-')}") is None})
DEFAULT_METHOD = str(DEFAULTS["--method"])

# option: (valid values, invalid values). Every combination of valid values trains, and a dynamic
# method changes the topology at least once: the widths are >= 12 and the sparsity <= 0.9, so every
# layer keeps k >= 1 / K >= 1 in every format and distribution; the fewest steps (digits, 20% for
# validation, batch 200) are 6, which leaves room for the 5 warm-up steps and puts t_end = 0.75 at
# step 4, after an update at delta_t <= 3. --format is drawn after --method, among its formats.
OPTIONS = {
    "--dataset": (["digits", "digits", "synthetic"], ["nope"]),
    "--hidden": (["16", "24,16", "", " 12 "], ["0", "-3", "a,b", "8;8", "1e3", "8,-1", "16,"]),
    "--method": (list(METHOD_FORMATS), ["nope", ""]),
    "--format": ([], ["nope", "dense"]),
    "--sparsity": (["0", "0.5", "0.8", "0.9"], ["1", "1.5", "-0.1", "nan", "inf", "x"]),
    "--distribution": (["uniform", "erk", "er"], ["nope"]),
    "--delta-t": (["1", "3", *(["auto"] if DEFAULTS["--delta-t"] == "auto" else [])], ["0", "-1", "1.5", "x"]),
    "--alpha": (["0.3", "1"], ["1.5", "-0.1", "nan"]),
    "--t-end": (["0.75", "1"], ["0", "1.2", "nan", "-inf"]),
    "--gamma-sal": (["0", "0.3", "0.95", "2"], ["-1", "nan", "inf"]),
    "--gse-gamma": (["0.5", "1", "4"], ["0", "-1", "nan", "inf"]),
    "--gse-sampler": (["uniform", "grabo", "graest"], ["nope"]),
    "--epochs": (["1"], ["0", "-1", "x", "1.5"]),
    "--batch-size": (["16", "64", "200"], ["0", "-5", "100000", "x"]),
    "--lr": (["0.01", "0.1"], ["0", "-1", "nan", "inf", "x"]),
    "--optimizer": (["sgd", "adam", "adamw"], ["nope"]),
    "--momentum": (["0", "0.9"], ["1", "-0.5", "nan"]),
    "--weight-decay": (["0", "1e-4"], ["-1", "nan", "inf"]),
    "--schedule": (["constant", "step", "cosine"], ["nope"]),
    "--lr-step-size": (["1", "2"], ["0", "-1", "x"]),
    "--lr-gamma": (["0.1", "0.5", "1"], ["0", "1.5", "-1", "nan", "inf"]),
    "--warmup-steps": (["0", "5"], ["100000", "-1", "x"]),
    "--val-fraction": (["0", "0.2"], ["1", "-0.1", "nan"]),
    "--seed": (["0", "7"], ["-1", "x"]),
    # cuda is left out: on the tests' CUDA simulator it is valid but far too slow for hundreds of runs;
    # tests/test_cli_basic.py checks `train --backend cuda` without a GPU or the simulator (exit 2)
    "--backend": (["cpu", "reference"], ["nope", ""]),
    "--checkpoint-every": (["1", "3"], ["0", "-1"]),
}
#: Flags that never conflict with anything.
FLAGS = ["--sparse-first", "--sparse-last", "--no-nesterov", "--progress", "--no-progress"]
#: Valid alone, not with everything (see the module docstring).
RISKY = [("--hidden", "8"), ("--sparsity", "0.99"), ("--val-fraction", "0.99"), ("--batch-size", "500"),
         ("--lr", "1e6"), ("--dense-first",), ("--dense-last",), ("--delta-t", "100"), ("--t-end", "0.1"),
         ("--alpha", "0")]
#: Invalid items beyond one bad option value; those in METHOD_KINDS each decide the method, so a
#: draw holds at most one of them.
COMBINED_KINDS = ["mnist", "method-format", "nesterov", "alpha-zero"]
METHOD_KINDS = {"--method", "method-format", "alpha-zero"}
#: The finished run that the resume draws continue, and run options equal to / differing from its own.
FINISHED = ["--epochs", "1", "--hidden", "8", "--sparsity", "0.5", "--method", "static"]
SAME_AS_FINISHED = [("--epochs", "1"), ("--hidden", " 8 "), ("--sparsity", "0.5"), ("--method", "static"),
                    ("--seed", "0"), ("--dataset", "digits")]
DIFFERENT_FROM_FINISHED = [("--epochs", "2"), ("--hidden", "16"), ("--sparsity", "0.8"), ("--method", "rigl"),
                           ("--seed", "7"), ("--optimizer", "adam")]
#: The states of --out / --resume, with whether the directory is usable.
OUT_STATES = {"empty-dir": True, "holds-run": False, "is-file": False}
RESUME_STATES = {"run": True, "empty": False, "missing": False, "file": False, "truncated": False, "edited": False}


# --------------------------------------------------------------------------------------------------
# the draws


@st.composite
def fresh_draws(draw, only_valid=False):
    """(args, bad, risky): options for a fresh --out. ``bad`` holds one tuple per invalid item: the
    option and value of which the error line must name one; ``risky`` the risky items drawn.
    ``only_valid``: valid values only (no invalid or risky item)."""
    n_bad = 0 if only_valid else draw(st.sampled_from([0, 0, 1, 1, 1, 2]))
    bad_kinds = set(draw(st.lists(st.sampled_from([*OPTIONS, *COMBINED_KINDS]), min_size=n_bad, max_size=n_bad,
                                  unique_by=lambda kind: "method" if kind in METHOD_KINDS else kind)))
    chosen = {}  # option: (value, whether it is an invalid item)
    for option, (valid, invalid) in OPTIONS.items():
        if option in bad_kinds:
            chosen[option] = (draw(st.sampled_from(invalid)), True)
        elif valid and draw(st.booleans()):
            chosen[option] = (draw(st.sampled_from(valid)), False)

    def value(option):
        return chosen[option][0] if option in chosen else str(DEFAULTS[option])

    def is_bad(option):
        return option in chosen and chosen[option][1]

    groups, bad, flags = [], [], draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    # invalid items made of several options; each sets what makes it invalid
    if "mnist" in bad_kinds:  # MNIST from a data directory that does not exist: never a download
        chosen["--dataset"] = ("mnist", True)
        groups.append(["--data-dir", "{tmp}/no-data"])
        bad.append(("--dataset", "mnist", "--data-dir"))
    if "method-format" in bad_kinds:
        method = draw(st.sampled_from([m for m in METHOD_FORMATS if m != "static"]))
        wrong = draw(st.sampled_from([f for f in FORMATS if f not in METHOD_FORMATS[method]]))
        chosen["--method"], chosen["--format"] = (method, True), (wrong, True)
    if "alpha-zero" in bad_kinds:  # a dynamic run with --alpha 0 never changes its topology
        chosen["--alpha"] = ("0", True)
        if value("--method") == "static":
            chosen["--method"] = (draw(st.sampled_from([m for m in METHOD_FORMATS if m != "static"])), False)
        if value("--sparsity") == "0":
            chosen["--sparsity"] = ("0.5", False)
    if "nesterov" in bad_kinds:  # Nesterov needs SGD with momentum
        flags = [f for f in flags if f != "--no-nesterov"] + ["--nesterov"]
        if value("--optimizer") == "sgd" and not is_bad("--momentum"):
            chosen["--momentum"] = ("0", True)
        bad.append(("--nesterov",))
    elif value("--optimizer") == "sgd" and value("--momentum") == "0.9" and draw(st.booleans()):
        flags.append("--nesterov")
    method = value("--method")
    if "--format" not in chosen and method in METHOD_FORMATS and draw(st.booleans()):
        chosen["--format"] = (draw(st.sampled_from(METHOD_FORMATS[method])), False)
    risky = []
    if n_bad == 0 and not only_valid:
        for item in draw(st.lists(st.sampled_from(RISKY), max_size=2, unique=True)):
            option = item[0]
            if len(item) == 1:
                flags.append(option)
            else:
                chosen[option] = (item[1], False)
            risky.append(item)
    for option, default in (("--hidden", "16"), ("--epochs", "1")):
        chosen.setdefault(option, (default, False))
    groups += [[option, v] for option, (v, _) in chosen.items()] + [[flag] for flag in flags]
    args = [a for group in draw(st.permutations(groups)) for a in group]
    bad += [(option, v) for option, (v, invalid) in chosen.items() if invalid]
    return args, bad, risky


@st.composite
def invocations(draw):
    """(state of the run directory, arguments, bad items, risky items)."""
    where = draw(st.sampled_from(["fresh"] * 6 + ["out", "resume"]))
    if where == "fresh":
        args, bad, risky = draw(fresh_draws())
        return "fresh", args, bad, risky
    if where == "out":  # valid options into an odd --out
        args, _, _ = draw(fresh_draws(only_valid=True))
        state = draw(st.sampled_from(sorted(OUT_STATES)))
        if state == "holds-run" and draw(st.booleans()):
            args.append("--overwrite")
        usable = OUT_STATES[state] or "--overwrite" in args
        return f"out-{state}", args, [] if usable else [("--out", "{out}")], []
    state = draw(st.sampled_from(sorted(RESUME_STATES)))
    bad = [] if RESUME_STATES[state] else [("--resume", "{out}")]
    args = [a for item in draw(st.lists(st.sampled_from(SAME_AS_FINISHED), max_size=2, unique=True)) for a in item]
    if draw(st.booleans()):
        args += ["--checkpoint-every", draw(st.sampled_from(OPTIONS["--checkpoint-every"][0]))]
    if draw(st.integers(0, 3)) == 0:
        option, value = draw(st.sampled_from(DIFFERENT_FROM_FINISHED))
        args += [option, value]
        bad.append((option, value))
    elif draw(st.integers(0, 5)) == 0:
        args.append("--overwrite")
        bad.append(("--overwrite",))
    return f"resume-{state}", args, bad, []


# --------------------------------------------------------------------------------------------------
# the checks


def _mentions(line: str, words) -> bool:
    """Whether ``line`` names the option (as ``--batch-size``, ``batch_size`` or ``batch size``) or
    one of the values in ``words`` as a whole word."""
    text = line.lower()
    forms = set()
    for word in (w.strip().lower() for w in words if w.strip()):
        forms.add(word)
        if word.startswith("--"):
            stem = word[2:]
            forms |= {stem, stem.replace("-", "_"), stem.replace("-", " ")}
    return any(re.search(rf"(?<![\w.-]){re.escape(form)}(?!\w|\.\d)", text) for form in forms)


def test_mentions_matches_options_and_values_as_words():
    line = "Error: batch size 100000 is larger than the training set (1438 samples)"
    assert _mentions(line, ["--batch-size"]) and _mentions(line, ["100000"])
    assert not _mentions(line, ["--lr", "x"]) and not _mentions(line, ["1000"])
    assert _mentions("Error: warmup_steps (5) exceeds total_steps (3)", ["--warmup-steps"])
    assert not _mentions("Error: Invalid value for '--sparsity': 0.0 is bad", ["0"])


def _prepare(state: str, finished_run: Path, out: Path) -> None:
    """Put --out / --resume in ``state``."""
    if state in ("out-holds-run", "resume-run", "resume-truncated", "resume-edited"):
        shutil.copytree(finished_run, out)
    if state == "resume-truncated":
        raw = (out / "checkpoint.npz").read_bytes()
        (out / "checkpoint.npz").write_bytes(raw[: len(raw) // 2])
    elif state == "resume-edited":
        config = json.loads((out / "config.json").read_text())
        config["options"]["sparsity"] = 1.5
        (out / "config.json").write_text(json.dumps(config))
    elif state in ("out-empty-dir", "resume-empty"):
        out.mkdir()
    elif state in ("out-is-file", "resume-file"):
        out.write_text("not a directory")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    result = CliRunner().invoke(main, ["train", *FINISHED, "--out", str(out), "--no-progress"], env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    return out


def _single_invalid_items():
    """Every invalid item alone, in a command that is valid otherwise: (id, arguments, bad item)."""
    cases = [(f"{o}={v!r}", [o, v], (o, v)) for o, (_, invalid) in OPTIONS.items() for v in invalid]
    cases.append(("mnist-no-data", ["--dataset", "mnist", "--data-dir", "{tmp}/no-data"],
                  ("--dataset", "mnist", "--data-dir")))
    cases += [(f"{m}-{f}", ["--method", m, "--format", f], ("--method", m, "--format", f))
              for m, formats in METHOD_FORMATS.items() for f in FORMATS if f not in formats]
    cases += [(f"nesterov-{opt}", ["--nesterov", *args], ("--nesterov",))
              for opt, args in (("momentum0", ["--momentum", "0"]), ("adam", ["--optimizer", "adam"]),
                                ("adamw", ["--optimizer", "adamw"]))]
    cases += [(f"alpha0-{m}", ["--alpha", "0", "--method", m], ("--alpha", "0"))
              for m in METHOD_FORMATS if m != "static"]
    return cases


SINGLE_INVALID_ITEMS = _single_invalid_items()


@pytest.mark.parametrize("args, item", [c[1:] for c in SINGLE_INVALID_ITEMS], ids=[c[0] for c in SINGLE_INVALID_ITEMS])
def test_each_invalid_item_alone_is_refused_with_one_line_naming_it(tmp_path, args, item):
    """Exactly one invalid item (every one the fuzz below draws): exit 2, one Error line, naming it."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["train", "--no-progress", "--hidden", "16", "--epochs", "1", *args, "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, argv, env=CLEAN_ENV)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, (argv, result.output)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1, (argv, result.output)
    assert _mentions(errors[0], item), (argv, item, errors[0])
    assert not (tmp_path / "out" / "model.npz").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=invocations())
@example(case=("fresh", ["--schedule", "step", "--hidden", "16", "--epochs", "1"], [], []))
@example(case=("fresh", ["--hidden", "16,", "--epochs", "1"], [("--hidden", "16,")], []))
@example(case=("fresh", ["--hidden", "16", "--epochs", "1", "--nesterov"], [], []))  # SGD 0.9 by default: valid
@example(case=("fresh", ["--hidden", "16", "--epochs", "1", "--method", "srigl", "--gamma-sal", "nan"],
               [("--gamma-sal", "nan")], []))
def test_train_gives_each_input_its_outcome(finished_run, case):
    state, args, bad, risky = case
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        _prepare(state, finished_run, out)
        where = ["--resume" if state.startswith("resume") else "--out", str(out)]
        argv = ["train", *(a.replace("{tmp}", tmp) for a in args), *where]
        if "--progress" not in args:
            argv.insert(1, "--no-progress")
        result = CliRunner().invoke(main, argv, env=CLEAN_ENV)

        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{argv} raised {result.exception!r}\n{result.output}") from result.exception
        assert "Traceback" not in result.output, (argv, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        event(f"{state.split('-')[0]}: exit {result.exit_code}, {min(len(bad), 2)} invalid{', risky' if risky else ''}")
        if bad:
            assert result.exit_code == 2, (argv, bad, result.output)
            assert len(errors) == 1, (argv, result.output)
            words = [[w.replace("{out}", str(out)) for w in item] for item in bad]
            assert any(_mentions(errors[0], item) for item in words), (argv, bad, errors[0])
        elif not risky:
            assert result.exit_code == 0, (argv, result.output)
        else:
            diverging = ("--lr", "1e6") in risky
            assert result.exit_code in ((0, 2, 3) if diverging else (0, 2)), (argv, result.output)
        if result.exit_code == 0:
            assert not errors and (out / "model.npz").is_file(), (argv, result.output)
        else:
            assert len(errors) == 1, (argv, result.output)
            assert (result.exit_code == 3) == ("diverged" in errors[0]), (argv, result.output)
