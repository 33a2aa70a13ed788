"""Per-element logic shared by the cuda kernels: ``@cuda.jit(device=True)`` functions.

Each kernel of the backend runs one thread per independent output and calls one of these for the sum
that output needs, so every sum is written once:

.. math::

    \\mathrm{row\\_dot}(v, c, e_0, e_1, A, b) &= \\sum_{e=e_0}^{e_1 - 1} v[e] \\, A[b, c[e]] \\\\
    \\mathrm{batch\\_dot}(A, i, S, j) &= \\sum_b A[b, i] \\, S[b, j]

Sums run in float32, in ascending order of the summation index, so a result does not depend on the
launch configuration. :func:`lower_bound`, :func:`find_sorted` and :func:`segment_of` are the
binary searches the structure maps need.
"""

from __future__ import annotations

import numpy as np

from ._launch import cuda


@cuda.jit(device=True)
def row_dot(values, indices, e0, e1, A, b):
    """sum_{e0 <= e < e1} values[e] * A[b, indices[e]] in float32 (one stored row times one input row)."""
    s = np.float32(0.0)
    for e in range(e0, e1):
        s += values[e] * A[b, indices[e]]
    return s


@cuda.jit(device=True)
def batch_dot(A, i, S, j):
    """sum_b A[b, i] * S[b, j] in float32, ascending b (one entry of the dense gradient A^T S)."""
    s = np.float32(0.0)
    for b in range(A.shape[0]):
        s += A[b, i] * S[b, j]
    return s


@cuda.jit(device=True)
def lower_bound(a, lo, hi, v):
    """The first position in ``[lo, hi)`` of the ascending ``a`` holding a value >= v (``hi`` if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit(device=True)
def find_sorted(a, lo, hi, v):
    """The position of ``v`` in the strictly increasing ``a[lo:hi]``, or -1 when it is not there."""
    p = lower_bound(a, lo, hi, v)
    if p < hi and a[p] == v:
        return p
    return -1


@cuda.jit(device=True)
def segment_of(ptr, e):
    """The segment s with ``ptr[s] <= e < ptr[s + 1]`` of the non-decreasing ``ptr`` (CSR row of entry e).

    The last s with ``ptr[s] <= e``; empty segments (equal pointers) are skipped that way.
    """
    lo = 0
    hi = ptr.shape[0]
    while lo < hi:  # first s with ptr[s] > e
        mid = (lo + hi) // 2
        if ptr[mid] <= e:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1
