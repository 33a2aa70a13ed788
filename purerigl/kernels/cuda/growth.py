"""numba.cuda kernels of the growth selections: top-m of |G| and per-row top-c of |G| (the diagonal
norms of G: :mod:`.diagonal_growth`).

Every DST grow rule ranks the dense weight gradient of a layer, for X (B, n_in) and dY (B, n_out):

.. math:: G[i, j] = \\sum_b dY[b, i] \\, X[b, j], \\qquad G = dY^T X \\quad (n_{out} \\times n_{in})

G is never stored whole, on the host or on the device. Each selection walks G in **tiles of rows**:
a kernel computes ``G[rows, :]`` (at most :data:`TILE_ELEMS` entries, float32 sums over the batch,
:func:`._growth_tiles.gradient_tile`) into one device buffer, and further kernels fold that tile into a
small device-side result before the next tile is computed. Scores and ties are those of every backend
(:mod:`purerigl.kernels._rank_key`): the score of (i, j) is the float32 |G[i, j]|, larger first; equal
scores: the flat position ``p = i * n_in + j`` of smaller tie rank :math:`r_s(p)` =
``tie_rank(p, salt)`` first (in the per-row selection too: the tie rank of the flat position, not of
the column, so every row orders its ties differently). Both are captured exactly by the int64 rank key

.. math:: \\kappa(i, j) = \\mathrm{bits}(|G[i, j]|) \\cdot 2^{32} + (2^{32} - 1 - r_s(i \\, n_{in} + j))

(larger key ranks higher, all keys distinct; excluded positions get -1), so every selection below is
"the largest keys", which does not depend on tiling, block size or timing. Every comparison is on
whole keys. A chosen key is decoded back to its position with ``index_of_key(key, salt)`` (the
inverse of the tie rank), and the positions are sorted again to come back ascending.

- ``topk_grad`` (implements :func:`purerigl.kernels.reference.topk_grad`, RigL): a device pool holds
  candidate keys, and a device threshold :math:`\\tau` (initially -1) the k-th largest key kept so far,
  :math:`k = \\min(m, n_{out} n_{in} - |E|)`. Per tile, :data:`LANES` lanes each take every
  LANES-th position of the tile and count the keys :math:`> \\tau`; one thread turns the counts into
  offsets (exclusive prefix sum), and the lanes write their keys at those offsets after the pool's
  current entries: a deterministic compaction, no atomics. Only the tile's count of candidates comes
  back to the host (it decides when to cut back).
  When the pool holds more than k + s keys (:math:`s = \\max(k, \\text{tile})`) it is sorted
  (bitonic, descending), cut back to its first k, and :math:`\\tau` becomes the k-th: any key below it
  is outranked by k kept keys, so it can never be in the result. At the end the pool is cut to k, each
  key is decoded to its flat position p and replaced by :math:`2^{32} - 1 - p`; sorted descending
  these give the flat indices ascending. Extra device memory O(k + tile).
- ``topk_grad_rows`` (implements :func:`purerigl.kernels.reference.topk_grad_rows`, SRigL): the
  output layout is known in advance, :math:`c_i = \\min(\\mathrm{counts}[i], n_{in} - |E_i|)`. Rows
  with :math:`c_i = 0` need nothing, rows with :math:`c_i = n_{in} - |E_i|` take the complement of
  their excluded columns (one work item per row, no gradient). The other rows go through tiles: each row
  of the tile becomes keys :math:`\\kappa(i, j)` padded with -1 to a power of two W, each row is
  sorted descending, its first :math:`c_i` keys are its choice; each is decoded to its column
  :math:`j = p - i \\, n_{in}` and replaced by :math:`2^{32} - 1 - j`, and these sorted descending
  again give the chosen columns ascending, written straight into the row's slice of the output. Extra
  device memory O(nnz_out + tile).
- ``diag_grad_norms`` (diag-rigl): :mod:`.diagonal_growth`, on the tiles and launches of this module.

Host-device traffic: the inputs once, one count per tile (``topk_grad``), and the result. Every
kernel walks its work items in a grid-stride loop, launched (:func:`._launch.launch`, blocks of
``_launch.THREADS_PER_BLOCK``) on at most :data:`GRID_THREADS` threads. No kernel uses atomics: the
only synchronisation is kernel order (launches on one stream run one after another).
Operands arrive checked by :mod:`purerigl.kernels._checks` (as for :mod:`purerigl.kernels.cpu.growth`).
Scores are float32 sums in batch order (the compiler may fuse multiply-adds), so on general data the
sets may differ from the reference's only where two scores agree to float32 rounding; on small dyadic
data every backend ranks the very same numbers and returns the very same sets.
"""

