"""benchmarks/conv_input_grad.py: the fused input gradient against the route through the patch matrix.

Pins down that the script times every sparse convolution of a network for every method row, with the
stride of each, and writes its JSON; and that it refuses to report when the two routes disagree (a
fused kernel with one value off exits non-zero with the size of the difference). Its ``--backend cuda``
runs only on a GPU machine (on Numba's simulator a network's forward alone takes minutes); the two
cuda routes it times are tested in tests/test_cuda_conv.py.
"""

from __future__ import annotations

import json

import numpy as np
from benchmark_scripts import load_benchmark
from click.testing import CliRunner


def test_rows_cover_every_sparse_convolution_and_method(tmp_path):
    cig = load_benchmark("conv_input_grad")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cig.main, ["--model", "lenet5", "--budget", "0", "--batch", "4", "--threads", "1",
                                           "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["format"]) for r in rows] == list(cig.ROWS)  # LeNet-5: one sparse convolution
    for r in rows:
        assert r["layer"] == "conv1" and r["stride"] == 1 and r["input"] == [4, 6, 14, 14]
        assert r["patches"] == 4 * 14 * 14 and r["fused_ms"] > 0 and r["patches_ms"] > 0
        assert r["relative_difference"] < cig.TOLERANCE
    assert "| lenet5 | rigl | csr | conv1 | 16x150 |" in result.output


def test_a_disagreement_is_refused(monkeypatch):
    cig = load_benchmark("conv_input_grad")
    cpu = cig.get_backend("cpu")
    real = cpu.module.conv_input_grad_fm

    def off(W, dYT, X_shape, kh, kw, stride=1, padding=0):
        dX = real(W, dYT, X_shape, kh, kw, stride, padding)
        dX[0, 0, 0, 0] += np.float32(10.0) * np.abs(dX).max()
        return dX

    monkeypatch.setattr(cpu.module, "conv_input_grad_fm", off)
    result = CliRunner().invoke(cig.main, ["--model", "lenet5", "--budget", "0", "--batch", "4", "--threads", "1"])
    assert result.exit_code == 1 and "the two routes differ" in result.output

