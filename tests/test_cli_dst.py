"""``purerigl train --method ...``: every DST method end to end on the embedded digits data.

Pins down: each method picks its own storage format (and refuses one it cannot use), topology
updates happen and are reported per epoch in metrics.jsonl (nnz, density, fan-in range, ablated
neurons, fraction changed), the budget is kept (nnz per layer constant for the unstructured methods,
fan-in exact for the condensed ones, K for diagonals), saved models evaluate to the reported
accuracy, and bad DST options are usage errors (exit 2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from purerigl.training.checkpoint import load_model
from test_cli_train import assert_usage_error, invoke

METHODS = {
    "static": "condensed",
    "set": "csr",
    "rigl": "csr",
    "srigl": "condensed",
    "gse": "csr",
    "diag-rigl": "diagonal",
}


def dst_args(out, method, *extra):
    return [
        "train", "--method", method, "--epochs", 2, "--hidden", "48,24", "--batch-size", 64,
        "--delta-t", 5, "--sparsity", 0.6, "--lr", 0.2, "--out", out, "--no-progress", "--backend", "cpu", *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dst")
    return {m: (invoke(dst_args(base / m, m)), base / m) for m in METHODS}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_and_reports_topology(runs, method):
    result, out = runs[method]
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["format"] == METHODS[method]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    first, last = lines
    assert [row["layer"] for row in last["layers"]] == ["layer0", "layer1", "layer2"]
    # 1438 samples / 64 = 23 steps per epoch, 46 in all; t_end = round(0.75 * 46) = 34 -> updates at 5..30
    assert last["topology_updates"] == 6
    changed = sum(row["changed"] for row in first["layers"] + last["layers"])
    assert (changed > 0) == (method != "static")
    model, meta = load_model(out / "model.npz")
    assert meta["method"] == method
    for row, layer, start in zip(last["layers"], model.sparse_layers(), config["layers"]):
        assert row["nnz"] == layer.W.nnz
        if method in ("static", "set", "rigl", "gse", "diag-rigl"):
            assert layer.W.nnz == start["nnz"]  # the budget is kept exactly
    assert last["test_accuracy"] > 0.5


def test_srigl_keeps_constant_fan_in_and_may_ablate(tmp_path):
    result = invoke(dst_args(tmp_path / "s", "srigl", "--gamma-sal", 0.95))
    assert result.exit_code == 0, result.output
    model, _ = load_model(tmp_path / "s" / "model.npz")
    for layer in model.sparse_layers():
        W = layer.W.validate(full=True)
        fan = W.row_fan_in()
        assert set(np.unique(fan[fan > 0])) == {W.k}
    assert model.sparse_layers()[-1].W.n_active == 10  # the output layer is never ablated


@pytest.mark.parametrize("method", ["rigl", "srigl", "diag-rigl", "gse"])
def test_evaluate_reproduces_the_final_accuracy(runs, method):
    _, out = runs[method]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    result = invoke(["evaluate", out / "model.npz", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-12)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--method", "rigl", "--format", "condensed"], ["rigl", "condensed", "csr"]),
        (["--method", "diag-rigl", "--format", "csr"], ["diag-rigl", "diagonal"]),
        (["--method", "nope"], ["--method", "nope"]),
        (["--delta-t", 0], ["--delta-t"]),
        (["--alpha", 1.5], ["--alpha"]),
        (["--alpha", -0.1], ["--alpha"]),
        (["--t-end", 0], ["--t-end"]),
        (["--t-end", 1.2], ["--t-end"]),
        (["--gse-sampler", "nope"], ["--gse-sampler"]),
        (["--gse-gamma", 0], ["--gse-gamma"]),
        (["--distribution", "nope"], ["--distribution"]),
        (["--gamma-sal", -1], ["--gamma-sal"]),
    ],
)
def test_bad_dst_options_are_usage_errors(tmp_path, extra, words):
    args = ["train", "--epochs", 1, "--hidden", 16, "--out", tmp_path / "x", "--no-progress", *extra]
    assert_usage_error(invoke(args), *words)
    assert not (tmp_path / "x" / "model.npz").exists()


def test_erk_distribution_and_dense_last(tmp_path):
    result = invoke(dst_args(tmp_path / "e", "rigl", "--distribution", "erk", "--dense-last"))
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    kinds = [row["kind"] for row in config["layers"]]
    assert kinds == ["sparse", "sparse", "dense"]
    sparse_nnz = sum(row["nnz"] for row in config["layers"])
    total = sum(row["shape"][0] * row["shape"][1] for row in config["layers"])
    # global budget C = sum_l (N_l - floor(0.6 N_l)) is met exactly
    assert sparse_nnz == sum(n - int(0.6 * n + 1e-9) for n in (48 * 64, 24 * 48, 10 * 24))
    assert sparse_nnz < total
