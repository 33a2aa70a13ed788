"""Layers, loss and model builder of ``purerigl.nn``: gradients by finite differences, the loss's
numerics, and what :func:`build_mlp` promises (shapes, names, structure counts, initialisation).

Finite differences run in float32 (the layers compute in float32), so they use central differences
with a step of 1e-2 and a tolerance relative to the gradient's scale. Where the checked quantity is
linear in the perturbed value (a linear layer under a linear read-out ``sum(R * Y)``) the central
difference has no truncation error at all, so the tolerance there is tight. Through ReLUs, an entry
whose perturbation flips a ReLU mask is not a valid FD probe; such entries are skipped and counted,
and the test asserts that almost all entries were probed.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.kernels import get_backend
from purerigl.nn import (
    MLP,
    Dense,
    ModelError,
    Parameter,
    ReLU,
    SparseLinear,
    build_mlp,
    parse_hidden,
    softmax_cross_entropy,
)
from purerigl.optim import SGD

BACKENDS = ["reference", "cpu"]
FORMATS = ["condensed", "diagonal", "csr"]
H = 1e-2  # finite-difference step (float32)


# --------------------------------------------------------------------------------------------------
# helpers


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _condensed_ablated(rng):
    """7 x 9, rows 1, 3 and 6 ablated (only 4 active rows), fan-in k = 3."""
    rows = np.array([0, 2, 4, 5], dtype=np.int32)
    indices = np.stack([np.sort(rng.choice(9, 3, replace=False)) for _ in rows]).astype(np.int32)
    return Condensed(rows, indices, _rand(rng, 4, 3), (7, 9))


def _condensed_full(rng):
    return Condensed.random((5, 8), None, rng, k=4)


def _diagonal(shape):
    def make(rng):
        P = max(shape)
        return Diagonal.random(shape, None, rng, K=max(1, P // 2))

    return make


def _csr_empty_rows(rng):
    """6 x 5 with rows 0, 2 and 5 empty (first and last row included)."""
    counts = np.array([0, 3, 0, 5, 2, 0])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(5, c, replace=False)) for c in counts]).astype(np.int32)
    return CSR(indptr, indices, _rand(rng, int(counts.sum())), (6, 5))


SPARSE_CASES = {
    "condensed-full": _condensed_full,
    "condensed-ablated": _condensed_ablated,
    "diagonal-tall": _diagonal((7, 4)),
    "diagonal-wide": _diagonal((4, 7)),
    "diagonal-square": _diagonal((5, 5)),
    "csr-empty-rows": _csr_empty_rows,
}


def _linear_fd(f, arr, h=H):
    """Central differences of the scalar f() w.r.t. every entry of ``arr`` (perturbed in place)."""
    g = np.zeros(arr.shape, dtype=np.float64)
    flat = arr.reshape(-1)
    t = arr.dtype.type
    for e in range(flat.size):
        old = flat[e]
        hi, lo = t(old + t(h)), t(old - t(h))
        flat[e] = hi
        plus = f()
        flat[e] = lo
        minus = f()
        flat[e] = old
        g.reshape(-1)[e] = (plus - minus) / (float(hi) - float(lo))  # the actual step, not the nominal one
    return g


def _assert_grad_close(got, want, rtol, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = np.abs(got - want)
    assert np.all(err <= rtol * scale), (
        f"{what}: max |analytic - FD| = {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}, "
        f"scale {scale:.3g}\nanalytic={got.ravel()[:12]}\nFD={want.ravel()[:12]}"
    )


def _check_linear_layer(layer, n_in, rng, tol=2e-4):
    """FD-check values/weight, bias and input gradients of a linear layer under L = sum(R * Y)."""
    B = 5
    X = _rand(rng, B, n_in)
    n_out = layer.shape[0]
    R = rng.standard_normal((B, n_out))  # float64 read-out weights

    def loss():
        return float(np.sum(R * layer.forward(X).astype(np.float64)))

    loss()
    dX = layer.backward(R.astype(np.float32))
    w_grad = layer.weight.grad.copy()
    b_grad = layer.bias.grad.copy()

    _assert_grad_close(w_grad, _linear_fd(loss, layer.weight.value), tol, "weight gradient")
    _assert_grad_close(b_grad, _linear_fd(loss, layer.bias.value), tol, "bias gradient")
    assert dX is not None
    _assert_grad_close(dX, _linear_fd(loss, X), tol, "input gradient")
    return w_grad, b_grad, dX


# --------------------------------------------------------------------------------------------------
# finite-difference checks of single layers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
def test_sparse_linear_gradients_match_finite_differences(case, backend):
    """SparseLinear's value, bias and input gradients equal central differences of sum(R * Y), for
    condensed (full and with ablated rows), diagonal (tall, wide, square) and csr (with empty rows),
    on both backends. The read-out is linear in every checked quantity, so the FD is exact up to
    float32 rounding and the tolerance is tight."""
    rng = np.random.default_rng(sorted(SPARSE_CASES).index(case))
    W = SPARSE_CASES[case](rng)
    layer = SparseLinear(W, bias=_rand(rng, W.n_out, scale=0.1), backend=backend, name="l")
    w_grad, b_grad, _ = _check_linear_layer(layer, W.n_in, rng)
    # the weight gradient is laid out like W.values and is non-trivial
    assert w_grad.shape == W.values.shape
    assert np.abs(w_grad).max() > 1e-3
    if case == "condensed-ablated":
        # an ablated row still has its bias gradient (it outputs its bias)
        assert np.all(b_grad[[1, 3, 6]] != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_linear_ablated_rows_output_bias_only(backend):
    """An ablated condensed row outputs exactly its bias, whatever the input."""
    rng = np.random.default_rng(11)
    W = _condensed_ablated(rng)
    bias = _rand(rng, 7)
    layer = SparseLinear(W, bias=bias, backend=backend)
    Y = layer.forward(_rand(rng, 4, 9, scale=10.0))
    for r in (1, 3, 6):
        np.testing.assert_array_equal(Y[:, r], np.full(4, bias[r]))


def test_dense_gradients_match_finite_differences():
    """Dense's weight, bias and input gradients equal central differences of sum(R * Y)."""
    rng = np.random.default_rng(3)
    layer = Dense(_rand(rng, 6, 4), bias=_rand(rng, 6, scale=0.1), name="d")
    w_grad, _, _ = _check_linear_layer(layer, 4, rng)
    assert w_grad.shape == (6, 4)


