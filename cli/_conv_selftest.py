"""Self-test of a backend's sparse convolution against a dense convolution computed another way.

:class:`~purerigl.nn.conv.SparseConv2d` runs on the backend (its patch map ``im2col_t``, the
feature-major products ``matmul_fm`` and ``sddmm_fm``, the input gradient ``conv_input_grad_fm``, the
output reorders and the bias gradient). The oracle never forms a patch matrix: with K = the filter matrix as a dense
(c_out, c_in, kh, kw) array (through SciPy CSR), X_p the input zero-padded by p and dY^s the output
gradient spread out by the stride (zeros between), in float64 with SciPy's 2-d correlation and
convolution per (sample, filter, channel):

.. math::

    Y[b, o] = \\Big(\\sum_c X_p[b, c] \\star K[o, c]\\Big)[::s, ::s] + b_o, \\qquad
    dX_p[b, c] = \\sum_o dY^s[b, o] * K[o, c] \\ (\\text{full}), \\qquad
    dK[o, c] = \\sum_b X_p[b, c] \\star dY^s[b, o]

(``\\star`` valid correlation, ``*`` convolution), dX is dX_p without its padding, and the value
gradient is dK read at the stored positions. DynaDiag's soft gated diagonal layer as the filter matrix
(:func:`check_gated_conv`) is checked the same way over its gated dense filters, plus the gradient of
its scores alpha. Tolerances as in :mod:`._selftest`: (n + 1) eps32 times
the largest sum of |terms|, n the terms per output.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import convolve2d, correlate2d

from purerigl.formats import FORMATS
from purerigl.nn import SparseConv2d

from ._selftest import EPS32, Result, _describe, compare, slot_positions

#: ((B, c_in, H, W), c_out, kernel, stride, padding, density): padding, a stride that leaves input rows
#: unread, batch 1, odd and unequal sizes.
CONV_CASES = (
    ((2, 3, 7, 7), 5, 3, 1, 1, 0.4),
    ((1, 2, 6, 5), 4, 2, 2, 0, 0.5),
    ((2, 2, 8, 7), 6, 3, 2, 1, 0.3),
)
#: Smaller cases for a backend on the CUDA simulator.
TINY_CONV_CASES = (
    ((1, 2, 5, 5), 3, 3, 1, 1, 0.4),
    ((2, 1, 5, 6), 3, 2, 2, 0, 0.5),
)


def conv_oracle(X: np.ndarray, K: np.ndarray, bias: np.ndarray, dY: np.ndarray, stride: int, padding: int):
    """float64 (Y, dX, dK) of the dense convolution of X (B, c_in, H, W) by K (c_out, c_in, kh, kw),
    and its input and filter gradients for the output gradient dY (B, c_out, Ho, Wo), by SciPy's
    correlate2d / convolve2d (no patch matrix)."""
    B, c_in, H, W = X.shape
    c_out, _, kh, kw = K.shape
    s, p = stride, padding
    Xp = np.pad(X, ((0, 0), (0, 0), (p, p), (p, p)))  # (B, c_in, H + 2p, W + 2p)
    Hv, Wv = Xp.shape[2] - kh + 1, Xp.shape[3] - kw + 1  # the stride-1 output
    dYs = np.zeros((B, c_out, Hv, Wv))
    dYs[:, :, ::s, ::s] = dY  # (B, c_out, Hv, Wv): dY spread out by the stride
    Y = np.empty(dY.shape)
    dXp = np.zeros(Xp.shape)
    dK = np.zeros(K.shape)
    for b in range(B):
        for o in range(c_out):
            Y[b, o] = sum(correlate2d(Xp[b, c], K[o, c], mode="valid") for c in range(c_in))[::s, ::s] + bias[o]
            for c in range(c_in):
                dXp[b, c] += convolve2d(dYs[b, o], K[o, c], mode="full")
                dK[o, c] += correlate2d(Xp[b, c], dYs[b, o], mode="valid")
    return Y, dXp[:, :, p:p + H, p:p + W], dK


def _step(layer: SparseConv2d, backend, X: np.ndarray, dY: np.ndarray) -> dict:
    """One forward and backward of ``layer`` on ``backend``: the host arrays the checks compare."""
    got = {"forward": backend.to_host(layer.forward(backend.to_device(X)))}
    got["input grad"] = backend.to_host(layer.backward(backend.to_device(dY)))
    got["value grad"] = backend.to_host(layer.weight.grad)
    got["bias grad"] = backend.to_host(layer.bias.grad)
    return got


def _compare_all(fmt: str, label: str, shape, B: int, expected: dict, measure) -> list[Result]:
    """One :class:`Result` per op of ``expected`` (op -> (expected, magnitude, terms per output)) for
    what ``measure()`` returns (op -> host array); a ``measure`` that raises fails every op of the
    case, each with the exception's message."""
    try:
        got = measure()
    except Exception as err:  # a crashing layer fails every check of the case, with its message
        return [Result(fmt, f"{label} {op}", shape, B, float("nan"),
                       (n + 1) * EPS32 * float(np.max(m, initial=0.0)), False, _describe(err))
                for op, (_, m, n) in expected.items()]
    results = []
    for op, (want, magnitude, n_terms) in expected.items():
        err, tol, note = compare(np.asarray(got[op]), want, magnitude, n_terms)
        results.append(Result(fmt, f"{label} {op}", shape, B, err, tol, not note, note))
    return results


