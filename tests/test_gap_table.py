"""benchmarks/gap_table.py: each method's distance below dense per sparsity over the seeds done (issue 16's
"within 0.3 points of dense"), checked on hand-computed cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark
from click.testing import CliRunner
from scipy import stats


@pytest.fixture
def gap(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling curve_table
    return load_benchmark("gap_table")


def _cell(method, sparsity, seed, accuracy):
    return {"cell": {"method": method, "sparsity": sparsity, "seed": seed},
            "name": f"{method}-s{sparsity * 100:g}-seed{seed}", "test_accuracy": accuracy, "train_loss": 0.01,
            "seconds_per_epoch": 1.0}


def _write(path: Path, cells: list[dict]) -> Path:
    path.write_text(json.dumps({"budget": {}, "rows": [], "cells": cells}))
    return path


CELLS = [
    _cell("dense", 0.0, 0, 0.9940), _cell("dense", 0.0, 1, 0.9930),  # mean 0.9935, std 0.000707
    _cell("rigl", 0.9, 0, 0.9915), _cell("rigl", 0.9, 1, 0.9895),    # mean 0.9905: 0.30 below, within
    _cell("set", 0.9, 0, 0.9900),                                   # one seed: 0.35 below, 0.40 on its seed
    _cell("static", 0.9, 1, 0.9920),                                # 0.15 below, 0.10 on its seed
]


def test_rows_hold_the_mean_the_gap_to_dense_and_the_seeds_within(gap):
    rows = gap.gap_rows(CELLS, within=0.3)
    assert [r["method"] for r in rows] == ["static", "rigl", "set"]  # best mean first
    static, rigl, set_ = rows
    assert rigl["seeds"] == {0: 0.9915, 1: 0.9895}
    assert rigl["mean"] == pytest.approx(0.9905) and rigl["std"] == pytest.approx(0.0014142, abs=1e-6)
    assert rigl["gap"] == pytest.approx(0.30) and rigl["within"] is True  # exactly at the bound counts
    assert (rigl["seeds_within"], rigl["seeds_compared"]) == (1, 2)  # seed 0: 0.25 below, seed 1: 0.35
    assert set_["gap"] == pytest.approx(0.35) and set_["within"] is False
    assert (set_["seeds_within"], set_["seeds_compared"]) == (0, 1)
    assert static["gap"] == pytest.approx(0.15) and (static["seeds_within"], static["seeds_compared"]) == (1, 1)


@pytest.mark.parametrize("dense, method, level", [
    ([0.9935, 0.9943, 0.9934], [0.9902, 0.9909, 0.9905], 0.95),
    ([0.9935, 0.9943, 0.9934], [0.9916, 0.9891, 0.9892, 0.9900], 0.90),
    ([0.9940, 0.9930], [0.9915, 0.9895], 0.99),
])
def test_the_gap_interval_is_where_welchs_test_reaches_its_level(gap, dense, method, level):
    """Oracle by another route: shifting the method's accuracies by an end of the interval makes the
    difference of means exactly that end's distance, where SciPy's Welch t-test has p = 1 - level."""
    low, high = gap.gap_interval(dense, method, level)
    centre = 100 * (sum(dense) / len(dense) - sum(method) / len(method))
    assert low < centre < high and centre - low == pytest.approx(high - centre)
    for end in (low, high):
        shifted = [a + end / 100 for a in method]
        p = stats.ttest_ind(dense, shifted, equal_var=False).pvalue
        assert p == pytest.approx(1 - level, rel=1e-6)


def test_the_gap_interval_needs_two_seeds_a_side_and_is_a_point_without_spread(gap):
    assert gap.gap_interval([0.99], [0.98, 0.97]) is None
    assert gap.gap_interval([0.99, 0.98], [0.97]) is None
    assert gap.gap_interval([0.99, 0.99], [0.98, 0.98]) == pytest.approx((1.0, 1.0))


def test_the_table_counts_the_grid_and_names_empty_sparsities(gap, tmp_path):
    result = CliRunner().invoke(gap.main, [str(_write(tmp_path / "r.json", CELLS)), "--sparsities", "0.9,0.95"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # dense 2 seeds + 3 sparse methods x 2 sparsities x 2 seeds = 14
    assert lines[0] == "6 of 14 cells done (3 sparse methods at 2 sparsities and dense, seeds 0, 1)."
    assert lines[1] == "Dense: 0: 0.9940, 1: 0.9930; mean 0.9935 ± 0.0007."
    low, high = gap.gap_interval([0.9940, 0.9930], [0.9915, 0.9895])
    assert f"| rigl | 0: 0.9915, 1: 0.9895 | 0.9905 ± 0.0014 | 0.30 | {low:.2f} to {high:.2f} | yes | 1 of 2 |" in lines
    assert "| set | 0: 0.9900 | 0.9900 | 0.35 | - | no | 0 of 1 |" in lines  # one seed: no interval
    assert lines[lines.index("**95%**") + 2] == "No cell yet."


def test_without_dense_the_gaps_read_a_dash(gap, tmp_path):
    f = _write(tmp_path / "r.json", [_cell("rigl", 0.9, 0, 0.99)])
    result = CliRunner().invoke(gap.main, [str(f)])
    assert result.exit_code == 0, result.output
    assert "| rigl | 0: 0.9900 | 0.9900 | - | - | - | 0 of 0 |" in result.output.splitlines()


@pytest.mark.parametrize("value", ["0.9,x", "0.9,1.0", "0"])
def test_bad_sparsities_exit_2_with_a_message(gap, tmp_path, value):
    f = _write(tmp_path / "r.json", CELLS)
    result = CliRunner().invoke(gap.main, [str(f), "--sparsities", value])
    assert result.exit_code == 2
    assert "sparsities" in result.output and "Traceback" not in result.output


def test_a_cell_in_two_files_is_refused(gap, tmp_path):
    a = _write(tmp_path / "a.json", CELLS[:3])
    b = _write(tmp_path / "b.json", CELLS[2:])
    result = CliRunner().invoke(gap.main, [str(a), str(b)])
    assert result.exit_code == 2
    assert "rigl-s90-seed0" in result.output and "both" in result.output
