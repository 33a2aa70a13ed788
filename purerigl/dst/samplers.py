r"""Candidate samplers of GSE: which inactive positions get their gradient computed.

GSE (Heddes et al. 2024, arXiv 2401.06898; PAPERS.md section 5) never forms the dense gradient
:math:`G = dY^T X` of a layer. It draws a small set of candidate positions :math:`(i, j)` from a
product distribution

.. math:: P(i, j) = f_{out}(i) \, f_{in}(j)

and scores only those. Every sampler here has the signature

``sample(rng, n_out, n_in, n_samples, X, dY) -> (rows, cols)``

and does what the official code does: ``n_samples`` independent draws **with replacement**,
:math:`i \sim f_{out}` and :math:`j \sim f_{in}`, after which duplicate pairs collapse. The result is
therefore a set of **distinct** pairs with

.. math:: |S| \le n_{samples},

returned as two int64 arrays sorted by flat position ``row * n_in + col``. (Discarding the pairs
that are already active is the method's job, not the sampler's.)

Samplers (:data:`SAMPLERS`):

- ``"uniform"`` (the default, the paper's recommended variant):
  :math:`f_{out} = 1 / n_{out}`, :math:`f_{in} = 1 / n_{in}`; cost O(n_samples), X and dY unread.
- ``"grabo"`` (gradient bound): :math:`f_{out}(i) \propto \sum_b |dY_{bi}|`,
  :math:`f_{in}(j) \propto \sum_b |X_{bj}|`, so the joint is proportional to an upper bound of
  :math:`|g(i, j)|` (:func:`grabo_weights`).
- ``"graest"`` (gradient estimate): with random signs :math:`\sigma_b \in \{\pm 1\}`,
  :math:`f_{out}(i) \propto |\sum_b \sigma_b dY_{bi}|`, :math:`f_{in}(j) \propto |\sum_b \sigma_b X_{bj}|`,
  so the joint is proportional to the magnitude of an unbiased sketch of :math:`g(i, j)`
  (:func:`graest_weights`).

Memory is O(n_in + n_out + n_samples) beyond the inputs X and dY, never O(n_out * n_in): the
marginals are vectors, draws are inverse-CDF look-ups (O(n + n_samples log n)), and duplicates are
removed by sorting the n_samples flat positions. A marginal that is all zero (for example dY = 0)
carries no information; that side falls back to uniform.

Each sampler is the composition of a ``*_draws`` function (the raw draws, with repetitions, exposed
for tests of the marginals) and :func:`distinct_pairs`; a sampler consumes the generator exactly as
its ``*_draws`` function does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..formats._base import sorted_unique
from .base import MethodError

__all__ = [
    "SAMPLERS",
    "distinct_pairs",
    "draw_from_weights",
    "get_sampler",
    "grabo",
    "grabo_draws",
    "grabo_weights",
    "graest",
    "graest_draws",
    "graest_weights",
    "rademacher",
    "uniform",
    "uniform_draws",
]

#: A sampler: ``(rng, n_out, n_in, n_samples, X, dY) -> (rows, cols)``, distinct int64 pairs.
Sampler = Callable[..., tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------------
# shared pieces


def _check_sizes(n_out, n_in, n_samples) -> tuple[int, int, int]:
    n_out, n_in, n_samples = int(n_out), int(n_in), int(n_samples)
    if n_out < 1 or n_in < 1:
        raise MethodError(f"sampler needs a positive shape, got (n_out={n_out}, n_in={n_in})")
    if n_samples < 0:
        raise MethodError(f"n_samples must be >= 0, got {n_samples}")
    return n_out, n_in, n_samples


def _check_batch(name: str, X, dY, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """X (B, n_in) and dY (B, n_out) as arrays, or a clear error: GraBo/GraEst read both."""
    if X is None or dY is None:
        raise MethodError(
            f"sampler {name!r} needs the layer's last input X and output gradient dY; "
            "run a forward and a backward pass first (or use sampler='uniform')"
        )
    X, dY = np.asarray(X), np.asarray(dY)
    if X.ndim != 2 or dY.ndim != 2 or X.shape[1] != n_in or dY.shape[1] != n_out or X.shape[0] != dY.shape[0]:
        raise MethodError(
            f"sampler {name!r}: X must be (B, n_in={n_in}) and dY (B, n_out={n_out}) with the same B, "
            f"got X {X.shape} and dY {dY.shape}"
        )
    return X, dY


def distinct_pairs(rows: np.ndarray, cols: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs among ``(rows[m], cols[m])``, sorted by flat position ``row * n_in + col``.

    Parameters
    ----------
    rows, cols : integer ndarrays, shape (m,)
    n_in : int
        Number of columns (to form flat positions).

    Returns
    -------
    rows, cols : int64 ndarrays, shape (m',), m' <= m
    """
    flat = sorted_unique(np.asarray(rows, dtype=np.int64) * n_in + np.asarray(cols, dtype=np.int64))
    r, c = np.divmod(flat, n_in)
    return r, c