def check_conv(backend, fmt: str, case, rng: np.random.Generator) -> list[Result]:
    """Forward, input gradient, value gradient and bias gradient of one SparseConv2d on ``backend``."""
    (B, c_in, H, W), c_out, k, s, p, density = case
    n_in = c_in * k * k
    Wm = FORMATS[fmt].random((c_out, n_in), density, rng)
    bias = rng.standard_normal(c_out).astype(np.float32)
    X = rng.standard_normal((B, c_in, H, W)).astype(np.float32)
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    dY = rng.standard_normal((B, c_out, Ho, Wo)).astype(np.float32)
    K = Wm.to_scipy().toarray().astype(np.float64).reshape(c_out, c_in, k, k)
    X64, dY64, b64 = X.astype(np.float64), dY.astype(np.float64), bias.astype(np.float64)
    Y, dX, dK = conv_oracle(X64, K, b64, dY64, s, p)
    aY, adX, adK = conv_oracle(np.abs(X64), np.abs(K), np.abs(b64), np.abs(dY64), s, p)
    rows, cols = slot_positions(Wm)
    values_shape = Wm.values.shape
    label = f"conv {k}x{k}/{s} p{p}"
    expected = {  # op -> (expected, magnitude, terms per output)
        "forward": (Y, aY, n_in + 1),
        "input grad": (dX, adX, c_out * k * k),
        "value grad": (dK.reshape(c_out, n_in)[rows, cols].reshape(values_shape),
                       adK.reshape(c_out, n_in)[rows, cols].reshape(values_shape), B * Ho * Wo),
        "bias grad": (dY64.sum(axis=(0, 2, 3)), np.abs(dY64).sum(axis=(0, 2, 3)), B * Ho * Wo),
    }

    def measure():
        return _step(SparseConv2d(Wm, c_in, k, s, p, bias=bias, backend=backend), backend, X, dY)

    return _compare_all(fmt, label, (c_out, n_in), B, expected, measure)


