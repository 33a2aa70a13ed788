"""Nothing saved is lost: ``purerigl train --resume``, ``--checkpoint-every``, crashes and divergence.

Pins down: a run that crashes (an exception in process, or SIGKILL of a real ``purerigl train``
process) and is continued with ``--resume DIR`` ends with the same model.npz, checkpoint.npz and
metrics (timing keys apart) as an uninterrupted run with the same seed, for every method; the run
directory never holds a torn metrics line or a leftover temporary file; ``--resume`` refuses what is
not a resumable run or options that differ from the run's (exit 2, one line); a loss that becomes NaN
or Inf stops the run with exit code 3, keeps the last good checkpoint and writes no model.npz; and a
sparsity that would leave a condensed layer k = 0 inputs per row is a usage error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import purerigl.cli.train as cli_train
from purerigl.training.loop import Trainer
from test_cli_train import assert_usage_error, invoke

METHODS = ["static", "set", "rigl", "srigl", "gse", "diag-rigl", "dynadiag", "dynadiag-all", "dense", "lenet5-srigl",
           "vit-dynadiag"]
#: The DynaDiag runs freeze at the start of epoch 3: the crash (checkpoint of epoch 1) and the resume
#: cross soft gates, window swaps, the alpha optimizer's state, the temperature and the freeze.
EXTRA = {"dynadiag": ["--dynadiag-freeze-epoch", 3, "--optimizer", "adam", "--lr", 0.01],
         "dynadiag-all": ["--dynadiag-soft", "all", "--dynadiag-freeze-epoch", 3],
         "lenet5-srigl": ["--model", "lenet5"],
         "vit-dynadiag": ["--model", "vit-tiny", "--vit-width", 16, "--vit-depth", 1, "--dynadiag-freeze-epoch", 3]}
#: The method of the runs whose name says more than the method.
METHOD_OF = {"dynadiag-all": "dynadiag", "lenet5-srigl": "srigl", "vit-dynadiag": "dynadiag"}
TIMING = ("seconds", "samples_per_second")


def run_args(out, method, *extra):
    """A short digits run whose topology changes in every epoch (23 steps an epoch, delta_t 5)."""
    method_args = ["--sparsity", 0] if method == "dense" else ["--method", METHOD_OF.get(method, method), "--sparsity", 0.6]
    return [
        "train", *method_args, "--epochs", 3, "--hidden", "48,24", "--delta-t", 5, "--t-end", 1.0,
        "--lr", 0.2, "--out", out, "--no-progress", "--backend", "cpu", *extra, *EXTRA.get(method, []),
    ]


def metrics(out):
    """metrics.jsonl as a list of dicts without the timing keys (every line must parse)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(TIMING)} for line in lines]


def arrays(path):
    """Every array of an .npz file; in ``meta`` the timing keys of the stored history are dropped."""
    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    meta = json.loads(str(out.pop("meta")))
    for m in meta.get("train", {}).get("history", []):
        for k in [k for k in m if k.endswith(TIMING)]:
            del m[k]
    return out, meta


def assert_same_run(a, b):
    """Two run directories hold bit-identical models, checkpoints and metrics (timing apart)."""
    for name in ("model.npz", "checkpoint.npz"):
        (xa, ma), (xb, mb) = arrays(a / name), arrays(b / name)
        assert xa.keys() == xb.keys(), name
        for key in xa:
            assert xa[key].dtype == xb[key].dtype, (name, key)
            np.testing.assert_array_equal(xa[key], xb[key], err_msg=f"{name}: {key}")
        assert ma == mb, name
    assert metrics(a) == metrics(b)


def assert_clean(out):
    """Only the four run files, no temporary file left behind."""
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "config.json", "metrics.jsonl", "model.npz"]


class Killed(Exception):
    """Stands for the process dying."""


@contextlib.contextmanager
def killed_at_the_second_checkpoint(monkeypatch):
    """While active, ``purerigl train`` writes its first checkpoint and dies (raises :class:`Killed`)
    while writing the second; yields the list of epochs whose checkpoint was written."""
    save, written = cli_train.save_training_checkpoint, []

    def dies_at_the_second(path, trainer, **meta):
        if written:
            raise Killed
        save(path, trainer, **meta)
        written.append(trainer.epoch)

    with monkeypatch.context() as m:
        m.setattr(cli_train, "save_training_checkpoint", dies_at_the_second)
        yield written


