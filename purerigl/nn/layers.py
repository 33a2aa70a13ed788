"""Layers with a hand-written forward and backward: SparseLinear, Dense, ReLU.

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
        self._X_host = self._dY_host = None  # their host copies, made on first access

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

    def saved_batch(self):
        """(X, dY): the input of the last forward and the output gradient of the last backward, as
        arrays of the backend (device arrays on cuda; ``None`` before the first forward / backward).
        Growth rules read G = dY^T X from them, never storing G."""
        return self._X, self._dY

    @property
    def last_input(self) -> np.ndarray | None:
        """X (B, n_in) of the last forward, on the host: DST growth scores read G = dY^T X from it,
        never storing G. On cuda the first access after a forward copies X to the host."""
        if self._X_host is None and self._X is not None:
            self._X_host = self.backend.to_host(self._X)
        return self._X_host

    @property
    def last_output_grad(self) -> np.ndarray | None:
        """dY (B, n_out) of the last backward, on the host (copied on first access, like ``last_input``)."""
        if self._dY_host is None and self._dY is not None:
            self._dY_host = self.backend.to_host(self._dY)
        return self._dY_host

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def forward(self, X):
        """X (B, n_in) -> Y (B, n_out).

        .. math:: Y = X W^T + \\mathbf{1} b^T
        """
        self._X, self._X_host = X, None
        Y = self.backend.matmul(self._matrix, X)
        return self.backend.add_bias(Y, self.bias.value)

    def backward(self, dY):
        """dY (B, n_out) -> dX (B, n_in); fills ``weight.grad`` (shaped like W.values) and ``bias.grad``.

        .. math:: dW_e = \\sum_b dY_{b, i_e} X_{b, j_e}, \\qquad db = \\sum_b dY_b, \\qquad dX = dY W
        """
        self._dY, self._dY_host = dY, None
        self.backend.sddmm(self._matrix, self._X, dY, out=self.weight.grad)
        self.backend.bias_grad(dY, self.bias.grad)
        if not self.needs_input_grad:
            return None
        return self.backend.matmul_t(self._matrix, dY)

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
        """Move the layer to another backend (its gradients restart at zero)."""
        self.sync_to_host()
        W = self.W  # the host matrix, values current
        self.backend = get_backend(backend)
        self._matrix = self.backend.to_device(W)
        for p in self.parameters():
            p.backend = self.backend
        self.weight.replace(self._matrix.values, host=W.values)
        self.bias.replace(self.backend.to_device(self.bias.host), host=self.bias.host)
        self._X = self._dY = self._X_host = self._dY_host = None

    def __repr__(self) -> str:
        shown = self._W if self._W is not None else self._matrix  # never copies
        return f"SparseLinear({shown!r}, backend={self.backend.name!r})"


class Dense:
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

    def sync_to_host(self) -> None:
        """Refresh the host copies of the weight and bias (no-op on a host backend)."""
        for p in self.parameters():
            p.sync_to_host()

    def sync_to_device(self) -> None:
        """Copy the host copies of the weight and bias to the backend (no-op on a host backend)."""
        for p in self.parameters():
            p.sync_to_device()

    def set_backend(self, backend) -> None:
        """Move the layer to another backend (its gradients restart at zero)."""
        self.sync_to_host()
        self.backend = get_backend(backend)
        for p in self.parameters():
            p.backend = self.backend
            p.replace(self.backend.to_device(p.host), host=p.host)
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
