"""DynaDiag as the paper describes it: learned diagonal importances, a soft top-K gate, an annealed
temperature and a hard freeze to K diagonals.

Paper: Tyagi, Iyer, Renninger, Kanan, Zhu, "Dynamic Sparse Training of Diagonally Sparse Networks",
ICML 2025, arXiv 2506.11449. Official code: ``horizon-research/DynaDiag``, ``MLP/linear_softmax.py``
(``TempSoftmaxDiagLinear``) and ``MLP/mlp.py`` (PAPERS.md 4.3). The layer and its gate are
:class:`purerigl.nn.GatedDiagonalLinear` and :mod:`purerigl.nn.diagonal_gate`; the plain NumPy
specification of every step below is :mod:`purerigl.dst.spec.dynadiag`.

Per sparse layer W (n_out, n_in), P = max(n_out, n_in) candidate diagonals of length L = min(n_out, n_in),
K the diagonals the budget allows (:func:`purerigl.formats.budget.structure_count`):

1. **Gate** (every step): the layer computes with :math:`\\tilde\\alpha_d V_d` on each stored diagonal d,
   :math:`\\tilde\\alpha = \\min(1, K \\operatorname{softmax}(\\alpha / T))`; alpha (P,) starts at 1 / P
   [code] and is trained by its own Adam (lr ``alpha_lr``, default 1e-3, L2 weight decay 1e-4, the
   official optimizer's settings) from the gradient through the gate, plus an optional l1 term
   :math:`\\lambda \\lVert \\alpha \\rVert_1` [paper text; absent from the code].
2. **Temperature** (at the start of every epoch e, 0-based, of E):
   :math:`T(e) = T_{min} + \\tfrac12 (T_{max} - T_{min}) (1 + \\cos(\\pi e / (E - 1)))`, T_max = 5,
   T_min = 0.05 [code: ``TemperatureScheduler`` "cosine", README settings] (:func:`temperature_at`).
3. **Freeze** (at the start of epoch F, 1-based, as the official ``--alpha-freeze-epoch``; mode
   ``at_start`` is F = 1, ``never`` never): keep the K stored diagonals of largest alpha, set their gates
   to 1 and stop training alpha [code: ``freeze_topk``]. The layer is then an ordinary K-diagonal layer:
   nnz = K L, density K / P, the cost of K diagonals in training and inference. purerigl's default is
   ``at_epoch`` at 30% of the epochs (the official README: epoch 30 of 100), :func:`default_freeze_epoch`.
   ``freeze_values``: ``keep`` (default, the code) leaves the kept values as they are, so a kept
   diagonal's weight jumps from :math:`\tilde\alpha_d V_d` to :math:`V_d`; ``fold`` (purerigl's option)
   stores :math:`\tilde\alpha_d V_d`, the gate of the last step folded into the values, so the layer
   computes what it computed before minus the diagonals left out (a freeze before the first step folds
   nothing). While the temperature is still high the gates sit near K / P, and ``keep`` then scales
   each layer's output by about P / K at once: benchmarks/results/sweep-mnist-lenet5-full/ shows a
   LeNet-5 (no normalisation, three gated layers) whose logits grew 12x at the freeze and which never
   recovered. ``fold`` keeps the soft phase's scale too: after a soft phase that learned little, the
   folded weights are small and train slowly (a small MLP on the digits learns faster with ``keep``).
4. **Storage** (``soft``):

   - ``all`` (faithful, labelled): all P diagonals are stored and gated until the freeze, as in the
     official code: P L values, the memory and work of the dense matrix.
   - ``window`` (default, purerigl's bounded variant): only S = min(P, ceil(c K)) diagonals are stored
     (``window`` c >= 1, default 2), the softmax still over all P scores (a diagonal that is not stored
     counts as one whose values are 0). Every delta_t steps until t_end or the freeze,
     :meth:`DynaDiag.update` swaps q = max(1, floor(alpha_t S)) of them: the q stored diagonals of
     smallest alpha leave, and the q offsets not kept (the ones just leaving included) of largest
     gradient norm along them, :math:`S_d = \\lVert G_d \\rVert_2`, G = dY^T X (the streamed
     ``diag_grad_norms`` of diag-rigl), enter with values 0 and zero optimizer state. An entering
     diagonal's score is set to the smallest alpha among the diagonals kept (it enters as the weakest
     member of the window: a gate comparable to theirs, so its values receive gradient at once) and
     its alpha Adam state is reset to 0. Memory O(S L + P).

What comes from where: the gate formula, the clamp, alpha's initial value 1 / P, the per-epoch cosine
temperature, the freeze to the top K by raw alpha with gate 1, Adam on alpha with weight decay: the
official code. The l1 term: the paper's text [unverified: not in the code]. The window variant, its
swap rule and the entering score: purerigl's (the official code has no delta_t and no drop/grow).
purerigl's values start Kaiming-normal with each diagonal layer's actual fan-in (official:
U(+-1/sqrt(L))), and the freeze keeps the top K among the *stored* diagonals (with ``all`` that is all P,
as in the code).

Ties (equal alphas, e.g. every alpha at 1 / P when freezing ``at_start``, or equal gradient norms):
the smaller tie rank ``tie_rank(offset, salt)``, the rule of :mod:`purerigl.dst.topology`.
"""

