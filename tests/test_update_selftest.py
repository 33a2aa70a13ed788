"""``purerigl check``'s update self-test (cli/_update_selftest.py): one DST update per method on a
backend, against the reference backend, on integer data where both must agree exactly.

Pins down: every check passes on cpu (on cuda under the simulator: tests/test_cli_basic.py); a backend with a
faulty selection operation fails the checks that use it, naming the structure difference, and a
crashing one fails with its message; the command lists the update rows and exits 1 on a failure.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.cli._update_selftest import UPDATE_METHODS, run_update_selftest
from purerigl.kernels import get_backend, host_selection
from purerigl.kernels.registry import Backend


def _broken(**replacements) -> Backend:
    """The cpu backend with some operations replaced."""
    cpu = get_backend("cpu")
    module = types.ModuleType("broken")
    module.__dict__.update({k: v for k, v in vars(cpu.module).items() if not k.startswith("__")})
    module.__dict__.update(replacements)
    return Backend("broken", module)


def test_cpu_passes_every_update_check():
    results = run_update_selftest(get_backend("cpu"), seed=3)
    assert len(results) == len(UPDATE_METHODS)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    assert {r.op.split()[1] for r in results} == {"rigl", "set", "srigl", "gse", "dynadiag"}


def test_a_faulty_selection_fails_the_checks_that_use_it():
    def worst_instead_of_best(scores, tags, n):  # the n smallest |scores|: a sign error in a kernel
        return host_selection.top_positions(1.0 / (np.abs(scores) + 1.0), tags, n)

    results = run_update_selftest(_broken(top_positions=worst_instead_of_best), seed=1)
    by_op = {r.op: r for r in results}
    for op in ("update dynadiag", "update gse uniform", "update srigl 0.3"):  # all rank with top_positions
        assert not by_op[op].passed, op
        assert "structure differs" in by_op[op].note
    assert by_op["update rigl"].passed  # RigL drops with keep_by_magnitude and grows with topk_grad


def test_a_crashing_operation_is_a_failed_check_with_its_message():
    def boom(*args, **kwargs):
        raise RuntimeError("kernel launch failed")

    results = run_update_selftest(_broken(diag_grad_norms=boom), seed=0)
    bad = [r for r in results if not r.passed]
    assert [r.op for r in bad] == ["update dynadiag"]
    assert "RuntimeError: kernel launch failed" in bad[0].note


@pytest.mark.parametrize("extra, code", [([], 0), (["--json"], 0)])
def test_check_command_lists_the_update_rows(extra, code):
    from purerigl.cli.main import main

    result = CliRunner().invoke(main, ["check", "--backend", "cpu", "--quick", *extra])
    assert result.exit_code == code, result.output
    assert "update srigl 0.9" in result.output and "update dynadiag" in result.output


def test_check_command_exits_1_when_an_update_check_fails(monkeypatch):
    from purerigl.cli import check as check_module
    from purerigl.cli._selftest import Result
    from purerigl.cli.main import main

    failing = [Result("csr", "update rigl", (4, 4), 8, float("nan"), 0.0, False, "structure differs")]
    monkeypatch.setattr(check_module, "run_update_selftest", lambda *a, **k: failing)
    result = CliRunner().invoke(main, ["check", "--backend", "cpu", "--quick"])
    assert result.exit_code == 1
    assert "FAIL  structure differs" in result.output
