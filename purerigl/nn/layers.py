"""The sparse linear layer, SparseLinear, with a hand-written forward and backward (the dense ``Dense``
and ``ReLU`` beside it: :mod:`.dense`).

Every layer has the same small interface:

- ``forward(X) -> Y`` keeps what the backward needs;
- ``backward(dY) -> dX`` writes the gradients of its parameters into ``param.grad`` and returns the
  gradient with respect to its input (``None`` when ``needs_input_grad`` is False, as for the first
  layer of a network, whose input gradient nobody uses);
- ``parameters() -> list[Parameter]``;
- ``sync_to_host()`` / ``sync_to_device()``: refresh the host copies of the parameters from where the
  backend computes, or push edited host copies back (both do nothing on the host backends).

Layers hold a backend and call its operations (``backend.matmul``, ``backend.add_bias``,
``backend.relu_forward`` ...: :data:`purerigl.kernels.registry.ARRAY_OPS`); they never branch on the
device inside the maths. On the cuda backend X, Y, dY, dX and every parameter are device arrays, so a
whole training step runs on the device.

Residency of a :class:`SparseLinear` on cuda: the host format object ``W`` holds the structure and a
host copy of the values; the products read ``backend.to_device(W)`` (a ``DeviceCondensed`` /
``DeviceDiagonal`` / ``DeviceCSR`` whose ``values`` *is* ``weight.value``, updated in place by the
optimizer). ``W.values`` is refreshed only by :meth:`SparseLinear.sync_to_host` (the DST updater
calls it before a topology update; checkpoints and model files call ``model.sync_to_host()``), and
the structure changes only through :meth:`SparseLinear.set_structure`, which copies the new matrix
to the device. ``last_input`` / ``last_output_grad`` copy X / dY to the host on first access after
each step (only a topology update reads them). On the host backends ``to_device(W)`` is ``W`` itself
and none of this copies anything.

Growth from accumulated gradients (``purerigl train --grad-accumulation N``). After
:meth:`SparseLinear.keep_batches` ``(N)`` with N > 1, every backward also appends the step's (X, dY)
pair to a ring of the last N pairs, kept on the backend (references to the arrays the step computed:
device arrays on cuda, no copy), and :meth:`SparseLinear.saved_batch` returns their vertical stacking,
oldest first: one larger batch whose G = dY^T X is the sum of the N batch gradients, so the streamed
growth kernels read the accumulated gradient unchanged and the dense gradient is still never stored.
Memory: N * B * (n_in + n_out) float32 per layer for the ring, plus the same again for the stacking
made at a topology update (released at the next backward). N = 1 (the default) keeps nothing beyond
the last X and dY.

Feature-major products (the convolutions, :class:`~purerigl.nn.conv.SparseConv2d`).
:meth:`SparseLinear.forward_fm` / :meth:`SparseLinear.backward_fm` take and return the batch on the
last axis, X^T (n_in, B), Y^T (n_out, B), through the backend's ``matmul_fm``, ``sddmm_fm`` and
``matmul_t_fm``, and leave the bias to the caller (who adds it while changing layout anyway). A
convolution's operand is its patch matrix, and this layout is the one the cpu kernels compute in, so
no patch-sized transpose happens in a step. The layer then keeps X^T and dY^T; :meth:`saved_batch`
(what the growth rules read, once per topology update) still returns the row layout, transposed on
first use after each step (``backend.transpose``, one copy of each, released at the next step).
Where the backend computes the products from the convolution's input itself
(``backend.takes_patches``), X^T is a :class:`~purerigl.kernels.patch_operand.Patches`, the input
and the convolution's geometry, and :meth:`saved_batch` builds the patch matrix in the row layout
then (``Patches.rows``), so it exists only during a topology update.
"""

from __future__ import annotations

import numpy as np