from __future__ import annotations

import math

import numpy as np

from ..formats import Diagonal
from ..formats.budget import structure_count
from ..nn import MLP, GatedDiagonalLinear
from ..optim import Adam
from .base import LayerUpdate, Method, MethodError, saved_batch_of
from .diag_rigl import swap_count
from .schedule import UpdateSchedule
from .topology import apply_structure, rank_order, tie_salt
from .updater import DSTUpdater

__all__ = [
    "FREEZE_MODES", "FREEZE_VALUES", "SOFT_MODES", "DynaDiag", "DynaDiagOptions", "DynaDiagUpdater", "default_freeze_epoch", "enter_scores",
    "freeze_epoch_of", "gate_model", "stored_diagonals", "temperature_at",
]

SOFT_MODES = ("window", "all")
FREEZE_MODES = ("at_epoch", "at_start", "never")
FREEZE_VALUES = ("keep", "fold")

#: The freeze's salt is tie_salt(seed, FREEZE_SALT + epoch, layer): apart from the updates' salts.
FREEZE_SALT = 1 << 30


def temperature_at(epoch: int, epochs: int, t_max: float = 5.0, t_min: float = 0.05) -> float:
    """T of epoch ``epoch`` (0-based) of ``epochs``: a cosine from ``t_max`` (first epoch) to ``t_min``
    (last epoch), held at ``t_min`` after (the official "cosine" temperature schedule).

    .. math:: T(e) = T_{min} + \\tfrac12 (T_{max} - T_{min})
              \\big(1 + \\cos(\\pi \\min(e, E - 1) / \\max(1, E - 1))\\big)
    """
    e = min(max(int(epoch), 0), max(int(epochs) - 1, 0))
    progress = e / max(1, int(epochs) - 1)
    return t_min + 0.5 * (t_max - t_min) * (1.0 + math.cos(math.pi * progress))


def default_freeze_epoch(epochs: int) -> int:
    """The epoch (1-based) at whose start ``at_epoch`` freezes by default: 30% of the way, as the
    official README's epoch 30 of 100; at least 1.

    .. math:: F = \\max(1, \\operatorname{round}(0.3 E))
    """
    return max(1, round(0.3 * int(epochs)))


def freeze_epoch_of(mode: str, freeze_epoch: int | None, epochs: int) -> int | None:
    """The 1-based epoch at whose start the gates freeze, or None for ``never``."""
    if mode not in FREEZE_MODES:
        raise MethodError(f"unknown freeze mode {mode!r}; choose one of: {', '.join(FREEZE_MODES)}")
    if mode == "never":
        return None
    if mode == "at_start":
        return 1
    F = default_freeze_epoch(epochs) if freeze_epoch is None else int(freeze_epoch)
    if not 1 <= F <= epochs:
        raise MethodError(f"the freeze epoch must be between 1 and the run's {epochs} epochs, got {F}")
    return F


def stored_diagonals(soft: str, K: int, P: int, window: float) -> int:
    """S, the diagonals a soft layer stores: P for ``all``, min(P, ceil(c K)) for ``window``."""
    if soft not in SOFT_MODES:
        raise MethodError(f"unknown soft mode {soft!r}; choose one of: {', '.join(SOFT_MODES)}")
    if soft == "all":
        return P
    if not (window >= 1.0 and math.isfinite(window)):
        raise MethodError(f"the window factor c must be a finite number >= 1, got {window!r}")
    return min(P, math.ceil(window * K - 1e-9))


