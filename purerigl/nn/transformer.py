"""Transformer building blocks over (B, T, d) tokens: LayerNorm, GELU, the pre-norm block, and the
layers around the blocks of a vision transformer (patch embedding, class token, position embeddings,
class-token pooling).

Every layer has the interface of :mod:`.layers` (``forward`` keeps what ``backward`` needs;
``backward`` writes ``param.grad`` in place and returns the input gradient; ``parameters``;
``sync_to_host`` / ``sync_to_device`` / ``set_backend``), computes with NumPy in the input's dtype
(float32 to train, float64 for gradient checks; the parameter-holding layers take a ``dtype``) and runs
on the host backends only (:func:`~.attention.check_token_backend`). The weight matrices are
:class:`~.attention.TokenLinear` layers around a :class:`~.layers.SparseLinear` or a
:class:`~.layers.Dense` (:mod:`.attention`).

A vision transformer (:mod:`.vit`) chains them::

    images (B, C, H, W) -> PatchEmbedding -> (B, T, d) -> ClassToken -> (B, T + 1, d)
    -> PositionEmbedding -> TransformerBlock x depth -> ClassTokenPool -> (B, d) -> LayerNorm -> head

Class token, not mean pooling: the classifier reads a learned token prepended to the patches, as in the
original ViT and in the SRigL ViT-B/16 setting (torchvision's ``vit_b_16``, ``class_token``), so the
sparse ViT here is the one the paper's numbers were measured on.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from ..errors import ShapeError
from .attention import (
    MultiHeadSelfAttention,
    TokenLinear,
    TransformerBackendError,
    as_token_linear,
    check_token_backend,
)
from .parameter import Parameter, SyncsChildren, SyncsParameters

__all__ = [
    "GELU",
    "ClassToken",
    "ClassTokenPool",
    "LayerNorm",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "PositionEmbedding",
    "TokenLinear",
    "TransformerBackendError",
    "TransformerBlock",
]


class _HostLayer(SyncsParameters):
    """The residency part of the interface for a layer whose parameters live on the host."""

    what = "transformer layers"

    def __init__(self, backend=None):
        self.backend = check_token_backend(backend, self.what)

    def parameters(self) -> list[Parameter]:
        return []

    def set_backend(self, backend) -> None:
        """Move the layer to another host backend (gradients restart at zero)."""
        self.backend = check_token_backend(backend, self.what)
        for p in self.parameters():
            p.backend = self.backend
            p.replace(p.value, host=p.host)


# --------------------------------------------------------------------------------------------------
# normalisation and activation


class LayerNorm(_HostLayer):
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
        "reference" or "cpu".
    dtype : numpy dtype
        Of the parameters (float32 default; float64 for gradient checks).
    """

    def __init__(self, d: int, eps: float = 1e-5, name: str = "ln", backend=None, dtype=np.float32):
        super().__init__(backend)
        self.d, self.eps, self.name = int(d), float(eps), name
        self.weight = Parameter(f"{name}.weight", np.ones(self.d, dtype), decay=False, backend=self.backend)
        self.bias = Parameter(f"{name}.bias", np.zeros(self.d, dtype), decay=False, backend=self.backend)
        self._xhat = self._inv = None

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def output_shape(self, shape: tuple) -> tuple:
        if len(shape) < 1 or shape[-1] != self.d:
            raise ShapeError(f"layer normalisation takes (..., {self.d}) per sample, got {tuple(shape)}")
        return tuple(shape)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (..., d) -> Y (..., d)."""
        if X.shape[-1] != self.d:
            raise ShapeError(f"layer normalisation takes (..., {self.d}), got an input of shape {X.shape}")
        xc = X - X.mean(axis=-1, keepdims=True)  # (..., d)
        inv = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + self.eps)  # (..., 1)
        self._xhat, self._inv = xc * inv, inv
        return self._xhat * self.weight.value + self.bias.value

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (..., d) -> dX; fills ``weight.grad`` (gamma) and ``bias.grad`` (beta).

        .. math::

            d\\gamma = \\sum_{\\text{tokens}} dy \\odot \\hat x, \\qquad d\\beta = \\sum_{\\text{tokens}} dy, \\qquad
            g = \\gamma \\odot dy, \\qquad
            dx = \\frac{1}{\\sqrt{\\sigma^2 + \\epsilon}}
                 \\big(g - \\overline{g} - \\hat x \\, \\overline{g \\odot \\hat x}\\big)

        with the bars the means over the d features of the token.
        """
        lead = tuple(range(dY.ndim - 1))
        self.weight.grad[...] = (dY * self._xhat).sum(axis=lead)
        self.bias.grad[...] = dY.sum(axis=lead)
        g = dY * self.weight.value  # (..., d)
        return self._inv * (g - g.mean(axis=-1, keepdims=True)
                            - self._xhat * (g * self._xhat).mean(axis=-1, keepdims=True))

    def __repr__(self) -> str:
        return f"LayerNorm({self.d}, eps={self.eps})"


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELU(_HostLayer):
    """The Gaussian error linear unit, exact (erf) form: PyTorch's ``nn.GELU()`` default, not the tanh
    approximation.

    .. math::

        y = x \\, \\Phi(x) = \\frac{x}{2} \\Big(1 + \\mathrm{erf}\\big(x / \\sqrt 2\\big)\\Big), \\qquad
        \\frac{dy}{dx} = \\Phi(x) + x \\, \\varphi(x), \\quad \\varphi(x) = \\frac{e^{-x^2 / 2}}{\\sqrt{2 \\pi}}

    (erf from :func:`scipy.special.erf`, in the input's dtype).
    """

    def __init__(self, backend=None):
        super().__init__(backend)
        self._X = None

    def output_shape(self, shape: tuple) -> tuple:
        return tuple(shape)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X -> x Phi(x), elementwise."""
        self._X = X
        return X * (0.5 * (1.0 + erf(X * _SQRT_HALF))).astype(X.dtype, copy=False)

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY -> dY (Phi(x) + x phi(x))."""
        X = self._X
        cdf = 0.5 * (1.0 + erf(X * _SQRT_HALF))
        pdf = np.exp(-0.5 * X * X) * _INV_SQRT_2PI
        return dY * (cdf + X * pdf).astype(dY.dtype, copy=False)

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
        H = X + self.attn.forward(self.ln1.forward(X))
        return H + self.fc2.forward(self.gelu.forward(self.fc1.forward(self.ln2.forward(H))))

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, T, d) -> dX (B, T, d); fills every sub-layer's gradients."""
        dH = dY + self.ln2.backward(self.fc1.backward(self.gelu.backward(self.fc2.backward(dY))))
        return dH + self.ln1.backward(self.attn.backward(dH))

    def set_backend(self, backend) -> None:
        for layer in self.children():
            layer.set_backend(backend)

    def __repr__(self) -> str:
        return f"TransformerBlock({self.name!r}, {self.attn!r}, fc1={self.fc1!r}, fc2={self.fc2!r})"


