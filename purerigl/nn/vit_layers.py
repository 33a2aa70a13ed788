"""The layers around the blocks of a vision transformer: patch embedding, class token, position
embeddings and class-token pooling, over (B, T, d) tokens (interface and residency as in
:mod:`.transformer`: each layer calls its backend's ``patchify``, ``prepend_token``, ``add``,
``first_token`` ... and their backwards, host NumPy on the reference and cpu backends, device arrays on
cuda).

A vision transformer (:mod:`.vit`) chains them with the blocks::

    images (B, C, H, W) -> PatchEmbedding -> (B, T, d) -> ClassToken -> (B, T + 1, d)
    -> PositionEmbedding -> TransformerBlock x depth -> ClassTokenPool -> (B, d) -> LayerNorm -> head

Class token, not mean pooling: the classifier reads a learned token prepended to the patches, as in the
original ViT and in the SRigL ViT-B/16 setting (torchvision's ``vit_b_16``, ``class_token``), so the
sparse ViT here is the one the paper's numbers were measured on.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .attention import TokenLinear, as_token_linear
from .parameter import Parameter
from .transformer import GELU, LayerNorm, _TokenLayer

__all__ = ["TOKEN_LAYERS", "ClassToken", "ClassTokenPool", "PatchEmbedding", "PositionEmbedding"]


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

    def patches(self, X):
        """(B, C, H, W) -> (B, T, C p^2), T = H W / p^2 (a copy; the backend's ``patchify``)."""
        return self.backend.patchify(X, self.patch)

    def forward(self, X):
        """X (B, C, H, W) -> Y (B, T, d)."""
        if len(X.shape) != 4:
            raise ShapeError(f"a patch embedding takes (B, C, H, W) images, got an input of shape {tuple(X.shape)}")
        self.output_shape(tuple(X.shape[1:]))
        self._shape = tuple(int(n) for n in X.shape)
        return self.proj.forward(self.patches(X))

    def backward(self, dY: np.ndarray):
        """dY (B, T, d) -> dX (B, C, H, W) (None if not ``needs_input_grad``)."""
        dP = self.proj.backward(dY)  # (B, T, C*p*p)
        if dP is None:
            return None
        return self.backend.unpatchify(dP, self.patch, self._shape[1:])  # (B, C, H, W)

    def sync_to_host(self) -> None:
        self.proj.sync_to_host()

    def sync_to_device(self) -> None:
        self.proj.sync_to_device()

    def set_backend(self, backend) -> None:
        self.proj.set_backend(backend)

    def __repr__(self) -> str:
        return f"PatchEmbedding(patch={self.patch}, c_in={self.c_in}, {self.proj.linear!r})"


class ClassToken(_TokenLayer):
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

    def forward(self, X):
        """X (B, T, d) -> Y (B, T + 1, d)."""
        return self.backend.prepend_token(X, self.token.value)

    def backward(self, dY):
        """dY (B, T + 1, d) -> dX (B, T, d); fills the token's gradient."""
        return self.backend.prepend_token_backward(dY, self.token.grad)

    def __repr__(self) -> str:
        return f"ClassToken({self.d})"


class PositionEmbedding(_TokenLayer):
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

    def forward(self, X):
        """X (B, T, d) -> X + E (a new array; the backend's ``add``)."""
        self.output_shape(tuple(X.shape[1:]))
        return self.backend.add(X, self.embedding.value)

    def backward(self, dY):
        """dY -> dY; fills dE = sum_b dY[b], the backend's ``bias_grad`` (column sums) of the (B, T d) view."""
        n = self.n_tokens * self.d
        flat = np.ascontiguousarray(dY) if isinstance(dY, np.ndarray) else dY  # device ops return contiguous arrays
        rows = flat.reshape(int(dY.shape[0]), n)  # (B, T, d) -> (B, T*d)
        self.backend.bias_grad(rows, self.embedding.grad.reshape(n))  # into the (T*d,) view of the (T, d) grad
        return dY

    def __repr__(self) -> str:
        return f"PositionEmbedding({self.n_tokens}, {self.d})"


class ClassTokenPool(_TokenLayer):
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

    def forward(self, X):
        """X (B, T, d) -> X[:, 0] (B, d) (a copy)."""
        self._shape = tuple(int(n) for n in X.shape)
        return self.backend.first_token(X)

    def backward(self, dY):
        """dY (B, d) -> dX (B, T, d), zero but at token 0."""
        return self.backend.first_token_backward(dY, self._shape[1])

    def __repr__(self) -> str:
        return "ClassTokenPool()"


#: The leaf layer types of :mod:`.transformer`, :mod:`.attention` and this module, for
#: :class:`~.network.Network`.
TOKEN_LAYERS = (TokenLinear, PatchEmbedding, LayerNorm, GELU, ClassToken, PositionEmbedding, ClassTokenPool)