class DynaDiagOptions:
    """The method's settings (each a ``purerigl train --dynadiag-*`` option)."""

    def __init__(self, soft: str = "window", window: float = 2.0, freeze: str = "at_epoch",
                 freeze_epoch: int | None = None, t_max: float = 5.0, t_min: float = 0.05,
                 alpha_lr: float = 1e-3, alpha_weight_decay: float = 1e-4, l1: float = 0.0,
                 freeze_values: str = "keep"):
        if soft not in SOFT_MODES:
            raise MethodError(f"unknown soft mode {soft!r}; choose one of: {', '.join(SOFT_MODES)}")
        if freeze not in FREEZE_MODES:
            raise MethodError(f"unknown freeze mode {freeze!r}; choose one of: {', '.join(FREEZE_MODES)}")
        if freeze_values not in FREEZE_VALUES:
            raise MethodError(f"unknown freeze values {freeze_values!r}; choose one of: {', '.join(FREEZE_VALUES)}")
        if not (0 < t_min <= t_max and math.isfinite(t_max)):
            raise MethodError(f"temperatures must satisfy 0 < T_min <= T_max, got T_min {t_min!r}, T_max {t_max!r}")
        if not (alpha_lr > 0 and math.isfinite(alpha_lr)):
            raise MethodError(f"the alpha learning rate must be > 0, got {alpha_lr!r}")
        if not (l1 >= 0 and math.isfinite(l1)):
            raise MethodError(f"the l1 weight must be >= 0, got {l1!r}")
        stored_diagonals(soft, 1, 1, window)  # checks the window factor
        self.soft, self.window, self.freeze, self.freeze_epoch = soft, float(window), freeze, freeze_epoch
        self.t_max, self.t_min, self.alpha_lr, self.l1 = float(t_max), float(t_min), float(alpha_lr), float(l1)
        self.alpha_weight_decay = float(alpha_weight_decay)
        self.freeze_values = freeze_values

    def to_dict(self) -> dict:
        return dict(vars(self))


def gate_model(model, budgets: dict, options: DynaDiagOptions, rng, temperature: float) -> list:
    """Replace every sparse Diagonal layer of ``model`` (an MLP, or a Network: its sparse convolutions,
    token-wise projections and linear layers) by a :class:`GatedDiagonalLinear` keeping K = the diagonals
    its budget allows and storing S (:func:`stored_diagonals`) random ones, with values drawn as for any
    diagonal layer (Kaiming normal, each row's fan-in) and the official alpha = 1 / P. Returns the gated
    layers. Dense layers stay as they are."""
    gated = []
    for lin in list(model.sparse_layers()):
        if not isinstance(lin.W, Diagonal):
            raise MethodError(f"dynadiag needs Diagonal layers, {lin.name} stores a {type(lin.W).__name__}")
        shape = lin.shape
        K = structure_count("diagonal", shape, budgets[lin.name])
        S = stored_diagonals(options.soft, K, max(shape), options.window)
        W = Diagonal.random(shape, None, rng, K=S)
        layer = GatedDiagonalLinear(W, K, temperature=temperature, l1=options.l1, backend=lin.backend,
                                    name=lin.name, needs_input_grad=lin.needs_input_grad)
        if hasattr(model, "replace_linear"):  # a Network: the layer may sit inside a convolution or a block
            model.replace_linear(lin, layer)
        else:
            i = model.linears.index(lin)
            model.linears[i] = layer
            model.layers[model.layers.index(lin)] = layer
        gated.append(layer)
    return gated


def top_scores(scores: np.ndarray, offsets: np.ndarray, k: int, salt: int) -> np.ndarray:
    """int64 (k,), ascending: the ``offsets`` of the k largest (signed) ``scores``; equal scores by the
    smaller tie rank ``tie_rank(offset, salt)`` (:func:`purerigl.dst.topology.rank_order`)."""
    order = rank_order(np.asarray(scores, dtype=np.float32), offsets, salt)
    return np.sort(np.asarray(offsets, dtype=np.int64)[order[:k]])


def gated_layers(model: MLP) -> list[GatedDiagonalLinear]:
    return [lin for lin in model.linears if isinstance(lin, GatedDiagonalLinear)]


