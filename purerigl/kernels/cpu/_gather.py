"""The inner loops of the batched (feature-major) products, written once: eight stored entries per pass.

In the feature-major layout every product of a sparse matrix with a batch is a sum of whole rows of
a dense operand S^T (features, B), each scaled by one stored value (``matmul``, ``matmul_t``), or a
dot product of two such rows (``sddmm``). Done one entry at a time, the accumulator row is loaded
and stored once per entry, so the loop is bound by memory operations, not multiply-adds: 3 memory
operations per vector of multiply-adds. These loops take **eight entries per pass**:

.. math::

    acc[b] \\mathrel{+}= ((v_0 x_0[b] + v_1 x_1[b]) + (v_2 x_2[b] + v_3 x_3[b]))
                       + ((v_4 x_4[b] + v_5 x_5[b]) + (v_6 x_6[b] + v_7 x_7[b]))

so the accumulator is loaded and stored once per eight rows read (10 memory operations per 8 vectors
of multiply-adds). Of the entries left over, four are added in one pass of four, the rest one by one. Measured on the 2-core machine (768 x 3072 at 90%, batch 64 and 256, one thread):
3.3x NumPy's dense product, against 2.4-2.7x one entry at a time (issue 19).

Summation order. The eight products of a pass are added as the bracketed tree above, then to the
accumulator; passes run in storage order, and the entries left over (fewer than eight) after them: four
as ``(v0 x0 + v1 x1) + (v2 x2 + v3 x3)`` when at least four are left, then one at a time. The order depends on the structure alone, so results are the same on every
run and for every thread count. The dot products (:func:`gather_dots`) are reductions over the
batch; their kernels are compiled with ``fastmath={"reassoc"}`` so that LLVM vectorises them, which
fixes one order for a given machine's compiled code (the same on every run and thread count; it may
differ from another CPU's by float32 rounding, like any change of summation order).

Every function is ``inline="always"``: each kernel compiles them in, and the cache stamp of
:mod:`._cache` covers this file.
"""

from __future__ import annotations

from numba import njit

from ._cache import CACHE

#: Entries per pass of the loops below.
UNROLL = 8


@njit(cache=CACHE, inline="always")
def axpy8(acc, v0, x0, v1, x1, v2, x2, v3, x3, v4, x4, v5, x5, v6, x6, v7, x7):
    """acc[b] += sum_{i < 8} v_i x_i[b], the eight products added as a fixed tree (module docstring)."""
    for b in range(acc.shape[0]):
        acc[b] += ((v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])) + (
            (v4 * x4[b] + v5 * x5[b]) + (v6 * x6[b] + v7 * x7[b])
        )


@njit(cache=CACHE, inline="always")
def axpy4(acc, v0, x0, v1, x1, v2, x2, v3, x3):
    """acc[b] += sum_{i < 4} v_i x_i[b] as (v0 x0 + v1 x1) + (v2 x2 + v3 x3): a remainder of four."""
    for b in range(acc.shape[0]):
        acc[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])


@njit(cache=CACHE, inline="always")
def axpy(acc, v, x):
    """acc[b] += v x[b]: one entry (the remainder of a pass of eight)."""
    for b in range(acc.shape[0]):
        acc[b] += v * x[b]


@njit(cache=CACHE, inline="always")
def gather_axpy(acc, vals, idx, ST, b0, b1):
    """acc[b] += sum_t vals[t] ST[idx[t], b0 + b] for b < b1 - b0: one sparse row (vals, idx of equal
    length) times the batch block b0:b1 of ST (features, B)."""
    n = vals.shape[0]
    n8 = n - n % UNROLL
    for t in range(0, n8, UNROLL):
        axpy8(
            acc,
            vals[t], ST[idx[t], b0:b1], vals[t + 1], ST[idx[t + 1], b0:b1],
            vals[t + 2], ST[idx[t + 2], b0:b1], vals[t + 3], ST[idx[t + 3], b0:b1],
            vals[t + 4], ST[idx[t + 4], b0:b1], vals[t + 5], ST[idx[t + 5], b0:b1],
            vals[t + 6], ST[idx[t + 6], b0:b1], vals[t + 7], ST[idx[t + 7], b0:b1],
        )
    t = n8
    if n - t >= 4:  # a remainder of four or more: one pass of four (short rows: a ViT's 64 inputs at 90%)
        axpy4(acc, vals[t], ST[idx[t], b0:b1], vals[t + 1], ST[idx[t + 1], b0:b1],
              vals[t + 2], ST[idx[t + 2], b0:b1], vals[t + 3], ST[idx[t + 3], b0:b1])
        t += 4
    for t in range(t, n):
        axpy(acc, vals[t], ST[idx[t], b0:b1])


@njit(cache=CACHE, inline="always")
def dots8(g, x0, x1, x2, x3, x4, x5, x6, x7):
    """The eight dot products (g . x_i) of equal-length vectors, in one pass over g (8 accumulators).

    A reduction: the calling kernel is compiled with ``fastmath={"reassoc"}`` so that it vectorises.
    """
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = g.dtype.type(0.0)
    for b in range(g.shape[0]):
        gb = g[b]
        s0 += gb * x0[b]
        s1 += gb * x1[b]
        s2 += gb * x2[b]
        s3 += gb * x3[b]
        s4 += gb * x4[b]
        s5 += gb * x5[b]
        s6 += gb * x6[b]
        s7 += gb * x7[b]
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(cache=CACHE, inline="always")
def dot(g, x):
    """g . x for equal-length vectors (the remainder of a pass of eight)."""
    s = g.dtype.type(0.0)
    for b in range(g.shape[0]):
        s += g[b] * x[b]
    return s


@njit(cache=CACHE, inline="always")
def gather_dots(out, g, idx, ST, c0, c1):
    """out[t] += g . ST[idx[t], c0:c1] for every t < len(idx): one sparse row's gradient values over
    the batch chunk c0:c1 (g is that chunk of the row's output gradient)."""
    n = idx.shape[0]
    n8 = n - n % UNROLL
    for t in range(0, n8, UNROLL):
        s = dots8(
            g, ST[idx[t], c0:c1], ST[idx[t + 1], c0:c1], ST[idx[t + 2], c0:c1], ST[idx[t + 3], c0:c1],
            ST[idx[t + 4], c0:c1], ST[idx[t + 5], c0:c1], ST[idx[t + 6], c0:c1], ST[idx[t + 7], c0:c1],
        )
        out[t] += s[0]
        out[t + 1] += s[1]
        out[t + 2] += s[2]
        out[t + 3] += s[3]
        out[t + 4] += s[4]
        out[t + 5] += s[5]
        out[t + 6] += s[6]
        out[t + 7] += s[7]
    for t in range(n8, n):
        out[t] += dot(g, ST[idx[t], c0:c1])
