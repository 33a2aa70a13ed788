"""Dense PyTorch twins of the built-in CNNs (lenet5, vgg-small, resnet20): the dense baseline of
``purerigl bench gpu --part train --model``, which times purerigl's cuda training step against PyTorch's
on the same GPU (cuDNN convolutions and batch normalisation, cuBLAS linear layers).

:func:`torch_twin` walks the model's plan (:mod:`purerigl.nn.plans`, what ``build_model`` builds from),
one module per entry: purerigl's layers in purerigl's order, named as in the plan (``conv0``, ``bn0``,
``fc0``; a residual block is a ``Residual`` with ``body`` and ``shortcut``), taking the same rows
(B, C * H * W), float32. :func:`copy_from_network` copies a dense purerigl network into its twin,
batch normalisation's running statistics, eps and momentum included (purerigl's BatchNorm2d follows
PyTorch: eps 1e-5, momentum 0.1 weighting the new statistic, biased batch variance to normalise,
unbiased in the running variance). The twin then gives purerigl's logits (training and evaluation
mode), running statistics and cross-entropy gradients within rtol 1e-4, atol 1e-5 in float32
(tests/test_torch_twins.py). :func:`torch_mlp_twin` is the same for an MLP; :func:`torch_train_step`
makes the step the benchmark times.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache

import numpy as np

from purerigl.nn.models import _plan
from purerigl.nn.plans import _Conv, _Linear, _Res

#: The models a twin is made of (the convolutional ones; vit-tiny has none).
TWIN_MODELS = ("lenet5", "vgg-small", "resnet20")


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("a dense PyTorch twin needs PyTorch: pip install 'purerigl[torch]'") from None
    return torch


@cache
def _residual_class():
    """:class:`Residual`, defined once torch is there (the module imports without torch)."""
    nn = _torch().nn

    class Residual(nn.Module):
        """``y = body(x) + (shortcut(x) if shortcut else x)``; a ReLU after the sum is the next entry."""

        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    return Residual


def _key(spec, i: int) -> str:
    """Key in its nn.Sequential: the plan name (conv, fc, bn), else kind + position (``relu2``)."""
    if isinstance(spec, (_Conv, _Linear)):
        return spec.name
    if isinstance(spec, _Res):
        return f"res{i}"
    return spec.args[0] if spec.kind == "bn" else f"{spec.kind}{i}"


#: One small function per parameter-free plan entry or batch normalisation: (nn, *args) -> module.
_SIMPLE = {
    "bn": lambda nn, name, channels: nn.BatchNorm2d(channels),
    "relu": lambda nn: nn.ReLU(),
    "maxpool": lambda nn, k: nn.MaxPool2d(k),  # k x k, stride k, floor
    "gap": lambda nn: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),  # (B, C, H, W) -> (B, C)
    "flatten": lambda nn: nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W), C order
    "reshape": lambda nn, shape: nn.Unflatten(1, tuple(shape)),  # (B, C*H*W) -> (B, C, H, W)
}


def _module(nn, spec):
    """The torch module of one plan entry."""
    if isinstance(spec, _Res):
        short = None if spec.shortcut is None else _sequential(nn, spec.shortcut)
        return _residual_class()(_sequential(nn, spec.body), short)
    if isinstance(spec, _Conv):  # zero padding, with bias, as purerigl's Conv2d
        return nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.padding)
    if isinstance(spec, _Linear):
        return nn.Linear(spec.n_in, spec.n_out)
    if spec.kind not in _SIMPLE:
        raise ValueError(f"no PyTorch twin for the plan entry {spec!r}")
    return _SIMPLE[spec.kind](nn, *spec.args)


def _sequential(nn, specs):
    """nn.Sequential of the plan entries, in order."""
    return nn.Sequential(OrderedDict((_key(spec, i), _module(nn, spec)) for i, spec in enumerate(specs)))


def torch_twin(model: str, input_shape, n_classes: int, *, device="cpu", **arch):
    """The dense ``torch.nn`` network of ``build_model(model, input_shape, n_classes, **arch)``.

    Parameters
    ----------
    model : {"lenet5", "vgg-small", "resnet20"}
    input_shape : (int, int, int)
        (C, H, W); the twin takes rows (B, C * H * W).
    n_classes : int
    device : str or torch.device
    **arch
        The model's architecture options.

    Returns
    -------
    torch.nn.Sequential
        float32, training mode, PyTorch's initialisation (:func:`copy_from_network` copies purerigl's).
        ValueError for a model without a twin; the plan's InputShapeError / ModelError for what it refuses.
    """
    if model not in TWIN_MODELS:
        raise ValueError(f"no PyTorch twin of model {model!r}; the twins are: {', '.join(TWIN_MODELS)}")
    torch = _torch()
    plan = _plan(model, input_shape, n_classes, arch)
    return _sequential(torch.nn, plan.layers).to(device=device, dtype=torch.float32)


def torch_mlp_twin(widths, *, device="cpu"):
    """The dense ``torch.nn`` MLP of ``build_mlp`` with these widths: (n_features, hidden..., n_classes),
    a ReLU after every linear layer but the last; modules ``fc0``, ``fc1``, ..., float32, PyTorch's
    initialisation."""
    torch = _torch()
    nn, layers = torch.nn, OrderedDict()
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers[f"fc{i}"] = nn.Linear(int(n_in), int(n_out))
        if i < len(widths) - 2:
            layers[f"relu{i}"] = nn.ReLU()
    return nn.Sequential(layers).to(device=device, dtype=torch.float32)


def copy_from_network(network, twin) -> None:
    """Copy a dense purerigl network's parameters and batch-normalisation state into ``twin``.

    Parameters
    ----------
    network : purerigl.nn.Network
        Built by ``build_model(..., sparsity=0.0)`` (any backend).
    twin : torch.nn.Module
        From :func:`torch_twin` with the same model, shapes and options. Layers are matched by name;
        ValueError naming the layer for a sparse layer, one without counterpart, or another shape.
    """
    torch = _torch()
    sparse = [row["name"] for row in network.describe() if row["kind"] == "sparse"]
    if sparse:
        raise ValueError(f"layer {sparse[0]} is sparse; a twin copies dense networks (sparsity=0.0)")
    network.sync_to_host()  # parameters and running statistics current on the host (cuda)
    mods = {key.rsplit(".", 1)[-1]: m for key, m in twin.named_modules()  # plan name -> module
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))}
    done = set()
    for layer in network.leaves():
        name = getattr(layer, "name", type(layer).__name__)
        if not layer.parameters():
            continue
        if name not in mods:
            raise ValueError(f"layer {name} of the network has no twin layer")
        mod, arrays = mods[name], {p.name.rsplit(".", 1)[-1]: p.host for p in layer.parameters()}
        if hasattr(layer, "buffers"):  # BatchNorm2d: running statistics, eps and momentum
            arrays.update({k.rsplit(".", 1)[-1]: v for k, v in layer.buffers().items()})
            mod.eps, mod.momentum = layer.eps, layer.momentum
        for key, value in arrays.items():
            target = getattr(mod, key, None)
            if target is None or tuple(target.shape) != value.shape:
                raise ValueError(f"layer {name}: {key} has shape {value.shape}, its twin's "
                                 f"{tuple(getattr(target, 'shape', ())) or None}")
            with torch.no_grad():
                target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
        done.add(name)
    missing = sorted(set(mods) - done)
    if missing:
        raise ValueError(f"layer {missing[0]} of the twin has no layer in the network")


def torch_train_step(twin, X: np.ndarray, y: np.ndarray, *, lr: float = 1e-3, momentum: float = 0.9):
    """``step()``: one training step of ``twin`` on (X, y), returning the loss tensor left on the device
    (no synchronisation): forward in training mode, mean cross-entropy (as purerigl's
    ``softmax_cross_entropy``), backward, ``torch.optim.SGD`` step (no dampening, no weight decay).

    Parameters
    ----------
    twin : torch.nn.Module
    X, y : float32 ndarray (B, C*H*W), int ndarray (B,)
        Moved to the twin's device once, here.
    lr, momentum : float
    """
    torch = _torch()
    device = next(twin.parameters()).device
    Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=device)  # (B, C*H*W)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=device)  # (B,)
    optimizer = torch.optim.SGD(twin.parameters(), lr=lr, momentum=momentum)

    def step():
        twin.train()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(twin(Xt), yt)  # mean over the batch
        loss.backward()
        optimizer.step()
        return loss

    return step
