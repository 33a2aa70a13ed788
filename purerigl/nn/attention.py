"""Token-wise linear layers and multi-head self-attention over (B, T, d) activations.

A transformer's activations are B sequences of T tokens of width d. Its linear layers act on every
token alike, so a linear layer sees (B, T, d_in) as B * T rows: :class:`TokenLinear` reshapes to
(B * T, d_in), runs a :class:`~.layers.SparseLinear` (or a :class:`~.dense.Dense`) and reshapes back.
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

These layers compute with their backend's operations (:data:`purerigl.kernels.registry.ARRAY_OPS`:
the projections' products, ``self_attention_forward`` / ``self_attention_backward``), one code path on
every backend: host NumPy arrays on the reference and cpu backends (the specification,
:mod:`purerigl.kernels.host_transformer`, where :func:`attention_forward`, :func:`attention_backward`,
:func:`split_heads` and :func:`merge_heads` live), device arrays on cuda (kernels in
:mod:`purerigl.kernels.cuda.attention`), where the activations stay on the device. On the host
backends they compute in the input's dtype (float64 for gradient checks when the projections are dense
with float64 parameters); sparse projections, and everything on cuda, are float32 only.

One path is host-only: where the projections compute feature-major (sparse, from 4 token rows, on a
backend whose feature-major products are native: reference and cpu), the attention keeps the tokens
feature-major between its two projections and calls the host specification's feature-major helpers
(:func:`~purerigl.kernels.host_transformer.self_attention_forward_fm` and its backward) itself.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError, ShapeError
from ..kernels import get_backend
from ..kernels.host_transformer import (  # the maths over (B, h, T, d_h): the host specification
    attention_backward,
    attention_forward,
    merge_heads,
    self_attention_backward_fm,
    self_attention_forward_fm,
    split_heads,
)
from .dense import Dense
from .layers import SparseLinear, has_feature_major_step
from .parameter import Parameter, SyncsChildren

__all__ = [
    "MultiHeadSelfAttention",
    "TokenLinear",
    "TransformerBackendError",
    "attention_backward",
    "attention_forward",
    "check_token_backend",
    "merge_heads",
    "split_heads",
]


class TransformerBackendError(BackendError):
    """A transformer tool that runs on the host only was given a device backend (the layers themselves
    run on every backend)."""


def check_token_backend(backend, what: str = "this transformer tool"):
    """The backend named by ``backend`` (see :func:`purerigl.get_backend`), refused if it is resident.

    The transformer layers run on every backend; this check is for tools that read a model's arrays on
    the host while it trains (``purerigl bench train --model vit-tiny`` times host kernels).

    Raises
    ------
    TransformerBackendError
        (a :class:`~purerigl.errors.PureriglError` and ``ValueError``) for a backend whose arrays live
        on a device (``backend.resident``, i.e. cuda).
    """
    b = get_backend(backend)
    if b.resident:
        raise TransformerBackendError(
            f"{what} runs on the reference and cpu backends only, got backend {b.name!r}; "
            "use backend 'cpu' (or 'reference')"
        )
    return b


def _check_tokens(X, width: int, what: str) -> None:
    if len(X.shape) < 2 or tuple(X.shape)[-1] != width:
        raise ShapeError(f"{what} takes (..., {width}) tokens, got an input of shape {tuple(X.shape)}")


def _as_rows(A, width: int):
    """The (N, width) view of the C-contiguous backend array ``A`` (..., width) (no copy; explicit sizes,
    which host arrays and numba device arrays both reshape)."""
    return A.reshape(A.size // width, width)  # (..., width) -> (N, width)


def tokens_to_fm(backend, X):
    """Host tokens (B, T, d) -> their feature-major copy X^T (d, B*T) (the layout of the sparse
    products from :data:`FM_MIN_ROWS` rows on)."""
    return backend.transpose(_as_rows(np.ascontiguousarray(X), int(X.shape[-1])))  # (B*T, d) -> (d, B*T)


def fm_to_tokens(backend, YT, lead: tuple):
    """Feature-major Y^T (d, B*T) -> tokens (*lead, d), the inverse of :func:`tokens_to_fm` (None stays None)."""
    return None if YT is None else backend.transpose(YT).reshape(*lead, int(YT.shape[0]))  # (B*T, d) -> (*lead, d)


# --------------------------------------------------------------------------------------------------
# token-wise linear layer


#: Token rows from which a sparse token-wise layer computes feature-major (as the MLP's FM_MIN_BATCH).
FM_MIN_ROWS = 4


class TokenLinear:
    """A linear layer applied to every token: (B, T, d_in) -> (B, T, d_out) (any leading axes).

    .. math:: Y[b, t] = W X[b, t] + b_{\\mathrm{bias}}, \\qquad
              dW = \\sum_{b, t} dY[b, t] \\, X[b, t]^T, \\qquad dX[b, t] = W^T dY[b, t]

    computed as the wrapped layer on the (B * T, d_in) rows. From :data:`FM_MIN_ROWS` rows on, a
    :class:`SparseLinear` runs feature-major: the rows are transposed once, the products are the
    backend's ``matmul_fm`` / ``sddmm_fm`` / ``matmul_t_fm`` (the batched kernels' own layout), and
    the result is transposed back: four transposes per step instead of the six the row-layout
    products make (one per operand and result), and the faster feature-major Diagonal kernels.

    Parameters
    ----------
    linear : SparseLinear | Dense
        The layer doing the product, shape (d_out, d_in); its ``name`` and parameters are this
        layer's. For a :class:`SparseLinear` it is what the DST methods update (``Network.linears``
        lists it, as a sparse convolution's ``.linear``).
    activation : str
        What follows the layer inside its block, for :meth:`Network.describe` ("gelu" for an MLP's
        first layer, else "none").

    """

    def __init__(self, linear, activation: str = "none"):
        if not isinstance(linear, (SparseLinear, Dense)):
            raise TypeError(f"TokenLinear wraps a SparseLinear or a Dense, got {type(linear).__name__}")
        self.linear = linear
        self.activation = activation
        self._lead = None  # the leading axes (B, T) of the last forward
        self._feature_major = False  # whether the last forward ran the products feature-major

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
    def runs_feature_major(self, n_rows: int) -> bool:
        """Whether a forward of ``n_rows`` token rows computes feature-major: from :data:`FM_MIN_ROWS`
        rows on, on a backend whose feature-major products are native, for a layer with a
        feature-major step (:func:`~.layers.has_feature_major_step`: a sparse layer, not a Dense)."""
        return (int(n_rows) >= FM_MIN_ROWS and self.backend.feature_major_native
                and has_feature_major_step(self.linear))

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d_in) -> Y (B, T, d_out)."""
        n_out, n_in = self.shape
        _check_tokens(X, n_in, "a token-wise linear layer")
        self._lead = tuple(int(n) for n in X.shape)[:-1]
        rows = _as_rows(X, n_in)  # (B, T, d_in) -> (B*T, d_in)
        self._feature_major = self.runs_feature_major(rows.shape[0])
        if self._feature_major:  # the batched kernels' layout: two transposes here, none inside the products
            return fm_to_tokens(self.backend, self.linear.forward_fm_with_bias(self.backend.transpose(rows)), self._lead)
        return self.linear.forward(rows).reshape(*self._lead, n_out)  # (B*T, d_out) -> (B, T, d_out)

    def backward(self, dY: np.ndarray):
        """dY (B, T, d_out) -> dX (B, T, d_in) (None if not ``needs_input_grad``); the wrapped layer fills
        ``weight.grad`` and ``bias.grad`` from the (B * T) rows."""
        n_out, n_in = self.shape
        if isinstance(dY, np.ndarray):
            dY = np.ascontiguousarray(dY)  # a host view (a slice) made contiguous; device ops return contiguous arrays
        rows = _as_rows(dY, n_out)  # (B, T, d_out) -> (B*T, d_out)
        if self._feature_major:  # (d_out, B*T) -> (d_in, B*T) -> (B, T, d_in)
            return fm_to_tokens(self.backend, self.linear.backward_fm_with_bias(self.backend.transpose(rows)), self._lead)
        dX = self.linear.backward(rows)  # (B*T, d_out) -> (B*T, d_in)
        return None if dX is None else dX.reshape(*self._lead, n_in)  # (B*T, d_in) -> (B, T, d_in)

    def forward_fm(self, XT: np.ndarray, lead: tuple) -> np.ndarray:
        """The tokens feature-major in and out: X^T (d_in, B*T) -> Y^T (d_out, B*T), bias added, for a
        caller that keeps the activations feature-major around the layer (the MLP of a
        :class:`~.transformer.TransformerBlock`, whose GELU is elementwise, and
        :class:`MultiHeadSelfAttention`, which reads its heads from that layout), sparing the
        transposes :meth:`forward` makes. ``lead`` is the (B, T) the B*T columns stand for. Only where
        :meth:`runs_feature_major` says so.

        .. math:: Y^T = W X^T + b \\mathbf{1}^T
        """
        n_out, n_in = self.shape
        if len(XT.shape) != 2 or int(XT.shape[0]) != n_in or not self.runs_feature_major(XT.shape[1]):
            raise ShapeError(f"forward_fm of {self.name!r} takes ({n_in}, N >= {FM_MIN_ROWS}) feature-major "
                             f"tokens on a backend with native feature-major products, for a sparse layer; "
                             f"got {tuple(XT.shape)} on {self.backend.name!r}")
        self._lead, self._feature_major = tuple(int(n) for n in lead), True
        return self.linear.forward_fm_with_bias(XT)  # (d_in, B*T) -> (d_out, B*T)

    def backward_fm(self, dYT: np.ndarray):
        """dY^T (d_out, B*T) -> dX^T (d_in, B*T) (None if not ``needs_input_grad``) after
        :meth:`forward_fm`; the wrapped layer fills ``weight.grad`` and ``bias.grad``."""
        return self.linear.backward_fm_with_bias(dYT)

    # ------------------------------------------------------------------------------------ residency
    def sync_to_host(self) -> None:
        """Refresh the host copies of the parameters (no-op on a host backend)."""
        self.linear.sync_to_host()

    def sync_to_device(self) -> None:
        """Push the host copies of the parameters to the backend (no-op on a host backend)."""
        self.linear.sync_to_device()

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (gradients restart at zero; no batch is kept)."""
        self.linear.set_backend(backend)

    def __repr__(self) -> str:
        return f"TokenLinear({self.linear!r})"


def as_token_linear(layer, activation: str = "none") -> TokenLinear:
    """``layer`` itself if it is a :class:`TokenLinear`, else a TokenLinear around it."""
    return layer if isinstance(layer, TokenLinear) else TokenLinear(layer, activation)


# --------------------------------------------------------------------------------------------------
# the layer


class MultiHeadSelfAttention(SyncsChildren):
    """Multi-head self-attention with a fused QKV projection and an output projection.

    .. math::

        [Q \\ K \\ V] = \\mathrm{qkv}(X), \\qquad
        O_j = \\mathrm{softmax}\\Big(\\frac{Q_j K_j^T}{\\sqrt{d_h}}\\Big) V_j, \\qquad
        Y = \\mathrm{out}([O_1 \\cdots O_h])

    (see the module docstring for the layout of the fused matrix and why it is fused). The attention
    between the projections is the backend's ``self_attention_forward`` / ``self_attention_backward``,
    which read the heads inside the fused (B, T, 3d) output (:func:`attention_forward` and
    :func:`attention_backward` per head on the host). The backward runs ``out``'s backward, the
    attention's, and ``qkv``'s on the gradient [dQ dK dV] (B, T, 3d).

    Where both projections compute feature-major (sparse, on a host backend, from 4 token rows:
    :meth:`TokenLinear.runs_feature_major`), the layer transposes its input once, reads the heads from
    the feature-major QKV^T (3d, B*T) and writes them into O^T (d, B*T) directly
    (:func:`~purerigl.kernels.host_transformer.self_attention_forward_fm` and its backward: the same
    maths), and transposes the output back: two transposes forward and two backward instead of four and four.

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
        self._saved = None  # (QKV, A) of the last forward, (B, T, 3d) and (B, h, T, T); QKV^T (3d, B*T) when fm
        self._fm = False  # whether the last forward ran feature-major

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
    def attention(self):
        """The attention weights A (B, h, T, T) of the last forward (rows sum to 1), a backend array."""
        return None if self._saved is None else self._saved[1]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, T, d) -> Y (B, T, d)."""
        if len(X.shape) != 3:
            raise ShapeError(f"attention takes (B, T, d) tokens, got an input of shape {tuple(X.shape)}")
        B, T, d = (int(n) for n in X.shape)
        self._fm = self.qkv.runs_feature_major(B * T) and self.out.runs_feature_major(B * T)
        if self._fm:  # host arrays: the heads read from / written to the feature-major layout
            QKVT = self.qkv.forward_fm(tokens_to_fm(self.backend, X), (B, T))  # (3d, B*T)
            OT, A = self_attention_forward_fm(QKVT, self.heads, B, T)  # (d, B*T), (B, h, T, T)
            self._saved = (QKVT, A)
            return fm_to_tokens(self.backend, self.out.forward_fm(OT, (B, T)), (B, T))  # (B, T, d)
        QKV = self.qkv.forward(X)  # (B, T, 3d)
        O, A = self.backend.self_attention_forward(QKV, self.heads)  # (B, T, d), (B, h, T, T)
        self._saved = (QKV, A)
        return self.out.forward(O)  # (B, T, d)

    def backward(self, dY: np.ndarray):
        """dY (B, T, d) -> dX (B, T, d); fills both projections' gradients."""
        if self._fm:
            B, T, _ = (int(n) for n in dY.shape)
            QKVT, A = self._saved
            dOT = self.out.backward_fm(tokens_to_fm(self.backend, dY))  # (d, B*T)
            dXT = self.qkv.backward_fm(self_attention_backward_fm(dOT, QKVT, A, self.heads, B, T))  # (d, B*T)
            return fm_to_tokens(self.backend, dXT, (B, T))  # (B, T, d)
        dO = self.out.backward(dY)  # (B, T, d)
        QKV, A = self._saved
        return self.qkv.backward(self.backend.self_attention_backward(dO, QKV, A, self.heads))  # via (B, T, 3d)

    def set_backend(self, backend) -> None:
        for layer in self.children():
            layer.set_backend(backend)
        self._saved = None

    def __repr__(self) -> str:
        return f"MultiHeadSelfAttention(d={self.d}, heads={self.heads}, qkv={self.qkv!r}, out={self.out!r})"