def draw_from_weights(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    r"""``size`` independent draws from the categorical distribution :math:`p \propto w`.

    Inverse CDF: with :math:`c_i = \sum_{l \le i} w_l` and :math:`u \sim U[0, c_{n-1})`, the draw is the
    smallest :math:`i` with :math:`c_i > u`, so index :math:`i` is hit with probability
    :math:`w_i / c_{n-1}`; an index of weight 0 is never drawn. An all-zero (or empty-sum) weight
    vector falls back to the uniform distribution.

    Parameters
    ----------
    rng : numpy Generator
    weights : float ndarray, shape (n,)
        Non-negative and finite.
    size : int

    Returns
    -------
    int64 ndarray, shape (size,)

    Raises
    ------
    MethodError
        If a weight is negative or not finite (a diverged gradient).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    cdf = np.cumsum(w)
    total = cdf[-1] if n else 0.0
    if not np.isfinite(total) or (n and w.min() < 0.0):
        raise MethodError("sampler weights must be finite and non-negative (did the gradient diverge?)")
    if total <= 0.0:
        return rng.integers(0, n, size=size, dtype=np.int64)
    u = rng.random(size) * total
    idx = np.searchsorted(cdf, u, side="right").astype(np.int64)
    # u * total may round up to total itself; the last index of positive weight takes that case.
    last_positive = int(np.flatnonzero(w > 0.0)[-1])
    np.minimum(idx, last_positive, out=idx)
    return idx


# --------------------------------------------------------------------------------------------------
# uniform


def uniform_draws(rng, n_out, n_in, n_samples, X=None, dY=None) -> tuple[np.ndarray, np.ndarray]:
    r"""``n_samples`` raw draws (with repetitions) of the uniform sampler: rows first, then columns.

    .. math:: i \sim U\{0, \dots, n_{out} - 1\}, \qquad j \sim U\{0, \dots, n_{in} - 1\}

    X and dY are accepted for a uniform signature and never read.
    """
    n_out, n_in, n_samples = _check_sizes(n_out, n_in, n_samples)
    rows = rng.integers(0, n_out, size=n_samples, dtype=np.int64)
    cols = rng.integers(0, n_in, size=n_samples, dtype=np.int64)
    return rows, cols


def uniform(rng, n_out, n_in, n_samples, X=None, dY=None) -> tuple[np.ndarray, np.ndarray]:
    r"""Uniform candidates: :math:`f_{out}(i) = 1 / n_{out}`, :math:`f_{in}(j) = 1 / n_{in}`.

    Each draw hits every position with probability :math:`1 / (n_{out} n_{in})`. Cost O(n_samples log
    n_samples) time and O(n_samples) memory, whatever the layer's size; X and dY are not read.

    Parameters
    ----------
    rng : numpy Generator
    n_out, n_in : int
        The layer's shape.
    n_samples : int
        Number of draws (with replacement) before duplicates collapse.
    X, dY : ignored

    Returns
    -------
    rows, cols : int64 ndarrays, shape (m,), m <= n_samples
        Distinct pairs, sorted by flat position.
    """
    return distinct_pairs(*uniform_draws(rng, n_out, n_in, n_samples), n_in)


# --------------------------------------------------------------------------------------------------
# GraBo


def grabo_weights(X: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""The unnormalised GraBo marginals, in float64.

    .. math:: w_{out}(i) = \sum_b |dY_{bi}|, \qquad w_{in}(j) = \sum_b |X_{bj}|

    Their product bounds the gradient element-wise (triangle inequality):

    .. math::

        |g(i, j)| = \Big|\sum_b dY_{bi} X_{bj}\Big| \le \sum_b |dY_{bi}| \, |X_{bj}|
        \le \Big(\sum_b |dY_{bi}|\Big) \Big(\sum_c |X_{cj}|\Big) = w_{out}(i) \, w_{in}(j),

    with equality at batch size 1. Sampling :math:`f_{out} \propto w_{out}`,
    :math:`f_{in} \propto w_{in}` makes the joint probability of a pair proportional to its bound.

    Parameters
    ----------
    X : ndarray, shape (B, n_in)
    dY : ndarray, shape (B, n_out)

    Returns
    -------
    w_out : float64 ndarray, shape (n_out,)
    w_in : float64 ndarray, shape (n_in,)
    """
    w_out = np.abs(dY).sum(axis=0, dtype=np.float64)
    w_in = np.abs(X).sum(axis=0, dtype=np.float64)
    return w_out, w_in


def grabo_draws(rng, n_out, n_in, n_samples, X, dY) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` raw draws (with repetitions) of the GraBo sampler: rows first, then columns."""
    n_out, n_in, n_samples = _check_sizes(n_out, n_in, n_samples)
    X, dY = _check_batch("grabo", X, dY, n_out, n_in)
    w_out, w_in = grabo_weights(X, dY)
    return draw_from_weights(rng, w_out, n_samples), draw_from_weights(rng, w_in, n_samples)


def grabo(rng, n_out, n_in, n_samples, X, dY) -> tuple[np.ndarray, np.ndarray]:
    r"""GraBo candidates: rows and columns drawn by the magnitudes of dY and X.

    .. math:: f_{out}(i) \propto \sum_b |dY_{bi}|, \qquad f_{in}(j) \propto \sum_b |X_{bj}|

    See :func:`grabo_weights` for the bound the joint distribution follows. A marginal that is all
    zero falls back to uniform. Cost O(B (n_in + n_out) + n_samples log(n_in + n_out + n_samples)).

    Parameters
    ----------
    rng : numpy Generator
    n_out, n_in : int
    n_samples : int
        Number of draws (with replacement) before duplicates collapse.
    X : ndarray, shape (B, n_in)
        The layer's last input.
    dY : ndarray, shape (B, n_out)
        The gradient with respect to the layer's last output.

    Returns
    -------
    rows, cols : int64 ndarrays, shape (m,), m <= n_samples
        Distinct pairs, sorted by flat position.
    """
    return distinct_pairs(*grabo_draws(rng, n_out, n_in, n_samples, X, dY), n_in)


# --------------------------------------------------------------------------------------------------
# GraEst


def rademacher(rng: np.random.Generator, size: int) -> np.ndarray:
    r"""``size`` independent signs :math:`\sigma_b \in \{-1, +1\}`, each with probability 1/2 (float64).

    The official code uses a 4-wise independent hash (a cubic polynomial modulo :math:`2^{61} - 1`);
    fully independent signs from the generator have every property the sketch needs
    (:math:`E[\sigma_b \sigma_c] = \delta_{bc}`).
    """
    return rng.integers(0, 2, size=int(size)).astype(np.float64) * 2.0 - 1.0


def graest_weights(X: np.ndarray, dY: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""The unnormalised GraEst marginals for given signs, in float64.

    .. math::

        w_{out}(i) = \Big|\sum_b \sigma_b dY_{bi}\Big|, \qquad w_{in}(j) = \Big|\sum_b \sigma_b X_{bj}\Big|

    Before the absolute values their product is an unbiased sketch of the gradient: with
    independent signs, :math:`E[\sigma_b \sigma_c] = \delta_{bc}`, so

    .. math::

        E_\sigma\Big[\Big(\sum_b \sigma_b dY_{bi}\Big)\Big(\sum_c \sigma_c X_{cj}\Big)\Big]
        = \sum_{b, c} E[\sigma_b \sigma_c] \, dY_{bi} X_{cj} = \sum_b dY_{bi} X_{bj} = g(i, j).

    Parameters
    ----------
    X : ndarray, shape (B, n_in)
    dY : ndarray, shape (B, n_out)
    signs : ndarray, shape (B,)
        The :math:`\sigma_b` (see :func:`rademacher`).

    Returns
    -------
    w_out : float64 ndarray, shape (n_out,)
    w_in : float64 ndarray, shape (n_in,)
    """
    signs = np.asarray(signs, dtype=np.float64)
    w_out = np.abs(signs @ np.asarray(dY, dtype=np.float64))
    w_in = np.abs(signs @ np.asarray(X, dtype=np.float64))
    return w_out, w_in


def graest_draws(rng, n_out, n_in, n_samples, X, dY) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` raw draws (with repetitions) of the GraEst sampler.

    Generator use, in order: the B signs (:func:`rademacher`), then the rows, then the columns.
    """
    n_out, n_in, n_samples = _check_sizes(n_out, n_in, n_samples)
    X, dY = _check_batch("graest", X, dY, n_out, n_in)
    signs = rademacher(rng, X.shape[0])
    w_out, w_in = graest_weights(X, dY, signs)
    return draw_from_weights(rng, w_out, n_samples), draw_from_weights(rng, w_in, n_samples)


def graest(rng, n_out, n_in, n_samples, X, dY) -> tuple[np.ndarray, np.ndarray]:
    r"""GraEst candidates: rows and columns drawn by the magnitudes of a random-sign sketch.

    .. math::

        f_{out}(i) \propto \Big|\sum_b \sigma_b dY_{bi}\Big|, \qquad
        f_{in}(j) \propto \Big|\sum_b \sigma_b X_{bj}\Big|

    One sign vector :math:`\sigma` (B,) is drawn per call; see :func:`graest_weights` for the
    unbiasedness of the sketch. A marginal that is all zero falls back to uniform. Cost
    O(B (n_in + n_out) + n_samples log(n_in + n_out + n_samples)).

    Parameters
    ----------
    rng : numpy Generator
    n_out, n_in : int
    n_samples : int
        Number of draws (with replacement) before duplicates collapse.
    X : ndarray, shape (B, n_in)
    dY : ndarray, shape (B, n_out)

    Returns
    -------
    rows, cols : int64 ndarrays, shape (m,), m <= n_samples
        Distinct pairs, sorted by flat position.
    """
    return distinct_pairs(*graest_draws(rng, n_out, n_in, n_samples, X, dY), n_in)


# --------------------------------------------------------------------------------------------------
# registry

#: The built-in samplers by name; ``"uniform"`` is GSE's default.
SAMPLERS: dict[str, Sampler] = {"uniform": uniform, "grabo": grabo, "graest": graest}


def get_sampler(sampler: str | Sampler) -> Sampler:
    """The sampler named ``sampler`` (case-insensitive), or ``sampler`` itself if it is callable.

    Raises
    ------
    MethodError
        For an unknown name; the message lists :data:`SAMPLERS`.
    """
    if callable(sampler):
        return sampler
    key = sampler.strip().lower() if isinstance(sampler, str) else sampler
    if key not in SAMPLERS:
        raise MethodError(f"unknown GSE sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[key]
