"""Networks composed in Python: a list of layers run in order, with residual blocks and reshapes.

A :class:`Network` is built from layers that share the small interface of :mod:`.layers`
(``forward``, ``backward``, ``parameters``, ``sync_to_host``, ``sync_to_device``, ``set_backend``):
:class:`~.layers.SparseLinear`, :class:`~.dense.Dense`, :class:`~.conv.SparseConv2d`,
:class:`~.conv.Conv2d`, :class:`~.norm.BatchNorm2d`, :class:`~.dense.ReLU` (elementwise, so it takes
any shape, NCHW included), the pools of :mod:`.pool`, the transformer layers of :mod:`.transformer`,
:mod:`.vit_layers` and :mod:`.attention` (token-wise linear layers, attention, pre-norm blocks, patch
embedding; see :mod:`.vit`), and the two composition layers of :mod:`.blocks`:

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
transformer. Shapes are checked when a network is built (:mod:`.shape_inference`). A layer with ``children()`` (a residual block, a transformer block, attention) is a
container: its children are searched for weight layers, in the order ``children()`` gives.

What the training loop and the DST updater see is the MLP's interface (:class:`~.model.MLP`):
``backend``, ``n_features``, ``n_classes``, ``parameters()``, ``forward``, ``backward``, ``predict``,
``sync_to_host``, ``sync_to_device``, ``set_backend``, ``describe()``, and

- ``linears``: per weight-carrying layer, in network order (a residual block's body, then its
  shortcut), the object holding its weight matrix: a :class:`~.layers.SparseLinear` for a sparse
  linear layer *and for a sparse convolution* (its ``.linear``, the filter matrix
  (c_out, c_in * kh * kw) that DST methods update) *and for a sparse token-wise linear layer or patch
  embedding* (:class:`~.attention.TokenLinear`, :class:`~.vit_layers.PatchEmbedding`: their
  ``.linear``, run on the (B * T, d_in) tokens), a :class:`~.dense.Dense` (a dense token-wise
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

from ..kernels import get_backend
from .blocks import Reshape, Residual, _move, _sync
from .conv import Conv2d, SparseConv2d
from .dense import Dense, ReLU
from .layers import SparseLinear
from .norm import BatchNorm2d
from .parameter import Parameter
from .patches import check_conv_backend
from .pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d
from .shape_inference import NetworkError, _chain_shapes, output_shape
from .attention import TokenLinear
from .vit_layers import PatchEmbedding

__all__ = ["Network", "NetworkError", "ReLU", "Reshape", "Residual", "output_shape"]

#: The layer types that carry a weight matrix (a network's ``weight_layers``).
WEIGHT_LAYERS = (SparseConv2d, Conv2d, SparseLinear, Dense, TokenLinear, PatchEmbedding)
#: Weight layers that wrap the 2-d layer holding their matrix in ``.linear`` (what ``linears`` lists).
WRAPPERS = (SparseConv2d, TokenLinear, PatchEmbedding)
#: Layer types that need the convolutional operations of their backend (reference, cpu and cuda have them).
CONV_LAYERS = (SparseConv2d, Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten)


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
        """Move every layer to ``backend``; a convolutional network needs a backend with the
        convolutional operations (ConvBackendError, before anything moves; reference, cpu and cuda have
        them; transformers run on every backend). An optimizer
        built before follows with ``optimizer.follow_parameters()``."""
        b = get_backend(backend)
        leaves = list(_leaves(self.layers))
        if any(isinstance(layer, CONV_LAYERS) for layer in leaves):
            check_conv_backend(b, "convolutional networks")
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
