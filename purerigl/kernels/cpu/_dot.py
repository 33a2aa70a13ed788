"""The dot products the cpu kernels inline, written once: fixed summation orders, float32.

:func:`gather_dot` (a sparse row against a dense vector, four interleaved partial sums) serves the
CSR and Condensed products at batch < 4; :func:`tree_dot` (two contiguous vectors, pairwise halving)
serves ``grad_at``. The batched products' inner loops are :mod:`._gather`'s. Both are ``inline="always"``: each kernel compiles them in,
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
def pow2(n):
    """The smallest power of two >= n (1 for n <= 1): the scratch length :func:`tree_dot` needs."""
    m = 1
    while m < n:
        m *= 2
    return m


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
def tree_dot(a, b, tmp):
    """sum_i a[i] b[i] in float32 for contiguous a, b of length n <= len(tmp), a power of two.

    Up to 8 terms: a running sum. Longer: the products go into the scratch ``tmp`` (zero-padded),
    which is then summed by pairwise halving. Either way the order is fixed by n alone; the halving is
    more accurate than a running sum and every step of it is a loop LLVM vectorises (a running sum is
    a serial chain that it may not reorder without fastmath).
    """
    n = a.shape[0]
    m = tmp.shape[0]
    if m <= 8:
        s = np.float32(0.0)
        for i in range(n):
            s += a[i] * b[i]
        return s
    for i in range(n):
        tmp[i] = a[i] * b[i]
    for i in range(n, m):
        tmp[i] = 0.0
    h = m
    while h > 1:
        h //= 2
        lo = tmp[:h]
        hi = tmp[h : 2 * h]
        for i in range(h):
            lo[i] += hi[i]
    return tmp[0]
