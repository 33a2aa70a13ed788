"""benchmarks/gated_layout.py: DynaDiag's soft step in the row and the feature-major layout.

Pins down that the script's "row" variant really runs the gated layers in the row layout and its
"fm" variant feature-major (so the timing compares what it says), that both compute the same logits,
and that the command writes its table and JSON (a tiny run; the timings mean nothing here).
"""

from __future__ import annotations

import json

import numpy as np
from benchmark_scripts import load_benchmark
from click.testing import CliRunner

from purerigl.kernels import get_backend
from purerigl.nn import GatedDiagonalLinear
from purerigl.nn.layers import has_feature_major_step


def test_the_row_variant_runs_gated_layers_in_rows_and_the_fm_variant_feature_major(monkeypatch):
    gl = load_benchmark("gated_layout")
    calls = []
    for name in ("forward", "forward_fm"):
        method = getattr(GatedDiagonalLinear, name)

        def spy(self, *args, _method=method, _name=name):
            calls.append(_name)
            return _method(self, *args)

        monkeypatch.setattr(GatedDiagonalLinear, name, spy)
    backend = get_backend("cpu")
    model = gl._build("mlp", 0.9, backend, 0)
    X = np.random.default_rng(0).standard_normal((8, 784)).astype(np.float32)
    y = np.arange(8) % 10
    step, _ = gl.method_calls(model, "dynadiag", "diagonal", 0.9, X, y, 0)
    gl._with_predicate(gl._row_for_gated, step)()
    assert calls and set(calls) == {"forward"}
    calls.clear()
    gl._with_predicate(has_feature_major_step, step)()
    assert calls and set(calls) == {"forward_fm"}
    import purerigl.nn.model as model_module
    assert model_module.has_feature_major_step is has_feature_major_step  # restored after each call


def test_the_command_writes_its_table_and_json(tmp_path):
    gl = load_benchmark("gated_layout")
    out = tmp_path / "g.json"
    result = CliRunner().invoke(gl.main, ["--network", "mlp", "--batch", "8", "--budget", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| mlp | 8 |" in result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert row["network"] == "mlp" and row["batch"] == 8 and row["logits_max_rel_difference"] < 1e-5
    assert row["row_ms"] > 0 and row["fm_ms"] > 0