def check_gated_conv(backend, case, rng: np.random.Generator) -> list[Result]:
    """DynaDiag's soft gated layer as a convolution's filter matrix (what ``gate_model`` builds):
    forward, input gradient, value gradient, bias gradient and the gradient of the scores alpha, on
    ``backend``, against the same SciPy convolution over the gated dense filters W_eff and the soft
    top-K's Jacobian written entry by entry (:mod:`purerigl.dst.spec.dynadiag`).

    .. math:: \\frac{\\partial L}{\\partial V_k} = g_{d_k} G_k, \\qquad
              \\frac{\\partial L}{\\partial \\alpha} = J^T \\big(\\textstyle\\sum_t V_{k,t} G_{k,t}\\big)_{d_k}

    with G = dK read at the stored positions and g = min(1, K softmax(alpha / T)).
    """
    from purerigl.dst.spec import dynadiag as spec
    from purerigl.formats import Diagonal
    from purerigl.nn import GatedDiagonalLinear

    (B, c_in, H, W), c_out, k, s, p, density = case
    n_in = c_in * k * k
    shape = (c_out, n_in)
    Wm = Diagonal.random(shape, density, rng)
    n_diag = Wm.P
    K_keep, T = max(1, Wm.K // 2), 0.7
    alpha = rng.standard_normal(n_diag).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    X = rng.standard_normal((B, c_in, H, W)).astype(np.float32)
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    dY = rng.standard_normal((B, c_out, Ho, Wo)).astype(np.float32)
    W_eff = spec.effective_matrix(Wm.offsets, Wm.values, alpha, K_keep, T, shape)  # (c_out, n_in) float64
    W_abs = spec.effective_matrix(Wm.offsets, np.abs(Wm.values), alpha, K_keep, T, shape)
    X64, dY64, b64 = X.astype(np.float64), dY.astype(np.float64), bias.astype(np.float64)
    Y, dX, dK = conv_oracle(X64, W_eff.reshape(c_out, c_in, k, k), b64, dY64, s, p)
    aY, adX, adK = conv_oracle(np.abs(X64), W_abs.reshape(c_out, c_in, k, k), np.abs(b64), np.abs(dY64), s, p)
    rows, cols = slot_positions(Wm)
    G = dK.reshape(shape)[rows, cols].reshape(Wm.values.shape)  # (K, L): dL/dW_eff at the stored entries
    aG = adK.reshape(shape)[rows, cols].reshape(Wm.values.shape)
    gate = spec.gate(alpha, K_keep, T)[Wm.offsets][:, None]  # (K, 1)
    V = Wm.values.astype(np.float64)
    J = spec.jacobian(alpha, K_keep, T)  # (P, P)
    d_gate, a_gate = np.zeros(n_diag), np.zeros(n_diag)
    d_gate[Wm.offsets], a_gate[Wm.offsets] = (V * G).sum(axis=1), (np.abs(V) * aG).sum(axis=1)
    label = f"conv {k}x{k}/{s} p{p}"
    expected = {  # op -> (expected, magnitude, terms per output)
        "forward": (Y, aY, n_in + 1),
        "input grad": (dX, adX, c_out * k * k),
        "value grad": (gate * G, gate * aG, B * Ho * Wo + 1),
        "bias grad": (dY64.sum(axis=(0, 2, 3)), np.abs(dY64).sum(axis=(0, 2, 3)), B * Ho * Wo),
        "alpha grad": (J.T @ d_gate, np.abs(J).T @ a_gate, B * Ho * Wo + Wm.L + n_diag),
    }

    def measure():
        layer = SparseConv2d(Wm.copy(), c_in, k, s, p, bias=bias, backend=backend, name="conv")
        layer.linear = GatedDiagonalLinear(Wm.copy(), K_keep, alpha=alpha, temperature=T, bias=bias,
                                           backend=backend, name="conv")
        got = _step(layer, backend, X, dY)
        got["alpha grad"] = layer.linear.alpha.grad  # a host array on every backend
        return got

    return _compare_all("diagonal, gated", label, shape, B, expected, measure)


def run_conv_selftest(backend, seed: int = 0, tiny: bool = False, formats=None) -> list[Result]:
    """:func:`check_conv` for every format and case (:data:`TINY_CONV_CASES` if ``tiny``), then, with
    the diagonal format, :func:`check_gated_conv` for every case; each (case, format) draws its inputs
    from its own seed."""
    cases = TINY_CONV_CASES if tiny else CONV_CASES
    formats = list(formats or FORMATS)
    results = []
    for f_idx, fmt in enumerate(formats):
        for c_idx, case in enumerate(cases):
            results.extend(check_conv(backend, fmt, case, np.random.default_rng([seed, 101, c_idx, f_idx])))
    if "diagonal" in formats:
        for c_idx, case in enumerate(cases):
            results.extend(check_gated_conv(backend, case, np.random.default_rng([seed, 103, c_idx])))
    return results
