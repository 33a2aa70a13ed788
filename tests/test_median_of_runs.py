"""benchmarks/median_of_runs.py: per-row medians and ranges over repeated bench runs (issue 19's tables)."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("median_of_runs")


def _growth_run(ratio: float, ms: float) -> dict:
    row = {"width": 4096, "method": "srigl", "format": "condensed", "sparsity": 0.99, "update_ms": ms,
           "dense_xtdy_ms": ms / ratio, "update_over_dense": ratio}
    gse = {"width": 65536, "method": "gse", "format": "csr", "sparsity": 0.9995, "update_ms": 2 * ms,
           "dense_xtdy_ms": None, "update_over_dense": None}
    return {"results": [row, gse]}


def test_growth_rows_are_the_median_and_range_over_runs():
    table = _module().table("growth", [_growth_run(3.0, 120.0), _growth_run(2.0, 100.0), _growth_run(2.5, 110.0)])
    assert "Median over 3 runs" in table
    assert "| 4096 | srigl | condensed | 0.99 | 110.0 | 44.0 | 2.50x (2.00-3.00) |" in table
    assert "| 65536 | gse | csr | 0.9995 | 220.0 | - | - |" in table  # no dense baseline at that width


def test_kernels_and_train_rows():
    m = _module()
    kernel_row = {"shape": [768, 3072], "sparsity": 0.9, "batch": 64, "op": "matmul", "format": "condensed",
                  "purerigl_us": 10.0, "dense_ratio": 2.0, "limit_fraction": 0.2, "memcpy_fraction": None}
    assert "| 768x3072 | 0.9 | 64 | matmul | condensed | 10.0 | 2.00x (2.00-2.00) | 20% | - |" in m.table(
        "kernels", [{"results": [kernel_row]}])
    train_row = {"arch": "784-300-100-10", "method": "rigl", "format": "csr", "sparsity": 0.9, "step_ms": 4.0,
                 "dense_ratio": 1.5, "dense_ratio_with_update": 1.4, "limit_fraction": None}
    assert "| 784-300-100-10 | rigl | csr | 0.9 | 4.000 | 1.50x (1.50-1.50) | 1.40x (1.40-1.40) | - |" in m.table(
        "train", [{"results": [train_row]}])


@pytest.mark.parametrize("argv", [[], ["growth"], ["nonsense", "x.json"]])
def test_bad_usage_exits_2(argv, capsys):
    assert _module().main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_unreadable_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _module().main(["growth", str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_growth_run(2.0, 10.0)))
    assert _module().main(["growth", str(good)]) == 0
