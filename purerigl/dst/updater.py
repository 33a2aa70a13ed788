"""The DST driver plugged into the training loop: when to update, which method, per-epoch statistics.

:class:`DSTUpdater` implements the loop's topology hook. After every optimizer step it asks the
schedule whether this step updates; if so, every sparse layer is handed to the method with the decayed
drop fraction alpha_t. Once per epoch it reports the topology: nnz, density, fan-in range, ablated
neurons, the fraction of connections changed since the previous epoch and the number of this epoch's
updates that left the layer's structure as it was (nothing grown and nothing dropped, as counted by
:func:`~purerigl.dst.topology.apply_structure`: a connection dropped and regrown in the same update
counts as kept), per layer, and the fraction of all n_out * n_in positions that were ever active
since training began (``explored``: the in-time over-parameterisation rate of Liu et al. 2021, "Do
we actually need dense over-parameterization?", 2102.02887).

The explored set of a layer is a sorted int64 array of flat positions ``row * n_in + col`` (memory
O(explored), never a dense mask). :meth:`DSTUpdater.begin` starts it from the layer's positions (or
adds them to the set a checkpoint restored); after every update that changed the layer, the
positions of its new structure (the backend's ``flat_positions`` of ``layer.matrix``, computed where
the layer lives) are queued, and the queue is merged into the set (``np.unique`` of the
concatenation) when the epoch's statistics are taken, when the state is saved, or once
:data:`EXPLORED_QUEUE` structures are waiting. On cuda the queued arrays stay on the device until
that merge, so a topology update copies nothing more than before; the merge brings each queued
int64 (nnz,) array to the host once. The set is part of :meth:`DSTUpdater.state_dict` (arrays
under ``explored``, stored by :func:`purerigl.training.checkpoint.save_training_checkpoint` as
``topology.explored.<layer>`` arrays), so a resumed run reports the same fractions.

Device-resident training (the cuda backend). Every built-in method is written with its layer
backend's operations (``Method.runs_on_backend``: :data:`~purerigl.kernels.registry.UPDATE_OPS` on
``layer.matrix`` and ``layer.saved_batch()``), so
it updates a layer where it lives: scoring, selections, the new structure and the value and
optimizer-state remap run on the device. The values, the bias, the batch, the gradients and the
optimizer state never cross; what does, per sparse layer and update, is small and named in each
method's docstring: counts and sizes (the ``kept`` count, the size of each compaction, one
candidate count per gradient tile), the draws of the host generator going in (SET, SET on condensed
storage, GSE's candidates, so a seed gives the same topology on every backend) with one membership
bit per draw coming back, and per-row integer vectors of length n_out (SRigL's salient and kept
counts, its active rows). GSE's GraBo and GraEst samplers read the batch on the host (a copy of X and
dY), so that their draws too are the cpu backend's. A method with ``runs_on_backend = False`` (one a user
wrote with host arrays) still works: per sparse layer and update the updater first refreshes the host
copies (:meth:`SparseLinear.sync_to_host`: the values and the bias), the method reads the last X and
dY (``last_input`` / ``last_output_grad``, one copy each), and the structure it returns goes to the
device, where the values and optimizer state are remapped.
"""

from __future__ import annotations

import numpy as np

from .base import LayerUpdate, Method, TopologyUpdater
from .schedule import UpdateSchedule
from ..kernels.host_topology import flat_positions
from .topology import tie_salt

#: Most new structures per layer held (on the layer's backend) before they are merged into its
#: explored set; the merge also runs at every ``epoch_stats`` and ``state_dict``.
EXPLORED_QUEUE = 8


