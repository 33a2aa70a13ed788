"""Layer-wise sparsity: how a global sparsity s is shared among the layers of a network.

PAPERS.md 1.3. For layers of shapes :math:`(n_{out,l}, n_{in,l})` with :math:`N_l = n_{out,l} n_{in,l}`
the global connection budget is the sum of the per-layer uniform counts

.. math:: C = \\sum_l c_l, \\qquad c_l = N_l - \\lfloor s N_l \\rfloor

and every distribution returns integer counts :math:`n_l` with :math:`\\sum_l n_l = C` exactly,
:math:`1 \\le n_l \\le N_l`, and :math:`n_l = N_l` for a layer kept dense.

Distributions (:data:`DISTRIBUTIONS`):

``"uniform"``
    Every sparse layer at s, :math:`n_l = c_l`. With forced-dense layers :math:`\\mathcal{D}` the
    remaining budget :math:`R = C - \\sum_{l \\in \\mathcal{D}} N_l` is spread over the sparse layers at
    the common density :math:`d' = R / \\sum_{l \\notin \\mathcal{D}} N_l` (the rebalancing of
    condensed-sparsity, :math:`s' = 1 - (d N_{total} - N_{dense}) / N_{sparse}`, written with the exact
    integer budget C instead of :math:`(1 - s) N_{total}`).
``"erk"`` / ``"er"``
    Erdős–Rényi(-Kernel) raw scores :math:`p_l = (n_{in} + n_{out}) / (n_{in} n_{out})`. ERK's
    :math:`(\\sum_i d_i / \\prod_i d_i)^q` over the weight's dimensions (q = 1) and ER's formula
    **coincide for linear layers**, the only layers purerigl has; both names are kept so that configs
    written for either paper run unchanged. The exact-budget solve with capping:

    1. :math:`\\mathcal{D}` = the layers forced dense;
    2. :math:`\\varepsilon = R / \\sum_{l \\notin \\mathcal{D}} p_l N_l`,
       :math:`R = C - \\sum_{l \\in \\mathcal{D}} N_l`;
    3. while some :math:`\\varepsilon p_l > 1`, move the layers with the largest :math:`p_l` into
       :math:`\\mathcal{D}` (density 1) and repeat step 2;
    4. :math:`d_l = \\varepsilon p_l` outside :math:`\\mathcal{D}`, 1 inside.

Integer counts (all distributions): :math:`n_l = \\lfloor d_l N_l \\rfloor`, then the leftover
:math:`C - \\sum_l n_l` connections go one each to the layers with the largest fractional parts
:math:`d_l N_l - n_l` (ties: the earlier layer). The whole computation runs in exact rational
arithmetic (for a linear layer :math:`p_l N_l = n_{in} + n_{out}` is an integer), so no float rounding
can move a count or a cap. Since the fractional parts sum to the leftover, it never exceeds the number
of layers with a positive fractional part, and no layer goes above :math:`N_l`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from fractions import Fraction

from ..errors import PureriglError
from ..formats.budget import layer_budget

__all__ = ["DISTRIBUTIONS", "DistributionError", "layer_budgets", "layer_densities"]

#: Names accepted by :func:`layer_budgets` (``"er"`` equals ``"erk"`` for linear layers).
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "erk", "er")


class DistributionError(PureriglError, ValueError):
    """A layer-wise sparsity distribution cannot be built (bad kind, shapes, sparsity or budget)."""


# --------------------------------------------------------------------------------------------------
# validation


def _check_kind(kind) -> str:
    key = kind.strip().lower() if isinstance(kind, str) else kind
    if key not in DISTRIBUTIONS:
        raise DistributionError(
            f"unknown distribution {kind!r}; choose one of: {', '.join(DISTRIBUTIONS)}"
        )
    return key


def _check_shapes(shapes) -> list[tuple[int, int]]:
    try:
        shapes = list(shapes)
    except TypeError:
        raise DistributionError(f"shapes must be a list of (n_out, n_in) pairs, got {shapes!r}") from None
    if not shapes:
        raise DistributionError("shapes is empty: a distribution needs at least one layer")
    out = []
    for i, shape in enumerate(shapes):
        try:
            n_out, n_in = shape
        except (TypeError, ValueError):
            raise DistributionError(f"shapes[{i}] = {shape!r} is not a pair (n_out, n_in)") from None
        if isinstance(n_out, bool) or isinstance(n_in, bool) or int(n_out) != n_out or int(n_in) != n_in:
            raise DistributionError(f"shapes[{i}] = {shape!r} must hold integers")
        n_out, n_in = int(n_out), int(n_in)
        if n_out < 1 or n_in < 1:
            raise DistributionError(
                f"shapes[{i}] = ({n_out}, {n_in}): both dimensions must be >= 1"
            )
        out.append((n_out, n_in))
    return out


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool):
        raise DistributionError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise DistributionError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0):  # also rejects NaN
        raise DistributionError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def _dense_set(n_layers: int, dense_first: bool, dense_last: bool, dense_layers: Iterable[int]) -> set[int]:
    dense = set()
    for i in dense_layers:
        try:
            index = None if isinstance(i, bool) else operator.index(i)
        except TypeError:
            index = None
        if index is None or not -n_layers <= index < n_layers:
            raise DistributionError(
                f"dense_layers holds {i!r}, not a layer index for {n_layers} layers"
            )
        dense.add(index % n_layers)
    if dense_first:
        dense.add(0)
    if dense_last:
        dense.add(n_layers - 1)
    return dense


# --------------------------------------------------------------------------------------------------
# the solve


def _targets(shapes, s: float, kind: str, dense: set[int]) -> tuple[int, list[Fraction]]:
    """(C, [d_l]): the global budget and the exact real-valued densities before rounding."""
    sizes = [n_out * n_in for n_out, n_in in shapes]
    budget = sum(layer_budget(shape, s) for shape in shapes)
    dense_total = sum(sizes[i] for i in dense)
    remaining = budget - dense_total
    if remaining < 0:
        raise DistributionError(
            f"the dense layers {sorted(dense)} alone hold {dense_total} connections, more than the "
            f"global budget C = {budget} at sparsity {s}; lower the sparsity or keep fewer layers dense"
        )
    density = [Fraction(1)] * len(shapes)
    if kind == "uniform":
        sparse = [i for i in range(len(shapes)) if i not in dense]
        if not dense:
            # Every layer at s: n_l = c_l exactly (an integer, so rounding below changes nothing).
            return budget, [Fraction(layer_budget(shapes[i], s), sizes[i]) for i in range(len(shapes))]
        sparse_total = sum(sizes[i] for i in sparse)
        for i in sparse:
            density[i] = Fraction(remaining, sparse_total)
        return budget, density

    # erk / er: p_l = (n_in + n_out) / (n_in n_out), so p_l N_l = n_in + n_out.
    raw = [Fraction(n_in + n_out, n_in * n_out) for n_out, n_in in shapes]
    dense = set(dense)
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        if not sparse:
            break
        eps = Fraction(remaining, sum(raw[i] * sizes[i] for i in sparse))
        p_max = max(raw[i] for i in sparse)
        if eps * p_max <= 1:
            for i in sparse:
                density[i] = eps * raw[i]
            break
        # Cap: every layer with the largest score becomes dense; re-solve for the others.
        for i in sparse:
            if raw[i] == p_max:
                dense.add(i)
                remaining -= sizes[i]
    return budget, density


def _round_counts(shapes, budget: int, density: Sequence[Fraction]) -> list[int]:
    """n_l = floor(d_l N_l) plus the leftover to the largest fractional parts (ties: earlier layer)."""
    targets = [d * (n_out * n_in) for d, (n_out, n_in) in zip(density, shapes)]
    counts = [t.numerator // t.denominator for t in targets]
    leftover = budget - sum(counts)
    fractions = [t - c for t, c in zip(targets, counts)]
    order = sorted(range(len(shapes)), key=lambda i: (-fractions[i], i))
    for i in order[:leftover]:
        counts[i] += 1
    return counts


def _solve(shapes, sparsity, kind, dense_first, dense_last, dense_layers):
    kind = _check_kind(kind)
    shapes = _check_shapes(shapes)
    s = _check_sparsity(sparsity)
    dense = _dense_set(len(shapes), dense_first, dense_last, dense_layers)
    budget, density = _targets(shapes, s, kind, dense)
    return shapes, s, kind, budget, density


def layer_densities(
    shapes,
    sparsity: float,
    kind: str = "uniform",
    dense_first: bool = False,
    dense_last: bool = False,
    *,
    dense_layers: Iterable[int] = (),
) -> list[float]:
    """The real-valued densities :math:`d_l` of the solve, before integer rounding.

    Same parameters as :func:`layer_budgets`. Every :math:`d_l \\le 1`; forced-dense and capped layers
    have exactly 1.0, and :math:`\\sum_l d_l N_l = C`.

    Returns
    -------
    list of float, one per layer
    """
    _, _, _, _, density = _solve(shapes, sparsity, kind, dense_first, dense_last, dense_layers)
    return [float(d) for d in density]


def layer_budgets(
    shapes,
    sparsity: float,
    kind: str = "uniform",
    dense_first: bool = False,
    dense_last: bool = False,
    *,
    dense_layers: Iterable[int] = (),
) -> list[int]:
    """The number of connections :math:`n_l` of every layer for a global sparsity.

    .. math::

        \\sum_l n_l = C = \\sum_l \\big(N_l - \\lfloor s N_l \\rfloor\\big), \\qquad
        n_l = \\lfloor d_l N_l \\rfloor \\text{ or } \\lfloor d_l N_l \\rfloor + 1

    Parameters
    ----------
    shapes : sequence of (int, int)
        ``(n_out, n_in)`` of every sparse-able layer, in network order.
    sparsity : float
        Global sparsity s in [0, 1).
    kind : {"uniform", "erk", "er"}
        The distribution (see the module docstring); ``"erk"`` and ``"er"`` give the same counts for
        linear layers.
    dense_first, dense_last : bool
        Keep the first / last layer dense (:math:`n_l = N_l`); the other layers share what is left
        of C, so the global density stays exactly the requested one.
    dense_layers : iterable of int, optional
        Further layer indices to keep dense (negative indices count from the end).

    Returns
    -------
    list of int
        :math:`n_l`, with :math:`1 \\le n_l \\le N_l` and :math:`\\sum_l n_l = C` exactly.

    Raises
    ------
    DistributionError
        (a ValueError) for an unknown kind (the valid ones are listed), empty or malformed shapes,
        a sparsity outside [0, 1), dense layers that alone exceed C, or a layer left with 0 connections.
    """
    shapes, s, kind, budget, density = _solve(
        shapes, sparsity, kind, dense_first, dense_last, dense_layers
    )
    counts = _round_counts(shapes, budget, density)
    for i, n in enumerate(counts):
        if n < 1:
            raise DistributionError(
                f"layer {i} of shape {shapes[i]} would get 0 connections ({kind} at sparsity {s}, "
                f"density {float(density[i]):.3g}, global budget C = {budget}); lower the sparsity, "
                "keep fewer layers dense or choose another distribution"
            )
    return counts
