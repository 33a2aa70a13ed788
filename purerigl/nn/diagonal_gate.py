"""DynaDiag's soft top-K gate over the P candidate diagonals of a layer, and its backward.

Tyagi et al. 2025 (arXiv 2506.11449), official code ``horizon-research/DynaDiag: MLP/linear_softmax.py``
(``soft_topk_with_temperature``; PAPERS.md 4.3). One importance score :math:`\\alpha_d` per candidate
diagonal d in [0, P); with the temperature T and the number K of diagonals the layer may keep,

.. math::

    s = \\operatorname{softmax}(\\alpha / T), \\qquad
    z_d = K s_d, \\qquad
    \\tilde\\alpha_d = \\min(1, z_d) \\quad (\\text{the official } \\operatorname{clamp}(z, 0, 1); z \\ge 0).

The gate is not a hard top-K: :math:`\\sum_d \\tilde\\alpha_d \\le K`, and at the official
initialisation (every :math:`\\alpha_d = 1/P`) every gate is K / P. As T falls the softmax sharpens and
the gates of the largest alphas approach 1.

Backward. With :math:`h_d = \\partial L / \\partial z_d = [z_d \\le 1] \\, \\partial L / \\partial \\tilde\\alpha_d`
(the clamp passes the gradient where :math:`0 \\le z_d \\le 1`, bounds included, as ``torch.clamp``
does) and the softmax Jacobian :math:`\\partial s_d / \\partial \\alpha_j = s_d (\\delta_{dj} - s_j) / T`,

.. math::

    \\frac{\\partial L}{\\partial \\alpha_j} = \\frac{K}{T} \\, s_j \\Big(h_j - \\sum_d h_d s_d\\Big).

Both run on the host in float64 over the P scores (O(P) work per step, P = max(n_out, n_in)); the gates
are rounded once to float32 for the products. :func:`soft_top_k_jacobian` writes the same derivative
out as the dense P x P matrix, the route the tests compare with.
"""

from __future__ import annotations

import numpy as np

__all__ = ["soft_top_k", "soft_top_k_backward", "soft_top_k_jacobian", "softmax"]


def softmax(alpha: np.ndarray, temperature: float) -> np.ndarray:
    """float64 (P,): :math:`s = \\operatorname{softmax}(\\alpha / T)`, shifted by the maximum first
    (the same numbers, without overflow)."""
    a = np.asarray(alpha, dtype=np.float64) / float(temperature)
    e = np.exp(a - a.max())
    return e / e.sum()


def soft_top_k(alpha: np.ndarray, K: int, temperature: float) -> np.ndarray:
    """float64 (P,): the gates :math:`\\tilde\\alpha = \\min(1, K \\operatorname{softmax}(\\alpha / T))`.

    Parameters
    ----------
    alpha : float ndarray (P,)
        The importance scores.
    K : int >= 1
        How many diagonals the layer keeps (the gates sum to at most K).
    temperature : float > 0
    """
    return np.minimum(1.0, K * softmax(alpha, temperature))


def soft_top_k_backward(alpha: np.ndarray, K: int, temperature: float, d_gate: np.ndarray) -> np.ndarray:
    """float64 (P,): :math:`\\partial L / \\partial \\alpha` from :math:`\\partial L / \\partial \\tilde\\alpha` (``d_gate``, (P,)).

    .. math:: \\frac{\\partial L}{\\partial \\alpha_j} = \\frac{K}{T} s_j \\Big(h_j - \\sum_d h_d s_d\\Big),
              \\qquad h_d = [K s_d \\le 1] \\, \\frac{\\partial L}{\\partial \\tilde\\alpha_d}
    """
    s = softmax(alpha, temperature)
    h = np.where(K * s <= 1.0, np.asarray(d_gate, dtype=np.float64), 0.0)
    return (K / float(temperature)) * s * (h - np.dot(h, s))


def soft_top_k_jacobian(alpha: np.ndarray, K: int, temperature: float) -> np.ndarray:
    """float64 (P, P): :math:`J_{dj} = \\partial \\tilde\\alpha_d / \\partial \\alpha_j`, the dense Jacobian
    (for tests and teaching; training uses :func:`soft_top_k_backward`, which never forms it).

    .. math:: J_{dj} = [K s_d \\le 1] \\, \\frac{K}{T} \\, s_d (\\delta_{dj} - s_j)
    """
    s = softmax(alpha, temperature)
    passes = (K * s <= 1.0).astype(np.float64)
    return (passes * (K / float(temperature)) * s)[:, None] * (np.eye(s.size) - s[None, :])
