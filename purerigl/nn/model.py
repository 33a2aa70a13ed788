"""The multilayer perceptron: linear layers (sparse or dense) with ReLU between them.

Linear layer ``i`` (0-based) is named ``layer{i}``; its parameters are ``layer{i}.values`` (sparse) or
``layer{i}.weight`` (dense) and ``layer{i}.bias``, the names used by optimizers and checkpoints.

A training step of at least :data:`FM_MIN_BATCH` rows runs its sparse layers feature-major (the batch
on the last axis, see :class:`MLP`).
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError, PureriglError
from ..formats import SparseFormat
from ..kernels import get_backend
from ..formats.budget import (
    FORMAT_NAMES,
    check_sparsity,
    layer_budget,
    random_layer_with_budget,
)
from .dense import Dense, ReLU
from .layers import SparseLinear, has_feature_major_step
from .parameter import Parameter


#: The smallest batch that :meth:`MLP.forward` runs in the feature-major layout (fewer rows: the row layout).
FM_MIN_BATCH = 4


class ModelError(PureriglError, ValueError):
    """A model description is invalid (widths, formats)."""


def parse_hidden(hidden) -> tuple[int, ...]:
    """'300,100' or [300, 100] -> (300, 100); '' or () -> no hidden layer. Widths must be >= 1."""
    if isinstance(hidden, str):
        parts = [p.strip() for p in hidden.split(",")] if hidden.strip() else []
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            raise ModelError(
                f"hidden widths must be comma-separated positive integers like '300,100', got {hidden!r}"
            ) from None
    else:
        widths = tuple(int(w) for w in hidden)
    bad = [w for w in widths if w < 1]
    if bad:
        raise ModelError(f"hidden widths must be >= 1, got {bad[0]} in {widths}")
    return widths


class MLP:
    """Linear layers with ReLU between them (none after the last); outputs logits.

    Layout of a step. :meth:`forward` takes X (B, n_features) and returns logits (B, n_classes), but
    from B = :data:`FM_MIN_BATCH` rows on it runs its sparse layers *feature-major*, on X^T
    (n_features, B): the batched kernels of the backends compute in that layout, so the row-layout
    ``matmul`` / ``matmul_t`` / ``sddmm`` each transpose their batch operand (and result) on every call,
    where ``matmul_fm`` / ``matmul_t_fm`` / ``sddmm_fm`` read X^T and dY^T as they are. The model
    instead transposes once at each end (X in, logits out; dlogits in) and runs every
    :class:`SparseLinear` with :meth:`~SparseLinear.forward_fm` / :meth:`~SparseLinear.backward_fm`
    plus the bias ops ``add_bias_fm`` / ``bias_grad_fm``. ReLU is element-wise and runs in either
    layout. A layer without a feature-major step (:class:`Dense`, or a SparseLinear subclass that changes only
    the row-layout step: :func:`~purerigl.nn.layers.has_feature_major_step`; DynaDiag's
    :class:`GatedDiagonalLinear <purerigl.nn.GatedDiagonalLinear>` gates both) runs in the row layout, with
    a transpose where the layout changes, so a model without sparse layers (sparsity 0) never
    transposes. :meth:`backward` mirrors the layouts :meth:`forward` chose. Below FM_MIN_BATCH rows
    (online inference, the small last batch of an epoch), and on the cuda backend (whose ``*_fm`` ops
    are its row kernels between two transposes: ``Backend.feature_major_native`` is False), every layer
    runs in the row layout, which the
    cpu backend's ``matmul`` / ``matmul_t`` compute without a transpose at such batches (their
    ``TRANSPOSED_MIN_BATCH`` is the same 4). The results agree to float32 rounding; DST reads a layer's
    batch in the row layout either way (:meth:`SparseLinear.saved_batch`).

    Parameters
    ----------
    linears : list of SparseLinear | Dense
        Consecutive shapes must chain: ``linears[i].shape[0] == linears[i + 1].shape[1]``. All on the
        host backends, or all on one device backend.

    Attributes
    ----------
    backend : Backend
        The first layer's backend: ``forward`` and ``backward`` take and return its arrays (device
        arrays on cuda: move a batch there with ``model.backend.to_device(X)``). :meth:`predict`
        takes and returns host arrays on every backend.
    """

    def __init__(self, linears: list):
        if not linears:
            raise ModelError("an MLP needs at least one linear layer")
        for a, b in zip(linears, linears[1:]):
            if a.shape[0] != b.shape[1]:
                raise ModelError(f"layer shapes do not chain: {a.shape} then {b.shape}")
        resident = {lin.backend.resident for lin in linears}
        if len(resident) > 1:
            names = ", ".join(f"{lin.name}: {lin.backend.name}" for lin in linears)
            raise ModelError(f"the layers of one model must keep their arrays in one place; got {names}")
        self.linears = list(linears)
        self.linears[0].needs_input_grad = False
        self.backend = self.linears[0].backend
        self.layers = []
        for i, lin in enumerate(self.linears):
            self.layers.append(lin)
            if i < len(self.linears) - 1:
                self.layers.append(ReLU(self.backend))
        self._feature_major = [False] * len(self.layers)  # per layer: the layout of the last forward

    @property
    def n_features(self) -> int:
        return self.linears[0].shape[1]

    @property
    def n_classes(self) -> int:
        return self.linears[-1].shape[0]

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def sparse_layers(self) -> list[SparseLinear]:
        return [lin for lin in self.linears if isinstance(lin, SparseLinear)]

    def forward(self, X):
        """X (B, n_features) -> logits (B, n_classes), arrays of :attr:`backend`.

        From B = :data:`FM_MIN_BATCH` on, the sparse layers run on X^T (see the class docstring), on
        a backend whose feature-major products are native (``backend.feature_major_native``: not cuda).
        """
        use_fm = X.shape[0] >= FM_MIN_BATCH and self.backend.feature_major_native
        fm = False  # the layout X is in: True for X^T (features, B)
        for k, layer in enumerate(self.layers):
            if not isinstance(layer, ReLU):  # ReLU runs in the layout it is given
                wanted = use_fm and has_feature_major_step(layer)
                if wanted != fm:
                    X, fm = self.backend.transpose(X), wanted
            self._feature_major[k] = fm
            if fm and not isinstance(layer, ReLU):
                X = layer.forward_fm_with_bias(X)  # Y^T (n_out, B)
            else:
                X = layer.forward(X)
        return self.backend.transpose(X) if fm else X  # (B, n_classes)

    def backward(self, dlogits) -> None:
        """Backpropagate dL/dlogits (B, n_classes), filling every parameter's ``grad``; each layer
        runs in the layout of the last :meth:`forward`."""
        d, fm = dlogits, False
        for layer, layer_fm in zip(reversed(self.layers), reversed(self._feature_major)):
            if layer_fm != fm:
                d, fm = self.backend.transpose(d), layer_fm
            if fm and not isinstance(layer, ReLU):
                d = layer.backward_fm_with_bias(d)  # dY^T (n_out, B) -> dX^T (n_in, B); None for the first layer
            else:
                d = layer.backward(d)

    def predict(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Logits for X in batches (no state kept for a backward)."""
        out = np.empty((X.shape[0], self.n_classes), dtype=np.float32)
        to_device, to_host = self.backend.to_device, self.backend.to_host
        for start in range(0, X.shape[0], batch_size):
            logits = self.forward(to_device(np.ascontiguousarray(X[start : start + batch_size])))
            out[start : start + batch_size] = to_host(logits)
        return out

    def sync_to_host(self) -> None:
        """Refresh every parameter's host copy (``W.values``, ``param.host``) from the backend.

        Call before reading parameters on the host (checkpoints, model files, inspection); a no-op on
        the host backends, where the host copies are the parameters themselves.
        """
        for lin in self.linears:
            lin.sync_to_host()

    def sync_to_device(self) -> None:
        """Copy every parameter's host copy to the backend (after editing them on the host)."""
        for lin in self.linears:
            lin.sync_to_device()

    def set_backend(self, backend) -> None:
        """Move every layer to ``backend``. An optimizer built before follows with
        ``optimizer.follow_parameters()`` (its step refuses moved parameters until then)."""
        b = get_backend(backend)
        for lin in self.linears:
            lin.set_backend(b)
        for layer in self.layers:
            if isinstance(layer, ReLU):
                layer.backend = b
        self.backend = b

    def describe(self) -> list[dict]:
        """One dict per linear layer: kind, format, shape, activation, nnz, density."""
        rows = []
        for i, lin in enumerate(self.linears):
            sparse = isinstance(lin, SparseLinear)
            nnz = lin.W.nnz if sparse else int(np.prod(lin.shape))
            rows.append(
                {
                    "index": i,
                    "kind": "sparse" if sparse else "dense",
                    "format": _format_name(lin.W) if sparse else "dense",
                    "shape": list(lin.shape),
                    "activation": "relu" if i < len(self.linears) - 1 else "none",
                    "nnz": int(nnz),
                    "density": nnz / (lin.shape[0] * lin.shape[1]),
                }
            )
            if hasattr(lin, "gate_state"):  # a DynaDiag layer (purerigl.nn.GatedDiagonalLinear)
                rows[-1]["gate"] = lin.gate_state()
        return rows


