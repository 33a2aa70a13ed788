"""Which code trained a result (:mod:`purerigl.report.provenance`, ``config.json["code"]``, sweep records).

Pins down: the source fingerprint is the same for a checkout's layout (``cli/`` beside ``purerigl/``)
and a wheel's (``purerigl/cli/``) of the same files, and changes with any edit, rename or new file;
the git commit is reported only for a work tree that tracks the package, with ``git_dirty`` for an
edited or new file in the package and not for a file elsewhere; ``purerigl train`` writes the
process's code into config.json and a resume by other code appends it to ``code_resumed`` (the same
code adds nothing); a sweep's cell record and table name the code that trained each cell.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from purerigl.report.provenance import (
    code_version, describe_code, git_state, run_code, source_files, source_fingerprint,
)
from purerigl.report.sweep import Cell, code_summary, collect_results, write_result
from test_cli_resume import run_args
from test_cli_train import invoke

SOURCES = {"__init__.py": "VERSION = 1\n", "formats/csr.py": "def f():\n    return 1\n"}
CLI_SOURCES = {"__init__.py": "", "train.py": "print('train')\n"}


def _write(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


@pytest.fixture()
def layouts(tmp_path):
    """The same sources as a checkout (cli/ beside purerigl/) and as a wheel (purerigl/cli/)."""
    checkout, wheel = tmp_path / "checkout", tmp_path / "site-packages"
    _write(checkout / "purerigl", SOURCES)
    _write(checkout / "cli", CLI_SOURCES)
    _write(wheel / "purerigl", SOURCES)
    _write(wheel / "purerigl" / "cli", CLI_SOURCES)
    (wheel / "purerigl" / "__pycache__").mkdir()
    (wheel / "purerigl" / "__pycache__" / "x.py").write_text("compiled leftovers are not source\n")
    return ({"purerigl": checkout / "purerigl", "purerigl/cli": checkout / "cli"},
            {"purerigl": wheel / "purerigl", "purerigl/cli": wheel / "purerigl" / "cli"})


def test_a_checkout_and_a_wheel_of_the_same_files_have_one_fingerprint(layouts):
    checkout, wheel = layouts
    assert sorted(source_files(checkout)) == sorted(source_files(wheel)) == [
        "purerigl/__init__.py", "purerigl/cli/__init__.py", "purerigl/cli/train.py", "purerigl/formats/csr.py"]
    assert source_fingerprint(source_files(checkout)) == source_fingerprint(source_files(wheel))


@pytest.mark.parametrize("change", ["edit", "rename", "new file", "delete"])
def test_any_change_to_the_sources_changes_the_fingerprint(layouts, change):
    checkout, _ = layouts
    before = source_fingerprint(source_files(checkout))
    root = checkout["purerigl"]
    if change == "edit":
        (root / "formats" / "csr.py").write_text("def f():\n    return 2\n")
    elif change == "rename":
        (root / "formats" / "csr.py").rename(root / "formats" / "csr2.py")
    elif change == "new file":
        (root / "extra.py").write_text("")
    else:
        (root / "formats" / "csr.py").unlink()
    assert source_fingerprint(source_files(checkout)) != before


def test_this_process_fingerprints_its_own_package():
    files = source_files()
    assert {"purerigl/__init__.py", "purerigl/cli/train.py", "purerigl/report/provenance.py"} <= set(files)
    assert not any("__pycache__" in name for name in files)
    code = code_version()
    assert code["source"] == source_fingerprint(files) and len(code["source"]) == 12
    assert set(code) == {"purerigl", "source", "git", "git_dirty"}
    json.dumps(code)  # JSON-ready, as config.json stores it


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@needs_git
def test_git_commit_and_dirty_state_of_a_checkout(layouts, tmp_path):
    checkout, _ = layouts
    repo = checkout["purerigl"].parent
    folders = list(checkout.values())
    assert git_state(folders) == (None, None)  # not a git work tree
    _git(repo, "init", "-q")
    (repo / "README.md").write_text("results\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state(folders) == (head, False)
    (repo / "README.md").write_text("new results\n")  # outside the package: still the commit's code
    assert git_state(folders) == (head, False)
    (checkout["purerigl/cli"] / "new.py").write_text("")  # a new source file the commit lacks
    assert git_state(folders) == (head, True)
    (checkout["purerigl/cli"] / "new.py").unlink()
    (checkout["purerigl"] / "__init__.py").write_text("VERSION = 2\n")
    assert git_state(folders) == (head, True)


@needs_git
def test_a_package_inside_another_repository_reports_no_commit(layouts):
    """A wheel installed in a virtual environment inside some repository is not that repository's code."""
    _, wheel = layouts
    repo = wheel["purerigl"].parent
    _git(repo, "init", "-q")
    (repo / "other.txt").write_text("x\n")
    _git(repo, "add", "other.txt")
    _git(repo, "commit", "-q", "-m", "unrelated")
    assert git_state(list(wheel.values())) == (None, None)


