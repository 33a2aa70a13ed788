"""benchmarks/loop_order.py: the cpu kernels of a base commit beside the current ones, in one process.

Pins down that the scratch copies of the base commit's kernel modules load and compute (here the base
is HEAD, whose kernels are the current ones: the same bits), that the scratch files and their Numba
cache are removed afterwards, even when the run fails, and that an unknown commit is a clear error.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

import purerigl.kernels.cpu as cpu_package
from purerigl.formats import Diagonal

FOLDER = Path(cpu_package.__file__).parent


def _in_git_checkout() -> bool:
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=FOLDER, capture_output=True, text=True)
    return done.returncode == 0 and (Path(done.stdout.strip()) / "benchmarks" / "loop_order.py").exists()


pytestmark = pytest.mark.skipif(not _in_git_checkout(), reason="needs the package in its git checkout")


def _scratch_files():
    return [*FOLDER.glob("_base_*.py"), *FOLDER.glob("__pycache__/_base_*")]


def test_base_kernels_compute_and_are_removed():
    lo = load_benchmark("loop_order")
    rng = np.random.default_rng(0)
    W = Diagonal(np.array([1, 4, 6], np.int32), rng.standard_normal((3, 5)).astype(np.float32), (5, 9))
    XT = rng.standard_normal((9, 300)).astype(np.float32)  # more than one batch block of 256
    dYT = rng.standard_normal((5, 300)).astype(np.float32)
    with lo.base_kernels("HEAD") as base:
        assert set(base) == set(lo.MODULES)
        current = __import__("purerigl.kernels.cpu.diagonal_fm", fromlist=["x"])
        for op in lo.OPS:
            assert np.array_equal(lo._call(base["diagonal_fm"], op, W, XT, dYT), lo._call(current, op, W, XT, dYT))
        assert _scratch_files()  # present while the run compiles
    assert not _scratch_files()


def test_a_failing_run_still_removes_the_scratch_files():
    lo = load_benchmark("loop_order")
    with pytest.raises(RuntimeError, match="boom"):
        with lo.base_kernels("HEAD"):
            raise RuntimeError("boom")
    assert not _scratch_files()


def test_an_unknown_base_is_a_clear_error():
    from click.testing import CliRunner

    lo = load_benchmark("loop_order")
    result = CliRunner().invoke(lo.main, ["--base", "no-such-commit-0000", "--budget", "0"])
    assert result.exit_code == 2 and "cannot read the kernels of 'no-such-commit-0000' from git" in result.output
    assert not _scratch_files()
