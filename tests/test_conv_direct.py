"""A sparse convolution's forward and value gradient from its input, without the patch matrix
(:mod:`purerigl.kernels.cpu.conv_direct`, the lazy operand :class:`purerigl.kernels.patch_operand.Patches`).

Pins down:

- ``cpu.matmul_fm(W, Patches(X, ...))`` equals the dense convolution computed another way (SciPy's
  2-d correlation per channel in float64, :func:`purerigl.cli._conv_selftest.conv_oracle`) and has
  **the same bits** as ``cpu.matmul_fm(W, cpu.im2col_t(X))``, with hypothesis drawing CSR and
  Condensed filter matrices (ablated filters, one entry per filter to full), batch 1, rectangular
  kernels, paddings, odd spatial sizes and outputs of one pixel;
- ``cpu.sddmm_fm(W, Patches(...), dY^T)`` equals the filter gradient of the same oracle at the stored
  entries, and the reference backend's ``sddmm_fm`` of the built patch matrix to float32 rounding;
- strides above 1, the Diagonal format and tiny patch batches take the route through the patch matrix
  (``takes_patches``), with the same results; the reference and cuda backends never take ``Patches``;
- the kernels give the same bits serial and parallel and for another partition of the samples, and
  build no patch matrix (``im2col_t`` is never called);
- wrong shapes and dtypes are refused with clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.cli._conv_selftest import conv_oracle
from purerigl.errors import DTypeError, FormatError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.formats.triples import triples
from purerigl.kernels import get_backend, host_conv
from purerigl.kernels.cpu import conv_direct
from purerigl.kernels.cpu._serial import serial_twin
from purerigl.kernels.patch_operand import Patches
from purerigl.nn.conv import SparseConv2d

FORMATS = {"csr": CSR, "condensed": Condensed, "diagonal": Diagonal}
#: The formats whose forward from X has the bits of the product through P^T (same order of the sums).
SAME_BITS = ("csr", "condensed")
cpu = get_backend("cpu")
reference = get_backend("reference")


def _filters(fmt, c_out, n_in, density, rng, ablate=0):
    try:
        Wm = FORMATS[fmt].random((c_out, n_in), density, rng=rng)
    except FormatError:  # too low a density for so small a matrix: one entry per filter, one diagonal
        Wm = (Diagonal.random((c_out, n_in), None, rng=rng, K=1) if fmt == "diagonal"
              else FORMATS[fmt].random((c_out, n_in), 1.0 / n_in, rng=rng))
    if fmt == "condensed" and ablate and Wm.rows.shape[0] > ablate:  # whole filters ablated (SRigL)
        keep = np.sort(rng.choice(Wm.rows.shape[0], Wm.rows.shape[0] - ablate, replace=False))
        Wm = Condensed(Wm.rows[keep], Wm.indices[keep], Wm.values[keep], Wm.shape)
    Wm.values[...] = rng.standard_normal(Wm.values.shape).astype(np.float32)
    return Wm


@st.composite
def problems(draw, fmts=tuple(FORMATS)):
    """(W, X, dYT, kh, kw, padding) of a small stride-1 convolution."""
    fmt = draw(st.sampled_from(fmts))
    B = draw(st.integers(1, 3))
    c_in = draw(st.integers(1, 3))
    c_out = draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * padding), 9))
    W_ = draw(st.integers(max(1, kw - 2 * padding), 9))
    density = draw(st.sampled_from([0.05, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    Wm = _filters(fmt, c_out, c_in * kh * kw, density, rng, ablate=draw(st.integers(0, 2)))
    X = rng.standard_normal((B, c_in, H, W_)).astype(np.float32)
    Ho, Wo = host_conv.output_hw(X.shape, kh, kw, 1, padding)
    dYT = rng.standard_normal((c_out, B * Ho * Wo)).astype(np.float32)
    return Wm, X, dYT, kh, kw, padding


def _oracle(Wm, X, dYT, kh, kw, padding, stride=1):
    """float64 (Y^T, dW at the stored entries) of the dense convolution by SciPy."""
    B, c_in = X.shape[:2]
    c_out = Wm.shape[0]
    K = Wm.to_scipy().toarray().astype(np.float64).reshape(c_out, c_in, kh, kw)  # (c_out, c_in, kh, kw)
    Ho, Wo = host_conv.output_hw(X.shape, kh, kw, stride, padding)
    dY = dYT.astype(np.float64).reshape(c_out, B, Ho, Wo).transpose(1, 0, 2, 3)  # (B, c_out, Ho, Wo)
    Y, _, dK = conv_oracle(X.astype(np.float64), K, np.zeros(c_out), dY, stride, padding)
    YT = Y.transpose(1, 0, 2, 3).reshape(c_out, -1)  # (c_out, B*Ho*Wo)
    rows, cols, _ = triples(Wm)  # every stored entry, in the order of Wm.values
    return YT, dK.reshape(c_out, -1)[rows, cols].reshape(Wm.values.shape)


def _atol(Wm, A, terms):
    scale = np.abs(Wm.values).max(initial=0.0) * np.abs(A).max(initial=0.0)
    return 1e-6 * terms * max(scale, 1.0) + 1e-6


@settings(max_examples=80, deadline=None)
@given(problem=problems())
def test_forward_from_the_input_equals_the_oracle_and_the_patch_product_bit_for_bit(problem):
    """CSR and Condensed: bit for bit the product through P^T; Diagonal (summed row by row here,
    diagonal by diagonal there): to float32 rounding."""
    Wm, X, dYT, kh, kw, padding = problem
    PT = Patches(X, kh, kw, 1, padding)
    got = cpu.matmul_fm(Wm, PT)
    assert got.shape == (Wm.shape[0], PT.shape[1]) and got.dtype == np.float32
    through = cpu.matmul_fm(Wm, cpu.im2col_t(X, kh, kw, 1, padding))
    tol = _atol(Wm, X, Wm.shape[1])
    if isinstance(Wm, Diagonal):
        np.testing.assert_allclose(got, through, rtol=1e-5, atol=tol)
    else:
        assert np.array_equal(got, through)
    want, _ = _oracle(*problem)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=tol)
    spec = reference.matmul_fm(Wm, Patches(X, kh, kw, 1, padding))  # the specification builds P^T
    assert np.array_equal(spec, reference.matmul_fm(Wm, reference.im2col_t(X, kh, kw, 1, padding)))
    np.testing.assert_allclose(got, spec, rtol=1e-5, atol=tol)


@settings(max_examples=80, deadline=None)
@given(problem=problems())
def test_value_gradient_from_the_input_equals_the_oracle_and_the_specification(problem):
    Wm, X, dYT, kh, kw, padding = problem
    got = cpu.sddmm_fm(Wm, Patches(X, kh, kw, 1, padding), dYT)
    assert got.shape == Wm.values.shape and got.dtype == np.float32
    _, want = _oracle(*problem)
    tol = _atol(Wm, dYT, dYT.shape[1]) * np.abs(X).max(initial=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=tol)
    spec = reference.sddmm_fm(Wm, reference.im2col_t(X, kh, kw, 1, padding), dYT)
    np.testing.assert_allclose(got, spec, rtol=1e-5, atol=tol)
    assert np.array_equal(reference.sddmm_fm(Wm, Patches(X, kh, kw, 1, padding), dYT), spec)  # the spec builds P^T


def _vgg_like(fmt, seed=3, B=5, c_in=6, c_out=8, H=9, W_=7, k=3, padding=1, density=0.3):
    rng = np.random.default_rng(seed)
    Wm = _filters(fmt, c_out, c_in * k * k, density, rng, ablate=2)
    X = rng.standard_normal((B, c_in, H, W_)).astype(np.float32)
    Ho, Wo = host_conv.output_hw(X.shape, k, k, 1, padding)
    dYT = rng.standard_normal((c_out, B * Ho * Wo)).astype(np.float32)
    return Wm, X, dYT, k, k, padding


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_kernels_build_no_patch_matrix(fmt, monkeypatch):
    import purerigl.kernels.cpu as cpu_module

    def refuse(*args, **kwargs):
        raise AssertionError("the patch matrix was built")

    monkeypatch.setattr(cpu_module, "im2col_t", refuse)
    monkeypatch.setattr(cpu_module.conv_ops, "im2col_t", refuse)
    Wm, X, dYT, kh, kw, padding = problem = _vgg_like(fmt)
    PT = Patches(X, kh, kw, 1, padding)
    YT, dW = cpu_module.matmul_fm(Wm, PT), cpu_module.sddmm_fm(Wm, PT, dYT)
    want_YT, want_dW = _oracle(*problem)
    np.testing.assert_allclose(YT, want_YT, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dW, want_dW, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_serial_parallel_and_another_partition_give_the_same_bits(fmt, monkeypatch):
    Wm, X, dYT, kh, kw, padding = _vgg_like(fmt, B=7)
    PT = Patches(X, kh, kw, 1, padding)
    runs = []
    for mode in ("serial", "parallel", "one block"):
        if mode == "serial":
            monkeypatch.setattr(conv_direct, "by_work", lambda k, *a, **kw: serial_twin(k))
        else:
            monkeypatch.setattr(conv_direct, "by_work", lambda k, *a, **kw: k)
        if mode == "one block":
            monkeypatch.setattr(conv_direct, "MAX_BLOCKS", 1)
        runs.append((cpu.matmul_fm(Wm, PT), cpu.sddmm_fm(Wm, PT, dYT)))
    for YT, dW in runs[1:]:
        assert np.array_equal(YT, runs[0][0]) and np.array_equal(dW, runs[0][1])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_step_pads_its_input_once(fmt, monkeypatch):
    """The forward and the value gradient of one operand pad X once (kept in ``Patches.derived``), and
    give what a fresh operand for each gives, bit for bit."""
    Wm, X, dYT, kh, kw, padding = _vgg_like(fmt)
    fresh = (cpu.matmul_fm(Wm, Patches(X, kh, kw, 1, padding)),
             cpu.sddmm_fm(Wm, Patches(X, kh, kw, 1, padding), dYT))
    calls = []
    real = conv_direct._padded
    monkeypatch.setattr(conv_direct, "_padded", lambda *a: calls.append(a) or real(*a))
    PT = Patches(X, kh, kw, 1, padding)
    YT, dW = cpu.matmul_fm(Wm, PT), cpu.sddmm_fm(Wm, PT, dYT)
    assert len(calls) == 1 and calls[0][0] is X
    assert PT.derived["padded"].shape == (*X.shape[:2], X.shape[2] + 2 * padding, X.shape[3] + 2 * padding)
    assert np.array_equal(YT, fresh[0]) and np.array_equal(dW, fresh[1])


def test_a_wide_plane_and_a_kernel_wider_than_the_padding_wrap_exactly():
    """Wo = 40 and kw = 5 with padding 2: every entry's flat axpy and dot cross the pitch columns of
    every row; the dropped and zeroed pitch values keep the results exact."""
    problem = _vgg_like("csr", seed=11, B=2, c_in=2, c_out=3, H=6, W_=40, k=5, padding=2, density=0.6)
    Wm, X, dYT, kh, kw, padding = problem
    PT = Patches(X, kh, kw, 1, padding)
    want_YT, want_dW = _oracle(*problem)
    np.testing.assert_allclose(cpu.matmul_fm(Wm, PT), want_YT, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cpu.sddmm_fm(Wm, PT, dYT), want_dW, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("case", ["stride 2", "tiny batch"])
def test_other_cases_take_the_patch_matrix_with_the_same_results(case):
    rng = np.random.default_rng(7)
    stride = 2 if case == "stride 2" else 1
    Wm = _filters("csr", 8, 2 * 9, 0.4, rng)
    X = rng.standard_normal((1, 2, 2, 2) if case == "tiny batch" else (3, 2, 7, 6)).astype(np.float32)
    Ho, Wo = host_conv.output_hw(X.shape, 3, 3, stride, 1)
    dYT = rng.standard_normal((8, X.shape[0] * Ho * Wo)).astype(np.float32)
    assert cpu.takes_patches(Wm, stride, X.dtype) is (case == "tiny batch")
    PT = Patches(X, 3, 3, stride, 1)
    built = cpu.im2col_t(X, 3, 3, stride, 1)
    assert np.array_equal(cpu.matmul_fm(Wm, PT), cpu.matmul_fm(Wm, built))
    want_YT, want_dW = _oracle(Wm, X, dYT, 3, 3, 1, stride)
    np.testing.assert_allclose(cpu.matmul_fm(Wm, PT), want_YT, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cpu.sddmm_fm(Wm, PT, dYT), want_dW, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_only_the_cpu_backend_takes_patches(fmt):
    Wm = _filters(fmt, 4, 18, 0.5, np.random.default_rng(0))
    assert cpu.takes_patches(Wm, 1, np.float32)
    assert not cpu.takes_patches(Wm, 1, np.float64) and not cpu.takes_patches(Wm, 2, np.float32)
    assert not reference.takes_patches(Wm, 1, np.float32)
    assert not host_conv.takes_patches(Wm, 1, np.float32)


def test_patches_stand_for_the_patch_matrix():
    X = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    PT = Patches(X, 3, 2, 1, 1)
    built = cpu.im2col_t(X, 3, 2, 1, 1)
    assert PT.shape == built.shape == (3 * 3 * 2, 2 * 5 * 5) and PT.dtype == np.float32
    assert np.array_equal(PT.array(cpu), built)
    assert np.array_equal(PT.rows(cpu), built.T)


def test_wrong_shapes_and_dtypes_are_refused():
    Wm, X, dYT, kh, kw, padding = _vgg_like("csr")
    with pytest.raises(ShapeError, match="n_in"):
        cpu.matmul_fm(Wm, Patches(X[:, :-1], kh, kw, 1, padding))
    with pytest.raises(ShapeError, match="dYT|batch"):
        cpu.sddmm_fm(Wm, Patches(X, kh, kw, 1, padding), dYT[:, :-1])
    with pytest.raises(ShapeError, match="n_out"):
        cpu.sddmm_fm(Wm, Patches(X, kh, kw, 1, padding), dYT[:-1])
    with pytest.raises(DTypeError):
        cpu.matmul_fm(Wm, Patches(X.astype(np.float64), kh, kw, 1, padding))
    with pytest.raises(ShapeError, match="out"):
        cpu.matmul_fm(Wm, Patches(X, kh, kw, 1, padding), out=np.zeros((1, 1), np.float32))


# --------------------------------------------------------------------------------------------------
# the convolution layer on the cpu backend


def _conv_layer(fmt, stride=1, **kw):
    from purerigl.nn import SparseConv2d

    rng = np.random.default_rng(21)
    Wm = _filters(fmt, 6, 4 * 9, 0.3, rng, ablate=1)
    bias = np.linspace(-1, 1, 6).astype(np.float32)
    return SparseConv2d(Wm, 4, 3, stride=stride, padding=1, bias=bias, backend="cpu", name="c", **kw)


def _layer_step(layer, X, dY):
    Y = layer.forward(X)
    dX = layer.backward(dY)
    return Y, dX, layer.weight.grad.copy(), layer.bias.grad.copy()


def _same(a, b, fmt):
    """Bit for bit for the formats whose forward sums in the order of the product through P^T, else to
    float32 rounding."""
    if fmt in SAME_BITS:
        assert np.array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * (1 + np.abs(b).max(initial=0.0)))


@pytest.fixture
def built_route(monkeypatch):
    """The cpu backend with takes_patches saying no: every convolution builds its patch matrix."""
    import purerigl.kernels.cpu as cpu_module

    def route(on: bool):
        monkeypatch.setattr(cpu_module, "takes_patches", (lambda *a: False) if on else conv_direct.takes_patches)
    return route


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_layer_builds_patches_only_for_growth_and_matches_the_built_route(fmt, monkeypatch, built_route):
    """On cpu a stride-1 sparse convolution runs its step without ``im2col_t``: the same output as
    through the built patch matrix (bit for bit for CSR and Condensed), gradients to float32 rounding;
    ``saved_batch`` (what growth reads) then builds P in the row layout, exactly ``im2col``'s."""
    import purerigl.kernels.cpu as cpu_module

    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 4, 7, 6)).astype(np.float32)
    dY = rng.standard_normal((3, 6, 7, 6)).astype(np.float32)
    built_route(True)
    built = _layer_step(_conv_layer(fmt), X, dY)
    built_route(False)
    layer = _conv_layer(fmt)
    with monkeypatch.context() as mp:
        mp.setattr(cpu_module, "im2col_t", lambda *a, **k: pytest.fail("the step built the patch matrix"))
        mp.setattr(cpu_module.conv_ops, "im2col_t", lambda *a, **k: pytest.fail("the step built the patch matrix"))
        direct = _layer_step(layer, X, dY)
    _same(direct[0], built[0], fmt)
    for got, want in zip(direct[1:], built[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    P, dY2 = layer.linear.saved_batch()
    assert np.array_equal(P, cpu.im2col(X, 3, 3, 1, 1)) and dY2.shape == (3 * 7 * 6, 6)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_direct_and_built_routes_agree_tiled_and_with_kept_batches(fmt, built_route):
    """A batch in tiles (max_tile_bytes below one sample's patches) and the ring of keep_batches(2):
    the same results and the same saved batch whichever route the products take."""
    rng = np.random.default_rng(9)
    batches = [(rng.standard_normal((4, 4, 5, 5)).astype(np.float32),
                rng.standard_normal((4, 6, 5, 5)).astype(np.float32)) for _ in range(2)]
    out = {}
    for route in ("built", "direct"):
        built_route(route == "built")
        layer = _conv_layer(fmt, max_tile_bytes=4 * 36 * 25 * 2)  # two samples' patches per tile
        layer.linear.keep_batches(2)
        steps = [_layer_step(layer, X, dY) for X, dY in batches]
        out[route] = steps, layer.linear.saved_batch()
    for (got, want) in zip(out["direct"][0], out["built"][0]):
        _same(got[0], want[0], fmt)
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(out["direct"][1], out["built"][1]))


def test_a_linear_with_its_own_feature_major_step_gets_the_built_patch_matrix():
    from purerigl.nn import SparseLinear

    seen = []

    class Logged(SparseLinear):
        def forward_fm(self, XT):
            seen.append(type(XT))
            return super().forward_fm(XT)

        @property
        def forward_matrix(self):  # the convolution asks a linear with its own step for this too
            return self.matrix

    layer = _conv_layer("csr")
    old = layer.linear
    layer.linear = Logged(old.W, old.bias.value, backend="cpu", name="c")
    layer.forward(np.ones((2, 4, 5, 5), np.float32))
    assert seen == [np.ndarray]


@pytest.mark.parametrize("model_name, shape", [("lenet5", (1, 12, 12)), ("vgg-small", (1, 8, 8)),
                                               ("resnet20", (3, 8, 8))])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_network_step_matches_the_built_route_and_growth_reads_the_same_patches(model_name, shape, fmt, built_route):
    """Whole networks (batch norm, pooling, residual blocks around the convolutions): one step by each
    route gives the same logits and the same gradients to float32 rounding, and after the backward
    every sparse convolution's saved batch (what growth reads) is the same; logits and saved batches
    bit for bit for CSR and Condensed (Diagonal: to rounding). A layer that changed a convolution's
    input in place between its forward and the backward or the update would show here: the held X
    would no longer be the input the patches were taken from."""
    from purerigl.nn import build_model

    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, int(np.prod(shape)))).astype(np.float32)
    y = rng.integers(0, 10, 3)
    out = {}
    for route in ("built", "direct"):
        built_route(route == "built")
        net = build_model(model_name, shape, 10, fmt=fmt, sparsity=0.9, backend="cpu", rng=0)
        logits = net.forward(X)
        _, dlogits, _ = net.backend.softmax_cross_entropy(logits, y)
        net.backward(dlogits)
        saved = {layer.name: layer.linear.saved_batch() for layer in net.leaves() if isinstance(layer, SparseConv2d)}
        out[route] = logits, {p.name: p.grad.copy() for p in net.parameters()}, saved
    (logits, grads, saved), (logits_b, grads_b, saved_b) = out["direct"], out["built"]
    assert saved and saved.keys() == saved_b.keys()
    _same(logits, logits_b, fmt)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_b[name], rtol=1e-4, atol=1e-5 * (1 + np.abs(grads_b[name]).max()))
    for name in saved:  # Diagonal: the later layers' inputs differ by the rounding of the earlier ones
        for a, b in zip(saved[name], saved_b[name]):
            _same(a, b, fmt)


