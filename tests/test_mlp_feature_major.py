"""The MLP's feature-major step (:class:`purerigl.nn.MLP`) and the bias ops it adds
(``add_bias_fm`` / ``bias_grad_fm``, :mod:`purerigl.kernels.host_arrays` and
:mod:`purerigl.kernels.cuda.elementwise`).

Pins down:

- from :data:`~purerigl.nn.model.FM_MIN_BATCH` rows on, a step of a sparse MLP (every format) runs its
  products feature-major (``matmul_fm`` / ``matmul_t_fm`` / ``sddmm_fm``, never ``matmul`` /
  ``matmul_t`` / ``sddmm``), and its logits and every parameter gradient equal a float64 NumPy
  forward and backward of the dense-equivalent matrices (built from the stored triples), to float32
  rounding; the gradients land in the parameters' own ``grad`` arrays;
- a mixed MLP (a Dense layer among sparse ones, which runs in the row layout; a DynaDiag
  GatedDiagonalLinear, soft or frozen, which runs its own gated feature-major step) gives the same,
  alpha's gradient included; a SparseLinear subclass that changes only its row-layout step keeps
  the row layout;
- fewer rows than FM_MIN_BATCH keep the row layout (no feature-major op, no transpose), a model
  without sparse layers never transposes, and a sparse one transposes only at its ends (X, logits,
  dlogits);
- what DST reads after a feature-major step is the row layout (``last_input``, ``last_output_grad``);
- ``add_bias_fm`` and ``bias_grad_fm`` agree with NumPy on the reference, cpu and cuda (simulator)
  backends, and the cuda ones refuse host arrays and wrong shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from purerigl.errors import BackendError, DTypeError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.formats.triples import triples
from purerigl.kernels import get_backend
from purerigl.nn import MLP, Dense, GatedDiagonalLinear, SparseLinear, build_mlp
from purerigl.nn.diagonal_gate import soft_top_k_backward
from purerigl.nn.model import FM_MIN_BATCH

FORMATS = ("condensed", "csr", "diagonal")
ROW_OPS = ("matmul", "matmul_t", "sddmm")
FM_OPS = ("matmul_fm", "matmul_t_fm", "sddmm_fm", "add_bias_fm", "bias_grad_fm")


# --------------------------------------------------------------------------------------------------
# the oracle: a float64 NumPy step of the dense-equivalent matrices


def _dense_weight(lin) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 (n_out, n_in) the layer computes with, and for a soft gated layer its float32 gates."""
    if isinstance(lin, Dense):
        return lin.weight.host.astype(np.float64), None
    rows, cols, values = triples(lin.W)
    gates = None
    if isinstance(lin, GatedDiagonalLinear) and not lin.frozen:
        gates = lin.gates().astype(np.float32)  # (S,) as the layer rounds them
        values = (gates[:, None].astype(np.float64) * lin.W.values).ravel()
    W = np.zeros(lin.shape)
    W[rows, cols] = values  # stored positions are unique
    return W, gates


def _oracle(model: MLP, X: np.ndarray, dlogits: np.ndarray):
    """float64 logits (B, n_classes) and {parameter name: gradient shaped like it}, computed from
    the dense-equivalent matrices (ReLU between linear layers); also ``{name}.alpha`` of gated layers."""
    mats = [_dense_weight(lin) for lin in model.linears]
    A, Z = [X.astype(np.float64)], []
    for i, (lin, (W, _)) in enumerate(zip(model.linears, mats)):
        Z.append(A[-1] @ W.T + lin.bias.host)  # (B, n_out)
        if i < len(mats) - 1:
            A.append(np.maximum(Z[-1], 0.0))
    grads = {}
    dZ = dlogits.astype(np.float64)
    for i in reversed(range(len(mats))):
        lin, (W, gates) = model.linears[i], mats[i]
        G = dZ.T @ A[i]  # (n_out, n_in) dense gradient
        grads[lin.bias.name] = dZ.sum(axis=0)
        if isinstance(lin, Dense):
            grads[lin.weight.name] = G
        else:
            rows, cols, _ = triples(lin.W)
            g = G[rows, cols].reshape(lin.W.values.shape)
            if gates is not None:  # dL/dV = gate G; dL/dgate_k = sum_t V_kt G_kt
                d_gate = np.zeros(lin.alpha.value.size)
                d_gate[lin.W.offsets] = (lin.W.values.astype(np.float64) * g).sum(axis=1)
                grads[lin.alpha.name] = soft_top_k_backward(lin.alpha.value, lin.k, lin.temperature, d_gate)
                g = gates[:, None] * g
            grads[lin.weight.name] = g
        if i > 0:
            dZ = (dZ @ W) * (Z[i - 1] > 0)
    return Z[-1], grads


