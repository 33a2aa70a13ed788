"""benchmarks/maxpool_2x2.py: the written-out 2 x 2 / stride 2 pooling kernels against the general ones.

Pins down that the script times every pooling input of the built-in networks with both twins, writes
its JSON, and refuses to report when the kernels disagree (a written-out forward with one maximum off
exits non-zero).
"""

from __future__ import annotations

import json

import numpy as np
from benchmark_scripts import load_benchmark
from click.testing import CliRunner


def test_rows_cover_every_pooling_with_both_twins(tmp_path):
    mp = load_benchmark("maxpool_2x2")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(mp.main, ["--batch", "2", "--budget", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["pool"], r["twin"]) for r in rows] == [(p, t) for p in mp.POOLS for t in ("parallel", "serial")]
    assert all(r["same_bits"] and r["forward_2x2_ms"] > 0 and r["backward_general_ms"] > 0 for r in rows)
    assert "| vgg-small pool1 | 2x32x28x28 | parallel |" in result.output


def test_a_forward_that_is_off_is_refused(monkeypatch):
    mp = load_benchmark("maxpool_2x2")
    real = mp.pk._maxpool_2x2

    class Off:
        py_func = real.py_func  # for serial_twin
        targetoptions = real.targetoptions

        def __call__(self, Xp, Y, arg):
            real(Xp, Y, arg)
            Y.reshape(-1)[0] += np.float32(1.0)

    monkeypatch.setattr(mp.pk, "_maxpool_2x2", Off())
    monkeypatch.setattr(mp, "serial_twin", lambda k: k)
    result = CliRunner().invoke(mp.main, ["--batch", "2", "--budget", "0"])
    assert result.exit_code == 1 and "differ" in result.output
