"""Numba kernels of the growth selections: top-m of |G|, per-row top-c of |G|, diagonal norms of G.

G = dY^T X (n_out, n_in) is never stored. Each kernel is one parallel region whose tasks walk G in
**tiles of whole rows** (at most :data:`TILE_ELEMS` entries, one private float32 buffer per task) and
fold every tile into a small result before computing the next:

- ``topk_grad``: every position gets an int64 **rank key** ``bits(|g|) << 32 | (2^32 - 1 - r)``,
  r = ``tie_rank(flat, salt)`` (:mod:`purerigl.kernels._rank_key`). For non-negative float32 the bit
  pattern orders like the value, so a larger key is exactly "larger score, or equal score and smaller
  tie rank": the shared tie rule, with no two keys equal. Each worker takes every n_workers-th tile
  and keeps a buffer of at most m + max(m, 4096) keys of the positions whose key exceeds its
  threshold; when the buffer is full it is cut back to its m largest keys (in-place quickselect) and
  the m-th key becomes the threshold. The workers' survivors are merged by one more selection,
  decoded to flat indices (``index_of_key``) and radix-sorted. The top m of distinct keys does not depend on how the positions were
  split, so neither does the result. The threshold starts at a score that about 2m positions exceed,
  estimated from a sample of :data:`SAMPLE_SIZE` positions; it only filters, and if fewer than m
  positions pass it the scan is redone without it. Extra memory O(workers * (m + tile)).
- ``topk_grad_rows``: the output layout is known in advance (c_i = min(counts[i], available_i)), so
  tiles of the rows that need ranking run in parallel, each row keeping a running top c_i of the
  same keys (of the flat position, so every row orders its ties differently) and writing the chosen
  columns, ascending, to its own slice. A row's scan starts at the c_i-th largest of its group maxima
  (a score that at least c_i positions reach), so only a few groups of each row are ranked. Rows that
  take nothing or everything need no gradient at all.
- ``topk_grad_with_rows`` (SRigL's salient set and growth candidates): both selections above over
  every position, in one pass over G: each row of a tile feeds the worker's layer-wide buffer and then
  its own top c_i, whose scores are read from the tile.
- ``diag_grad_norms``: position (i, j) lies on diagonal (i - j) mod n_out (tall, square) or
  (j - i) mod n_in (wide). The tiles are split into at most :data:`DIAG_CHUNKS` fixed groups (by shape
  only), each adding its squares in float64 into a private (P,) accumulator; the groups are summed in
  a fixed order at the end.

The gradient tile (:func:`_gradient_tile`) is a register-blocked product: 2 rows x 4 columns of G at
a time, each entry a float32 dot product of a row of ``dY^T`` (n_out, B) with a row of ``X^T``
(n_in, B), both contiguous. The batch loop is compiled with ``fastmath={'reassoc', 'contract'}`` so
that LLVM vectorises the eight running sums (the summation order is then the compiler's, fixed for a
given build). The last row or column group of a tile is computed by the same code with a repeated
row or column, so every entry of G comes from the same instructions wherever it sits: G, and hence
every selection, does not depend on the tiling, on the thread count or on timing.

Scores are these float32 sums; the reference rounds float64 sums to float32. The two backends pick
identical sets except, rarely, where two positions' scores agree to float32 rounding.

Numba's on-disk cache watches only the file a kernel is defined in; the rank key is compiled in from
:mod:`purerigl.kernels._rank_key`, so the cpu kernels' cache is stamped with the source of every
kernel module (:mod:`purerigl.kernels.cpu._cache`): an edit to the rank key recompiles them.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._row_scan import (  # the selection inside a row of G (rank keys, running top k, group maxima)
    _group_maxima, _index_of_key, _keep_largest, _n_groups, _row_threshold, _scan_row, _score_bits,
)
from ._layout import transpose
from ._serial import by_work

#: Entries of G per tile (512 KiB of float32, one tile per task).
TILE_ELEMS = 1 << 17

#: Bytes of X^T's rows in one column block of a gradient tile: small enough to stay in L1 while every
#: row of the tile passes over it (16 KiB: 16 columns at batch 256).
COL_BLOCK_BYTES = 1 << 14

#: Most row groups (private accumulators) of diag_grad_norms; the grouping depends on shapes only.
DIAG_CHUNKS = 16

#: Keys a topk_grad worker may buffer beyond its m best before cutting back (at least).
MIN_SLACK = 4096

#: Positions topk_grad samples to choose a starting threshold (only for layers of >= 4x as many).
SAMPLE_SIZE = 1 << 14

#: Smallest sample rank topk_grad trusts for its starting threshold (smaller: no threshold).
MIN_SAMPLE_RANK = 64

#: Keys a topk_grad_rows row may buffer beyond 2 * its count before cutting back.
MIN_ROW_SLACK = 64


# --------------------------------------------------------------------------------------------------
# The gradient tile and the helpers of the selections
# --------------------------------------------------------------------------------------------------


@njit(cache=CACHE, fastmath={"reassoc", "contract"})
def _gradient_tile(dYT, XT, rows, G):
    """G[t, j] = sum_b dYT[rows[t], b] XT[j, b] for t < len(rows) and every j < n_in.

    dYT is (n_out, B), XT is (n_in, B), G is (>= len(rows), n_in). Blocks of 2 rows x 4 columns hold
    their 8 sums in registers over the batch; a column block of XT (COL_BLOCK_BYTES) is reused by all
    the rows. At the edges the block repeats its last row / column and writes only the real entries.
    """
    n_rows = rows.shape[0]
    n_in, B = XT.shape
    width = max(4, (COL_BLOCK_BYTES // (4 * max(B, 1))) // 4 * 4)
    for j0 in range(0, n_in, width):
        j1 = min(n_in, j0 + width)
        for t in range(0, n_rows, 2):
            u = min(t + 1, n_rows - 1)
            a0 = dYT[rows[t]]
            a1 = dYT[rows[u]]
            g0 = G[t]
            g1 = G[u]
            for j in range(j0, j1, 4):
                c0 = XT[j]
                c1 = XT[min(j + 1, n_in - 1)]
                c2 = XT[min(j + 2, n_in - 1)]
                c3 = XT[min(j + 3, n_in - 1)]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
                for b in range(B):
                    s00 += a0[b] * c0[b]
                    s01 += a0[b] * c1[b]
                    s02 += a0[b] * c2[b]
                    s03 += a0[b] * c3[b]
                    s10 += a1[b] * c0[b]
                    s11 += a1[b] * c1[b]
                    s12 += a1[b] * c2[b]
                    s13 += a1[b] * c3[b]
                g1[j] = s10
                g0[j] = s00
                if j + 1 < j1:
                    g1[j + 1] = s11
                    g0[j + 1] = s01
                if j + 2 < j1:
                    g1[j + 2] = s12
                    g0[j + 2] = s02
                if j + 3 < j1:
                    g1[j + 3] = s13
                    g0[j + 3] = s03


@njit(cache=CACHE, fastmath={"reassoc", "contract"})
def _sample_scores(dYT, XT, ex_indptr, ex_indices, scores):
    """|G| at up to len(scores) evenly spaced flat positions s * N // n_samples that are not excluded,
    into scores[:n]; returns n. Used only to pick a starting threshold (see :func:`topk_grad`)."""
    n_out = dYT.shape[0]
    n_in, B = XT.shape
    N = n_out * n_in
    n_samples = scores.shape[0]
    n = 0
    for s in range(n_samples):
        flat = (s * N) // n_samples
        i = flat // n_in
        j = flat - i * n_in
        ex_cols = ex_indices[ex_indptr[i] : ex_indptr[i + 1]]
        e = np.searchsorted(ex_cols, j)
        if e < ex_cols.shape[0] and ex_cols[e] == j:
            continue
        a = dYT[i]
        c = XT[j]
        acc = np.float32(0.0)
        for b in range(B):
            acc += a[b] * c[b]
        scores[n] = abs(acc)
        n += 1
    return n


@njit(cache=CACHE)
def _radix_sort(a):
    """Sort the non-negative int64 values a (< 2^33) ascending, in place: three passes of 11 bits."""
    n = a.shape[0]
    src = a
    dst = np.empty_like(a)
    for shift in (0, 11, 22):
        start = np.zeros(2049, dtype=np.int64)
        for i in range(n):
            start[((src[i] >> shift) & 2047) + 1] += 1
        for d in range(2048):
            start[d + 1] += start[d]
        for i in range(n):
            d = (src[i] >> shift) & 2047
            dst[start[d]] = src[i]
            start[d] += 1
        src, dst = dst, src
    a[:] = src  # after an odd number of passes the result sits in the scratch array


@njit(cache=CACHE)
def _finish_topk(best, n_best, k, n_in, salt):
    """Merge the workers' keys, keep the k largest, and return their (rows, cols) by flat index."""
    merged = np.empty(n_best.sum(), dtype=np.int64)
    n = 0
    for w in range(best.shape[0]):
        merged[n : n + n_best[w]] = best[w, : n_best[w]]
        n += n_best[w]
    _keep_largest(merged, n, k)
    flat = np.empty(k, dtype=np.int64)
    for t in range(k):
        flat[t] = _index_of_key(merged[t], salt)
    _radix_sort(flat)
    rows = flat // n_in
    return rows, flat - rows * n_in