def _assert_close(got, want, what):
    got = np.asarray(got)
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    scale = float(np.max(np.abs(want), initial=1.0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def _step(model: MLP, X: np.ndarray, dlogits: np.ndarray):
    """One forward and backward on ``model``'s backend; host logits."""
    be = model.backend
    logits = model.forward(be.to_device(X))
    model.backward(be.to_device(dlogits))
    model.sync_to_host()
    return be.to_host(logits)


def _check_against_oracle(model: MLP, B: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, model.n_features)).astype(np.float32)
    dlogits = rng.standard_normal((B, model.n_classes)).astype(np.float32)
    grads_before = [p.grad for p in model.parameters()]
    logits = _step(model, X, dlogits)
    want_logits, want = _oracle(model, X, dlogits)
    assert logits.shape == (B, model.n_classes)
    _assert_close(logits, want_logits, "logits")
    for p, g in zip(model.parameters(), grads_before):
        assert p.grad is g, f"{p.name}: the gradient moved to a new array"
        _assert_close(model.backend.to_host(p.grad), want[p.name], p.name)
    for lin in model.linears:
        if isinstance(lin, GatedDiagonalLinear) and not lin.frozen:
            _assert_close(lin.alpha.grad.astype(np.float32), want[lin.alpha.name], lin.alpha.name)


@pytest.fixture
def calls(monkeypatch):
    """A factory: ``calls(backend)`` counts every call of the products, the bias ops and ``transpose``
    made through ``backend`` (wrapping its module's functions) and returns the {op: count} dict."""

    def count(backend):
        counts = {}
        for op in (*ROW_OPS, *FM_OPS, "add_bias", "bias_grad", "transpose"):
            fn = getattr(backend.module, op)

            def wrapper(*args, _fn=fn, _op=op, **kwargs):
                counts[_op] = counts.get(_op, 0) + 1
                return _fn(*args, **kwargs)

            monkeypatch.setattr(backend.module, op, wrapper)
        return counts

    return count


# --------------------------------------------------------------------------------------------------
# the sparse MLP


@pytest.mark.parametrize("B", [FM_MIN_BATCH, 9])
@pytest.mark.parametrize("fmt", FORMATS)
def test_feature_major_step_equals_the_dense_oracle(backend, fmt, B, calls):
    """Every sparse layer runs feature-major: the fm products and bias ops only, one transpose at each
    end of the forward and one for dlogits; logits and gradients match the float64 oracle."""
    model = build_mlp(10, "12,7", 3, fmt=fmt, sparsity=0.6, backend=backend, rng=1)
    for lin in model.linears:  # nonzero biases, so that add_bias_fm is seen
        lin.bias.value[...] = np.linspace(-0.5, 0.5, lin.shape[0], dtype=np.float32)
    counts = calls(model.backend)
    _check_against_oracle(model, B)
    assert not any(counts.get(op) for op in ROW_OPS + ("add_bias", "bias_grad")), counts
    assert counts["matmul_fm"] == counts["add_bias_fm"] == counts["bias_grad_fm"] == counts["sddmm_fm"] == 3
    assert counts["matmul_t_fm"] == 2  # the first layer's input gradient is not computed
    assert counts["transpose"] == 3  # X, logits; dlogits


@pytest.mark.parametrize("B", [1, 2, FM_MIN_BATCH - 1])
@pytest.mark.parametrize("fmt", FORMATS)
def test_small_batches_keep_the_row_layout(backend, fmt, B, calls):
    model = build_mlp(10, "12", 3, fmt=fmt, sparsity=0.6, backend=backend, rng=2)
    counts = calls(model.backend)
    _check_against_oracle(model, B)
    assert not any(counts.get(op) for op in (*FM_OPS, "transpose")), counts
    assert counts["matmul"] == counts["sddmm"] == 2 and counts["matmul_t"] == 1


def test_a_dense_model_never_transposes(backend, calls):
    """Sparsity 0 builds Dense layers only: they run in the row layout, so no transpose happens."""
    model = build_mlp(10, "12,7", 3, sparsity=0.0, backend=backend, rng=3)
    assert not model.sparse_layers()
    counts = calls(model.backend)
    _check_against_oracle(model, 8)
    assert not any(counts.get(op) for op in (*FM_OPS, "transpose")), counts


@pytest.mark.parametrize("fmt", FORMATS)
def test_dst_reads_the_row_layout_after_a_feature_major_step(backend, fmt):
    """last_input / last_output_grad / saved_batch of every layer are (B, n_in) / (B, n_out): the
    first layer's input is X itself, the last layer's output gradient dlogits itself."""
    model = build_mlp(10, "12,7", 3, fmt=fmt, sparsity=0.6, backend=backend, rng=4)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 10)).astype(np.float32)
    dlogits = rng.standard_normal((6, 3)).astype(np.float32)
    _step(model, X, dlogits)
    for lin in model.linears:
        assert lin.last_input.shape == (6, lin.shape[1]) and lin.last_output_grad.shape == (6, lin.shape[0])
        Xs, dYs = lin.saved_batch()
        np.testing.assert_array_equal(Xs, lin.last_input)
        np.testing.assert_array_equal(dYs, lin.last_output_grad)
    np.testing.assert_array_equal(model.linears[0].last_input, X)
    np.testing.assert_array_equal(model.linears[-1].last_output_grad, dlogits)