from ..formats import SparseFormat
from ..kernels import get_backend
from ..kernels.patch_operand import Patches
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
        On a host backend its ``values`` array is the weight parameter's ``value`` (the same object);
        on cuda it is the parameter's ``host`` copy (see the module docstring).
    bias : float32 ndarray (n_out,), optional
        Zeros if omitted. Ablated rows (Condensed) output exactly their bias.
    backend : str | Backend, optional
        Which implementation of the sparse ops and array ops to call (see :func:`purerigl.get_backend`).
    name : str
        Prefix of the parameter names (``{name}.values``, ``{name}.bias``).
    """

    def __init__(self, W: SparseFormat, bias=None, backend=None, name: str = "layer", needs_input_grad=True):
        self._W = W  # the host matrix (see the W property)
        self._values_stale = False  # True: _W's structure is current but its values are not
        self.backend = get_backend(backend)
        self.name = name
        self.needs_input_grad = needs_input_grad
        b = np.zeros(W.n_out, dtype=np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        self._matrix = self.backend.to_device(W)  # what the products read: W itself on a host backend
        self.weight = Parameter(f"{name}.values", self._matrix.values, backend=self.backend, host=W.values)
        self.bias = Parameter(f"{name}.bias", b, backend=self.backend)
        self._X = self._dY = None  # backend arrays of the last forward / backward
        self._feature_major = False  # True: _X and _dY are X^T and dY^T (forward_fm / backward_fm)
        self._rows = None  # with _feature_major: (X, dY) in the row layout, made on first use
        self._X_host = self._dY_host = None  # host copies of saved_batch(), made on first access
        self._window = 1  # batches the growth scores read (keep_batches)
        self._kept: list = []  # with _window > 1: the last _window (X, dY, feature-major?), oldest first
        self._stacked = None  # their stacking (saved_batch), made on first use after each backward

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._matrix.shape)

    @property
    def W(self) -> SparseFormat:
        """The weight matrix on the host (Condensed, Diagonal or CSR).

        On a host backend it is the matrix the products read. On cuda its structure is current, and
        its values as of the last :meth:`sync_to_host`; after a topology update made on the device
        (:meth:`set_structure` with a device matrix) the first access copies the new matrix, values
        included, to the host.
        """
        if self._W is None:
            self._W = self.backend.to_host(self._matrix)
            self.weight.host = self._W.values
        elif self._values_stale:  # the structure is known, its values were remapped on the device
            self.weight.sync_to_host()
        self._values_stale = False
        return self._W

    @property
    def matrix(self):
        """The weight matrix where the backend computes: ``W`` itself on a host backend, its device
        copy (``DeviceCondensed`` / ``DeviceDiagonal`` / ``DeviceCSR``) on cuda. Its ``values`` is the
        weight parameter's ``value``. DST methods that run on the backend read and replace this one."""
        return self._matrix

    @property
    def forward_matrix(self):
        """The matrix the last forward multiplied by (:attr:`matrix`; a subclass computing with another,
        like the gated W_eff of :class:`~purerigl.nn.GatedDiagonalLinear`, returns that one): a
        convolution's input gradient is ``backend.conv_input_grad_fm`` of it."""
        return self._matrix

    @property
    def accepts_patches(self) -> bool:
        """Whether :meth:`forward_fm` may be given a convolution's patch matrix held as its input (a
        :class:`~purerigl.kernels.patch_operand.Patches`) in place of X^T: True when the layer's
        feature-major step is SparseLinear's own, which only hands X^T to the backend's ``matmul_fm``
        and ``sddmm_fm`` and builds the rows in :meth:`saved_batch`. A subclass with a step of its own
        says when it is safe (the gated diagonal layer: always, its products with the gates are
        ``matmul_fm`` and ``sddmm_fm`` too)."""
        return not any(getattr(type(self), name) is not getattr(SparseLinear, name) for name in FM_STEP)

    def saved_batch(self):
        """(X, dY): the input of the last forward and the output gradient of the last backward, as
        arrays of the backend (device arrays on cuda; ``None`` before the first forward / backward).
        Growth rules read G = dY^T X from them, never storing G.

        After :meth:`keep_batches` ``(N)`` with N > 1: the stacking of the kept pairs of the last
        (up to) N backward passes, oldest first, X (sum of B_b, n_in) and dY (sum of B_b, n_out), whose
        dY^T X is the sum of their gradients (``None, None`` while none is kept). Made on first use
        after each backward (a copy on the backend; one pair is returned as it is).

        Always in the row layout: after :meth:`forward_fm` / :meth:`backward_fm` the kept X^T and dY^T
        are transposed on first use (``backend.transpose``), and the copies are held until the next step.
        """
        if self._window == 1:
            if not self._feature_major:
                return self._X, self._dY
            if self._rows is None:
                self._rows = self._row_layout(self._X, self._dY, True)
            return self._rows
        if not self._kept:
            return None, None
        if self._stacked is None:
            pairs = self.kept_batches()  # row layout
            self._stacked = tuple(_stack_rows(self.backend, [pair[k] for pair in pairs]) for k in (0, 1))
        return self._stacked

    def _row_layout(self, X, dY, feature_major: bool) -> tuple:
        """(X, dY) in the row layout: transposed on the backend when they are X^T and dY^T."""
        if not feature_major:
            return X, dY
        T = self.backend.transpose
        if isinstance(X, Patches):  # a convolution's patch matrix held as its input: built now, in rows
            return X.rows(self.backend), (None if dY is None else T(dY))
        return (None if X is None else T(X)), (None if dY is None else T(dY))

    @property
    def batches_kept(self) -> int:
        """N of :meth:`keep_batches`: how many of the last batches :meth:`saved_batch` stacks (1: the last)."""
        return self._window

    def keep_batches(self, n: int) -> None:
        """Let the growth scores read the gradient summed over the last ``n`` batches.

        From now on every backward keeps its (X, dY) pair in a ring of the last ``n`` pairs (on the
        backend: references, no copy) and :meth:`saved_batch` returns their stacking. Memory
        O(n * B * (n_in + n_out)) for the ring, and as much again for the stacking while it is held.
        ``n = 1`` (the default) keeps only the last X and dY, as without this call. Pairs already
        kept stay (the newest ``n`` of them; none for ``n = 1``).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"the number of batches to keep must be an integer >= 1, got {n!r}")
        n = int(n)
        kept = self._kept[-n:] if n > 1 else []
        if n != self._window or len(kept) != len(self._kept):
            self._window, self._kept = n, kept
            self._stacked = self._X_host = self._dY_host = None

    def kept_batches(self) -> list:
        """The kept (X, dY) pairs, oldest first, as backend arrays in the row layout (a new list; empty
        for N = 1; pairs kept by :meth:`backward_fm` are transposed copies). Training checkpoints store
        them (:mod:`purerigl.training.checkpoint`) so that a resumed run scores its first updates on the
        same batches."""
        return [self._row_layout(X, dY, fm) for X, dY, fm in self._kept]

    def set_kept_batches(self, pairs) -> None:
        """Replace the kept pairs by ``pairs`` [(X, dY), ...], oldest first (host or backend arrays,
        moved to the backend): what :meth:`kept_batches` returned, or a checkpoint's copy of it. They
        are read once :meth:`keep_batches` has set N > 1 (and cut to the newest N)."""
        to = self.backend.to_device
        self._kept = [(to(X), to(dY), False) for X, dY in pairs]  # (X, dY, feature-major?)
        if self._window > 1:
            del self._kept[: -self._window]
        self._stacked = self._X_host = self._dY_host = None

    @property
    def last_input(self) -> np.ndarray | None:
        """X of :meth:`saved_batch` on the host: (B, n_in) of the last forward, or the stacked
        (sum of B_b, n_in) of the kept batches (:meth:`keep_batches`). DST growth scores read
        G = dY^T X from it, never storing G. On cuda the first access after a step copies X to the host."""
        if self._X_host is None:
            X = self.saved_batch()[0]
            if X is not None:
                self._X_host = self.backend.to_host(X)
        return self._X_host

    @property
    def last_output_grad(self) -> np.ndarray | None:
        """dY of :meth:`saved_batch` on the host: (B, n_out) of the last backward, or the stacked
        (sum of B_b, n_out) of the kept batches (copied on first access, like ``last_input``)."""
        if self._dY_host is None:
            dY = self.saved_batch()[1]
            if dY is not None:
                self._dY_host = self.backend.to_host(dY)
        return self._dY_host

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def forward(self, X):
        """X (B, n_in) -> Y (B, n_out).

        .. math:: Y = X W^T + \\mathbf{1} b^T
        """
        self._remember_input(X, False)
        Y = self.backend.matmul(self._matrix, X)
        return self.backend.add_bias(Y, self.bias.value)

    def backward(self, dY):
        """dY (B, n_out) -> dX (B, n_in); fills ``weight.grad`` (shaped like W.values) and ``bias.grad``.

        .. math:: dW_e = \\sum_b dY_{b, i_e} X_{b, j_e}, \\qquad db = \\sum_b dY_b, \\qquad dX = dY W
        """
        self._remember_output_grad(dY, False)
        self.backend.sddmm(self._matrix, self._X, dY, out=self.weight.grad)
        self.backend.bias_grad(dY, self.bias.grad)
        if not self.needs_input_grad:
            return None
        return self.backend.matmul_t(self._matrix, dY)

    def forward_fm(self, XT):
        """The product in the feature-major layout, XT (n_in, B) -> YT (n_out, B), **without the bias**:
        the caller adds it (a convolution does so while it reorders Y^T to (B, c_out, Ho, Wo)).

        .. math:: Y^T = W X^T
        """
        self._remember_input(XT, True)
        return self.backend.matmul_fm(self._matrix, XT)

    def backward_fm(self, dYT):
        """dYT (n_out, B) -> dXT (n_in, B) (None if not ``needs_input_grad``) after :meth:`forward_fm`;
        fills ``weight.grad`` (shaped like W.values). ``bias.grad`` is the caller's (the row sums of dYT).

        .. math:: dW_e = \\sum_b dY^T_{i_e, b} X^T_{j_e, b}, \\qquad dX^T = W^T dY^T
        """
        self._remember_output_grad(dYT, True)
        self.backend.sddmm_fm(self._matrix, self._X, dYT, out=self.weight.grad)
        if not self.needs_input_grad:
            return None
        return self.backend.matmul_t_fm(self._matrix, dYT)

    def gradients_fm(self, XT, dYT) -> tuple[dict, object]:
        """The gradients of one more chunk of a batch in the feature-major layout, keeping nothing:
        ``({"weight": dW}, dXT)`` with dW shaped like ``W.values`` and dXT (n_in, B) (None if not
        ``needs_input_grad``); no bias (the caller's). A tiled convolution adds these up over its other
        chunks (:class:`~purerigl.nn.conv.SparseConv2d`) around the :meth:`backward_fm` of its last one.
        Keys name the attribute whose ``.grad`` each gradient adds to; a subclass with more trained
        arrays returns them too (the gated diagonal layer's ``"alpha"``).

        .. math:: dW_e = \\sum_b dY^T_{i_e, b} X^T_{j_e, b}, \\qquad dX^T = W^T dY^T
        """
        dW = self.backend.sddmm_fm(self._matrix, XT, dYT)
        dXT = self.backend.matmul_t_fm(self._matrix, dYT) if self.needs_input_grad else None
        return {"weight": dW}, dXT

    def forward_fm_with_bias(self, XT):
        """:meth:`forward_fm` plus the bias, XT (n_in, B) -> YT (n_out, B): the whole layer in the
        feature-major layout (the MLP's and a token-wise layer's step).

        .. math:: Y^T = W X^T + \\mathrm{bias} \\, \\mathbf{1}^T
        """
        return self.backend.add_bias_fm(self.forward_fm(XT), self.bias.value)

    def backward_fm_with_bias(self, dYT):
        """:meth:`backward_fm` plus ``bias.grad`` (the row sums of dYT), after :meth:`forward_fm_with_bias`:
        dYT (n_out, B) -> dXT (n_in, B), or None if not ``needs_input_grad``."""
        self.backend.bias_grad_fm(dYT, self.bias.grad)
        return self.backward_fm(dYT)

    def _remember_input(self, X, feature_major: bool) -> None:
        """Keep the forward's input (X, or X^T with ``feature_major``) for the backward and saved_batch."""
        self._X, self._X_host, self._rows = X, None, None
        self._feature_major = feature_major

    def _remember_output_grad(self, dY, feature_major: bool = False) -> None:
        """Keep dY (or dY^T) for :meth:`saved_batch` (and the pair in the ring of :meth:`keep_batches`)."""
        if feature_major != self._feature_major:
            raise ValueError(
                f"layer {self.name!r}: {'backward_fm' if feature_major else 'backward'} after "
                f"{'forward_fm' if self._feature_major else 'forward'}; use the pair of the same layout"
            )
        self._dY, self._dY_host, self._rows = dY, None, None
        if self._window > 1:  # the ring of the last N pairs (keep_batches)
            self._kept.append((self._X, dY, feature_major))
            del self._kept[: -self._window]
            self._stacked = self._X_host = None

    def set_structure(self, W, host: SparseFormat | None = None) -> None:
        """Install a new sparse matrix (after a topology change); the weight parameter follows it.

        ``W`` is a host format (Condensed, Diagonal, CSR), copied to the device on cuda, or a matrix
        already on the backend (what :meth:`matrix` holds: a device matrix built on the device by a
        resident DST update, installed as it is). In that case ``host``, when given, is the same
        structure on the host (a host method computed it): it becomes ``W`` and its values are
        refreshed from the device when first read; without it the whole host matrix is copied back
        when first read.
        """
        if tuple(W.shape) != self.shape:
            raise ValueError(f"new structure has shape {tuple(W.shape)}, layer has {self.shape}")
        if isinstance(W, SparseFormat):
            self._W, self._values_stale = W, False
            self._matrix = self.backend.to_device(W)
            self.weight.replace(self._matrix.values, host=W.values)
        elif host is not None:
            self._W, self._values_stale = host, True
            self._matrix = W
            self.weight.replace(W.values, host=host.values)
        else:
            self._W = None  # rebuilt from the device on first access
            self._matrix = W
            self.weight.replace(W.values, host=np.empty(W.values.shape, dtype=np.float32))

    def sync_to_host(self) -> None:
        """Refresh ``W.values`` and the bias's host copy from the backend (no-op on a host backend)."""
        if self._W is None or self._values_stale:
            self.W  # a stale host matrix is refreshed from the device, values included  # noqa: B018
        else:
            self.weight.sync_to_host()
        self.bias.sync_to_host()

    def sync_to_device(self) -> None:
        """Copy ``W.values`` and the bias's host copy to the backend (no-op on a host backend)."""
        self.weight.sync_to_device()
        self.bias.sync_to_device()

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (its gradients restart at zero, and no batch is kept)."""
        self.sync_to_host()
        W = self.W  # the host matrix, values current
        self.backend = get_backend(backend)
        self._matrix = self.backend.to_device(W)
        for p in self.parameters():
            p.backend = self.backend
        self.weight.replace(self._matrix.values, host=W.values)
        self.bias.replace(self.backend.to_device(self.bias.host), host=self.bias.host)
        self._X = self._dY = self._X_host = self._dY_host = self._rows = None
        self._feature_major = False
        self._kept, self._stacked = [], None

    def __repr__(self) -> str:
        shown = self._W if self._W is not None else self._matrix  # never copies
        return f"SparseLinear({shown!r}, backend={self.backend.name!r})"


#: (method, the method that must change with it) of a SparseLinear's step: each feature-major method computes
#: what its row-layout twin does, and ``forward_matrix`` names the matrix ``forward_fm`` multiplied by.
FM_COUNTERPARTS = (("forward", "forward_fm"), ("backward", "backward_fm"), ("backward", "gradients_fm"),
                   ("forward_fm", "forward_matrix"))


#: The methods of the feature-major step that may read X^T (:attr:`SparseLinear.accepts_patches`).
FM_STEP = ("forward_fm", "backward_fm", "gradients_fm", "saved_batch", "_row_layout", "kept_batches")


def missing_fm_overrides(cls) -> list[tuple[str, str]]:
    """The pairs of :data:`FM_COUNTERPARTS` where the SparseLinear subclass ``cls`` overrides the first
    method but inherits SparseLinear's second, which would then compute without the subclass's change
    (empty for SparseLinear itself and for a consistent subclass)."""
    return [(row, fm) for row, fm in FM_COUNTERPARTS
            if getattr(cls, row) is not getattr(SparseLinear, row) and getattr(cls, fm) is getattr(SparseLinear, fm)]


def has_feature_major_step(layer) -> bool:
    """True when ``layer``'s step in the feature-major layout (:meth:`SparseLinear.forward_fm` /
    :meth:`~SparseLinear.backward_fm` plus the bias ops) computes what its forward / backward do: a
    :class:`SparseLinear`, or a subclass that overrides each feature-major method whose row-layout
    twin it overrides (:func:`missing_fm_overrides`), as :class:`~purerigl.nn.GatedDiagonalLinear`
    does to gate its values in both layouts."""
    return isinstance(layer, SparseLinear) and not missing_fm_overrides(type(layer))


def _stack_rows(backend, parts):
    """The vertical stacking of the 2-d backend arrays ``parts`` (same width), a new backend array
    (``parts[0]`` itself when there is one): slice assignment, which NumPy arrays and numba device
    arrays both implement (a device-to-device copy on cuda)."""
    if len(parts) == 1:
        return parts[0]
    out = backend.zeros((sum(int(p.shape[0]) for p in parts), int(parts[0].shape[1])), np.float32)
    start = 0
    for p in parts:
        stop = start + int(p.shape[0])
        out[start:stop] = p
        start = stop
    return out
