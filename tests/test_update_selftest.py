"""``purerigl check``'s update self-test (cli/_update_selftest.py): one DST update per method on a
backend, against the method's NumPy specification (purerigl/dst/spec/), on integer data where both
must agree exactly.

Pins down: every check passes on reference and cpu (on cuda under the simulator: the last test); a
fault planted in a selection operation that the backends share fails the methods that use it **on
every backend, the reference included** (the specification does not share that code), naming the
structure difference and what was compared with what; a crashing operation fails with its message;
the command lists the update rows, says what it compares, and exits 1 on a failure.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.cli._update_selftest import UPDATE_METHODS, run_update_selftest
from purerigl.kernels import get_backend, host_selection, host_topology
from planted import broken_backend


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_every_update_check_passes(backend):
    results = run_update_selftest(get_backend(backend), seed=3)
    assert len(results) == len(UPDATE_METHODS)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    assert {r.op.split()[1] for r in results} == {"static", "rigl", "set", "srigl", "gse", "diag-rigl", "dynadiag"}


def test_every_update_check_passes_on_cuda():
    """The cuda backend (the simulator, tiny layers): every method's fast update on device arrays
    equals its NumPy specification."""
    results = run_update_selftest(get_backend("cuda"), seed=3, tiny=True)
    assert len(results) == len(UPDATE_METHODS)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def _reversed_tie_rule(monkeypatch):
    """Plant a bug in the shared host selection: equal scores ranked by the *larger* tie rank."""
    original = host_topology.top_mask

    def top_mask(scores, n, ties=None):
        ties = -np.arange(np.asarray(scores).size) if ties is None else -np.asarray(ties)
        return original(scores, n, ties)

    monkeypatch.setattr(host_topology, "top_mask", top_mask)
    monkeypatch.setattr(host_selection, "top_mask", top_mask)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_bug_in_a_shared_selection_op_fails_on_every_backend(monkeypatch, backend):
    """Reversing the tie rule in the host ``top_mask`` (which the reference and cpu backends share)
    breaks every method that ranks with it; the reference backend catches it too."""
    from purerigl.cli.main import main

    _reversed_tie_rule(monkeypatch)
    result = CliRunner().invoke(main, ["check", "--backend", backend, "--quick", "--seed", "0"])
    assert result.exit_code == 1, result.output
    failed = {line.split()[2] for line in result.output.splitlines() if " update " in line and "FAIL" in line}
    assert {"rigl", "set", "srigl", "gse"} <= failed, result.output
    assert "static" not in failed
    assert f"({backend} vs purerigl/dst/spec/rigl.py)" in result.output
    assert "structure differs" in result.output


def test_a_faulty_selection_fails_the_checks_that_use_it():
    def worst_instead_of_best(scores, tags, n, salt=0, among=None):  # the n smallest |scores|: a sign error in a kernel
        return host_selection.top_k(1.0 / (np.abs(scores) + 1.0), tags, n, salt, among=among)

    results = run_update_selftest(broken_backend(top_k=worst_instead_of_best), seed=1)
    by_op = {r.op: r for r in results}
    for op in ("update diag-rigl", "update gse uniform", "update srigl 0.3"):  # all rank with top_k
        assert not by_op[op].passed, op
        assert "structure differs" in by_op[op].note and "purerigl/dst/spec/" in by_op[op].note
    assert by_op["update rigl"].passed  # RigL drops with keep_by_magnitude and grows with topk_grad


def test_a_crashing_operation_is_a_failed_check_with_its_message():
    def boom(*args, **kwargs):
        raise RuntimeError("kernel launch failed")

    results = run_update_selftest(broken_backend(diag_grad_norms=boom), seed=0)
    bad = [r for r in results if not r.passed]
    assert [r.op for r in bad] == ["update diag-rigl", "update dynadiag"]  # both score growth with it
    assert "RuntimeError: kernel launch failed" in bad[0].note


@pytest.mark.parametrize("extra, code", [([], 0), (["--json"], 0)])
def test_check_command_lists_the_update_rows(extra, code):
    from purerigl.cli.main import main

    result = CliRunner().invoke(main, ["check", "--backend", "cpu", "--quick", *extra])
    assert result.exit_code == code, result.output
    assert "update srigl 0.9" in result.output and "update diag-rigl" in result.output
    if not extra:
        assert "against its NumPy specification" in result.output


def test_check_command_exits_1_when_an_update_check_fails(monkeypatch):
    from purerigl.cli import check as check_module
    from purerigl.cli._selftest import Result
    from purerigl.cli.main import main

    failing = [Result("csr", "update rigl", (4, 4), 8, float("nan"), 0.0, False, "structure differs")]
    monkeypatch.setattr(check_module, "run_update_selftest", lambda *a, **k: failing)
    result = CliRunner().invoke(main, ["check", "--backend", "cpu", "--quick"])
    assert result.exit_code == 1
    assert "FAIL  structure differs" in result.output


def test_a_bug_in_a_shared_cuda_selection_op_fails_on_cuda(monkeypatch):
    """On the cuda backend (the simulator here): a wrong tie order in the device ranking that the
    magnitude drop and every layer-wide top-n share (``structure.top_tags``) is caught."""
    from purerigl.kernels.cuda import selection, structure

    original = structure.top_tags

    def top_tags(value_bits, tags, n, salt=0):  # ranks ties with another salt: the planted bug
        return original(value_bits, tags, n, salt ^ 0xA5A5A5A5)

    monkeypatch.setattr(structure, "top_tags", top_tags)
    monkeypatch.setattr(selection, "top_tags", top_tags)
    results = run_update_selftest(get_backend("cuda"), seed=0, tiny=True)
    failed = {r.op for r in results if not r.passed}
    assert {"update rigl", "update set", "update srigl 0.3"} <= failed, failed
    assert "update static" not in failed
    assert all("(cuda vs purerigl/dst/spec/" in r.note for r in results if not r.passed)