class DynaDiag(Method):
    """The window swap of a soft :class:`GatedDiagonalLinear` (step 4 of the module docstring);
    a frozen layer, or one storing all P diagonals, is left as it is."""

    name = "dynadiag"
    scores_by_gradient = True
    runs_on_backend = True  # the products and remap on the backend; alpha, offsets and S_d on the host
    formats = ("diagonal",)

    def update(self, u: LayerUpdate) -> dict:
        """Swap q = max(1, floor(alpha_t S)) stored diagonals: out the q of smallest score alpha_d,
        in the q offsets not kept of largest gradient norm S_d (see the module docstring).

        .. math::

            \\mathcal{K} = \\operatorname{top}_{S-q}(\\alpha_d : d \\text{ stored}), \\qquad
            \\mathcal{G} = \\operatorname{top}_{q,\\ d \\notin \\mathcal{K}}(\\lVert G_d \\rVert_2), \\qquad
            \\text{offsets}' = \\operatorname{sort}(\\mathcal{K} \\cup \\mathcal{G})

        Returns ``kept``, ``grown``, ``dropped`` (entries, as :func:`apply_structure` counts them),
        ``diagonals`` (S), ``entered`` (int64 offsets that were not stored before) and ``survivors``
        (int64, the kept set): the caller (:class:`DynaDiagUpdater`) sets the entering scores from them
        (:func:`enter_scores`).
        """
        layer = u.layer
        if not isinstance(layer, GatedDiagonalLinear):
            raise MethodError(f"dynadiag updates gated diagonal layers; {getattr(layer, 'name', '?')!r} is "
                              f"a {type(layer).__name__} (build the model with purerigl.dst.dynadiag.gate_model)")
        ops = layer.backend
        offsets = np.asarray(ops.to_host(layer.matrix.offsets), dtype=np.int64)
        S, P = offsets.size, max(layer.shape)
        nothing = {"kept": int(S * min(layer.shape)), "grown": 0, "dropped": 0, "diagonals": S,
                   "entered": np.zeros(0, dtype=np.int64), "survivors": np.zeros(0, dtype=np.int64)}
        alpha = float(u.alpha)
        if not 0.0 <= alpha <= 1.0:
            raise MethodError(f"drop fraction alpha must be in [0, 1], got {u.alpha!r}")
        q = swap_count(alpha, S)
        if layer.frozen or S == P or q == 0:
            return nothing
        X, dY = saved_batch_of(layer, "dynadiag")
        kept = top_scores(layer.alpha.value[offsets], offsets, S - q, u.salt)
        norms = np.asarray(ops.to_host(ops.diag_grad_norms(X, dY)), dtype=np.float32)  # (P,)
        if norms.shape != (P,):
            raise MethodError(f"backend {ops.name!r} diag_grad_norms returned shape {norms.shape}, expected ({P},)")
        others = np.setdiff1d(np.arange(P, dtype=np.int64), kept)
        grown = top_scores(norms[others], others, q, u.salt)
        new = np.union1d(kept, grown)
        stats = apply_structure(layer, u.optimizer, Diagonal(new.astype(np.int32), np.zeros((new.size, min(layer.shape)),
                                                                                              np.float32), layer.shape))
        stats["diagonals"] = S
        stats["entered"] = np.setdiff1d(grown, offsets)
        stats["survivors"] = kept
        return stats


def enter_scores(alpha: np.ndarray, kept: np.ndarray, entered: np.ndarray) -> None:
    """In place: the score of every diagonal in ``entered`` becomes the smallest score among ``kept``
    (the diagonals the swap kept by their scores): it enters as the weakest member of the window.

    .. math:: \\alpha_d \\leftarrow \\min_{k \\in \\mathcal{K}} \\alpha_k
              \\quad (d \\in \\mathcal{G} \\text{, not stored before})
    """
    if entered.size and kept.size:
        alpha[entered] = alpha[kept].min()