def test_relu_gradient_matches_finite_differences_away_from_kink():
    """ReLU's backward equals central differences of sum(R * relu(X)) where |X| exceeds the step."""
    rng = np.random.default_rng(4)
    X = _rand(rng, 6, 7)
    X[np.abs(X) < 5 * H] += np.float32(10 * H)  # keep every entry away from the kink
    X[0, 0], X[0, 1] = 2.0, -2.0  # at least one of each side
    R = rng.standard_normal(X.shape)
    relu = ReLU()

    def loss():
        return float(np.sum(R * relu.forward(X).astype(np.float64)))

    Y = relu.forward(X)
    np.testing.assert_array_equal(Y, np.maximum(X, 0))
    assert Y.dtype == np.float32
    dX = relu.backward(R.astype(np.float32))
    fd = _linear_fd(loss, X)
    _assert_grad_close(dX, fd, 1e-4, "relu input gradient")
    np.testing.assert_array_equal(dX[X < 0], 0.0)


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    """dL/dlogits from softmax_cross_entropy equals central differences of its loss, in float64
    (tight) and in float32 (h = 1e-2, looser)."""
    rng = np.random.default_rng(5)
    logits64 = rng.standard_normal((4, 6)) * 2
    labels = np.array([0, 5, 2, 2])
    _, g = softmax_cross_entropy(logits64, labels)
    fd = _linear_fd(lambda: softmax_cross_entropy(logits64, labels)[0], logits64, h=1e-6)
    _assert_grad_close(g, fd, 1e-6, "softmax CE gradient (float64 logits)")

    logits32 = logits64.astype(np.float32)
    loss32, g32 = softmax_cross_entropy(logits32, labels)
    assert g32.dtype == np.float32 and isinstance(loss32, float)
    fd32 = _linear_fd(lambda: softmax_cross_entropy(logits32, labels)[0], logits32)
    _assert_grad_close(g32, fd32, 5e-4, "softmax CE gradient (float32 logits)")