# --------------------------------------------------------------------------------------------------
# Kernels: one parallel region each
# --------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=CACHE)
def _rows_select(dYT, XT, ranked, tile_rows, ex_indptr, ex_indices, salt, take, n_groups, out_indptr, out_cols):
    """Every row i in ``ranked``: its take[i] best columns, ascending, into out_cols's slice of row i.

    Each row starts its scan at the threshold of its group maxima (:func:`_row_threshold`), so only
    the few groups that can hold its top take[i] are ranked.
    """
    n_in = XT.shape[0]
    n_tiles = (ranked.shape[0] + tile_rows - 1) // tile_rows
    for tile in prange(n_tiles):
        rows = ranked[tile * tile_rows : (tile + 1) * tile_rows]
        G = np.empty((rows.shape[0], n_in), dtype=np.float32)
        G_bits = G.view(np.int32)
        scratch = np.empty(max(2 * n_in + MIN_ROW_SLACK, n_groups), dtype=np.int64)
        gm = np.empty(n_groups, dtype=np.int32)
        _gradient_tile(dYT, XT, rows, G)
        for t in range(rows.shape[0]):
            i = rows[t]
            c = take[i]
            _score_bits(G_bits[t], ex_indices[ex_indptr[i] : ex_indptr[i + 1]])
            _group_maxima(G_bits[t], gm)
            threshold = _row_threshold(gm, c, scratch)
            keys = scratch[: 2 * c + MIN_ROW_SLACK]
            n, _ = _scan_row(G_bits[t], gm, i * n_in, salt, keys, 0, c, threshold)
            _keep_largest(keys, n, c)
            chosen = out_cols[out_indptr[i] : out_indptr[i] + c]
            for q in range(c):
                chosen[q] = _index_of_key(keys[q], salt) - i * n_in
            chosen.sort()  # ascending columns


