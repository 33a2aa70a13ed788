"""The DynaDiag example of docs/tour.md: one layer's learned diagonal gates through one training step,
one window swap and the freeze, run by the real :class:`purerigl.nn.GatedDiagonalLinear` and
:class:`purerigl.dst.dynadiag.DynaDiagUpdater`.

The layer is the tour's 4 x 6 one (P = 6 candidate diagonals of length L = 4) with the tour's batch,
loss and SGD; the budget C = 8 gives K = 2 diagonals, and the default window stores S = 4 of them while
the gates are soft. The run is :data:`EPOCHS` epochs long (the temperature's cosine spans them; the
default freeze epoch is 30% of the way); for the example the window swaps after every step
(``delta_t = 1``), so the one step shown is followed by a swap, and the freeze that a run reaches at the
start of its freeze epoch is applied right after. The values come from the generator
``[SEED, STREAM]``: :data:`STREAM` is the first stream after the other examples' whose swap changes the
window, so the example shows a diagonal leaving and one entering.
"""

from __future__ import annotations

import numpy as np

from ..dst.dynadiag import DynaDiagOptions, DynaDiagUpdater, stored_diagonals, temperature_at
from ..dst.diag_rigl import swap_count
from ..dst.schedule import UpdateSchedule
from ..formats import Diagonal
from ..formats.budget import structure_count
from ..nn import MLP, GatedDiagonalLinear, softmax_cross_entropy
from ..optim import make_optimizer
from . import tour_common as tour

EPOCHS = 10
STREAM = 5  # see the module docstring
N_OUT, N_IN = tour.SHAPE
P, L = max(tour.SHAPE), min(tour.SHAPE)


def dynadiag_setup(drop_fraction: float = tour.ALPHA):
    """(layer, model, optimizer, updater) at the start of epoch 1 of :data:`EPOCHS`: the gated layer
    stores S random diagonals with the default options, alpha = 1 / P, T = T(0); the window swaps
    after every step with ``drop_fraction`` (0: never)."""
    options = DynaDiagOptions()
    K = structure_count("diagonal", tour.SHAPE, tour.BUDGET)
    S = stored_diagonals(options.soft, K, P, options.window)
    W = Diagonal.random(tour.SHAPE, None, np.random.default_rng([tour.SEED, STREAM]), K=S)
    W.values[...] = np.round(W.values, 2) + 0.0  # no -0.0
    layer = GatedDiagonalLinear(W, K, backend="reference", name="layer0")
    model = MLP([layer])
    optimizer = make_optimizer("sgd", layer.parameters(), lr=tour.LR, momentum=tour.MOMENTUM, weight_decay=0.0)
    schedule = UpdateSchedule(delta_t=1, alpha=drop_fraction, t_end=1000)  # a swap after every step
    updater = DynaDiagUpdater(schedule, {layer.name: tour.BUDGET}, options, epochs=EPOCHS, seed=tour.SEED)
    updater.begin(model)
    updater.begin_epoch(0, model, optimizer)
    return layer, model, optimizer, updater


def train_step(layer, model, optimizer, updater):
    """One step as the training loop runs it: forward, loss, backward, SGD on the values, then the
    updater's ``after_step`` (alpha's Adam step and the window swap). Returns dY (B, n_out) and alpha's
    gradient (P,)."""
    X, labels = tour.example_batch()
    logits = model.forward(X)  # (B, n_out) = X W_eff^T + b
    _, dY = softmax_cross_entropy(logits, labels)  # (B, n_out)
    model.backward(dY)  # dL/dV = gate * G at the stored entries; alpha.grad through the soft top-K
    d_alpha = layer.alpha.grad.copy()
    optimizer.step()
    updater.after_step(1, model, optimizer)
    return dY, d_alpha


def _soft_grid(layer) -> str:
    """W_eff: every stored entry times its diagonal's gate now (cell (i, j) lies on d = (j - i) mod P)."""
    gates = layer.all_gates()
    return tour.grid_text({(i, j): gates[(j - i) % P] * v for (i, j), v in tour.cells_of(layer.W).items()})