class DSTUpdater(TopologyUpdater):
    """Runs ``method`` on every sparse layer at the steps ``schedule`` names.

    Parameters
    ----------
    method : Method
    schedule : UpdateSchedule
    budgets : dict[str, int]
        Connection budget C_l of each sparse layer, by layer name.
    seed : int
        Seeds the updater's own generator (random growth, candidate samplers) and the tie rule's salts
        (:func:`purerigl.dst.topology.tie_salt` of seed, update number and layer).
    grad_accumulation : int
        N >= 1: a method that scores growth by gradient (``Method.scores_by_gradient``) reads the
        gradient summed over the last N batches: :meth:`begin` has every sparse layer keep its last N
        (X, dY) pairs (:meth:`purerigl.nn.SparseLinear.keep_batches`; memory O(N * B * (n_in + n_out))
        per layer) and ``saved_batch()`` stacks them. 1 (the default): the last batch only.
    """

    def __init__(self, method: Method, schedule: UpdateSchedule, budgets: dict, seed: int = 0,
                 grad_accumulation: int = 1):
        if isinstance(grad_accumulation, bool) or not isinstance(grad_accumulation, (int, np.integer)) \
                or grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be an integer >= 1, got {grad_accumulation!r}")
        self.grad_accumulation = int(grad_accumulation)
        self.method = method
        self.name = method.name
        self.schedule = schedule
        self.budgets = dict(budgets)
        self.seed = int(seed)
        self.rng = np.random.default_rng([seed, 0x5D57])  # independent of the shuffling generator
        self.n_updates = 0
        self._previous: dict[str, np.ndarray] = {}
        self._unchanged: dict[str, int] = {}  # per layer: this epoch's updates that changed nothing
        self._explored: dict[str, np.ndarray] = {}  # per layer: sorted int64 positions ever active
        self._queued: dict[str, list] = {}  # per layer: (backend, positions) of new structures not yet merged

    def begin(self, model) -> None:
        """Remember the structure at the start (or resumption) of training, for the 'changed' statistic,
        and add it to each layer's explored set (which a checkpoint may have restored); set how many
        batches each sparse layer keeps for the growth scores (``grad_accumulation``)."""
        self._previous = {layer.name: np.sort(flat_positions(layer.W)) for layer in model.sparse_layers()}
        for name, now in self._previous.items():
            self._explored[name] = np.union1d(self._merge_explored(name), now)
        window = self.grad_accumulation if getattr(self.method, "scores_by_gradient", False) else 1
        for layer in model.sparse_layers():
            layer.keep_batches(window)  # the batches a checkpoint restored stay (the newest N)

    def after_step(self, step: int, model, optimizer) -> dict:
        if not self.schedule.is_update_step(step):
            return {}
        alpha = self.schedule.drop_fraction(step)
        last = model.linears[-1]
        for number, layer in enumerate(model.sparse_layers()):
            if not self.method.runs_on_backend:
                layer.sync_to_host()  # the method reads W.values on the host (no-op on a host backend)
            stats = self.method.update(
                LayerUpdate(
                    layer=layer,
                    optimizer=optimizer,
                    alpha=alpha,
                    rng=self.rng,
                    budget=self.budgets[layer.name],
                    is_output=layer is last,
                    salt=tie_salt(self.seed, self.n_updates, number),
                )
            )
            self._after_layer_update(layer, stats)
            if isinstance(stats, dict) and stats.get("grown") == 0 and stats.get("dropped") == 0:  # new == old
                self._unchanged[layer.name] = self._unchanged.get(layer.name, 0) + 1
            else:
                self._explore(layer)
        self.n_updates += 1
        return {}

    def _after_layer_update(self, layer, stats) -> None:
        """Called after the method updated ``layer`` with what it returned (a subclass may act on it)."""

    def _explore(self, layer) -> None:
        """Queue the positions of ``layer``'s current structure for its explored set (computed by the
        layer's backend, left where they are: on cuda a device array until the merge)."""
        ops = layer.backend
        queue = self._queued.setdefault(layer.name, [])
        queue.append((ops, ops.flat_positions(layer.matrix)))
        if len(queue) >= EXPLORED_QUEUE:
            self._merge_explored(layer.name)

    def _merge_explored(self, name: str) -> np.ndarray:
        """Merge layer ``name``'s queued positions (each brought to the host by the backend that
        computed it) into its explored set; returns the set, sorted int64."""
        queue = self._queued.pop(name, [])
        explored = self._explored.get(name, np.zeros(0, dtype=np.int64))
        if queue:
            host = [np.asarray(ops.to_host(positions), dtype=np.int64) for ops, positions in queue]
            explored = np.unique(np.concatenate([explored, *host]))
            self._explored[name] = explored
        return explored

    def explored(self, model) -> dict[str, float]:
        """Per sparse layer: the fraction of its n_out * n_in positions active at some point since
        :meth:`begin` (the explored set's size over n_out * n_in)."""
        fractions = {}
        for layer in model.sparse_layers():
            if layer.name not in self._explored and layer.name not in self._queued:  # begin was not called
                self._explore(layer)
            fractions[layer.name] = self._merge_explored(layer.name).size / (layer.shape[0] * layer.shape[1])
        return fractions

    def epoch_stats(self, model) -> dict:
        """Per-layer topology of the model now, the fraction changed since the last call, how many
        updates since the last call changed nothing (``updates_unchanged``, then reset) and the fraction
        of all positions ever active (``explored``)."""
        explored = self.explored(model)
        layers = []
        for layer in model.sparse_layers():
            W = layer.W
            fan_in = W.row_fan_in()
            now = np.sort(flat_positions(W))
            before = self._previous.get(layer.name, now)
            changed = np.setdiff1d(now, before, assume_unique=True).size / max(now.size, 1)
            self._previous[layer.name] = now
            layers.append(
                {
                    "layer": layer.name,
                    "nnz": int(W.nnz),
                    "density": W.density,
                    "fan_in_min": int(fan_in.min()),
                    "fan_in_max": int(fan_in.max()),
                    "ablated": int(W.n_out - getattr(W, "n_active", W.n_out)),
                    "changed": changed,
                    "updates_unchanged": self._unchanged.get(layer.name, 0),
                    "explored": explored[layer.name],
                }
            )
        self._unchanged = {}
        return {"topology_updates": self.n_updates, "layers": layers}

    def state_dict(self) -> dict:
        """JSON-able entries, and under ``explored`` one sorted int64 array per layer (a checkpoint
        stores those as arrays of its own). Queued structures are merged first."""
        for name in list(self._queued):
            self._merge_explored(name)
        return {
            "method": self.name, "rng_state": self.rng.bit_generator.state, "n_updates": self.n_updates,
            "unchanged": dict(self._unchanged),  # empty at an epoch's end, where checkpoints are written
            "explored": dict(self._explored),
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("method") != self.name and (state.get("method"), self.name) != ("dynadiag", "diag-rigl"):
            # (a checkpoint written before DynaDiag's own method existed calls diag-rigl "dynadiag")
            raise ValueError(f"checkpoint was trained with method {state.get('method')!r}, not {self.name!r}")
        self.rng.bit_generator.state = state["rng_state"]
        self.n_updates = int(state["n_updates"])
        self._unchanged = {str(k): int(v) for k, v in state.get("unchanged", {}).items()}
        # a checkpoint written before the explored set existed has none: begin() starts it afresh
        self._explored = {str(k): _positions(k, v) for k, v in state.get("explored", {}).items()}
        self._queued = {}


def _positions(name, value) -> np.ndarray:
    """A restored explored set as a sorted int64 array; ValueError for anything else."""
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"explored set of {name} must be a 1-D integer array, got {array.dtype} {array.shape}")
    array = array.astype(np.int64)
    if array.size > 1 and not (np.diff(array) > 0).all():
        raise ValueError(f"explored set of {name} is not strictly increasing")
    return array
