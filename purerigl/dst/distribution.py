"""Layer-wise sparsity: how a global sparsity s is shared among the layers of a network.

PAPERS.md 1.3. For layers of shapes :math:`(n_{out,l}, n_{in,l})` with :math:`N_l = n_{out,l} n_{in,l}`
the global connection budget is the sum of the per-layer uniform counts

.. math:: C = \\sum_l c_l, \\qquad c_l = N_l - \\lfloor s N_l \\rfloor

and every distribution returns integer counts :math:`n_l` with :math:`\\sum_l n_l = C` exactly,
:math:`1 \\le n_l \\le N_l`, and :math:`n_l = N_l` for a layer kept dense (layers excluded from the
budget, below, add their :math:`N_l` on top of C).

Convolutions. A convolution with filters (c_out, c_in, kh, kw) enters as its filter matrix,
:math:`(n_{out}, n_{in}) = (c_{out}, c_{in} k_h k_w)`, with its kernel size (kh, kw) given in
``kernels`` (None for a linear layer).

Distributions (:data:`DISTRIBUTIONS`):

``"uniform"``
    Every sparse layer at s, :math:`n_l = c_l`. With forced-dense layers :math:`\\mathcal{D}` the
    remaining budget :math:`R = C - \\sum_{l \\in \\mathcal{D}} N_l` is spread over the sparse layers at
    the common density :math:`d' = R / \\sum_{l \\notin \\mathcal{D}} N_l` (the rebalancing of
    condensed-sparsity, :math:`s' = 1 - (d N_{total} - N_{dense}) / N_{sparse}`, written with the exact
    integer budget C instead of :math:`(1 - s) N_{total}`).
``"erk"`` / ``"er"``
    Erdős–Rényi(-Kernel) raw scores, the sum of the weight tensor's dimensions over their product
    (RigL, Evci et al. 2020, ``sparse_utils.get_sparsities_erdos_renyi``):

    .. math::

        p_l^{ERK} = \\frac{n_{in} + n_{out}}{n_{in} n_{out}} \\ \\text{(linear)}, \\qquad
        p_l^{ERK} = \\frac{c_{in} + c_{out} + k_h + k_w}{c_{in} c_{out} k_h k_w} \\ \\text{(convolution)},
        \\qquad p_l^{ER} = \\frac{c_{in} + c_{out}}{c_{in} c_{out}} \\ \\text{(both)}

    so ER and ERK **coincide for linear layers** and differ for convolutions, where ER ignores the
    kernel (a 1 x 1 convolution is a 4-d kernel for ERK: its score has the + 2). The exact-budget solve
    with capping:

    1. :math:`\\mathcal{D}` = the layers forced dense;
    2. :math:`\\varepsilon = R / \\sum_{l \\notin \\mathcal{D}} p_l N_l`,
       :math:`R = C - \\sum_{l \\in \\mathcal{D}} N_l`;
    3. while some :math:`\\varepsilon p_l > 1`, move the layers with the largest :math:`p_l` into
       :math:`\\mathcal{D}` (density 1) and repeat step 2;
    4. :math:`d_l = \\varepsilon p_l` outside :math:`\\mathcal{D}`, 1 inside.

Dense inside or outside the budget. ``dense_first`` / ``dense_last`` / ``dense_layers`` keep layers
dense *inside* C (the global density stays exactly s). ``exclude_layers`` keeps layers dense *outside*
it, as RigL's ``custom_sparsity_map`` does with the first convolution: such a layer gets
:math:`n_l = N_l`, and C and the normalisation run over the other layers only, so they hold exactly
the uniform count of their own sizes at s. :func:`named_budgets` (the budgets of a
:class:`~purerigl.nn.network.Network` by layer name, from
:func:`purerigl.nn.models.weight_shapes`) excludes its ``dense`` layers this way by default.

Integer counts (all distributions): :math:`n_l = \\lfloor d_l N_l \\rfloor`, then the leftover
:math:`C - \\sum_l n_l` connections go one each to the layers with the largest fractional parts
:math:`d_l N_l - n_l` (ties: the earlier layer). The whole computation runs in exact rational
arithmetic (:math:`p_l N_l` is an integer for every score above), so no float rounding can move a
count or a cap. Since the fractional parts sum to the leftover, it never exceeds the number of
layers with a positive fractional part, and no layer goes above :math:`N_l`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from fractions import Fraction

from ..errors import PureriglError
from ..formats.budget import layer_budget

__all__ = ["DISTRIBUTIONS", "DistributionError", "layer_budgets", "layer_densities", "named_budgets"]

#: Names accepted by :func:`layer_budgets` (``"er"`` equals ``"erk"`` for linear layers, not for convolutions).
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


def _indices(n_layers: int, given: Iterable[int], what: str) -> set[int]:
    out = set()
    for i in given:
        try:
            index = None if isinstance(i, bool) else operator.index(i)
        except TypeError:
            index = None
        if index is None or not -n_layers <= index < n_layers:
            raise DistributionError(
                f"{what} holds {i!r}, not a layer index for {n_layers} layers"
            )
        out.add(index % n_layers)
    return out


def _check_kernels(kernels, shapes) -> list[tuple[int, int] | None]:
    """One (kh, kw) or None per layer; a kernel must divide the layer's n_in (= c_in * kh * kw)."""
    if kernels is None:
        return [None] * len(shapes)
    kernels = list(kernels)
    if len(kernels) != len(shapes):
        raise DistributionError(f"{len(kernels)} kernels for {len(shapes)} layers; give one per layer (None: linear)")
    out = []
    for i, (kernel, (n_out, n_in)) in enumerate(zip(kernels, shapes)):
        if kernel is None:
            out.append(None)
            continue
        try:
            kh, kw = (int(k) for k in kernel)
        except (TypeError, ValueError):
            raise DistributionError(f"kernels[{i}] = {kernel!r} is not None or a pair (kh, kw)") from None
        if kh < 1 or kw < 1 or n_in % (kh * kw):
            raise DistributionError(
                f"kernels[{i}] = ({kh}, {kw}) does not fit layer {i} of shape ({n_out}, {n_in}): "
                "n_in must be c_in * kh * kw"
            )
        out.append((kh, kw))
    return out