@njit(parallel=True, cache=CACHE)
def _workers(dYT, XT, ex_indptr, ex_indices, salt, k, tile_rows, capacity, threshold0, n_groups, take, out_indptr,
             out_cols, out_scores, best, n_best):
    """Worker w (of best.shape[0]) scans tiles w, w + n_workers, ... and leaves in best[w, :n_best[w]]
    its top k keys among the positions whose rank key exceeds ``threshold0`` (-1: all of them); in
    the same pass over each row i of G it writes the row's take[i] best columns (as
    :func:`_rows_select`, ascending) and their scores |G[i, j]| to its slice of out_cols / out_scores
    (``topk_grad_with_rows``; ``take`` all zero for ``topk_grad``)."""
    n_out = dYT.shape[0]
    n_in = XT.shape[0]
    n_workers = best.shape[0]
    n_tiles = (n_out + tile_rows - 1) // tile_rows
    for w in prange(n_workers):
        G = np.empty((tile_rows, n_in), dtype=np.float32)
        G_bits = G.view(np.int32)
        gm = np.empty(n_groups, dtype=np.int32)
        rows = np.empty(tile_rows, dtype=np.int64)
        keys = np.empty(capacity, dtype=np.int64)
        scratch = np.empty(max(2 * n_in + MIN_ROW_SLACK, n_groups), dtype=np.int64)
        n = 0
        threshold = np.int64(threshold0)  # the rank key a position must exceed to enter the buffer
        for tile in range(w, n_tiles, n_workers):
            r0 = tile * tile_rows
            r1 = min(n_out, r0 + tile_rows)
            for t in range(r1 - r0):
                rows[t] = r0 + t
            _gradient_tile(dYT, XT, rows[: r1 - r0], G)
            for t in range(r1 - r0):
                i = r0 + t
                _score_bits(G_bits[t], ex_indices[ex_indptr[i] : ex_indptr[i + 1]])  # G[t] now holds |G[i, :]|
                _group_maxima(G_bits[t], gm)
                if k > 0:
                    n, threshold = _scan_row(G_bits[t], gm, i * n_in, salt, keys, n, k, threshold)
                c = take[i]
                if c == 0:
                    continue
                row_keys = scratch[: 2 * c + MIN_ROW_SLACK]
                n_row, _ = _scan_row(G_bits[t], gm, i * n_in, salt, row_keys, 0, c, _row_threshold(gm, c, scratch))
                _keep_largest(row_keys, n_row, c)
                chosen = out_cols[out_indptr[i] : out_indptr[i] + c]
                for q in range(c):
                    chosen[q] = _index_of_key(row_keys[q], salt) - i * n_in
                chosen.sort()  # ascending columns
                for q in range(c):
                    out_scores[out_indptr[i] + q] = G[t, chosen[q]]
        if n > k:
            _keep_largest(keys, n, k)
            n = k
        best[w, :n] = keys[:n]
        n_best[w] = n


