"""The dense PyTorch twins of the built-in CNNs (``purerigl.cli.bench._torch_twins``): same layers as
purerigl's plan, and after :func:`copy_from_network` the same logits (training and evaluation mode),
gradients and batch-normalisation running statistics, to float32 rounding."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from purerigl.cli.bench import _torch_twins as twins  # noqa: E402
from purerigl.nn import build_model, softmax_cross_entropy  # noqa: E402
from purerigl.nn.models import _plan  # noqa: E402
from purerigl.nn.plans import InputShapeError, _Conv, _Res, _Simple  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-5}
B, N_CLASSES = 3, 10
#: (model, input shape, purerigl backend)
CASES = [("lenet5", (1, 8, 8), "cpu"), ("vgg-small", (1, 8, 8), "cpu"), ("resnet20", (3, 8, 8), "cpu"),
         ("vgg-small", (1, 8, 8), "reference")]
IDS = [f"{m}-{be}" for m, _, be in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny shapes: one thread is fastest (and spares a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(actual, expected, what: str) -> None:
    """float64 comparison of float32 results."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), err_msg=what, **TOL)


def _data(shape, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, int(np.prod(shape)))).astype(np.float32)  # (B, C*H*W)
    return X, rng.integers(0, N_CLASSES, B)


@pytest.fixture(params=CASES, ids=IDS)
def pair(request):
    """(model, shape, dense purerigl network, its twin holding the same parameters)."""
    model, shape, backend = request.param
    net = build_model(model, shape, N_CLASSES, sparsity=0.0, rng=0, backend=backend)
    twin = twins.torch_twin(model, shape, N_CLASSES)
    twins.copy_from_network(net, twin)
    return model, shape, net, twin


def _last2(name: str) -> str:
    """'res3.body.conv1.weight' -> 'conv1.weight' (purerigl's parameter name)."""
    return ".".join(name.split(".")[-2:])


def _conv_before_bn(layers):
    """The plan's convolutions directly followed by a batch normalisation."""
    for spec, after in zip(layers, [*layers[1:], None]):
        if isinstance(spec, _Res):
            yield from _conv_before_bn(spec.body)
            yield from _conv_before_bn(spec.shortcut or [])
        elif isinstance(spec, _Conv) and isinstance(after, _Simple) and after.kind == "bn":
            yield spec


def _twin_buffers(twin) -> dict:
    return {_last2(k): v.detach().numpy() for k, v in twin.named_buffers() if "running" in k}


@pytest.mark.parametrize("model, shape", [(m, s) for m, s, be in CASES if be == "cpu"])
def test_weight_layers_follow_the_plan(model, shape):
    twin = twins.torch_twin(model, shape, N_CLASSES)
    layers = [(k.rsplit(".", 1)[-1], m) for k, m in twin.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    got = [(name, tuple(m.weight.reshape(m.weight.shape[0], -1).shape)) for name, m in layers]
    assert got == [(name, matrix) for name, matrix, _ in _plan(model, shape, N_CLASSES, {}).weights()]
    assert all(p.dtype == torch.float32 for p in twin.parameters())
    assert twin(torch.zeros(B, int(np.prod(shape)))).shape == (B, N_CLASSES)
    if model == "resnet20":  # 9 residual blocks, two with a projection shortcut
        blocks = [m for m in twin.modules() if type(m).__name__ == "Residual"]
        assert len(blocks) == 9 and sum(b.shortcut is not None for b in blocks) == 2


def test_logits_and_running_statistics(pair):
    model, shape, net, twin = pair
    X, _ = _data(shape)
    net.train(), twin.train()
    with torch.no_grad():  # training mode: batch statistics, running statistics moved
        _close(twin(torch.from_numpy(X)).numpy(), net.forward(X), f"{model} logits (training)")
    buffers = net.buffers()
    assert set(buffers) == set(_twin_buffers(twin))
    for key, value in _twin_buffers(twin).items():
        _close(value, buffers[key], f"{model} {key} after one training-mode forward")
    X2, _ = _data(shape, seed=2)
    net.eval(), twin.eval()
    with torch.no_grad():  # evaluation mode: the running statistics just updated
        _close(twin(torch.from_numpy(X2)).numpy(), net.forward(X2), f"{model} logits (evaluation)")


def test_gradients(pair):
    model, shape, net, twin = pair
    X, y = _data(shape)
    net.train(), twin.train()
    loss, dlogits = softmax_cross_entropy(net.forward(X), y)
    net.backward(dlogits)
    twin.zero_grad()
    t_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(X)), torch.from_numpy(y))
    t_loss.backward()
    _close(t_loss.item(), loss, f"{model} loss")
    grads = {_last2(k): p.grad.numpy() for k, p in twin.named_parameters()}
    params = net.parameters()
    assert sorted(grads) == sorted(p.name for p in params)
    for p in params:
        _close(grads[p.name], p.grad, f"{model} gradient of {p.name}")


