"""No input to ``purerigl train`` ever produces a traceback (hypothesis over the command's option space).

Every option is drawn absent, valid or invalid (out of range, NaN, Inf, not a number, unknown name),
together with the state of the output directory (fresh, holding a run, a file, ...) and ``--resume``
of a run, of a run with a truncated checkpoint or an edited config.json, of an empty directory or of
nothing. Whatever the draw, the command must end in one of:

- exit 0, with model.npz written;
- exit 2, with exactly one ``Error:`` line (bad input);
- exit 3, with one ``Error:`` line saying that training diverged (a huge --lr);

and never with another exception (CliRunner reports any exception other than SystemExit as
``result.exception``: that is a failure). Runs are tiny (one epoch of digits or synthetic data, at
most 24 hidden units), so that 400 examples take about 15 s on 2 cores. Each draw has few invalid items
so that most of them get past the checks and also exercise training and the run directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from purerigl.cli.main import main
from test_cli_train import CLEAN_ENV

# option: (valid values, invalid values); each is drawn absent, valid or invalid
OPTIONS = {
    "--dataset": (["digits", "digits", "synthetic"], ["nope", "mnist"]),  # mnist: with a missing --data-dir
    "--hidden": (["8", "16", "24,16", "", "16,", " 12 "], ["0", "-3", "a,b", "8;8", "1e3", "8,-1"]),
    "--method": (["static", "set", "rigl", "srigl", "gse", "dynadiag"], ["nope", ""]),
    "--format": (["condensed", "diagonal", "csr"], ["nope", "dense"]),
    "--sparsity": (["0", "0.5", "0.8", "0.9", "0.99"], ["1", "1.5", "-0.1", "nan", "inf", "x"]),
    "--distribution": (["uniform", "erk", "er"], ["nope"]),
    "--delta-t": (["1", "7", "100"], ["0", "-1", "1.5", "x"]),
    "--alpha": (["0", "0.3", "1"], ["1.5", "-0.1", "nan"]),
    "--t-end": (["0.1", "0.75", "1"], ["0", "1.2", "nan", "-inf"]),
    "--gamma-sal": (["0", "0.3", "0.95"], ["-1", "nan"]),
    "--gse-gamma": (["0.5", "1", "4"], ["0", "-1", "nan", "inf"]),
    "--gse-sampler": (["uniform", "grabo", "graest"], ["nope"]),
    "--epochs": (["1"], ["0", "-1", "x", "1.5"]),
    "--batch-size": (["16", "64", "500"], ["0", "-5", "100000", "x"]),
    "--lr": (["0.01", "0.1", "1e6"], ["0", "-1", "nan", "inf", "x"]),
    "--optimizer": (["sgd", "adam", "adamw"], ["nope"]),
    "--momentum": (["0", "0.9"], ["1", "-0.5", "nan"]),
    "--weight-decay": (["0", "1e-4"], ["-1", "nan", "inf"]),
    # "step" needs decay epochs that the command line cannot give yet: a clean exit 2 for now
    "--schedule": (["constant", "cosine"], ["step", "nope"]),
    "--warmup-steps": (["0", "5"], ["100000", "-1", "x"]),
    "--val-fraction": (["0", "0.2"], ["0.99", "1", "-0.1", "nan"]),
    "--seed": (["0", "7"], ["-1", "x"]),
    # cuda is left out: on the tests' CUDA simulator it is valid but far too slow for hundreds of runs;
    # tests/test_cli_basic.py checks `train --backend cuda` without a GPU or the simulator (exit 2)
    "--backend": (["cpu", "reference"], ["nope", ""]),
    "--checkpoint-every": (["1", "3"], ["0", "-1"]),
}
FLAGS = ["--dense-first", "--sparse-first", "--dense-last", "--nesterov", "--overwrite", "--progress"]
#: the state of --out (or of --resume) before the command runs, when it is drawn to be unusual
ODD_DIRS = [
    "holds-run", "empty-dir", "is-file", "resume-run", "resume-empty", "resume-missing",
    "resume-truncated",  # a run whose checkpoint.npz lost its second half
    "resume-edited",  # a run whose config.json holds a value the option does not allow
]


@st.composite
def invocations(draw):
    """(state of the run directory, arguments): option-value groups in a random order.

    Each draw has 0 (most often), 1 or 2 "bad" items: an invalid option value or an unusual run
    directory, so that most draws get past the checks and train.
    """
    n_bad = draw(st.sampled_from([0, 0, 0, 1, 2]))
    bad = draw(st.sets(st.sampled_from([*OPTIONS, "dir"]), min_size=n_bad, max_size=n_bad))
    groups = []
    for option, (valid, invalid) in OPTIONS.items():
        if option in bad:
            value = draw(st.sampled_from(invalid))
        elif draw(st.booleans()):
            value = draw(st.sampled_from(valid))
        else:
            continue
        if value == "mnist":  # only with a data directory that does not exist: never a download
            groups.append(["--data-dir", "{tmp}/no-data"])
        groups.append([option, value])
    groups += [[flag] for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))]
    given_options = {group[0] for group in groups}
    groups += [default for default in (["--hidden", "16"], ["--epochs", "1"]) if default[0] not in given_options]
    args = [a for group in draw(st.permutations(groups)) for a in group]
    return draw(st.sampled_from(ODD_DIRS)) if "dir" in bad else "fresh", args


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    result = CliRunner().invoke(
        main, ["train", "--epochs", "1", "--hidden", "8", "--sparsity", "0.5", "--out", str(out), "--no-progress"],
        env=CLEAN_ENV,
    )
    assert result.exit_code == 0, result.output
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=invocations())
def test_train_never_raises_a_traceback(finished_run, case):
    state, args = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        if state in ("holds-run", "resume-run", "resume-truncated", "resume-edited"):
            shutil.copytree(finished_run, out)
        if state == "resume-truncated":
            raw = (out / "checkpoint.npz").read_bytes()
            (out / "checkpoint.npz").write_bytes(raw[: len(raw) // 2])
        elif state == "resume-edited":
            config = json.loads((out / "config.json").read_text())
            config["options"]["sparsity"] = 1.5
            (out / "config.json").write_text(json.dumps(config))
        elif state in ("empty-dir", "resume-empty"):
            out.mkdir()
        elif state == "is-file":
            out.write_text("not a directory")
        where = ["--resume" if state.startswith("resume") else "--out", str(out)]
        argv = ["train", "--no-progress", *[a.replace("{tmp}", str(tmp)) for a in args], *where]
        result = CliRunner().invoke(main, argv, env=CLEAN_ENV)

        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{argv} raised {result.exception!r}\n{result.output}") from result.exception
        assert "Traceback" not in result.output, (argv, result.output)
        assert result.exit_code in (0, 2, 3), (argv, result.exit_code, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            assert not errors and (out / "model.npz").is_file(), (argv, result.output)
        else:
            assert len(errors) == 1, (argv, result.output)
            assert (result.exit_code == 3) == ("diverged" in errors[0]), (argv, result.output)
