"""The dot products the cpu kernels inline, written once: fixed summation orders, float32.

:func:`gather_dot` (a sparse row against a dense vector, four interleaved partial sums) serves the
CSR and Condensed products at batch < 4; :func:`lane_dot` (two contiguous vectors, eight interleaved
partial sums) serves ``grad_at``. The batched products' inner loops are :mod:`._gather`'s. Both are ``inline="always"``: each kernel compiles them in,
and the cache stamp of :mod:`._cache` covers this file, so an edit here reaches every kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._cache import CACHE

#: Batch items per chunk of the batch-long dot products of sddmm (:mod:`._gather`): a chunk of the
#: output gradient row stays in L1 across a row's entries; the chunks are added in ascending order.
DOT_CHUNK = 1024


@njit(cache=CACHE, inline="always")
def gather_dot(v, idx, x):
    """sum_t v[t] * x[idx[t]] in float32, with four interleaved partial sums (fixed order)."""
    n = v.shape[0]
    n4 = n - n % 4
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    for t in range(0, n4, 4):
        a0 += v[t] * x[idx[t]]
        a1 += v[t + 1] * x[idx[t + 1]]
        a2 += v[t + 2] * x[idx[t + 2]]
        a3 += v[t + 3] * x[idx[t + 3]]
    for t in range(n4, n):
        a0 += v[t] * x[idx[t]]
    return (a0 + a1) + (a2 + a3)


@njit(cache=CACHE, inline="always")
def lane_dot(a, b):
    """sum_i a[i] b[i] in float32 for contiguous a, b of one length n: eight interleaved partial sums.

    .. math:: s_l = \\sum_{i \\equiv l \\ (8),\\ i < n_8} a_i b_i, \\qquad
              \\mathrm{dot} = ((s_0 + s_1) + (s_2 + s_3)) + ((s_4 + s_5) + (s_6 + s_7))

    with the n - n_8 trailing terms (n_8 = n rounded down to a multiple of 8) added to s_0 in order.
    The order is fixed by n alone; the eight independent sums fill one vector of multiply-adds (a
    pairwise halving through a scratch buffer, the former version, was 3x slower for grad_at at
    batch 64).
    """
    n = a.shape[0]
    n8 = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for i in range(0, n8, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    for i in range(n8, n):
        s0 += a[i] * b[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
