"""Softmax cross-entropy, mean over the batch, with its fused gradient, on host arrays.

The maths of the loss (the cuda backend has its own kernel, :mod:`purerigl.kernels.cuda.loss`, tested
against this); :func:`purerigl.nn.softmax_cross_entropy` is this function.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    .. math::

        L = \\frac{1}{B} \\sum_b \\Big( \\log \\sum_c e^{z_{bc}} - z_{b, y_b} \\Big), \\qquad
        \\frac{\\partial L}{\\partial z_{bc}} = \\frac{\\mathrm{softmax}(z_b)_c - [c = y_b]}{B}

    Stable: the row maximum is subtracted before exponentiating.

    Parameters
    ----------
    logits : float32 ndarray (B, C)
    labels : integer ndarray (B,), values in [0, C)

    Returns
    -------
    loss : float
    dlogits : float32 ndarray (B, C)
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ShapeError(f"logits {logits.shape} and labels {labels.shape} do not match")
    B = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # (B, C), max entry 0
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)  # (B, 1)
    log_prob = shifted - np.log(sum_exp)  # (B, C)
    rows = np.arange(B)
    loss = float(-log_prob[rows, labels].astype(np.float64).mean())
    grad = exp / sum_exp
    grad[rows, labels] -= 1.0
    grad /= B
    return loss, grad.astype(np.float32, copy=False)