def dynadiag_example_markdown() -> list[str]:
    """The section's markdown lines."""
    layer, model, optimizer, updater = dynadiag_setup()
    opts = updater.options
    X, labels = tour.example_batch()
    K, S = layer.k, layer.W.K
    T0 = layer.temperature
    temps = ", ".join(f"{temperature_at(e, EPOCHS, opts.t_max, opts.t_min):.2f}" for e in range(EPOCHS))
    out = [
        "### DynaDiag (`--method dynadiag`, diagonal, gated)",
        "",
        f"The same 4 x {N_IN} layer, batch and SGD step, as a `GatedDiagonalLinear` with the default options: "
        f"P = {P} candidate diagonals of length L = {L} (cell (i, j) lies on diagonal d = (j - i) mod {P}), "
        f"K = C / L = {K} to keep, and a window of S = min(P, ceil({opts.window:g} K)) = {S} stored while "
        f"the gates are soft (offsets {layer.W.offsets.tolist()}). Every score starts at alpha_d = 1 / P; the "
        f"run is {EPOCHS} epochs, with temperatures T(e) = {temps} (a cosine from {opts.t_max:g} to "
        f"{opts.t_min:g}) and the freeze at the start of epoch {updater.freeze_at}. In this example the "
        "window swaps after every step (delta_t = 1).",
        "",
        "The stored values V:",
        "",
        tour.grid_text(tour.cells_of(layer.W)),
        "",
        f"Gates at T = {T0:g}: gate = min(1, K softmax(alpha / T)) = {tour.diagonals_text(layer.all_gates())} (every "
        f"score equal: K / P each). The layer computes with W_eff, each stored diagonal times its gate:",
        "",
        _soft_grid(layer),
        "",
    ]
    offsets_before = layer.W.offsets.copy()
    before = tour.cells_of(layer.W)
    d_gate = np.zeros(P)  # <V_d, G_d>, for display from the dense G
    dY, d_alpha = train_step(layer, model, optimizer, updater)
    G = tour.dense_gradient(X, dY)
    for (i, j), v in before.items():
        d_gate[(j - i) % P] += v * G[i, j]
    norms = np.asarray(layer.backend.diag_grad_norms(X, dY), dtype=np.float64)
    q_alpha = updater.schedule.drop_fraction(1)
    unswapped = dynadiag_setup(drop_fraction=0.0)  # the same step without a swap: alpha after Adam
    train_step(*unswapped)
    alpha_adam = unswapped[0].alpha.value
    alpha = layer.alpha.value
    out += [
        "Backward: dL/dgate_d = <V_d, G_d> on each stored diagonal (0 on the others: their values are 0): "
        f"{tour.diagonals_text(d_gate)}. Through the soft top-K every score gets a gradient, stored or not: "
        f"dL/dalpha = {tour.diagonals_text(d_alpha, '{:+.5f}')}.",
        "",
        f"The values take their SGD step with dL/dV = gate x G; alpha takes its own Adam step (lr "
        f"{opts.alpha_lr:g}, weight decay {opts.alpha_weight_decay:g}; a first Adam step moves every score by "
        "about lr against the sign of its gradient), in `DynaDiagUpdater.after_step`, before the swap sees "
        f"it. The window swap of that step: alpha_t = {q_alpha:.7f} (the cosine decay of the drop fraction has "
        f"begun), q = max(1, floor(alpha_t x {S})) = "
        f"{swap_count(q_alpha, S)}. The q stored diagonals of smallest alpha leave, equal scores ordered by the "
        f"tie rule (alpha after the Adam step: {tour.diagonals_text(alpha_adam, '{:.8f}')}); "
        "the q offsets not kept (the leaving ones included) of largest gradient norm along them enter, "
        f"S_d = ||G_d|| (`diag_grad_norms`, streamed): {tour.diagonals_text(norms, '{:.3f}')}.",
        "",
    ]
    entered = sorted(set(layer.W.offsets.tolist()) - set(offsets_before.tolist()))
    left = sorted(set(offsets_before.tolist()) - set(layer.W.offsets.tolist()))
    after = tour.cells_of(layer.W)
    grown = set(after) - set(before)
    out += [
        f"Left: d = {left or 'none'}; entered: d = {entered or 'none'}, with values 0, zero momentum and the "
        f"score of the weakest diagonal kept (alpha = {tour.diagonals_text(alpha, '{:.8f}')}). Stored offsets now "
        f"{layer.W.offsets.tolist()}; V (`*` = entered, exactly 0):",
        "",
        tour.grid_text(after, {p: "*" for p in grown}),
        "",
    ]
    scores = {int(d): float(alpha[d]) for d in layer.W.offsets}
    updater.begin_epoch(updater.freeze_at - 1, model, optimizer)  # what the freeze epoch's start does
    out += [
        f"The freeze (at the start of epoch {updater.freeze_at}; applied here after this one step): keep the "
        f"K = {K} stored diagonals of largest alpha ("
        + tour.diagonals_text(list(scores.values()), "{:.8f}", scores)
        + "; after one step the scores differ by about Adam's lr, at a real freeze by what thousands of steps "
        f"taught them), gate 1 on each, alpha stops. Kept: d = {layer.W.offsets.tolist()}; with the default "
        "`--dynadiag-freeze-values keep` their values stay as they are, so each kept diagonal's weight jumps "
        f"from gate x V to V. From here on the layer is an ordinary {K}-diagonal layer (nnz = K L = {layer.W.nnz}, "
        f"density K / P = {K}/{P}); T = {layer.temperature:.2f} no longer matters to it. W:",
        "",
        tour.grid_text(tour.cells_of(layer.W)),
        "",
    ]
    return out
