"""``purerigl inspect`` through click's CliRunner, on tiny digits runs of every format and a dense one.

The numbers are checked against the model file's raw arrays read another way: ``np.load`` and a
SciPy CSR array built from the documented schema (docs/checkpoints.md), with no purerigl import on
that side; the bytes of a layer are the sizes of its ``layer{i}.*`` arrays in the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse
from click.testing import CliRunner
from purerigl.cli.main import main

CLEAN_ENV = {"PURERIGL_BACKEND": None, "PURERIGL_DATA": None}
RUNS = {
    "srigl": ["--method", "srigl", "--gamma-sal", "0.9", "--delta-t", "5"],  # ablates neurons
    "rigl": ["--method", "rigl", "--delta-t", "5"],
    "diag-rigl": ["--method", "diag-rigl", "--delta-t", "5"],
    "dense": ["--sparsity", "0"],
}


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], env=CLEAN_ENV)


def assert_usage_error(result, *words):
    """Exit 2, exactly one 'Error:' line containing every word, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("inspect")
    out = {}
    for name, extra in RUNS.items():
        args = ["train", "--epochs", 2, "--hidden", 48, "--out", base / name, "--no-progress", "--backend", "cpu", *extra]
        result = invoke(args)
        assert result.exit_code == 0, result.output
        out[name] = base / name
    return out


def raw_layer(f, i, spec):
    """(SciPy CSR of the layer's structure, {array name: array}) straight from the npz."""
    n_out, n_in = spec["shape"]
    arrays = {k: f[k] for k in f.files if k.startswith(f"layer{i}.")}
    fmt = spec["format"]
    if fmt == "dense":
        rows, cols = np.nonzero(np.ones((n_out, n_in), dtype=bool))
    elif fmt == "condensed":
        idx = arrays[f"layer{i}.indices"]
        rows, cols = np.repeat(arrays[f"layer{i}.rows"], idx.shape[1]), idx.ravel()
    elif fmt == "csr":
        indptr = arrays[f"layer{i}.indptr"]
        rows, cols = np.repeat(np.arange(n_out), np.diff(indptr)), arrays[f"layer{i}.indices"]
    else:
        t = np.arange(min(n_out, n_in))
        rows, cols = [], []
        for d in arrays[f"layer{i}.offsets"]:
            r, c = ((t + d) % n_out, t) if n_out >= n_in else (t, (t + d) % n_in)
            rows.append(r)
            cols.append(c)
        rows, cols = np.concatenate(rows), np.concatenate(cols)
    m = scipy.sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n_out, n_in))
    return m, arrays