def _format_name(W: SparseFormat) -> str:
    return type(W).__name__.lower()


def build_mlp(
    n_features: int,
    hidden,
    n_classes: int,
    *,
    fmt: str = "condensed",
    sparsity: float = 0.9,
    backend=None,
    rng=None,
    dense_layers=(),
    budgets=None,
) -> MLP:
    """An MLP n_features -> hidden... -> n_classes, every linear layer sparse at ``sparsity``.

    ``sparsity == 0`` builds every layer as :class:`Dense` (NumPy BLAS), the dense baseline trained by
    the same code. Layers whose index is in ``dense_layers`` are dense too. ``budgets`` (one
    connection count per linear layer, e.g. from :func:`purerigl.dst.distribution.layer_budgets`)
    replaces the uniform ``sparsity``; a layer whose budget is n_out * n_in is dense. Initialisation:
    Kaiming normal with each neuron's actual fan-in, std = sqrt(2 / fan_in); biases 0.
    """
    if fmt not in FORMAT_NAMES:
        raise ModelError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMAT_NAMES)}")
    s = check_sparsity(sparsity)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    widths = (int(n_features), *parse_hidden(hidden), int(n_classes))
    if min(widths) < 1:
        raise ModelError(f"layer widths must be >= 1, got {widths}")
    shapes = [(n_out, n_in) for n_in, n_out in zip(widths, widths[1:])]
    if budgets is None:
        budgets = [shape[0] * shape[1] if s == 0.0 else layer_budget(shape, s) for shape in shapes]
    if len(budgets) != len(shapes):
        raise ModelError(f"{len(budgets)} budgets for {len(shapes)} layers")
    backend = get_backend(backend)
    linears = []
    for i, (shape, budget) in enumerate(zip(shapes, budgets)):
        name = f"layer{i}"
        if budget >= shape[0] * shape[1] or i in dense_layers:
            linears.append(Dense.kaiming(shape, rng, name=name, backend=backend))
        else:
            try:
                W = random_layer_with_budget(fmt, shape, int(budget), rng)
            except FormatError as e:
                raise ModelError(f"{name}: {e}") from None
            linears.append(SparseLinear(W, backend=backend, name=name))
    return MLP(linears)