# --------------------------------------------------------------------------------------------------
# finite-difference check of a whole network


def _relu_masks(model):
    return [layer._mask.copy() for layer in model.layers if isinstance(layer, ReLU)]


def _network_fd_check(model, X, labels, tol):
    """Compare every parameter's gradient with central differences of the mean CE loss."""

    def loss():
        return softmax_cross_entropy(model.forward(X), labels)[0]

    _, dlogits = softmax_cross_entropy(model.forward(X), labels)
    base_masks = _relu_masks(model)
    model.backward(dlogits)
    grads = {p.name: p.grad.copy() for p in model.parameters()}

    probed = skipped = 0
    for p in model.parameters():
        flat = p.value.reshape(-1)
        fd = np.full(flat.size, np.nan)
        for e in range(flat.size):
            old = flat[e]
            values = []
            same_masks = True
            for sign in (1, -1):
                flat[e] = old + np.float32(sign * H)
                values.append(loss())
                same_masks &= all(np.array_equal(a, b) for a, b in zip(_relu_masks(model), base_masks))
            flat[e] = old
            if not same_masks:  # the probe crossed a ReLU kink: FD is not a derivative there
                skipped += 1
                continue
            probed += 1
            step = float(np.float32(old + np.float32(H))) - float(np.float32(old - np.float32(H)))
            fd[e] = (values[0] - values[1]) / step
        ok = ~np.isnan(fd)
        g = grads[p.name].reshape(-1).astype(np.float64)
        scale = max(1e-2, float(np.abs(g).max()))
        err = np.abs(g[ok] - fd[ok])
        assert np.all(err <= tol * scale), (
            f"{p.name}: max |analytic - FD| = {err.max():.3g} (scale {scale:.3g})\n"
            f"analytic={g[ok][:10]}\nFD={fd[ok][:10]}"
        )
    assert probed >= 0.9 * (probed + skipped), f"{skipped} of {probed + skipped} probes crossed a ReLU kink"
    return grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS + ["dense"])
def test_whole_network_gradients_match_finite_differences(fmt, backend):
    """Every parameter gradient of a 3-layer MLP from build_mlp (6 -> 7 -> 5 -> 4, mean softmax CE)
    equals central differences of the loss: every sparse format at sparsity 0.5, and sparsity 0
    (Dense layers). Biases are small random non-zeros so no pre-activation sits on the ReLU kink."""
    rng = np.random.default_rng(21)
    model = build_mlp(6, "7,5", 4, fmt="condensed" if fmt == "dense" else fmt,
                      sparsity=0.0 if fmt == "dense" else 0.5, backend=backend, rng=rng)
    expected_type = Dense if fmt == "dense" else SparseLinear
    assert all(isinstance(lin, expected_type) for lin in model.linears)
    for lin in model.linears:
        lin.bias.value[...] = _rand(rng, lin.shape[0], scale=0.2)
    X = _rand(rng, 8, 6)
    labels = rng.integers(0, 4, size=8)
    grads = _network_fd_check(model, X, labels, tol=5e-3)
    # every parameter receives a non-trivial gradient
    assert all(np.abs(g).max() > 0 for g in grads.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_network_gradients_with_ablated_condensed_rows(backend):
    """A network whose hidden condensed layer has ablated rows still backpropagates correctly: the
    ablated neurons pass no gradient to earlier layers but their biases get one (FD-checked)."""
    rng = np.random.default_rng(22)
    model = build_mlp(9, "7", 3, fmt="condensed", sparsity=0.5, backend=backend, rng=rng)
    model.linears[0].set_structure(_condensed_ablated(rng))
    for lin in model.linears:
        lin.bias.value[...] = _rand(rng, lin.shape[0], scale=0.3)
    X = _rand(rng, 6, 9)
    labels = rng.integers(0, 3, size=6)
    _network_fd_check(model, X, labels, tol=5e-3)


# --------------------------------------------------------------------------------------------------
# the loss


def _log_softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def test_loss_is_stable_for_huge_logits():
    """Logits of +-1e4 give finite, exact losses and a finite gradient (no overflow to inf/nan)."""
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    loss, grad = softmax_cross_entropy(logits, labels)
    assert math.isfinite(loss)
    assert np.all(np.isfinite(grad))
    # sample 0: log p = 0; sample 1: log p = -1e4; sample 2: log p = log(1/2)
    np.testing.assert_allclose(loss, (0.0 + 1e4 + math.log(2)) / 3, rtol=1e-6)
    np.testing.assert_allclose(grad[0], [0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(grad[2], np.array([0, -0.5, 0.5]) / 3, atol=1e-7)


def test_loss_matches_float64_log_softmax():
    """The loss equals -mean(log_softmax(z)[b, y_b]) computed independently in float64, and the
    gradient equals (softmax - onehot) / B."""
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((17, 10)) * 5).astype(np.float32)
    y = rng.integers(0, 10, size=17)
    loss, grad = softmax_cross_entropy(z, y)
    logp = _log_softmax64(z)
    want = -logp[np.arange(17), y].mean()
    np.testing.assert_allclose(loss, want, rtol=1e-6, atol=1e-6)
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(grad, (np.exp(logp) - onehot) / 17, atol=1e-7)


def test_loss_gradient_rows_sum_to_zero():
    """Each row of dL/dlogits sums to 0 (softmax sums to 1, minus the one-hot)."""
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((9, 12)) * 3).astype(np.float32)
    _, grad = softmax_cross_entropy(z, rng.integers(0, 12, size=9))
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=1e-7)
    assert np.abs(grad).max() > 1e-3


