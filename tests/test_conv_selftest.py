"""``purerigl check``'s convolution self-test (cli/_conv_selftest.py): SparseConv2d on a backend against
a dense convolution by SciPy's correlate2d / convolve2d.

Pins down: the oracle itself is a convolution and its adjoints (a direct loop over output pixels for
Y; <dY, Y - b> = <dX, X> = <dK, K> for the gradients, on hypothesis-drawn shapes, strides, paddings
and batch 1); every check passes on reference and cpu (on cuda under the simulator, tiny cases:
tests/test_cli_basic.py's check --backend cuda counts these rows);
a fault planted in one backend operation fails the checks that depend on it and only those; a
convolution that ignores its gated layer's gates fails exactly the gated rows that see it; a
crashing layer fails with its message.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.cli._conv_selftest import CONV_CASES, conv_oracle, run_conv_selftest
from purerigl.kernels import get_backend
from planted import broken_backend

OPS = ("forward", "input grad", "value grad", "bias grad")
GATED_OPS = OPS + ("alpha grad",)  # DynaDiag's gated diagonal convolution also checks its scores' gradient


def _loop_conv(X, K, bias, s, p):
    Xp = np.pad(X, ((0, 0), (0, 0), (p, p), (p, p)))
    B, c_out, kh, kw = X.shape[0], K.shape[0], K.shape[2], K.shape[3]
    Ho, Wo = (Xp.shape[2] - kh) // s + 1, (Xp.shape[3] - kw) // s + 1
    Y = np.empty((B, c_out, Ho, Wo))
    for b in range(B):
        for o in range(c_out):
            for h in range(Ho):
                for w in range(Wo):
                    Y[b, o, h, w] = np.sum(Xp[b, :, s * h: s * h + kh, s * w: s * w + kw] * K[o]) + bias[o]
    return Y


@st.composite
def conv_problems(draw):
    k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H, W = draw(st.integers(max(1, k - 2 * p), 7)), draw(st.integers(max(1, k - 2 * p), 7))
    B, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return (rng.standard_normal((B, c_in, H, W)), rng.standard_normal((c_out, c_in, k, k)),
            rng.standard_normal(c_out), rng.standard_normal((B, c_out, Ho, Wo)), s, p)


@settings(max_examples=40, deadline=None)
@given(conv_problems())
def test_the_oracle_is_a_convolution_and_its_adjoints(problem):
    X, K, bias, dY, s, p = problem
    Y, dX, dK = conv_oracle(X, K, bias, dY, s, p)
    np.testing.assert_allclose(Y, _loop_conv(X, K, bias, s, p), rtol=1e-12, atol=1e-12)
    inner = np.sum(dY * (Y - bias[None, :, None, None]))
    assert dX.shape == X.shape and dK.shape == K.shape
    np.testing.assert_allclose([np.sum(dX * X), np.sum(dK * K)], [inner, inner], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_every_conv_check_passes(backend):
    results = run_conv_selftest(get_backend(backend), seed=2)
    assert len(results) == 3 * len(CONV_CASES) * len(OPS) + len(CONV_CASES) * len(GATED_OPS)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    assert {r.format for r in results} == {"condensed", "diagonal", "csr", "diagonal, gated"}


def _failed_ops(backend):
    """The checks (forward, input grad, ...) that fail in some case and format."""
    return {next(op for op in GATED_OPS if r.op.endswith(op)) for r in run_conv_selftest(backend, seed=1)
            if not r.passed}


def test_a_convolution_that_ignores_its_gates_fails_the_gated_checks(monkeypatch):
    """The bug that this check was added for: a convolution running its gated layer's plain product
    (ungated values, no gradient for alpha) fails forward, input, value and alpha gradients of the
    gated rows, and no plain row."""
    from purerigl.nn import GatedDiagonalLinear, SparseLinear

    for name in ("forward_fm", "backward_fm", "gradients_fm", "forward_matrix"):
        monkeypatch.setattr(GatedDiagonalLinear, name, getattr(SparseLinear, name))
    monkeypatch.setattr(GatedDiagonalLinear, "forward", SparseLinear.forward)  # passes the linear's guard
    monkeypatch.setattr(GatedDiagonalLinear, "backward", SparseLinear.backward)
    results = run_conv_selftest(get_backend("cpu"), seed=1)
    failed = {(r.format, next(op for op in GATED_OPS if r.op.endswith(op))) for r in results if not r.passed}
    assert failed == {("diagonal, gated", op) for op in ("forward", "input grad", "value grad", "alpha grad")}


def test_a_fault_in_one_operation_fails_what_depends_on_it():
    cpu = get_backend("cpu").module

    def conv_input_grad_off(W, dYT, shape, kh, kw, stride=1, padding=0):  # the input gradient, one entry off
        dX = cpu.conv_input_grad_fm(W, dYT, shape, kh, kw, stride, padding)
        dX[0, 0, 0, 0] += 1.0
        return dX

    def sddmm_fm_swapped(W, XT, dYT, out=None):  # the value gradient with its last two slots swapped
        g = cpu.sddmm_fm(W, XT, dYT, out=out)
        flat = g.reshape(-1)
        flat[[-1, -2]] = flat[[-2, -1]]
        return g

    assert _failed_ops(broken_backend(conv_input_grad_fm=conv_input_grad_off)) == {"input grad"}
    assert _failed_ops(broken_backend(sddmm_fm=sddmm_fm_swapped)) == {"value grad", "alpha grad"}


def test_a_crashing_layer_fails_every_check_of_its_case_with_the_message():
    def fm_to_nchw_raises(*args, **kwargs):  # every sparse convolution's forward reorders its output
        raise RuntimeError("planted failure")  # (the patch matrix itself is not built on cpu at stride 1)

    results = run_conv_selftest(broken_backend(fm_to_nchw=fm_to_nchw_raises), seed=0)
    assert results and not any(r.passed for r in results)
    assert all("planted failure" in r.note for r in results)