@pytest.mark.parametrize("code, text", [
    (None, "code not recorded"),
    ({}, "code not recorded"),
    ({"source": "abcdef012345", "git": None}, "source abcdef012345"),
    ({"source": "abcdef012345", "git": "8fe2546280e5", "git_dirty": False}, "source abcdef012345 (git 8fe2546)"),
    ({"source": "abcdef012345", "git": "8fe2546280e5", "git_dirty": True},
     "source abcdef012345 (git 8fe2546 + changes)"),
])
def test_describe_code(code, text):
    assert describe_code(code) == text


def _code(source):
    return {"purerigl": "0.1.0", "source": source, "git": None, "git_dirty": None}


def test_code_summary_names_one_version_or_each_cells_version():
    one = [{"name": "a", "code": _code("aaaaaaaaaaaa")}, {"name": "b", "code": _code("aaaaaaaaaaaa")}]
    assert code_summary(one) == "Code: all 2 cells by source aaaaaaaaaaaa."
    mixed = [*one, {"name": "c"}, {"name": "d", "code": _code("aaaaaaaaaaaa"),
                                    "code_resumed": [{"after_epoch": 4, **_code("bbbbbbbbbbbb")}]}]
    assert code_summary(mixed) == (
        "Code (cells by the version that started them): source aaaaaaaaaaaa: a, b, "
        "d (then source bbbbbbbbbbbb after epoch 4); code not recorded: c.")
    assert code_summary([]) == ""


# --------------------------------------------------------------------------------------------------
# purerigl train and the sweep records, end to end on the embedded digits data


def test_train_records_its_code_and_a_resume_by_other_code(tmp_path):
    out = tmp_path / "run"
    result = invoke(run_args(out, "static", "--epochs", 1))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["code"] == code_version() and "code_resumed" not in config

    result = invoke(["train", "--resume", out, "--no-progress"])  # the same code: nothing to note
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text()) == config and "note:" not in result.output

    config["code"] = _code("000000000000")  # as if the run had been started by other code
    (out / "config.json").write_text(json.dumps(config))
    result = invoke(["train", "--resume", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "note: the run's epochs up to 1 were last trained by source 000000000000" in result.output
    resumed = json.loads((out / "config.json").read_text())
    assert resumed["code_resumed"] == [{"after_epoch": 1, **code_version()}]
    assert {k: v for k, v in resumed.items() if k != "code_resumed"} == config  # nothing else changed

    result = invoke(["train", "--resume", out, "--no-progress"])  # resumed again by the same code
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text()) == resumed

    cell = Cell("static", 0.6, 0)
    record = write_result(out, cell, ["--method", "static"])
    assert record["code"] == _code("000000000000") and record["code_resumed"] == resumed["code_resumed"]
    assert run_code(out) == {"code": record["code"], "code_resumed": record["code_resumed"]}


def test_a_run_written_before_code_records_reads_as_not_recorded(tmp_path):
    out = tmp_path / "run"
    result = invoke(run_args(out, "static", "--epochs", 1))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    del config["code"]
    (out / "config.json").write_text(json.dumps(config))
    result = invoke(["train", "--resume", out, "--no-progress"])  # nothing to compare with: no entry
    assert result.exit_code == 0, result.output
    assert "code_resumed" not in json.loads((out / "config.json").read_text())
    assert run_code(out) == {}
    assert code_summary([{"name": "x", **run_code(out)}]) == (
        "Code: not recorded for the one cell (trained before runs recorded their code).")


def test_collect_results_fills_the_code_of_an_older_result_from_the_cells_config(tmp_path):
    cell = Cell("static", 0.6, 0)
    cell_dir = tmp_path / "cells" / cell.name
    result = invoke(run_args(cell_dir, "static", "--epochs", 1))
    assert result.exit_code == 0, result.output
    record = write_result(cell_dir, cell, [])
    record.pop("code")
    (cell_dir / "result.json").write_text(json.dumps(record))  # a result.json of an older sweep
    (collected,) = collect_results(tmp_path, [cell])
    assert collected["code"] == code_version()


def test_inspect_names_the_code_that_trained_a_run(tmp_path):
    out = tmp_path / "run"
    result = invoke(run_args(out, "static", "--epochs", 1))
    assert result.exit_code == 0, result.output
    result = invoke(["inspect", out])
    assert result.exit_code == 0, result.output
    assert f"trained by {describe_code(code_version())}" in result.output
    report = json.loads(invoke(["inspect", out, "--json"]).output)
    assert report["code"] == code_version() and report["code_resumed"] == []
    config = json.loads((out / "config.json").read_text())
    config["code_resumed"] = [{"after_epoch": 1, **_code("bbbbbbbbbbbb")}]
    (out / "config.json").write_text(json.dumps(config))
    assert "; resumed by source bbbbbbbbbbbb after epoch 1" in invoke(["inspect", out]).output
    model = tmp_path / "elsewhere.npz"  # a model file outside a run directory: no code to name
    model.write_bytes((out / "model.npz").read_bytes())
    result = invoke(["inspect", model])
    assert result.exit_code == 0 and "trained by" not in result.output
    assert json.loads(invoke(["inspect", model, "--json"]).output)["code"] is None