# --------------------------------------------------------------------------------------------------
# around the blocks: patches in, class token out


class PatchEmbedding:
    """Images (B, C, H, W) -> tokens (B, T, d): a linear map of each non-overlapping p x p patch.

    Patch (u, v) (token t = u (W / p) + v, row-major) is flattened in the order (c, i, j), i.e. column
    c p^2 + i p + j, as a convolution's filter matrix (:mod:`.patches`), so the layer is the convolution
    with kernel = stride = p that PyTorch's ViTs use:

    .. math::

        P[b, t, (c, i, j)] = X[b, c, p u + i, p v + j], \\qquad Y = P E^T + \\mathbf{1} b^T, \\qquad
        dX = \\mathrm{unpatch}(dY \\, E)

    Parameters
    ----------
    patch : int
        p, dividing H and W.
    c_in : int
    linear : SparseLinear | Dense | TokenLinear
        The embedding E (d, c_in p^2); a Dense by default in the ViT (:mod:`.vit`). Its name is the
        layer's (``embed``), and ``.linear`` (a weight layer of the network, like a sparse
        convolution's) is the wrapped 2-d layer.
    """

    def __init__(self, patch: int, c_in: int, linear):
        self.patch, self.c_in = int(patch), int(c_in)
        self.proj = as_token_linear(linear)
        if self.patch < 1 or self.proj.shape[1] != self.c_in * self.patch ** 2:
            raise ShapeError(f"a patch embedding of {self.c_in} channels and {self.patch} x {self.patch} patches "
                             f"needs an embedding with {self.c_in * self.patch ** 2} columns, got {self.proj.shape}")
        self._shape = None

    # the weight layer's interface (as SparseConv2d)
    @property
    def linear(self):
        """The 2-d layer holding the embedding matrix (what ``Network.linears`` lists)."""
        return self.proj.linear

    name = property(lambda self: self.proj.name)
    backend = property(lambda self: self.proj.backend)
    shape = property(lambda self: self.proj.shape, doc="(d, c_in p^2) of the embedding matrix.")
    weight = property(lambda self: self.proj.weight)
    bias = property(lambda self: self.proj.bias)

    @property
    def needs_input_grad(self) -> bool:
        return self.proj.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self.proj.needs_input_grad = value

    @property
    def W(self):
        return self.proj.W

    def parameters(self) -> list[Parameter]:
        return self.proj.parameters()

    def output_shape(self, shape: tuple) -> tuple:
        """(C, H, W) -> (H W / p^2, d)."""
        p = self.patch
        if len(shape) != 3 or shape[0] != self.c_in or shape[1] % p or shape[2] % p:
            raise ShapeError(f"a patch embedding takes ({self.c_in}, H, W) per sample with H and W multiples of "
                             f"{p}, got {tuple(shape)}")
        return (shape[1] // p) * (shape[2] // p), self.shape[0]

    def patches(self, X: np.ndarray) -> np.ndarray:
        """(B, C, H, W) -> (B, T, C p^2), T = H W / p^2 (a copy)."""
        B, C, H, W = X.shape
        p = self.patch
        six = X.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
        return np.ascontiguousarray(six).reshape(B, (H // p) * (W // p), C * p * p)  # (B, T, C*p*p)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, C, H, W) -> Y (B, T, d)."""
        if X.ndim != 4:
            raise ShapeError(f"a patch embedding takes (B, C, H, W) images, got an input of shape {X.shape}")
        self.output_shape(X.shape[1:])
        self._shape = X.shape
        return self.proj.forward(self.patches(X))

    def backward(self, dY: np.ndarray):
        """dY (B, T, d) -> dX (B, C, H, W) (None if not ``needs_input_grad``)."""
        dP = self.proj.backward(dY)  # (B, T, C*p*p)
        if dP is None:
            return None
        B, C, H, W = self._shape
        p = self.patch
        six = dP.reshape(B, H // p, W // p, C, p, p).transpose(0, 3, 1, 4, 2, 5)  # (B, C, H/p, p, W/p, p)
        return np.ascontiguousarray(six).reshape(B, C, H, W)  # (B, C, H, W)

    def sync_to_host(self) -> None:
        self.proj.sync_to_host()

    def sync_to_device(self) -> None:
        self.proj.sync_to_device()

    def set_backend(self, backend) -> None:
        self.proj.set_backend(backend)

    def __repr__(self) -> str:
        return f"PatchEmbedding(patch={self.patch}, c_in={self.c_in}, {self.proj.linear!r})"


class ClassToken(_HostLayer):
    """Prepends a learned class token: (B, T, d) -> (B, T + 1, d).

    .. math:: Y[b, 0] = c, \\qquad Y[b, 1 + t] = X[b, t], \\qquad dc = \\sum_b dY[b, 0], \\qquad dX = dY[:, 1:]

    Parameters
    ----------
    d : int
    name : str
        The parameter's name (``cls_token``: (d,), zeros, as torchvision's ViT; no weight decay).
    backend : str | Backend, optional
    dtype : numpy dtype
    value : ndarray (d,), optional
        The initial token (default zeros).
    """

    def __init__(self, d: int, name: str = "cls_token", backend=None, dtype=np.float32, value=None):
        super().__init__(backend)
        self.d, self.name = int(d), name
        init = np.zeros(self.d, dtype) if value is None else np.array(value, dtype=dtype).reshape(self.d)
        self.token = Parameter(name, init, decay=False, backend=self.backend)

    def parameters(self) -> list[Parameter]:
        return [self.token]

    def output_shape(self, shape: tuple) -> tuple:
        if len(shape) != 2 or shape[1] != self.d:
            raise ShapeError(f"the class token joins (T, {self.d}) tokens, got {tuple(shape)}")
        return shape[0] + 1, self.d

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d) -> Y (B, T + 1, d)."""
        B, T, d = X.shape
        Y = np.empty((B, T + 1, d), dtype=np.result_type(X, self.token.value))
        Y[:, 0] = self.token.value
        Y[:, 1:] = X
        return Y

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, T + 1, d) -> dX (B, T, d); fills the token's gradient."""
        self.token.grad[...] = dY[:, 0].sum(axis=0)
        return dY[:, 1:]

    def __repr__(self) -> str:
        return f"ClassToken({self.d})"


class PositionEmbedding(_HostLayer):
    """Adds learned position embeddings: (B, T, d) -> (B, T, d).

    .. math:: Y[b, t] = X[b, t] + E[t], \\qquad dE = \\sum_b dY[b], \\qquad dX = dY

    Parameters
    ----------
    n_tokens : int
        T (with the class token: patches + 1).
    d : int
    rng : numpy Generator or seed, optional
        Draws E ~ N(0, 0.02^2) (torchvision's ViT); zeros without one.
    name : str
        The parameter's name (``pos_embed``: (T, d); no weight decay).
    backend : str | Backend, optional
    dtype : numpy dtype
    """

    def __init__(self, n_tokens: int, d: int, rng=None, name: str = "pos_embed", backend=None, dtype=np.float32):
        super().__init__(backend)
        self.n_tokens, self.d, self.name = int(n_tokens), int(d), name
        if rng is None:
            init = np.zeros((self.n_tokens, self.d), dtype)
        else:
            rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            init = (0.02 * rng.standard_normal((self.n_tokens, self.d))).astype(dtype)
        self.embedding = Parameter(name, init, decay=False, backend=self.backend)

    def parameters(self) -> list[Parameter]:
        return [self.embedding]

    def output_shape(self, shape: tuple) -> tuple:
        if tuple(shape) != (self.n_tokens, self.d):
            raise ShapeError(f"position embeddings of {self.n_tokens} tokens of width {self.d} take "
                             f"({self.n_tokens}, {self.d}) per sample, got {tuple(shape)}")
        return tuple(shape)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d) -> X + E."""
        self.output_shape(X.shape[1:])
        return X + self.embedding.value

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY -> dY; fills dE = sum_b dY[b]."""
        self.embedding.grad[...] = dY.sum(axis=0)
        return dY

    def __repr__(self) -> str:
        return f"PositionEmbedding({self.n_tokens}, {self.d})"


class ClassTokenPool(_HostLayer):
    """The class token of each sequence: (B, T, d) -> (B, d).

    .. math:: Y[b] = X[b, 0], \\qquad dX[b, 0] = dY[b], \\quad dX[b, t > 0] = 0
    """

    def __init__(self, backend=None):
        super().__init__(backend)
        self._shape = None

    def output_shape(self, shape: tuple) -> tuple:
        if len(shape) != 2:
            raise ShapeError(f"class-token pooling takes (T, d) per sample, got {tuple(shape)}")
        return (shape[1],)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d) -> X[:, 0] (B, d) (a copy)."""
        self._shape = X.shape
        return np.ascontiguousarray(X[:, 0])

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, d) -> dX (B, T, d), zero but at token 0."""
        dX = np.zeros(self._shape, dtype=dY.dtype)
        dX[:, 0] = dY
        return dX

    def __repr__(self) -> str:
        return "ClassTokenPool()"


#: The leaf layer types of this module and :mod:`.attention` (host only), for :class:`~.network.Network`.
TOKEN_LAYERS = (TokenLinear, PatchEmbedding, LayerNorm, GELU, ClassToken, PositionEmbedding, ClassTokenPool)
