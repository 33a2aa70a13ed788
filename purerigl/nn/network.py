"""Networks composed in Python: a list of layers run in order, with residual blocks and reshapes.

A :class:`Network` is built from layers that share the small interface of :mod:`.layers`
(``forward``, ``backward``, ``parameters``, ``sync_to_host``, ``sync_to_device``, ``set_backend``):
:class:`~.layers.SparseLinear`, :class:`~.layers.Dense`, :class:`~.conv.SparseConv2d`,
:class:`~.conv.Conv2d`, :class:`~.norm.BatchNorm2d`, :class:`~.layers.ReLU` (elementwise, so it takes
any shape, NCHW included), the pools of :mod:`.pool`, the transformer layers of :mod:`.transformer`
and :mod:`.attention` (token-wise linear layers, attention, pre-norm blocks, patch embedding; see
:mod:`.vit`), and the two layers of this module:

- :class:`Reshape` turns the flattened rows the data sets give, (B, C * H * W), into images
  (B, C, H, W);
- :class:`Residual` is a block ``y = body(x) + shortcut(x)`` (identity shortcut when none is given).

Example, a small CNN for 1 x 8 x 8 digits (the weight layers' ``name`` is what optimizer state, DST
budgets and checkpoints key on, so names must be unique)::

    rng = np.random.default_rng(0)
    net = Network([
        Reshape((1, 8, 8)),
        Conv2d.kaiming(1, 8, 3, rng, padding=1, name="conv0"), BatchNorm2d(8, name="bn0"), ReLU(),
        Residual([SparseConv2d(random_layer_with_budget("csr", (8, 72), 100, rng), 8, 3, padding=1,
                               name="conv1"), BatchNorm2d(8, name="bn1")]),
        ReLU(), MaxPool2d(2), Flatten(),
        SparseLinear(random_layer_with_budget("csr", (10, 128), 200, rng), name="fc0"),
    ], input_shape=(1, 8, 8))

:mod:`.models` builds LeNet-5, a small VGG and ResNet-20 this way, and :mod:`.vit` a small vision
transformer. A layer with ``children()`` (a residual block, a transformer block, attention) is a
container: its children are searched for weight layers, in the order ``children()`` gives.

What the training loop and the DST updater see is the MLP's interface (:class:`~.model.MLP`):
``backend``, ``n_features``, ``n_classes``, ``parameters()``, ``forward``, ``backward``, ``predict``,
``sync_to_host``, ``sync_to_device``, ``set_backend``, ``describe()``, and

- ``linears``: per weight-carrying layer, in network order (a residual block's body, then its
  shortcut), the object holding its weight matrix: a :class:`~.layers.SparseLinear` for a sparse
  linear layer *and for a sparse convolution* (its ``.linear``, the filter matrix
  (c_out, c_in * kh * kw) that DST methods update) *and for a sparse token-wise linear layer or patch
  embedding* (:class:`~.attention.TokenLinear`, :class:`~.transformer.PatchEmbedding`: their
  ``.linear``, run on the (B * T, d_in) tokens), a :class:`~.layers.Dense` (a dense token-wise
  layer's ``.linear``), or a :class:`~.conv.Conv2d`. ``linears[-1]`` is the classifier, and it is the
  very object ``sparse_layers()`` returns when the classifier is sparse, which is how the DST updater
  recognises the output layer (``layer is model.linears[-1]``);
- ``sparse_layers()``: the :class:`~.layers.SparseLinear` objects among ``linears``;
- ``weight_layers``: the weight-carrying layers themselves (a sparse convolution as the
  :class:`~.conv.SparseConv2d`, a token-wise layer as the :class:`~.attention.TokenLinear`), parallel
  to ``linears``.

Training and evaluation mode. ``forward`` runs in the mode of :attr:`Network.training`: training
(the default; batch normalisation uses and updates batch statistics) or evaluation (running
statistics, nothing updated). :meth:`Network.train` / :meth:`Network.eval` switch every layer that has
a mode (BatchNorm2d); :meth:`Network.predict` and :meth:`Network.evaluating` evaluate and then restore
the mode the network had. Code that evaluates through ``forward`` itself must switch the mode, e.g.
``with net.evaluating(): logits = net.forward(X)``: a training-mode forward normalises with the
batch's own statistics and moves the running ones.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from ..errors import ShapeError
from ..kernels import get_backend
from .conv import Conv2d, SparseConv2d
from .layers import Dense, ReLU, SparseLinear
from .model import ModelError
from .norm import BatchNorm2d
from .parameter import Parameter
from .patches import check_host_backend, conv_output_size
from .pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d
from .transformer import TOKEN_LAYERS, PatchEmbedding, TokenLinear, check_token_backend

__all__ = ["Network", "NetworkError", "ReLU", "Reshape", "Residual", "output_shape"]

#: The layer types that carry a weight matrix (a network's ``weight_layers``).
WEIGHT_LAYERS = (SparseConv2d, Conv2d, SparseLinear, Dense, TokenLinear, PatchEmbedding)
#: Weight layers that wrap the 2-d layer holding their matrix in ``.linear`` (what ``linears`` lists).
WRAPPERS = (SparseConv2d, TokenLinear, PatchEmbedding)
#: Layer types that run on the host backends only (a network holding one refuses a device backend).
HOST_ONLY = (SparseConv2d, Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten, *TOKEN_LAYERS)


class NetworkError(ModelError):
    """A network's layers do not fit together (shapes, names, backends)."""


