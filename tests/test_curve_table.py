"""benchmarks/curve_table.py: the learning curves of a sweep's cells as one table (issue 16's VGG tables)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark
from click.testing import CliRunner


def _module():
    return load_benchmark("curve_table")


def _cell(method, sparsity, seed, accuracies, train_loss=0.01, curve=True):
    """A cell as a sweep's results.json holds it, with one curve entry per accuracy."""
    result = {"cell": {"method": method, "sparsity": sparsity, "seed": seed},
              "name": f"{method}-s{sparsity * 100:g}-seed{seed}", "test_accuracy": accuracies[-1],
              "train_loss": train_loss}
    if curve:
        result["curve"] = [{"epoch": e + 1, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": a}
                           for e, a in enumerate(accuracies)]
    return result


def _write(path: Path, cells: list[dict]) -> Path:
    path.write_text(json.dumps({"budget": {}, "rows": [], "cells": cells}))
    return path


def _run(*args):
    return CliRunner().invoke(_module().main, [str(a) for a in args])


def test_rows_give_the_gap_to_the_dense_cell_of_the_same_seed_and_the_curve(tmp_path):
    f = _write(tmp_path / "r.json", [
        _cell("rigl", 0.9, 0, [0.90, 0.95, 0.97, 0.98], train_loss=0.02),
        _cell("dense", 0.0, 0, [0.92, 0.96, 0.985, 0.9935], train_loss=0.004),
        _cell("rigl", 0.9, 1, [0.91, 0.96, 0.975, 0.981]),  # no dense cell of seed 1
    ])
    result = _run(f, "--epochs", "1,3,9", "--last", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "test accuracy at epochs 1 / 3 / 9" in lines[0] and "last 2 epochs" in lines[0]
    # dense first (the sweep's order), then rigl by seed; epoch 9 is past the curve
    assert lines[2] == "| dense | 0% | 0 | 0.9935 |  | 0.0040 | 0.9200 / 0.9850 / - | 0.9850-0.9935 |"
    assert lines[3] == "| rigl | 90% | 0 | 0.9800 | 1.35 | 0.0200 | 0.9000 / 0.9700 / - | 0.9700-0.9800 |"
    assert lines[4] == "| rigl | 90% | 1 | 0.9810 | - | 0.0100 | 0.9100 / 0.9750 / - | 0.9750-0.9810 |"


def test_a_cell_without_a_curve_and_cells_from_two_files(tmp_path):
    a = _write(tmp_path / "a.json", [_cell("dense", 0.0, 0, [0.99], curve=False)])
    b = _write(tmp_path / "b.json", [_cell("set", 0.9, 0, [0.95, 0.97, 0.98, 0.985, 0.986])])
    result = _run(a, b, "--epochs", "2", "--last", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2] == "| dense | 0% | 0 | 0.9900 |  | 0.0100 | - | - |"
    assert lines[3] == "| set | 90% | 0 | 0.9860 | 0.40 | 0.0100 | 0.9700 | 0.9800-0.9860 |"


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path):
    good = _write(tmp_path / "good.json", [_cell("rigl", 0.9, 0, [0.9])])
    same = _write(tmp_path / "same.json", [_cell("rigl", 0.9, 0, [0.8])])
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    cases = [
        ((good, same), "is in both"),
        ((tmp_path / "list.json",), "not a sweep's results.json"),
        ((tmp_path / "broken.json",), "cannot read"),
        ((tmp_path / "missing.json",), "cannot read"),
        ((good, "--epochs", "0,2"), "epoch numbers from 1"),
        ((good, "--epochs", "two"), "comma-separated epoch numbers"),
        ((good, "--last", "0"), "--last"),
    ]
    for args, message in cases:
        result = _run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
