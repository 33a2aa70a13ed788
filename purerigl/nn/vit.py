"""A small vision transformer (ViT) with sparse projections: ``vit-tiny`` of :data:`.models.MODELS`.

Layers, in network order (per-sample shapes for a (C, H, W) image, p the patch, T = H W / p^2, d the
width, r the MLP ratio)::

    Reshape (C, H, W)
    embed        PatchEmbedding: (C, H, W) -> (T, d), matrix (d, C p^2)        dense by default
    cls_token    ClassToken: -> (T + 1, d)
    pos_embed    PositionEmbedding (T + 1, d)
    block{i}     TransformerBlock, i = 0 ... depth - 1 (pre-norm):
                   block{i}.ln1, block{i}.qkv (3d, d), block{i}.proj (d, d),       sparse
                   block{i}.ln2, block{i}.fc1 (r d, d), GELU, block{i}.fc2 (d, r d)  sparse
    ClassTokenPool: -> (d,)
    ln           LayerNorm (d)
    head         linear classifier (n_classes, d)                               dense by default

As in the SRigL and DynaDiag ViT settings, every projection inside the blocks (fused QKV, attention
output, MLP fc1 / fc2) is sparse and the patch embedding and the head stay dense by default
(``dense_layers`` overrides; DESIGN.md section 4b, PAPERS.md section 3.4b). The fused QKV matrix is one
layer of the budget; its 3d rows are SRigL's neurons (:mod:`.attention` says why it is fused). The
classifier reads the class token, not the mean of the tokens (:mod:`.vit_layers` says why).

The plan (the layers' names and shapes from the options alone) is :mod:`.vit_plan` (``_ViTPlan``),
registered with the other built-in models in :mod:`.models`, so that ``build_model("vit-tiny", ...)``, :func:`.models.weight_shapes`
and :func:`.models.default_dense_layers` know it: the six kinds of weight layers come with kernel None
(they are linear layers), so :func:`purerigl.dst.distribution.named_budgets` gives uniform, ER or ERK
budgets. The class token, the position embeddings and the LayerNorms' gamma and beta are plain
parameters named ``cls_token``, ``pos_embed``, ``block{i}.ln1.weight`` ... ``ln.bias`` (no weight
decay), saved and loaded by name by model files and checkpoints; ``Network.architecture`` records
every option with its default resolved, so a model file rebuilds the same layers.

Initialisation: Kaiming normal weights as every built-in model (a sparse layer's with its rows' actual
fan-in), zero biases, LayerNorm gamma 1 and beta 0, class token 0, position embeddings N(0, 0.02^2).
"""

from __future__ import annotations

from .models import VIT_PATCHES, PatchSizeError, build_model
from .network import Network

__all__ = ["DEFAULT_PATCH", "PatchSizeError", "vit_tiny"]

#: The default patch by image size (H, W): 4 for 8 x 8, 7 for 28 x 28, 4 for 32 x 32.
DEFAULT_PATCH = VIT_PATCHES


def vit_tiny(input_shape, n_classes: int, *, fmt: str = "condensed", budgets: dict | None = None,
             sparsity: float = 0.9, rng=None, backend=None, dense_layers=None, patch=None, width: int = 64,
             depth: int = 4, heads: int = 4, mlp_ratio: int = 2) -> Network:
    """A small pre-norm vision transformer with sparse block projections (see the module docstring).

    Parameters
    ----------
    input_shape : (int, int, int)
        (C, H, W): (1, 8, 8) digits, (1, 28, 28) MNIST, (3, 32, 32) CIFAR-10.
    n_classes : int
    fmt, budgets, sparsity, rng, backend, dense_layers
        As :func:`.models.build_model` (budgets by layer name; dense by default: ``embed`` and
        ``head``; backend "reference", "cpu" or "cuda": on cuda parameters and activations stay on
        the device, tested under Numba's CUDA simulator only).
    patch : int, optional
        p, dividing H and W. Default :data:`DEFAULT_PATCH`: 4 (8 x 8), 7 (28 x 28), 4 (32 x 32).
    width : int
        Token width d (default 64), a multiple of ``heads``.
    depth : int
        Transformer blocks (default 4), at least 1.
    heads : int
        Attention heads (default 4), each of width d / heads.
    mlp_ratio : int
        r, an integer: the MLP's hidden width is r d (default 2).

    Returns
    -------
    Network
        ``architecture["options"]`` = {"patch", "width", "depth", "heads", "mlp_ratio"}.

    Raises
    ------
    PatchSizeError
        (an :class:`~.models.InputShapeError`, a ModelError) when the patch does not divide H and W,
        naming the shape and the patches that fit, or when there is no default patch for the size.
    InputShapeError
        For an input that is not (C, H, W), options that are not positive integers, or a width that
        the heads do not divide.
    ModelError
        As :func:`.models.build_model` (format, layer names, budgets).
    """
    return build_model("vit-tiny", input_shape, n_classes, fmt=fmt, budgets=budgets, sparsity=sparsity, rng=rng,
                       backend=backend, dense_layers=dense_layers, patch=patch, width=width, depth=depth,
                       heads=heads, mlp_ratio=mlp_ratio)