# --------------------------------------------------------------------------------------------------
# mixed models: Dense and gated diagonal layers run in the row layout between feature-major ones


def _sparse(fmt, shape, name, backend, seed):
    W = {"condensed": Condensed.random, "csr": CSR.random, "diagonal": Diagonal.random}[fmt](shape, 0.4, rng=seed)
    bias = np.linspace(-0.3, 0.3, shape[0], dtype=np.float32)
    return SparseLinear(W, bias=bias, backend=backend, name=name)


def _dense(shape, name, backend, seed):
    return Dense.kaiming(shape, np.random.default_rng(seed), name=name, backend=backend)


def _gated(shape, name, backend, seed, frozen=False):
    rng = np.random.default_rng(seed)
    W = Diagonal.random(shape, None, rng, K=4)
    alpha = rng.normal(size=max(shape)).astype(np.float32)
    return GatedDiagonalLinear(W, 3, alpha=alpha, temperature=0.7, frozen=frozen, backend=backend, name=name)


MIXED = {
    # name: layer builders (shape, name, backend, seed) for 9 -> 11 -> 8 -> 4
    "dense-middle": [lambda *a: _sparse("csr", *a), _dense, lambda *a: _sparse("condensed", *a)],
    "dense-ends": [_dense, lambda *a: _sparse("diagonal", *a), _dense],
    "gated-middle": [lambda *a: _sparse("condensed", *a), _gated, lambda *a: _sparse("csr", *a)],
    "gated-first": [_gated, lambda *a: _sparse("diagonal", *a), _dense],
    "frozen-gated": [lambda *a: _sparse("csr", *a), lambda *a: _gated(*a, frozen=True), _dense],
}


@pytest.mark.parametrize("kind", sorted(MIXED))
def test_mixed_model_equals_the_dense_oracle(backend, kind, monkeypatch):
    """A Dense or gated layer among sparse ones: the step still matches the oracle (alpha's gradient
    too); a gated layer runs its own (gated) feature-major step where the backend's is native."""
    ran_fm = set()
    for name in ("forward_fm", "backward_fm"):
        method = getattr(GatedDiagonalLinear, name)

        def spy(self, *args, _method=method, _name=name):
            ran_fm.add((self.name, _name))
            return _method(self, *args)

        monkeypatch.setattr(GatedDiagonalLinear, name, spy)
    widths = (9, 11, 8, 4)
    layers = [make((n_out, n_in), f"layer{i}", backend, 10 + i)
              for i, (make, n_in, n_out) in enumerate(zip(MIXED[kind], widths, widths[1:]))]
    model = MLP(layers)
    _check_against_oracle(model, 7, seed=6)
    for lin in model.linears:
        if isinstance(lin, SparseLinear):
            assert lin.last_input.shape == (7, lin.shape[1])
    gated = {lin.name for lin in model.linears if isinstance(lin, GatedDiagonalLinear)}
    want = {(n, step) for n in gated for step in ("forward_fm", "backward_fm")} if backend.feature_major_native else set()
    assert ran_fm == want


class _RowOnlyChange(SparseLinear):
    """A subclass that changes its row-layout forward and backward only (doubles the output)."""

    def forward(self, X):
        return 2 * super().forward(X)  # a host array on the cpu backend

    def backward(self, dY):
        return super().backward(dY)


