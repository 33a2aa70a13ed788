"""2-d convolutions with a hand-written forward and backward: SparseConv2d (filters in a sparse
format) and Conv2d (dense filters, for layers a budget keeps dense).

Both run over the patch matrix P = im2col(X) (B * Ho * Wo, c_in * kh * kw) of :mod:`.patches`: a
convolution with filters W (c_out, c_in, kh, kw) is the linear layer of the filter matrix
W.reshape(c_out, c_in * kh * kw) applied to every patch,

.. math::

    Y[b, o, h_o, w_o] = b_o + \\sum_{c, i, j} W[o, c, i, j] \\, X_p[b, c, s h_o + i, s w_o + j]
    \\quad\\Longleftrightarrow\\quad Y_2 = P \\, W_2^T + \\mathbf{1} b^T

with Y_2 (B * Ho * Wo, c_out) the output with rows ordered (b, ho, wo). The backward is the linear
layer's, then the adjoint of im2col:

.. math:: dW_2 = dY_2^T P, \\qquad db = \\sum_r dY_2[r], \\qquad dX = \\mathrm{col2im}(dY_2 \\, W_2)

Layout. :class:`SparseConv2d` works on the *transposed* (feature-major) patch matrix
P^T = im2col_t(X) (c_in * kh * kw, B * Ho * Wo), the layout in which the sparse kernels compute
(the batch, here the patches, on the contiguous axis), through the linear's feature-major products:

.. math:: Y_2^T = W_2 P^T, \\qquad dW_2 = dY_2^T P \\ \\text{(stored entries)}, \\qquad
          dX = \\mathrm{col2im\\_t}(W_2^T dY_2^T)

so no patch-sized array is ever transposed. The input gradient is one backend operation,
``conv_input_grad_fm(W_2, dY_2^T, ...)`` = col2im_t(W_2^T dY_2^T): the cpu backend computes it at stride 1
without the patch-sized W_2^T dY_2^T (every stored weight adds its shifted output-gradient plane into the
input gradient, :mod:`purerigl.kernels.cpu.conv_products`), the cuda backend as one gather at any stride
(:mod:`purerigl.kernels.cuda.conv_products`). Only the output is reordered, Y_2^T (c_out, B * Ho * Wo)
-> (B, c_out, Ho, Wo), with the bias added on the way (:func:`fm_to_nchw`), and the output gradient
the other way (:func:`nchw_to_fm`): arrays c_in * kh * kw / c_out times smaller than the patch matrix,
and moved in runs of Ho * Wo contiguous floats. :class:`Conv2d` (dense, BLAS) keeps the row layout.

No patch matrix in a step (cpu, stride 1). Where the backend says it
computes the linear's products from the convolution's input (``backend.takes_patches``), the layer
hands the linear a :class:`~purerigl.kernels.patch_operand.Patches`, X and the geometry, in place of
P^T: ``matmul_fm`` and ``sddmm_fm`` read every stored weight's input plane, shifted by its kernel
offset, from X (:mod:`purerigl.kernels.cpu.conv_direct`), and P is built only when a topology update
asks the linear for its saved batch. A linear with a feature-major step of its own gets the built
P^T unless it says it takes the operand (:attr:`SparseLinear.accepts_patches`; DynaDiag's gated
layer does, soft and frozen).

Tiling: when the patch matrix of the whole batch would exceed ``max_tile_bytes`` (default 64 MiB), the
batch is processed in chunks of samples (:func:`~purerigl.nn.patches.sample_tiles`): the forward keeps
the input X and the last chunk's patches; the backward rebuilds the patches of the other chunks and
adds their parameter gradients up. Memory then stays O(tile) beyond X, Y and their gradients.

Backends. The patch maps and reorders are backend operations (``backend.im2col_t``,
``backend.fm_to_nchw`` ...: :data:`purerigl.kernels.registry.CONV_OPS`), so one code path serves the
reference backend (the NumPy specification, :mod:`purerigl.kernels.host_conv`), the cpu backend
(Numba kernels) and the cuda backend (device arrays in and out: X, Y, the patches, dY and dX never
leave the device in a training step). A backend without these operations is refused
(:class:`~purerigl.nn.patches.ConvBackendError`).
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..formats import SparseFormat
from ..kernels.patch_operand import Patches
from ..kernels.host_conv import fm_to_nchw, nchw_to_fm  # noqa: F401  (the specifications, re-exported)
from ..kernels.host_conv import nchw_to_rows as to_rows  # noqa: F401
from ..kernels.host_conv import rows_to_nchw as to_nchw  # noqa: F401
from .layers import SparseLinear, missing_fm_overrides
from .parameter import Parameter, SyncsParameters
from .patches import DEFAULT_TILE_BYTES, check_conv_backend, check_nchw, output_hw, pair, sample_tiles


def _check_stride_padding(stride, padding) -> tuple[int, int]:
    stride, padding = int(stride), int(padding)
    if stride < 1 or padding < 0:
        raise ShapeError(f"need stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    return stride, padding


def _accumulate(backend, target, part) -> None:
    """``target += part`` in place: on the host when both are host arrays (any array of a host
    backend; a gated layer's alpha on every backend), else on the backend (``add``, then a copy)."""
    if isinstance(target, np.ndarray) and isinstance(part, np.ndarray):
        target += part
    else:
        target[:] = backend.add(target, part)


class SparseConv2d:
    """A 2-d convolution whose filter matrix is stored only in a sparse format.

    It holds a :class:`~purerigl.nn.layers.SparseLinear` ``linear`` (same name, same parameters
    ``{name}.values`` and ``{name}.bias``) over the filter matrix W (c_out, c_in * kh * kw) and runs it
    over the transposed patch matrix: forward ``Y2^T = linear.forward_fm(im2col_t(X))`` reordered to
    (B, c_out, Ho, Wo) plus the bias; backward: ``linear.backward_fm(dY2^T)`` for the gradients of
    the filters, and ``dX = backend.conv_input_grad_fm(linear.forward_matrix, dY2^T, ...)``, i.e.
    col2im_t(W2^T dY2^T) (see the module docstring for the maths and the layout).

    DST: the linear's saved batch (:meth:`SparseLinear.saved_batch`, in the row layout: the layer
    transposes its kept P^T and dY2^T on first use after a step, or builds P from the kept input where
    the products read it from X) is then the patch matrix P
    (B * Ho * Wo, c_in * kh * kw) and the output gradient dY2 (B * Ho * Wo, c_out), whose dY2^T P is
    the gradient of the filter matrix. That is exactly what the streamed growth kernels read, so every
    DST method updates ``linear`` unchanged (``linear.set_structure``): a filter is a row, i.e. a
    "neuron" for SRigL (constant fan-in per filter, whole filters ablated). DynaDiag replaces ``linear``
    by a :class:`~purerigl.nn.GatedDiagonalLinear`, whose own feature-major step gates the filters and
    trains its scores alpha (summed over the chunks of a tiled batch too). When the batch is tiled
    (its patch matrix exceeds ``max_tile_bytes``), the saved batch is the *last chunk's* patches and
    output gradient, a sub-batch of the samples: raise the bound to score growth on the whole batch.

    Column ``c * kh * kw + i * kw + j`` of the filter matrix is the weight of input channel c at kernel
    offset (i, j). The Diagonal format indexes this flattened matrix as any other (DESIGN.md section
    2): with P = max(c_out, c_in kh kw) and L = min(c_out, c_in kh kw), element t of diagonal d sits at
    (t, (t + d) mod c_in kh kw) when c_out < c_in kh kw (the usual wide case: every filter has fan-in
    K), else at ((t + d) mod c_out, t).

    Parameters
    ----------
    W : Condensed | Diagonal | CSR, shape (c_out, c_in * kh * kw)
    c_in : int
    kernel : int | (int, int)
        (kh, kw).
    stride, padding : int
        The same along both spatial axes; the padding is zeros.
    bias : float32 ndarray (c_out,), optional
        Zeros if omitted.
    backend : str | Backend, optional
        "reference", "cpu" or "cuda" (a backend without the convolutional operations is refused:
        ConvBackendError).
    name : str
    needs_input_grad : bool
        False: ``backward`` returns None and skips the input gradient (the first layer of a network).
    max_tile_bytes : int
        Bound on the patch matrix of one chunk of samples (at least one sample per chunk).
    """

    def __init__(self, W: SparseFormat, c_in: int, kernel, stride=1, padding=0, bias=None, backend=None,
                 name: str = "conv", needs_input_grad=True, max_tile_bytes: int = DEFAULT_TILE_BYTES):
        backend = check_conv_backend(backend, "convolution layers")
        self.kh, self.kw = pair(kernel, "kernel")
        self.stride, self.padding = _check_stride_padding(stride, padding)
        self.c_in = int(c_in)
        if tuple(W.shape)[1] != self.c_in * self.kh * self.kw:
            raise ShapeError(
                f"the filter matrix has {W.shape[1]} columns, expected c_in * kh * kw = "
                f"{self.c_in} * {self.kh} * {self.kw} = {self.c_in * self.kh * self.kw}"
            )
        self.name = name
        self.max_tile_bytes = int(max_tile_bytes)
        self._needs_input_grad = bool(needs_input_grad)
        self.linear = SparseLinear(W, bias=bias, backend=backend, name=name, needs_input_grad=False)
        self._X = None  # the input, kept when the batch is tiled (the backward rebuilds the patches)
        self._X_shape = None
        self._tiles: list = []

    # ---------------------------------------------------------------------------------- the linear's
    @property
    def linear(self) -> SparseLinear:
        """The filter matrix's layer, run feature-major over the patches (replaceable: DynaDiag puts a
        gated layer here). It computes the output and the gradients of its parameters; the input
        gradient is the convolution's (``backend.conv_input_grad_fm`` of the linear's
        ``forward_matrix``), so a layer set here gets ``needs_input_grad = False``. A subclass of
        SparseLinear that changes the row-layout step but not the feature-major one, or its
        feature-major forward but not ``forward_matrix``, is refused: the convolution would silently
        compute without the change."""
        return self._linear

    @linear.setter
    def linear(self, layer: SparseLinear) -> None:
        if not isinstance(layer, SparseLinear):
            raise TypeError(f"a convolution's linear must be a SparseLinear, got {type(layer).__name__}")
        missing = missing_fm_overrides(type(layer))
        if missing:
            row, fm = missing[0]
            raise TypeError(f"{type(layer).__name__} overrides {row} but not {fm}, the step a convolution runs; "
                            f"give it its own {fm}")
        layer.needs_input_grad = False
        self._linear = layer

    @property
    def backend(self):
        return self.linear.backend

    @property
    def needs_input_grad(self) -> bool:
        """Whether :meth:`backward` computes dX (False: it returns None, as the first layer of a network)."""
        return self._needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        self._needs_input_grad = bool(value)

    @property
    def W(self) -> SparseFormat:
        """The filter matrix (c_out, c_in * kh * kw) on the host (``linear.W``)."""
        return self.linear.W

    @property
    def matrix(self):
        """The filter matrix where the backend computes (``linear.matrix``)."""
        return self.linear.matrix

    @property
    def shape(self) -> tuple[int, int]:
        """(c_out, c_in * kh * kw): the filter matrix's shape."""
        return self.linear.shape

    @property
    def c_out(self) -> int:
        return self.linear.shape[0]

    @property
    def weight(self) -> Parameter:
        return self.linear.weight

    @property
    def bias(self) -> Parameter:
        return self.linear.bias

    def parameters(self) -> list[Parameter]:
        return self.linear.parameters()

    # ------------------------------------------------------------------------------------ the maths
    def forward(self, X):
        """X (B, c_in, H, W) float32 (an array of the backend) -> Y (B, c_out, Ho, Wo).

        .. math:: Y_2^T = W_2 \\, \\mathrm{im2col\\_t}(X), \\qquad
                  Y[b, o, h_o, w_o] = Y_2^T[o, (b, h_o, w_o)] + b_o
        """
        check_nchw(X, self.c_in)
        be = self.backend
        B = int(X.shape[0])
        Ho, Wo = output_hw(X.shape, self.kh, self.kw, self.stride, self.padding)
        conv = (self.kh, self.kw, self.stride, self.padding)
        self._tiles = sample_tiles(X.shape, *conv, X.dtype.itemsize, self.max_tile_bytes)
        self._X_shape = tuple(int(n) for n in X.shape)
        bias = self.linear.bias.value
        if len(self._tiles) == 1:
            self._X = None
            YT = self.linear.forward_fm(self._patches(X))  # (c_out, B*Ho*Wo)
            return be.fm_to_nchw(YT, bias, B, Ho, Wo)
        self._X = X
        Y = be.zeros((B, self.c_out, Ho, Wo), np.float32)  # (B, c_out, Ho, Wo)
        for a, b in self._tiles:  # the linear keeps the last chunk's patches
            Y[a:b] = be.fm_to_nchw(self.linear.forward_fm(self._patches(X[a:b])), bias, b - a, Ho, Wo)
        return Y

    def _patches(self, X):
        """The transposed patch matrix P^T (c_in kh kw, n Ho Wo) of X (n, c_in, H, W) that the linear
        multiplies by: held as X itself (:class:`~purerigl.kernels.patch_operand.Patches`) where the
        backend computes the linear's products from it (``backend.takes_patches``: the cpu backend at
        stride 1) and the linear's step takes it (:attr:`SparseLinear.accepts_patches`: SparseLinear's
        own step, or DynaDiag's gated diagonal layer), else built (``backend.im2col_t``)."""
        conv = (self.kh, self.kw, self.stride, self.padding)
        lin, be = self.linear, self.backend
        if lin.accepts_patches and be.takes_patches(lin.matrix, self.stride, X.dtype):
            return Patches(X, *conv)
        return be.im2col_t(X, *conv)

    def backward(self, dY):
        """dY (B, c_out, Ho, Wo) -> dX (B, c_in, H, W) (None if not ``needs_input_grad``); fills
        ``weight.grad`` (shaped like W.values) and ``bias.grad``, summed over all chunks.

        .. math:: dW_e = \\sum_r dY_2^T[i_e, r] \\, P^T[j_e, r], \\qquad db_o = \\sum_r dY_2^T[o, r], \\qquad
                  dX = \\mathrm{col2im\\_t}(W_2^T dY_2^T)
        """
        conv = (self.kh, self.kw, self.stride, self.padding)
        lin, be = self.linear, self.linear.backend
        if len(self._tiles) == 1:
            dYT = be.nchw_to_fm(dY)  # (c_out, B*Ho*Wo)
            be.bias_grad(dYT.T, lin.bias.grad)  # row sums of dY2^T (dYT.T: (B*Ho*Wo, c_out), a view)
            lin.backward_fm(dYT)  # the parameters' gradients (the linear computes no input gradient)
            if not self.needs_input_grad:
                return None
            return be.conv_input_grad_fm(lin.forward_matrix, dYT, self._X_shape, *conv)  # col2im_t(W^T dY^T)
        _, C, H, W = self._X_shape
        sums: dict = {}  # the linear's gradients summed over the other chunks, by the attribute they belong to
        gb = be.zeros_like(lin.bias.grad)
        dX = be.zeros(self._X_shape, np.float32) if self.needs_input_grad else None
        for a, b in self._tiles[:-1]:  # rebuild these chunks' patches
            PT = self._patches(self._X[a:b])  # (c_in*kh*kw, n*Ho*Wo), or held as the chunk's X
            dYTc = be.nchw_to_fm(dY[a:b])  # (c_out, n*Ho*Wo)
            grads, _ = lin.gradients_fm(PT, dYTc)  # no input gradient from the linear (see `linear`)
            for key, g in grads.items():
                if key in sums:
                    _accumulate(be, sums[key], g)
                else:
                    sums[key] = g
            _accumulate(be, gb, be.bias_grad(dYTc.T, be.zeros_like(gb)))
            if dX is not None:
                dX[a:b] = be.conv_input_grad_fm(lin.forward_matrix, dYTc, (b - a, C, H, W), *conv)
        a, b = self._tiles[-1]
        dYTc = be.nchw_to_fm(dY[a:b])  # (c_out, n*Ho*Wo)
        lin.backward_fm(dYTc)  # the linear still holds this chunk's patches
        be.bias_grad(dYTc.T, lin.bias.grad)
        for key, g in sums.items():
            _accumulate(be, getattr(lin, key).grad, g)
        _accumulate(be, lin.bias.grad, gb)
        if dX is not None:
            dX[a:b] = be.conv_input_grad_fm(lin.forward_matrix, dYTc, (b - a, C, H, W), *conv)
        return dX

    # ------------------------------------------------------------------------------------ residency
    def sync_to_host(self) -> None:
        """Refresh W.values and the bias's host copy (no-op on a host backend)."""
        self.linear.sync_to_host()

    def sync_to_device(self) -> None:
        """Push W.values and the bias's host copy to the backend (no-op on a host backend)."""
        self.linear.sync_to_device()

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (gradients restart at zero; no batch is kept)."""
        self.linear.set_backend(check_conv_backend(backend, "convolution layers"))
        self._X, self._tiles = None, []

    def __repr__(self) -> str:
        return (f"SparseConv2d({self.linear.W!r}, c_in={self.c_in}, kernel={(self.kh, self.kw)}, "
                f"stride={self.stride}, padding={self.padding}, backend={self.backend.name!r})")


class Conv2d(SyncsParameters):
    """A dense 2-d convolution (for layers a budget keeps dense), over the patch matrix with the
    backend's dense products (BLAS on the host backends, the dense kernels on cuda). Computes in the
    weight's and input's dtype (float32 for training; float64 for gradient checks, host backends).

    .. math:: Y_2 = P W_2^T + \\mathbf{1} b^T, \\qquad dW_2 = dY_2^T P, \\qquad db = \\sum_r dY_2[r],
              \\qquad dX = \\mathrm{col2im}(dY_2 W_2)

    Parameters
    ----------
    weight : ndarray (c_out, c_in, kh, kw)
        Parameter ``{name}.weight``.
    bias : ndarray (c_out,), optional
        Parameter ``{name}.bias``; zeros if omitted.
    stride, padding : int
    backend : str | Backend, optional
        "reference", "cpu" or "cuda" (float32 only there); a backend without the convolutional
        operations is refused (ConvBackendError).
    name : str
    needs_input_grad : bool
    dtype : numpy dtype
        Of the parameters: float32 (default) or float64.
    max_tile_bytes : int
        As for :class:`SparseConv2d`.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, backend=None, name: str = "conv",
                 needs_input_grad=True, dtype=np.float32, max_tile_bytes: int = DEFAULT_TILE_BYTES):
        self.backend = check_conv_backend(backend, "convolution layers")
        weight = np.ascontiguousarray(weight, dtype=dtype)
        if weight.ndim != 4:
            raise ShapeError(f"a Conv2d weight is (c_out, c_in, kh, kw), got shape {weight.shape}")
        c_out = weight.shape[0]
        b = np.zeros(c_out, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
        if b.shape != (c_out,):
            raise ShapeError(f"bias has shape {b.shape}, expected ({c_out},)")
        self.stride, self.padding = _check_stride_padding(stride, padding)
        self.name = name
        self.needs_input_grad = needs_input_grad
        self.max_tile_bytes = int(max_tile_bytes)
        self.weight = Parameter(f"{name}.weight", weight, backend=self.backend)
        self.bias = Parameter(f"{name}.bias", b, backend=self.backend)
        self._X = self._P = self._tiles = None

    @classmethod
    def kaiming(cls, c_in: int, c_out: int, kernel, rng, stride=1, padding=0, backend=None, name: str = "conv",
                needs_input_grad=True, dtype=np.float32) -> "Conv2d":
        """Weights N(0, 2 / (c_in kh kw)) (Kaiming normal, fan-in), bias 0."""
        kh, kw = pair(kernel, "kernel")
        w = rng.standard_normal((c_out, c_in, kh, kw)) * np.sqrt(2.0 / (c_in * kh * kw))
        return cls(w.astype(dtype), stride=stride, padding=padding, backend=backend, name=name,
                   needs_input_grad=needs_input_grad, dtype=dtype)

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.value.shape[2:])

    @property
    def shape(self) -> tuple[int, int]:
        """(c_out, c_in * kh * kw): the filter matrix's shape."""
        c_out, c_in, kh, kw = self.weight.value.shape
        return c_out, c_in * kh * kw

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def _conv(self):
        return (*self.kernel, self.stride, self.padding)

    def _W2(self):
        return self.weight.value.reshape(self.shape)  # (c_out, c_in*kh*kw), a view

    def forward(self, X):
        """X (B, c_in, H, W) -> Y (B, c_out, Ho, Wo).

        .. math:: Y_2 = \\mathrm{im2col}(X) \\, W_2^T + \\mathbf{1} b^T
        """
        check_nchw(X, self.weight.value.shape[1])
        be = self.backend
        B = int(X.shape[0])
        Ho, Wo = output_hw(X.shape, *self._conv())
        self._tiles = sample_tiles(X.shape, *self._conv(), X.dtype.itemsize, self.max_tile_bytes)
        self._X = X
        Y = None
        for a, b in self._tiles:
            P = be.im2col(X[a:b], *self._conv())  # (n*Ho*Wo, c_in*kh*kw)
            Y2 = be.add_bias(be.dense_matmul(self._W2(), P), self.bias.value)  # (n*Ho*Wo, c_out)
            if len(self._tiles) == 1:
                Y = be.rows_to_nchw(Y2, B, Ho, Wo)
            else:
                if Y is None:
                    Y = be.zeros((B, self.shape[0], Ho, Wo), Y2.dtype)  # (B, c_out, Ho, Wo)
                Y[a:b] = be.rows_to_nchw(Y2, b - a, Ho, Wo)
        self._P = P if len(self._tiles) == 1 else None  # a single chunk's patches are kept
        return Y

    def backward(self, dY):
        """dY (B, c_out, Ho, Wo) -> dX (B, c_in, H, W) (None if not ``needs_input_grad``); fills
        ``weight.grad`` (c_out, c_in, kh, kw) and ``bias.grad``.

        .. math:: dW_2 = dY_2^T P, \\qquad db = \\sum_r dY_2[r], \\qquad dX = \\mathrm{col2im}(dY_2 W_2)
        """
        be, conv = self.backend, self._conv()
        dY2 = be.nchw_to_rows(dY)  # (B*Ho*Wo, c_out)
        m = int(dY2.shape[0]) // int(dY.shape[0])  # Ho * Wo
        X_shape = tuple(int(n) for n in self._X.shape)
        _, C, H, W = X_shape
        gW = self.weight.grad.reshape(self.shape)  # (c_out, c_in*kh*kw), a view of the gradient
        one = len(self._tiles) == 1
        dX = None
        if self.needs_input_grad and not one:
            dX = be.zeros(X_shape, np.result_type(dY.dtype, self.weight.value.dtype))  # (B, c_in, H, W)
        for t, (a, b) in enumerate(self._tiles):
            P = self._P if self._P is not None else be.im2col(self._X[a:b], *conv)  # (n*Ho*Wo, c_in*kh*kw)
            dYc = dY2[a * m:b * m]  # (n*Ho*Wo, c_out)
            if t == 0:
                be.dense_grad(P, dYc, out=gW)
            else:
                _accumulate(be, gW, be.dense_grad(P, dYc, out=be.zeros_like(gW)))
            if self.needs_input_grad:
                dXc = be.col2im(be.dense_matmul_t(self._W2(), dYc), (b - a, C, H, W), *conv)  # (n, c_in, H, W)
                if one:
                    dX = dXc
                else:
                    dX[a:b] = dXc
        be.bias_grad(dY2, self.bias.grad)
        return dX

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (gradients restart at zero)."""
        self._move_parameters(check_conv_backend(backend, "convolution layers"))
        self._X = self._P = self._tiles = None

    def __repr__(self) -> str:
        c_out, c_in, kh, kw = self.weight.value.shape
        return (f"Conv2d(c_in={c_in}, c_out={c_out}, kernel={(kh, kw)}, stride={self.stride}, "
                f"padding={self.padding}, backend={self.backend.name!r})")
