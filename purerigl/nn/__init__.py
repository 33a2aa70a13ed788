"""Neural-network building blocks over sparse formats: parameters, layers, models and the loss.
Imports formats and kernels (never optim, dst or above).

- linear layers (:mod:`.layers`): SparseLinear, Dense, ReLU; DynaDiag's gated diagonal layer
  (:mod:`.gated_diagonal`);
- convolutions (:mod:`.conv`, :mod:`.patches`), batch normalisation (:mod:`.norm`), pooling
  (:mod:`.pool`);
- models: the MLP (:mod:`.model`), networks composed in Python with residual blocks
  (:mod:`.network`, :mod:`.blocks`, :mod:`.shape_inference`) and the built-in CNNs LeNet-5, a small VGG
  and ResNet-20 (:mod:`.models`, their plans in :mod:`.plans`);
- transformers: token-wise layers and attention (:mod:`.attention`), LayerNorm, GELU and blocks
  (:mod:`.transformer`), patch embedding, class token, position embeddings (:mod:`.vit_layers`) and
  vit-tiny (:mod:`.vit`, its plan in :mod:`.vit_plan`).
"""

from .dense import Dense, ReLU
from .layers import SparseLinear
from .gated_diagonal import GatedDiagonalLinear
from ..kernels.host_loss import softmax_cross_entropy
from .model import MLP, ModelError, build_mlp, parse_hidden
from .conv import Conv2d, SparseConv2d
from .norm import BatchNorm2d
from .pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d
from .network import Network, NetworkError, Reshape, Residual
from .attention import MultiHeadSelfAttention, TokenLinear
from .transformer import GELU, LayerNorm, TransformerBlock
from .vit_layers import PatchEmbedding
from .models import MODELS, build_model
from .parameter import Parameter

__all__ = [
    "MLP",
    "MODELS",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dense",
    "Flatten",
    "GELU",
    "GatedDiagonalLinear",
    "GlobalAvgPool2d",
    "LayerNorm",
    "MaxPool2d",
    "ModelError",
    "MultiHeadSelfAttention",
    "Network",
    "NetworkError",
    "Parameter",
    "PatchEmbedding",
    "ReLU",
    "Reshape",
    "Residual",
    "SparseConv2d",
    "SparseLinear",
    "TokenLinear",
    "TransformerBlock",
    "build_mlp",
    "build_model",
    "parse_hidden",
    "softmax_cross_entropy",
]