def _raw_score(shape, kernel, kind: str) -> Fraction:
    """p_l: (sum of the weight tensor's dimensions) / (their product); ER drops the kernel's."""
    n_out, n_in = shape
    if kernel is None:
        return Fraction(n_in + n_out, n_in * n_out)
    kh, kw = kernel
    c_in = n_in // (kh * kw)
    if kind == "er":
        return Fraction(c_in + n_out, c_in * n_out)
    return Fraction(c_in + n_out + kh + kw, n_in * n_out)


def _dense_set(n_layers: int, dense_first: bool, dense_last: bool, dense_layers: Iterable[int]) -> set[int]:
    dense = _indices(n_layers, dense_layers, "dense_layers")
    if dense_first:
        dense.add(0)
    if dense_last:
        dense.add(n_layers - 1)
    return dense


# --------------------------------------------------------------------------------------------------
# the solve


def _targets(shapes, s: float, kind: str, dense: set[int], kernels=None) -> tuple[int, list[Fraction]]:
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

    # erk / er: p_l = (sum of dimensions) / (their product), so p_l N_l is an integer.
    raw = [_raw_score(shape, kernel, kind) for shape, kernel in zip(shapes, kernels or [None] * len(shapes))]
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


def _solve(shapes, sparsity, kind, dense_first, dense_last, dense_layers, kernels=None, exclude_layers=()):
    """(shapes, s, kind, C, [d_l], excluded) over all layers; excluded layers have d_l = 1, not in C."""
    kind = _check_kind(kind)
    shapes = _check_shapes(shapes)
    s = _check_sparsity(sparsity)
    kernels = _check_kernels(kernels, shapes)
    dense = _dense_set(len(shapes), dense_first, dense_last, dense_layers)
    excluded = _indices(len(shapes), exclude_layers, "exclude_layers")
    kept = [i for i in range(len(shapes)) if i not in excluded]
    density = [Fraction(1)] * len(shapes)
    if not kept:  # every layer dense outside the budget
        return shapes, s, kind, 0, density, excluded
    position = {i: j for j, i in enumerate(kept)}
    budget, sub = _targets([shapes[i] for i in kept], s, kind, {position[i] for i in dense if i in position},
                           [kernels[i] for i in kept])
    for i, d in zip(kept, sub):
        density[i] = d
    return shapes, s, kind, budget, density, excluded


