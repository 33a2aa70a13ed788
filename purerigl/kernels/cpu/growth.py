"""Numba kernels of the growth selections: top-m of |G|, per-row top-c of |G|, diagonal norms of G.

G = dY^T X (n_out, n_in) is never stored. The drivers walk it in tiles of whole rows,
``G[r0:r1, :] = dY^T[r0:r1, :] @ X`` (at most :data:`TILE_ELEMS` float32 entries, computed by BLAS
sgemm into one reused buffer: float32 accumulation), and after each tile a parallel Numba kernel folds
the tile into a small running result:

- ``topk_grad``: every position gets an int64 **rank key** ``bits(|g|) << 32 | (2^32 - 1 - flat)``.
  For non-negative float32 the bit pattern orders like the value, so a larger key is exactly "larger
  score, or equal score and lower flat index": the shared tie rule, with no two keys equal. A buffer
  of capacity m + tile collects the keys of tile positions scoring above a threshold; when it would
  overflow it is cut back to its m largest keys by an in-place introselect, and the threshold becomes
  the m-th score (a later tile's position, having a higher flat index, must score strictly more).
  Extra memory O(m + tile).
- ``topk_grad_rows``: the output layout is known in advance (c_i = min(counts[i], available_i)), so
  rows run in parallel, each selecting its top c_i keys ``bits << 32 | (2^32 - 1 - col)`` and writing
  them, sorted, to its own slice. Rows that take nothing or everything need no gradient; a tile holding
  only such rows is not computed at all.
- ``diag_grad_norms``: position (i, j) lies on diagonal (i - j) mod n_out (tall, square) or
  (j - i) mod n_in (wide). The tile's rows are split into :data:`DIAG_TASKS` fixed parts, each adding
  its squares (in float64) into a private (P,) accumulator; the parts are summed at the end in a fixed
  order.

Determinism. Partitions depend only on the shapes (never on the thread count), every parallel task
writes its own outputs, and the keys make every selection a strict total order: the same inputs give
the same result on every run. Scores are float32 sums from sgemm; the reference rounds float64 sums to
float32, so the two backends pick identical sets except, rarely, where two positions' scores agree to
float32 rounding.

Numba's on-disk cache only watches the file a function is defined in, so the helpers the kernels
inline are defined here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._layout import transpose

#: Entries of G per tile (1 MiB of float32).
TILE_ELEMS = 1 << 18

#: Fixed number of row parts (private accumulators) per tile in diag_grad_norms.
DIAG_TASKS = 8

#: Low 32 bits of a rank key: 2^32 - 1 - index, so a lower index gives a larger key.
INDEX_MASK = np.int64(0xFFFFFFFF)

#: Score marking an excluded position in a tile: below every real score |g| >= 0.
EXCLUDED = np.float32(-1.0)


# --------------------------------------------------------------------------------------------------
# Helpers inlined into the kernels
# --------------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _score_row(row, ex_cols):
    """row[:] = |row[:]| in place, then EXCLUDED at the columns ``ex_cols``."""
    for j in range(row.shape[0]):
        row[j] = abs(row[j])
    for e in range(ex_cols.shape[0]):
        row[ex_cols[e]] = -1.0


@njit(cache=True, inline="always")
def _key(score_bits, index):
    """The rank key of a score (its float32 bits, >= 0) at ``index`` < 2^32: larger key = ranks higher."""
    return (np.int64(score_bits) << 32) | (INDEX_MASK - np.int64(index))


@njit(cache=True)
def _nth_element(a, lo, hi, kth):
    """Rearrange the distinct values a[lo:hi] so that a[kth] holds what sorting would put there, with
    only smaller values before it and larger after (introselect: median-of-three Hoare partitions,
    falling back to a sort of the remaining range after too many rounds)."""
    rounds = 0
    limit = 8
    size = hi - lo
    while size > 1:
        limit += 2
        size //= 2
    while hi - lo > 16:
        if rounds > limit:
            break
        rounds += 1
        x, y, z = a[lo], a[(lo + hi - 1) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))  # median of three: not the range's maximum
        i = lo - 1
        j = hi
        while True:
            i += 1
            while a[i] < pivot:
                i += 1
            j -= 1
            while a[j] > pivot:
                j -= 1
            if i >= j:
                break
            a[i], a[j] = a[j], a[i]
        if kth <= j:  # a[lo:j+1] <= pivot <= a[j+1:hi], both parts non-empty
            hi = j + 1
        else:
            lo = j + 1
    a[lo:hi].sort()


@njit(cache=True)
def _keep_largest(keys, n, k):
    """Move the k largest of the distinct keys[:n] (0 < k <= n) to keys[:k], in no particular order;
    return the smallest of them."""
    if k < n:
        _nth_element(keys, 0, n, n - k)
        for t in range(k):  # forward copy: the source index n - k + t is never below t
            keys[t] = keys[n - k + t]
    smallest = keys[0]
    for t in range(1, k):
        smallest = min(smallest, keys[t])
    return smallest


# --------------------------------------------------------------------------------------------------
# Kernels, one call per tile
# --------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _score_and_count(tile, r0, ex_indptr, ex_indices, threshold, counts):
    """Tile rows r = 0.. (global row r0 + r): scores in place (|g|, EXCLUDED where excluded), then
    counts[r] = #{j : tile[r, j] > threshold}."""
    for r in prange(tile.shape[0]):
        row = tile[r]
        _score_row(row, ex_indices[ex_indptr[r0 + r] : ex_indptr[r0 + r + 1]])
        c = 0
        for j in range(row.shape[0]):
            c += row[j] > threshold
        counts[r] = c


