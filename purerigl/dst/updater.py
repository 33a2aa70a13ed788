"""The DST driver plugged into the training loop: when to update, which method, per-epoch statistics.

:class:`DSTUpdater` implements the loop's topology hook. After every optimizer step it asks the
schedule whether this step updates; if so, every sparse layer is handed to the method with the decayed
drop fraction alpha_t. Once per epoch it reports the topology: nnz, density, fan-in range, ablated
neurons, the fraction of connections changed since the previous epoch and the number of this epoch's
updates that left the layer's structure as it was (nothing grown and nothing dropped, as counted by
:func:`~purerigl.dst.topology.apply_structure`: a connection dropped and regrown in the same update
counts as kept), per layer.

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
    """

    def __init__(self, method: Method, schedule: UpdateSchedule, budgets: dict, seed: int = 0):
        self.method = method
        self.name = method.name
        self.schedule = schedule
        self.budgets = dict(budgets)
        self.seed = int(seed)
        self.rng = np.random.default_rng([seed, 0x5D57])  # independent of the shuffling generator
        self.n_updates = 0
        self._previous: dict[str, np.ndarray] = {}
        self._unchanged: dict[str, int] = {}  # per layer: this epoch's updates that changed nothing

    def begin(self, model) -> None:
        """Remember the structure at the start (or resumption) of training, for the 'changed' statistic."""
        self._previous = {layer.name: np.sort(flat_positions(layer.W)) for layer in model.sparse_layers()}

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
            if isinstance(stats, dict) and stats.get("grown") == 0 and stats.get("dropped") == 0:  # new == old
                self._unchanged[layer.name] = self._unchanged.get(layer.name, 0) + 1
        self.n_updates += 1
        return {}

    def epoch_stats(self, model) -> dict:
        """Per-layer topology of the model now, the fraction changed since the last call and how many
        updates since the last call changed nothing (``updates_unchanged``, then reset)."""
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
                }
            )
        self._unchanged = {}
        return {"topology_updates": self.n_updates, "layers": layers}

    def state_dict(self) -> dict:
        return {
            "method": self.name, "rng_state": self.rng.bit_generator.state, "n_updates": self.n_updates,
            "unchanged": dict(self._unchanged),  # empty at an epoch's end, where checkpoints are written
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("method") != self.name:
            raise ValueError(f"checkpoint was trained with method {state.get('method')!r}, not {self.name!r}")
        self.rng.bit_generator.state = state["rng_state"]
        self.n_updates = int(state["n_updates"])
        self._unchanged = {str(k): int(v) for k, v in state.get("unchanged", {}).items()}
