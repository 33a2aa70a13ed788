"""Device building blocks of the cuda growth selections: the gradient tile, rank keys, a bitonic sort.

Used by :mod:`purerigl.kernels.cuda.growth`, which holds the tile constants and launches the kernels
(through :func:`purerigl.kernels.cuda._launch.launch`, block size ``THREADS_PER_BLOCK``).

- :func:`gradient_tile`: one work item per entry of a tile of rows of G,

  .. math:: G_{tile}[t, j] = \\sum_{b=0}^{B-1} dY[b, \\mathrm{rows}[s + t]] \\, X[b, j]

  summed in float32, b ascending (consecutive threads read consecutive X[b, j]: coalesced).
- every kernel here and in :mod:`.growth` loops over its work items with a grid-stride loop, so a
  launch may have fewer threads than items (tests cap them at a handful: the simulator runs one
  Python thread per thread).
- :func:`rank_key`: the int64 key ``bits(|g|) << 32 | (2^32 - 1 - tie_rank(p, salt))`` of the shared
  tie rule (:mod:`purerigl.kernels._rank_key`), p the entry's position (flat index ``i * n_in + j``,
  or a tag) and ``salt`` the caller's 32-bit salt. The float32 bit pattern of a non-negative number
  orders like the number, so a larger key is exactly "larger score, or equal score and smaller tie
  rank"; tie_rank is a permutation of [0, 2^32), so no two positions share a key. Excluded positions
  get the key -1, below every real key (>= 0). :func:`index_of_key` recovers p from a key (through
  :func:`tie_unrank`): after a selection by keys, the chosen positions are decoded and sorted again
  to come back ascending by position.
- :func:`sort_rows_descending`: a bitonic sorting network over each row of an (n_rows, W) int64
  array, W a power of two. A sorting network makes the same comparisons whatever the data, so the
  result depends on the data only, never on thread timing; no atomics. Its log2(W) (log2(W) + 1) / 2
  passes run in few launches: every pass whose pairs lie within one chunk of C = min(W, 1024) entries
  runs in :func:`_bitonic_chunk`, the chunk in shared memory and the passes separated by
  ``syncthreads`` (one launch per merge length k > C, one for all k <= C); only the passes of pair
  distance >= C are launches of their own (:func:`_bitonic_step`). For W <= 1024 that is one launch
  instead of log2(W) (log2(W) + 1) / 2: the launches, not the comparisons, were the cost on a GPU
  (275 of a small MLP's 362 launches per RigL update were bitonic passes).
"""

from __future__ import annotations

import types

import numpy as np

from .. import _rank_key
from . import _launch
from ._launch import cuda

#: Threads of one block of :func:`_bitonic_chunk` on a GPU: it sorts chunks of twice as many entries,
#: held in shared memory (8 KiB of int64).
SORT_THREADS = 512

#: Entries of the shared-memory buffer of :func:`_bitonic_chunk` (a compile-time size).
SORT_CHUNK_MAX = 2 * SORT_THREADS

#: Most blocks of one :func:`_bitonic_chunk` launch on a GPU (4096 x 512 threads fill an H100 many
#: times over); more chunks are walked by a grid-stride loop.
SORT_BLOCKS = 1 << 12

#: Threads of the one :func:`_bitonic_chunk` block on the simulator (see :func:`sort_launch_shape`;
#: a test raises it to run the barriers there too).
SIMULATOR_SORT_THREADS = 1

INDEX_MASK = _rank_key.INDEX_MASK  # low 32 bits of a rank key: 2^32 - 1 - tie rank
NO_KEY = _rank_key.NO_KEY  # the key of an excluded position or of padding, below every real key


# --------------------------------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------------------------------


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def sort_chunk(W: int) -> int:
    """Entries per chunk of :func:`_bitonic_chunk` for rows of W entries: min(W, :data:`SORT_CHUNK_MAX`)
    on a GPU; on the simulator min(W, 2 x ``_launch.THREADS_PER_BLOCK`` rounded down to a power of two),
    read at each call, so that the tests' small blocks make small chunks and exercise the passes
    between chunks."""
    cap = 2 * _launch.THREADS_PER_BLOCK if _launch.SIMULATOR else SORT_CHUNK_MAX
    return min(int(W), 1 << (max(2, int(cap)).bit_length() - 1))


