"""Plans: the layers of a built-in model as data, computed from the input shape alone.

A plan is an object with ``input_shape``, ``weights()`` (the ``(name, (n_out, n_in), kernel)`` of every
weight layer in network order) and ``build(builder)`` (the layers, each weight layer made by
:class:`.models._Builder`). This module holds :class:`_Plan`, which writes the CNNs (LeNet-5, the small
VGG, ResNet-20) layer by layer while tracking the per-sample shape, the three CNN plans, and the errors
and input checks every plan shares; the ViT's plan is in :mod:`.vit_plan`. :mod:`.models` turns plans
into networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from .model import ModelError
from .patches import conv_output_size


class InputShapeError(ModelError):
    """A built-in model cannot take the given input shape (wrong rank, or too small an image)."""


class PatchSizeError(InputShapeError):
    """The ViT cannot cut the images into patches: a patch that does not divide H and W, or an image
    size without a default patch."""


# --------------------------------------------------------------------------------------------------
# plans: the layers of a model as data


@dataclass(frozen=True)
class _Conv:
    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int

    @property
    def matrix(self) -> tuple[int, int]:
        return self.c_out, self.c_in * self.kernel * self.kernel  # (c_out, c_in * kh * kw)


@dataclass(frozen=True)
class _Linear:
    name: str
    n_in: int
    n_out: int

    @property
    def matrix(self) -> tuple[int, int]:
        return self.n_out, self.n_in


@dataclass(frozen=True)
class _Simple:
    """A layer without weight matrix: ("bn", name, channels), ("relu",), ("maxpool", k), ("gap",),
    ("flatten",), ("reshape", shape)."""

    kind: str
    args: tuple = ()


@dataclass(frozen=True)
class _Res:
    body: list
    shortcut: list | None


class _Plan:
    """Writes a model's layers while tracking the per-sample shape (C, H, W) or (n,)."""

    def __init__(self, model: str, input_shape):
        self.model, self.input_shape = model, _check_input(model, input_shape)
        self.shape = self.input_shape
        self.layers: list = [_Simple("reshape", (self.input_shape,))]
        self._counts = {"conv": 0, "bn": 0, "fc": 0}

    def _name(self, prefix: str) -> str:
        self._counts[prefix] += 1
        return f"{prefix}{self._counts[prefix] - 1}"

    def _refuse(self, reason: str):
        raise InputShapeError(f"model {self.model!r} cannot take inputs of shape {self.input_shape}: {reason}")

    def _window(self, k: int, stride: int, padding: int, what: str) -> tuple[int, int]:
        try:
            return tuple(conv_output_size(n, k, stride, padding) for n in self.shape[1:])
        except ShapeError:
            self._refuse(f"its {what} ({k} x {k}, stride {stride}, padding {padding}) would meet a "
                         f"{self.shape[1]} x {self.shape[2]} image and leave nothing")

    def conv(self, c_out: int, k: int, stride: int = 1, padding: int = 0) -> "_Plan":
        name = self._name("conv")
        H, W = self._window(k, stride, padding, f"convolution {name}")
        self.layers.append(_Conv(name, self.shape[0], c_out, k, stride, padding))
        self.shape = (c_out, H, W)
        return self

    def bn(self) -> "_Plan":
        self.layers.append(_Simple("bn", (self._name("bn"), self.shape[0])))
        return self

    def relu(self) -> "_Plan":
        self.layers.append(_Simple("relu"))
        return self

    def maxpool(self, k: int = 2) -> "_Plan":
        H, W = self._window(k, k, 0, f"{k} x {k} max pooling")
        self.layers.append(_Simple("maxpool", (k,)))
        self.shape = (self.shape[0], H, W)
        return self

    def gap(self) -> "_Plan":
        self.layers.append(_Simple("gap"))
        self.shape = (self.shape[0],)
        return self

    def flatten(self) -> "_Plan":
        self.layers.append(_Simple("flatten"))
        self.shape = (math.prod(self.shape),)
        return self

    def linear(self, n_out: int) -> "_Plan":
        self.layers.append(_Linear(self._name("fc"), self.shape[0], n_out))
        self.shape = (n_out,)
        return self

    def weights(self) -> list[tuple[str, tuple[int, int], tuple | None]]:
        """(name, (n_out, n_in), kernel) of every weight layer, in network order (see :func:`weight_shapes`)."""
        return [(s.name, s.matrix, (s.kernel, s.kernel) if isinstance(s, _Conv) else None)
                for s in _walk(self.layers) if isinstance(s, (_Conv, _Linear))]

    def build(self, builder) -> list:
        """The layers of the model, made by ``builder`` (:class:`_Builder`)."""
        return builder.layers(self.layers)

    def residual(self, body, shortcut=None) -> "_Plan":
        """``body(plan)`` / ``shortcut(plan)`` write the branches, both from the current shape."""
        start, outer = self.shape, self.layers
        self.layers = []
        body(self)
        body_layers, end = self.layers, self.shape
        short_layers = None
        if shortcut is not None:
            self.layers, self.shape = [], start
            shortcut(self)
            short_layers = self.layers
        if self.shape != end:
            raise ModelError(f"{self.model}: a residual body ends at {end}, its shortcut at {self.shape}")
        self.layers = outer
        self.layers.append(_Res(body_layers, short_layers))
        return self