@njit(parallel=True, cache=True)
def _count_above(tile, threshold, counts):
    """counts[r] = #{j : tile[r, j] > threshold} (after the threshold was raised)."""
    for r in prange(tile.shape[0]):
        row = tile[r]
        c = 0
        for j in range(row.shape[0]):
            c += row[j] > threshold
        counts[r] = c


@njit(parallel=True, cache=True)
def _append_keys(tile, tile_bits, flat0, threshold, starts, keys):
    """For every tile entry above ``threshold``, row by row, the key of its flat index
    ``flat0 + r * n_in + j``; row r writes keys[starts[r]:starts[r + 1]]."""
    n_in = tile.shape[1]
    for r in prange(tile.shape[0]):
        row = tile[r]
        bits = tile_bits[r]
        pos = starts[r]
        base = flat0 + r * n_in
        for j in range(n_in):
            if row[j] > threshold:
                keys[pos] = _key(bits[j], base + j)
                pos += 1


@njit(parallel=True, cache=True)
def _select_rows(tile, tile_bits, r0, ex_indptr, ex_indices, take, ranked, out_indptr, out_cols):
    """Each ranked row i = r0 + r of the tile: the take[i] best columns, ascending, into its slice."""
    n_in = tile.shape[1]
    for r in prange(tile.shape[0]):
        i = r0 + r
        if not ranked[i]:
            continue
        row = tile[r]
        _score_row(row, ex_indices[ex_indptr[i] : ex_indptr[i + 1]])
        keys = np.empty(n_in - (ex_indptr[i + 1] - ex_indptr[i]), dtype=np.int64)  # available columns
        n = 0
        for j in range(n_in):
            if row[j] >= 0.0:
                keys[n] = _key(tile_bits[r, j], j)
                n += 1
        c = take[i]
        _nth_element(keys, 0, n, n - c)
        out = out_cols[out_indptr[i] : out_indptr[i + 1]]
        for t in range(c):
            out[t] = INDEX_MASK - (keys[n - c + t] & INDEX_MASK)
        out.sort()


@njit(parallel=True, cache=True)
def _complete_rows(n_in, ex_indptr, ex_indices, take, ranked, out_indptr, out_cols):
    """Every row that takes all its available columns (and is not ranked): the complement of its
    excluded columns, ascending."""
    for i in prange(take.shape[0]):
        if ranked[i] or take[i] == 0:
            continue
        pos = out_indptr[i]
        e = ex_indptr[i]
        end = ex_indptr[i + 1]
        for j in range(n_in):
            if e < end and ex_indices[e] == j:
                e += 1
            else:
                out_cols[pos] = j
                pos += 1


@njit(parallel=True, cache=True)
def _add_diagonal_squares(tile, r0, n_out, partial):
    """partial[t, d] += G[i, j]^2 over the tile rows of part t, for d the diagonal of (i, j):
    (i - j) mod n_out if n_out >= n_in, else (j - i) mod n_in. Parts are fixed slices of the rows."""
    rows, n_in = tile.shape
    n_tasks = partial.shape[0]
    per = (rows + n_tasks - 1) // n_tasks
    for t in prange(n_tasks):
        acc = partial[t]
        for r in range(t * per, min(rows, (t + 1) * per)):
            i = r0 + r
            g = tile[r]
            if n_out >= n_in:
                for j in range(min(i + 1, n_in)):  # d = i - j
                    acc[i - j] += np.float64(g[j]) * np.float64(g[j])
                for j in range(i + 1, n_in):  # d = i - j + n_out
                    acc[i - j + n_out] += np.float64(g[j]) * np.float64(g[j])
            else:
                for j in range(i, n_in):  # d = j - i
                    acc[j - i] += np.float64(g[j]) * np.float64(g[j])
                for j in range(i):  # d = j - i + n_in
                    acc[j - i + n_in] += np.float64(g[j]) * np.float64(g[j])


