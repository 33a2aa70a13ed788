"""Numba kernels of max pooling: the general k x k window and the 2 x 2 window at stride 2 written out.

The specifications are :func:`purerigl.nn.pool.maxpool_reference` and
:func:`~purerigl.nn.pool.maxpool_backward_reference`. The forward only copies values (the first
maximum in window order, a NaN winning); the backward adds the contributions of overlapping windows
to a pixel in the specification's order (output rows walked backwards, as :mod:`.patches` explains
for col2im), so both give the same bits as the specification. Inputs are padded by -inf first
(:func:`.patches._padded`); indices are unsigned, so the inner loops have no negative-index checks.
Each parallel loop runs over (sample, channel) planes and writes disjoint outputs, so the serial
twins (:mod:`._serial`) give the same bits. tests/test_conv_speedpaths.py holds the kernels to the
specifications; benchmarks/maxpool_2x2.py times the written-out ones against the general ones.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._serial import by_work, written_twin
from .patches import _padded


@njit(parallel=True, cache=CACHE)
def _maxpool(Xp, Y, arg, k, s):
    """Y[b, c, ho, wo] = the first maximum of the k x k window of the padded Xp (B, C, Hp, Wp) (padding
    -inf) at (s ho, s wo), arg its offset i * k + j; parallel over (b, c) planes.

    "First maximum" is ``argmax``'s: the lowest offset among the largest values, a NaN counting as
    larger than everything (the first NaN wins).
    """
    B, C, Hp, Wp = Xp.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    Xf = Xp.reshape(-1)
    Yf = Y.reshape(-1)
    Af = arg.reshape(-1)
    uWp = np.uint64(Wp)
    for plane in prange(B * C):
        q_plane = np.uint64(plane * Hp * Wp)
        o = np.uint64(plane * Ho * Wo)
        for ho in range(Ho):
            for wo in range(Wo):
                q = q_plane + np.uint64(s * ho) * uWp + np.uint64(s * wo)
                best = Xf[q]
                at = 0
                for i in range(k):
                    for j in range(k):
                        v = Xf[q + np.uint64(i) * uWp + np.uint64(j)]
                        if best == best and (v > best or v != v):  # best is no NaN; v larger, or NaN
                            best = v
                            at = i * k + j
                Yf[o] = best
                Af[o] = at
                o += np.uint64(1)


@njit(cache=CACHE, inline="always")
def _first_max_of_4(v0, v1, v2, v3):
    """(the maximum, its offset 0-3) of a 2 x 2 window's values in window order, by :func:`_maxpool`'s
    rule (a value replaces the maximum so far when that is no NaN and the value is larger or a NaN),
    as selects rather than branches, so that a loop over windows vectorises."""
    best = v0
    at = 0
    take = (best == best) & ((v1 > best) | (v1 != v1))
    best = v1 if take else best
    at = 1 if take else at
    take = (best == best) & ((v2 > best) | (v2 != v2))
    best = v2 if take else best
    at = 2 if take else at
    take = (best == best) & ((v3 > best) | (v3 != v3))
    best = v3 if take else best
    at = 3 if take else at
    return best, at


@njit(parallel=True, cache=CACHE)
def _maxpool_2x2(Xp, Y, arg):
    """:func:`_maxpool` for the 2 x 2 window at stride 2 (the built-in networks' pooling), written out
    (:func:`_first_max_of_4`). With the window and the stride known to the compiler the loop over
    w_o vectorises: the same maxima and offsets, 2.5-5.7x faster than :func:`_maxpool` on the built-in
    networks' poolings (benchmarks/results/maxpool-2x2-2core.md). Its serial twin is
    :func:`_maxpool_2x2_serial`."""
    B, C, Hp, Wp = Xp.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    Xf = Xp.reshape(-1)
    Yf = Y.reshape(-1)
    Af = arg.reshape(-1)
    uWp = np.uint64(Wp)
    one = np.uint64(1)
    for plane in prange(B * C):
        q_plane = np.uint64(plane * Hp * Wp)
        o_plane = np.uint64(plane * Ho * Wo)
        for ho in range(Ho):
            r0 = q_plane + np.uint64(2 * ho) * uWp  # the window's top row
            r1 = r0 + uWp  # and its bottom row
            o = o_plane + np.uint64(ho * Wo)
            for wo in range(Wo):
                c = np.uint64(2 * wo)
                best, at = _first_max_of_4(Xf[r0 + c], Xf[r0 + c + one], Xf[r1 + c], Xf[r1 + c + one])
                Yf[o + np.uint64(wo)] = best
                Af[o + np.uint64(wo)] = at


@written_twin(_maxpool_2x2)
@njit(cache=CACHE)
def _maxpool_2x2_serial(Xp, Y, arg):
    """The serial twin of :func:`_maxpool_2x2`, written out: the same windows in the same order, but
    each output row first goes to two buffers of its own and is then copied out. Compiled without
    ``parallel=True``, the parallel kernel's loop does not vectorise (the compiler cannot rule out
    that Y and arg overlap Xp; the parallel loop's body is compiled apart, with its arrays as
    arguments that do not alias); into buffers allocated here it does. The same bits, 2.7-5.4x faster
    than the general kernel's twin where the parallel kernel compiled serially gained 1.2-1.6x
    (benchmarks/results/maxpool-2x2-2core.md, section "Session 16")."""
    B, C, Hp, Wp = Xp.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    Xf = Xp.reshape(-1)
    Yf = Y.reshape(-1)
    Af = arg.reshape(-1)
    uWp = np.uint64(Wp)
    one = np.uint64(1)
    y_row = np.empty(Wo, dtype=Y.dtype)  # (Wo,): one output row, in memory no input can alias
    arg_row = np.empty(Wo, dtype=arg.dtype)
    for plane in range(B * C):
        q_plane = np.uint64(plane * Hp * Wp)
        o_plane = np.uint64(plane * Ho * Wo)
        for ho in range(Ho):
            r0 = q_plane + np.uint64(2 * ho) * uWp  # the window's top row
            r1 = r0 + uWp  # and its bottom row
            for wo in range(Wo):
                c = np.uint64(2 * wo)
                best, at = _first_max_of_4(Xf[r0 + c], Xf[r0 + c + one], Xf[r1 + c], Xf[r1 + c + one])
                y_row[wo] = best
                arg_row[wo] = at
            o = o_plane + np.uint64(ho * Wo)
            for wo in range(Wo):
                Yf[o + np.uint64(wo)] = y_row[wo]
                Af[o + np.uint64(wo)] = arg_row[wo]


@njit(parallel=True, cache=CACHE)
def _maxpool_backward(dY, arg, dXp, k, s):
    """dXp[b, c, s ho + i*, s wo + j*] += dY[b, c, ho, wo] at every window's recorded maximum offset
    (i*, j*) = divmod(arg, k), into the padded dXp (B, C, Hp, Wp), zeroed on entry; parallel over
    (b, c) planes, windows walked backwards (the specification's order of additions where windows
    overlap)."""
    B, C, Hp, Wp = dXp.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    Xf = dXp.reshape(-1)
    Yf = dY.reshape(-1)
    Af = arg.reshape(-1)
    uWp = np.uint64(Wp)
    for plane in prange(B * C):
        q_plane = np.uint64(plane * Hp * Wp)
        for ho in range(Ho - 1, -1, -1):
            for wo in range(Wo - 1, -1, -1):
                o = np.uint64((plane * Ho + ho) * Wo + wo)
                a = Af[o]
                q = q_plane + np.uint64(s * ho + a // k) * uWp + np.uint64(s * wo + a % k)
                Xf[q] += Yf[o]


@njit(parallel=True, cache=CACHE)
def _maxpool_backward_2x2(dY, arg, dXp):
    """:func:`_maxpool_backward` for the 2 x 2 window at stride 2: the windows do not overlap, so each
    input position receives at most one dY value and the order of the additions does not matter
    (0 + dY: the same bits, -0.0 becoming 0.0 as there); the offset's row and column by shift and
    mask instead of a division by a run-time k (2.0-2.8x faster with the zeroing of the buffer,
    benchmarks/results/maxpool-2x2-2core.md)."""
    B, C, Hp, Wp = dXp.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    Xf = dXp.reshape(-1)
    Yf = dY.reshape(-1)
    Af = arg.reshape(-1)
    uWp = np.uint64(Wp)
    one = np.uint64(1)
    for plane in prange(B * C):
        q_plane = np.uint64(plane * Hp * Wp)
        for ho in range(Ho):
            r0 = q_plane + np.uint64(2 * ho) * uWp  # the window's top row
            o = np.uint64((plane * Ho + ho) * Wo)
            for wo in range(Wo):
                a = np.uint64(Af[o + np.uint64(wo)])
                Xf[r0 + (a >> one) * uWp + np.uint64(2 * wo) + (a & one)] += Yf[o + np.uint64(wo)]


def maxpool_forward(X: np.ndarray, k: int, stride: int, padding: int, Ho: int, Wo: int):
    """(Y (B, C, Ho, Wo), arg (B, C, Ho, Wo) intp) of X (B, C, H, W), padded by -inf first (a copy,
    only when ``padding`` > 0); the 2 x 2 window at stride 2 by :func:`_maxpool_2x2`."""
    B, C = X.shape[:2]
    Y = np.empty((B, C, Ho, Wo), dtype=X.dtype)
    arg = np.empty((B, C, Ho, Wo), dtype=np.intp)
    if Y.size:
        Xp = _padded(X, padding, -np.inf)  # (B, C, Hp, Wp)
        if k == 2 and stride == 2:
            by_work(_maxpool_2x2, Y.size * 4)(Xp, Y, arg)
        else:
            by_work(_maxpool, Y.size * k * k)(Xp, Y, arg, k, stride)
    return Y, arg


def maxpool_backward(dY: np.ndarray, arg: np.ndarray, X_shape, k: int, stride: int, padding: int) -> np.ndarray:
    """dX (B, C, H, W) of the C-contiguous dY (B, C, Ho, Wo), each to its window's recorded maximum
    (accumulated in a zero-padded buffer of which dX is the inner view when ``padding`` > 0); the
    2 x 2 window at stride 2 by :func:`_maxpool_backward_2x2`."""
    B, C, H, W = (int(n) for n in X_shape)
    p = padding
    dXp = np.zeros((B, C, H + 2 * p, W + 2 * p), dtype=dY.dtype)  # (B, C, Hp, Wp)
    if dY.size and k == 2 and stride == 2:
        by_work(_maxpool_backward_2x2, dXp.size + dY.size)(dY, np.ascontiguousarray(arg), dXp)
    elif dY.size:
        by_work(_maxpool_backward, dXp.size + dY.size)(dY, np.ascontiguousarray(arg), dXp, k, stride)
    return dXp[:, :, p:p + H, p:p + W] if p else dXp
