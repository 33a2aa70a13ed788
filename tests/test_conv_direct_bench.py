"""benchmarks/conv_direct.py: a convolution's products from its input against through the patch matrix.

Pins down that the script times every stride-1 sparse convolution of a network for its CSR,
Condensed and Diagonal rows, and a whole step by each route (DynaDiag's soft phase too), and writes
its JSON; and that it refuses to report when
the routes disagree (a forward from the input with one value off exits non-zero).
"""

from __future__ import annotations

import json

import numpy as np
from benchmark_scripts import load_benchmark
from click.testing import CliRunner


def test_rows_cover_every_stride_one_sparse_convolution_and_a_step_per_row(tmp_path):
    cd = load_benchmark("conv_direct")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cd.main, ["--model", "lenet5", "--budget", "0", "--batch", "4", "--threads", "1",
                                          "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    layers, steps = report["layers"], report["steps"]
    assert [(r["method"], r["format"]) for r in layers] == list(cd.ROWS)  # LeNet-5: one sparse convolution
    for r in layers:
        assert r["layer"] == "conv1" and r["input"] == [4, 6, 14, 14]
        assert r["forward_same_bits"] or r["format"] not in cd.SAME_BITS
        assert r["forward_relative_difference"] < cd.TOLERANCE
        assert r["forward_direct_ms"] > 0 and r["forward_built_ms"] > 0 and r["grad_direct_ms"] > 0
        assert r["grad_relative_difference"] < cd.TOLERANCE
    assert [(r["model"], r["method"]) for r in steps] == [("lenet5", m) for m, _ in cd.ROWS + cd.STEP_ONLY_ROWS]
    assert all(r["step_direct_ms"] > 0 and r["step_built_ms"] > 0 for r in steps)
    assert "| lenet5 | csr | conv1 | 16x150 |" in result.output


def test_a_forward_that_is_off_is_refused(monkeypatch):
    cd = load_benchmark("conv_direct")
    real = cd.cpu_module.conv_direct.matmul_patches

    def off(W, PT, out):
        Y = real(W, PT, out)
        Y[0, 0] += np.float32(1.0)
        return Y

    monkeypatch.setattr(cd.cpu_module.conv_direct, "matmul_patches", off)
    result = CliRunner().invoke(cd.main, ["--model", "lenet5", "--budget", "0", "--batch", "4", "--threads", "1"])
    assert result.exit_code == 1 and "differs" in result.output
