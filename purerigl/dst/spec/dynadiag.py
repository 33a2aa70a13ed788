"""DynaDiag (Tyagi et al. 2025; PAPERS.md 4.3), its steps as plain NumPy: the gated layer, its gradient,
the temperature, the freeze and the window swap.

A layer stores S of its P = max(n_out, n_in) wrap-around diagonals (offsets d_k, values V_k of length
L = min(n_out, n_in)), one score alpha_d per candidate diagonal, K the diagonals it keeps.

1. Gate: s = softmax(alpha / T) over all P; gate_d = min(1, K s_d).
2. Forward: the dense matrix W_eff holds gate_{d_k} V_k[t] at (row(d_k, t), col(d_k, t)); Y = X W_eff^T + b.
3. Backward: G = dY^T X (dense); G_k[t] = G at the positions of diagonal d_k;
   dV_k = gate_{d_k} G_k; dgate_{d_k} = sum_t V_k[t] G_k[t] (0 for a diagonal not stored);
   dalpha = J^T dgate with the dense Jacobian J[d, j] = [K s_d <= 1] (K / T) s_d (delta_dj - s_j).
4. Temperature of epoch e (0-based) of E: T_min + (T_max - T_min) (1 + cos(pi min(e, E-1) / max(1, E-1))) / 2.
5. Freeze: keep the K stored diagonals of largest alpha; gate 1 from then on. Their values stay V_d
   (``keep``, the official code) or become gate_d V_d with the gate of the last step (``fold``).
6. Window swap (every delta_t steps while soft, S < P): q = max(1, floor(drop_fraction * S)) (at most S);
   the q stored diagonals of smallest alpha leave; among the offsets not kept, the q of largest
   ||G_d||_2 enter with values 0, zero optimizer state and alpha = the smallest alpha kept.

Equal scores: the smaller tie rank ``tie_rank(offset, salt)``. The fast versions are
:class:`purerigl.nn.GatedDiagonalLinear` (1-3) and :mod:`purerigl.dst.dynadiag` (4-6).
"""

from __future__ import annotations

import math

import numpy as np

from ...formats._base import floor_count
from ._common import Step, Update, best, carry, dense_gradient, diagonal_of, step_gradient, unchanged


def _cells(offset: int, shape) -> list[tuple[int, int]]:
    """The (row, col) of every element t of diagonal ``offset`` (DESIGN.md section 2)."""
    n_out, n_in = shape
    L = min(n_out, n_in)
    if n_out >= n_in:
        return [((t + offset) % n_out, t) for t in range(L)]
    return [(t, (t + offset) % n_in) for t in range(L)]


def gate(alpha: np.ndarray, K: int, T: float) -> np.ndarray:
    """float64 (P,): min(1, K softmax(alpha / T)), one diagonal at a time."""
    a = [float(x) / T for x in alpha]
    top = max(a)
    e = [math.exp(x - top) for x in a]
    total = sum(e)
    return np.array([min(1.0, K * x / total) for x in e])


def jacobian(alpha: np.ndarray, K: int, T: float) -> np.ndarray:
    """float64 (P, P): d gate_d / d alpha_j, written entry by entry."""
    P = len(alpha)
    a = np.asarray(alpha, dtype=np.float64) / T
    s = np.exp(a - a.max())
    s /= s.sum()
    J = np.zeros((P, P))
    for d in range(P):
        if K * s[d] <= 1.0:
            for j in range(P):
                J[d, j] = K / T * s[d] * ((1.0 if d == j else 0.0) - s[j])
    return J


def effective_matrix(offsets, values, alpha, K: int, T: float, shape, frozen: bool = False) -> np.ndarray:
    """float64 (n_out, n_in): the dense matrix the layer computes with."""
    g = np.ones(len(alpha)) if frozen else gate(alpha, K, T)
    W = np.zeros(shape)
    for k, d in enumerate(offsets):
        for t, (r, c) in enumerate(_cells(int(d), shape)):
            W[r, c] = g[int(d)] * float(values[k, t])
    return W