# --------------------------------------------------------------------------------------------------
# the two layers of this module


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

    The backward sends the same dY back through both branches and adds their input gradients.

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
        return Y + S

    def backward(self, dY):
        """dY -> J_body^T dY + J_shortcut^T dY (dY itself through the identity)."""
        d_body = _backward_through(self.body, dY)
        d_short = _backward_through(self.shortcut or (), dY)
        return d_body + d_short

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


# --------------------------------------------------------------------------------------------------
# shape inference (per sample, without the batch axis)


def _spatial(channels, shape, kh, kw, stride, padding):
    """(channels, Ho, Wo) after a kh x kw window sliding by ``stride`` over (C, H, W) padded by ``padding``."""
    return channels, conv_output_size(shape[1], kh, stride, padding), conv_output_size(shape[2], kw, stride, padding)


def _need(shape, ndim: int, what: str, channels=None):
    if len(shape) != ndim:
        raise ShapeError(f"{what} takes {'(C, H, W)' if ndim == 3 else '(n,)'} per sample, got {tuple(shape)}")
    if channels is not None and shape[0] != channels:
        raise ShapeError(f"{what} expects {channels} {'channels' if ndim == 3 else 'features'}, got {shape[0]}")


def _linear_shape(layer, shape):
    n_out, n_in = layer.shape
    _need(shape, 1, "a linear layer", n_in)
    return (n_out,)


def _sparse_conv_shape(layer, shape):
    _need(shape, 3, "a convolution", layer.c_in)
    return _spatial(layer.c_out, shape, layer.kh, layer.kw, layer.stride, layer.padding)


def _conv_shape(layer, shape):
    c_out, c_in, kh, kw = layer.weight.value.shape
    _need(shape, 3, "a convolution", c_in)
    return _spatial(c_out, shape, kh, kw, layer.stride, layer.padding)


def _bn_shape(layer, shape):
    _need(shape, 3, "batch normalisation", layer.channels)
    return tuple(shape)


def _pool_shape(layer, shape):
    _need(shape, 3, "pooling")
    return _spatial(shape[0], shape, layer.kernel, layer.kernel, layer.stride, layer.padding)


def _gap_shape(layer, shape):
    _need(shape, 3, "global average pooling")
    return (shape[0],)


_SHAPE_RULES = {
    SparseLinear: _linear_shape,
    Dense: _linear_shape,
    SparseConv2d: _sparse_conv_shape,
    Conv2d: _conv_shape,
    BatchNorm2d: _bn_shape,
    ReLU: lambda layer, shape: tuple(shape),
    MaxPool2d: _pool_shape,
    AvgPool2d: _pool_shape,
    GlobalAvgPool2d: _gap_shape,
    Flatten: lambda layer, shape: (math.prod(shape),),
}


def output_shape(layer, shape: tuple):
    """The per-sample output shape of ``layer`` for a per-sample input ``shape``, or None when the
    layer is of a type this module does not know (and has no ``output_shape`` method).

    Raises
    ------
    ShapeError, NetworkError
        When the layer cannot take that input (channels, features, or a spatial size below 1).
    """
    if hasattr(layer, "output_shape"):
        return tuple(layer.output_shape(tuple(shape)))
    for cls in type(layer).__mro__:
        if cls in _SHAPE_RULES:
            return _SHAPE_RULES[cls](layer, tuple(shape))
    return None


