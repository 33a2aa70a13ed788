"""What a DST method is: a rule that, given one layer and the drop fraction, chooses its new structure.

A method only computes scores and choices. It hands the chosen structure to
:func:`purerigl.dst.topology.apply_structure`, which rewrites indices and values and remaps the
optimizer state; :class:`purerigl.dst.updater.DSTUpdater` decides when updates happen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PureriglError
from ..nn import MLP


class MethodError(PureriglError, ValueError):
    """A method was asked for something it cannot do (wrong format, bad option)."""


@dataclass
class LayerUpdate:
    """Everything a method may read when it updates one layer.

    Attributes
    ----------
    layer : SparseLinear
        Its ``W`` (current structure and post-step weights), ``backend`` (growth kernels),
        ``last_input`` X (B, n_in) and ``last_output_grad`` dY (B, n_out) of the batch just trained on
        (of the last N batches stacked, with gradient accumulation: ``SparseLinear.keep_batches``).
    optimizer : Optimizer
        Passed on to ``apply_structure`` to remap the state.
    alpha : float
        Drop fraction of this update (already decayed by the schedule).
    rng : numpy Generator
        The updater's own generator (random growth, samplers).
    budget : int
        The layer's connection budget C_l (SRigL re-derives its fan-in from it).
    is_output : bool
        True for the network's last layer (never ablated).
    salt : int
        The tie rule's salt for this layer and update (:func:`purerigl.dst.topology.tie_salt`): every
        selection of the update orders equal scores by ``tie_rank(position, salt)``.
    """

    layer: object
    optimizer: object
    alpha: float
    rng: np.random.Generator
    budget: int
    is_output: bool = False
    salt: int = 0


def format_of(M) -> str:
    """The storage format of a host or device matrix: "condensed", "diagonal" or "csr" (a device
    matrix ``DeviceCSR`` is "csr", like the host ``CSR`` it mirrors)."""
    return type(M).__name__.removeprefix("Device").lower()


def saved_batch_of(layer, method: str):
    """(X, dY) the layer kept from its last forward and backward, as backend arrays, or a MethodError
    naming the method that needs them."""
    X, dY = layer.saved_batch()
    if X is None or dY is None:
        raise MethodError(
            f"{method} needs the layer's last batch (X and dY) to score growth: run a forward and a "
            f"backward pass on layer {getattr(layer, 'name', '?')!r} before the topology update"
        )
    return X, dY


class Method:
    """Base class. ``formats`` lists the storage formats the method works on; the first is its default."""

    name = "static"
    formats: tuple[str, ...] = ("condensed", "diagonal", "csr")

    #: True when :meth:`update` is written with the layer backend's operations only (``layer.matrix``,
    #: ``layer.saved_batch()``, :data:`~purerigl.kernels.registry.UPDATE_OPS`), so it runs where the
    #: backend computes; False when it reads host arrays (``layer.W``, ``layer.last_input``), which the
    #: updater then refreshes from the device first (:class:`purerigl.dst.updater.DSTUpdater`). Static
    #: (this class) changes nothing and reads no array: True. Each subclass says which it is. (Not to be
    #: confused with :attr:`purerigl.kernels.registry.Backend.resident`: whether a backend's arrays
    #: live off the host.)
    runs_on_backend: bool = True

    #: True when the growth rule scores by the gradient G = dY^T X of ``layer.saved_batch()`` (RigL,
    #: SRigL, GSE, diag-rigl): with ``DSTUpdater(grad_accumulation=N)`` the layers then keep their last
    #: N batches and G is the sum of their gradients. False (static, SET): no batch beyond the last is kept.
    scores_by_gradient: bool = False

    def update(self, u: LayerUpdate) -> dict:
        """Change ``u.layer``'s structure; return statistics (kept, grown, dropped, ...). Static: nothing."""
        nnz = int(u.layer.matrix.values.size)
        return {"kept": nnz, "grown": 0, "dropped": 0}


class TopologyUpdater:
    """Interface of a DST method plugged into the training loop (:class:`purerigl.training.Trainer`);
    the base class never changes anything (the static baseline).

    ``after_step`` runs after every optimizer step with the number of steps completed; it may rewrite
    the sparse layers' structure (and must then remap the optimizer state). It returns a dict of
    statistics to merge into the epoch metrics, or an empty dict.
    """

    name = "static"

    def begin(self, model: MLP) -> None:
        """Called once before the first (or first resumed) epoch."""

    def begin_epoch(self, epoch: int, model: MLP, optimizer) -> None:
        """Called at the start of every epoch (``epoch`` 0-based: the epochs completed so far)."""

    def after_step(self, step: int, model: MLP, optimizer) -> dict:
        return {}

    def epoch_stats(self, model: MLP) -> dict:
        """Topology statistics merged into each epoch's metrics."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
