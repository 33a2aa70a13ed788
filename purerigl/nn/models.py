"""Built-in models: LeNet-5, a small VGG and the CIFAR ResNet-20, as :class:`Network`, and the plan
of the small vision transformer ``vit-tiny`` (:mod:`.vit` documents it and builds it by name).

Every model is first written as a *plan*: the list of its layers with names and shapes, computed
from the input shape alone (:class:`_Plan`). :func:`weight_shapes` reads the plan, so budgets can be
computed before anything is built (:func:`purerigl.dst.distribution.named_budgets`); the builders
turn the same plan into layers. Names, in network order: ``conv0``, ``conv1``, ... for convolutions
(a residual block's body, then its projection shortcut), ``bn0``, ... for batch normalisations, and
``fc0``, ... for linear layers; the last ``fc`` is the classifier.

Every model starts with :class:`~.network.Reshape` ``(C, H, W)``, so it takes the flattened rows of
the data sets, (B, C * H * W), as well as image batches (B, C, H, W).

A plan is an object with ``input_shape``, ``weights()`` (the ``(name, (n_out, n_in), kernel)`` of
every weight layer in network order) and ``build(builder)`` (the layers, each weight layer made by the
:class:`_Builder`): :class:`_Plan` for the CNNs, written layer by layer, and :class:`_ViTPlan` for the
ViT, which also records its resolved options (``options``) for ``Network.architecture``.

Sparse and dense layers. A weight layer is dense (:meth:`Conv2d.kaiming`, :meth:`Dense.kaiming`) when
its name is in ``dense_layers`` (default: the first convolution and the classifier, as RigL and SRigL
keep them), when ``sparsity`` is 0, or when its budget is its whole size; otherwise it is sparse in
``fmt``, holding ``budgets[name]`` connections (default: the uniform count at ``sparsity``), drawn
by :func:`~purerigl.formats.budget.random_layer_with_budget` (random positions, Kaiming normal values
with each row's actual fan-in).

Input sizes. A convolution or pooling window that no longer fits the (padded) image makes the model
refuse the input shape with :class:`InputShapeError`, naming the model and the shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, ShapeError
from ..formats.budget import FORMAT_NAMES, check_sparsity, layer_budget, random_layer_with_budget
from ..kernels import get_backend
from .conv import Conv2d, SparseConv2d
from .layers import Dense, ReLU, SparseLinear
from .model import ModelError
from .attention import MultiHeadSelfAttention, TokenLinear, check_token_backend
from .network import Network, Reshape, Residual
from .norm import BatchNorm2d
from .patches import conv_output_size
from .pool import Flatten, GlobalAvgPool2d, MaxPool2d
from .transformer import ClassToken, ClassTokenPool, LayerNorm, PatchEmbedding, PositionEmbedding, TransformerBlock

__all__ = [
    "MODELS",
    "VIT_PATCHES",
    "InputShapeError",
    "PatchSizeError",
    "build_model",
    "default_dense_layers",
    "lenet5",
    "resnet20",
    "vgg_small",
    "weight_shapes",
]


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


# --------------------------------------------------------------------------------------------------
# the vision transformer's plan (the model is documented in .vit)

#: The ViT's default patch for an image size (H, W): 4 for 8 x 8 digits (T = 4 patches), 7 for 28 x 28
#: MNIST (T = 16), 4 for 32 x 32 CIFAR-10 (T = 64). Other sizes need an explicit patch.
VIT_PATCHES = {(8, 8): 4, (28, 28): 7, (32, 32): 4}


@dataclass(frozen=True)
class _ViTPlan:
    """The layers of ``vit-tiny`` as data: embed, depth pre-norm blocks, class-token pooling, ln, head."""

    input_shape: tuple
    n_classes: int
    patch: int
    width: int
    depth: int
    heads: int
    mlp_ratio: int

    @property
    def options(self) -> dict:
        """Every architecture option, defaults resolved (what ``Network.architecture`` records)."""
        return {"patch": self.patch, "width": self.width, "depth": self.depth, "heads": self.heads,
                "mlp_ratio": self.mlp_ratio}

    def weights(self) -> list[tuple[str, tuple[int, int], None]]:
        """embed (d, C p^2), per block qkv (3d, d), proj (d, d), fc1 (r d, d), fc2 (d, r d), head
        (n_classes, d); kernel None for all (linear layers)."""
        C, d, hidden = self.input_shape[0], self.width, self.mlp_ratio * self.width
        out = [("embed", (d, C * self.patch ** 2), None)]
        for i in range(self.depth):
            out += [(f"block{i}.qkv", (3 * d, d), None), (f"block{i}.proj", (d, d), None),
                    (f"block{i}.fc1", (hidden, d), None), (f"block{i}.fc2", (d, hidden), None)]
        return out + [("head", (self.n_classes, d), None)]

    def build(self, builder) -> list:
        """The layers (:mod:`.vit` lists them); weight layers by ``builder.linear``, the position
        embeddings drawn from ``builder.rng``; a device backend is refused (TransformerBackendError)."""
        be = check_token_backend(builder.backend, "the vision transformer")
        shapes = {name: shape for name, shape, _ in self.weights()}

        def linear(name):
            return builder.linear(name, shapes[name])

        (C, H, W), d, p = self.input_shape, self.width, self.patch
        layers = [Reshape(self.input_shape, backend=be), PatchEmbedding(p, C, linear("embed")),
                  ClassToken(d, backend=be), PositionEmbedding((H // p) * (W // p) + 1, d, rng=builder.rng, backend=be)]
        for i in range(self.depth):
            attn = MultiHeadSelfAttention(d, self.heads, linear(f"block{i}.qkv"), linear(f"block{i}.proj"),
                                          name=f"block{i}.attn")
            layers.append(TransformerBlock(attn, TokenLinear(linear(f"block{i}.fc1"), "gelu"),
                                           linear(f"block{i}.fc2"), name=f"block{i}", backend=be))
        return layers + [ClassTokenPool(backend=be), LayerNorm(d, name="ln", backend=be), linear("head")]


def _positive(model: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputShapeError(f"model {model!r}: {what} must be an integer >= 1, got {value!r}")
    return int(value)


def _vit_tiny_plan(input_shape, n_classes: int, *, patch=None, width: int = 64, depth: int = 4, heads: int = 4,
                   mlp_ratio: int = 2) -> _ViTPlan:
    """The checked plan of ``vit-tiny`` (options: :func:`purerigl.nn.vit.vit_tiny`)."""
    model = "vit-tiny"
    shape = _check_input(model, input_shape)
    _, H, W = shape
    fits = ", ".join(str(q) for q in range(1, min(H, W) + 1) if H % q == 0 and W % q == 0)
    if patch is None:
        if (H, W) not in VIT_PATCHES:
            raise PatchSizeError(f"model {model!r} has no default patch for inputs of shape {shape}; give a patch "
                                 f"(one of {fits})")
        patch = VIT_PATCHES[(H, W)]
    patch = _positive(model, patch, "patch")
    if H % patch or W % patch:
        raise PatchSizeError(f"model {model!r} cannot take inputs of shape {shape}: patch {patch} does not divide "
                             f"the {H} x {W} image; choose one of {fits}")
    width, heads = _positive(model, width, "width"), _positive(model, heads, "heads")
    if width % heads:
        raise InputShapeError(f"model {model!r}: the width {width} is not a multiple of heads = {heads}")
    return _ViTPlan(shape, n_classes, patch, width, _positive(model, depth, "depth"), heads,
                    _positive(model, mlp_ratio, "mlp_ratio"))


#: Plan functions (input_shape, n_classes, **arch) -> plan, by model name.
_PLANS = {"lenet5": _lenet5_plan, "vgg-small": _vgg_small_plan, "resnet20": _resnet20_plan,
          "vit-tiny": _vit_tiny_plan}


def _plan(model: str, input_shape, n_classes: int, arch: dict):
    if model not in _PLANS:
        raise ModelError(f"unknown model {model!r}; choose one of: {', '.join(_PLANS)}")
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 1:
        raise ModelError(f"n_classes must be a positive integer, got {n_classes!r}")
    return _PLANS[model](input_shape, int(n_classes), **arch)


def weight_shapes(model: str, input_shape, n_classes: int, **arch) -> list[tuple[str, tuple[int, int], tuple | None]]:
    """``[(name, (n_out, n_in), kernel), ...]`` of every weight layer of a model, in network order,
    computed without building it: the weight matrix's shape (for a convolution (c_out, c_in * kh * kw))
    and ``kernel`` = (kh, kw) for a convolution, None for a linear layer (what
    :func:`purerigl.dst.distribution.named_budgets` takes). ``arch``: the model's architecture options.

    Raises
    ------
    InputShapeError
        When the model cannot take ``input_shape``.
    """
    return _plan(model, input_shape, n_classes, arch).weights()


def default_dense_layers(model: str, input_shape, n_classes: int, **arch) -> tuple[str, str]:
    """The names kept dense by default: the first weight layer (the first convolution of a CNN, the
    patch embedding ``embed`` of the ViT) and the classifier."""
    names = [name for name, _, _ in weight_shapes(model, input_shape, n_classes, **arch)]
    return names[0], names[-1]


# --------------------------------------------------------------------------------------------------
# building


class _Builder:
    """Turns plan entries into layers (shared options: format, budgets, generator, backend)."""

    def __init__(self, model, plan, fmt, budgets, sparsity, rng, backend, dense_layers):
        if fmt not in FORMAT_NAMES:
            raise ModelError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMAT_NAMES)}")
        self.fmt, self.sparsity = fmt, check_sparsity(sparsity)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.backend = get_backend(backend)
        names = [name for name, _, _ in plan.weights()]
        if isinstance(dense_layers, str):
            dense_layers = (dense_layers,)
        self.dense = set((names[0], names[-1]) if dense_layers is None else dense_layers)
        unknown = sorted(set(self.dense) - set(names)) + sorted(set(budgets or {}) - set(names))
        if unknown:
            raise ModelError(f"{model}: no weight layer named {unknown[0]!r}; its layers are {', '.join(names)}")
        self.budgets, self.model = budgets, model

    def _budget(self, spec) -> int | None:
        """The layer's connection count, or None for a dense layer."""
        n_out, n_in = spec.matrix
        if spec.name in self.dense or self.sparsity == 0:
            return None
        if self.budgets is None:
            budget = layer_budget((n_out, n_in), self.sparsity)
        elif spec.name in self.budgets:
            budget = int(self.budgets[spec.name])
        else:
            raise ModelError(f"{self.model}: budgets has no entry for the sparse layer {spec.name!r}")
        return None if budget >= n_out * n_in else budget

    def _matrix(self, spec, budget: int):
        try:
            return random_layer_with_budget(self.fmt, spec.matrix, budget, self.rng)
        except FormatError as e:
            raise ModelError(f"{self.model}, layer {spec.name}: {e}") from None

    def linear(self, name: str, shape: tuple[int, int]):
        """The weight layer ``name`` of matrix shape (n_out, n_in): a :class:`Dense` (Kaiming normal) when
        it is kept dense, else a :class:`SparseLinear` holding its budget (the ViT's plan builds with it)."""
        n_out, n_in = shape
        return self.layer(_Linear(name, int(n_in), int(n_out)))

    def layer(self, spec):
        be = self.backend
        if isinstance(spec, _Res):
            short = None if spec.shortcut is None else self.layers(spec.shortcut)
            return Residual(self.layers(spec.body), short)
        if isinstance(spec, _Conv):
            budget = self._budget(spec)
            if budget is None:
                return Conv2d.kaiming(spec.c_in, spec.c_out, spec.kernel, self.rng, stride=spec.stride,
                                      padding=spec.padding, backend=be, name=spec.name)
            return SparseConv2d(self._matrix(spec, budget), spec.c_in, spec.kernel, stride=spec.stride,
                                padding=spec.padding, backend=be, name=spec.name)
        if isinstance(spec, _Linear):
            budget = self._budget(spec)
            if budget is None:
                return Dense.kaiming(spec.matrix, self.rng, name=spec.name, backend=be)
            return SparseLinear(self._matrix(spec, budget), backend=be, name=spec.name)
        kind, args = spec.kind, spec.args
        if kind == "bn":
            return BatchNorm2d(args[1], name=args[0], backend=be)
        if kind == "relu":
            return ReLU(be)
        if kind == "maxpool":
            return MaxPool2d(args[0], backend=be)
        if kind == "gap":
            return GlobalAvgPool2d(backend=be)
        if kind == "flatten":
            return Flatten(backend=be)
        return Reshape(args[0], backend=be)

    def layers(self, specs) -> list:
        return [self.layer(s) for s in specs]