@njit(parallel=True, cache=CACHE)
def _complete_rows(n_in, ex_indptr, ex_indices, take, ranked_mask, out_indptr, out_cols):
    """Every row taking all its available columns: the complement of its excluded columns, ascending."""
    for i in prange(take.shape[0]):
        if ranked_mask[i] or take[i] == 0:
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


@njit(parallel=True, cache=CACHE)
def _diagonal_squares(dYT, XT, tile_rows, partial):
    """partial[c, d] = sum of G[i, j]^2 over the positions (i, j) of diagonal d in the rows of group
    c: d = (i - j) mod n_out if n_out >= n_in, else (j - i) mod n_in. Group c holds the run of tiles
    [c * n_tiles // n_groups, (c + 1) * n_tiles // n_groups): fixed by the shapes."""
    n_out = dYT.shape[0]
    n_in = XT.shape[0]
    n_groups = partial.shape[0]
    n_tiles = (n_out + tile_rows - 1) // tile_rows
    for c in prange(n_groups):
        G = np.empty((tile_rows, n_in), dtype=np.float32)
        rows = np.empty(tile_rows, dtype=np.int64)
        acc = partial[c]
        for tile in range(c * n_tiles // n_groups, (c + 1) * n_tiles // n_groups):
            r0 = tile * tile_rows
            r1 = min(n_out, r0 + tile_rows)
            for t in range(r1 - r0):
                rows[t] = r0 + t
            _gradient_tile(dYT, XT, rows[: r1 - r0], G)
            for t in range(r1 - r0):
                i = r0 + t
                g = G[t]
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
    """Rows per tile: TILE_ELEMS entries (at least one row). Depends on the shape only."""
    return max(1, TILE_ELEMS // max(n_in, 1))


def _buffer_capacity(k: int) -> int:
    """Keys a topk_grad worker buffers: its k best plus room for max(k, MIN_SLACK) more, so that a
    cut-back (O(capacity)) comes at most once per max(k, MIN_SLACK) new candidates."""
    return k + max(k, MIN_SLACK)


def _starting_threshold(dYT, XT, ex_indptr, ex_indices, k, n_available) -> int:
    """A rank key that about 2k positions should exceed: the largest key of a score that about 2k
    positions exceed, estimated from SAMPLE_SIZE sampled positions; -1 (no threshold) when the layer
    is small or k is not a small fraction of it."""
    if n_available < 4 * SAMPLE_SIZE:
        return -1
    scores = np.empty(SAMPLE_SIZE, dtype=np.float32)
    n = _sample_scores(dYT, XT, ex_indptr, ex_indices, scores)
    rank = (n * 2 * k) // n_available  # expected 2k positions of the layer above the sample's rank-th
    if rank < MIN_SAMPLE_RANK or rank >= n:
        return -1
    scores = scores[:n]
    bits = int(np.partition(scores, n - 1 - rank)[n - 1 - rank : n - rank].view(np.int32)[0])
    return (bits << 32) | 0xFFFFFFFF  # a key above it has a larger score


def _scan(dYT, XT, ex_indptr, ex_indices, k, n_available, salt, take, indptr, cols, scores):
    """Run :func:`_workers` over G = dYT XT^T: (rows, cols) int64 of the top k positions of |G| outside
    the exclusion, by flat index ascending, and each row i's take[i] best columns and scores into
    ``cols`` / ``scores`` at ``indptr[i]``.

    A starting threshold from a sample spares the workers most of the positions that a running top-k
    would take in and later drop. It is only a filter: if fewer than k positions exceed it, the layer
    part is scanned again without one (the rows part is already done), so the result is exactly the
    top k either way.
    """
    n_out, n_in = dYT.shape[0], XT.shape[0]
    tile_rows = min(_tile_rows(n_in), n_out)
    n_workers = max(1, min(numba.get_num_threads(), -(-n_out // tile_rows)))
    best = np.empty((n_workers, k), dtype=np.int64)  # each worker's top k keys
    n_best = np.zeros(n_workers, dtype=np.int64)
    threshold = _starting_threshold(dYT, XT, ex_indptr, ex_indices, k, n_available) if k > 0 else -1
    workers = by_work(_workers, n_out * n_in * dYT.shape[1], growth=True)
    workers(dYT, XT, ex_indptr, ex_indices, salt, k, tile_rows, _buffer_capacity(k), threshold, _n_groups(n_in),
            take, indptr, cols, scores, best, n_best)
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if threshold >= 0 and n_best.sum() < k:  # fewer than k positions exceed the sampled threshold
        workers(dYT, XT, ex_indptr, ex_indices, salt, k, tile_rows, _buffer_capacity(k), -1, _n_groups(n_in),
                np.zeros_like(take), indptr, cols, scores, best, n_best)
    return _finish_topk(best, n_best, k, n_in, salt)


def topk_grad(X, dY, m, ex_indptr, ex_indices, salt=0):
    """(rows, cols) int64 of the top min(m, available) positions of |G|, by flat index ascending."""
    n_out, n_in = dY.shape[1], X.shape[1]
    n_available = n_out * n_in - ex_indices.shape[0]
    k = min(m, n_available)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    no_rows = np.zeros(n_out, dtype=np.int64), np.zeros(n_out + 1, dtype=np.int64)  # take, indptr
    return _scan(transpose(dY), transpose(X), ex_indptr, ex_indices, k, n_available, salt, *no_rows,
                 np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def topk_grad_rows(X, dY, counts, ex_indptr, ex_indices, salt=0):
    """(indptr, cols): per row the top min(counts[i], available_i) columns of |G[i, :]|, ascending."""
    n_out, n_in = dY.shape[1], X.shape[1]
    available = n_in - np.diff(ex_indptr)  # (n_out,)
    take = np.minimum(counts, available)
    ranked_mask = (take > 0) & (take < available)  # rows that need their gradient
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(take, out=indptr[1:])
    cols = np.empty(indptr[-1], dtype=np.int64)
    by_work(_complete_rows, n_out * n_in)(n_in, ex_indptr, ex_indices, take, ranked_mask, indptr, cols)
    ranked = np.flatnonzero(ranked_mask).astype(np.int64)
    if ranked.size:
        tile_rows = _tile_rows(n_in)
        by_work(_rows_select, ranked.size * n_in * X.shape[0], growth=True)(
            transpose(dY), transpose(X), ranked, tile_rows, ex_indptr, ex_indices, salt, take, _n_groups(n_in),
            indptr, cols)
    return indptr, cols


def topk_grad_with_rows(X, dY, m, counts, salt=0):
    """(rows, cols, indptr, row_cols, row_scores): ``topk_grad`` and ``topk_grad_rows`` over every
    position, and the per-row scores, from one pass over G (:func:`_scan`)."""
    n_out, n_in = dY.shape[1], X.shape[1]
    take = np.minimum(counts, n_in)
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(take, out=indptr[1:])
    cols = np.empty(indptr[-1], dtype=np.int64)
    scores = np.empty(indptr[-1], dtype=np.float32)
    if n_out == 0 or n_in == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), indptr, cols, scores
    nothing = np.zeros(n_out + 1, dtype=np.int64), np.empty(0, dtype=np.int32)
    k = min(m, n_out * n_in)
    rows_, cols_ = _scan(transpose(dY), transpose(X), *nothing, k, n_out * n_in, salt, take, indptr, cols, scores)
    return rows_, cols_, indptr, cols, scores


def diag_grad_norms(X, dY):
    """float32 (P,): the L2 norm of G along each wrap-around diagonal."""
    n_out, n_in = dY.shape[1], X.shape[1]
    P = max(n_out, n_in)
    if n_out == 0 or n_in == 0:
        return np.zeros(P, dtype=np.float32)
    tile_rows = min(_tile_rows(n_in), n_out)
    n_groups = min(DIAG_CHUNKS, -(-n_out // tile_rows))
    partial = np.zeros((n_groups, P), dtype=np.float64)
    by_work(_diagonal_squares, n_out * n_in * X.shape[0], growth=True)(transpose(dY), transpose(X), tile_rows, partial)
    sum_sq = partial[0].copy()
    for c in range(1, n_groups):  # fixed order
        sum_sq += partial[c]
    return np.sqrt(sum_sq).astype(np.float32)
