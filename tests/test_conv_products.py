"""A convolution's input gradient as one backend operation, ``conv_input_grad_fm`` = col2im_t(W^T dY^T).

Pins down:

- on the reference and cpu backends, for every format, it equals the input gradient of the dense
  convolution computed another way (SciPy's 2-d convolution per (sample, filter, channel) in float64,
  :func:`purerigl.cli._conv_selftest.conv_oracle`), with hypothesis drawing strides, paddings, rectangular
  kernels, odd spatial sizes, batch 1, densities from one entry to full and wide and tall filter
  matrices; a filter matrix that stores nothing gives zeros;
- the cpu backend's fused stride-1 kernel (:mod:`purerigl.kernels.cpu.conv_products`) equals the
  specification (:func:`purerigl.kernels.host_conv.conv_input_grad_fm`) to float32 rounding, gives
  the same bits serial and parallel, and never builds the patch-sized W^T dY^T;
- the Diagonal format's column-major structure lists every stored entry once, by column;
- wrong shapes and dtypes are refused with the product's errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.cli._conv_selftest import conv_oracle
from purerigl.errors import DTypeError, FormatError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.kernels import get_backend, host_conv
from purerigl.kernels.cpu import conv_products, diagonal_fm
from purerigl.kernels.cpu._serial import serial_twin

FORMATS = {"csr": CSR, "condensed": Condensed, "diagonal": Diagonal}


@st.composite
def problems(draw, strides=(1, 2, 3)):
    """(W, dYT, X_shape, kh, kw, stride, padding) of a small convolution, W in a drawn format."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    B = draw(st.integers(1, 3))
    c_in = draw(st.integers(1, 3))
    c_out = draw(st.integers(1, 40))  # up to 40 filters: tall filter matrices too (c_out > c_in kh kw)
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.sampled_from(strides))
    padding = draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * padding), 9))
    W_ = draw(st.integers(max(1, kw - 2 * padding), 9))
    density = draw(st.sampled_from([0.05, 0.2, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    try:
        Wm = FORMATS[fmt].random((c_out, c_in * kh * kw), density, rng=rng)
    except FormatError:  # too low a density for this small a matrix: keep one diagonal / entry per row
        Wm = FORMATS[fmt].random((c_out, c_in * kh * kw), None if fmt == "diagonal" else 1.0, rng=rng,
                                 **({"K": 1} if fmt == "diagonal" else {}))
    Wm.values[...] = rng.standard_normal(Wm.values.shape).astype(np.float32)
    Ho, Wo = host_conv.output_hw((B, c_in, H, W_), kh, kw, stride, padding)
    dYT = rng.standard_normal((c_out, B * Ho * Wo)).astype(np.float32)
    return Wm, dYT, (B, c_in, H, W_), kh, kw, stride, padding


def oracle_dX(Wm, dYT, X_shape, kh, kw, stride, padding) -> np.ndarray:
    """float64 dX of the dense convolution by SciPy (no patch matrix, no sparse product)."""
    B, c_in, H, W_ = X_shape
    c_out = Wm.shape[0]
    K = Wm.to_scipy().toarray().astype(np.float64).reshape(c_out, c_in, kh, kw)  # (c_out, c_in, kh, kw)
    Ho, Wo = host_conv.output_hw(X_shape, kh, kw, stride, padding)
    dY = dYT.astype(np.float64).reshape(c_out, B, Ho, Wo).transpose(1, 0, 2, 3)  # (B, c_out, Ho, Wo)
    _, dX, _ = conv_oracle(np.zeros(X_shape), K, np.zeros(c_out), dY, stride, padding)
    return dX


def _tolerance(Wm, dYT, kh, kw) -> float:
    """float32 accumulation error bound for sums of at most c_out kh kw terms."""
    terms = Wm.shape[0] * kh * kw
    scale = (np.abs(Wm.values).max(initial=0.0) * np.abs(dYT).max(initial=0.0))
    return 1e-6 * terms * max(scale, 1.0) + 1e-6


@pytest.mark.parametrize("name", ["reference", "cpu"])
@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_input_gradient_equals_the_dense_convolution_oracle(name, problem):
    Wm, dYT, X_shape, kh, kw, stride, padding = problem
    dX = get_backend(name).conv_input_grad_fm(Wm, dYT, X_shape, kh, kw, stride, padding)
    assert dX.shape == X_shape and dX.dtype == np.float32
    np.testing.assert_allclose(dX, oracle_dX(*problem), rtol=1e-5, atol=_tolerance(Wm, dYT, kh, kw))


@settings(max_examples=60, deadline=None)
@given(problem=problems(strides=(1,)))
def test_fused_kernel_equals_the_specification(problem):
    """Stride 1 runs the fused kernel on the cpu backend: it agrees with col2im_t(W^T dY^T) of the
    reference backend to float32 rounding (another order of the same sums)."""
    Wm, dYT, X_shape, kh, kw, stride, padding = problem
    got = get_backend("cpu").conv_input_grad_fm(Wm, dYT, X_shape, kh, kw, stride, padding)
    want = host_conv.conv_input_grad_fm(Wm, dYT, X_shape, kh, kw, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=_tolerance(Wm, dYT, kh, kw))


def _vgg_like(fmt, rng, B=4, c_in=6, c_out=8, H=9, W_=7, k=3, padding=1, density=0.4):
    Wm = FORMATS[fmt].random((c_out, c_in * k * k), density, rng=rng)
    Wm.values[...] = rng.standard_normal(Wm.values.shape).astype(np.float32)
    Ho, Wo = host_conv.output_hw((B, c_in, H, W_), k, k, 1, padding)
    dYT = rng.standard_normal((c_out, B * Ho * Wo)).astype(np.float32)
    return Wm, dYT, (B, c_in, H, W_), k, k, 1, padding


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fused_kernel_runs_and_builds_no_patch_product(fmt, monkeypatch):
    """At stride 1 the cpu op runs the kernel of conv_products and calls no matmul_t_fm / col2im_t."""
    import purerigl.kernels.cpu as cpu_module

    def refuse(*args, **kwargs):
        raise AssertionError("the fused path built W^T dY^T or ran col2im_t")

    ran = []
    real = conv_products.input_grad_stride1
    monkeypatch.setattr(cpu_module, "matmul_t_fm", refuse)
    monkeypatch.setattr(cpu_module, "col2im_t", refuse)
    monkeypatch.setattr(conv_products, "input_grad_stride1", lambda *a: ran.append(1) or real(*a))
    problem = _vgg_like(fmt, np.random.default_rng(3))
    dX = cpu_module.conv_input_grad_fm(*problem)
    assert ran == [1]
    np.testing.assert_allclose(dX, oracle_dX(*problem), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fused_kernel_serial_and_parallel_give_the_same_bits(fmt, monkeypatch):
    problem = _vgg_like(fmt, np.random.default_rng(5), B=7)
    cpu = get_backend("cpu")
    kernel = conv_products._input_grad_pitched
    twin = serial_twin(kernel)
    monkeypatch.setattr(conv_products, "by_work", lambda k, *a, **kw: twin)
    serial = cpu.conv_input_grad_fm(*problem)
    monkeypatch.setattr(conv_products, "by_work", lambda k, *a, **kw: kernel)
    parallel = cpu.conv_input_grad_fm(*problem)
    monkeypatch.setattr(conv_products, "MAX_BLOCKS", 1)  # another partition of the samples
    one_block = cpu.conv_input_grad_fm(*problem)
    assert np.array_equal(serial, parallel) and np.array_equal(serial, one_block)


def test_fused_kernel_handles_an_output_wider_than_a_cache_line_and_padding_wrap():
    """A wide plane (Wo = 40) and kw = 5 with padding 2: each weight's flat axpy crosses the pitch
    columns of every row (the zeros that wrap into the next row), and the result is still exact."""
    rng = np.random.default_rng(11)
    problem = _vgg_like("csr", rng, B=2, c_in=2, c_out=3, H=6, W_=40, k=5, padding=2, density=0.6)
    dX = get_backend("cpu").conv_input_grad_fm(*problem)
    np.testing.assert_allclose(dX, oracle_dX(*problem), rtol=1e-5, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(1, 12), st.integers(1, 12)), density=st.sampled_from([0.05, 0.3, 1.0]),
       seed=st.integers(0, 999))
def test_diagonal_columns_list_every_entry_once_by_column(shape, density, seed):
    Wm = Diagonal.random(shape, None, rng=seed, K=max(1, round(density * max(shape))))
    col_ptr, entry, row = diagonal_fm.columns_of(Wm)
    rows, cols = Wm.positions()
    assert col_ptr[0] == 0 and col_ptr[-1] == Wm.values.size and np.all(np.diff(col_ptr) >= 0)
    assert sorted(entry.tolist()) == list(range(Wm.values.size))
    for j in range(shape[1]):
        q = entry[col_ptr[j]:col_ptr[j + 1]]
        assert np.all(cols.ravel()[q] == j)
        assert np.array_equal(row[col_ptr[j]:col_ptr[j + 1]], rows.ravel()[q])
    assert diagonal_fm.columns_of(Wm)[1] is entry  # cached per structure


@pytest.mark.parametrize("name", ["reference", "cpu"])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_filter_matrix_without_entries_gives_zeros(name, stride):
    c_out, c_in, k = 4, 2, 3
    empty = CSR(np.zeros(c_out + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (c_out, c_in * k * k))
    X_shape = (2, c_in, 7, 6)
    Ho, Wo = host_conv.output_hw(X_shape, k, k, stride, 1)
    dYT = np.ones((c_out, 2 * Ho * Wo), np.float32)
    dX = get_backend(name).conv_input_grad_fm(empty, dYT, X_shape, k, k, stride, 1)
    assert dX.shape == X_shape and not dX.any()


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_wrong_shapes_and_dtypes_are_refused(name):
    be = get_backend(name)
    Wm, dYT, X_shape, kh, kw, stride, padding = _vgg_like("csr", np.random.default_rng(0))
    with pytest.raises(ShapeError, match="c_in \\* kh \\* kw"):
        be.conv_input_grad_fm(Wm, dYT, (X_shape[0], X_shape[1] + 1) + X_shape[2:], kh, kw, stride, padding)
    with pytest.raises(ShapeError, match="dYT"):
        be.conv_input_grad_fm(Wm, dYT[:, :-1], X_shape, kh, kw, stride, padding)
    with pytest.raises(DTypeError):
        be.conv_input_grad_fm(Wm, dYT.astype(np.float64), X_shape, kh, kw, stride, padding)
    with pytest.raises(ShapeError):
        be.conv_input_grad_fm(Wm, dYT, X_shape, kh, kw, 0, padding)  # stride 0