def build_model(model: str, input_shape, n_classes: int, *, fmt: str = "condensed", budgets: dict | None = None,
                sparsity: float = 0.9, rng=None, backend=None, dense_layers=None, **arch) -> Network:
    """The model named ``model`` (a key of :data:`MODELS`) as a :class:`Network`.

    Parameters
    ----------
    model : {"lenet5", "vgg-small", "resnet20", "vit-tiny"}
    input_shape : (int, int, int)
        (C, H, W) of one image, e.g. (1, 8, 8) digits, (1, 28, 28) MNIST, (3, 32, 32) CIFAR-10.
    n_classes : int
    fmt : {"condensed", "diagonal", "csr"}
        Storage of the sparse layers.
    budgets : dict[str, int], optional
        Connections per sparse layer, by name (e.g. from
        :func:`purerigl.dst.distribution.named_budgets`); a budget of the layer's whole size makes it
        dense. Default: the uniform count at ``sparsity``.
    sparsity : float
        In [0, 1); 0 builds every layer dense (the dense baseline).
    rng : numpy Generator or seed, optional
    backend : str | Backend, optional
        A host backend ("reference" or "cpu").
    dense_layers : iterable of str, optional
        Names kept dense. Default: the first weight layer (first convolution, or the ViT's patch
        embedding) and the classifier; ``()`` for none.
    **arch
        Architecture options of the model (see each model's function).

    Returns
    -------
    Network
        Its ``architecture`` attribute records the build (JSON-able): {"model", "input_shape",
        "n_classes", "options"} (the ``arch`` options; for the ViT every option, defaults resolved),
        enough to rebuild the same layers with
        ``build_model(a["model"], a["input_shape"], a["n_classes"], **a["options"], ...)`` before
        loading saved weights into them.

    Raises
    ------
    InputShapeError
        When the model cannot take ``input_shape``.
    ModelError
        For an unknown model, format or layer name, a missing budget, or a budget a format cannot hold.
    """
    plan = _plan(model, input_shape, n_classes, arch)
    builder = _Builder(model, plan, fmt, budgets, sparsity, rng, backend, dense_layers)
    net = Network(plan.build(builder), plan.input_shape)
    options = getattr(plan, "options", arch)
    net.architecture = {"model": model, "input_shape": list(plan.input_shape), "n_classes": int(n_classes),
                        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    return net


def lenet5(input_shape, n_classes: int, *, fmt: str = "condensed", budgets: dict | None = None, sparsity: float = 0.9,
           rng=None, backend=None, dense_layers=None, padding: int = 2, channels=(6, 16), hidden=(120, 84)) -> Network:
    """LeNet-5: two 5 x 5 convolutions (``channels``, zero padding ``padding``) each followed by ReLU and
    2 x 2 max pooling, then linear layers ``hidden`` with ReLU and the classifier.

    Weight layers: conv0 (c_out 6), conv1 (16), fc0 (120), fc1 (84), fc2 (n_classes). With padding 2 an
    H x W image reaches the linear layers as 16 x floor(floor(H/2)/2) x floor(floor(W/2)/2): 16 x 2 x 2
    for 8 x 8 digits, 16 x 7 x 7 for MNIST. Other options: :func:`build_model`.
    """
    return build_model("lenet5", input_shape, n_classes, fmt=fmt, budgets=budgets, sparsity=sparsity, rng=rng,
                       backend=backend, dense_layers=dense_layers, padding=padding, channels=channels, hidden=hidden)


def vgg_small(input_shape, n_classes: int, *, fmt: str = "condensed", budgets: dict | None = None,
              sparsity: float = 0.9, rng=None, backend=None, dense_layers=None, widths=(32, 64),
              convs_per_block: int = 2) -> Network:
    """A small VGG: per width in ``widths`` (default 32, 64), ``convs_per_block`` x (3 x 3 convolution,
    padding 1 -> BatchNorm2d -> ReLU) then 2 x 2 max pooling; global average pooling; the linear
    classifier fc0. Other options: :func:`build_model`."""
    return build_model("vgg-small", input_shape, n_classes, fmt=fmt, budgets=budgets, sparsity=sparsity, rng=rng,
                       backend=backend, dense_layers=dense_layers, widths=widths, convs_per_block=convs_per_block)


def resnet20(input_shape, n_classes: int, *, fmt: str = "condensed", budgets: dict | None = None,
             sparsity: float = 0.9, rng=None, backend=None, dense_layers=None, widths=(16, 32, 64),
             blocks: int = 3) -> Network:
    """The CIFAR ResNet-20: a 3 x 3 convolution of 16 channels, three stages of ``blocks`` basic blocks
    of 16 / 32 / 64 channels (stride 2 at the start of the second and third stage; projection shortcut
    conv 1 x 1 + BatchNorm2d where the shape changes), global average pooling and the linear classifier.
    Weight layers (3 blocks): 1 + 18 body convolutions + 2 projections = 21 convolutions conv0 ... conv20
    (a block's projection named after its body's two), and fc0. Other options: :func:`build_model`."""
    return build_model("resnet20", input_shape, n_classes, fmt=fmt, budgets=budgets, sparsity=sparsity, rng=rng,
                       backend=backend, dense_layers=dense_layers, widths=widths, blocks=blocks)


#: The built-in models by name: functions (input_shape, n_classes, **options) -> Network.
MODELS = {"lenet5": lenet5, "vgg-small": vgg_small, "resnet20": resnet20}

def _vit_tiny(input_shape, n_classes: int, **options) -> Network:
    """``build_model("vit-tiny", ...)``: :func:`purerigl.nn.vit.vit_tiny` documents the options."""
    return build_model("vit-tiny", input_shape, n_classes, **options)


MODELS["vit-tiny"] = _vit_tiny
