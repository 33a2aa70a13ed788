"""The dense layers of the MLP, with a hand-written forward and backward: Dense (for layers a budget keeps
dense) and ReLU. Same interface as :class:`~purerigl.nn.layers.SparseLinear` (``forward``, ``backward``,
``parameters``; see :mod:`.layers`); they compute through their backend's array operations
(``dense_matmul``, ``relu_forward`` ...), on host arrays or, on cuda, device arrays.
"""

from __future__ import annotations

import numpy as np

from ..kernels import get_backend
from .parameter import Parameter, SyncsParameters


class Dense(SyncsParameters):
    """A dense linear layer ``Y = X W^T + b`` (for layers kept dense): BLAS on the host backends,
    the dense kernels of :mod:`purerigl.kernels.cuda.arrays` on cuda.

    Parameters
    ----------
    weight : float32 ndarray (n_out, n_in)
    bias : float32 ndarray (n_out,), optional
    backend : str | Backend, optional
        Whose array operations compute it (see :func:`purerigl.get_backend`).
    """

    def __init__(self, weight: np.ndarray, bias=None, name: str = "layer", needs_input_grad=True, backend=None):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        b = np.zeros(weight.shape[0], dtype=np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        self.name = name
        self.needs_input_grad = needs_input_grad
        self.backend = get_backend(backend)
        self.weight = Parameter(f"{name}.weight", weight, backend=self.backend)
        self.bias = Parameter(f"{name}.bias", b, backend=self.backend)
        self._X = None

    @classmethod
    def kaiming(cls, shape, rng, name: str = "layer", needs_input_grad=True, backend=None) -> "Dense":
        """Weights N(0, 2 / n_in) (Kaiming normal), bias 0."""
        n_out, n_in = shape
        w = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        return cls(w, name=name, needs_input_grad=needs_input_grad, backend=backend)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.value.shape

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def forward(self, X):
        """X (B, n_in) -> Y (B, n_out).

        .. math:: Y = X W^T + \\mathbf{1} b^T
        """
        self._X = X
        Y = self.backend.dense_matmul(self.weight.value, X)
        return self.backend.add_bias(Y, self.bias.value)

    def backward(self, dY):
        """dY (B, n_out) -> dX (B, n_in); dW = dY^T X, db = sum_b dY."""
        self.backend.dense_grad(self._X, dY, out=self.weight.grad)
        self.backend.bias_grad(dY, self.bias.grad)
        if not self.needs_input_grad:
            return None
        return self.backend.dense_matmul_t(self.weight.value, dY)

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (its gradients restart at zero)."""
        self._move_parameters(get_backend(backend))
        self._X = None

    def __repr__(self) -> str:
        return f"Dense(shape={self.shape})"


class ReLU:
    """``Y = max(X, 0)``; the backward passes dY where X > 0.

    Parameters
    ----------
    backend : str | Backend, optional
        Whose ``relu_forward`` / ``relu_backward`` it calls.
    """

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self._mask = None

    def parameters(self) -> list[Parameter]:
        return []

    def forward(self, X):
        """.. math:: Y = [X > 0] \\, X"""
        Y, self._mask = self.backend.relu_forward(X)
        return Y

    def backward(self, dY):
        """.. math:: dX = [X > 0] \\, dY"""
        return self.backend.relu_backward(dY, self._mask)

    def __repr__(self) -> str:
        return "ReLU()"