def test_a_subclass_that_changes_only_the_row_step_keeps_the_row_layout(monkeypatch):
    """has_feature_major_step refuses a subclass whose feature-major step would skip its change: the
    MLP runs it in the row layout, so the change is applied (and its output is doubled)."""
    from purerigl.nn.layers import has_feature_major_step, missing_fm_overrides

    backend = get_backend("cpu")
    W = CSR.random((5, 6), 0.5, rng=0)
    plain, changed = SparseLinear(W.copy(), backend=backend), _RowOnlyChange(W.copy(), backend=backend)
    assert has_feature_major_step(plain) and not has_feature_major_step(changed)
    assert missing_fm_overrides(_RowOnlyChange) == [("forward", "forward_fm"), ("backward", "backward_fm"),
                                                     ("backward", "gradients_fm")]
    X = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    Y_plain = backend.to_host(MLP([plain]).forward(X))
    Y_changed = backend.to_host(MLP([changed]).forward(X))
    np.testing.assert_allclose(Y_changed, 2 * Y_plain, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# the new array ops


SHAPES = [(1, 1), (3, 5), (7, 2), (4, 0), (0, 3)]  # (n, B)


def _operands(n, B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, B)).astype(np.float32), rng.standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("n, B", SHAPES)
def test_bias_fm_ops_agree_with_numpy(backend, n, B):
    A, b = _operands(n, B)
    YT = A.copy()
    assert backend.add_bias_fm(YT, b) is YT
    np.testing.assert_array_equal(YT, A + b[:, None])
    out = np.full(n, np.nan, dtype=np.float32)
    assert backend.bias_grad_fm(A, out) is out
    np.testing.assert_allclose(out, A.astype(np.float64).sum(axis=1), rtol=1e-6, atol=1e-6)
    # the transposes of the row layout's
    np.testing.assert_array_equal(backend.add_bias(A.T.copy(), b), YT.T)
    np.testing.assert_allclose(backend.bias_grad(np.ascontiguousarray(A.T), np.empty(n, np.float32)), out,
                               rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def cuda():
    """The cuda backend (the simulator under conftest), with THREADS_PER_BLOCK patched to 4 so that
    tiny inputs span several blocks."""
    try:
        be = get_backend("cuda")
    except BackendError as err:  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"cuda backend unavailable: {err}")
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = 4
    yield be
    _launch.THREADS_PER_BLOCK = saved


@pytest.mark.parametrize("n, B", SHAPES)
def test_cuda_bias_fm_ops_agree_with_numpy(cuda, n, B):
    A, b = _operands(n, B, seed=1)
    YT = cuda.to_device(A)
    assert cuda.add_bias_fm(YT, cuda.to_device(b)) is YT
    np.testing.assert_array_equal(cuda.to_host(YT), A + b[:, None])
    out = cuda.to_device(np.full(n, np.nan, dtype=np.float32))
    assert cuda.bias_grad_fm(cuda.to_device(A), out) is out
    np.testing.assert_allclose(cuda.to_host(out), A.astype(np.float64).sum(axis=1), rtol=1e-6, atol=1e-6)


def test_cuda_bias_fm_ops_refuse_host_arrays_and_wrong_shapes(cuda):
    A, b = _operands(3, 5)
    with pytest.raises(DTypeError):
        cuda.add_bias_fm(A, cuda.to_device(b))
    with pytest.raises(ShapeError):
        cuda.add_bias_fm(cuda.to_device(A), cuda.to_device(np.zeros(5, np.float32)))  # (B,), not (n,)
    with pytest.raises(DTypeError):
        cuda.bias_grad_fm(cuda.to_device(A), np.zeros(3, np.float32))
    with pytest.raises(ShapeError):
        cuda.bias_grad_fm(cuda.to_device(A), cuda.to_device(np.zeros(5, np.float32)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_step_runs_in_the_row_layout_and_equals_the_dense_oracle(cuda, fmt, calls):
    """The same step on device arrays (tiny: the simulator is slow), at a batch that runs feature-major
    on the host backends: cuda's ``*_fm`` ops are its row kernels between two transposes
    (``feature_major_native`` is False), so the model keeps the row layout there and saves those
    launches."""
    assert not cuda.feature_major_native and get_backend("cpu").feature_major_native
    model = build_mlp(5, "6", 3, fmt=fmt, sparsity=0.5, backend=cuda, rng=7)
    counts = calls(model.backend)
    _check_against_oracle(model, FM_MIN_BATCH, seed=8)
    assert counts["matmul"] == 2 and not counts.get("matmul_fm") and not counts.get("transpose"), counts