def test_loss_is_mean_over_batch():
    """The loss of a batch is the mean of the per-sample losses and each gradient row is the
    per-sample gradient divided by the batch size."""
    rng = np.random.default_rng(8)
    z = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=5)
    loss, grad = softmax_cross_entropy(z, y)
    singles = [softmax_cross_entropy(z[b : b + 1], y[b : b + 1]) for b in range(5)]
    np.testing.assert_allclose(loss, np.mean([s[0] for s in singles]), rtol=1e-6)
    for b in range(5):
        np.testing.assert_allclose(grad[b], singles[b][1][0] / 5, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# build_mlp and parse_hidden


def test_build_mlp_shapes_chain_and_names():
    """Layer i is named layer{i}; shapes go n_features -> hidden... -> n_classes; ReLU sits between
    linear layers but not after the last; the parameter names follow the layer names."""
    model = build_mlp(20, "16, 8", 3, fmt="csr", sparsity=0.7, backend="cpu", rng=0)
    assert isinstance(model, MLP)
    assert [lin.shape for lin in model.linears] == [(16, 20), (8, 16), (3, 8)]
    assert [lin.name for lin in model.linears] == ["layer0", "layer1", "layer2"]
    assert [type(layer).__name__ for layer in model.layers] == [
        "SparseLinear", "ReLU", "SparseLinear", "ReLU", "SparseLinear"
    ]
    assert [p.name for p in model.parameters()] == [
        "layer0.values", "layer0.bias", "layer1.values", "layer1.bias", "layer2.values", "layer2.bias"
    ]
    assert model.n_features == 20 and model.n_classes == 3
    assert model.predict(np.zeros((5, 20), np.float32)).shape == (5, 3)
    dense = build_mlp(20, [16], 3, sparsity=0.0, rng=0)
    assert [p.name for p in dense.parameters()] == ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias"]
    assert build_mlp(5, "", 2, sparsity=0.5, rng=0).linears[0].shape == (2, 5)


def _budget(shape, s):
    """C = N - floor(s N), with s read as the exact decimal it was written as."""
    N = shape[0] * shape[1]
    return N - math.floor(Fraction(str(s)) * N)


@pytest.mark.parametrize("sparsity", [0.9, 0.57, 0.29, 0.5, 0.99])
@pytest.mark.parametrize("fmt", FORMATS)
def test_build_mlp_structure_counts_follow_the_budget(fmt, sparsity):
    """Every sparse layer stores what purerigl/formats/budget.py promises for C = N - floor(s N): csr
    nnz = C; condensed all rows active with k = floor(C / n_out) (a budget below n_out, k = 0, is a
    ModelError naming the layer); diagonal K = max(1, ceil(C / L)). Sparsities like 0.57 on N = 100
    (0.57 * 100 = 56.999... in binary) check the robust floor."""
    shapes = [(10, 10), (30, 10), (7, 30)]
    if fmt == "condensed" and any(_budget(s, sparsity) < s[0] for s in shapes):
        with pytest.raises(ModelError, match=r"layer\d: .*k = 0"):
            build_mlp(10, "10,30", 7, fmt=fmt, sparsity=sparsity, backend="cpu", rng=1)
        return
    model = build_mlp(10, "10,30", 7, fmt=fmt, sparsity=sparsity, backend="cpu", rng=1)
    for lin in model.linears:
        n_out, n_in = lin.shape
        C = _budget(lin.shape, sparsity)
        W = lin.W
        W.validate(full=True)
        if fmt == "csr":
            assert W.nnz == C
        elif fmt == "condensed":
            assert W.k == C // n_out
            assert W.n_active == n_out
            np.testing.assert_array_equal(W.rows, np.arange(n_out))
            assert W.nnz == W.k * n_out
        else:
            L = min(n_out, n_in)
            assert W.K == max(1, -(-C // L))
            assert W.nnz == W.K * L


@pytest.mark.parametrize("fmt", FORMATS + ["dense"])
def test_build_mlp_kaiming_init_uses_each_rows_fan_in(fmt):
    """Weights are N(0, 2 / fan_in) with each output row's actual fan-in (not n_in), biases 0:
    on a 400 x 1000 layer at 90% sparsity the pooled z-scores have std 1 and mean 0 (within 3%),
    and almost every row's own sample std is within 30% of sqrt(2 / fan_in)."""
    rng = np.random.default_rng(31)
    if fmt == "dense":
        model = build_mlp(1000, "", 400, sparsity=0.0, rng=rng)
        dense = model.linears[0].weight.value.astype(np.float64)
        fan_in = np.full(400, 1000)
        row_values = list(dense)
    else:
        model = build_mlp(1000, "", 400, fmt=fmt, sparsity=0.9, backend="cpu", rng=rng)
        coo = model.linears[0].W.to_scipy().tocoo()
        rows, vals = coo.row, coo.data.astype(np.float64)
        fan_in = np.bincount(rows, minlength=400)
        row_values = [vals[rows == r] for r in range(400)]
    np.testing.assert_array_equal(model.linears[0].bias.value, 0.0)
    assert fan_in.min() >= 20
    z = np.concatenate([v / math.sqrt(2.0 / f) for v, f in zip(row_values, fan_in)])
    assert abs(z.std() - 1.0) < 0.03, z.std()
    assert abs(z.mean()) < 0.03, z.mean()
    ratios = np.array([v.std() / math.sqrt(2.0 / f) for v, f in zip(row_values, fan_in)])
    assert np.mean(np.abs(ratios - 1) < 0.3) > 0.97, np.sort(ratios)[[0, -1]]


def test_build_mlp_sparsity_zero_builds_dense_layers():
    """sparsity 0 gives Dense layers (no sparse storage at all), with full weight matrices."""
    model = build_mlp(12, "8", 3, fmt="diagonal", sparsity=0.0, rng=0)
    assert all(isinstance(lin, Dense) for lin in model.linears)
    assert model.sparse_layers() == []
    assert model.linears[0].weight.value.shape == (8, 12)
    assert np.count_nonzero(model.linears[0].weight.value) == 96
    assert [row["format"] for row in model.describe()] == ["dense", "dense"]


@pytest.mark.parametrize("bad, word", [("3,x", "'3,x'"), ("0", "0"), ("-1", "-1"), ("4,0", "0")])
def test_bad_hidden_strings_raise_model_error(bad, word):
    """Malformed or non-positive hidden widths raise ModelError (a ValueError) quoting the input."""
    with pytest.raises(ModelError) as info:
        build_mlp(10, bad, 3, rng=0)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "hidden" in msg and word in msg, msg
    with pytest.raises(ModelError):
        parse_hidden(bad)


def test_parse_hidden_accepts_valid_forms():
    """'300,100', ' 300 , 100 ', [300, 100] and '' / () parse to the width tuple."""
    assert parse_hidden("300,100") == (300, 100)
    assert parse_hidden(" 300 , 100 ") == (300, 100)
    assert parse_hidden([300, 100]) == (300, 100)
    assert parse_hidden("") == () and parse_hidden(()) == ()


def test_unknown_format_raises_model_error():
    """A format outside ('condensed', 'diagonal', 'csr') raises ModelError naming the valid ones."""
    with pytest.raises(ModelError) as info:
        build_mlp(10, "5", 3, fmt="coo", rng=0)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "'coo'" in msg and all(f in msg for f in FORMATS), msg


@pytest.mark.parametrize("fmt", FORMATS)
def test_weight_parameter_is_the_stored_values_array(fmt):
    """A SparseLinear's weight parameter value IS W.values (same object), also after an optimizer
    step (which must update in place, changing the sparse matrix); set_structure replaces both."""
    rng = np.random.default_rng(9)
    model = build_mlp(8, "6", 3, fmt=fmt, sparsity=0.5, backend="cpu", rng=rng)
    lin = model.linears[1]
    assert lin.weight.value is lin.W.values
    before = lin.W.values.copy()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    X = _rand(rng, 4, 8)
    _, d = softmax_cross_entropy(model.forward(X), np.array([0, 1, 2, 0]))
    model.backward(d)
    opt.step()
    assert lin.weight.value is lin.W.values
    assert not np.array_equal(lin.W.values, before)  # the matrix itself was updated
    # the forward uses the updated matrix
    np.testing.assert_allclose(
        lin.forward(np.eye(6, dtype=np.float32)) - lin.bias.value, lin.W.to_dense().T, rtol=1e-6, atol=1e-7
    )

    new = {"condensed": lambda: Condensed.random((3, 6), None, rng, k=2),
           "diagonal": lambda: Diagonal.random((3, 6), None, rng, K=2),
           "csr": lambda: CSR.random((3, 6), None, rng, nnz=7)}[fmt]()
    old_param = lin.weight
    lin.set_structure(new)
    assert lin.W is new
    assert lin.weight is old_param  # the same Parameter object (the optimizer holds it)
    assert lin.weight.value is new.values
    assert lin.weight.grad.shape == new.values.shape and not lin.weight.grad.any()
    with pytest.raises(ValueError):
        lin.set_structure(Condensed.random((4, 6), None, rng, k=2))


@pytest.mark.parametrize("fmt", FORMATS + ["dense"])
def test_first_layer_needs_no_input_gradient(fmt):
    """The first linear layer has needs_input_grad False and its backward returns None (while still
    filling its parameter gradients); later layers return an input gradient."""
    rng = np.random.default_rng(10)
    model = build_mlp(8, "6", 3, fmt="csr" if fmt == "dense" else fmt,
                      sparsity=0.0 if fmt == "dense" else 0.5, backend="cpu", rng=rng)
    first, last = model.linears
    assert first.needs_input_grad is False
    assert last.needs_input_grad is True
    X = _rand(rng, 4, 8)
    H1 = first.forward(X)
    assert first.backward(np.ones_like(H1)) is None
    assert first.weight.grad.any() and first.bias.grad.any()
    last.forward(np.abs(H1))
    dX = last.backward(np.ones((4, 3), np.float32))
    assert dX is not None and dX.shape == (4, 6)


def test_parameter_replace_resets_gradient():
    """Parameter.replace installs the new array and a zero gradient of its shape."""
    p = Parameter("x", np.ones(3, np.float32))
    p.grad[...] = 5
    new = np.zeros((2, 2), np.float32)
    p.replace(new)
    assert p.value is new and p.grad.shape == (2, 2) and not p.grad.any()


def test_layer_backend_is_resolved():
    """A layer built with a backend name holds that backend (its ops are called for the maths)."""
    model = build_mlp(4, "3", 2, sparsity=0.5, backend="reference", rng=0)
    assert all(lin.backend == get_backend("reference") for lin in model.sparse_layers())
