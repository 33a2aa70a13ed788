"""The transformer layers (:mod:`purerigl.nn.attention`, :mod:`purerigl.nn.transformer`) and the small
vision transformer ``vit-tiny`` (:mod:`purerigl.nn.vit`).

- Every layer's backward against central finite differences in float64 (step 1e-6): LayerNorm, GELU
  (also against the erf formula written with ``math.erf``), a dense token-wise linear layer, attention,
  the pre-norm block, patch embedding, class token, position embeddings, class-token pooling, and a
  whole tiny ViT built dense with every parameter made float64. Hypothesis draws the shapes (batch 1,
  one token, one head, width-1 heads included).
- Attention against a direct NumPy computation written another way (explicit loops over sequences,
  heads, queries and keys); the fused QKV layout against PyTorch's ``nn.MultiheadAttention`` and the
  block against ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` when torch is there.
- Patch embedding against :class:`~purerigl.nn.conv.Conv2d` with kernel = stride = patch.
- Sparse layers (float32 only) against their dense float64 twins: a token-wise linear layer (its saved
  batch is the (B * T, d_in) tokens and (B * T, d_out) output gradient), attention, and a whole sparse
  ViT in every format on both host backends (outputs, and every gradient, a sparse one read at its
  stored positions with ``oracles.positions_of``).
- ``vit-tiny`` in the model registry: weight shapes, default dense layers, budgets, shapes on the
  digits / MNIST / CIFAR-10 inputs, refusals (patch, width, device backends), model files and an
  exact resume.
- Two epochs on the embedded digits with the project's Trainer and DSTUpdater for static, rigl,
  srigl, set, gse and diag-rigl (AdamW, ERK budgets): the loss falls and every sparse layer keeps its
  method's invariant.
"""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invariants import check_budget_invariant
from oracles import dense_of, positions_of

from purerigl.data import load_dataset
from purerigl.dst import UpdateSchedule, make_method, resolve_format
from purerigl.dst.distribution import named_budgets
from purerigl.dst.updater import DSTUpdater
from purerigl.errors import PureriglError, ShapeError
from purerigl.formats.budget import layer_budget, random_layer_with_budget, structure_count
from purerigl.kernels.registry import Backend
from purerigl.nn import Dense, ModelError, SparseLinear
from purerigl.nn.attention import (
    MultiHeadSelfAttention,
    TokenLinear,
    TransformerBackendError,
    attention_backward,
    attention_forward,
    check_token_backend,
)
from purerigl.nn.conv import Conv2d
from purerigl.nn.models import MODELS, InputShapeError, build_model, default_dense_layers, weight_shapes
from purerigl.nn.network import Network
from purerigl.nn.transformer import GELU, LayerNorm, TransformerBlock
from purerigl.nn.vit_layers import ClassToken, ClassTokenPool, PatchEmbedding, PositionEmbedding
from purerigl.nn.vit import PatchSizeError, vit_tiny
from purerigl.training.checkpoint import load_model, load_training_state, save_model, save_training_checkpoint
from purerigl.training.loop import Trainer, TrainConfig, evaluate

FORMATS = ["condensed", "diagonal", "csr"]
BACKENDS = ["reference", "cpu"]
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
SMALL = {"width": 16, "depth": 2, "heads": 2}
FEW = settings(max_examples=10)
STANDIN_CUDA = Backend("cuda", types.SimpleNamespace(RESIDENT=True))


# --------------------------------------------------------------------------------------------------
# helpers: float64 parameters, finite differences


def _f64(layer):
    """Make every parameter of a dense-only layer (or network) float64, in place; returns it. Dense,
    LayerNorm and the token layers compute in their parameters' and input's dtype."""
    for p in layer.parameters():
        p.replace(np.array(p.value, dtype=np.float64))
    return layer


def _dense(rng, n_out, n_in, name, scale=1.0):
    """A Dense layer with float64 N(0, scale^2 / n_in) weights and a small random bias."""
    w = rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)
    layer = Dense(w, rng.standard_normal(n_out) * 0.1, name=name)
    return _f64(layer)


def _randomise(layer, rng):
    """Every parameter but the weight matrices drawn anew (in place): LayerNorm gammas around 1, the
    rest (betas, biases, tokens, position embeddings) around 0. Returns the layer."""
    for p in layer.parameters():
        if p.name.endswith(".values") or p.value.ndim == 2 and p.name.endswith(".weight"):
            continue
        base = 1.0 if p.name.endswith(".weight") else 0.0
        p.value[...] = base + 0.3 * rng.standard_normal(p.value.shape)
    return layer


def _central(f, array, index, h=1e-6):
    old = array[index]
    array[index] = old + h
    plus = f()
    array[index] = old - h
    minus = f()
    array[index] = old
    return (plus - minus) / (2 * h)


def _probe(rng, shape, n):
    size = int(np.prod(shape))
    return [np.unravel_index(i, shape) for i in rng.choice(size, size=min(n, size), replace=False)]