@pytest.mark.parametrize("frozen", [False, True], ids=["soft", "frozen"])
def test_a_gated_diagonal_layer_takes_patches_soft_and_frozen(frozen, built_route):
    """DynaDiag's gated layer takes the patches held as X in both phases: soft, its products with
    the gated W_eff (a Diagonal) read X through matmul_fm / sddmm_fm, and the gradients of the values
    and of the scores alpha match the built route's to float32 rounding; frozen, its step is
    SparseLinear's. What growth reads (the saved batch) is the same patch matrix either way."""
    from purerigl.nn import GatedDiagonalLinear, SparseConv2d as Conv

    rng = np.random.default_rng(13)
    X = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    dY = rng.standard_normal((2, 6, 6, 6)).astype(np.float32)

    def gated_layer():
        W = Diagonal.random((6, 36), None, rng=np.random.default_rng(2), K=12)
        layer = Conv(W, 4, 3, padding=1, backend="cpu", name="g")
        layer.linear = GatedDiagonalLinear(W, k=6, backend="cpu", name="g", temperature=0.7,
                                           alpha=np.random.default_rng(3).standard_normal(36))
        layer.linear.frozen = frozen  # what DynaDiag's freeze sets (dst/dynadiag.py)
        return layer

    def step(layer):
        Y, dX, dW, db = _layer_step(layer, X, dY)
        X_rows, dY_rows = layer.linear.saved_batch()
        return Y, dX, dW, db, layer.linear.alpha.grad.copy(), X_rows, dY_rows

    layer = gated_layer()
    assert layer.linear.accepts_patches and isinstance(layer._patches(X), Patches)
    direct = step(layer)
    built_route(True)
    built = gated_layer()
    assert isinstance(built._patches(X), np.ndarray)
    want = step(built)
    if not frozen:
        assert np.abs(want[4]).max() > 0  # the scores learn from this step
    for got, ref in zip(direct, want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * (1 + np.abs(ref).max()))
    np.testing.assert_array_equal(direct[5], want[5])  # the saved patches: the same rows, bit for bit
