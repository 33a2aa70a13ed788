"""Neural-network building blocks over sparse formats: parameters, layers, the MLP and its loss.
Imports formats and kernels (never optim, dst or above).
"""

from .layers import Dense, ReLU, SparseLinear
from .gated_diagonal import GatedDiagonalLinear
from ..kernels.host_loss import softmax_cross_entropy
from .model import MLP, ModelError, build_mlp, parse_hidden
from .parameter import Parameter

__all__ = [
    "MLP",
    "Dense",
    "GatedDiagonalLinear",
    "ModelError",
    "Parameter",
    "ReLU",
    "SparseLinear",
    "build_mlp",
    "parse_hidden",
    "softmax_cross_entropy",
]
