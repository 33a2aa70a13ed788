"""DynaDiag's gated diagonal layer inside a convolution: a SparseConv2d whose filter matrix is a soft
GatedDiagonalLinear must compute with the gated filters and return the gradients of the values, the
gate scores alpha and the bias that the plain NumPy specification (:mod:`purerigl.dst.spec.dynadiag`)
gives on the patch matrix, whole or tiled, and a DynaDiag network must train the alphas of its
convolutions.

The oracle is built another way than the layer: the patches by explicit loops (oracles.py), the gradients by
the specification's dense route with loops, the input gradient by SciPy's convolve2d over the gated
dense filters (:func:`purerigl.cli._conv_selftest.conv_oracle`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import patches_by_loops

from purerigl.cli._conv_selftest import conv_oracle
from purerigl.dst.spec import dynadiag as spec
from purerigl.formats import Diagonal
from purerigl.nn import GatedDiagonalLinear
from purerigl.nn.conv import SparseConv2d

BACKENDS = ["reference", "cpu"]


@st.composite
def gated_conv_problems(draw):
    kh, kw, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
    H, W = draw(st.integers(max(1, kh - 2 * p), 6)), draw(st.integers(max(1, kw - 2 * p), 6))
    B, c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    shape = (c_out, c_in * kh * kw)
    n_diag = max(shape)
    S = draw(st.integers(1, n_diag))  # stored diagonals
    K = draw(st.integers(1, n_diag))  # diagonals kept in the end
    T = draw(st.floats(0.2, 5.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offsets = np.sort(rng.choice(n_diag, S, replace=False)).astype(np.int32)
    W_mat = Diagonal(offsets, rng.standard_normal((S, min(shape))).astype(np.float32), shape)
    alpha = rng.standard_normal(n_diag).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    X = rng.standard_normal((B, c_in, H, W)).astype(np.float32)
    return W_mat, K, T, alpha, bias, X, (kh, kw, s, p), rng


@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "one-sample-chunks"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_convolution_matches_the_specification(backend, tiled):
    @settings(max_examples=20, deadline=None)
    @given(gated_conv_problems())
    def check(problem):
        W_mat, K, T, alpha, bias, X, (kh, kw, s, p), rng = problem
        c_out, c_in = W_mat.shape[0], X.shape[1]
        conv = SparseConv2d(W_mat.copy(), c_in, (kh, kw), stride=s, padding=p, bias=bias, backend=backend,
                            name="c", max_tile_bytes=1 if tiled else 64 * 2**20)
        gated = GatedDiagonalLinear(W_mat.copy(), K, alpha=alpha, temperature=T, bias=bias, backend=backend,
                                    name="c")
        conv.linear = gated  # what purerigl.dst.dynadiag.gate_model does (Network.replace_linear)
        Y = conv.forward(X)  # (B, c_out, Ho, Wo)
        B, _, Ho, Wo = Y.shape
        assert len(conv._tiles) == (B if tiled else 1)
        P = patches_by_loops(X, kh, kw, s, p)  # (B*Ho*Wo, c_in*kh*kw)
        want_Y = spec.forward(P, W_mat.offsets, W_mat.values, alpha, K, T, bias)  # (B*Ho*Wo, c_out)
        want_Y = want_Y.reshape(B, Ho, Wo, c_out).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(Y, want_Y, rtol=1e-4, atol=1e-4)

        dY = rng.standard_normal(Y.shape).astype(np.float32)
        dX = conv.backward(dY)
        dY2 = dY.transpose(0, 2, 3, 1).reshape(-1, c_out)  # (B*Ho*Wo, c_out), rows (b, ho, wo)
        want = spec.backward(P, dY2, W_mat.offsets, W_mat.values, alpha, K, T)
        np.testing.assert_allclose(gated.weight.grad, want["values"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gated.alpha.grad, want["alpha"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gated.bias.grad, want["bias"], rtol=1e-4, atol=1e-4)
        K_eff = spec.effective_matrix(W_mat.offsets, W_mat.values, alpha, K, T, W_mat.shape)
        _, want_dX, _ = conv_oracle(X.astype(np.float64), K_eff.reshape(c_out, c_in, kh, kw), bias, dY, s, p)
        np.testing.assert_allclose(dX, want_dX, rtol=1e-4, atol=1e-4)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_convolution_trains_alpha_and_differs_from_the_ungated_one(backend):
    """Not vacuous: with gates well below 1 the gated convolution's output is not the plain one's, and
    alpha gets a gradient (a convolution that ran its linear's plain product would give neither)."""
    rng = np.random.default_rng(5)
    shape = (4, 2 * 3 * 3)  # c_out 4, c_in 2, 3 x 3
    W_mat = Diagonal.random(shape, None, rng, K=6)
    plain = SparseConv2d(W_mat.copy(), 2, 3, padding=1, backend=backend, name="c")
    gated = SparseConv2d(W_mat.copy(), 2, 3, padding=1, backend=backend, name="c")
    gated.linear = GatedDiagonalLinear(W_mat.copy(), 3, temperature=1.0, backend=backend, name="c")
    X = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    Y_plain, Y_gated = plain.forward(X), gated.forward(X)
    gates = gated.linear.gates()
    assert gates.max() < 0.5  # alpha = 1 / P: every gate K / P = 1 / 6
    np.testing.assert_allclose(Y_gated, Y_plain * gates[0], rtol=1e-5, atol=1e-6)  # equal gates: a scale
    gated.backward(rng.standard_normal(Y_gated.shape).astype(np.float32))
    assert np.abs(gated.linear.alpha.grad).max() > 1e-4


def test_frozen_gated_convolution_is_the_plain_one():
    rng = np.random.default_rng(6)
    W_mat = Diagonal.random((3, 2 * 2 * 2), None, rng, K=4)
    plain = SparseConv2d(W_mat.copy(), 2, 2, backend="cpu", name="c")
    frozen = SparseConv2d(W_mat.copy(), 2, 2, backend="cpu", name="c")
    frozen.linear = GatedDiagonalLinear(W_mat.copy(), 4, frozen=True, backend="cpu", name="c")
    X = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(frozen.forward(X), plain.forward(X))
    dY = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(frozen.backward(dY), plain.backward(dY))
    np.testing.assert_array_equal(frozen.weight.grad, plain.weight.grad)


def test_a_linear_whose_fm_step_would_ignore_its_changes_is_refused():
    """The guard against the bug this module pins down: a SparseLinear subclass that changes its
    row-layout step but inherits the plain feature-major one cannot become a convolution's linear."""
    from purerigl.nn import SparseLinear

    class RowOnly(SparseLinear):
        def forward(self, X):
            return 2 * super().forward(X)

    rng = np.random.default_rng(7)
    W_mat = Diagonal.random((3, 8), None, rng, K=4)
    conv = SparseConv2d(W_mat.copy(), 2, 2, backend="cpu", name="c")
    with pytest.raises(TypeError, match="overrides forward but not forward_fm"):
        conv.linear = RowOnly(W_mat.copy(), backend="cpu", name="c")
    with pytest.raises(TypeError, match="must be a SparseLinear"):
        conv.linear = object()

    class OtherMatrix(SparseLinear):  # computes with another matrix but would let the input gradient use W
        def forward(self, X):
            return 2 * super().forward(X)

        def forward_fm(self, XT):
            return 2 * super().forward_fm(XT)

        def backward(self, dY):
            return super().backward(2 * dY)

        def backward_fm(self, dYT):
            return super().backward_fm(2 * dYT)

        def gradients_fm(self, XT, dYT):
            return super().gradients_fm(XT, 2 * dYT)

    with pytest.raises(TypeError, match="overrides forward_fm but not forward_matrix"):
        conv.linear = OtherMatrix(W_mat.copy(), backend="cpu", name="c")
    gated = GatedDiagonalLinear(W_mat.copy(), 2, backend="cpu", name="c")
    assert gated.needs_input_grad
    conv.linear = gated  # it has all four
    assert not gated.needs_input_grad and conv.needs_input_grad  # the input gradient is the convolution's