def _chain_shapes(layers, shape, where: str):
    """The shape after ``layers`` (None once a layer of unknown type is met); NetworkError naming the
    layer that cannot take its input."""
    for i, layer in enumerate(layers):
        if shape is None:
            return None
        try:
            shape = output_shape(layer, shape)
        except ShapeError as e:
            name = getattr(layer, "name", None)
            label = f"{type(layer).__name__}" + (f" {name!r}" if name else "")
            raise NetworkError(f"{where}, layer {i} ({label}) cannot take a {tuple(shape)} input: {e}") from None
    return shape


# --------------------------------------------------------------------------------------------------
# the network


def _replace_in(layers: list, old, new) -> bool:
    """Replace ``old`` by ``new`` in the list ``layers`` or in a residual block's body or shortcut."""
    for k, layer in enumerate(layers):
        if layer is old:
            layers[k] = new
            return True
        if isinstance(layer, Residual) and (_replace_in(layer.body, old, new)
                                            or (layer.shortcut is not None and _replace_in(layer.shortcut, old, new))):
            return True
    return False


def _leaves(layers):
    """Every layer that is not a container, in network order (a container has ``children()``)."""
    for layer in layers:
        if hasattr(layer, "children"):
            yield from _leaves(layer.children())
        else:
            yield layer


def _activations(layers, pending: list, out: dict) -> list:
    """Record in ``out`` (id(layer) -> "relu" | "none") whether each weight layer's output passes a
    ReLU before reaching another weight layer; returns the layers still waiting for an answer."""
    for layer in layers:
        if isinstance(layer, Residual):
            body = _activations(layer.body, list(pending), out)
            short = list(pending) if layer.shortcut is None else _activations(layer.shortcut, list(pending), out)
            pending = body + [x for x in short if x not in body]
        elif isinstance(layer, WEIGHT_LAYERS):
            for p in pending:
                out.setdefault(id(p), "none")
            pending = [layer]
        elif isinstance(layer, ReLU):
            for p in pending:
                out.setdefault(id(p), "relu")
            pending = []
    return pending