from __future__ import annotations

import numpy as np

from . import _growth_tiles as T
from . import _launch
from ._launch import cuda

#: Most threads of one launch (blocks of ``_launch.THREADS_PER_BLOCK``); the kernels walk their work
#: items in grid-stride loops. 2^18 threads fill an H100 (132 SMs x 2048).
GRID_THREADS = 1 << 18

#: Entries of G per tile (one float32 device buffer; topk_grad_rows also keeps int64 keys, <= 2x).
TILE_ELEMS = 1 << 17

#: Threads that compact one tile's candidates in topk_grad (each scans every LANES-th position).
LANES = 1 << 10


def _run(kernel, n_items: int, *args) -> None:
    """Run the grid-stride ``kernel`` over ``n_items`` work items on min(n_items, GRID_THREADS) threads."""
    _launch.launch(kernel, min(n_items, GRID_THREADS), *args)


def _sort_rows_descending(A) -> None:
    T.sort_rows_descending(A, _run)


def _tile_rows(n_in: int, n_rows: int) -> int:
    """Rows per tile: TILE_ELEMS entries (at least one row), at most n_rows."""
    return max(1, min(n_rows, TILE_ELEMS // max(n_in, 1)))


# --------------------------------------------------------------------------------------------------
# topk_grad: a running top-k in a device pool
# --------------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _tile_key(G_bits, p, r0, n_in, ex_indptr, ex_indices, salt):
    """Rank key of the tile's p-th entry (row-major), position (r0 + p // n_in, p % n_in), its ties
    ranked by ``tie_rank(flat, salt)``; -1 if excluded."""
    t = p // n_in
    j = p - t * n_in
    i = r0 + t
    if T.is_excluded(ex_indptr, ex_indices, i, j):
        return T.NO_KEY
    return T.rank_key(np.int64(G_bits[t, j]), np.int64(i) * n_in + j, salt)


@cuda.jit
def _count_candidates(G_bits, n_pos, r0, ex_indptr, ex_indices, salt, tau, lane_counts):
    """lane_counts[l] = how many of the tile's positions l, l + n_lanes, ... have a key > tau[0]
    (whole keys: a larger score, or an equal score and a smaller tie rank)."""
    n_lanes = lane_counts.shape[0]
    n_in = G_bits.shape[1]
    for lane in range(cuda.grid(1), n_lanes, cuda.gridsize(1)):
        count = 0
        for p in range(lane, n_pos, n_lanes):
            if _tile_key(G_bits, p, r0, n_in, ex_indptr, ex_indices, salt) > tau[0]:
                count += 1
        lane_counts[lane] = count


@cuda.jit
def _exclusive_scan(counts, total):
    """counts[l] <- counts[0] + ... + counts[l - 1], total[0] <- the sum of all (one thread)."""
    if cuda.grid(1) != 0:
        return
    acc = 0
    for lane in range(counts.shape[0]):
        c = counts[lane]
        counts[lane] = acc
        acc += c
    total[0] = acc


@cuda.jit
def _scatter_candidates(G_bits, n_pos, r0, ex_indptr, ex_indices, salt, tau, lane_offsets, pool, n_pool):
    """Lane l writes its keys > tau[0], in its scan order, to pool[n_pool + lane_offsets[l]:]."""
    n_lanes = lane_offsets.shape[0]
    n_in = G_bits.shape[1]
    for lane in range(cuda.grid(1), n_lanes, cuda.gridsize(1)):
        q = n_pool + lane_offsets[lane]
        for p in range(lane, n_pos, n_lanes):
            key = _tile_key(G_bits, p, r0, n_in, ex_indptr, ex_indices, salt)
            if key > tau[0]:
                pool[q] = key
                q += 1


@cuda.jit
def _set_threshold(pool, k, tau):
    """tau[0] = pool[k - 1], the k-th largest key once the pool is sorted (one thread)."""
    if cuda.grid(1) == 0:
        tau[0] = pool[k - 1]


@cuda.jit
def _reversed_positions(pool, k, width, salt):
    """pool[t] <- 2^32 - 1 - flat for t < k, flat = index_of_key(pool[t], salt) the position the key was
    made for; -1 for k <= t < width (sorted descending, the flat positions come out ascending)."""
    for t in range(cuda.grid(1), width, cuda.gridsize(1)):
        pool[t] = T.INDEX_MASK - T.index_of_key(pool[t], salt) if t < k else T.NO_KEY


class _RunningTopK:
    """The k largest rank keys seen so far, in a device pool of O(k + tile) keys (see module doc)."""

    def __init__(self, k: int, tile_size: int, salt: int):
        self.k = k
        self.salt = np.int64(salt)  # the tie rule's salt (keys are made and decoded with it)
        self.slack = max(k, tile_size)  # new keys taken in between two cuts, at least
        self.pool = cuda.device_array((1, T.next_pow2(k + self.slack + tile_size)), dtype=np.int64)
        self.n = 0  # keys in the pool
        self.tau = cuda.device_array(1, dtype=np.int64)  # keys must exceed it
        _run(T.fill, 1, self.tau, 0, 1, T.NO_KEY)
        self.n_lanes = min(LANES, tile_size)
        self.lane_counts = cuda.device_array(self.n_lanes, dtype=np.int64)
        self.n_new = cuda.device_array(1, dtype=np.int64)

    def fold(self, G_bits, r0: int, n_rows: int, ex_indptr, ex_indices) -> None:
        """Add the keys > tau of the tile G_bits[:n_rows] (rows r0, r0 + 1, ...); cut back when full."""
        n_pos = n_rows * G_bits.shape[1]
        lanes = self.lane_counts[: min(self.n_lanes, n_pos)]
        _run(_count_candidates, lanes.shape[0], G_bits, n_pos, r0, ex_indptr, ex_indices, self.salt, self.tau,
             lanes)
        _run(_exclusive_scan, 1, lanes, self.n_new)
        n_new = int(self.n_new.copy_to_host()[0])
        if n_new:
            _run(_scatter_candidates, lanes.shape[0], G_bits, n_pos, r0, ex_indptr, ex_indices, self.salt,
                 self.tau, lanes, self.pool[0], self.n)
            self.n += n_new
        if self.n > self.k + self.slack:
            self._cut()

    def _cut(self) -> None:
        """Sort the pool descending, keep its k largest keys, and raise tau to the k-th."""
        width = T.next_pow2(self.n)
        _run(T.fill, width - self.n, self.pool[0], self.n, width, T.NO_KEY)
        _sort_rows_descending(self.pool[:, :width])
        _run(_set_threshold, 1, self.pool[0], self.k, self.tau)
        self.n = self.k

    def flat_indices(self):
        """The flat indices of the k largest keys, ascending (int64 device array, (k,))."""
        if self.n > self.k:
            self._cut()
        width = T.next_pow2(self.k)
        _run(_reversed_positions, width, self.pool[0], self.k, width, self.salt)
        _sort_rows_descending(self.pool[:, :width])
        flat = cuda.device_array(self.k, dtype=np.int64)
        _run(_flat_from_reversed, self.k, self.pool[0], flat)
        return flat


@cuda.jit
def _flat_from_reversed(pool, flat):
    """flat[t] = 2^32 - 1 - pool[t]: the reversed positions sorted descending give the flat indices
    ascending."""
    for t in range(cuda.grid(1), flat.shape[0], cuda.gridsize(1)):
        flat[t] = T.INDEX_MASK - pool[t]


@cuda.jit
def _split_flat(flat, n_in, rows, cols):
    """rows[t], cols[t] = divmod(flat[t], n_in)."""
    for t in range(cuda.grid(1), flat.shape[0], cuda.gridsize(1)):
        rows[t] = flat[t] // n_in
        cols[t] = flat[t] - rows[t] * n_in


def topk_grad(X, dY, m, ex_indptr, ex_indices, salt=0):
    """(rows, cols) int64 of the top min(m, available) positions of |G|, by flat index ascending; equal
    scores: the smaller ``tie_rank(flat, salt)`` first.

    Implements :func:`purerigl.kernels.reference.topk_grad` (operands and salt already checked).
    """
    d_X, d_dY = cuda.to_device(X), cuda.to_device(dY)
    d_indptr, d_indices = cuda.to_device(ex_indptr), cuda.to_device(ex_indices)
    rows, cols = topk_grad_device(d_X, d_dY, m, d_indptr, d_indices, salt)
    return rows.copy_to_host(), cols.copy_to_host()


def topk_grad_device(d_X, d_dY, m, d_indptr, d_indices, salt=0):
    """:func:`topk_grad` on device arrays: (rows, cols) int64 device arrays, nothing copied but one
    candidate count per tile (operands and salt already checked)."""
    n_out, n_in = d_dY.shape[1], d_X.shape[1]
    k = max(0, min(m, n_out * n_in - d_indices.shape[0]))
    rows = cuda.device_array(k, dtype=np.int64)
    cols = cuda.device_array(k, dtype=np.int64)
    if k == 0:
        return rows, cols
    all_rows = _arange(n_out)
    tile_rows = _tile_rows(n_in, n_out)
    G = cuda.device_array((tile_rows, n_in), dtype=np.float32)
    G_bits = G.view(np.int32)
    top = _RunningTopK(k, tile_rows * n_in, salt)
    for r0 in range(0, n_out, tile_rows):
        n_rows = min(tile_rows, n_out - r0)
        _run(T.gradient_tile, n_rows * n_in, d_X, d_dY, all_rows, r0, n_rows, G)
        top.fold(G_bits, r0, n_rows, d_indptr, d_indices)
    _run(_split_flat, k, top.flat_indices(), n_in, rows, cols)
    return rows, cols


@cuda.jit
def _arange_kernel(a):
    for t in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[t] = t


def _arange(n: int):
    """int64 device array 0, 1, ..., n - 1 (made on the device)."""
    a = cuda.device_array(n, dtype=np.int64)
    _run(_arange_kernel, n, a)
    return a


# --------------------------------------------------------------------------------------------------
# topk_grad_rows: per-row sorts of tiles of keys
# --------------------------------------------------------------------------------------------------


@cuda.jit
def _complete_rows(n_in, ex_indptr, ex_indices, take, out_indptr, out_cols):
    """Every row i taking all its available columns (0 < take[i] = n_in - |E_i|): the complement of
    its excluded columns, ascending, into its output slice. One work item per row."""
    for i in range(cuda.grid(1), take.shape[0], cuda.gridsize(1)):
        e = ex_indptr[i]
        end = ex_indptr[i + 1]
        if take[i] == 0 or take[i] != n_in - (end - e):
            continue
        q = out_indptr[i]
        for j in range(n_in):
            if e < end and ex_indices[e] == j:
                e += 1
            else:
                out_cols[q] = j
                q += 1


@cuda.jit
def _row_keys(G_bits, rows, start, n_rows, ex_indptr, ex_indices, salt, K):
    """K[t, j] = rank key of (i, j), i = rows[start + t], at the flat position i * n_in + j (ties:
    ``tie_rank(i * n_in + j, salt)``), -1 if excluded or j >= n_in (padding)."""
    W = K.shape[1]
    n_in = G_bits.shape[1]
    for p in range(cuda.grid(1), n_rows * W, cuda.gridsize(1)):
        t = p // W
        j = p - t * W
        i = rows[start + t]
        if j >= n_in or T.is_excluded(ex_indptr, ex_indices, i, j):
            K[t, j] = T.NO_KEY
        else:
            K[t, j] = T.rank_key(np.int64(G_bits[t, j]), np.int64(i) * n_in + j, salt)


@cuda.jit
def _chosen_reversed_columns(K, rows, start, n_rows, take, n_in, salt):
    """On rows sorted descending: K[t, q] <- 2^32 - 1 - j for the first take[i] entries, i = rows[start
    + t], j = index_of_key(K[t, q], salt) - i * n_in the column the key was made for; -1 after them
    (sorted descending again, the chosen columns come out ascending)."""
    W = K.shape[1]
    for p in range(cuda.grid(1), n_rows * W, cuda.gridsize(1)):
        t = p // W
        q = p - t * W
        i = rows[start + t]
        if q < take[i]:
            K[t, q] = T.INDEX_MASK - (T.index_of_key(K[t, q], salt) - np.int64(i) * n_in)
        else:
            K[t, q] = T.NO_KEY


@cuda.jit
def _write_columns(K, rows, start, n_rows, take, out_indptr, out_cols):
    """out_cols[out_indptr[i] + q] = 2^32 - 1 - K[t, q] for q < take[i], i = rows[start + t]."""
    W = K.shape[1]
    for p in range(cuda.grid(1), n_rows * W, cuda.gridsize(1)):
        t = p // W
        q = p - t * W
        i = rows[start + t]
        if q < take[i]:
            out_cols[out_indptr[i] + q] = T.INDEX_MASK - K[t, q]


def _select_ranked_rows(d_X, d_dY, d_rows, n_ranked, d_take, d_indptr, d_indices, d_out_indptr, d_out_cols, salt):
    """The rows ``d_rows[:n_ranked]`` (int64 device array): their take[i] best columns (ties by
    ``tie_rank(i * n_in + j, salt)``), ascending, into d_out_cols."""
    n_in = d_X.shape[1]
    W = T.next_pow2(n_in)
    tile_rows = _tile_rows(n_in, n_ranked)
    G = cuda.device_array((tile_rows, n_in), dtype=np.float32)
    G_bits = G.view(np.int32)
    K = cuda.device_array((tile_rows, W), dtype=np.int64)
    salt = np.int64(salt)
    for s in range(0, n_ranked, tile_rows):
        n_rows = min(tile_rows, n_ranked - s)
        _run(T.gradient_tile, n_rows * n_in, d_X, d_dY, d_rows, s, n_rows, G)
        _run(_row_keys, n_rows * W, G_bits, d_rows, s, n_rows, d_indptr, d_indices, salt, K)
        _sort_rows_descending(K[:n_rows])  # each row: best first
        _run(_chosen_reversed_columns, n_rows * W, K, d_rows, s, n_rows, d_take, n_in, salt)
        _sort_rows_descending(K[:n_rows])  # each row: its chosen columns ascending
        _run(_write_columns, n_rows * W, K, d_rows, s, n_rows, d_take, d_out_indptr, d_out_cols)


@cuda.jit
def _row_plan(n_in, counts, ex_indptr, take, out_indptr, ranked, sizes):
    """One thread: per row i, take[i] = min(counts[i], n_in - |E_i|); out_indptr = the exclusive scan of
    take; ranked = the rows with 0 < take[i] < n_in - |E_i| (those that need the gradient), ascending;
    sizes = (sum of take, number of ranked rows). O(n_out) serial work, run once per selection."""
    if cuda.grid(1) != 0:
        return
    total = 0
    n_ranked = 0
    for i in range(counts.shape[0]):
        available = n_in - (ex_indptr[i + 1] - ex_indptr[i])
        t = min(counts[i], available)
        take[i] = t
        out_indptr[i] = total
        total += t
        if 0 < t < available:
            ranked[n_ranked] = i
            n_ranked += 1
    out_indptr[counts.shape[0]] = total
    sizes[0] = total
    sizes[1] = n_ranked


def topk_grad_rows(X, dY, counts, ex_indptr, ex_indices, salt=0):
    """(indptr, cols): per row the top min(counts[i], available_i) columns of |G[i, :]|, ascending; equal
    scores: the smaller ``tie_rank(i * n_in + j, salt)`` first.

    Implements :func:`purerigl.kernels.reference.topk_grad_rows` (operands and salt already checked).
    """
    to = cuda.to_device
    indptr, cols = topk_grad_rows_device(to(X), to(dY), to(counts), to(ex_indptr), to(ex_indices), salt)
    return indptr.copy_to_host(), cols.copy_to_host()


def topk_grad_rows_device(d_X, d_dY, d_counts, d_indptr, d_indices, salt=0):
    """:func:`topk_grad_rows` on device arrays: (indptr, cols) int64 device arrays. Two numbers come
    back to the host (the number of chosen columns and of rows that need the gradient), to size the
    output and the tiles (operands and salt already checked)."""
    n_out, n_in = d_dY.shape[1], d_X.shape[1]
    d_take = cuda.device_array(n_out, dtype=np.int64)
    d_out_indptr = cuda.device_array(n_out + 1, dtype=np.int64)
    d_ranked = cuda.device_array(max(n_out, 1), dtype=np.int64)
    d_sizes = cuda.device_array(2, dtype=np.int64)
    _run(_row_plan, 1, n_in, d_counts, d_indptr, d_take, d_out_indptr, d_ranked, d_sizes)
    total, n_ranked = (int(v) for v in d_sizes.copy_to_host())
    d_cols = cuda.device_array(total, dtype=np.int64)
    if total == 0:
        return d_out_indptr, d_cols
    _run(_complete_rows, n_out, n_in, d_indptr, d_indices, d_take, d_out_indptr, d_cols)
    if n_ranked:
        _select_ranked_rows(d_X, d_dY, d_ranked, n_ranked, d_take, d_indptr, d_indices, d_out_indptr, d_cols,
                            salt)
    return d_out_indptr, d_cols


def topk_grad_with_rows(X, dY, m, counts, salt=0):
    """(rows, cols, indptr, row_cols, row_scores): :func:`topk_grad` and :func:`topk_grad_rows` over
    every position, and the per-row scores (operands and salt already checked).

    Implements :func:`purerigl.kernels.reference.topk_grad_with_rows`.
    """
    to = cuda.to_device
    return tuple(a.copy_to_host() for a in topk_grad_with_rows_device(to(X), to(dY), m, to(counts), salt))


def topk_grad_with_rows_device(d_X, d_dY, m, d_counts, salt=0):
    """:func:`topk_grad_with_rows` on device arrays. Here the two selections still read G in two passes
    (:func:`topk_grad_device` and :func:`topk_grad_rows_device` with nothing excluded); the per-row
    scores are recomputed by the tiles' own float32 dot product (:func:`.pairs.row_scores`), so they
    are the numbers the selection ranked."""
    from . import pairs

    n_out = d_dY.shape[1]
    d_nothing_indptr = cuda.to_device(np.zeros(n_out + 1, dtype=np.int64))
    d_nothing = cuda.device_array(0, dtype=np.int32)
    rows, cols = topk_grad_device(d_X, d_dY, m, d_nothing_indptr, d_nothing, salt)
    indptr, row_cols = topk_grad_rows_device(d_X, d_dY, d_counts, d_nothing_indptr, d_nothing, salt)
    scores = cuda.device_array(row_cols.shape[0], dtype=np.float32)
    pairs.row_scores(d_X, d_dY, indptr, row_cols, scores)
    return rows, cols, indptr, row_cols, scores
