"""The two composition layers of a :class:`~.network.Network`: :class:`Reshape` and :class:`Residual`.

- :class:`Reshape` turns the flattened rows the data sets give, (B, C * H * W), into images
  (B, C, H, W);
- :class:`Residual` is a block ``y = body(x) + shortcut(x)`` (identity shortcut when none is given).
"""

from __future__ import annotations

import math

from ..errors import ShapeError
from ..kernels import get_backend
from .parameter import Parameter
from .shape_inference import NetworkError, _chain_shapes


class Reshape:
    """(B, ...) -> (B, *shape), e.g. flattened rows (B, C * H * W) -> images (B, C, H, W).

    .. math:: Y[b, c, y, x] = X[b, (c, y, x)], \\qquad dX = \\mathrm{reshape}(dY, \\text{shape of } X)

    Any input with prod(shape) values per sample is accepted (an image batch passes unchanged).
    The output is a view of the input, no copy.

    Parameters
    ----------
    shape : tuple of int
        The per-sample output shape, e.g. (C, H, W).
    """

    def __init__(self, shape, backend=None):
        self.shape = tuple(int(n) for n in shape)
        if not self.shape or min(self.shape) < 1:
            raise ShapeError(f"Reshape needs a non-empty shape of positive sizes, got {shape!r}")
        self.backend = get_backend(backend)
        self._in_shape = None

    def parameters(self) -> list[Parameter]:
        return []

    def output_shape(self, shape: tuple) -> tuple:
        """The per-sample output shape for a per-sample input ``shape`` (ShapeError if sizes differ)."""
        if math.prod(shape) != math.prod(self.shape):
            raise ShapeError(f"cannot reshape {math.prod(shape)} values per sample {tuple(shape)} to {self.shape}")
        return self.shape

    def forward(self, X):
        """X (B, ...) -> (B, *shape)."""
        self._in_shape = X.shape
        return X.reshape((X.shape[0], *self.shape))  # (B, ...) -> (B, *shape), a view

    def backward(self, dY):
        """dY (B, *shape) -> dX shaped like the last forward's X."""
        return dY.reshape(self._in_shape)  # (B, *shape) -> (B, ...), a view

    def sync_to_host(self) -> None:
        """Nothing to copy (no parameters)."""

    def sync_to_device(self) -> None:
        """Nothing to copy (no parameters)."""

    def set_backend(self, backend) -> None:
        self.backend = get_backend(backend)

    def __repr__(self) -> str:
        return f"Reshape({self.shape})"


class Residual:
    """A residual block: ``Y = body(X) + shortcut(X)``, the identity shortcut when ``shortcut`` is None.

    .. math::

        Y = f(X) + g(X), \\qquad dX = J_f^T \\, dY + J_g^T \\, dY \\quad (g = \\mathrm{id}: \\ J_g^T dY = dY)

    The backward sends the same dY back through both branches and adds their input gradients. Both sums
    are the backend's ``add`` (so a block runs on device arrays on cuda).

    Parameters
    ----------
    body : list of layers
        Run in order.
    shortcut : list of layers, optional
        Run in order on the same input (e.g. a 1 x 1 strided convolution and a batch normalisation,
        the projection shortcut of ResNet); None (default) for the identity.
    """

    def __init__(self, body: list, shortcut: list | None = None):
        self.body = list(body)
        self.shortcut = None if shortcut is None else list(shortcut)
        if not self.body:
            raise NetworkError("a residual block needs at least one layer in its body")

    def children(self) -> list:
        """The sub-layers in network order: the body, then the shortcut."""
        return self.body + (self.shortcut or [])

    @property
    def backend(self):
        return next((layer.backend for layer in self.children() if hasattr(layer, "backend")), get_backend(None))

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.children() for p in layer.parameters()]

    def output_shape(self, shape: tuple):
        """The per-sample output shape; NetworkError if the branches' shapes differ."""
        body = _chain_shapes(self.body, shape, "residual body")
        short = shape if self.shortcut is None else _chain_shapes(self.shortcut, shape, "residual shortcut")
        if body is not None and short is not None and body != short:
            raise NetworkError(f"the residual body outputs {body} per sample but the shortcut {short}; "
                               "give the block a shortcut that matches (e.g. a strided 1 x 1 convolution)")
        return body if body is not None else short

    def forward(self, X):
        """X -> body(X) + shortcut(X)."""
        Y = X
        for layer in self.body:
            Y = layer.forward(Y)
        S = X
        for layer in self.shortcut or ():
            S = layer.forward(S)
        return self.backend.add(Y, S)

    def backward(self, dY):
        """dY -> J_body^T dY + J_shortcut^T dY (dY itself through the identity)."""
        d_body = _backward_through(self.body, dY)
        d_short = _backward_through(self.shortcut or (), dY)
        return self.backend.add(d_body, d_short)

    def sync_to_host(self) -> None:
        for layer in self.children():
            _sync(layer, "sync_to_host")

    def sync_to_device(self) -> None:
        for layer in self.children():
            _sync(layer, "sync_to_device")

    def set_backend(self, backend) -> None:
        for layer in self.children():
            _move(layer, backend)

    def __repr__(self) -> str:
        short = "identity" if self.shortcut is None else self.shortcut
        return f"Residual(body={self.body}, shortcut={short})"


def _backward_through(layers, dY):
    d = dY
    for layer in reversed(list(layers)):
        d = layer.backward(d)
        if d is None:
            raise NetworkError(f"{layer!r} inside a residual block returned no input gradient "
                               "(needs_input_grad is False); the block needs it")
    return d


def _sync(layer, what: str) -> None:
    method = getattr(layer, what, None)
    if method is not None:  # ReLU has nothing to copy and no such method
        method()


def _move(layer, backend) -> None:
    if hasattr(layer, "set_backend"):
        layer.set_backend(backend)
    else:  # a parameter-free layer such as ReLU: it only records whose operations it calls
        layer.backend = get_backend(backend)