class Network:
    """Layers run in order (a classifier at the end): the training loop's and DST updater's model.

    Parameters
    ----------
    layers : list of layers
        Run in order by ``forward``; :class:`Residual` blocks may nest lists of layers. At least one
        weight-carrying layer; the last one in network order is the classifier.
    input_shape : tuple of int
        The shape of one sample, e.g. (C, H, W) for images or (n,) for feature rows. ``forward`` takes
        (B, *input_shape), or (B, prod(input_shape)) rows when the network starts with a
        :class:`Reshape`. The shapes are checked through the layers at construction.
    needs_input_grad : bool
        False (default): the first layer, when it carries the weights and only parameter-free layers
        precede it, skips its input gradient (nobody reads it) and ``backward`` stops there. True:
        ``backward`` returns dL/dX (for gradient checks).

    Attributes
    ----------
    layers : list
    linears, weight_layers : list
        See the module docstring.
    backend : Backend
        The first weight layer's; every layer computes there.
    training : bool
        The mode ``forward`` runs in (see :meth:`train` / :meth:`eval`).
    architecture : dict or None
        Set by :func:`purerigl.nn.models.build_model`: the model name, input shape, classes and options
        that rebuild the same layers (for model files); None for a network composed by hand.

    Raises
    ------
    NetworkError
        (a ModelError) for no layers or no weight layer, shapes that do not chain, an output that is not
        a vector per sample, duplicate layer or parameter names, or layers on backends of both kinds.
    """

    def __init__(self, layers: list, input_shape, needs_input_grad: bool = False):
        self.layers = list(layers)
        if not self.layers:
            raise NetworkError("a network needs at least one layer")
        try:
            self.input_shape = tuple(int(n) for n in input_shape)
        except (TypeError, ValueError):
            raise NetworkError(f"input_shape must be a tuple of positive ints, got {input_shape!r}") from None
        if not self.input_shape or min(self.input_shape) < 1:
            raise NetworkError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
        self.weight_layers = [layer for layer in _leaves(self.layers) if isinstance(layer, WEIGHT_LAYERS)]
        if not self.weight_layers:
            raise NetworkError("a network needs at least one weight layer (a linear layer or a convolution)")
        self.linears = [layer.linear if isinstance(layer, WRAPPERS) else layer for layer in self.weight_layers]
        self._check_names()
        resident = {layer.backend.resident for layer in _leaves(self.layers) if hasattr(layer, "backend")}
        if len(resident) > 1:
            raise NetworkError("the layers of one network must keep their arrays in one place (host or device)")
        self.backend = self.weight_layers[0].backend
        self.output_shape = _chain_shapes(self.layers, self.input_shape, "network")
        if self.output_shape is not None and len(self.output_shape) != 1:
            raise NetworkError(f"the network outputs {self.output_shape} per sample; a classifier outputs a "
                               "vector of logits (end with Flatten or global pooling and a linear layer)")
        if not needs_input_grad:
            self._skip_input_grad()
        self.architecture: dict | None = None  # how a builder made it (set by purerigl.nn.models)
        self.training = True
        self.train()

    def replace_linear(self, old, new) -> None:
        """Put the 2-d layer ``new`` where ``old`` (one of :attr:`linears`) is: as the ``.linear`` of the
        wrapper that holds it (a sparse convolution, a token-wise layer), or in place of ``old`` in the
        layer tree (a plain linear layer, also inside a residual block). Same name and shape required.
        (DynaDiag replaces the diagonal layers by gated ones so: :func:`purerigl.dst.dynadiag.gate_model`.)"""
        if old.name != new.name or tuple(old.shape) != tuple(new.shape):
            raise NetworkError(f"replace_linear: {new.name} {tuple(new.shape)} cannot replace {old.name} "
                               f"{tuple(old.shape)}")
        i = next((k for k, lin in enumerate(self.linears) if lin is old), None)
        if i is None:
            raise NetworkError(f"replace_linear: {old.name} is not a layer of this network")
        holder = self.weight_layers[i]
        if isinstance(holder, WRAPPERS):
            holder.linear = new
        else:
            _replace_in(self.layers, old, new)
            self.weight_layers[i] = new
        self.linears[i] = new

    def _check_names(self) -> None:
        seen: dict[str, int] = {}
        for i, layer in enumerate(self.weight_layers):
            if layer.name in seen:
                raise NetworkError(f"weight layers {seen[layer.name]} and {i} are both named {layer.name!r}; "
                                   "names must be unique (optimizer state and DST budgets key on them)")
            seen[layer.name] = i
        names = [p.name for p in self.parameters()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise NetworkError(f"parameter names must be unique, {', '.join(map(repr, dup))} appear twice")

    def _skip_input_grad(self) -> None:
        for layer in self.layers:
            if isinstance(layer, WEIGHT_LAYERS):
                layer.needs_input_grad = False
                return
            if layer.parameters() or hasattr(layer, "children"):
                return

    # ------------------------------------------------------------------------------------ interface
    @property
    def n_features(self) -> int:
        """Values per sample: prod(input_shape)."""
        return math.prod(self.input_shape)

    @property
    def n_classes(self) -> int:
        """Logits per sample (the classifier's n_out)."""
        return self.output_shape[0] if self.output_shape is not None else self.linears[-1].shape[0]

    def leaves(self) -> list:
        """Every layer, residual blocks expanded (body, then shortcut), in network order."""
        return list(_leaves(self.layers))

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def sparse_layers(self) -> list[SparseLinear]:
        """The SparseLinear objects (a sparse convolution's ``.linear``), in network order."""
        return [lin for lin in self.linears if isinstance(lin, SparseLinear)]

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trained state by name (batch normalisation's running statistics), for checkpoints."""
        out = {}
        for layer in _leaves(self.layers):
            if hasattr(layer, "buffers"):
                out.update(layer.buffers())
        return out

    def load_buffers(self, buffers: dict) -> None:
        """Copy ``buffers`` (as :meth:`buffers` returns them) into the layers' arrays."""
        for layer in _leaves(self.layers):
            if hasattr(layer, "load_buffers"):
                layer.load_buffers(buffers)

    # ----------------------------------------------------------------------------------------- modes
    def train(self) -> "Network":
        """Training mode: batch normalisation uses and updates the batch statistics."""
        self.training = True
        for layer in _leaves(self.layers):
            if hasattr(layer, "train"):
                layer.train()
        return self

    def eval(self) -> "Network":
        """Evaluation mode: batch normalisation uses its running statistics and updates nothing."""
        self.training = False
        for layer in _leaves(self.layers):
            if hasattr(layer, "eval"):
                layer.eval()
        return self

    @contextmanager
    def evaluating(self):
        """``with net.evaluating(): ...`` runs in evaluation mode, then restores the previous mode."""
        was_training = self.training
        self.eval()
        try:
            yield self
        finally:
            if was_training:
                self.train()

    # ---------------------------------------------------------------------------------------- maths
    def forward(self, X):
        """X (B, *input_shape) or (B, n_features) -> logits (B, n_classes), in the current mode."""
        for layer in self.layers:
            X = layer.forward(X)
        return X

    def backward(self, dlogits):
        """Backpropagate dL/dlogits (B, n_classes), filling every parameter's ``grad``; returns dL/dX
        when the network was built with ``needs_input_grad``, else None."""
        d = dlogits
        for layer in reversed(self.layers):
            d = layer.backward(d)
            if d is None:
                return None
        return d

    def predict(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Logits (n, n_classes) float32 for the host array X, in batches, in evaluation mode (the
        previous mode is restored afterwards)."""
        out = np.empty((X.shape[0], self.n_classes), dtype=np.float32)
        to_device, to_host = self.backend.to_device, self.backend.to_host
        with self.evaluating():
            for start in range(0, X.shape[0], batch_size):
                logits = self.forward(to_device(np.ascontiguousarray(X[start:start + batch_size])))
                out[start:start + batch_size] = to_host(logits)
        return out

    # ------------------------------------------------------------------------------------ residency
    def sync_to_host(self) -> None:
        """Refresh every parameter's host copy from the backend (a no-op on the host backends)."""
        for layer in self.layers:
            _sync(layer, "sync_to_host")

    def sync_to_device(self) -> None:
        """Copy every parameter's host copy to the backend (after editing them on the host)."""
        for layer in self.layers:
            _sync(layer, "sync_to_device")

    def set_backend(self, backend) -> None:
        """Move every layer to ``backend``; convolutional and transformer networks run on the host
        backends only (ConvBackendError, TransformerBackendError, before anything moves). An optimizer
        built before follows with ``optimizer.follow_parameters()``."""
        b = get_backend(backend)
        leaves = list(_leaves(self.layers))
        if any(isinstance(layer, TOKEN_LAYERS) for layer in leaves):
            check_token_backend(b, "transformer networks")
        if any(isinstance(layer, HOST_ONLY) for layer in leaves):
            check_host_backend(b, "convolutional networks")
        for layer in self.layers:
            _move(layer, b)
        self.backend = b

    # ---------------------------------------------------------------------------------- description
    def describe(self) -> list[dict]:
        """One dict per weight layer, in the order of ``linears``.

        Keys: ``index``, ``name``, ``layer_type`` ("conv" | "linear"), ``kind`` ("sparse" | "dense"),
        ``format`` (condensed, diagonal, csr or dense), ``shape`` [n_out, n_in] of the weight matrix (for
        a convolution [c_out, c_in * kh * kw]), ``activation`` ("relu" when the layer's output passes a
        ReLU, after any normalisation, pooling or residual addition, before the next weight layer;
        a token-wise layer's own ``activation``, "gelu" for a transformer MLP's fc1; else "none"),
        ``nnz``, ``density``; for a convolution also ``c_in``, ``kernel`` [kh, kw], ``stride`` and
        ``padding``.
        """
        acts: dict = {}
        for p in _activations(self.layers, [], acts):
            acts.setdefault(id(p), "none")
        rows = []
        for i, (layer, lin) in enumerate(zip(self.weight_layers, self.linears)):
            sparse = isinstance(lin, SparseLinear)
            n_out, n_in = lin.shape
            nnz = lin.W.nnz if sparse else n_out * n_in
            row = {
                "index": i,
                "name": layer.name,
                "layer_type": "conv" if isinstance(layer, (SparseConv2d, Conv2d)) else "linear",
                "kind": "sparse" if sparse else "dense",
                "format": type(lin.W).__name__.lower() if sparse else "dense",
                "shape": [int(n_out), int(n_in)],
                "activation": getattr(layer, "activation", None) or acts.get(id(layer), "none"),
                "nnz": int(nnz),
                "density": nnz / (n_out * n_in),
            }
            if isinstance(layer, SparseConv2d):
                row.update(c_in=layer.c_in, kernel=[layer.kh, layer.kw], stride=layer.stride, padding=layer.padding)
            elif isinstance(layer, Conv2d):
                row.update(c_in=int(layer.weight.value.shape[1]), kernel=list(layer.kernel), stride=layer.stride,
                           padding=layer.padding)
            if hasattr(lin, "gate_state"):
                row["gate"] = lin.gate_state()
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Network(input_shape={self.input_shape}, layers=[\n  {inner}])"

