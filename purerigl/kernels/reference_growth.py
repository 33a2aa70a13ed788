"""The growth selections of DST, specified in plain NumPy: top-m of the dense gradient, never stored.

Every DST grow rule reads the dense weight gradient of a layer, for X (B, n_in) and dY (B, n_out):

.. math:: G[i, j] = \\sum_b dY[b, i] \\, X[b, j], \\qquad G = dY^T X \\quad (n_{out} \\times n_{in})

but a sparse layer must never hold G whole. Here G is produced in **tiles of rows**,
``G[r0:r1, :] = dY[:, r0:r1]^T X`` (at most :data:`TILE_ELEMS` entries each), and each tile is folded
into a small running result before the next one is computed: a running top-m (RigL), the per-row
top-c_i of the rows of the tile (SRigL), or per-diagonal sums of squares (diag-rigl, DynaDiag's window). Extra memory is
O(m + tile) or O(nnz_out + tile) or O(P + tile), never O(n_out * n_in).

Scores and ties (shared by every backend, see :mod:`purerigl.kernels._rank_key`): a position's score
is ``|G[i, j]|`` **as a float32**. The reference sums in float64 and rounds the scores to float32
before ranking, the cpu backend sums in float32; where both float32 sums agree (always, for small
dyadic inputs) the two rank the very same numbers. Larger score ranks higher; among equal scores the
position ``p = i * n_in + j`` of smaller tie rank ``tie_rank(p, salt)`` ranks higher (in both
selections, the per-row one included: every row orders its ties differently).

Operands (checked by :mod:`purerigl.kernels._checks`, identically in every backend): X and dY are
2-D float32 with the same batch and only finite values; the excluded set E is CSR-like, ``indptr``
(n_out + 1,) and ``indices`` strictly increasing within each row, in [0, n_in); m and counts are
non-negative integers; the salt is an integer in [0, 2^32). Both selections take layers of at most
2^32 positions.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from ._rank_key import tie_ranks

#: Entries of G per tile (256 KiB in float64).
TILE_ELEMS = 1 << 15

#: Score given to excluded positions: below every real score |g| >= 0.
EXCLUDED = np.float32(-1.0)


def _tiles(X, dY):
    """Yield ``(r0, r1, G[r0:r1, :])`` in float64, tiles of at most TILE_ELEMS entries, rows ascending."""
    n_out, n_in = dY.shape[1], X.shape[1]
    X64 = X.astype(np.float64)  # (B, n_in)
    dYT64 = np.ascontiguousarray(dY.T, dtype=np.float64)  # (n_out, B)
    step = max(1, TILE_ELEMS // max(n_in, 1))
    for r0 in range(0, n_out, step):
        r1 = min(n_out, r0 + step)
        yield r0, r1, dYT64[r0:r1] @ X64  # (r1 - r0, n_in)


def _score_tiles(X, dY, exclude_indptr, exclude_indices):
    """Yield ``(r0, r1, scores)``: float32 |G[r0:r1, :]|, excluded positions set to EXCLUDED."""
    for r0, r1, G in _tiles(X, dY):
        scores = np.abs(G, out=G).astype(np.float32)  # (r1 - r0, n_in)
        lo, hi = exclude_indptr[r0], exclude_indptr[r1]
        local_rows = np.repeat(np.arange(r1 - r0), np.diff(exclude_indptr[r0 : r1 + 1]))  # (hi - lo,)
        scores[local_rows, exclude_indices[lo:hi]] = EXCLUDED
        yield r0, r1, scores


def topk_grad(X, dY, m, exclude_indptr, exclude_indices, salt=0):
    """The m positions of largest gradient magnitude over the whole layer, excluded positions aside (RigL).

    .. math:: \\mathrm{top}_m \\{ (i, j) \\notin E : |G[i, j]| \\}, \\qquad G[i, j] = \\sum_b dY[b, i] X[b, j]

    Ranked by the float32 score |G[i, j]|, larger first; equal scores: smaller tie rank
    ``tie_rank(i * n_in + j, salt)`` first. G is streamed in tiles of rows into a running top m
    (:class:`_RunningTop`).

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    m : int >= 0
    exclude_indptr : integer ndarray, shape (n_out + 1,)
    exclude_indices : integer ndarray, shape (nnz,)
        The excluded set E, CSR-like: row i excludes ``exclude_indices[exclude_indptr[i]:exclude_indptr[i+1]]``
        (strictly increasing within the row).
    salt : int in [0, 2^32)
        Chooses the order among equal scores (:mod:`purerigl.kernels._rank_key`).

    Returns
    -------
    rows, cols : int64 ndarrays, shape (min(m, n_out * n_in - nnz),), sorted by ``rows * n_in + cols``.
    """
    X, dY, m, indptr, indices = _checks.topk_grad_operands(X, dY, m, exclude_indptr, exclude_indices)
    salt = _checks.check_salt(salt)
    n_in = X.shape[1]
    top = _RunningTop(m)
    if m > 0:
        for r0, r1, scores in _score_tiles(X, dY, indptr, indices):
            flat = np.arange(r0 * n_in, r1 * n_in, dtype=np.int64)  # (tile,): the tile's flat positions
            top.add(flat, scores.ravel(), tie_ranks(flat, salt))
    return top.positions(n_in)


class _RunningTop:
    """The m best (score, tie rank) positions of a stream of tiles, best first.

    A running list holds the best m positions seen so far; the m-th of them is a threshold that a later
    position must beat (a larger score, or an equal score and a smaller tie rank). The positions of
    each tile that beat it wait in a pending pool, merged into the running list (and the threshold
    raised) whenever the pool reaches m / 4 positions, and at the end.
    """

    def __init__(self, m: int):
        self.m = int(m)
        self.best = [np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)]
        self.pending = [self.best]  # (flat, score, tie rank) of the running list, then of new candidates
        self.n_pending = 0

    def add(self, flat, scores, ties):
        """Offer a tile: flat positions, float32 scores (EXCLUDED where excluded) and tie ranks, 1-D."""
        best = self.best
        if best[0].size == self.m:  # beat the m-th best: larger score, or equal and smaller tie rank
            beats = (scores > best[1][-1]) | ((scores == best[1][-1]) & (ties < best[2][-1]))
        else:
            beats = scores > EXCLUDED
        new = np.flatnonzero(beats)
        self.pending.append([flat[new], scores[new], ties[new]])
        self.n_pending += new.size
        if self.n_pending >= -(-self.m // 4):
            self._merge()

    def _merge(self):
        flat, score, ties = (np.concatenate(part) for part in zip(*self.pending))
        order = np.lexsort((ties, -score))[: self.m]
        self.best = [flat[order], score[order], ties[order]]
        self.pending, self.n_pending = [self.best], 0

    def positions(self, n_in: int):
        """(rows, cols) int64 of the best m, sorted by flat position."""
        if self.m > 0:
            self._merge()
        flat = np.sort(self.best[0])
        return flat // max(n_in, 1), flat % max(n_in, 1)


def topk_grad_rows(X, dY, counts, exclude_indptr, exclude_indices, salt=0):
    """Per row i, the counts[i] columns of largest gradient magnitude among those not excluded (SRigL).

    .. math:: C_i = \\mathrm{top}_{c_i} \\{ j : (i, j) \\notin E, \\text{ by } |G[i, j]| \\},
              \\qquad c_i = \\min(\\mathrm{counts}[i], n_{in} - |E_i|)

    Equal scores: the smaller tie rank ``tie_rank(i * n_in + j, salt)`` first. A row with fewer than
    counts[i] available columns returns all of them.

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    counts : integer ndarray, shape (n_out,), >= 0
    exclude_indptr, exclude_indices : the excluded set, as in :func:`topk_grad`
    salt : int in [0, 2^32), as in :func:`topk_grad`

    Returns
    -------
    indptr : int64 ndarray, shape (n_out + 1,); row i's columns are ``cols[indptr[i]:indptr[i+1]]``
    cols : int64 ndarray, shape (sum c_i,), ascending within each row
    """
    X, dY, counts, ex_indptr, ex_indices = _checks.topk_grad_rows_operands(
        X, dY, counts, exclude_indptr, exclude_indices
    )
    salt = _checks.check_salt(salt)
    n_in = X.shape[1]
    rows = _RowsTop(np.minimum(counts, n_in - np.diff(ex_indptr)))
    for r0, r1, scores in _score_tiles(X, dY, ex_indptr, ex_indices):
        flat = np.arange(r0 * n_in, r1 * n_in, dtype=np.int64).reshape(scores.shape)  # (r1 - r0, n_in)
        rows.add(r0, scores, tie_ranks(flat, salt))
    return rows.indptr, rows.cols


class _RowsTop:
    """Per row i, the take[i] best columns of a stream of row tiles, ascending, and their scores."""

    def __init__(self, take):
        self.take = np.asarray(take, dtype=np.int64)  # c_i, (n_out,)
        self.indptr = np.zeros(self.take.size + 1, dtype=np.int64)
        np.cumsum(self.take, out=self.indptr[1:])
        self.cols = np.empty(self.indptr[-1], dtype=np.int64)
        self.scores = np.empty(self.indptr[-1], dtype=np.float32)

    def add(self, r0, scores, ties):
        """Rows r0, r0 + 1, ...: float32 scores (EXCLUDED where excluded) and tie ranks, (rows, n_in)."""
        order = np.lexsort((ties, -scores), axis=-1)  # per row: best first
        for t in range(scores.shape[0]):
            i = r0 + t
            chosen = np.sort(order[t, : self.take[i]])
            self.cols[self.indptr[i] : self.indptr[i + 1]] = chosen
            self.scores[self.indptr[i] : self.indptr[i + 1]] = scores[t, chosen]


def topk_grad_with_rows(X, dY, m, counts, salt=0):
    """RigL's layer-wide top m and SRigL's per-row top counts[i] of |G|, over every position, from
    one pass over G (SRigL's salient set and its growth candidates).

    .. math:: T = \\mathrm{top}_m \\{ (i, j) : |G[i, j]| \\}, \\qquad
              C_i = \\mathrm{top}_{c_i} \\{ j : |G[i, j]| \\}, \\quad c_i = \\min(\\mathrm{counts}[i], n_{in})

    exactly ``topk_grad(X, dY, m, E=∅, salt)`` and ``topk_grad_rows(X, dY, counts, E=∅, salt)`` (same
    scores, same tie rule), plus the scores |G[i, j]| of the per-row columns: the float32 numbers the
    selection ranked. With those, the top c' <= c_i of row i outside any set K_i of at most c_i - c'
    columns lies in C_i, and can be picked from C_i by its scores (``top_k_per_row``) without a second
    pass over G: among the c_i best columns at most |K_i| are in K_i.

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)
    m : int >= 0
    counts : integer ndarray, shape (n_out,), >= 0
    salt : int in [0, 2^32), as in :func:`topk_grad`

    Returns
    -------
    rows, cols : int64 ndarrays, shape (min(m, n_out * n_in),), sorted by ``rows * n_in + cols``
    indptr : int64 ndarray, shape (n_out + 1,)
    row_cols : int64 ndarray, shape (sum c_i,), ascending within each row
    row_scores : float32 ndarray, shape (sum c_i,): |G[i, j]| at each (i, row_cols)
    """
    X, dY, m, counts = _checks.topk_grad_with_rows_operands(X, dY, m, counts)
    salt = _checks.check_salt(salt)
    n_out, n_in = dY.shape[1], X.shape[1]
    nothing = np.zeros(n_out + 1, dtype=np.int64), np.empty(0, dtype=np.int32)
    top, rows = _RunningTop(m), _RowsTop(np.minimum(counts, n_in))
    for r0, r1, scores in _score_tiles(X, dY, *nothing):
        flat = np.arange(r0 * n_in, r1 * n_in, dtype=np.int64).reshape(scores.shape)  # (r1 - r0, n_in)
        ties = tie_ranks(flat, salt)
        if m > 0:
            top.add(flat.ravel(), scores.ravel(), ties.ravel())
        rows.add(r0, scores, ties)
    return *top.positions(n_in), rows.indptr, rows.cols, rows.scores


def diag_grad_norms(X, dY):
    """The L2 norm of the gradient along each of the P wrap-around diagonals (diag-rigl growth scores).

    .. math:: S[d] = \\Big( \\sum_{t=0}^{L-1} G[\\mathrm{row}(d, t), \\mathrm{col}(d, t)]^2 \\Big)^{1/2}

    with P = max(n_out, n_in), L = min(n_out, n_in) and (row, col) = ((t + d) mod n_out, t) when
    n_out >= n_in, else (t, (t + d) mod n_in) (DESIGN.md section 2). Every position lies on exactly one
    diagonal: d = (i - j) mod n_out (tall or square) or d = (j - i) mod n_in (wide), so each tile of G
    adds its squares into S^2 by diagonal.

    Parameters
    ----------
    X : float32 ndarray, shape (B, n_in)
    dY : float32 ndarray, shape (B, n_out)

    Returns
    -------
    S : float32 ndarray, shape (P,)
    """
    X, dY = _checks.growth_operands(X, dY)
    n_out, n_in = dY.shape[1], X.shape[1]
    P = max(n_out, n_in)
    sum_sq = np.zeros(P, dtype=np.float64)
    for r0, r1, G in _tiles(X, dY):
        i = np.arange(r0, r1)[:, None]  # (r1 - r0, 1)
        j = np.arange(n_in)[None, :]  # (1, n_in)
        d = (i - j) % n_out if n_out >= n_in else (j - i) % n_in  # (r1 - r0, n_in)
        sum_sq += np.bincount(d.ravel(), weights=(G * G).ravel(), minlength=P)
    return np.sqrt(sum_sq).astype(np.float32)
