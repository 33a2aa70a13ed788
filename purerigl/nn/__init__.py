"""Neural-network building blocks over sparse formats."""

from .layers import Dense, ReLU, SparseLinear
from .loss import softmax_cross_entropy
from .model import MLP, ModelError, build_mlp, parse_hidden
from .parameter import Parameter

__all__ = [
    "MLP",
    "Dense",
    "ModelError",
    "Parameter",
    "ReLU",
    "SparseLinear",
    "build_mlp",
    "parse_hidden",
    "softmax_cross_entropy",
]
