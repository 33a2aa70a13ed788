"""Transformer building blocks over (B, T, d) tokens: LayerNorm, GELU and the pre-norm block (the
layers around the blocks of a vision transformer, patch embedding, class token, position embeddings and
class-token pooling, are in :mod:`.vit_layers`).

Every layer has the interface of :mod:`.layers` (``forward`` keeps what ``backward`` needs;
``backward`` writes ``param.grad`` in place and returns the input gradient; ``parameters``;
``sync_to_host`` / ``sync_to_device`` / ``set_backend``) and computes with its backend's operations
(``layer_norm_forward``, ``gelu_forward``, ``add`` ...: :data:`purerigl.kernels.registry.ARRAY_OPS`),
one code path on every backend: NumPy on the host backends (the specification,
:mod:`purerigl.kernels.host_transformer`, in the input's dtype: float32 to train, float64 for gradient
checks; the parameter-holding layers take a ``dtype``), CUDA kernels on device arrays on cuda
(float32; :mod:`purerigl.kernels.cuda.transformer`), where parameters and activations stay on the
device and only the host mirrors of the parameters are refreshed on request. The weight matrices are
:class:`~.attention.TokenLinear` layers around a :class:`~.layers.SparseLinear` or a
:class:`~.dense.Dense` (:mod:`.attention`).

A vision transformer (:mod:`.vit`) chains them with the layers of :mod:`.vit_layers`.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..kernels import get_backend
from .attention import (
    MultiHeadSelfAttention,
    TokenLinear,
    TransformerBackendError,
    as_token_linear,
    fm_to_tokens,
    tokens_to_fm,
)
from .parameter import Parameter, SyncsChildren, SyncsParameters

__all__ = [
    "GELU",
    "LayerNorm",
    "MultiHeadSelfAttention",
    "TokenLinear",
    "TransformerBackendError",
    "TransformerBlock",
]


class _TokenLayer(SyncsParameters):
    """The residency part of the interface for a layer that owns its parameters (if any) directly: they
    live where its backend computes, with host mirrors (:class:`~.parameter.Parameter`)."""

    def __init__(self, backend=None):
        self.backend = get_backend(backend)

    def parameters(self) -> list[Parameter]:
        return []

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (gradients restart at zero)."""
        self._move_parameters(get_backend(backend))


# --------------------------------------------------------------------------------------------------
# normalisation and activation


class LayerNorm(_TokenLayer):
    """Layer normalisation over the last axis (the token width), with learnt scale and shift.

    .. math::

        \\mu = \\frac{1}{d} \\sum_i x_i, \\qquad \\sigma^2 = \\frac{1}{d} \\sum_i (x_i - \\mu)^2, \\qquad
        \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad y = \\gamma \\odot \\hat x + \\beta

    per token (no running statistics: training and evaluation compute the same).

    Parameters
    ----------
    d : int
    eps : float
        Added to the variance (PyTorch's default 1e-5).
    name : str
        Parameters ``{name}.weight`` (gamma, ones) and ``{name}.bias`` (beta, zeros), without weight decay.
    backend : str | Backend, optional
        Whose ``layer_norm_forward`` / ``layer_norm_backward`` it calls.
    dtype : numpy dtype
        Of the parameters (float32 default; float64 for gradient checks).
    """

    def __init__(self, d: int, eps: float = 1e-5, name: str = "ln", backend=None, dtype=np.float32):
        super().__init__(backend)
        self.d, self.eps, self.name = int(d), float(eps), name
        self.weight = Parameter(f"{name}.weight", np.ones(self.d, dtype), decay=False, backend=self.backend)
        self.bias = Parameter(f"{name}.bias", np.zeros(self.d, dtype), decay=False, backend=self.backend)
        self._xhat = self._inv = None  # backend arrays (..., d) and (..., 1) of the last forward

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def output_shape(self, shape: tuple) -> tuple:
        if len(shape) < 1 or shape[-1] != self.d:
            raise ShapeError(f"layer normalisation takes (..., {self.d}) per sample, got {tuple(shape)}")
        return tuple(shape)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (..., d) -> Y (..., d)."""
        if tuple(X.shape)[-1] != self.d:  # tuple(): the CUDA simulator's shapes take no negative index
            raise ShapeError(f"layer normalisation takes (..., {self.d}), got an input of shape {tuple(X.shape)}")
        Y, self._xhat, self._inv = self.backend.layer_norm_forward(X, self.weight.value, self.bias.value, self.eps)
        return Y

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (..., d) -> dX; fills ``weight.grad`` (gamma) and ``bias.grad`` (beta).

        .. math::

            d\\gamma = \\sum_{\\text{tokens}} dy \\odot \\hat x, \\qquad d\\beta = \\sum_{\\text{tokens}} dy, \\qquad
            g = \\gamma \\odot dy, \\qquad
            dx = \\frac{1}{\\sqrt{\\sigma^2 + \\epsilon}}
                 \\big(g - \\overline{g} - \\hat x \\, \\overline{g \\odot \\hat x}\\big)

        with the bars the means over the d features of the token.
        """
        return self.backend.layer_norm_backward(dY, self._xhat, self._inv, self.weight.value, self.weight.grad,
                                                self.bias.grad)

    def __repr__(self) -> str:
        return f"LayerNorm({self.d}, eps={self.eps})"


