"""Layers with a hand-written forward and backward: SparseLinear, Dense, ReLU.

Every layer has the same small interface:

- ``forward(X) -> Y`` keeps what the backward needs;
- ``backward(dY) -> dX`` writes the gradients of its parameters into ``param.grad`` and returns the
  gradient with respect to its input (``None`` when ``needs_input_grad`` is False, as for the first
  layer of a network, whose input gradient nobody uses);
- ``parameters() -> list[Parameter]``.
"""

from __future__ import annotations

import numpy as np

from ..formats import SparseFormat
from ..kernels import get_backend
from .parameter import Parameter


class SparseLinear:
    """``Y = X W^T + b`` with W stored only in a sparse format; no dense weight or gradient ever exists.

    .. math::

        Y = X W^T + b, \\qquad
        \\frac{\\partial L}{\\partial W_{ij}} = \\sum_b dY_{bi} X_{bj} \\ \\text{(stored (i, j) only)}, \\qquad
        \\frac{\\partial L}{\\partial b} = \\sum_b dY_b, \\qquad dX = dY W

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (n_out, n_in)
        Its ``values`` array is the weight parameter's ``value`` (the same object).
    bias : float32 ndarray (n_out,), optional
        Zeros if omitted. Ablated rows (Condensed) output exactly their bias.
    backend : str | Backend, optional
        Which implementation of the sparse ops to call (see :func:`purerigl.get_backend`).
    name : str
        Prefix of the parameter names (``{name}.values``, ``{name}.bias``).
    """

    def __init__(self, W: SparseFormat, bias=None, backend=None, name: str = "layer", needs_input_grad=True):
        self.W = W
        self.backend = get_backend(backend)
        self.name = name
        self.needs_input_grad = needs_input_grad
        b = np.zeros(W.n_out, dtype=np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        self.weight = Parameter(f"{name}.values", W.values)
        self.bias = Parameter(f"{name}.bias", b)
        self._X = None
        self._dY = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.W.shape

    @property
    def last_input(self) -> np.ndarray | None:
        """X (B, n_in) of the last forward: DST growth scores read G = dY^T X from it, never storing G."""
        return self._X

    @property
    def last_output_grad(self) -> np.ndarray | None:
        """dY (B, n_out) of the last backward."""
        return self._dY

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, n_in) -> Y (B, n_out)."""
        self._X = X
        Y = self.backend.matmul(self.W, X)
        Y += self.bias.value
        return Y

    def backward(self, dY: np.ndarray) -> np.ndarray | None:
        """dY (B, n_out) -> dX (B, n_in); fills ``weight.grad`` (shaped like W.values) and ``bias.grad``."""
        self._dY = dY
        self.backend.sddmm(self.W, self._X, dY, out=self.weight.grad)
        np.sum(dY, axis=0, out=self.bias.grad)
        if not self.needs_input_grad:
            return None
        return self.backend.matmul_t(self.W, dY)

    def set_structure(self, W: SparseFormat) -> None:
        """Install a new sparse matrix (after a topology change); the weight parameter follows it."""
        if W.shape != self.W.shape:
            raise ValueError(f"new structure has shape {W.shape}, layer has {self.W.shape}")
        self.W = W
        self.weight.replace(W.values)

    def __repr__(self) -> str:
        return f"SparseLinear({self.W!r}, backend={self.backend.name!r})"


class Dense:
    """A dense linear layer ``Y = X W^T + b`` computed with NumPy BLAS (for layers kept dense).

    Parameters
    ----------
    weight : float32 ndarray (n_out, n_in)
    bias : float32 ndarray (n_out,), optional
    """

    def __init__(self, weight: np.ndarray, bias=None, name: str = "layer", needs_input_grad=True):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        b = np.zeros(weight.shape[0], dtype=np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        self.name = name
        self.needs_input_grad = needs_input_grad
        self.weight = Parameter(f"{name}.weight", weight)
        self.bias = Parameter(f"{name}.bias", b)
        self._X = None

    @classmethod
    def kaiming(cls, shape, rng, name: str = "layer", needs_input_grad=True) -> "Dense":
        """Weights N(0, 2 / n_in) (Kaiming normal), bias 0."""
        n_out, n_in = shape
        w = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        return cls(w, name=name, needs_input_grad=needs_input_grad)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.value.shape

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, n_in) -> Y (B, n_out)."""
        self._X = X
        Y = X @ self.weight.value.T
        Y += self.bias.value
        return Y

    def backward(self, dY: np.ndarray) -> np.ndarray | None:
        """dY (B, n_out) -> dX (B, n_in); dW = dY^T X, db = sum_b dY."""
        np.matmul(dY.T, self._X, out=self.weight.grad)
        np.sum(dY, axis=0, out=self.bias.grad)
        if not self.needs_input_grad:
            return None
        return dY @ self.weight.value

    def __repr__(self) -> str:
        return f"Dense(shape={self.shape})"


class ReLU:
    """``Y = max(X, 0)``; the backward passes dY where X > 0."""

    def __init__(self):
        self._mask = None

    def parameters(self) -> list[Parameter]:
        return []

    def forward(self, X: np.ndarray) -> np.ndarray:
        self._mask = X > 0
        return np.where(self._mask, X, np.float32(0.0))

    def backward(self, dY: np.ndarray) -> np.ndarray:
        return np.where(self._mask, dY, np.float32(0.0))

    def __repr__(self) -> str:
        return "ReLU()"
