"""benchmarks/dynadiag_gain.py: the gain of a diagonal layer's effective weight, held to SciPy's row
norms and to the gates' known value at the official initialisation (K / P on every diagonal)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark
from click.testing import CliRunner

from purerigl.formats import Diagonal
from purerigl.nn import GatedDiagonalLinear
from purerigl.nn.layers import SparseLinear


@pytest.fixture
def gain(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling dynadiag_compare
    return load_benchmark("dynadiag_gain")


def _scipy_gain(W: Diagonal) -> float:
    """Median row norm computed from the CSR matrix (a different route than the script's bincount)."""
    A = W.to_scipy().astype(np.float64)
    return float(np.median(np.sqrt(np.asarray(A.multiply(A).sum(axis=1)).ravel())))


@pytest.mark.parametrize("shape, K", [((7, 5), 2), ((5, 7), 3), ((6, 6), 1), ((4, 9), 9)])
def test_row_gain_is_the_median_row_norm(gain, shape, K):
    rng = np.random.default_rng(0)
    W = Diagonal.random(shape, None, rng, K=K)
    values = np.asarray(W.values, dtype=np.float64)
    assert gain.row_gain(W, values) == pytest.approx(_scipy_gain(W), rel=1e-12)


def test_a_soft_layer_at_the_official_init_has_every_gate_k_over_p(gain):
    rng = np.random.default_rng(1)
    W = Diagonal.random((6, 10), None, rng, K=4)  # wide: P = 10 candidate diagonals, 4 stored
    layer = GatedDiagonalLinear(W, k=2, temperature=5.0, name="g")
    state = gain.layer_state(layer)
    assert state["phase"] == "soft" and (state["K"], state["stored"], state["P"]) == (2, 4, 10)
    assert state["gate"] == pytest.approx(2 / 10)  # equal scores: K softmax = K / P everywhere
    assert state["value_gain"] == pytest.approx(_scipy_gain(W), rel=1e-6)
    assert state["gain"] == pytest.approx(0.2 * _scipy_gain(W), rel=1e-6)


def test_a_frozen_or_plain_layer_counts_its_values(gain):
    rng = np.random.default_rng(2)
    W = Diagonal.random((8, 5), None, rng, K=3)
    frozen = gain.layer_state(GatedDiagonalLinear(W, k=3, frozen=True, name="f"))
    plain = gain.layer_state(SparseLinear(W, name="p"))
    for state, phase in ((frozen, "frozen"), (plain, "plain")):
        assert state["phase"] == phase and state["gate"] is None and state["value_gain"] is None
        assert state["gain"] == pytest.approx(_scipy_gain(W), rel=1e-6)


def test_the_script_reports_every_epoch_from_the_initialisation(gain, tmp_path):
    out = tmp_path / "gain.json"
    result = CliRunner().invoke(gain.main, [
        "--dataset", "digits", "--data-dir", "", "--model", "mlp", "--sparsity", "0.9", "--epochs", "2",
        "--freeze-epoch", "2", "--subset", "200", "--run", "dynadiag", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["layers"] and {layer["phase"] for layer in rows[1]["layers"]} == {"soft"}
    assert {layer["phase"] for layer in rows[2]["layers"]} == {"frozen"}  # frozen at the start of epoch 2
    for r in rows:
        assert r["net"] == pytest.approx(np.prod([x["gain"] / np.sqrt(2) for x in r["layers"]]))


def test_a_run_without_diagonal_layers_reports_none(gain, tmp_path):
    out = tmp_path / "gain.json"
    result = CliRunner().invoke(gain.main, [
        "--dataset", "digits", "--data-dir", "", "--model", "mlp", "--sparsity", "0.9", "--epochs", "1",
        "--subset", "200", "--run", "rigl", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "net -" in result.output
    assert [(r["layers"], r["net"]) for r in json.loads(out.read_text())] == [([], None), ([], None)]
