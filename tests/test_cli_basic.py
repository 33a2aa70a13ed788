"""The first CLI commands (info, check, demo), the CLI's error convention, and the matmul benchmark script.

Only the shape of outputs is tested (exit codes, tables, JSON keys), never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import purerigl
from purerigl.cli._conv_selftest import CONV_CASES, TINY_CONV_CASES
from purerigl.cli._options import backend_status
from purerigl.cli._selftest import QUICK_CASES, TINY_BATCHES, TINY_CASES, run_selftest
from purerigl.cli._update_selftest import UPDATE_METHODS
from purerigl.cli.main import COMMANDS, main
from purerigl.kernels import reference

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_matmul.py"
CPU_READY = backend_status("cpu") == "ok"


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("PURERIGL_BACKEND", raising=False)
    return CliRunner()


def assert_usage_error(result, *words):
    """Exit 2, one 'Error:' line naming every word, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in result.output


# -- the group -------------------------------------------------------------------------------------


def test_help_lists_every_command(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command.name in result.output


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert purerigl.__version__ in result.output


# -- info ------------------------------------------------------------------------------------------


def test_info_text(runner):
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    for word in ("purerigl", "numba", "num_threads", "threading_layer", "default", "cuda", "available"):
        assert word in result.output


def test_info_json(runner):
    result = runner.invoke(main, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"versions", "machine", "numba", "backends", "cuda"}
    assert set(report["versions"]) >= {"purerigl", "python", "numpy", "numba", "scipy", "click"}
    assert report["versions"]["purerigl"] == purerigl.__version__
    assert set(report["code"]) == {"purerigl", "source", "git", "git_dirty"}
    assert isinstance(report["numba"]["num_threads"], int)
    assert report["numba"]["threading_layer"] != "not yet initialised"
    assert report["backends"]["default_source"] == "default"
    assert set(report["backends"]["all"]) == set(purerigl.available_backends())
    assert set(report["cuda"]) >= {"importable", "available", "simulator", "device"}


def test_info_reports_the_cuda_simulator(runner):
    """Under the tests' CUDA simulator, info says so and lists the cuda backend as ok."""
    import numba

    if not numba.config.ENABLE_CUDASIM:
        pytest.skip("the CUDA simulator is off (PURERIGL_TEST_REAL_GPU=1)")
    report = json.loads(runner.invoke(main, ["info", "--json"]).output)
    assert report["cuda"]["simulator"] is True and report["cuda"]["available"] is True
    assert report["backends"]["all"]["cuda"] == "ok"


def test_info_reports_backend_from_environment(runner):
    result = runner.invoke(main, ["info", "--json"], env={"PURERIGL_BACKEND": "reference"})
    backends = json.loads(result.output)["backends"]
    assert (backends["default"], backends["default_source"], backends["default_status"]) == (
        "reference", "PURERIGL_BACKEND", "ok")


# -- check -----------------------------------------------------------------------------------------


def test_check_reference_passes(runner):
    result = runner.invoke(main, ["check", "--backend", "reference", "--quick"])
    assert result.exit_code == 0, result.output
    assert "max abs err" in result.output and "tolerance" in result.output
    n_rows = 3 * 4 * len(QUICK_CASES) * 2  # formats x ops x shapes x batches
    n_conv = 3 * 4 * len(CONV_CASES)  # formats x (forward, input, value, bias gradients) x cases
    n_conv += 5 * len(CONV_CASES)  # DynaDiag's gated diagonal convolution: the same four and alpha's gradient
    assert result.output.count("PASS") == n_rows + n_conv + len(UPDATE_METHODS)  # and one update per method
    assert "conv 3x3/2 p1 value grad" in result.output
    assert "FAIL" not in result.output


def test_check_json(runner):
    result = runner.invoke(main, ["check", "--backend", "reference", "--quick", "--json", "--seed", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["backend"] == "reference" and report["seed"] == 3
    assert {"format", "op", "shape", "batch", "max_abs_err", "tol", "passed"} <= set(report["results"][0])


def test_check_unknown_backend(runner):
    result = runner.invoke(main, ["check", "--backend", "nosuch"])
    assert_usage_error(result, "nosuch", *purerigl.available_backends())


def test_check_unknown_backend_from_environment(runner):
    result = runner.invoke(main, ["check", "--quick"], env={"PURERIGL_BACKEND": "nosuch"})
    assert_usage_error(result, "PURERIGL_BACKEND", "nosuch", "reference")


def test_check_cuda_passes_and_says_where_it_ran(runner):
    """``check --backend cuda`` passes with tiny shapes, on Numba's CUDA simulator (on in the tests) or
    on a real GPU (PURERIGL_TEST_REAL_GPU=1), and names the simulator exactly when it ran there."""
    import numba

    if backend_status("cuda") != "ok":
        pytest.skip(f"cuda backend unavailable: {backend_status('cuda')}")
    result = runner.invoke(main, ["check", "--backend", "cuda", "--quick"])
    assert result.exit_code == 0, result.output
    assert ("CUDA simulator" in result.output) == bool(numba.config.ENABLE_CUDASIM), result.output
    assert result.output.count("PASS") == (3 * 4 * len(TINY_CASES) * len(TINY_BATCHES) + 3 * 4 * len(TINY_CONV_CASES)
                                           + 5 * len(TINY_CONV_CASES) + len(UPDATE_METHODS))
    assert "FAIL" not in result.output
    assert "update srigl 0.9" in result.output  # every method's update ran on the device, exactly as the reference


def test_check_tiny_json(runner):
    """``--tiny`` runs the tiny cases and batches (what the simulator gets), reported in the JSON."""
    result = runner.invoke(main, ["check", "--backend", "reference", "--tiny", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["tiny"] and not report["simulator"]
    assert [tuple(c["shape"]) for c in report["cases"]] == [shape for shape, _, _ in TINY_CASES]
    assert report["batches"] == list(TINY_BATCHES)
    assert report["n_checks"] == (3 * 4 * len(TINY_CASES) * len(TINY_BATCHES) + 3 * 4 * len(TINY_CONV_CASES)
                                  + 5 * len(TINY_CONV_CASES) + len(UPDATE_METHODS))


@pytest.mark.parametrize("command", [["check", "--quick"], ["train", "--epochs", "1", "--hidden", "8"]])
def test_cuda_without_gpu_or_simulator_exits_2(tmp_path, command):
    """With NUMBA_ENABLE_CUDASIM=0 and no GPU, ``--backend cuda`` ends in exit 2 and one Error line that
    names the fixes (skipped where a real GPU is present)."""
    env = {k: v for k, v in os.environ.items() if k != "PURERIGL_BACKEND"}
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    args = [sys.executable, "-c", "from purerigl.cli.main import main; main()", *command, "--backend", "cuda"]
    if command[0] == "train":
        args += ["--out", str(tmp_path / "run")]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    if proc.returncode == 0:
        pytest.skip("a real GPU is present: cuda runs without the simulator")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for words in ("cuda", "unavailable", "pip install 'purerigl[gpu]'", "NUMBA_ENABLE_CUDASIM=1", "--backend cpu"):
        assert words in errors[0], errors[0]
    assert not (tmp_path / "run").exists()


def test_check_bad_seed(runner):
    result = runner.invoke(main, ["check", "--backend", "reference", "--seed", "-1"])
    assert_usage_error(result, "-1")


def test_check_reports_a_broken_op_with_exit_1(runner, monkeypatch):
    def broken_matmul(W, X, out=None):
        Y = reference.matmul(W, X, out)
        Y[:, 0] += 1.0  # one output column off by a whole unit
        return Y

    monkeypatch.setattr(reference, "matmul", broken_matmul)
    result = runner.invoke(main, ["check", "--backend", "reference", "--quick"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "FAILED" in result.output
    assert "Traceback" not in result.output


def test_selftest_with_a_fake_backend():
    def crash(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    fake = SimpleNamespace(
        matmul=reference.matmul,
        matmul_t=lambda W, dY: reference.matmul_t(W, dY).astype(np.float64),  # wrong dtype
        sddmm=crash,
        grad_at=reference.grad_at,
    )
    results = run_selftest(fake, quick=True, formats=["csr"], batches=(2,))
    by_op = {op: [r for r in results if r.op == op] for op in ("matmul", "matmul_t", "sddmm", "grad_at")}
    assert all(r.passed for r in by_op["matmul"] + by_op["grad_at"])
    assert not any(r.passed for r in by_op["matmul_t"] + by_op["sddmm"])
    assert "float64" in by_op["matmul_t"][0].note
    assert "kernel exploded" in by_op["sddmm"][0].note


# -- demo ------------------------------------------------------------------------------------------


def test_demo_small_reference(runner):
    result = runner.invoke(main, ["demo", "--backend", "reference", "--shape", "48x96", "--batch", "4"])
    assert result.exit_code == 0, result.output
    for fmt in ("condensed", "diagonal", "csr"):
        assert fmt in result.output
    assert "MISMATCH" not in result.output


def test_demo_library_error_is_a_usage_error(runner):
    # 1% of a 2x2 matrix gives CSR nnz = 0: the library raises FormatError, the CLI exits 2 in one line.
    result = runner.invoke(main, ["demo", "--backend", "reference", "--shape", "2x2", "--sparsity", "0.99"])
    assert_usage_error(result, "nnz = 0")


def test_demo_bad_shape(runner):
    result = runner.invoke(main, ["demo", "--backend", "reference", "--shape", "12by4"])
    assert_usage_error(result, "12by4", "N_OUTxN_IN")


@pytest.mark.skipif(not CPU_READY, reason=f"cpu backend not ready: {backend_status('cpu')}")
def test_demo_cpu_full_layer(runner):
    result = runner.invoke(main, ["demo", "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    assert "768x3072" in result.output and "MISMATCH" not in result.output


# -- benchmark script ------------------------------------------------------------------------------


def test_bench_matmul_script_runs(tmp_path):
    out = tmp_path / "bench.json"
    args = [sys.executable, str(BENCH), "--backend", "reference", "--batch", "1", "--batch", "3",
            "--repeat", "3", "--budget", "0", "--shape", "64x32", "--no-memcpy", "--json", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for word in ("purerigl us", "dense us", "scipy us", "dense/pr", "scipy/pr", "threads", "versions"):
        assert word in proc.stdout
    report = json.loads(out.read_text())
    meta = report["meta"]
    assert meta["shape"] == [64, 32] and meta["batches"] == [1, 3] and meta["backend"] == "reference"
    assert {"num_threads", "threading_layer"} <= set(meta["numba"])
    assert {"numpy", "scipy", "numba", "purerigl"} <= set(meta["versions"])
    assert len(meta["code"]["source"]) == 12 and f"source {meta['code']['source']}" in proc.stdout
    assert len(report["results"]) == 2 * 3
    for row in report["results"]:
        assert {"format", "batch", "nnz", "purerigl_us", "dense_us", "scipy_us", "dense_ratio",
                "scipy_ratio", "runs", "passed"} <= set(row)
        assert row["passed"] and row["runs"]["purerigl"] == 3


def test_bench_matmul_bad_option():
    proc = subprocess.run([sys.executable, str(BENCH), "--sparsity", "1.5"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "1.5" in proc.stderr and "Traceback" not in proc.stderr