def forward(X, offsets, values, alpha, K, T, bias, frozen=False) -> np.ndarray:
    """float64 (B, n_out): Y = X W_eff^T + b."""
    shape = (len(bias), X.shape[1])
    return X.astype(np.float64) @ effective_matrix(offsets, values, alpha, K, T, shape, frozen).T + bias


def backward(X, dY, offsets, values, alpha, K, T, frozen=False, l1: float = 0.0) -> dict:
    """The gradients of a soft (or frozen) layer: ``values`` (S, L), ``alpha`` (P,), ``bias``, ``X``."""
    shape = (dY.shape[1], X.shape[1])
    G = dense_gradient(X, dY)
    g = np.ones(len(alpha)) if frozen else gate(alpha, K, T)
    d_values = np.zeros(np.shape(values))
    d_gate = np.zeros(len(alpha))
    for k, d in enumerate(offsets):
        for t, (r, c) in enumerate(_cells(int(d), shape)):
            d_values[k, t] = g[int(d)] * G[r, c]
            d_gate[int(d)] += float(values[k, t]) * G[r, c]
    d_alpha = np.zeros(len(alpha)) if frozen else jacobian(alpha, K, T).T @ d_gate + l1 * np.sign(alpha)
    W_eff = effective_matrix(offsets, values, alpha, K, T, shape, frozen)
    return {"values": d_values, "alpha": d_alpha, "bias": dY.astype(np.float64).sum(axis=0),
            "X": dY.astype(np.float64) @ W_eff}


def temperature(epoch: int, epochs: int, t_max: float = 5.0, t_min: float = 0.05) -> float:
    e = min(max(epoch, 0), max(epochs - 1, 0))
    return t_min + (t_max - t_min) * (1 + math.cos(math.pi * e / max(1, epochs - 1))) / 2


def freeze(offsets, alpha, K: int, salt: int) -> np.ndarray:
    """int64 (K,), ascending: the stored offsets of the K largest alpha."""
    offsets = np.asarray(offsets, dtype=np.int64)
    return np.sort(best(np.asarray(alpha, dtype=np.float32)[offsets], offsets, K, salt))


def frozen_values(offsets, values, alpha, K: int, T: float, kept, fold: bool) -> np.ndarray:
    """float32 (K, L): the values of the ``kept`` diagonals after the freeze (step 5), in ``kept``'s
    order; ``fold`` multiplies each by its gate at temperature T."""
    offsets, kept = np.asarray(offsets, dtype=np.int64), np.asarray(kept, dtype=np.int64)
    rows = [int(np.flatnonzero(offsets == d)[0]) for d in kept]
    V = np.asarray(values, dtype=np.float32)[rows]
    if not fold:
        return V
    g = gate(np.asarray(alpha, dtype=np.float64), K, T)[kept]
    return (g[:, None] * V).astype(np.float32)


def update(step: Step, scores=None) -> Update:
    """The window swap of ``step.W`` with the scores ``scores`` (P,) (step 6); ``stats["entered"]`` are
    the offsets not stored before and ``stats["scores"]`` the scores after the swap."""
    W, salt = step.W, step.salt
    P, S = max(W.shape), W.offsets.size
    alpha = np.array(scores, dtype=np.float32)
    q = min(S, max(1, floor_count(step.alpha, S))) if step.alpha > 0 and S > 0 else 0
    if q == 0 or S == P:
        return unchanged(step, diagonals=S, entered=[], scores=alpha.tolist())
    offsets = W.offsets.astype(np.int64)
    kept = best(alpha[offsets], offsets, S - q, salt)
    G = step_gradient(step)
    norms = np.zeros(P)
    for d in range(P):
        norms[d] = math.sqrt(sum(G[r, c] ** 2 for r, c in _cells(d, W.shape)))
    others = np.array([d for d in range(P) if d not in set(kept.tolist())], dtype=np.int64)
    grown = best(norms.astype(np.float32)[others], others, q, salt)
    result = carry(step, diagonal_of(np.concatenate([kept, grown]), W.shape))
    entered = sorted(set(grown.tolist()) - set(offsets.tolist()))
    if entered:
        alpha[entered] = alpha[kept].min()
    result.stats.update(diagonals=S, entered=entered, scores=alpha.tolist())
    return result
