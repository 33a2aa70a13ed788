"""``purerigl train --model``: which network a run trains, and the input shape it reads its data as.

``mlp`` is the multilayer perceptron of ``--hidden``; ``lenet5``, ``vgg-small`` and ``resnet20`` are the
built-in convolutional networks of :mod:`purerigl.nn.models`, trained on the image data sets in the
shape :data:`IMAGE_SHAPES` gives (a data set's rows are flattened C x H x W images) or ``--input-shape``.
Their budgets come from :func:`purerigl.dst.distribution.named_budgets` (uniform, ER or ERK with the
kernel dimensions in ERK's scale); the first convolution and the classifier are dense unless
``--sparse-first`` / ``--sparse-last`` say otherwise, as in RigL and SRigL.
"""

from __future__ import annotations

import click
import numpy as np

from purerigl.dst.distribution import named_budgets
from purerigl.nn.models import MODELS, build_model, weight_shapes

MODEL_NAMES = ("mlp", *MODELS)

#: The image shape (C, H, W) of each image data set's flattened rows.
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

model_option = click.option(
    "--model", type=click.Choice(MODEL_NAMES), default="mlp", show_default=True,
    help="Network: mlp (--hidden widths); a built-in CNN: lenet5 (2 conv + 3 linear), vgg-small (3x3 conv "
         "blocks with batch norm), resnet20 (CIFAR ResNet, 16/32/64 channels); or vit-tiny, a vision transformer "
         "with sparse block projections (--vit-* options; AdamW, warm-up and cosine decay by default). CNNs and the "
         "ViT run on the reference, cpu and cuda backends (cuda tested only under the CUDA simulator).")

#: The ``--vit-*`` options: run option name -> vit_tiny keyword.
VIT_OPTIONS = {"vit_width": "width", "vit_depth": "depth", "vit_heads": "heads", "vit_patch": "patch",
               "vit_mlp_ratio": "mlp_ratio"}
_VIT = [
    click.option("--vit-width", type=click.IntRange(min=1), default=64, show_default=True, help="vit-tiny: token width d."),
    click.option("--vit-depth", type=click.IntRange(min=1), default=4, show_default=True, help="vit-tiny: transformer blocks."),
    click.option("--vit-heads", type=click.IntRange(min=1), default=4, show_default=True,
                 help="vit-tiny: attention heads (must divide --vit-width)."),
    click.option("--vit-patch", type=click.IntRange(min=1), default=None,
                 help="vit-tiny: patch size  [default: 4 for 8x8 and 32x32 images, 7 for 28x28]"),
    click.option("--vit-mlp-ratio", type=click.IntRange(min=1), default=2, show_default=True,
                 help="vit-tiny: MLP expansion ratio r (fc1: d -> r d)."),
]


def vit_options(command):
    """Decorate ``command`` with the ``--vit-*`` options."""
    for option in reversed(_VIT):
        command = option(command)
    return command


def training_defaults(model: str) -> dict:
    """The training options a model brings when they are not given: SGD for the MLP and the CNNs; AdamW
    with warm-up (5% of the steps, ``"auto"``) and weight decay 0.05 for the ViT (with the cosine schedule,
    the command's default)."""
    if model == "vit-tiny":
        return {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_steps": "auto"}
    return {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "warmup_steps": 0}


def architecture(opts: dict) -> dict:
    """The model's architecture options from the run options (only the ViT has any)."""
    if opts["model"] != "vit-tiny":
        return {}
    return {kw: opts[name] for name, kw in VIT_OPTIONS.items() if opts[name] is not None}
input_shape_option = click.option(
    "--input-shape", default=None, metavar="C,H,W",
    help="How a CNN reads the data set's rows, e.g. 1,8,8  [default: the data set's images: digits 1,8,8, "
         "MNIST 1,28,28, CIFAR-10 3,32,32; required for synthetic data]")


def parse_shape(text) -> tuple[int, int, int]:
    """'3,32,32' -> (3, 32, 32); a usage error for anything else."""
    try:
        shape = tuple(int(p) for p in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.UsageError(f"--input-shape must be three positive integers C,H,W, got {text!r}")
    return shape


def input_shape(opts: dict, n_features: int) -> tuple[int, int, int]:
    """The (C, H, W) a CNN reads each row of the data set as; a usage error when it does not fit."""
    given = opts.get("input_shape")
    if given is not None:
        shape = parse_shape(given)
    elif opts["dataset"] in IMAGE_SHAPES:
        shape = IMAGE_SHAPES[opts["dataset"]]
    else:
        raise click.UsageError(f"--model {opts['model']} on --dataset {opts['dataset']}: give --input-shape C,H,W "
                               f"(its rows have {n_features} features)")
    if int(np.prod(shape)) != n_features:
        raise click.UsageError(f"--input-shape {','.join(map(str, shape))} holds {int(np.prod(shape))} values, but "
                               f"the {opts['dataset']} rows have {n_features} features")
    return shape


def dense_names(opts: dict, layers: list) -> list[str]:
    """The weight layers kept dense: the first (``--dense-first``) and the last (``--dense-last``)."""
    names = [name for name, _, _ in layers]
    return [n for n, keep in ((names[0], opts["dense_first"]), (names[-1], opts["dense_last"])) if keep]


def build_network(opts: dict, data, fmt: str, backend):
    """(network, budgets by layer name) of a CNN run, from the canonical run options."""
    shape = input_shape(opts, data.n_features)
    arch = architecture(opts)
    layers = weight_shapes(opts["model"], shape, data.n_classes, **arch)
    dense = dense_names(opts, layers)
    if opts["sparsity"] == 0:
        budgets = {name: m[0] * m[1] for name, m, _ in layers}
    else:
        budgets = named_budgets(layers, opts["sparsity"], opts["distribution"], dense)
    model = build_model(opts["model"], shape, data.n_classes, fmt=fmt, budgets=budgets, sparsity=opts["sparsity"],
                        rng=np.random.default_rng(opts["seed"]), backend=backend, dense_layers=dense, **arch)
    return model, budgets
