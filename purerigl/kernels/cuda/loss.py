"""Softmax cross-entropy on the device: the loss (one scalar copy to the host) and its gradient.

Two launches:

1. :func:`_rows_kernel`, one thread per sample b: the row maximum, the float32 softmax sum, the
   sample's loss term (float64, as the NumPy code converts it), whether the prediction is right,
   and the gradient row ``dlogits[b, :]``;
2. :func:`_reduce_kernel`, one block of :data:`REDUCE_THREADS` threads: thread t sums the terms
   t, t + T, t + 2T, ... in float64 in ascending order, then a shared-memory tree halves the T
   partial sums (t += t + T/2, T/4, ...). The order is fixed (it depends on neither the batch split
   nor :data:`~._launch.THREADS_PER_BLOCK`), so the loss is identical from run to run; no atomics.

The host receives one float64 array of two numbers, the summed log-probabilities of the labels and the
number of correct predictions (exact in float64).
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError
from ._launch import cuda, empty, launch, to_host
from .elementwise import check_device

__all__ = ["REDUCE_THREADS", "softmax_cross_entropy"]

#: Threads of the single reduction block (a power of two; one warp): the summation order of the loss.
REDUCE_THREADS = 32


@cuda.jit
def _rows_kernel(logits, labels, dlogits, log_prob, correct):
    """Per sample b (one thread): see :func:`softmax_cross_entropy` for the formulas.

    Writes ``dlogits[b, :]`` (float32), ``log_prob[b] = float64(z[b, y] - max - log(sum_exp))`` and
    ``correct[b] = 1.0`` when the first maximal logit is the label's, else 0.0.
    """
    B, C = logits.shape
    for b in range(cuda.grid(1), B, cuda.gridsize(1)):
        # row maximum and the first index holding it (np.max / np.argmax)
        zmax = logits[b, 0]
        arg = 0
        for c in range(1, C):
            if logits[b, c] > zmax:
                zmax = logits[b, c]
                arg = c
        y = labels[b]
        zy = logits[b, y]  # read before dlogits is written: dlogits may be logits itself
        # sum of exp(z - max) in float32, ascending c; the exps are written to dlogits meanwhile
        s = np.float32(0.0)
        for c in range(C):
            e = np.float32(math.exp(logits[b, c] - zmax))
            dlogits[b, c] = e
            s += e
        log_prob[b] = np.float64((zy - zmax) - np.float32(math.log(s)))
        correct[b] = 1.0 if arg == y else 0.0
        # (softmax - onehot) / B, in the same float32 steps as the NumPy code
        Bf = np.float32(B)
        for c in range(C):
            p = dlogits[b, c] / s
            if c == y:
                p = p - np.float32(1.0)
            dlogits[b, c] = p / Bf


@cuda.jit
def _reduce_kernel(log_prob, correct, out):
    """out[0] = sum_b log_prob[b], out[1] = sum_b correct[b]: one block of REDUCE_THREADS, fixed order."""
    t = cuda.threadIdx.x
    lp = cuda.shared.array(REDUCE_THREADS, np.float64)
    ok = cuda.shared.array(REDUCE_THREADS, np.float64)
    a = 0.0
    k = 0.0
    for b in range(t, log_prob.shape[0], REDUCE_THREADS):
        a += log_prob[b]
        k += correct[b]
    lp[t] = a
    ok[t] = k
    cuda.syncthreads()
    half = REDUCE_THREADS // 2
    while half > 0:
        if t < half:
            lp[t] += lp[t + half]
            ok[t] += ok[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        out[0] = lp[0]
        out[1] = ok[0]


def softmax_cross_entropy(logits_d, labels_d, out=None):
    """Mean cross-entropy of softmax(logits) against integer labels, its gradient, and the hits.

    Mirrors :func:`purerigl.nn.softmax_cross_entropy` with the same float32 steps (max subtracted,
    float32 ``exp``, float32 row sum, ``log_prob = shifted - log(sum_exp)``, the terms converted to
    float64 before the mean, the gradient ``exp / sum_exp``, minus 1 at the label, divided by B in
    float32), plus the count of correct predictions the Trainer adds up
    (``(logits.argmax(axis=1) == labels).sum()``: the first maximal logit is the prediction).

    .. math::

        L = \\frac{1}{B} \\sum_b \\Big( \\log \\sum_c e^{z_{bc} - \\max_c z_{bc}}
            - (z_{b, y_b} - \\max_c z_{bc}) \\Big), \\qquad
        \\frac{\\partial L}{\\partial z_{bc}} = \\frac{\\mathrm{softmax}(z_b)_c - [c = y_b]}{B}

    The B terms are summed in float64 in a fixed order (see the module docstring), which differs
    from NumPy's pairwise ``mean``: the loss agrees to float64 rounding of the sum, and the float32
    parts agree with NumPy's to float32 rounding (the exps and the row sums may differ by an ulp).

    Parameters
    ----------
    logits_d : float32 device array, shape (B, C), C >= 1
    labels_d : integer device array, shape (B,), values in [0, C) (not checked: no pass over the data;
        out-of-range labels read out of bounds)
    out : float32 device array, shape (B, C), optional
        Receives dlogits; may be ``logits_d`` itself (each thread reads its row's logits before it
        overwrites them).

    Returns
    -------
    loss : float
        Copied to the host (the only host copy: one float64 pair); NaN for B = 0, like ``np.mean``
        of nothing.
    dlogits_d : float32 device array, shape (B, C)
    n_correct : int
        Number of samples whose first maximal logit is at the label.
    """
    check_device("logits", logits_d, ndim=2)
    B, C = (int(n) for n in logits_d.shape)
    check_device("labels", labels_d, dtype=None, shape=(B,))
    if C == 0:
        raise ShapeError(f"logits has shape {(B, C)}: at least one class is needed")
    if out is None:
        out = empty((B, C), np.float32)
    else:
        check_device("out", out, shape=(B, C))
    if B == 0:
        return float("nan"), out, 0
    log_prob = empty((B,), np.float64)
    correct = empty((B,), np.float64)
    launch(_rows_kernel, B, logits_d, labels_d, out, log_prob, correct)
    sums = empty((2,), np.float64)
    _reduce_kernel[1, REDUCE_THREADS](log_prob, correct, sums)
    total, hits = to_host(sums)
    return float(-(total / B)), out, int(hits)