# --------------------------------------------------------------------------------------------------
# Drivers (operands already checked by purerigl.kernels._checks)
# --------------------------------------------------------------------------------------------------


def _tile_rows(n_in: int) -> int:
    return max(1, TILE_ELEMS // max(n_in, 1))


def _gradient_tiles(X: np.ndarray, dY: np.ndarray, wanted: np.ndarray | None = None):
    """Yield ``(r0, r1, tile)`` with tile = G[r0:r1, :] (float32, one reused buffer, overwritten by the
    next step). With ``wanted`` (bool, (n_out,)), tiles holding no wanted row are skipped."""
    n_out, n_in = dY.shape[1], X.shape[1]
    step = _tile_rows(n_in)
    dYT = transpose(dY)  # (n_out, B)
    buffer = np.empty((min(step, n_out), n_in), dtype=np.float32)
    for r0 in range(0, n_out, step):
        r1 = min(n_out, r0 + step)
        if wanted is not None and not wanted[r0:r1].any():
            continue
        tile = buffer[: r1 - r0]
        np.matmul(dYT[r0:r1], X, out=tile)  # (r1 - r0, B) @ (B, n_in), sgemm
        yield r0, r1, tile


def _score_of(key: int) -> np.float32:
    """The float32 score held in the high 32 bits of a rank key."""
    return np.array([key >> 32], dtype=np.uint32).view(np.float32)[0]


def topk_grad(X, dY, m, ex_indptr, ex_indices):
    """(rows, cols) int64 of the top min(m, available) positions of |G|, by flat index ascending."""
    n_out, n_in = dY.shape[1], X.shape[1]
    k = min(m, n_out * n_in - ex_indices.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    step = _tile_rows(n_in)
    keys = np.empty(k + min(step, n_out) * n_in, dtype=np.int64)  # capacity: k kept + one whole tile
    counts = np.empty(min(step, n_out), dtype=np.int64)
    n = 0
    threshold = EXCLUDED  # nothing kept yet: every available position qualifies
    for r0, r1, tile in _gradient_tiles(X, dY):
        rows = r1 - r0
        _score_and_count(tile, r0, ex_indptr, ex_indices, threshold, counts[:rows])
        if n + counts[:rows].sum() > keys.shape[0]:
            threshold = _score_of(int(_keep_largest(keys, n, k)))
            n = k
            _count_above(tile, threshold, counts[:rows])
        starts = n + np.concatenate(([0], np.cumsum(counts[:rows])))  # (rows + 1,)
        _append_keys(tile, tile.view(np.uint32), r0 * n_in, threshold, starts, keys)
        n = int(starts[-1])
    if n > k:
        _keep_largest(keys, n, k)
    flat = np.sort(INDEX_MASK - (keys[:k] & INDEX_MASK))
    return flat // n_in, flat % n_in


def topk_grad_rows(X, dY, counts, ex_indptr, ex_indices):
    """(indptr, cols): per row the top min(counts[i], available_i) columns of |G[i, :]|, ascending."""
    n_out, n_in = dY.shape[1], X.shape[1]
    available = n_in - np.diff(ex_indptr)  # (n_out,)
    take = np.minimum(counts, available)
    ranked = (take > 0) & (take < available)  # rows that need their gradient
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(take, out=indptr[1:])
    cols = np.empty(indptr[-1], dtype=np.int64)
    _complete_rows(n_in, ex_indptr, ex_indices, take, ranked, indptr, cols)
    for r0, _, tile in _gradient_tiles(X, dY, wanted=ranked):
        _select_rows(tile, tile.view(np.uint32), r0, ex_indptr, ex_indices, take, ranked, indptr, cols)
    return indptr, cols


def diag_grad_norms(X, dY):
    """float32 (P,): the L2 norm of G along each wrap-around diagonal."""
    n_out, n_in = dY.shape[1], X.shape[1]
    partial = np.zeros((DIAG_TASKS, max(n_out, n_in)), dtype=np.float64)
    for r0, _, tile in _gradient_tiles(X, dY):
        _add_diagonal_squares(tile, r0, n_out, partial)
    sum_sq = partial[0].copy()
    for t in range(1, DIAG_TASKS):  # fixed order
        sum_sq += partial[t]
    return np.sqrt(sum_sq).astype(np.float32)
