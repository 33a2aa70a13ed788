"""Built-in models: LeNet-5, a small VGG and the CIFAR ResNet-20, as :class:`Network`, and the plan
of the small vision transformer ``vit-tiny`` (:mod:`.vit` documents it and builds it by name).

Every model is first written as a *plan*: the list of its layers with names and shapes, computed
from the input shape alone (:mod:`.plans` for the CNNs, :mod:`.vit_plan` for the ViT). :func:`weight_shapes` reads the plan, so budgets can be
computed before anything is built (:func:`purerigl.dst.distribution.named_budgets`); the builders
turn the same plan into layers. Names, in network order: ``conv0``, ``conv1``, ... for convolutions
(a residual block's body, then its projection shortcut), ``bn0``, ... for batch normalisations, and
``fc0``, ... for linear layers; the last ``fc`` is the classifier.

Every model starts with :class:`~.network.Reshape` ``(C, H, W)``, so it takes the flattened rows of
the data sets, (B, C * H * W), as well as image batches (B, C, H, W).

A plan is an object with ``input_shape``, ``weights()`` (the ``(name, (n_out, n_in), kernel)`` of
every weight layer in network order) and ``build(builder)`` (the layers, each weight layer made by the
:class:`_Builder`): :class:`.plans._Plan` for the CNNs, written layer by layer, and :class:`.vit_plan._ViTPlan` for the
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

import numpy as np

from ..errors import FormatError
from ..formats.budget import FORMAT_NAMES, check_sparsity, layer_budget, random_layer_with_budget
from ..kernels import get_backend
from .blocks import Reshape, Residual
from .conv import Conv2d, SparseConv2d
from .dense import Dense, ReLU
from .layers import SparseLinear
from .model import ModelError
from .network import Network
from .norm import BatchNorm2d
from .plans import (
    InputShapeError,
    PatchSizeError,
    _Conv,
    _Linear,
    _Res,
    _lenet5_plan,
    _resnet20_plan,
    _vgg_small_plan,
)
from .pool import Flatten, GlobalAvgPool2d, MaxPool2d
from .vit_plan import VIT_PATCHES, _vit_tiny_plan

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
        "reference", "cpu" or (the CNNs) "cuda".
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
