"""Parameter: a trainable array together with its gradient, where its backend computes.

A sparse layer's stored ``values`` array *is* its weight parameter's ``value`` (the same object: the
host format's ``values`` on a host backend, the device matrix's ``values`` on cuda), so an optimizer
updating ``value`` in place updates the sparse matrix. After a topology change the layer
installs new arrays and tells the optimizer how the old entries map to the new ones
(``Optimizer.remap_state``).

Residency. ``value`` and ``grad`` are arrays of the parameter's backend: host NumPy arrays on the
reference and cpu backends, device arrays on cuda. ``host`` is a host NumPy array of the same shape:
on the host backends it is ``value`` itself; on cuda it is a mirror that is refreshed only when asked
(:meth:`Parameter.sync_to_host`, for a checkpoint, a saved model, a topology update) and pushed back
with :meth:`Parameter.sync_to_device` (after a checkpoint is loaded into it).
"""

from __future__ import annotations

import numpy as np


def _host_backend():
    """The reference backend: host NumPy array operations (what a parameter without a backend uses)."""
    from ..kernels import get_backend

    return get_backend("reference")


class Parameter:
    """A named float32 array ``value`` with a gradient ``grad`` of the same shape.

    Parameters
    ----------
    name : str
        Unique within a model (e.g. ``"layer0.values"``); optimizer state and checkpoints use it.
    value : float32 ndarray
        The initial value, a host array. It is moved to where ``backend`` computes
        (``backend.to_device``: no copy on the host backends, where ``value`` stays the same object).
        With ``host`` given, ``value`` is already an array of the backend (e.g. the device values of a
        sparse matrix) and is used as it is.
    decay : bool
        Whether weight decay applies to this parameter.
    backend : str | Backend, optional
        Whose array operations update it (optimizers call ``param.backend.sgd_step`` ...). Default: the
        reference backend, i.e. host NumPy arrays.
    host : float32 ndarray, optional
        The host mirror of an already-resident ``value``.

    Attributes
    ----------
    value, grad : backend arrays
        Updated in place by optimizers / written by the layer's backward.
    host : float32 ndarray
        The host copy (``value`` itself on a host backend); current after :meth:`sync_to_host`.
    """

    def __init__(self, name: str, value, decay: bool = True, backend=None, host=None):
        from ..kernels import get_backend

        self.name = name
        self.backend = _host_backend() if backend is None else get_backend(backend)
        self.decay = decay
        if host is None:  # a host array: move it where the backend computes (itself on the host)
            value, host = self.backend.to_device(value), value
        self.replace(value, host=host)

    def replace(self, value, host=None) -> None:
        """Install a new value array (after a topology change); the gradient is reset to zeros.

        ``value`` is an array of the parameter's backend; ``host`` its host mirror (default: ``value``
        itself, right for the host backends).
        """
        self.value = value
        self.host = value if host is None else host
        self.grad = self.backend.zeros_like(value)

    def sync_to_host(self) -> np.ndarray:
        """Copy ``value`` into ``host`` (nothing to do on a host backend); returns ``host``."""
        return self.backend.to_host(self.value, out=self.host)

    def sync_to_device(self) -> None:
        """Copy ``host`` into ``value`` (nothing to do on a host backend), e.g. after loading a checkpoint."""
        self.backend.to_device(self.host, out=self.value)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.value.shape})"


class SyncsParameters:
    """The residency half of the layer interface for a layer that owns its parameters directly
    (Dense, Conv2d, BatchNorm2d, LayerNorm, ...): each parameter copies itself (nothing on a host backend)."""

    def sync_to_host(self) -> None:
        """Refresh every parameter's host copy from the backend."""
        for p in self.parameters():
            p.sync_to_host()

    def sync_to_device(self) -> None:
        """Copy every parameter's host copy to the backend."""
        for p in self.parameters():
            p.sync_to_device()

    def _move_parameters(self, backend) -> None:
        """The shared part of ``set_backend``: refresh every parameter's host copy, make ``backend`` (a
        resolved :class:`~purerigl.kernels.registry.Backend`) the layer's and each parameter's, and copy
        each parameter there (its gradient restarts at zero). The layer then drops what it cached."""
        self.sync_to_host()
        self.backend = backend
        for p in self.parameters():
            p.backend = backend
            p.replace(backend.to_device(p.host), host=p.host)


class SyncsChildren:
    """The same for a layer made of layers (a transformer block, attention): each child syncs itself."""

    def sync_to_host(self) -> None:
        for layer in self.children():
            layer.sync_to_host()

    def sync_to_device(self) -> None:
        for layer in self.children():
            layer.sync_to_device()
