"""benchmarks/host_heap.py: training steps with glibc's large freed blocks kept, against glibc's default.

Pins down that the script times every row of a network in one process of each setting per round (the
``glibc`` process with the backend's setting off, the ``heap`` one with it on, checked from what each
reports), writes its JSON, and stops with a message when a process does not run under its setting.
"""

from __future__ import annotations

import json

import click
import pytest
from benchmark_scripts import load_benchmark
from click.testing import CliRunner

from purerigl.kernels.cpu import host_heap

pytestmark = pytest.mark.skipif(not host_heap.is_glibc(),
                                reason="the benchmark compares glibc's malloc settings")


def test_rows_and_settings(tmp_path):
    hh = load_benchmark("host_heap")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(hh.main, ["--model", "lenet5", "--budget", "0", "--batch", "4", "--threads", "1",
                                          "--rounds", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["method"], r["format"], r["sparsity"]) for r in rows] == list(hh.ROWS)
    for r in rows:
        assert r["glibc_ms"] > 0 and r["heap_ms"] > 0 and r["rounds"] == 1
        assert len(r["glibc_ms_rounds"]) == len(r["heap_ms_rounds"]) == 1
        assert r["speedup"] == pytest.approx(r["glibc_ms"] / r["heap_ms"])
        assert r["maxrss_mib_glibc"] > 0 and r["maxrss_mib_heap"] > 0
    assert "| lenet5 | srigl | condensed | 0.9 |" in result.output


def test_a_process_not_under_its_setting_is_refused(monkeypatch):
    hh = load_benchmark("host_heap")
    monkeypatch.setitem(hh.SETTINGS, "glibc", None)  # the "glibc" process would run with the setting on
    with pytest.raises(click.ClickException, match="the 'glibc' process reports 'installed: "):
        hh.run_process("glibc", "lenet5", 4, 0.0, 0, 1)