class GELU(_TokenLayer):
    """The Gaussian error linear unit, exact (erf) form: PyTorch's ``nn.GELU()`` default, not the tanh
    approximation.

    .. math::

        y = x \\, \\Phi(x) = \\frac{x}{2} \\Big(1 + \\mathrm{erf}\\big(x / \\sqrt 2\\big)\\Big), \\qquad
        \\frac{dy}{dx} = \\Phi(x) + x \\, \\varphi(x), \\quad \\varphi(x) = \\frac{e^{-x^2 / 2}}{\\sqrt{2 \\pi}}

    (the backend's ``gelu_forward`` / ``gelu_backward``; on the host erf is :func:`scipy.special.erf`, in
    the input's dtype).
    """

    def __init__(self, backend=None):
        super().__init__(backend)
        self._X = None

    def output_shape(self, shape: tuple) -> tuple:
        return tuple(shape)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X -> x Phi(x), elementwise."""
        self._X = X
        return self.backend.gelu_forward(X)

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY -> dY (Phi(x) + x phi(x))."""
        return self.backend.gelu_backward(dY, self._X)

    def __repr__(self) -> str:
        return "GELU(approximate='none')"


# --------------------------------------------------------------------------------------------------
# the block


class TransformerBlock(SyncsChildren):
    """A pre-norm transformer encoder block with residual connections.

    .. math::

        H = X + \\mathrm{attn}(\\mathrm{LN}_1(X)), \\qquad
        Y = H + \\mathrm{fc_2}\\big(\\mathrm{GELU}(\\mathrm{fc_1}(\\mathrm{LN}_2(H)))\\big)

    with fc1 (r d, d) and fc2 (d, r d) token-wise. The backward adds each branch's input gradient to the
    gradient flowing through the identity:

    .. math:: dH = dY + J_{\\mathrm{mlp}}^T dY, \\qquad dX = dH + J_{\\mathrm{attn}}^T dH

    Where both MLP layers compute feature-major (sparse, on a host backend, from 4 token rows:
    :meth:`TokenLinear.runs_feature_major`), the MLP keeps its activations feature-major from fc1's
    input to fc2's output, GELU included (elementwise, so the layout does not matter to it): two
    transposes forward and two backward instead of four and four.

    Parameters
    ----------
    attn : MultiHeadSelfAttention
    fc1, fc2 : TokenLinear | SparseLinear | Dense
        The MLP's layers (a 2-d layer is wrapped in a TokenLinear).
    name : str
        Prefix of the normalisations' names (``{name}.ln1``, ``{name}.ln2``).
    backend : str | Backend, optional
    dtype : numpy dtype
        Of the normalisations' parameters.
    """

    def __init__(self, attn: MultiHeadSelfAttention, fc1, fc2, name: str = "block", backend=None,
                 dtype=np.float32):
        d = attn.d
        self.name, self.attn = name, attn
        self.fc1, self.fc2 = as_token_linear(fc1, "gelu"), as_token_linear(fc2)
        hidden = self.fc1.shape[0]
        if self.fc1.shape[1] != d or self.fc2.shape != (d, hidden):
            raise ShapeError(f"the MLP of a width-{d} block needs fc1 (r d, {d}) and fc2 ({d}, r d), got "
                             f"{self.fc1.shape} and {self.fc2.shape}")
        self.fc1.activation = "gelu"
        backend = attn.backend if backend is None else backend
        self.ln1 = LayerNorm(d, name=f"{name}.ln1", backend=backend, dtype=dtype)
        self.ln2 = LayerNorm(d, name=f"{name}.ln2", backend=backend, dtype=dtype)
        self.gelu = GELU(backend)
        self._mlp_fm = False  # whether the last forward ran the MLP feature-major

    @property
    def backend(self):
        return self.attn.backend

    def children(self) -> list:
        """The sub-layers in network order: ln1, attention (qkv, proj), ln2, fc1, GELU, fc2."""
        return [self.ln1, self.attn, self.ln2, self.fc1, self.gelu, self.fc2]

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.children() for p in layer.parameters()]

    def output_shape(self, shape: tuple) -> tuple:
        return self.attn.output_shape(tuple(shape))

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d) -> Y (B, T, d)."""
        add = self.backend.add
        H = add(X, self.attn.forward(self.ln1.forward(X)))
        return add(H, self._mlp_forward(self.ln2.forward(H)))

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, T, d) -> dX (B, T, d); fills every sub-layer's gradients."""
        add = self.backend.add
        dH = add(dY, self.ln2.backward(self._mlp_backward(dY)))
        return add(dH, self.ln1.backward(self.attn.backward(dH)))

    def _mlp_forward(self, X):
        """fc2(GELU(fc1(X))), X (B, T, d) -> (B, T, d); feature-major inside where both layers are."""
        *lead, _ = (int(n) for n in X.shape)  # (a device array's shape takes no negative index)
        n_rows = math.prod(lead)
        self._mlp_fm = self.fc1.runs_feature_major(n_rows) and self.fc2.runs_feature_major(n_rows)
        if not self._mlp_fm:
            return self.fc2.forward(self.gelu.forward(self.fc1.forward(X)))
        XT = tokens_to_fm(self.backend, X)  # (d, B*T)
        YT = self.fc2.forward_fm(self.gelu.forward(self.fc1.forward_fm(XT, lead)), lead)  # (d, B*T)
        return fm_to_tokens(self.backend, YT, lead)  # (B, T, d)

    def _mlp_backward(self, dY):
        """The MLP's input gradient (B, T, d) from dY (B, T, d), in the layout of the last forward."""
        if not self._mlp_fm:
            return self.fc1.backward(self.gelu.backward(self.fc2.backward(dY)))
        *lead, _ = (int(n) for n in dY.shape)
        dXT = self.fc1.backward_fm(self.gelu.backward(self.fc2.backward_fm(tokens_to_fm(self.backend, dY))))  # (d, B*T)
        return fm_to_tokens(self.backend, dXT, lead)  # (B, T, d)

    def set_backend(self, backend) -> None:
        for layer in self.children():
            layer.set_backend(backend)

    def __repr__(self) -> str:
        return f"TransformerBlock({self.name!r}, {self.attn!r}, fc1={self.fc1!r}, fc2={self.fc2!r})"
