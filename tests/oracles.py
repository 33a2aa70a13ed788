"""Oracles for the sparse formats and operations, built by a different route than purerigl's own code.

Nothing here calls ``W.to_scipy()``, ``W.positions()``, ``W.row_fan_in()``, ``purerigl.formats.triples`` or any
backend: every stored entry is read straight from the raw arrays (``rows``/``indices``/``values``,
``offsets``/``values``, ``indptr``/``indices``/``values``) with explicit Python loops that follow the
format definitions of DESIGN.md section 2. Two independent products are offered on top:

(a) masked dense, float64: ``dense_of(W)`` and plain NumPy dense products;
(b) SciPy CSR, float64, assembled from our own COO triples (``scipy_of(W)``).

Each product comes with a *scale*: the same sum with every term replaced by its absolute value. A float32
kernel summing n terms is within about ``n * 2**-24 * scale`` of the exact result, so tests accept
``|got - want| <= ATOL_PER_SCALE * (1 + scale)`` per output.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse

from purerigl.formats import CSR, Condensed, Diagonal

#: Per-output tolerance factor for float32 kernels: |got - want| <= ATOL_PER_SCALE * (1 + scale).
ATOL_PER_SCALE = 1e-5


# --------------------------------------------------------------------------------------------------
# Stored entries, read from the raw arrays
# --------------------------------------------------------------------------------------------------


def entries(W):
    """Yield ``(row, col, value)`` for every stored entry, in the order of ``W.values.ravel()``.

    - Condensed: value ``values[r, t]`` sits at ``(rows[r], indices[r, t])``.
    - Diagonal: with ``P = max(n_out, n_in)``, ``L = min(n_out, n_in)``, element t of diagonal ``d``
      sits at ``((t + d) % n_out, t)`` if ``n_out >= n_in``, else at ``(t, (t + d) % n_in)``.
    - CSR: entry e with ``indptr[i] <= e < indptr[i + 1]`` sits at ``(i, indices[e])``.
    """
    n_out, n_in = (int(s) for s in W.shape)
    if isinstance(W, Condensed):
        n_active, k = W.values.shape
        for r in range(n_active):
            for t in range(k):
                yield int(W.rows[r]), int(W.indices[r, t]), float(W.values[r, t])
    elif isinstance(W, Diagonal):
        L = min(n_out, n_in)
        for kk in range(len(W.offsets)):
            d = int(W.offsets[kk])
            for t in range(L):
                if n_out >= n_in:
                    yield (t + d) % n_out, t, float(W.values[kk, t])
                else:
                    yield t, (t + d) % n_in, float(W.values[kk, t])
    elif isinstance(W, CSR):
        for i in range(n_out):
            for e in range(int(W.indptr[i]), int(W.indptr[i + 1])):
                yield i, int(W.indices[e]), float(W.values[e])
    else:
        raise TypeError(f"no oracle for {type(W).__name__}")


def _fingerprint(W) -> str:
    """A digest of W's type, shape and raw arrays: equal digests mean equal matrices."""
    h = hashlib.sha1(f"{type(W).__name__}{tuple(W.shape)}".encode())
    for name, a in sorted(vars(W).items()):
        if isinstance(a, np.ndarray):
            h.update(f"{name}{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


_COO_CACHE: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def coo_of(W) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (rows int64, cols int64, values float64) of every stored entry, in ``W.values`` order.

    Built by the loops of :func:`entries`; memoised on a digest of the raw arrays, so a matrix changed
    in place is read again.
    """
    key = _fingerprint(W)
    if key not in _COO_CACHE:
        triples = list(entries(W))
        rows = np.array([e[0] for e in triples], dtype=np.int64)
        cols = np.array([e[1] for e in triples], dtype=np.int64)
        vals = np.array([e[2] for e in triples], dtype=np.float64)
        if len(_COO_CACHE) > 64:
            _COO_CACHE.clear()
        _COO_CACHE[key] = (rows, cols, vals)
    rows, cols, vals = _COO_CACHE[key]
    return rows.copy(), cols.copy(), vals.copy()


def positions_of(W) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), int64 arrays shaped like ``W.values``: where every stored value sits."""
    rows, cols, _ = coo_of(W)
    return rows.reshape(W.values.shape), cols.reshape(W.values.shape)


def write_counts(W) -> np.ndarray:
    """int64 (n_out, n_in): how many stored entries land on each position (1 = active, 0 = inactive)."""
    rows, cols, _ = coo_of(W)
    counts = np.zeros(W.shape, dtype=np.int64)
    np.add.at(counts, (rows, cols), 1)
    return counts


def mask_of(W) -> np.ndarray:
    """bool (n_out, n_in): the active positions (an active 0.0 value is active)."""
    counts = write_counts(W)
    assert counts.max(initial=0) <= 1, "a position is stored more than once"
    return counts > 0


def dense_of(W) -> np.ndarray:
    """float64 (n_out, n_in): the matrix W, zero at inactive positions.

    Refuses (AssertionError) a matrix that stores one position twice, rather than silently keeping one.
    """
    rows, cols, vals = coo_of(W)
    assert write_counts(W).max(initial=0) <= 1, "a position is stored more than once"
    D = np.zeros(W.shape, dtype=np.float64)
    D[rows, cols] = vals
    return D


def scipy_of(W) -> scipy.sparse.csr_array:
    """float64 SciPy CSR assembled from our own COO triples (explicit zeros kept)."""
    rows, cols, vals = coo_of(W)
    return scipy.sparse.coo_array((vals, (rows, cols)), shape=tuple(W.shape)).tocsr()


# --------------------------------------------------------------------------------------------------
# Products: (value, scale) pairs, float64
# --------------------------------------------------------------------------------------------------


def _f64(A) -> np.ndarray:
    return np.asarray(A, dtype=np.float64)


def matmul_oracle(W, X) -> tuple[np.ndarray, np.ndarray]:
    """Masked dense ``Y = X W^T`` and its scale ``|X| |W|^T``, both float64 (B, n_out)."""
    D, X = dense_of(W), _f64(X)
    return X @ D.T, np.abs(X) @ np.abs(D).T


def matmul_scipy(W, X) -> np.ndarray:
    """SciPy CSR ``Y = (W X^T)^T``, float64 (B, n_out)."""
    return np.asarray((scipy_of(W) @ _f64(X).T).T)


def matmul_t_oracle(W, dY) -> tuple[np.ndarray, np.ndarray]:
    """Masked dense ``dX = dY W`` and its scale ``|dY| |W|``, both float64 (B, n_in)."""
    D, dY = dense_of(W), _f64(dY)
    return dY @ D, np.abs(dY) @ np.abs(D)


def matmul_t_scipy(W, dY) -> np.ndarray:
    """SciPy CSR ``dX = (W^T dY^T)^T``, float64 (B, n_in)."""
    return np.asarray((scipy_of(W).T @ _f64(dY).T).T)


def sddmm_oracle(W, X, dY) -> tuple[np.ndarray, np.ndarray]:
    """``G = dY^T X`` (dense, float64) gathered at W's stored positions, shaped like ``W.values``.

    Returns the gradient and its scale ``|dY|^T |X|`` gathered the same way.
    """
    X, dY = _f64(X), _f64(dY)
    rows, cols = positions_of(W)
    G, S = dY.T @ X, np.abs(dY).T @ np.abs(X)  # (n_out, n_in)
    return G[rows, cols], S[rows, cols]


def grad_at_oracle(X, dY, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """``g[m] = sum_b dY[b, rows[m]] X[b, cols[m]]`` by an explicit loop over m, and its scale."""
    X, dY = _f64(X), _f64(dY)
    g = np.zeros(len(rows), dtype=np.float64)
    s = np.zeros(len(rows), dtype=np.float64)
    for m, (r, c) in enumerate(zip(rows, cols)):
        g[m] = np.dot(dY[:, int(r)], X[:, int(c)])
        s[m] = np.dot(np.abs(dY[:, int(r)]), np.abs(X[:, int(c)]))
    return g, s


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


def assert_close(got, want, scale, what: str = "result", exact: bool = False, n_terms: int = 0) -> None:
    """Assert a float32 kernel result matches a float64 oracle within float32 accumulation error.

    Per output, ``|got - want| <= max(ATOL_PER_SCALE, 2 n_terms 2**-24) * (1 + scale)``: the second
    term is the worst-case bound of a float32 sum of ``n_terms`` products in any order, and only
    matters for long sums. ``exact`` demands bit equality with the oracle (used when every operand is a
    small dyadic number, so that every partial sum is exact in float32 whatever the summation order).
    """
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, expected float32"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    err = np.abs(got.astype(np.float64) - want)
    factor = max(ATOL_PER_SCALE, 2.0 * n_terms * 2.0**-24)
    tol = 0.0 if exact else factor * (1.0 + np.asarray(scale, dtype=np.float64))
    bad = err > tol
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} outputs off; first at {idx}: "
            f"got {got[idx]!r}, expected {want[idx]!r} (tolerance {np.broadcast_to(tol, err.shape)[idx]:.3g})"
        )


# --------------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------------


def patches_by_loops(X, kh: int, kw: int, s: int, p: int) -> np.ndarray:
    """float64 (B * Ho * Wo, c_in * kh * kw): the patch matrix of X (B, c_in, H, W) zero-padded by p,
    stride s, by explicit loops; rows ordered (b, ho, wo), columns (c, i, j)."""
    B, C, H, W = X.shape
    Xp = np.pad(np.asarray(X, np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    Ho, Wo = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    P = np.zeros((B * Ho * Wo, C * kh * kw))
    for b in range(B):
        for ho in range(Ho):
            for wo in range(Wo):
                for c in range(C):
                    for i in range(kh):
                        for j in range(kw):
                            P[(b * Ho + ho) * Wo + wo, (c * kh + i) * kw + j] = Xp[b, c, s * ho + i, s * wo + j]
    return P
