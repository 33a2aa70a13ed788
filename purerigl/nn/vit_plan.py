"""The plan of ``vit-tiny`` (the model is documented in :mod:`.vit`): its layers' names and shapes from
the options alone, checked (patch, width, heads), and the layers built from it."""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels import get_backend
from .attention import MultiHeadSelfAttention, TokenLinear
from .blocks import Reshape
from .plans import InputShapeError, PatchSizeError, _check_input, _positive
from .transformer import LayerNorm, TransformerBlock
from .vit_layers import ClassToken, ClassTokenPool, PatchEmbedding, PositionEmbedding



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
        embeddings drawn from ``builder.rng``; every layer on ``builder.backend`` (host or cuda)."""
        be = get_backend(builder.backend)
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
