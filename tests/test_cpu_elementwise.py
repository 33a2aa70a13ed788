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