# --------------------------------------------------------------------------------------------------
# exact resume


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_a_crash_is_bit_identical(method, tmp_path, monkeypatch):
    """A 3-epoch run dies while writing its second checkpoint (metrics.jsonl already has the line of
    epoch 2, checkpoint.npz is still at epoch 1). `--resume` drops the extra line, reruns epochs 2 and
    3, and ends bit-identical to an uninterrupted run: weights and topology (model.npz), optimizer
    state, RNG states and DST counters (checkpoint.npz) and the metrics."""
    straight = tmp_path / "straight"
    assert invoke(run_args(straight, method)).exit_code == 0

    crashed = tmp_path / "crashed"
    with killed_at_the_second_checkpoint(monkeypatch) as written:
        result = invoke(run_args(crashed, method))
    assert isinstance(result.exception, Killed), result.output
    assert written == [1] and len(metrics(crashed)) == 2
    assert not (crashed / "model.npz").exists()

    resumed = invoke(["train", "--resume", crashed, "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "after epoch 1 of 3" in resumed.output
    assert_same_run(straight, crashed)
    assert_clean(crashed)


def test_checkpoint_every_writes_every_nth_epoch_and_the_last(tmp_path, monkeypatch):
    """--checkpoint-every 2 over 5 epochs checkpoints after epochs 2, 4 and 5; metrics every epoch.
    A --resume of the finished run keeps the interval it was started with and changes nothing."""
    save = cli_train.save_training_checkpoint
    epochs = []

    def recording(path, trainer, **meta):
        epochs.append(trainer.epoch)
        save(path, trainer, **meta)

    monkeypatch.setattr(cli_train, "save_training_checkpoint", recording)
    out = tmp_path / "run"
    result = invoke(run_args(out, "rigl", "--epochs", 5, "--checkpoint-every", 2))
    assert result.exit_code == 0, result.output
    assert epochs == [2, 4, 5]
    assert len(metrics(out)) == 5
    assert json.loads((out / "config.json").read_text())["checkpoint_every"] == 2

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "model.npz"}
    again = invoke(["train", "--resume", out, "--no-progress"])
    assert again.exit_code == 0, again.output
    assert epochs == [2, 4, 5]  # nothing left to train
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "model.npz"} == before


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real `python -m purerigl.cli.main train` process is killed with SIGKILL as soon as its first
    checkpoint exists (inside a later epoch). Its directory then holds no torn metrics line, and
    `--resume` in a new process ends bit-identical to an uninterrupted run, with no temporary file
    left."""
    env = {k: v for k, v in os.environ.items() if k not in ("PURERIGL_BACKEND", "PURERIGL_DATA")}
    base = [sys.executable, "-m", "purerigl.cli.main", "train"]
    args = ["--method", "rigl", "--hidden", "300,100", "--batch-size", 8, "--epochs", 12, "--delta-t", 20,
            "--checkpoint-every", 2, "--lr", 0.05, "--no-progress", "--backend", "cpu"]
    args = [str(a) for a in args]

    def run(*extra):
        done = subprocess.run(base + args + list(extra), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    straight = tmp_path / "straight"
    run("--out", str(straight))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(base + args + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint.npz").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.npz").exists(), "killed too late: the run had finished"
    assert 1 <= len(metrics(killed)) < 12  # every line parses: no torn line

    resumed = subprocess.run(base + ["--resume", str(killed), "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_run(straight, killed)
    assert_clean(killed)


# --------------------------------------------------------------------------------------------------
# what --resume refuses


def _finished_run(tmp_path):
    out = tmp_path / "run"
    result = invoke(run_args(out, "static", "--epochs", 1))
    assert result.exit_code == 0, result.output
    return out


def test_resume_refuses_what_is_not_a_resumable_run(tmp_path):
    """A missing directory, a directory without config.json, a run without a checkpoint yet and a
    truncated checkpoint: exit 2, one line naming the directory or file."""
    assert_usage_error(invoke(["train", "--resume", tmp_path / "missing"]), "missing", "no such directory")
    (tmp_path / "empty").mkdir()
    assert_usage_error(invoke(["train", "--resume", tmp_path / "empty"]), "empty", "not a run directory")

    run = _finished_run(tmp_path)
    (run / "config.json").write_text("{not json")
    assert_usage_error(invoke(["train", "--resume", run]), "not a run directory")

    run = _finished_run(tmp_path / "b")
    raw = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(raw[: len(raw) // 2])
    assert_usage_error(invoke(["train", "--resume", run]), "checkpoint.npz", "truncated")
    (run / "checkpoint.npz").unlink()
    assert_usage_error(invoke(["train", "--resume", run]), "no checkpoint.npz", "--overwrite")


def test_resume_refuses_differing_options_and_a_foreign_checkpoint(tmp_path):
    """Options given with --resume must equal the run's (each differing one is named; equal ones are
    fine); --overwrite and another --out conflict with --resume; a checkpoint written by a run with
    other training options is refused. A run directory given to a fresh run names --resume."""
    run = _finished_run(tmp_path)
    result = invoke(["train", "--resume", run, "--lr", 0.1, "--hidden", "48,25", "--epochs", 3, "--no-progress"])
    assert_usage_error(result, "--lr 0.1", "0.2", "--hidden '48,25'", "'48,24'")
    same = invoke(["train", "--resume", run, "--lr", 0.2, "--hidden", "48, 24", "--epochs", 1, "--method",
                   "static", "--format", "condensed", "--backend", "cpu", "--no-progress"])
    assert same.exit_code == 0, same.output
    assert_usage_error(invoke(["train", "--resume", run, "--overwrite"]), "--overwrite")
    assert_usage_error(invoke(["train", "--resume", run, "--out", tmp_path / "other"]), "different directories")
    assert_usage_error(invoke(run_args(run, "static", "--epochs", 1)), "--overwrite", f"--resume {run}")

    other = tmp_path / "other"
    assert invoke(run_args(other, "static", "--epochs", 1, "--lr", 0.3)).exit_code == 0
    shutil.copy(other / "checkpoint.npz", run / "checkpoint.npz")
    assert_usage_error(invoke(["train", "--resume", run]), "other training options", "lr")


# --------------------------------------------------------------------------------------------------
# divergence


def _assert_diverged(result, *words):
    assert result.exit_code == 3, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for word in ("diverged", *words):
        assert word in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("method", ["static", "gse"])
def test_absurd_learning_rate_exits_3_without_writing_a_model(method, tmp_path):
    """--lr 1e6 makes the loss non-finite within the first epoch: exit 3, one line naming the epoch and
    the step, no checkpoint, no model.npz, no metrics line."""
    out = tmp_path / "run"
    result = invoke(run_args(out, method, "--lr", 1e6))
    _assert_diverged(result, "epoch 1", "step", "no checkpoint")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Weights that turn Inf during epoch 2 stop the run with exit 3 naming epoch 2; checkpoint.npz
    stays the finite one of epoch 1, metrics.jsonl keeps one line, and no model.npz is written."""
    run_epoch = Trainer.run_epoch

    def poisoned(self, *args, **kwargs):
        if self.epoch == 1:
            self.model.linears[0].bias.value[0] = np.inf
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", poisoned)
    out = tmp_path / "run"
    result = invoke(run_args(out, "rigl"))
    _assert_diverged(result, "epoch 2", "step 23", "checkpoint.npz (epoch 1)")
    assert not (out / "model.npz").exists()
    assert len(metrics(out)) == 1
    saved, meta = arrays(out / "checkpoint.npz")
    assert meta["train"]["epoch"] == 1
    assert all(np.isfinite(a).all() for k, a in saved.items() if a.dtype.kind == "f")


# --------------------------------------------------------------------------------------------------
# k = 0


def test_condensed_layer_without_inputs_is_a_usage_error(tmp_path):
    """At 90% a 10 x 8 layer keeps 8 connections for 10 rows: the condensed format would need k = 0,
    which the command refuses (naming the layer and the sparsity that keeps k = 1) instead of silently
    training at density 1/8; CSR stores the 8 connections exactly and trains."""
    args = ["train", "--method", "static", "--epochs", 1, "--hidden", 8, "--sparsity", 0.9, "--no-progress",
            "--backend", "cpu"]
    result = invoke(args + ["--out", tmp_path / "c"])
    assert_usage_error(result, "layer1", "10 x 8", "k = 0", "0.875")
    assert not (tmp_path / "c").exists()
    assert invoke(args + ["--out", tmp_path / "c", "--sparsity", 0.875]).exit_code == 0
    assert invoke(args + ["--out", tmp_path / "r", "--format", "csr"]).exit_code == 0