def _fd_check(layer, X, rng, n=6, tol=1e-6):
    """Every parameter (``n`` probes each) and the input of a float64 layer against central differences
    of the readout L = sum(layer(X) * R). Returns the number of entries checked."""
    Y = layer.forward(X)
    R = rng.standard_normal(Y.shape)
    dX = layer.backward(R)
    grads = {id(p): np.array(p.grad) for p in layer.parameters()}

    def loss():
        return float(np.sum(layer.forward(X) * R))

    checked = 0
    for p in layer.parameters():
        assert p.value.dtype == np.float64, p.name
        scale = 1.0 + np.abs(grads[id(p)]).max()
        for index in _probe(rng, p.value.shape, n):
            fd = _central(loss, p.value, index)
            assert abs(fd - grads[id(p)][index]) <= tol * scale, (p.name, index, fd, grads[id(p)][index])
            checked += 1
    if dX is not None:
        assert dX.shape == X.shape
        scale = 1.0 + np.abs(dX).max()
        for index in _probe(rng, X.shape, 2 * n):
            fd = _central(loss, X, index)
            assert abs(fd - dX[index]) <= tol * scale, ("input", index, fd, dX[index])
            checked += 1
    return checked


def _attention(rng, d, heads, name="attn"):
    return MultiHeadSelfAttention(d, heads, _dense(rng, 3 * d, d, f"{name}.qkv"), _dense(rng, d, d, f"{name}.proj"))


def _block(rng, d, heads, ratio=2, name="b"):
    block = TransformerBlock(_attention(rng, d, heads, name), _dense(rng, ratio * d, d, f"{name}.fc1"),
                             _dense(rng, d, ratio * d, f"{name}.fc2"), name=name, dtype=np.float64)
    return _randomise(block, rng)


# --------------------------------------------------------------------------------------------------
# single layers against finite differences (float64)


