"""Token-wise linear layers and multi-head self-attention over (B, T, d) activations.

A transformer's activations are B sequences of T tokens of width d. Its linear layers act on every
token alike, so a linear layer sees (B, T, d_in) as B * T rows: :class:`TokenLinear` reshapes to
(B * T, d_in), runs a :class:`~.layers.SparseLinear` (or a :class:`~.layers.Dense`) and reshapes back.
The sparse layer's saved batch is then the B * T tokens (B * T, d_in) and their output gradient
(B * T, d_out), whose dY^T X is the weight gradient: the streamed growth selections of every DST
method read it unchanged and the dense gradient is never stored (DESIGN.md section 4b).

:class:`MultiHeadSelfAttention` is scaled dot-product attention with h heads of width d_h = d / h,

.. math::

    [Q \\ K \\ V] = X W_{qkv}^T + b_{qkv}, \\qquad
    A_j = \\mathrm{softmax}\\Big(\\frac{Q_j K_j^T}{\\sqrt{d_h}}\\Big), \\qquad
    O_j = A_j V_j, \\qquad Y = [O_1 \\cdots O_h] W_o^T + b_o

where Q_j, K_j, V_j (T, d_h) are columns j d_h ... (j + 1) d_h - 1 of Q, K, V (per sequence) and the
softmax runs over the keys (the last axis).

Fused QKV. The three projections are ONE matrix W_qkv (3d, d), rows 0 ... d - 1 the queries, d ... 2d - 1
the keys, 2d ... 3d - 1 the values (the layout of PyTorch's ``nn.MultiheadAttention.in_proj_weight``).
This is how the SRigL official code treats attention (PAPERS.md section 3.4b): ``in_proj_weight`` is
one sparse matrix whose 3d output rows are the neurons (constant fan-in per row, whole rows ablated),
and ``out_proj`` is another; one matrix per block also makes the block's QKV one entry of the budget
(uniform, ER, ERK see (3d, d) as one layer). No per-head structure is imposed: a head's d_h query rows
may end up with other fan-ins or ablations than another head's (the DST methods see rows, not heads).

These layers compute with NumPy on the host: the reference and cpu backends (whose products the
sparse and dense projections call); a device backend is refused (:class:`TransformerBackendError`).
They compute in the input's dtype (float64 for gradient checks when the projections are dense with
float64 parameters); sparse projections are float32 only.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError, ShapeError
from ..kernels import get_backend
from .layers import Dense, SparseLinear
from .parameter import Parameter, SyncsChildren

__all__ = [
    "MultiHeadSelfAttention",
    "TokenLinear",
    "TransformerBackendError",
    "attention_backward",
    "attention_forward",
    "check_token_backend",
]


class TransformerBackendError(BackendError):
    """A transformer building block was given a backend it cannot run on (a device backend)."""


def check_token_backend(backend, what: str = "transformer layers"):
    """The backend named by ``backend`` (see :func:`purerigl.get_backend`), refused if it is resident.

    Raises
    ------
    TransformerBackendError
        (a :class:`~purerigl.errors.PureriglError` and ``ValueError``) for a backend whose arrays live
        on a device (``backend.resident``, i.e. cuda).
    """
    b = get_backend(backend)
    if b.resident:
        raise TransformerBackendError(
            f"{what} run on the reference and cpu backends only for now, got backend {b.name!r}; "
            "build the model with backend='cpu' (or 'reference')"
        )
    return b


def _check_tokens(X, width: int, what: str) -> None:
    if X.ndim < 2 or X.shape[-1] != width:
        raise ShapeError(f"{what} takes (..., {width}) tokens, got an input of shape {X.shape}")


# --------------------------------------------------------------------------------------------------
# token-wise linear layer


class TokenLinear:
    """A linear layer applied to every token: (B, T, d_in) -> (B, T, d_out) (any leading axes).

    .. math:: Y[b, t] = W X[b, t] + b_{\\mathrm{bias}}, \\qquad
              dW = \\sum_{b, t} dY[b, t] \\, X[b, t]^T, \\qquad dX[b, t] = W^T dY[b, t]

    computed as the wrapped layer on the (B * T, d_in) rows.

    Parameters
    ----------
    linear : SparseLinear | Dense
        The layer doing the product, shape (d_out, d_in); its ``name`` and parameters are this
        layer's. For a :class:`SparseLinear` it is what the DST methods update (``Network.linears``
        lists it, as a sparse convolution's ``.linear``).
    activation : str
        What follows the layer inside its block, for :meth:`Network.describe` ("gelu" for an MLP's
        first layer, else "none").

    Raises
    ------
    TransformerBackendError
        When ``linear`` computes on a device backend.
    """

    def __init__(self, linear, activation: str = "none"):
        if not isinstance(linear, (SparseLinear, Dense)):
            raise TypeError(f"TokenLinear wraps a SparseLinear or a Dense, got {type(linear).__name__}")
        check_token_backend(linear.backend, "token-wise linear layers")
        self.linear = linear
        self.activation = activation
        self._lead = None  # the leading axes (B, T) of the last forward

    # --------------------------------------------------------------------------------- the linear's
    @property
    def name(self) -> str:
        return self.linear.name

    @property
    def backend(self):
        return self.linear.backend

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the weight matrix."""
        return tuple(self.linear.shape)

    @property
    def needs_input_grad(self) -> bool:
        return self.linear.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self.linear.needs_input_grad = bool(value)

    @property
    def weight(self) -> Parameter:
        return self.linear.weight

    @property
    def bias(self) -> Parameter:
        return self.linear.bias

    @property
    def W(self):
        """The sparse matrix on the host (a sparse ``linear`` only)."""
        return self.linear.W

    def parameters(self) -> list[Parameter]:
        return self.linear.parameters()

    def output_shape(self, shape: tuple) -> tuple:
        """Per-sample (T, d_in) -> (T, d_out) (any leading axes)."""
        n_out, n_in = self.shape
        if len(shape) < 1 or shape[-1] != n_in:
            raise ShapeError(f"a token-wise linear layer takes (..., {n_in}) per sample, got {tuple(shape)}")
        return (*shape[:-1], n_out)

    # ------------------------------------------------------------------------------------ the maths
    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d_in) -> Y (B, T, d_out)."""
        n_out, n_in = self.shape
        _check_tokens(X, n_in, "a token-wise linear layer")
        self._lead = X.shape[:-1]
        rows = X.reshape(-1, n_in)  # (B, T, d_in) -> (B*T, d_in)
        return self.linear.forward(rows).reshape(*self._lead, n_out)  # (B*T, d_out) -> (B, T, d_out)

    def backward(self, dY: np.ndarray):
        """dY (B, T, d_out) -> dX (B, T, d_in) (None if not ``needs_input_grad``); the wrapped layer fills
        ``weight.grad`` and ``bias.grad`` from the (B * T) rows."""
        n_out, n_in = self.shape
        dX = self.linear.backward(np.ascontiguousarray(dY).reshape(-1, n_out))  # (B*T, d_out) -> (B*T, d_in)
        return None if dX is None else dX.reshape(*self._lead, n_in)  # (B*T, d_in) -> (B, T, d_in)

    # ------------------------------------------------------------------------------------ residency
    def sync_to_host(self) -> None:
        """Refresh the host copies of the parameters (no-op on a host backend)."""
        self.linear.sync_to_host()

    def sync_to_device(self) -> None:
        """Push the host copies of the parameters to the backend (no-op on a host backend)."""
        self.linear.sync_to_device()

    def set_backend(self, backend) -> None:
        """Move the layer to another host backend (gradients restart at zero; no batch is kept)."""
        self.linear.set_backend(check_token_backend(backend, "token-wise linear layers"))

    def __repr__(self) -> str:
        return f"TokenLinear({self.linear!r})"


def as_token_linear(layer, activation: str = "none") -> TokenLinear:
    """``layer`` itself if it is a :class:`TokenLinear`, else a TokenLinear around it."""
    return layer if isinstance(layer, TokenLinear) else TokenLinear(layer, activation)


# --------------------------------------------------------------------------------------------------
# scaled dot-product attention: the maths


def _softmax(S: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the row maximum."""
    E = np.exp(S - S.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def attention_forward(Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(O, A) for Q, K, V (B, h, T, d_h): O (B, h, T, d_h) and the attention weights A (B, h, T, T).

    .. math:: S = \\frac{Q K^T}{\\sqrt{d_h}}, \\qquad
              A_{qk} = \\frac{e^{S_{qk}}}{\\sum_{k'} e^{S_{qk'}}}, \\qquad O = A V
    """
    scale = Q.dtype.type(1.0 / np.sqrt(Q.shape[-1]))
    A = _softmax((Q @ np.swapaxes(K, -1, -2)) * scale)  # (B, h, T, T)
    return A @ V, A


def attention_backward(dO, Q, K, V, A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dQ, dK, dV) (B, h, T, d_h) for the output gradient dO (B, h, T, d_h).

    With s = 1 / sqrt(d_h) the softmax Jacobian-vector product is, per row q,

    .. math::

        dV = A^T dO, \\qquad dA = dO \\, V^T, \\qquad
        dS_{qk} = A_{qk} \\Big(dA_{qk} - \\sum_{k'} A_{qk'} dA_{qk'}\\Big), \\qquad
        dQ = s \\, dS \\, K, \\qquad dK = s \\, dS^T Q
    """
    scale = Q.dtype.type(1.0 / np.sqrt(Q.shape[-1]))
    dV = np.swapaxes(A, -1, -2) @ dO  # (B, h, T, d_h)
    dA = dO @ np.swapaxes(V, -1, -2)  # (B, h, T, T)
    dS = A * (dA - (A * dA).sum(axis=-1, keepdims=True))  # (B, h, T, T)
    dQ = (dS @ K) * scale
    dK = (np.swapaxes(dS, -1, -2) @ Q) * scale
    return dQ, dK, dV


def split_heads(X: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, d) -> (B, h, T, d / h): column j d_h + c of X is column c of head j."""
    B, T, d = X.shape
    return X.reshape(B, T, heads, d // heads).transpose(0, 2, 1, 3)  # (B, T, h, d_h) -> (B, h, T, d_h)


def merge_heads(X: np.ndarray) -> np.ndarray:
    """(B, h, T, d_h) -> (B, T, h * d_h), the inverse of :func:`split_heads` (a C-contiguous copy)."""
    B, h, T, dh = X.shape
    return np.ascontiguousarray(X.transpose(0, 2, 1, 3)).reshape(B, T, h * dh)  # (B, T, h, d_h) -> (B, T, d)


# --------------------------------------------------------------------------------------------------
# the layer


class MultiHeadSelfAttention(SyncsChildren):
    """Multi-head self-attention with a fused QKV projection and an output projection.

    .. math::

        [Q \\ K \\ V] = \\mathrm{qkv}(X), \\qquad
        O_j = \\mathrm{softmax}\\Big(\\frac{Q_j K_j^T}{\\sqrt{d_h}}\\Big) V_j, \\qquad
        Y = \\mathrm{out}([O_1 \\cdots O_h])

    (see the module docstring for the layout of the fused matrix and why it is fused). The backward
    runs ``out``'s backward, the attention's (:func:`attention_backward`), and ``qkv``'s on the
    concatenation [dQ dK dV] (B, T, 3d).

    Parameters
    ----------
    d : int
        Token width.
    heads : int
        h, dividing d.
    qkv : TokenLinear | SparseLinear | Dense
        The fused projection, weight (3d, d) (a 2-d layer is wrapped in a TokenLinear).
    out : TokenLinear | SparseLinear | Dense
        The output projection, weight (d, d).
    name : str
        For messages and ``repr`` (the parameters are the projections', named after them).
    """

    def __init__(self, d: int, heads: int, qkv, out, name: str = "attn"):
        self.d, self.heads, self.name = int(d), int(heads), name
        if self.d < 1 or self.heads < 1 or self.d % self.heads:
            raise ShapeError(f"attention needs a width d divisible by the number of heads, got d={d}, heads={heads}")
        self.qkv, self.out = as_token_linear(qkv), as_token_linear(out)
        if self.qkv.shape != (3 * self.d, self.d):
            raise ShapeError(f"the fused QKV projection must be (3d, d) = ({3 * self.d}, {self.d}), "
                             f"got {self.qkv.shape}")
        if self.out.shape != (self.d, self.d):
            raise ShapeError(f"the output projection must be (d, d) = ({self.d}, {self.d}), got {self.out.shape}")
        self._saved = None  # (Q, K, V, A) of the last forward, (B, h, T, d_h) and (B, h, T, T)

    @property
    def backend(self):
        return self.qkv.backend

    def children(self) -> list:
        """The weight layers in network order: qkv, then the output projection."""
        return [self.qkv, self.out]

    def parameters(self) -> list[Parameter]:
        return self.qkv.parameters() + self.out.parameters()

    def output_shape(self, shape: tuple) -> tuple:
        if len(shape) != 2 or shape[1] != self.d:
            raise ShapeError(f"attention takes (T, {self.d}) per sample, got {tuple(shape)}")
        return tuple(shape)

    @property
    def attention(self) -> np.ndarray | None:
        """The attention weights A (B, h, T, T) of the last forward (rows sum to 1)."""
        return None if self._saved is None else self._saved[3]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d) -> Y (B, T, d)."""
        if X.ndim != 3:
            raise ShapeError(f"attention takes (B, T, d) tokens, got an input of shape {X.shape}")
        d, h = self.d, self.heads
        QKV = self.qkv.forward(X)  # (B, T, 3d)
        Q, K, V = (split_heads(QKV[..., i * d:(i + 1) * d], h) for i in range(3))  # each (B, h, T, d_h)
        O, A = attention_forward(Q, K, V)
        self._saved = (Q, K, V, A)
        return self.out.forward(merge_heads(O))  # (B, T, d)

    def backward(self, dY: np.ndarray):
        """dY (B, T, d) -> dX (B, T, d); fills both projections' gradients."""
        dO = split_heads(self.out.backward(dY), self.heads)  # (B, T, d) -> (B, h, T, d_h)
        dQ, dK, dV = attention_backward(dO, *self._saved)
        dQKV = np.concatenate([merge_heads(g) for g in (dQ, dK, dV)], axis=-1)  # (B, T, 3d)
        return self.qkv.backward(dQKV)

    def set_backend(self, backend) -> None:
        for layer in self.children():
            layer.set_backend(backend)
        self._saved = None

    def __repr__(self) -> str:
        return f"MultiHeadSelfAttention(d={self.d}, heads={self.heads}, qkv={self.qkv!r}, out={self.out!r})"
