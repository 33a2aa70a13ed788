"""The cpu backend's Numba ReLU against its spec (:mod:`purerigl.kernels.host_arrays`), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from purerigl.kernels import host_arrays
from purerigl.kernels.cpu import elementwise

SPECIAL = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0])


@settings(max_examples=40, deadline=None)
@given(X=arrays(st.sampled_from([np.float32, np.float64]), st.tuples(st.integers(0, 7), st.integers(0, 9)),
                elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
       transposed=st.booleans())
def test_relu_equals_the_spec_bit_for_bit(X, transposed):
    if transposed:
        X = X.T  # a non-contiguous view: the kernel must read it as it is, not a stale copy
    Y, mask = elementwise.relu_forward(X)
    Y_spec, mask_spec = host_arrays.relu_forward(X)
    assert Y.dtype == Y_spec.dtype and Y.shape == Y_spec.shape
    assert np.array_equal(mask, mask_spec)
    assert np.array_equal(Y.view(np.uint8), np.ascontiguousarray(Y_spec).view(np.uint8))  # -0.0 and NaN too
    dY = np.arange(X.size, dtype=X.dtype).reshape(X.shape) - 3
    dX, dX_spec = elementwise.relu_backward(dY, mask), host_arrays.relu_backward(dY, mask_spec)
    assert dX.dtype == dX_spec.dtype and np.array_equal(dX, dX_spec)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_special_values(dtype):
    X = SPECIAL.astype(dtype).reshape(3, 3)
    Y, mask = elementwise.relu_forward(X)
    assert mask.tolist() == [[False, False, False], [True, False, True], [False, True, False]]
    assert np.array_equal(Y, np.where(mask, X, 0)) and not np.isnan(Y).any()
    assert np.signbit(Y).sum() == 0  # -0.0 and negatives give +0.0


def test_relu_backward_broadcasts_the_mask_like_the_spec():
    dY = np.ones((4, 3), np.float32)
    mask = np.array([True, False, True])
    assert np.array_equal(elementwise.relu_backward(dY, mask), host_arrays.relu_backward(dY, mask))


def test_the_cpu_backend_uses_the_numba_relu():
    from purerigl.kernels import get_backend

    cpu = get_backend("cpu")
    assert cpu.relu_forward is elementwise.relu_forward and cpu.relu_backward is elementwise.relu_backward


# --------------------------------------------------------------------------------------------------
# GELU: float32 by Abramowitz and Stegun's erf, held to the float64 spec; other dtypes are the spec

from purerigl.kernels import host_transformer  # noqa: E402


def _gelu64(X):
    return host_transformer.gelu_forward(X.astype(np.float64))


def _dgelu64(dY, X):
    return host_transformer.gelu_backward(dY.astype(np.float64), X.astype(np.float64))


@settings(max_examples=60, deadline=None)
@given(X=arrays(np.float32, st.tuples(st.integers(0, 7), st.integers(0, 9)),
                elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
       transposed=st.booleans())
def test_gelu_float32_is_within_float32_error_of_the_exact_gelu(X, transposed):
    """Forward and backward against the float64 spec: NaN where it is NaN, infinities and signed zeros as
    it gives them, and elsewhere within 1e-6 max(1, |x|) (|dy| times that backward): the size of the
    float32 spec's own rounding error, not the 1e-2 of a tanh approximation."""
    if transposed:
        X = X.T
    dY = np.linspace(-2, 2, X.size, dtype=np.float32).reshape(X.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for got, want, scale in ((elementwise.gelu_forward(X), _gelu64(X), 1.0),
                                 (elementwise.gelu_backward(dY, X), _dgelu64(dY, X), np.abs(dY))):
            assert got.dtype == np.float32 and got.shape == X.shape
            assert np.array_equal(np.isnan(got), np.isnan(want))
            finite = np.isfinite(want)
            assert np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)].astype(np.float32))
            bound = 1e-6 * np.maximum(1.0, np.abs(X.astype(np.float64))) * scale
            assert np.all(np.abs(got[finite] - want[finite]) <= bound[finite])


def test_gelu_special_values_and_the_spec_for_other_dtypes():
    X = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -40.0, 3e38, -3e38, 1.0, -1.0], np.float32)
    Y = elementwise.gelu_forward(X)
    with np.errstate(invalid="ignore"):
        want = host_transformer.gelu_forward(X)
    assert np.array_equal(Y, want, equal_nan=True) or np.allclose(Y, want, rtol=1e-6, atol=0, equal_nan=True)
    assert np.array_equal(np.signbit(Y[3:5]), [False, True])  # GELU(-0.0) = -0.0, as the spec
    X64 = np.random.default_rng(0).standard_normal((3, 4))
    assert np.array_equal(elementwise.gelu_forward(X64), host_transformer.gelu_forward(X64))  # float64: the spec
    assert np.array_equal(elementwise.gelu_backward(X64, X64), host_transformer.gelu_backward(X64, X64))


def test_gelu_float32_speaks_for_the_exact_gelu_on_training_activations():
    """On activations of a training step's size the largest error is that of the float32 spec itself."""
    rng = np.random.default_rng(3)
    X = (2 * rng.standard_normal((1088, 128))).astype(np.float32)
    exact = _gelu64(X)
    ours = np.abs(elementwise.gelu_forward(X) - exact).max()
    spec32 = np.abs(host_transformer.gelu_forward(X) - exact).max()
    assert ours <= 2 * spec32 + 1e-7
    dY = rng.standard_normal(X.shape).astype(np.float32)
    assert np.abs(elementwise.gelu_backward(dY, X) - _dgelu64(dY, X)).max() <= 4 * np.abs(
        host_transformer.gelu_backward(dY, X) - _dgelu64(dY, X)).max() + 1e-7


def test_the_cpu_backend_uses_the_numba_gelu():
    from purerigl.kernels import get_backend

    cpu = get_backend("cpu")
    assert cpu.gelu_forward is elementwise.gelu_forward and cpu.gelu_backward is elementwise.gelu_backward