class DynaDiagUpdater(DSTUpdater):
    """The DST hook of a DynaDiag run: alpha's Adam step after every optimizer step, the temperature
    and the freeze at the start of every epoch, and (``window``) the swaps every delta_t steps.

    Parameters
    ----------
    schedule : UpdateSchedule
        When the window swaps happen and their drop fraction (until t_end, and only before the freeze).
    budgets : dict[str, int]
    options : DynaDiagOptions
    epochs : int
        The run's length (the temperature's cosine spans it).
    seed : int
    """

    def __init__(self, schedule: UpdateSchedule, budgets: dict, options: DynaDiagOptions, epochs: int,
                 seed: int = 0, grad_accumulation: int = 1):
        super().__init__(DynaDiag(), schedule, budgets, seed=seed, grad_accumulation=grad_accumulation)
        self.options = options
        self.epochs = int(epochs)
        self.freeze_at = freeze_epoch_of(options.freeze, options.freeze_epoch, self.epochs)
        self._adam = None  # built at begin(), over the model's gated layers' alpha
        self._pending_adam_state = None  # a checkpoint's alpha Adam state, loaded at begin()

    # ----------------------------------------------------------------------------------------------
    # the hooks of the training loop

    def begin(self, model) -> None:
        super().begin(model)
        layers = gated_layers(model)
        if not layers:
            raise MethodError("dynadiag needs gated diagonal layers (purerigl.dst.dynadiag.gate_model)")
        self._adam = Adam([lin.alpha for lin in layers], lr=self.options.alpha_lr,
                          weight_decay=self.options.alpha_weight_decay)
        if self._pending_adam_state is not None:
            self._adam.load_state_dict(self._pending_adam_state)
            self._pending_adam_state = None

    def begin_epoch(self, epoch: int, model, optimizer) -> None:
        """Freeze every soft layer at the freeze epoch (with the gates of the last step, the temperature
        they were trained at), then set this epoch's temperature on every layer."""
        T = temperature_at(epoch, self.epochs, self.options.t_max, self.options.t_min)
        for number, layer in enumerate(gated_layers(model)):
            if self.freeze_at is not None and epoch + 1 >= self.freeze_at and not layer.frozen:
                fold = self.options.freeze_values == "fold" and epoch > 0  # before the first step: nothing to fold
                self.freeze(layer, optimizer, tie_salt(self.seed, FREEZE_SALT + epoch, number), fold=fold)
            layer.temperature = T

    def freeze(self, layer: GatedDiagonalLinear, optimizer, salt: int, fold: bool = False) -> dict:
        """Keep the K stored diagonals of largest alpha with gate 1; alpha stops (official ``freeze_topk``).

        ``fold``: each kept diagonal's values are multiplied by the gate it has now, in place
        (:math:`V_d \\leftarrow \\tilde\\alpha_d V_d`); its optimizer state is left as it is.
        """
        offsets = np.asarray(layer.backend.to_host(layer.matrix.offsets), dtype=np.int64)
        keep = top_scores(layer.alpha.value[offsets], offsets, layer.k, salt)  # ascending
        gates = layer.gates()[np.searchsorted(offsets, keep)].astype(np.float32)  # (K,), in keep's order
        L = min(layer.shape)
        stats = apply_structure(layer, optimizer, Diagonal(keep.astype(np.int32), np.zeros((keep.size, L), np.float32),
                                                          layer.shape))
        if fold:
            values = layer.matrix.values  # (K, L), the weight parameter's value itself
            layer.backend.scale_rows(values, layer.backend.to_device(gates), out=values)
        layer.frozen = True
        layer.alpha.grad[...] = 0.0
        return stats

    def after_step(self, step: int, model, optimizer) -> dict:
        layers = gated_layers(model)
        if any(not lin.frozen for lin in layers):
            self._adam.step()
        if all(lin.frozen for lin in layers) or self.options.soft == "all":
            return {}
        return super().after_step(step, model, optimizer)

    def _after_layer_update(self, layer, stats: dict) -> None:
        """Set the scores of the diagonals that entered (:func:`enter_scores`) and reset their alpha Adam state."""
        entered, kept = stats.pop("entered", None), stats.pop("survivors", None)
        if entered is None or entered.size == 0:
            return
        enter_scores(layer.alpha.value, kept, entered)
        for state in self._adam.state_arrays(layer.alpha).values():
            state[entered] = 0.0

    # ----------------------------------------------------------------------------------------------
    # statistics and state

    def epoch_stats(self, model) -> dict:
        stats = super().epoch_stats(model)
        rows = {row["layer"]: row for row in stats["layers"]}
        for layer in gated_layers(model):
            g = layer.gates()
            rows[layer.name].update(
                temperature=layer.temperature, frozen=layer.frozen, k=layer.k, stored=int(g.size),
                effective_k=layer.effective_k(), gate_sum=float(g.sum()), gate_max=float(g.max()),
                gate_min=float(g.min()),
            )
        return stats

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["options"] = self.options.to_dict()
        if self._adam is not None:
            state["alpha_adam"] = self._adam.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        saved = state.get("options")
        if saved is not None:  # a checkpoint from before freeze_values existed kept the values
            saved = {"freeze_values": "keep", **saved}
        if saved is not None and saved != self.options.to_dict():
            raise ValueError(f"checkpoint was trained with other dynadiag options: {saved} vs {self.options.to_dict()}")
        super().load_state_dict(state)
        adam = state.get("alpha_adam")
        if adam is not None:
            self._pending_adam_state = {k: np.asarray(v) for k, v in adam.items()}
