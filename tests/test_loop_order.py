"""benchmarks/loop_order.py: the cpu kernels of a base commit beside the current ones, in one process.

Pins down that the copies of the base commit's kernel modules load and compute (here the base is
HEAD, whose kernels are the current ones: the same bits), that nothing is ever written into
purerigl's kernel folder (its sources stamp Numba's cache: a scratch file there would change the
stamp for every process), that the temporary package is gone afterwards, even when the run fails, and
that a base git cannot read is a clear error (exit 2).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

import purerigl.kernels.cpu as cpu_package
from purerigl.formats import Diagonal
from purerigl.kernels.cpu import _cache

FOLDER = Path(cpu_package.__file__).parent


def _in_git_checkout() -> bool:
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=FOLDER, capture_output=True, text=True)
    return done.returncode == 0 and (Path(done.stdout.strip()) / "benchmarks" / "loop_order.py").exists()


pytestmark = pytest.mark.skipif(not _in_git_checkout(), reason="needs the package in its git checkout")


def test_base_kernels_compute_and_leave_the_package_folder_alone():
    lo = load_benchmark("loop_order")
    stamp = _cache.kernel_sources_digest()
    rng = np.random.default_rng(0)
    W = Diagonal(np.array([1, 4, 6], np.int32), rng.standard_normal((3, 5)).astype(np.float32), (5, 9))
    XT = rng.standard_normal((9, 300)).astype(np.float32)  # more than one batch block of 256
    dYT = rng.standard_normal((5, 300)).astype(np.float32)
    from purerigl.kernels.cpu import diagonal_fm

    with lo.base_kernels("HEAD") as base:
        assert set(base) == set(lo.MODULES)
        assert all(Path(m.__file__).parent != FOLDER for m in base.values())
        assert _cache.kernel_sources_digest() == stamp  # nothing written beside the kernels
        for op in lo.OPS:
            assert np.array_equal(lo._call(base["diagonal_fm"], op, W, XT, dYT), lo._call(diagonal_fm, op, W, XT, dYT))
        folder = Path(base["csr"].__file__).parent
        assert base["csr"].matmul_t_columns.__module__ == f"{lo.SCRATCH_PACKAGE}._columns"  # the base's own copy
    assert not folder.exists()
    assert not any(key.split(".")[0] == lo.SCRATCH_PACKAGE for key in sys.modules)


def test_a_failing_run_still_removes_the_temporary_package():
    lo = load_benchmark("loop_order")
    with pytest.raises(RuntimeError, match="boom"):
        with lo.base_kernels("HEAD") as base:
            folder = Path(base["csr"].__file__).parent
            raise RuntimeError("boom")
    assert not folder.exists() and str(folder.parent) not in sys.path


def test_an_unknown_base_is_a_clear_error():
    from click.testing import CliRunner

    lo = load_benchmark("loop_order")
    result = CliRunner().invoke(lo.main, ["--base", "no-such-commit-0000", "--budget", "0"])
    assert result.exit_code == 2 and "cannot read the kernels of 'no-such-commit-0000' from git" in result.output
