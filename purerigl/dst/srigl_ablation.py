"""SRigL's neuron decisions: which output neurons stay active, and the constant fan-in they share.

The rules of :mod:`purerigl.dst.srigl` (Lasby et al., "Dynamic Sparse Training with Structured
Sparsity", ICLR 2024; PAPERS.md 3.3) that decide the layer's shape before any connection is dropped
or grown: the salient count of every neuron (:func:`salient_counts`, written with backend operations,
so it runs where the matrix lives), the ablation of neurons with too few salient entries
(:func:`ablation_threshold`, :func:`neurons_to_ablate`: pure host logic on per-neuron counts) and the
fan-in that keeps the layer's budget over the active neurons (:func:`constant_fan_in`).
"""

from __future__ import annotations

import math

import numpy as np

from ..formats._base import floor_count
from .base import MethodError

# --------------------------------------------------------------------------------------------------
# pure decisions


def ablation_threshold(gamma_sal: float, k_ref: int) -> int:
    """The salient-count threshold tau below which a neuron is ablated (before the floor).

    .. math::

        \\tau = \\begin{cases} \\lceil \\gamma_{sal} \\rceil & \\gamma_{sal} \\ge 1 \\\\
                \\max(1, \\lfloor \\gamma_{sal} K_{ref} \\rfloor) & 0 < \\gamma_{sal} < 1 \\\\
                0 & \\gamma_{sal} = 0 \\text{ (nothing ablated)} \\end{cases}

    Parameters
    ----------
    gamma_sal : float
        ``>= 0``; below 1 a fraction of ``k_ref``, from 1 on an absolute count.
    k_ref : int
        Reference fan-in :math:`K_{ref} = \\lfloor C / n_{out} \\rfloor`.
    """
    if gamma_sal == 0:
        return 0
    if gamma_sal >= 1:
        return int(math.ceil(gamma_sal))
    return max(1, floor_count(gamma_sal, k_ref))


def neurons_to_ablate(counts, budget: int, n_in: int, gamma_sal: float) -> np.ndarray:
    """Which output neurons to ablate, from their salient counts (PAPERS.md 3.3 steps 2-4).

    With :math:`K_{ref} = \\lfloor C / n_{out} \\rfloor`, tau from :func:`ablation_threshold` and
    :math:`m = \\lfloor C / n_{in} \\rfloor` (the fewest rows that hold the budget at dense fan-in):

    .. math::

        c_{(0)} \\ge c_{(1)} \\ge \\dots \\text{ (counts sorted descending)}, \\qquad
        \\tau' = \\min(\\tau, c_{(m)}), \\qquad
        \\mathcal{A} = \\{ r : \\mathrm{count}_r < \\tau' \\}

    so the m + 1 rows with the largest counts always survive and the new fan-in
    :math:`\\lfloor C / (n_{out} - |\\mathcal{A}|) \\rfloor` never exceeds n_in. If m >= n_out every
    row is needed to hold the budget and none is ablated.

    Parameters
    ----------
    counts : int array-like, shape (n_out,)
        Salient entries per output neuron (:func:`salient_counts`).
    budget : int
        The layer's connection budget C.
    n_in : int
        Dense fan-in F.
    gamma_sal : float
        ``>= 0``; 0 disables ablation.

    Returns
    -------
    bool ndarray, shape (n_out,)
        True for the neurons to ablate.

    Examples
    --------
    PAPERS.md invariant 21: counts {10, 10, 2}, C = 30, F = 20, gamma 0.3 -> tau = 3, the third row
    is ablated; with F = 15 the floor lowers tau to 2 and nothing is.

    >>> neurons_to_ablate([10, 10, 2], 30, 20, 0.3).tolist()
    [False, False, True]
    >>> neurons_to_ablate([10, 10, 2], 30, 15, 0.3).tolist()
    [False, False, False]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1:
        raise MethodError(f"counts must be 1-D (one per output neuron), got shape {counts.shape}")
    if gamma_sal < 0:
        raise MethodError(f"gamma_sal must be >= 0, got {gamma_sal!r}")
    n_out = counts.size
    none = np.zeros(n_out, dtype=bool)
    if gamma_sal == 0 or n_out == 0:
        return none
    tau = ablation_threshold(gamma_sal, int(budget) // n_out)
    min_neurons = int(budget) // int(n_in)
    if min_neurons >= n_out:
        return none
    floor_count_at = int(np.sort(counts)[::-1][min_neurons])
    tau = min(tau, floor_count_at)
    return counts < tau


def constant_fan_in(budget: int, n_active: int, n_in: int) -> int:
    """The fan-in every active row holds: :math:`k = \\lfloor C / n_{active} \\rfloor`.

    Raises
    ------
    MethodError
        If no row is active, if k would be 0 (budget below the number of active rows) or if k would
        exceed n_in (budget above a dense layer's).
    """
    if n_active <= 0:
        raise MethodError(f"no active rows left to hold the budget of {budget} connections")
    k = int(budget) // int(n_active)
    if k == 0:
        raise MethodError(
            f"budget {budget} is smaller than the {n_active} active rows: fan-in k would be 0"
        )
    if k > n_in:
        raise MethodError(
            f"budget {budget} over {n_active} active rows gives fan-in k={k} > n_in={n_in}"
        )
    return k


# --------------------------------------------------------------------------------------------------
# the salient set (written with backend operations: runs where the matrix lives)


def salient_counts(W, X, dY, n_keep: int, n_prune: int, backend, salt: int = 0, grad_top=None) -> np.ndarray:
    """Salient entries per output neuron (PAPERS.md 3.3 step 1).

    .. math::

        S = \\operatorname{top}_{n_{keep}} |w| \\text{ (active entries)} \\;\\cup\\;
            \\operatorname{top}_{n_{prune}} |G| \\text{ (all positions)}, \\qquad
        \\mathrm{count}_r = |\\{ (r, j) \\in S \\}|

    The gradient half comes from ``backend.topk_grad`` with an empty exclusion (G is streamed), or is
    given (``grad_top``: what ``topk_grad_with_rows`` found in the same pass as the growth candidates).

    Parameters
    ----------
    W : Condensed, or the backend's device matrix of one (``layer.matrix``)
    X, dY : arrays of the backend, (B, n_in) and (B, n_out)
    n_keep, n_prune : int
    backend : Backend
    salt : int
        The tie rule's salt of the update (equal scores: smaller ``tie_rank(position, salt)`` first).
    grad_top : (rows, cols), optional
        The top n_prune positions of |G| (``topk_grad`` with nothing excluded), already found.

    Returns
    -------
    int64 host ndarray, shape (n_out,) (``row_counts`` gives it on the host: on cuda the one array
    this step copies back)
    """
    ops = backend
    n_in = W.shape[1]
    flat = ops.flat_positions(W)  # ascending: Condensed rows ascending, columns increasing
    salient = ops.top_k(W.values.reshape(-1), flat, n_keep, salt)
    if n_prune > 0:
        if grad_top is None:
            nothing = ops.exclusion_of(ops.arange(0), W.shape)  # every position is a candidate
            grad_top = ops.topk_grad(X, dY, int(n_prune), *nothing, salt)
        g_rows, g_cols = grad_top
        grad = ops.flat_of(g_rows, g_cols, n_in)  # ascending
        salient = ops.merge_sorted(salient, ops.compress(grad, ops.in_sorted(grad, salient), keep=False))
    return ops.row_counts(salient, W.shape)