def sort_launch_shape(n_chunks: int, chunk: int) -> tuple[int, int]:
    """(blocks, threads per block) of one :func:`_bitonic_chunk` launch. On a GPU one thread per pair
    of the chunk (chunk / 2 <= :data:`SORT_THREADS`) and up to :data:`SORT_BLOCKS` blocks, which walk
    the chunks in a grid-stride loop. On the simulator one block of :data:`SIMULATOR_SORT_THREADS`
    thread(s): its ``syncthreads`` waits for a poll of Numba's block manager (about a thread switch
    interval, 5 ms), so a single thread, which needs no barrier, walks every pair of every chunk."""
    if _launch.SIMULATOR:
        return 1, max(1, min(int(SIMULATOR_SORT_THREADS), chunk // 2))
    return max(1, min(int(n_chunks), SORT_BLOCKS)), max(1, chunk // 2)


def sort_rows_descending(A, launch) -> None:
    """Sort every row of the device int64 array A (n_rows, W), W a power of two, descending, in place.

    ``launch(kernel, n_items, *args)`` runs a grid-stride kernel over n_items work items (the passes
    between chunks); :func:`_bitonic_chunk` is launched with the blocks of :func:`sort_launch_shape`,
    which walk the chunks of ``chunk`` entries.
    The network, for k = 2, 4, ..., W (merge bitonic runs of length k) and j = k/2, ..., 1 (pair
    distance), is the textbook one; the passes with j < chunk are grouped per chunk.
    """
    n_rows, W = A.shape
    if W < 2 or n_rows == 0:
        return
    chunk = sort_chunk(W)
    blocks, threads = sort_launch_shape(n_rows * (W // chunk), chunk)
    _bitonic_chunk[blocks, threads](A, chunk, 2, chunk, 1)  # every k <= chunk, inside the chunks
    k = 2 * chunk
    while k <= W:
        j = k // 2
        while j >= chunk:  # pairs that straddle chunks: one launch per pass
            launch(_bitonic_step, n_rows * (W // 2), A, j, k)
            j //= 2
        _bitonic_chunk[blocks, threads](A, chunk, k, k, chunk // 2)  # j = chunk/2, ..., 1
        k *= 2


# --------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------


def _device_function(fn, **callees):
    """``cuda.jit(device=True)`` of the plain Python ``fn`` of :mod:`purerigl.kernels._rank_key`, its
    calls to other functions of that module bound to their device versions ``callees``: the text
    compiled is exactly ``fn``'s, and its callees are device functions whether or not the installed
    numba-cuda would compile a call to a plain Python function by itself (0.30 does; older releases
    refuse an untyped global)."""
    namespace = dict(fn.__globals__, **callees)
    rebound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    rebound.__doc__, rebound.__qualname__, rebound.__module__ = fn.__doc__, fn.__qualname__, fn.__module__
    return cuda.jit(device=True)(rebound)


#: The shared tie rule (:mod:`purerigl.kernels._rank_key`) on the device: the same Python functions
#: that the cpu backend compiles with njit. ``tie_rank(p, salt)`` / ``tie_unrank(r, salt)``: the
#: salted permutation of positions and its inverse; ``rank_key(score_bits, p, salt)``: the int64 key
#: (give it int64 operands: the score's int32 bits widened first); ``index_of_key(key, salt)``: p.
tie_rank = _device_function(_rank_key.tie_rank)
tie_unrank = _device_function(_rank_key.tie_unrank)
rank_key = _device_function(_rank_key.rank_key, tie_rank=tie_rank)
index_of_key = _device_function(_rank_key.index_of_key, tie_unrank=tie_unrank)


@cuda.jit(device=True)
def is_excluded(ex_indptr, ex_indices, i, j):
    """Whether column j is among row i's excluded columns (sorted): a binary search."""
    lo = ex_indptr[i]
    hi = ex_indptr[i + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if ex_indices[mid] < j:
            lo = mid + 1
        else:
            hi = mid
    return lo < ex_indptr[i + 1] and ex_indices[lo] == j


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@cuda.jit
def gradient_tile(X, dY, rows, start, n_rows, G):
    """G[t, j] = sum_b dY[b, rows[start + t]] X[b, j] for t < n_rows, j < n_in; one item per entry."""
    n_in = X.shape[1]
    for p in range(cuda.grid(1), n_rows * n_in, cuda.gridsize(1)):
        t = p // n_in
        j = p - t * n_in
        i = rows[start + t]
        acc = np.float32(0.0)
        for b in range(X.shape[0]):
            acc += dY[b, i] * X[b, j]
        G[t, j] = acc


@cuda.jit
def fill(a, start, stop, value):
    """a[start:stop] = value (1-D)."""
    for p in range(start + cuda.grid(1), stop, cuda.gridsize(1)):
        a[p] = value


@cuda.jit
def _bitonic_step(A, j, k):
    """One stage of the bitonic network on every row of A: compare-exchange entries i and i + j, the
    pair ordered descending where bit k of i is 0, ascending elsewhere (k = W: all descending)."""
    half = A.shape[1] // 2
    for p in range(cuda.grid(1), A.shape[0] * half, cuda.gridsize(1)):
        r = p // half
        s = p - r * half  # pair index within the row
        i = (s // j) * (2 * j) + s % j  # s with a 0 bit inserted at position log2(j)
        a = A[r, i]
        b = A[r, i + j]
        if (a < b) if (i & k) == 0 else (a > b):
            A[r, i] = b
            A[r, i + j] = a


@cuda.jit
def _bitonic_chunk(A, chunk, k_first, k_last, j_first):
    """The passes of the bitonic network whose pairs lie inside one chunk of ``chunk`` entries, on
    every chunk of every row of A: chunk c (row r = c // (W / chunk), columns [base, base + chunk)) is
    sorted by block c mod gridDim (a grid-stride loop over chunks); in each pass the block's threads
    share the chunk's chunk / 2 compare-exchanges (one each on a GPU, where blockDim = chunk / 2).

    The passes are, in order: (k_first, j_first), (k_first, j_first / 2), ..., (k_first, 1), then for
    every later k = 2 k_first, ..., k_last: (k, k / 2), ..., (k, 1); each as :func:`_bitonic_step`
    (the direction from bit k of the entry's column in the row). The chunk is read into shared memory
    once, written back once; ``syncthreads`` between passes (every thread runs every pass).
    """
    buf = cuda.shared.array(SORT_CHUNK_MAX, np.int64)
    half = chunk // 2
    per_row = A.shape[1] // chunk
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x  # every thread of a block runs the same loops: the barriers are uniform
    for c in range(cuda.blockIdx.x, A.shape[0] * per_row, cuda.gridDim.x):
        r = c // per_row
        base = (c - r * per_row) * chunk
        for q in range(t, chunk, nt):
            buf[q] = A[r, base + q]
        if nt > 1:
            cuda.syncthreads()
        k = k_first
        j = j_first
        while k <= k_last:
            while j >= 1:
                for s in range(t, half, nt):  # pair s of the chunk
                    i = (s // j) * (2 * j) + s % j  # s with a 0 bit inserted at position log2(j)
                    a = buf[i]
                    b = buf[i + j]
                    if (a < b) if ((base + i) & k) == 0 else (a > b):
                        buf[i] = b
                        buf[i + j] = a
                if nt > 1:
                    cuda.syncthreads()
                j //= 2
            k *= 2
            j = k // 2
        for q in range(t, chunk, nt):
            A[r, base + q] = buf[q]
        if nt > 1:
            cuda.syncthreads()  # the buffer is read back before the next chunk overwrites it