def test_train_step_changes_every_parameter(pair):
    model, shape, net, twin = pair
    X, y = _data(shape)
    before = {k: p.detach().clone() for k, p in twin.named_parameters()}
    step = twins.torch_train_step(twin, X, y, lr=0.1, momentum=0.9)
    loss = step()
    _close(loss.item(), softmax_cross_entropy(net.forward(X), y)[0], f"{model} loss of the step")
    # a convolution's bias before a training-mode batch normalisation has gradient 0 (the mean
    # subtraction cancels it): only rounding moves it
    cancelled = {f"{spec.name}.bias" for spec in _conv_before_bn(_plan(model, shape, N_CLASSES, {}).layers)}
    assert cancelled or model == "lenet5"
    for k, p in twin.named_parameters():
        if _last2(k) in cancelled:
            assert float((p.detach() - before[k]).abs().max()) < 1e-6, k
        else:
            assert not torch.equal(p, before[k]), f"{k} did not change"
    for key, value in _twin_buffers(twin).items():  # the step's forward moved the running statistics
        _close(value, net.buffers()[key], f"{model} {key} after the step")


def test_refusals():
    with pytest.raises(ValueError, match="no PyTorch twin of model 'mlp'.*lenet5, vgg-small, resnet20"):
        twins.torch_twin("mlp", (1, 8, 8), N_CLASSES)
    with pytest.raises(ValueError, match="vit-tiny"):
        twins.torch_twin("vit-tiny", (3, 8, 8), N_CLASSES)
    with pytest.raises(InputShapeError, match=r"'lenet5' cannot take inputs of shape \(1, 2, 2\)"):
        twins.torch_twin("lenet5", (1, 2, 2), N_CLASSES)
    with pytest.raises(InputShapeError, match="shape"):
        twins.torch_twin("resnet20", (8, 8), N_CLASSES)


def test_copy_refuses_sparse_and_mismatched_networks():
    sparse = build_model("lenet5", (1, 8, 8), N_CLASSES, sparsity=0.5, rng=0, backend="cpu")
    with pytest.raises(ValueError, match="layer conv1 is sparse"):
        twins.copy_from_network(sparse, twins.torch_twin("lenet5", (1, 8, 8), N_CLASSES))
    dense = build_model("lenet5", (1, 8, 8), N_CLASSES, sparsity=0.0, rng=0, backend="cpu")
    with pytest.raises(ValueError, match=r"layer fc2: weight has shape \(10, 84\), its twin's \(7, 84\)"):
        twins.copy_from_network(dense, twins.torch_twin("lenet5", (1, 8, 8), 7))
    vgg = build_model("vgg-small", (1, 8, 8), N_CLASSES, sparsity=0.0, rng=0, backend="cpu")
    twin = twins.torch_twin("vgg-small", (1, 8, 8), N_CLASSES)
    twin.bn0 = torch.nn.Identity()
    with pytest.raises(ValueError, match="layer bn0 of the network has no twin layer"):
        twins.copy_from_network(vgg, twin)
    twin = twins.torch_twin("vgg-small", (1, 8, 8), N_CLASSES)
    twin.add_module("fc9", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="layer fc9 of the twin has no layer in the network"):
        twins.copy_from_network(vgg, twin)


def test_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    spec = importlib.util.spec_from_file_location("_twins_without_torch", twins.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the module itself imports without torch
    with pytest.raises(ImportError, match=r"needs PyTorch: pip install 'purerigl\[torch\]'"):
        module.torch_twin("lenet5", (1, 8, 8), N_CLASSES)


def test_the_mlp_twin_computes_purerigl_s_dense_mlp():
    from purerigl.nn import build_mlp

    widths = (10, 8, 6, 3)
    net = build_mlp(widths[0], "8,6", widths[-1], fmt="csr", sparsity=0.0, backend="cpu", rng=0)
    twin = twins.torch_mlp_twin(widths)
    params = dict(twin.named_parameters())
    assert list(params) == [f"fc{i}.{k}" for i in range(3) for k in ("weight", "bias")]
    with torch.no_grad():
        for p in net.parameters():  # layer{i}.weight / .bias -> fc{i}.weight / .bias
            layer, kind = p.name.split(".")
            params[f"fc{layer[len('layer'):]}.{kind}"].copy_(torch.from_numpy(p.host))
        X, _ = _data((1, 2, 5))  # 10 features
        _close(twin(torch.from_numpy(X)).numpy(), net.forward(X), "mlp logits")
