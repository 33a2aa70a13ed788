"""Networks (:mod:`purerigl.nn.network`), the built-in models (:mod:`purerigl.nn.models`), ERK budgets
for convolutions (:mod:`purerigl.dst.distribution`) and short DST training runs of a CNN.

- A whole small network (Reshape, convolutions, BatchNorm2d in both modes, ReLU, max pooling, two
  residual blocks, one with a projection shortcut, Flatten, two linear layers) against central finite
  differences in float64 (step 1e-6). Its linear layers hold float32 weights (Dense computes in the
  input's dtype but stores float32), so their entries are probed with the exactly representable
  float32 steps actually taken; the loss is piecewise linear in them (only ReLUs follow), so the
  central difference is exact unless a mask flips.
- The same network with every weight layer sparse (every format, both host backends, float32)
  against its dense float64 twin, built from the sparse matrices by ``oracles.dense_of``: outputs,
  input gradient, and every sparse weight gradient read at the stored positions
  (``oracles.positions_of``). Tolerance 1e-4 relative to each quantity's scale (float32 kernels).
- Residual alone (hypothesis: channels, sizes, stride, identity or projection) by finite differences.
- Every built-in model on the digits, MNIST and CIFAR-10 shapes, every format: forward / backward
  shapes, ``weight_shapes`` = ``describe``, structure counts from the budgets; refusals.
- ERK / ER for convolutions: a hand computation of a conv + linear pair, capping, exact totals
  (hypothesis), exclusion of the dense layers as RigL's ``custom_sparsity_map``.
- LeNet-5 on the embedded digits, 2 epochs with every DST method at 90% sparsity (its default format,
  ERK budgets): the loss falls and each sparse layer keeps its method's invariant.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invariants import check_budget_invariant
from oracles import dense_of, positions_of

from purerigl.data import load_dataset
from purerigl.dst import UpdateSchedule, make_method, resolve_format
from purerigl.dst.distribution import DistributionError, layer_budgets, layer_densities, named_budgets
from purerigl.dst.updater import DSTUpdater
from purerigl.errors import PureriglError
from purerigl.formats.budget import layer_budget, random_layer_with_budget, structure_count
from purerigl.nn import Dense, ModelError, ReLU, SparseLinear
from purerigl.nn.conv import Conv2d, SparseConv2d
from purerigl.nn.models import (
    MODELS,
    InputShapeError,
    default_dense_layers,
    lenet5,
    resnet20,
    vgg_small,
    weight_shapes,
)
from purerigl.nn.network import Network, NetworkError, Reshape, Residual
from purerigl.nn.norm import BatchNorm2d
from purerigl.nn.pool import Flatten, GlobalAvgPool2d, MaxPool2d
from purerigl.training.loop import Trainer, TrainConfig, evaluate

FORMATS = ["condensed", "diagonal", "csr"]
BACKENDS = ["reference", "cpu"]
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
FEW = settings(max_examples=15)


# --------------------------------------------------------------------------------------------------
# a small network, sparse, and its dense float64 twin


def _sparse_net(fmt: str, backend: str, rng) -> Network:
    """(2, 8, 8) -> 5 logits; every weight layer sparse at half density."""

    def conv(name, c_in, c_out, k, stride=1, padding=0):
        shape = (c_out, c_in * k * k)
        W = random_layer_with_budget(fmt, shape, layer_budget(shape, 0.5), rng)
        W.values[...] = W.values * 0.7
        return SparseConv2d(W, c_in, k, stride, padding, bias=rng.standard_normal(c_out).astype(np.float32) * 0.1,
                            backend=backend, name=name)

    def linear(name, n_in, n_out):
        W = random_layer_with_budget(fmt, (n_out, n_in), layer_budget((n_out, n_in), 0.5), rng)
        return SparseLinear(W, bias=rng.standard_normal(n_out).astype(np.float32) * 0.1, backend=backend, name=name)

    def bn(name, c):
        layer = BatchNorm2d(c, name=name, backend=backend)
        layer.weight.value[...] = 1 + 0.2 * rng.standard_normal(c)
        layer.bias.value[...] = 0.1 * rng.standard_normal(c)
        return layer

    layers = [
        Reshape((2, 8, 8)),
        conv("conv0", 2, 4, 3, padding=1), bn("bn0", 4), ReLU(backend), MaxPool2d(2, backend=backend),
        Residual([conv("conv1", 4, 4, 3, padding=1), bn("bn1", 4), ReLU(backend), conv("conv2", 4, 4, 3, padding=1),
                  bn("bn2", 4)]),
        ReLU(backend),
        Residual([conv("conv3", 4, 6, 3, stride=2, padding=1), bn("bn3", 6), ReLU(backend),
                  conv("conv4", 6, 6, 3, padding=1), bn("bn4", 6)],
                 [conv("conv5", 4, 6, 1, stride=2), bn("bn5", 6)]),
        ReLU(backend), Flatten(backend=backend),
        linear("fc0", 24, 7), ReLU(backend), linear("fc1", 7, 5),
    ]
    return Network(layers, (2, 8, 8), needs_input_grad=True)


def _twin(layer):
    """The dense float64 twin of a layer of :func:`_sparse_net` (weights read by ``dense_of``)."""
    if isinstance(layer, Residual):
        return Residual([_twin(x) for x in layer.body], None if layer.shortcut is None else
                        [_twin(x) for x in layer.shortcut])
    if isinstance(layer, SparseConv2d):
        weight = dense_of(layer.W).reshape(layer.c_out, layer.c_in, layer.kh, layer.kw)  # (c_out, c_in, kh, kw)
        return Conv2d(weight, layer.bias.value, layer.stride, layer.padding, name=layer.name, dtype=np.float64)
    if isinstance(layer, SparseLinear):
        return Dense(dense_of(layer.W), layer.bias.value, name=layer.name)
    if isinstance(layer, BatchNorm2d):
        twin = BatchNorm2d(layer.channels, name=layer.name, dtype=np.float64)
        twin.weight.value[...], twin.bias.value[...] = layer.weight.value, layer.bias.value
        return twin
    if isinstance(layer, MaxPool2d):
        return MaxPool2d(layer.kernel)
    if isinstance(layer, Reshape):
        return Reshape(layer.shape)
    return type(layer)()  # ReLU, Flatten


def _dense_twin(net: Network) -> Network:
    return Network([_twin(layer) for layer in net.layers], net.input_shape, needs_input_grad=True)


def _readout(net, X, R) -> float:
    return float(np.sum(net.forward(X) * R))


def _central(net, X, R, array, index, h):
    """(L(a + h) - L(a - h)) / (the step actually taken), a probing array entry in place."""
    old = array[index]
    up, down = array.dtype.type(old + h), array.dtype.type(old - h)
    array[index] = up
    plus = _readout(net, X, R)
    array[index] = down
    minus = _readout(net, X, R)
    array[index] = old
    return (plus - minus) / (float(up) - float(down))


def _probe(rng, shape, n=6):
    flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def _fd_check(net, X, R, rng, *, n=6):
    """Every parameter (``n`` probes each) and the input against central differences."""
    net.forward(X)
    dX = net.backward(R)
    grads = {p.name: np.array(p.grad, dtype=np.float64) for p in net.parameters()}
    checked = 0
    for p in net.parameters():
        h = 1e-6 if p.value.dtype == np.float64 else 1e-3
        scale = 1.0 + np.abs(grads[p.name]).max()
        for index in _probe(rng, p.value.shape, n):
            fd = _central(net, X, R, p.value, index, h)
            assert abs(fd - grads[p.name][index]) <= 1e-5 * scale, (p.name, index, fd, grads[p.name][index])
            checked += 1
    scale = 1.0 + np.abs(dX).max()
    for index in _probe(rng, X.shape, 2 * n):
        fd = _central(net, X, R, X, index, 1e-6)
        assert abs(fd - dX[index]) <= 1e-5 * scale, ("input", index, fd, dX[index])
    return checked


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_network_backward_matches_finite_differences_float64(mode):
    rng = np.random.default_rng(3)
    net = _dense_twin(_sparse_net("csr", "reference", rng))
    X = rng.standard_normal((4, 2 * 8 * 8))  # float64 rows, reshaped by the network
    if mode == "eval":
        net.forward(X)  # running statistics away from (0, 1)
        net.eval()
    R = rng.standard_normal((4, 5))
    checked = _fd_check(net, X, R, rng)
    assert checked == sum(min(6, p.value.size) for p in net.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_network_matches_its_dense_twin(fmt, backend):
    rng = np.random.default_rng(11)
    net = _sparse_net(fmt, backend, rng)
    twin = _dense_twin(net)
    X = rng.standard_normal((4, 128)).astype(np.float32)
    R = rng.standard_normal((4, 5)).astype(np.float32)
    Y, Y64 = net.forward(X), twin.forward(X.astype(np.float64))
    assert Y.dtype == np.float32
    np.testing.assert_allclose(Y, Y64, rtol=0, atol=1e-4 * (1 + np.abs(Y64).max()))
    dX, dX64 = net.backward(R), twin.backward(R.astype(np.float64))
    np.testing.assert_allclose(dX, dX64, rtol=0, atol=1e-4 * (1 + np.abs(dX64).max()))
    twins = {layer.name: layer for layer in twin.weight_layers}
    for layer in net.weight_layers:
        rows, cols = positions_of(layer.W)
        dense_grad = twins[layer.name].weight.grad.reshape(layer.shape)  # (n_out, n_in) of the filter matrix
        want = dense_grad[rows, cols]
        np.testing.assert_allclose(layer.weight.grad, want, rtol=0, atol=1e-4 * (1 + np.abs(want).max()))
        np.testing.assert_allclose(layer.bias.grad, twins[layer.name].bias.grad, rtol=0,
                                   atol=1e-4 * (1 + np.abs(twins[layer.name].bias.grad).max()))


@FEW
@given(c=st.integers(1, 3), c_out=st.integers(1, 3), size=st.integers(2, 5), stride=st.sampled_from([1, 2]),
       batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_residual_backward_matches_finite_differences(c, c_out, size, stride, batch, seed):
    rng = np.random.default_rng(seed)
    project = stride != 1 or c_out != c
    body = [Conv2d.kaiming(c, c_out, 3, rng, stride=stride, padding=1, name="a", dtype=np.float64), ReLU(),
            Conv2d.kaiming(c_out, c_out, 3, rng, padding=1, name="b", dtype=np.float64)]
    shortcut = [Conv2d.kaiming(c, c_out, 1, rng, stride=stride, name="s", dtype=np.float64)] if project else None
    block = Residual(body, shortcut)
    X = rng.standard_normal((batch, c, size, size))
    Y = block.forward(X)
    assert Y.shape == (batch, c_out, *block.output_shape((c, size, size))[1:])
    R = rng.standard_normal(Y.shape)
    net = Network([block, Flatten()], (c, size, size), needs_input_grad=True)
    # the network's output is (B, c_out * Ho * Wo): a vector per sample, so the readout is the same
    Rf = R.reshape(batch, -1)  # (B, c_out*Ho*Wo)
    _fd_check(net, X, Rf, rng, n=3)


def test_residual_identity_adds_the_gradient_unchanged():
    rng = np.random.default_rng(0)
    conv = Conv2d.kaiming(2, 2, 3, rng, padding=1, name="a", dtype=np.float64)
    block = Residual([conv])
    X = rng.standard_normal((2, 2, 4, 4))
    dY = rng.standard_normal((2, 2, 4, 4))
    np.testing.assert_allclose(block.forward(X), conv.forward(X) + X)
    alone = conv.backward(dY)
    block.forward(X)
    np.testing.assert_allclose(block.backward(dY), alone + dY)


# --------------------------------------------------------------------------------------------------
# the Network interface


def test_network_exposes_the_mlp_interface():
    model = lenet5((1, 8, 8), 10, fmt="csr", rng=0, backend="reference")
    assert model.n_features == 64 and model.n_classes == 10 and model.input_shape == (1, 8, 8)
    names = [layer.name for layer in model.weight_layers]
    assert names == ["conv0", "conv1", "fc0", "fc1", "fc2"]
    conv1 = model.weight_layers[1]
    assert isinstance(conv1, SparseConv2d)
    assert model.sparse_layers() == [conv1.linear, model.weight_layers[2], model.weight_layers[3]]
    assert model.linears[1] is conv1.linear and model.linears[-1] is model.weight_layers[-1]
    assert isinstance(model.linears[0], Conv2d) and isinstance(model.linears[-1], Dense)  # dense by default
    assert model.weight_layers[0].needs_input_grad is False  # nobody reads the input gradient
    params = [p.name for p in model.parameters()]
    assert len(params) == len(set(params)) == 10 and "conv1.values" in params and "conv0.weight" in params
    rows = model.describe()
    assert [r["layer_type"] for r in rows] == ["conv", "conv", "linear", "linear", "linear"]
    assert [r["kind"] for r in rows] == ["dense", "sparse", "sparse", "sparse", "dense"]
    assert [r["activation"] for r in rows] == ["relu", "relu", "relu", "relu", "none"]
    assert rows[1]["shape"] == [16, 150] and rows[1]["kernel"] == [5, 5] and rows[1]["c_in"] == 6
    assert rows[1]["stride"] == 1 and rows[1]["padding"] == 2 and rows[1]["format"] == "csr"
    assert rows[1]["nnz"] == layer_budget((16, 150), 0.9) and rows[0]["density"] == 1.0
    X = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    logits = model.forward(X)
    assert logits.shape == (3, 10) and model.backward(np.ones_like(logits)) is None
    assert all(np.any(p.grad != 0) for p in model.parameters())
    np.testing.assert_allclose(model.predict(X, batch_size=2), logits, rtol=1e-5, atol=1e-5)  # no batch norm


def test_classifier_kept_sparse_is_the_output_layer_the_updater_sees():
    model = lenet5((1, 8, 8), 10, fmt="condensed", rng=0, dense_layers=(), backend="reference")
    assert model.sparse_layers()[-1] is model.linears[-1]
    assert model.sparse_layers()[0] is model.weight_layers[0].linear


def test_evaluation_mode_uses_and_keeps_the_running_statistics():
    model = vgg_small((1, 8, 8), 10, fmt="diagonal", rng=1, backend="reference")
    X = np.random.default_rng(1).standard_normal((6, 64)).astype(np.float32)
    model.forward(X)  # training mode: the running statistics move
    before = {k: v.copy() for k, v in model.buffers().items()}
    assert len(before) == 8 and not np.allclose(before["bn0.running_mean"], 0)
    logits = model.predict(X, batch_size=4)
    assert model.training and all(layer.training for layer in model.leaves() if isinstance(layer, BatchNorm2d))
    for key, value in model.buffers().items():
        np.testing.assert_array_equal(value, before[key])
    one_by_one = np.concatenate([model.predict(X[i:i + 1]) for i in range(6)])  # eval: no batch coupling
    np.testing.assert_allclose(one_by_one, logits, rtol=1e-5, atol=1e-5)
    with model.evaluating():
        np.testing.assert_allclose(model.forward(X), logits, rtol=1e-5, atol=1e-5)
    assert model.training
    model.eval()
    assert not model.training and not any(
        layer.training for layer in model.leaves() if isinstance(layer, BatchNorm2d))
    model.predict(X)
    assert not model.training  # predict restores the mode it found


def test_loop_evaluate_keeps_the_running_statistics():
    model = vgg_small((1, 8, 8), 10, rng=2, backend="reference")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 64)).astype(np.float32), rng.integers(0, 10, 5)
    model.forward(x)
    before = {k: v.copy() for k, v in model.buffers().items()}
    evaluate(model, x, y)
    assert all(np.array_equal(v, before[k]) for k, v in model.buffers().items())


def test_network_refuses_layers_that_do_not_fit():
    rng = np.random.default_rng(0)
    with pytest.raises(NetworkError, match="layer 1 \\(Dense 'b'\\)"):
        Network([Dense.kaiming((4, 6), rng, name="a"), Dense.kaiming((3, 5), rng, name="b")], (6,))
    with pytest.raises(NetworkError, match="named 'a'"):
        Network([Dense.kaiming((4, 6), rng, name="a"), Dense.kaiming((3, 4), rng, name="a")], (6,))
    with pytest.raises(NetworkError, match="shortcut"):
        Residual([Conv2d.kaiming(2, 3, 3, rng, padding=1, name="c")]).output_shape((2, 4, 4))
    with pytest.raises(NetworkError, match="vector of logits"):
        Network([Conv2d.kaiming(1, 2, 3, rng, name="c")], (1, 5, 5))
    with pytest.raises(NetworkError, match="weight layer"):
        Network([ReLU()], (3,))
    with pytest.raises(NetworkError, match="cannot take"):
        Network([Reshape((1, 2, 2)), MaxPool2d(3), Flatten(), Dense.kaiming((2, 1), rng, name="d")], (4,))
    assert issubclass(NetworkError, ModelError) and issubclass(NetworkError, PureriglError)


# --------------------------------------------------------------------------------------------------
# built-in models


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("data", list(SHAPES))
def test_builtin_models_build_and_run_on_every_format(model, data):
    shape = SHAPES[data]
    shapes = weight_shapes(model, shape, 10)
    dense = default_dense_layers(model, shape, 10)
    budgets = named_budgets(shapes, 0.9, "erk", dense)
    X = np.random.default_rng(0).standard_normal((2, int(np.prod(shape)))).astype(np.float32)
    for fmt in FORMATS:
        net = MODELS[model](shape, 10, fmt=fmt, budgets=budgets, rng=0, backend="reference")
        rows = net.describe()
        assert [(r["name"], tuple(r["shape"])) for r in rows] == [(n, s) for n, s, _ in shapes]
        assert [r["kernel"] if r["layer_type"] == "conv" else None for r in rows] == [
            None if k is None else list(k) for _, _, k in shapes]
        for r in rows:  # ERK may cap a layer at its whole size: dense too
            full = budgets[r["name"]] == r["shape"][0] * r["shape"][1]
            assert r["format"] == ("dense" if full else fmt) and full == (r["kind"] == "dense")
        for layer in net.sparse_layers():
            W = layer.W
            stored = W.nnz if fmt == "csr" else W.values.shape[1] if fmt == "condensed" else W.K
            assert stored == structure_count(fmt, layer.shape, budgets[layer.name])
        logits = net.forward(X)
        assert logits.shape == (2, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
        net.backward(np.ones_like(logits) / 20)
        assert all(np.isfinite(p.grad).all() for p in net.parameters())


def test_model_architectures():
    r = weight_shapes("resnet20", (3, 32, 32), 10)
    assert len(r) == 22 and sum(k == (1, 1) for _, _, k in r) == 2 and r[-1] == ("fc0", (10, 64), None)
    assert r[0] == ("conv0", (16, 27), (3, 3)) and ("conv9", (32, 16), (1, 1)) in r
    assert weight_shapes("lenet5", (1, 28, 28), 10)[2] == ("fc0", (120, 16 * 7 * 7), None)
    assert weight_shapes("lenet5", (1, 8, 8), 10)[2] == ("fc0", (120, 16 * 2 * 2), None)
    assert [s for _, s, _ in weight_shapes("vgg-small", (3, 32, 32), 7)] == [
        (32, 27), (32, 288), (64, 288), (64, 576), (7, 64)]
    net = resnet20((1, 8, 8), 10, sparsity=0, rng=0, backend="reference")
    assert net.sparse_layers() == [] and all(r["kind"] == "dense" for r in net.describe())
    assert sum(isinstance(layer, Residual) for layer in net.layers) == 9
    assert sum(isinstance(layer, BatchNorm2d) for layer in net.leaves()) == 21
    vgg = vgg_small((1, 8, 8), 3, rng=0, backend="reference", widths=(8, 16, 16))
    assert isinstance(vgg.layers[-2], GlobalAvgPool2d) and len(vgg.weight_layers) == 7
    a = vgg.architecture
    assert a == {"model": "vgg-small", "input_shape": [1, 8, 8], "n_classes": 3,
                 "options": {"widths": [8, 16, 16], "convs_per_block": 2}}
    again = MODELS[a["model"]](a["input_shape"], a["n_classes"], rng=0, backend="reference", **a["options"])
    assert again.describe() == vgg.describe()


@pytest.mark.parametrize("model, shape", [("lenet5", (1, 2, 2)), ("lenet5", (1, 3, 1)), ("vgg-small", (3, 3, 3)),
                                          ("vgg-small", (1, 1, 8))])
def test_inputs_too_small_are_refused_with_the_model_and_shape(model, shape):
    for call in (lambda: MODELS[model](shape, 10, rng=0), lambda: weight_shapes(model, shape, 10)):
        with pytest.raises(InputShapeError, match=f"{model}.*{tuple(shape)}".replace("(", "\\(").replace(")", "\\)")):
            call()
    assert issubclass(InputShapeError, ModelError)


def test_model_option_errors():
    with pytest.raises(InputShapeError, match="\\(C, H, W\\)"):
        lenet5((64,), 10)
    with pytest.raises(ModelError, match="unknown model"):
        weight_shapes("alexnet", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="no weight layer named 'conv9'"):
        lenet5((1, 8, 8), 10, dense_layers=("conv9",))
    with pytest.raises(ModelError, match="no entry for the sparse layer 'fc0'"):
        lenet5((1, 8, 8), 10, budgets={"conv1": 100})
    with pytest.raises(ModelError, match="unknown format"):
        vgg_small((1, 8, 8), 10, fmt="coo")
    with pytest.raises(ModelError, match="conv1"):  # condensed cannot hold fewer connections than rows
        lenet5((1, 8, 8), 10, budgets={"conv1": 3, "fc0": 500, "fc1": 500})


# --------------------------------------------------------------------------------------------------
# ERK / ER budgets for convolutions


def test_erk_conv_and_linear_hand_computed():
    # conv: c_in 3, c_out 8, 3x3: N = 216, p N = 3 + 8 + 3 + 3 = 17; linear (10, 32): N = 320, p N = 42.
    # s = 0.5: c = 108 + 160 = 268; eps = 268 / 59; n = 4556/59 = 77 + 13/59, 11256/59 = 190 + 46/59;
    # floors 267, the leftover 1 to the larger fraction (the linear layer).
    shapes, kernels = [(8, 27), (10, 32)], [(3, 3), None]
    assert layer_budgets(shapes, 0.5, "erk", kernels=kernels) == [77, 191]
    assert layer_densities(shapes, 0.5, "erk", kernels=kernels) == pytest.approx(
        [float(Fraction(4556, 59) / 216), float(Fraction(11256, 59) / 320)])
    # ER ignores the kernel: p N = (3 + 8) * 9 = 99 and 42; eps = 268 / 141;
    # 26532/141 = 188 + 24/141, 11256/141 = 79 + 117/141 -> [188, 80].
    assert layer_budgets(shapes, 0.5, "er", kernels=kernels) == [188, 80]
    # without kernels both layers are linear: (27 + 8) and (32 + 10) -> 268 * 35 / 77, 268 * 42 / 77
    assert layer_budgets(shapes, 0.5, "erk") == layer_budgets(shapes, 0.5, "er") == [122, 146]
    # a 1x1 convolution is a 4-d kernel for ERK (the + 1 + 1), not a linear layer
    assert layer_budgets([(8, 16), (10, 64)], 0.5, "erk", kernels=[(1, 1), None]) != \
        layer_budgets([(8, 16), (10, 64)], 0.5, "erk")


def test_erk_caps_a_small_convolution_at_dense():
    # conv 1 -> 4, 3x3: N = 36, p N = 11; linear (100, 400): N = 40000, p N = 500. s = 0.9: C = 4 + 4000.
    # eps = 4004 / 511; the conv's density 4004 * 11 / (511 * 36) = 2.39 > 1: capped, the rest re-solved.
    shapes, kernels = [(4, 9), (100, 400)], [(3, 3), None]
    assert layer_densities(shapes, 0.9, "erk", kernels=kernels) == [1.0, 3968 / 40000]
    assert layer_budgets(shapes, 0.9, "erk", kernels=kernels) == [36, 3968]


@FEW
@given(layers=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([None, 1, 3, 5])),
                       min_size=1, max_size=5),
       s=st.sampled_from([0.5, 0.8, 0.9, 0.95]), kind=st.sampled_from(["uniform", "erk", "er"]))
def test_conv_budgets_sum_exactly(layers, s, kind):
    shapes = [(c_out, c_in * (k or 1) ** 2) for c_out, c_in, k in layers]
    kernels = [None if k is None else (k, k) for _, _, k in layers]
    try:
        counts = layer_budgets(shapes, s, kind, kernels=kernels)
    except DistributionError as e:
        assert "0 connections" in str(e)
        return
    assert sum(counts) == sum(layer_budget(shape, s) for shape in shapes)
    assert all(1 <= n <= a * b for n, (a, b) in zip(counts, shapes))
    dens = layer_densities(shapes, s, kind, kernels=kernels)
    assert all(n == a * b for n, d, (a, b) in zip(counts, dens, shapes) if d == 1.0)


def test_named_budgets_exclude_the_dense_layers_as_rigl():
    shapes = weight_shapes("lenet5", (1, 28, 28), 10)
    dense = default_dense_layers("lenet5", (1, 28, 28), 10)
    assert dense == ("conv0", "fc2")
    sizes = {name: a * b for name, (a, b), _ in shapes}
    for kind in ("uniform", "erk", "er"):
        budgets = named_budgets(shapes, 0.9, kind, dense)
        assert budgets["conv0"] == sizes["conv0"] and budgets["fc2"] == sizes["fc2"]
        sparse = [(n, s) for n, s, _ in shapes if n not in dense]
        assert sum(budgets[n] for n, _ in sparse) == sum(layer_budget(s, 0.9) for _, s in sparse)
        inside = named_budgets(shapes, 0.9, kind, dense, dense_in_budget=True)
        assert sum(inside.values()) == sum(layer_budget(s, 0.9) for _, s, _ in shapes)
    assert named_budgets(shapes, 0.9, "uniform", dense)["conv1"] == layer_budget((16, 150), 0.9)
    with pytest.raises(DistributionError, match="conv7"):
        named_budgets(shapes, 0.9, "erk", ["conv7"])
    with pytest.raises(DistributionError, match="kernels\\[0\\]"):
        layer_budgets([(4, 10)], 0.5, "erk", kernels=[(3, 3)])


# --------------------------------------------------------------------------------------------------
# training with the project's Trainer and DSTUpdater


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, seed=0)


@pytest.mark.parametrize("method", ["static", "set", "rigl", "srigl", "gse", "diag-rigl"])
def test_lenet5_trains_on_digits_with_every_method(method, digits):
    shape = (1, 8, 8)
    assert digits.n_features == 64
    fmt = resolve_format(method, None)
    budgets = named_budgets(weight_shapes("lenet5", shape, 10), 0.9, "erk", default_dense_layers("lenet5", shape, 10))
    model = lenet5(shape, 10, fmt=fmt, budgets=budgets, rng=np.random.default_rng(0), backend="reference")
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=0)
    steps = config.epochs * -(-digits.x_train.shape[0] // config.batch_size)
    schedule = UpdateSchedule.from_fraction(steps, delta_t=10, alpha=0.3, t_end=0.75)
    sparse_budgets = {layer.name: budgets[layer.name] for layer in model.sparse_layers()}
    assert set(sparse_budgets) == {"conv1", "fc0", "fc1"}
    updater = DSTUpdater(make_method(method, fmt), schedule, sparse_budgets, seed=0)
    before = evaluate(model, digits.x_test, digits.y_test)["loss"]
    history = Trainer(model, digits, config, topology=updater).fit()
    assert updater.n_updates == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["test_loss"] < 0.8 * before
    assert history[-1]["test_accuracy"] > 0.5
    for layer in model.sparse_layers():
        check_budget_invariant(layer, fmt, budgets[layer.name])
    changed = {row["layer"]: row["changed"] for row in history[0]["layers"]}
    if method == "static":
        assert set(changed.values()) == {0.0}
    else:
        assert all(v > 0 for v in changed.values()), changed