def layer_densities(
    shapes,
    sparsity: float,
    kind: str = "uniform",
    dense_first: bool = False,
    dense_last: bool = False,
    *,
    dense_layers: Iterable[int] = (),
    kernels=None,
    exclude_layers: Iterable[int] = (),
) -> list[float]:
    """The real-valued densities :math:`d_l` of the solve, before integer rounding.

    Same parameters as :func:`layer_budgets`. Every :math:`d_l \\le 1`; forced-dense, excluded and
    capped layers have exactly 1.0, and :math:`\\sum_{l \\notin \\mathcal{E}} d_l N_l = C` over the
    layers not excluded.

    Returns
    -------
    list of float, one per layer
    """
    *_, density, _ = _solve(shapes, sparsity, kind, dense_first, dense_last, dense_layers, kernels,
                                 exclude_layers)
    return [float(d) for d in density]


def layer_budgets(
    shapes,
    sparsity: float,
    kind: str = "uniform",
    dense_first: bool = False,
    dense_last: bool = False,
    *,
    dense_layers: Iterable[int] = (),
    kernels=None,
    exclude_layers: Iterable[int] = (),
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
    kernels : sequence of (int, int) or None, optional
        Per layer, the kernel (kh, kw) of a convolution whose filter matrix is ``shapes[l]`` =
        (c_out, c_in * kh * kw), or None for a linear layer. Default: every layer linear.
    exclude_layers : iterable of int, optional
        Layers kept dense outside the budget (RigL's ``custom_sparsity_map``): :math:`n_l = N_l`, and
        C and the normalisation run over the other layers only.

    Returns
    -------
    list of int
        :math:`n_l`, with :math:`1 \\le n_l \\le N_l` and :math:`\\sum_l n_l = C` exactly over the
        layers not excluded.

    Raises
    ------
    DistributionError
        (a ValueError) for an unknown kind (the valid ones are listed), empty or malformed shapes,
        a kernel that does not divide its layer's n_in, a sparsity outside [0, 1), dense layers that
        alone exceed C, or a layer left with 0 connections.
    """
    shapes, s, kind, budget, density, excluded = _solve(
        shapes, sparsity, kind, dense_first, dense_last, dense_layers, kernels, exclude_layers
    )
    # An excluded layer's target N_l is an integer (fractional part 0), so the leftover never reaches it.
    counts = _round_counts(shapes, budget + sum(shapes[i][0] * shapes[i][1] for i in excluded), density)
    for i, n in enumerate(counts):
        if n < 1:
            raise DistributionError(
                f"layer {i} of shape {shapes[i]} would get 0 connections ({kind} at sparsity {s}, "
                f"density {float(density[i]):.3g}, global budget C = {budget}); lower the sparsity, "
                "keep fewer layers dense or choose another distribution"
            )
    return counts


def named_budgets(layers, sparsity: float, kind: str = "erk", dense: Iterable[str] = (), *,
                  dense_in_budget: bool = False) -> dict[str, int]:
    """Budgets of a network's weight layers by name, :math:`n_l` of :func:`layer_budgets`.

    Parameters
    ----------
    layers : sequence of (str, (int, int), (int, int) | None)
        ``(name, (n_out, n_in), kernel)`` per weight layer in network order, as
        :func:`purerigl.nn.models.weight_shapes` returns them (kernel None for a linear layer).
    sparsity : float
        Global sparsity s in [0, 1).
    kind : {"uniform", "erk", "er"}
    dense : iterable of str
        Names kept dense (:math:`n_l = N_l`), e.g. the first convolution and the classifier.
    dense_in_budget : bool
        False (default, as RigL): the dense layers are outside the budget (``exclude_layers``), the
        others hold exactly the uniform count of their own sizes. True: inside it (``dense_layers``),
        so the whole network is at s.

    Returns
    -------
    dict[str, int]
        ``{name: n_l}`` for every layer (a dense one's is its size n_out * n_in).
    """
    layers = list(layers)
    names = [entry[0] for entry in layers]
    if len(set(names)) != len(names):
        raise DistributionError(f"layer names must be unique, got {names}")
    index = {name: i for i, name in enumerate(names)}
    dense = [dense] if isinstance(dense, str) else list(dense)
    unknown = [n for n in dense if n not in index]
    if unknown:
        raise DistributionError(f"dense holds {unknown[0]!r}, not a layer name; the layers are {', '.join(names)}")
    chosen = [index[n] for n in dense]
    counts = layer_budgets([entry[1] for entry in layers], sparsity, kind, kernels=[entry[2] for entry in layers],
                           **({"dense_layers": chosen} if dense_in_budget else {"exclude_layers": chosen}))
    return dict(zip(names, counts))