def _check_input(model: str, input_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(n) for n in input_shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise InputShapeError(f"model {model!r} takes images of shape (C, H, W) with positive sizes, "
                              f"got input shape {input_shape!r}")
    return shape


def _walk(layers):
    for layer in layers:
        if isinstance(layer, _Res):
            yield from _walk(layer.body)
            yield from _walk(layer.shortcut or [])
        else:
            yield layer


# --------------------------------------------------------------------------------------------------
# the models as plans


def _lenet5_plan(input_shape, n_classes: int, *, padding: int = 2, channels=(6, 16), hidden=(120, 84)) -> _Plan:
    """conv 5x5 -> ReLU -> maxpool 2 -> conv 5x5 -> ReLU -> maxpool 2 -> flatten -> fc -> ReLU -> fc ->
    ReLU -> fc. Padding 2 keeps the size through each convolution, so 8 x 8 digits fit."""
    p = _Plan("lenet5", input_shape)
    for c in channels:
        p.conv(c, 5, padding=padding).relu().maxpool(2)
    p.flatten()
    for width in hidden:
        p.linear(width).relu()
    return p.linear(n_classes)


def _vgg_small_plan(input_shape, n_classes: int, *, widths=(32, 64), convs_per_block: int = 2) -> _Plan:
    """Per width: ``convs_per_block`` x (conv 3x3 pad 1 -> BN -> ReLU), then maxpool 2; then global
    average pooling and the linear classifier."""
    p = _Plan("vgg-small", input_shape)
    for width in widths:
        for _ in range(convs_per_block):
            p.conv(width, 3, padding=1).bn().relu()
        p.maxpool(2)
    return p.gap().linear(n_classes)


def _resnet20_plan(input_shape, n_classes: int, *, widths=(16, 32, 64), blocks: int = 3) -> _Plan:
    """CIFAR ResNet (He et al. 2016, section 4.2) with 6 * blocks + 2 layers (20 for 3 blocks).

    conv 3x3 (widths[0]) -> BN -> ReLU; per stage s and block b: Residual(body = conv 3x3 (stride 2
    at the first block of stages after the first) -> BN -> ReLU -> conv 3x3 -> BN; shortcut =
    identity, or conv 1x1 with the same stride -> BN when the shape changes) -> ReLU; global average
    pooling; linear classifier.
    """
    p = _Plan("resnet20", input_shape)
    p.conv(widths[0], 3, padding=1).bn().relu()
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            project = stride != 1 or p.shape[0] != width
            p.residual(lambda q, w=width, st=stride: q.conv(w, 3, st, 1).bn().relu().conv(w, 3, 1, 1).bn(),
                       (lambda q, w=width, st=stride: q.conv(w, 1, st, 0).bn()) if project else None)
            p.relu()
    return p.gap().linear(n_classes)


def _positive(model: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputShapeError(f"model {model!r}: {what} must be an integer >= 1, got {value!r}")
    return int(value)