@FEW
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_layernorm_backward_matches_finite_differences(lead, d, seed):
    rng = np.random.default_rng(seed)
    ln = _randomise(LayerNorm(d, dtype=np.float64), rng)
    X = rng.standard_normal((*lead, d)) * 2 + 0.5
    Y = ln.forward(X)
    xhat = (X - X.mean(-1, keepdims=True)) / np.sqrt(X.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(Y, xhat * ln.weight.value + ln.bias.value, rtol=1e-12, atol=1e-12)
    _fd_check(ln, X, rng)
    assert [p.decay for p in ln.parameters()] == [False, False]


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-6, 6, 241)
    want = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    gelu = GELU()
    np.testing.assert_allclose(gelu.forward(x), want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(gelu.forward(x.astype(np.float32)), want, rtol=1e-6, atol=1e-6)
    assert gelu.forward(x.astype(np.float32)).dtype == np.float32
    rng = np.random.default_rng(0)
    _fd_check(gelu, rng.standard_normal((3, 4, 5)) * 3, rng, n=20)
    # the tanh approximation differs by about 1e-3 near |x| = 2: the exact form is the one computed
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(tanh_form - want).max() > 1e-4


@FEW
@given(B=st.integers(1, 3), T=st.integers(1, 4), d_in=st.integers(1, 5), d_out=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_dense_token_linear_backward_matches_finite_differences(B, T, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    layer = TokenLinear(_dense(rng, d_out, d_in, "t"))
    X = rng.standard_normal((B, T, d_in))
    np.testing.assert_allclose(layer.forward(X), X @ layer.weight.value.T + layer.bias.value, rtol=1e-12)
    _fd_check(layer, X, rng)


@FEW
@given(B=st.integers(1, 3), T=st.integers(1, 5), heads=st.integers(1, 3), dh=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_attention_backward_matches_finite_differences(B, T, heads, dh, seed):
    rng = np.random.default_rng(seed)
    attn = _attention(rng, heads * dh, heads)
    X = rng.standard_normal((B, T, heads * dh)) * 1.5
    _fd_check(attn, X, rng)
    A = attn.attention
    assert A.shape == (B, heads, T, T) and np.allclose(A.sum(-1), 1) and (A >= 0).all()


@FEW
@given(B=st.integers(1, 2), T=st.integers(1, 4), heads=st.integers(1, 2), dh=st.integers(1, 3),
       ratio=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_block_backward_matches_finite_differences(B, T, heads, dh, ratio, seed):
    rng = np.random.default_rng(seed)
    block = _block(rng, heads * dh, heads, ratio)
    X = rng.standard_normal((B, T, heads * dh))
    n = _fd_check(block, X, rng, n=4)
    assert n == sum(min(4, p.value.size) for p in block.parameters()) + min(8, X.size)  # every parameter probed
    names = [p.name for p in block.parameters()]
    assert names == ["b.ln1.weight", "b.ln1.bias", "b.qkv.weight", "b.qkv.bias", "b.proj.weight", "b.proj.bias",
                     "b.ln2.weight", "b.ln2.bias", "b.fc1.weight", "b.fc1.bias", "b.fc2.weight", "b.fc2.bias"]


def test_block_is_pre_norm_with_residuals():
    rng = np.random.default_rng(1)
    block = _block(rng, 4, 2)
    X = rng.standard_normal((2, 3, 4))
    H = X + block.attn.forward(block.ln1.forward(X))
    want = H + block.fc2.forward(block.gelu.forward(block.fc1.forward(block.ln2.forward(H))))
    np.testing.assert_allclose(block.forward(X), want, rtol=1e-12, atol=1e-12)


@FEW
@given(c=st.integers(1, 2), patch=st.integers(1, 3), nh=st.integers(1, 3), nw=st.integers(1, 2),
       d=st.integers(1, 4), B=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_patch_embedding_is_a_strided_convolution_and_matches_finite_differences(c, patch, nh, nw, d, B, seed):
    rng = np.random.default_rng(seed)
    embed = PatchEmbedding(patch, c, _dense(rng, d, c * patch * patch, "embed"))
    X = rng.standard_normal((B, c, nh * patch, nw * patch))
    conv = Conv2d(embed.weight.value.reshape(d, c, patch, patch), embed.bias.value, stride=patch, dtype=np.float64)
    want = conv.forward(X).reshape(B, d, nh * nw).transpose(0, 2, 1)  # (B, d, nh, nw) -> (B, T, d), row-major
    np.testing.assert_allclose(embed.forward(X), want, rtol=1e-12, atol=1e-12)
    assert embed.output_shape((c, nh * patch, nw * patch)) == (nh * nw, d)
    _fd_check(embed, X, rng)


@FEW
@given(B=st.integers(1, 3), T=st.integers(1, 4), d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_class_token_positions_and_pooling_match_finite_differences(B, T, d, seed):
    rng = np.random.default_rng(seed)
    cls = ClassToken(d, dtype=np.float64, value=rng.standard_normal(d))
    pos = PositionEmbedding(T + 1, d, rng=rng, dtype=np.float64)
    X = rng.standard_normal((B, T, d))
    Y = cls.forward(X)
    assert Y.shape == (B, T + 1, d) and np.array_equal(Y[:, 1:], X) and np.array_equal(Y[:, 0], np.tile(
        cls.token.value, (B, 1)))
    _fd_check(cls, X, rng)
    _fd_check(pos, rng.standard_normal((B, T + 1, d)), rng)
    pool = ClassTokenPool()
    Z = rng.standard_normal((B, T + 1, d))
    assert np.array_equal(pool.forward(Z), Z[:, 0])
    _fd_check(pool, Z, rng)
    assert not cls.token.decay and not pos.embedding.decay


# --------------------------------------------------------------------------------------------------
# attention against loops written another way


def _loop_attention(X, Wqkv, bqkv, Wo, bo, heads):
    """Multi-head self-attention with explicit loops: per sequence, token, head, query and key."""
    B, T, d = X.shape
    dh = d // heads
    QKV = np.zeros((B, T, 3 * d))
    for b in range(B):
        for t in range(T):
            for r in range(3 * d):
                QKV[b, t, r] = sum(Wqkv[r, c] * X[b, t, c] for c in range(d)) + bqkv[r]
    O = np.zeros((B, T, d))
    for b in range(B):
        for j in range(heads):
            cols = range(j * dh, (j + 1) * dh)
            for q in range(T):
                scores = [sum(QKV[b, q, c] * QKV[b, k, d + c] for c in cols) / math.sqrt(dh) for k in range(T)]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for c in cols:
                    O[b, q, c] = sum(w * QKV[b, k, 2 * d + c] for k, w in enumerate(weights)) / total
    return np.einsum("btc,oc->bto", O, Wo) + bo


@FEW
@given(B=st.integers(1, 2), T=st.integers(1, 4), heads=st.integers(1, 3), dh=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_attention_matches_the_loop_version(B, T, heads, dh, seed):
    rng = np.random.default_rng(seed)
    d = heads * dh
    attn = _attention(rng, d, heads)
    X = rng.standard_normal((B, T, d)) * 2
    want = _loop_attention(X, attn.qkv.weight.value, attn.qkv.bias.value, attn.out.weight.value,
                           attn.out.bias.value, heads)
    np.testing.assert_allclose(attn.forward(X), want, rtol=1e-10, atol=1e-10)


def test_attention_backward_is_the_softmax_jacobian_product():
    """The closed-form backward of the bare attention against a Jacobian built column by column."""
    rng = np.random.default_rng(4)
    Q, K, V = (rng.standard_normal((1, 2, 3, 2)) for _ in range(3))
    dO = rng.standard_normal((1, 2, 3, 2))
    dQ, dK, dV = attention_backward(dO, Q, K, V, attention_forward(Q, K, V)[1])
    for got, M in ((dQ, Q), (dK, K), (dV, V)):
        for index in np.ndindex(M.shape):
            fd = _central(lambda: float(np.sum(attention_forward(Q, K, V)[0] * dO)), M, index)
            assert abs(fd - got[index]) < 1e-8


def test_attention_matches_pytorch_multihead_attention():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    d, heads = 6, 3
    attn = _attention(rng, d, heads)
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(attn.qkv.weight.value))  # rows: queries, keys, values
        mha.in_proj_bias.copy_(torch.from_numpy(attn.qkv.bias.value))
        mha.out_proj.weight.copy_(torch.from_numpy(attn.out.weight.value))
        mha.out_proj.bias.copy_(torch.from_numpy(attn.out.bias.value))
    X = rng.standard_normal((2, 4, d))
    Xt = torch.from_numpy(X).requires_grad_(True)
    Yt, _ = mha(Xt, Xt, Xt, need_weights=False)
    R = rng.standard_normal(Yt.shape)
    (Yt * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(attn.forward(X), Yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(attn.backward(R), Xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(attn.qkv.weight.grad, mha.in_proj_weight.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(attn.out.weight.grad, mha.out_proj.weight.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_block_matches_pytorch_pre_norm_encoder_layer():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    d, heads = 4, 2
    block = _block(rng, d, heads)
    layer = torch.nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True, dtype=torch.float64)
    mha = layer.self_attn
    pairs = [(mha.in_proj_weight, block.attn.qkv.weight), (mha.in_proj_bias, block.attn.qkv.bias),
             (mha.out_proj.weight, block.attn.out.weight), (mha.out_proj.bias, block.attn.out.bias),
             (layer.linear1.weight, block.fc1.weight), (layer.linear1.bias, block.fc1.bias),
             (layer.linear2.weight, block.fc2.weight), (layer.linear2.bias, block.fc2.bias),
             (layer.norm1.weight, block.ln1.weight), (layer.norm1.bias, block.ln1.bias),
             (layer.norm2.weight, block.ln2.weight), (layer.norm2.bias, block.ln2.bias)]
    with torch.no_grad():
        for t, p in pairs:
            t.copy_(torch.from_numpy(p.value))
    layer.eval()  # no dropout
    X = rng.standard_normal((2, 3, d))
    Xt = torch.from_numpy(X).requires_grad_(True)
    Yt = layer(Xt)
    R = rng.standard_normal(Yt.shape)
    (Yt * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(block.forward(X), Yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(block.backward(R), Xt.grad.numpy(), rtol=1e-9, atol=1e-9)
    for t, p in pairs:
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-9, atol=1e-9, err_msg=p.name)


# --------------------------------------------------------------------------------------------------
# sparse layers against their dense twins (float32 against float64)


def _sparse(fmt, backend, rng, shape, name, density=0.5):
    W = random_layer_with_budget(fmt, shape, layer_budget(shape, 1 - density), rng)
    return SparseLinear(W, bias=(0.1 * rng.standard_normal(shape[0])).astype(np.float32), backend=backend, name=name)


def _twin_of(layer):
    """The dense float64 Dense of a SparseLinear (or a copy of a Dense)."""
    weight = dense_of(layer.W) if isinstance(layer, SparseLinear) else layer.weight.value
    return _f64(Dense(weight, layer.bias.value, name=layer.name))


def _close(got, want, what=""):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * (1 + np.abs(want).max()), err_msg=what)


def _check_grads(sparse_linears, twins):
    for lin in sparse_linears:
        twin = twins[lin.name]
        if isinstance(lin, SparseLinear):
            rows, cols = positions_of(lin.W)
            _close(lin.weight.grad, twin.weight.grad[rows, cols], lin.name)
        else:
            _close(lin.weight.grad, twin.weight.grad, lin.name)
        _close(lin.bias.grad, twin.bias.grad, lin.name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_token_linear_and_attention_match_their_dense_twins(fmt, backend):
    rng = np.random.default_rng(7)
    B, T, d, heads = 3, 5, 8, 2
    layer = TokenLinear(_sparse(fmt, backend, rng, (6, d), "t"))
    twin = TokenLinear(_twin_of(layer.linear))
    X = rng.standard_normal((B, T, d)).astype(np.float32)
    R = rng.standard_normal((B, T, 6)).astype(np.float32)
    _close(layer.forward(X), twin.forward(X.astype(np.float64)))
    _close(layer.backward(R), twin.backward(R.astype(np.float64)))
    _check_grads([layer.linear], {"t": twin.linear})
    saved_X, saved_dY = layer.linear.saved_batch()  # what the DST growth kernels read: the tokens as rows
    assert saved_X.shape == (B * T, d) and saved_dY.shape == (B * T, 6)
    np.testing.assert_array_equal(saved_X, X.reshape(B * T, d))
    np.testing.assert_array_equal(saved_dY, R.reshape(B * T, 6))

    attn = MultiHeadSelfAttention(d, heads, _sparse(fmt, backend, rng, (3 * d, d), "qkv"),
                                  _sparse(fmt, backend, rng, (d, d), "proj"))
    twin = MultiHeadSelfAttention(d, heads, _twin_of(attn.qkv.linear), _twin_of(attn.out.linear))
    X = rng.standard_normal((B, T, d)).astype(np.float32)
    R = rng.standard_normal((B, T, d)).astype(np.float32)
    Y = attn.forward(X)
    assert Y.dtype == np.float32
    _close(Y, twin.forward(X.astype(np.float64)))
    _close(attn.backward(R), twin.backward(R.astype(np.float64)))
    _check_grads([attn.qkv.linear, attn.out.linear], {"qkv": twin.qkv.linear, "proj": twin.out.linear})


def _dense_twin_network(net: Network) -> Network:
    """The same ViT with every weight layer dense (dense_of the sparse ones), every parameter float64."""
    a = net.architecture
    twin = build_model(a["model"], a["input_shape"], a["n_classes"], sparsity=0, rng=0, backend="reference",
                       **a["options"])
    mine = {lin.name: lin for lin in net.linears}
    for lin in twin.linears:
        src = mine[lin.name]
        lin.weight.value[...] = dense_of(src.W) if isinstance(src, SparseLinear) else src.weight.value
    others = {p.name: p for p in net.parameters()}
    owned = {id(p) for lin in twin.linears for p in lin.parameters()}
    for p in twin.parameters():
        if id(p) not in owned or p.name.endswith(".bias"):
            p.value[...] = others[p.name].value
    return _f64(twin)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_vit_matches_its_dense_twin(fmt, backend):
    rng = np.random.default_rng(8)
    net = vit_tiny((2, 8, 8), 5, fmt=fmt, sparsity=0.6, rng=rng, backend=backend, dense_layers=(), patch=2,
                   **SMALL)
    assert {r["kind"] for r in net.describe()} == {"sparse"} and net.linears[-1] is net.sparse_layers()[-1]
    for p in net.parameters():  # LayerNorm, class token and biases away from their initial values
        if not p.name.endswith(".values"):
            p.value[...] += (0.2 * rng.standard_normal(p.value.shape)).astype(np.float32)
    twin = _dense_twin_network(net)
    for layer in (net, twin):
        layer.weight_layers[0].needs_input_grad = True  # compare the input gradients too
    X = rng.standard_normal((3, 128)).astype(np.float32)
    R = rng.standard_normal((3, 5)).astype(np.float32)
    Y = net.forward(X)
    assert Y.dtype == np.float32
    _close(Y, twin.forward(X.astype(np.float64)), "logits")
    _close(net.backward(R), twin.backward(R.astype(np.float64)), "input gradient")
    _check_grads(net.linears, {lin.name: lin for lin in twin.linears})
    twin_params = {p.name: p for p in twin.parameters()}
    for p in net.parameters():  # LayerNorms, class token, position embeddings, biases
        if not p.name.endswith(".values"):
            _close(p.grad, twin_params[p.name].grad, p.name)


def test_whole_dense_vit_backward_matches_finite_differences_float64():
    rng = np.random.default_rng(9)
    net = _randomise(_f64(vit_tiny((1, 4, 4), 3, sparsity=0, rng=rng, backend="reference", patch=2, width=4,
                                   depth=2, heads=2)), rng)
    net.weight_layers[0].needs_input_grad = True
    X = rng.standard_normal((2, 16))
    checked = _fd_check(net, X, rng, n=4)
    assert checked == sum(min(4, p.value.size) for p in net.parameters()) + 8 and len(net.parameters()) == 32


# --------------------------------------------------------------------------------------------------
# the model registry


@pytest.mark.parametrize("data", list(SHAPES))
def test_vit_builds_and_runs_on_every_input_shape_and_format(data):
    shape = SHAPES[data]
    patch = {"digits": 4, "mnist": 7, "cifar": 4}[data]
    arch = {"width": 16, "depth": 1, "heads": 2}
    shapes = weight_shapes("vit-tiny", shape, 10, **arch)
    T = (shape[1] // patch) * (shape[2] // patch)
    assert shapes == [("embed", (16, shape[0] * patch * patch), None), ("block0.qkv", (48, 16), None),
                      ("block0.proj", (16, 16), None), ("block0.fc1", (32, 16), None),
                      ("block0.fc2", (16, 32), None), ("head", (10, 16), None)]
    dense = default_dense_layers("vit-tiny", shape, 10, **arch)
    assert dense == ("embed", "head")
    budgets = named_budgets(shapes, 0.9, "erk", dense)
    X = np.random.default_rng(0).standard_normal((2, int(np.prod(shape)))).astype(np.float32)
    for fmt in FORMATS:
        net = MODELS["vit-tiny"](shape, 10, fmt=fmt, budgets=budgets, rng=0, backend="cpu", **arch)
        rows = net.describe()
        assert [(r["name"], tuple(r["shape"])) for r in rows] == [(n, s) for n, s, _ in shapes]
        assert [r["kind"] for r in rows] == ["dense", "sparse", "sparse", "sparse", "sparse", "dense"]
        assert [r["activation"] for r in rows] == ["none", "none", "none", "gelu", "none", "none"]
        for layer in net.sparse_layers():
            W = layer.W
            stored = W.nnz if fmt == "csr" else W.values.shape[1] if fmt == "condensed" else W.K
            assert stored == structure_count(fmt, layer.shape, budgets[layer.name])
        assert net.architecture["options"] == {"patch": patch, "width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2}
        pos = next(p for p in net.parameters() if p.name == "pos_embed")
        assert pos.value.shape == (T + 1, 16)
        logits = net.forward(X)
        assert logits.shape == (2, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
        assert net.backward(np.ones_like(logits) / 20) is None  # the embedding skips its input gradient
        assert all(np.isfinite(p.grad).all() and np.any(p.grad != 0) for p in net.parameters())


def test_vit_layers_and_parameters_are_named_for_checkpoints():
    net = vit_tiny((1, 8, 8), 10, fmt="condensed", rng=0, backend="reference", width=16, depth=2, heads=2)
    names = [p.name for p in net.parameters()]
    assert len(names) == len(set(names))
    for name in ("cls_token", "pos_embed", "block0.ln1.weight", "block1.ln2.bias", "ln.weight", "ln.bias",
                 "embed.weight", "head.weight", "block1.qkv.values", "block0.fc2.bias"):
        assert name in names
    assert [layer.name for layer in net.weight_layers] == [n for n, _, _ in weight_shapes("vit-tiny", (1, 8, 8), 10,
                                                                                          width=16, depth=2, heads=2)]
    assert all(isinstance(layer, (TokenLinear, PatchEmbedding)) for layer in net.weight_layers[:-1])
    assert net.sparse_layers() == [layer.linear for layer in net.weight_layers[1:-1]]
    assert isinstance(net.linears[0], Dense) and isinstance(net.linears[-1], Dense)
    decay = {p.name: p.decay for p in net.parameters()}
    assert not decay["cls_token"] and not decay["pos_embed"] and not decay["ln.weight"] and decay["head.weight"]
    with pytest.raises(ModelError, match="no weight layer named 'fc0'"):
        vit_tiny((1, 8, 8), 10, dense_layers=("fc0",), width=8, heads=2)
    uniform = named_budgets(weight_shapes("vit-tiny", (1, 28, 28), 10), 0.9, "uniform", ("embed", "head"))
    assert uniform["block0.qkv"] == layer_budget((192, 64), 0.9) and uniform["embed"] == 64 * 49


@pytest.mark.parametrize("shape, patch", [((1, 8, 8), 3), ((3, 32, 32), 5), ((1, 28, 28), 8), ((1, 10, 12), None)])
def test_a_patch_that_does_not_fit_is_refused_with_the_shape(shape, patch):
    for call in (lambda: vit_tiny(shape, 10, patch=patch, rng=0), lambda: weight_shapes("vit-tiny", shape, 10,
                                                                                        patch=patch)):
        with pytest.raises(PatchSizeError, match=f"vit-tiny.*{tuple(shape)}".replace("(", "\\(").replace(")", "\\)")):
            call()
    assert issubclass(PatchSizeError, InputShapeError) and issubclass(PatchSizeError, ModelError)
    assert weight_shapes("vit-tiny", (1, 10, 12), 10, patch=2)[0] == ("embed", (64, 4), None)


def test_other_bad_options_are_refused():
    with pytest.raises(InputShapeError, match="multiple of heads"):
        vit_tiny((1, 8, 8), 10, width=10, heads=4)
    with pytest.raises(InputShapeError, match="depth"):
        vit_tiny((1, 8, 8), 10, depth=0)
    with pytest.raises(InputShapeError, match="\\(C, H, W\\)"):
        vit_tiny((64,), 10)
    with pytest.raises(ShapeError, match="3d, d"):
        MultiHeadSelfAttention(4, 2, Dense(np.zeros((8, 4))), Dense(np.zeros((4, 4))))
    with pytest.raises(ShapeError, match="divisible"):
        MultiHeadSelfAttention(5, 2, Dense(np.zeros((15, 5))), Dense(np.zeros((5, 5))))


def test_host_only_tools_refuse_a_device_backend_and_networks_move_between_host_backends():
    """The layers run on every backend (cuda: tests/test_cuda_transformer.py); check_token_backend is the
    refusal of the tools that read a model on the host while it trains (bench train --model vit-tiny)."""
    with pytest.raises(TransformerBackendError, match="reference and cpu backends only") as info:
        check_token_backend(STANDIN_CUDA, "bench train --model vit-tiny")
    assert isinstance(info.value, PureriglError) and isinstance(info.value, ValueError)
    assert check_token_backend("cpu").name == "cpu"
    net = vit_tiny((1, 8, 8), 10, rng=0, backend="cpu", width=16, heads=2, depth=1)
    assert net.backend.name == "cpu" and all(layer.backend.name == "cpu" for layer in net.leaves())
    X = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    before = net.predict(X)
    net.set_backend("reference")
    assert all(layer.backend.name == "reference" for layer in net.leaves() if hasattr(layer, "backend"))
    np.testing.assert_allclose(net.predict(X), before, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# model files and checkpoints


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_file_round_trip(fmt, tmp_path):
    rng = np.random.default_rng(10)
    net = vit_tiny((1, 8, 8), 10, fmt=fmt, sparsity=0.8, rng=rng, backend="cpu", **SMALL)
    for p in net.parameters():  # every parameter away from its initial value, so that each one must be saved
        p.value[...] += (0.1 * rng.standard_normal(p.value.shape)).astype(np.float32)
    save_model(tmp_path / "m.npz", net, dataset="digits")
    loaded, meta = load_model(tmp_path / "m.npz", backend="reference")
    assert meta["network"] == net.architecture and meta["network"]["model"] == "vit-tiny"
    X = rng.standard_normal((7, 64)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(X), net.predict(X), rtol=1e-5, atol=1e-5)  # cpu vs reference
    again, _ = load_model(tmp_path / "m.npz", backend="cpu")
    np.testing.assert_array_equal(again.predict(X), net.predict(X))
    assert loaded.describe() == net.describe()
    saved = {p.name: p.host for p in loaded.parameters()}
    for p in net.parameters():
        np.testing.assert_array_equal(saved[p.name], p.host, err_msg=p.name)


def _digits(n_train=None, n_test=None):
    full = load_dataset("digits", None, seed=0)
    if n_train is None:
        return full
    return dataclasses.replace(full, x_train=full.x_train[:n_train], y_train=full.y_train[:n_train],
                               x_test=full.x_test[:n_test], y_test=full.y_test[:n_test])


def _vit_trainer(data, method, epochs=2, **arch):
    shape = (1, 8, 8)
    arch = {"width": 32, "depth": 2, **arch}
    fmt = resolve_format(method, None)
    budgets = named_budgets(weight_shapes("vit-tiny", shape, 10, **arch), 0.9, "erk",
                            default_dense_layers("vit-tiny", shape, 10, **arch))
    model = vit_tiny(shape, 10, fmt=fmt, budgets=budgets, rng=np.random.default_rng(0), backend="reference", **arch)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, optimizer="adamw", weight_decay=0.01, seed=0)
    steps = epochs * -(-data.x_train.shape[0] // config.batch_size)
    schedule = UpdateSchedule.from_fraction(steps, delta_t=10, alpha=0.3, t_end=0.75)
    sparse_budgets = {layer.name: budgets[layer.name] for layer in model.sparse_layers()}
    updater = DSTUpdater(make_method(method, fmt), schedule, sparse_budgets, seed=0)
    return Trainer(model, data, config, topology=updater), fmt, budgets


def test_a_vit_resumes_exactly_from_a_training_checkpoint(tmp_path):
    data = _digits(256, 64)
    straight, _, _ = _vit_trainer(data, "srigl", width=16)
    straight.fit()
    first, _, _ = _vit_trainer(data, "srigl", width=16)
    first.warm_up()
    first.topology.begin(first.model)
    first.run_epoch()
    save_training_checkpoint(tmp_path / "ckpt.npz", first)
    resumed, _, _ = _vit_trainer(data, "srigl", width=16)
    load_training_state(tmp_path / "ckpt.npz", resumed)
    resumed.fit()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        np.testing.assert_array_equal(p.host, q.host, err_msg=p.name)
    assert straight.history[-1]["test_loss"] == resumed.history[-1]["test_loss"]


# --------------------------------------------------------------------------------------------------
# training with the project's Trainer and DSTUpdater


@pytest.fixture(scope="module")
def digits():
    return _digits()


@pytest.mark.parametrize("method", ["static", "rigl", "srigl", "set", "gse", "diag-rigl"])
def test_vit_trains_on_digits_with_every_method(method, digits):
    assert digits.n_features == 64
    trainer, fmt, budgets = _vit_trainer(digits, method)
    model, updater = trainer.model, trainer.topology
    assert {layer.name for layer in model.sparse_layers()} == {f"block{i}.{p}" for i in range(2)
                                                               for p in ("qkv", "proj", "fc1", "fc2")}
    before = evaluate(model, digits.x_test, digits.y_test)["loss"]
    history = trainer.fit()
    assert updater.n_updates == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["test_loss"] < 0.6 * before
    assert history[-1]["test_accuracy"] > 0.5
    for layer in model.sparse_layers():
        check_budget_invariant(layer, fmt, budgets[layer.name])
    changed = {row["layer"]: row["changed"] for row in history[0]["layers"]}
    assert len(changed) == 8
    if method == "static":
        assert set(changed.values()) == {0.0}
    else:
        assert all(v > 0 for v in changed.values()), changed


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_token_linear_runs_feature_major_from_four_rows(fmt):
    """From 4 token rows a sparse TokenLinear calls the feature-major products (no transposes inside
    them), below that the row-layout ones; both agree with the dense float64 twin."""
    rng = np.random.default_rng(11)
    for B, T, expect_fm in ((1, 3, False), (1, 4, True), (2, 5, True)):
        layer = TokenLinear(_sparse(fmt, "cpu", rng, (6, 8), "t"))
        twin = TokenLinear(_twin_of(layer.linear))
        X = rng.standard_normal((B, T, 8)).astype(np.float32)
        R = rng.standard_normal((B, T, 6)).astype(np.float32)
        _close(layer.forward(X), twin.forward(X.astype(np.float64)))
        assert layer._feature_major is expect_fm and layer.linear._feature_major is expect_fm
        _close(layer.backward(R), twin.backward(R.astype(np.float64)))
        _check_grads([layer.linear], {"t": twin.linear})
    dense = TokenLinear(_dense(rng, 6, 8, "d"))
    dense.forward(rng.standard_normal((2, 5, 8)).astype(np.float32))
    assert dense._feature_major is False  # a Dense layer is BLAS in the row layout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_block_runs_feature_major_between_its_sparse_projections(fmt, backend, monkeypatch):
    """With sparse projections (from 4 token rows, host backends) the block keeps fc1's output, the GELU
    and fc2's input feature-major, and the attention reads and writes its heads feature-major: 8
    transposes a step instead of 16, and the same numbers as the per-layer path (all four projections
    in rows: FM_MIN_ROWS out of reach) to float32 rounding."""
    import purerigl.nn.attention as attention_module

    rng = np.random.default_rng(21)
    d, heads, B, T = 8, 2, 2, 5

    def build():
        r = np.random.default_rng(5)
        attn = MultiHeadSelfAttention(d, heads, _sparse(fmt, backend, r, (3 * d, d), "qkv"),
                                      _sparse(fmt, backend, r, (d, d), "proj"))
        return TransformerBlock(attn, _sparse(fmt, backend, r, (2 * d, d), "fc1"),
                                _sparse(fmt, backend, r, (d, 2 * d), "fc2"), backend=backend)

    X = rng.standard_normal((B, T, d)).astype(np.float32)
    R = rng.standard_normal((B, T, d)).astype(np.float32)
    block = build()
    module = block.backend.module  # the backend's operations are its module's functions
    calls = []
    monkeypatch.setattr(module, "transpose", lambda A, _t=module.transpose: calls.append(A.shape) or _t(A))
    Y, dX = block.forward(X), block.backward(R)
    assert block._mlp_fm and block.attn._fm and len(calls) == 8, calls  # the attention 2 + 2, the MLP 2 + 2
    monkeypatch.undo()

    monkeypatch.setattr(attention_module, "FM_MIN_ROWS", 10**9)
    rows = build()
    Y_rows, dX_rows = rows.forward(X), rows.backward(R)
    assert not rows._mlp_fm and not rows.attn._fm and not rows.fc1._feature_major
    _close(Y, Y_rows, "block output")
    _close(dX, dX_rows, "input gradient")
    for mine, theirs in zip(block.parameters(), rows.parameters()):
        _close(mine.grad, theirs.grad, mine.name)


def test_block_mlp_with_a_dense_layer_stays_per_layer_and_forward_fm_refuses():
    """One dense MLP layer: the per-layer path (a Dense is BLAS in rows); TokenLinear.forward_fm refuses
    a Dense, too few tokens and a wrong width, with the shapes in the message."""
    rng = np.random.default_rng(2)
    d = 8
    attn = MultiHeadSelfAttention(d, 2, _sparse("csr", "cpu", rng, (3 * d, d), "qkv"),
                                  _sparse("csr", "cpu", rng, (d, d), "proj"))
    block = TransformerBlock(attn, _sparse("csr", "cpu", rng, (2 * d, d), "fc1"), _dense(rng, d, 2 * d, "fc2"),
                             backend="cpu")
    block.forward(rng.standard_normal((2, 5, d)).astype(np.float32))
    assert not block._mlp_fm and block.fc1._feature_major and not block.fc2._feature_major
    with pytest.raises(ShapeError, match="forward_fm of 'fc2'"):
        block.fc2.forward_fm(np.zeros((2 * d, 10), np.float32), (2, 5))
    with pytest.raises(ShapeError, match=r"got \(8, 3\)"):
        block.fc1.forward_fm(np.zeros((d, 3), np.float32), (1, 3))
    with pytest.raises(ShapeError, match=r"got \(7, 10\)"):
        block.fc1.forward_fm(np.zeros((7, 10), np.float32), (2, 5))


@pytest.mark.parametrize("B, T, heads, dh", [(1, 1, 1, 1), (2, 5, 2, 3), (3, 4, 4, 2)])
def test_feature_major_self_attention_is_the_row_layout_one_transposed(B, T, heads, dh):
    """The host helpers of the feature-major attention against the row-layout specification (float64):
    heads split from and merged into (width, B*T) are the row layout's, transposed."""
    from purerigl.kernels import host_transformer as H

    rng = np.random.default_rng(B * 100 + T)
    d = heads * dh
    X = rng.standard_normal((B, T, d))
    XT = np.ascontiguousarray(X.reshape(B * T, d).T)  # (d, B*T)
    np.testing.assert_array_equal(H.split_heads_fm(XT, heads, B, T), H.split_heads(X, heads))
    np.testing.assert_array_equal(H.merge_heads_fm(H.split_heads(X, heads)), XT)
    QKV = rng.standard_normal((B, T, 3 * d))
    QKVT = np.ascontiguousarray(QKV.reshape(B * T, 3 * d).T)
    O, A = H.self_attention_forward(QKV, heads)
    OT, AT = H.self_attention_forward_fm(QKVT, heads, B, T)
    np.testing.assert_allclose(OT, O.reshape(B * T, d).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(AT, A, rtol=1e-12, atol=1e-12)
    dO = rng.standard_normal((B, T, d))
    dOT = np.ascontiguousarray(dO.reshape(B * T, d).T)
    np.testing.assert_allclose(H.self_attention_backward_fm(dOT, QKVT, A, heads, B, T),
                               H.self_attention_backward(dO, QKV, A, heads).reshape(B * T, 3 * d).T,
                               rtol=1e-12, atol=1e-12)