@pytest.mark.parametrize("name", list(RUNS))
def test_json_agrees_with_the_raw_arrays(name, runs):
    """Every per-layer number of `inspect --json` equals the same quantity computed from the npz's
    arrays by another route (SciPy row/column counts, array sizes), and the total sums the layers."""
    path = runs[name] / "model.npz"
    result = invoke(["inspect", path, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "model" and report["epoch"] is None
    f = np.load(path, allow_pickle=False)
    meta = json.loads(str(f["meta"]))
    assert len(report["layers"]) == len(meta["layers"])
    for i, (row, spec) in enumerate(zip(report["layers"], meta["layers"])):
        m, arrays = raw_layer(f, i, spec)
        n_out, n_in = spec["shape"]
        assert m.nnz == m.sum()  # no duplicate positions
        fan_in, fan_out = m.sum(axis=1), m.sum(axis=0)
        assert row["format"] == spec["format"] and row["shape"] == [n_out, n_in]
        assert row["nnz"] == m.nnz
        assert row["density"] == pytest.approx(m.nnz / (n_out * n_in))
        assert row["fan_in"] == {"min": fan_in.min(), "mean": pytest.approx(fan_in.mean()), "max": fan_in.max()}
        assert row["fan_out"] == {"min": fan_out.min(), "mean": pytest.approx(fan_out.mean()), "max": fan_out.max()}
        assert row["empty_rows"] == int((fan_in == 0).sum())
        assert row["empty_cols"] == int((fan_out == 0).sum())
        assert row["bytes"]["total"] == sum(a.nbytes for a in arrays.values())
        assert row["bytes"]["bias"] == n_out * 4
        assert row["bytes"]["dense"] == (n_out * n_in + n_out) * 4
        assert row["bytes_ratio"] == pytest.approx(row["bytes"]["total"] / row["bytes"]["dense"])
        if spec["format"] == "condensed":
            active = arrays[f"layer{i}.rows"]
            assert row["ablated"] == n_out - active.size
            assert row["ablated_neurons"] == sorted(set(range(n_out)) - set(active.tolist()))
        else:
            assert row["ablated"] is None and row["ablated_neurons"] is None
        if spec["format"] == "diagonal":
            assert row["diagonals"] == {"K": arrays[f"layer{i}.offsets"].size, "P": max(n_out, n_in)}
        else:
            assert row["diagonals"] is None
        if spec["format"] == "dense":
            assert row["bytes_ratio"] == 1.0
    total = report["total"]
    assert total["nnz"] == sum(r["nnz"] for r in report["layers"])
    assert total["bytes"]["total"] == sum(r["bytes"]["total"] for r in report["layers"])


def test_srigl_run_shows_ablated_neurons(runs):
    """The SRigL run with gamma_sal 0.9 ablates neurons in its hidden layer; the text table shows it."""
    report = json.loads(invoke(["inspect", runs["srigl"] / "model.npz", "--json"]).stdout)
    assert report["layers"][0]["ablated"] > 0
    assert report["layers"][-1]["ablated"] == 0  # the output layer is never ablated
    text = invoke(["inspect", runs["srigl"] / "model.npz"])
    assert text.exit_code == 0, text.output
    assert f"{report['layers'][0]['ablated']} of 48" in text.output


@pytest.mark.parametrize("name", list(RUNS))
def test_text_table(name, runs):
    """The text form names the file, every layer, the format, a total line and the column headers."""
    result = invoke(["inspect", runs[name] / "model.npz"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("model ") and "model.npz" in lines[0]
    assert "fan-in min/mean/max" in lines[1] and "dense bytes" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["layer0", "layer1", "total"]
    fmt = {"srigl": "condensed", "rigl": "csr", "diag-rigl": "diagonal", "dense": "dense"}[name]
    assert lines[2].split()[1] == fmt
    if name == "diag-rigl":
        assert " of 64" in lines[2]  # K of P for the 48 x 64 layer


def test_checkpoint_and_run_directory(runs):
    """A checkpoint is inspected as such (its epoch named) with the same layers as model.npz; a run
    directory means its model.npz."""
    run = runs["rigl"]
    model = json.loads(invoke(["inspect", run / "model.npz", "--json"]).stdout)
    ckpt = json.loads(invoke(["inspect", run / "checkpoint.npz", "--json"]).stdout)
    assert ckpt["kind"] == "checkpoint" and ckpt["epoch"] == 2
    assert ckpt["layers"] == model["layers"]
    assert ckpt["file_bytes"] > model["file_bytes"]  # it also holds the optimizer state
    text = invoke(["inspect", run / "checkpoint.npz"]).output
    assert text.startswith("checkpoint ") and "after epoch 2" in text
    by_dir = json.loads(invoke(["inspect", run, "--json"]).stdout)
    assert by_dir["file"] == str(run / "model.npz") and by_dir["layers"] == model["layers"]


def test_bad_input_exits_2(tmp_path):
    """Missing file, a file that is not an npz, an npz that is not a purerigl model, a directory with
    no model: one Error line each, exit 2."""
    assert_usage_error(invoke(["inspect", tmp_path / "nope.npz"]), "no such file", "nope.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    assert_usage_error(invoke(["inspect", text]), "not an .npz")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    assert_usage_error(invoke(["inspect", other]), "not a purerigl model")
    assert_usage_error(invoke(["inspect", tmp_path]), "without model.npz")
