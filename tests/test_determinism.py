"""Determinism: the same seed, backend and thread count give bit-identical models and metrics.

Pins down, for every method (and GSE's three samplers, and the dense baseline): two ``purerigl train``
runs in one process with the same options write identical model.npz and checkpoint.npz arrays
(weights, topology, optimizer state, RNG states) and identical metrics apart from timing; and, for
the cpu backend, a run on one Numba thread equals a run on all threads (docs/reliability.md says
which kernels could depend on the thread count and why none does).
"""

from __future__ import annotations

import numba
import pytest

from test_cli_resume import assert_same_run, run_args
from test_cli_train import invoke

RUNS = {
    "static": ["static"],
    "set": ["set"],
    "rigl": ["rigl"],
    "srigl": ["srigl", "--gamma-sal", 0.9],  # ablates neurons
    "gse-uniform": ["gse"],
    "gse-grabo": ["gse", "--gse-sampler", "grabo"],
    "gse-graest": ["gse", "--gse-sampler", "graest"],
    "diag-rigl": ["diag-rigl"],
    "dense": ["dense"],
}


def _train(out, run, threads=None):
    method, *extra = RUNS[run]
    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        result = invoke(run_args(out, method, "--epochs", 2, *extra))
    finally:
        numba.set_num_threads(previous)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("run", list(RUNS))
def test_same_seed_gives_bit_identical_runs(run, tmp_path):
    _train(tmp_path / "a", run)
    _train(tmp_path / "b", run)
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("run", [r for r in RUNS if r != "dense"])
def test_cpu_runs_do_not_depend_on_the_thread_count(run, tmp_path):
    """One Numba thread and all of them (2 on the CI machine) give the same bits."""
    _train(tmp_path / "one", run, threads=1)
    _train(tmp_path / "all", run)
    assert_same_run(tmp_path / "one", tmp_path / "all")
