"""GSE, one update (Heddes et al. 2024, arXiv 2401.06898): growth scored only on sampled candidates.

CSR, with A the active set and n = |A|:

1. n_change = ceil(alpha * n).
2. The sampler draws ceil(gamma * n) pairs (uniformly, or from GraBo's or GraEst's distribution);
   the candidates S are the distinct drawn positions that are not active.
3. k = min(n_change, |S|).
4. Grow the k candidates of largest |G|; drop the k active connections of smallest |w| (keep the
   n - k largest).

Condensed (every active row holds K): the sampler draws over the sub-layer of the R active rows
(compact row r is layer row ``rows[r]``), ceil(gamma * R * K) pairs; per active row r,
k_r = min(ceil(alpha * K), |S_r|) candidates of largest |G| grow and the K - k_r largest |w| stay.

Equal scores: the smaller tie rank ``tie_rank(position, salt)`` (layer positions). The fast version
is :class:`purerigl.dst.gse.GSE`; the samplers are the method's own (:mod:`purerigl.dst.samplers`).
"""

from __future__ import annotations

import numpy as np

from ...formats import Condensed
from ...formats._base import ceil_count
from ..samplers import get_sampler
from ._common import Step, Update, best, carry, condensed_of, csr_of, positions, scores_of, step_gradient, unchanged


def _candidates(step: Step, sampler, gamma, n_rows, n_in, nnz, rows=None) -> np.ndarray:
    """Step 2: the distinct drawn compact positions ``r * n_in + c`` that are not active, ascending."""
    X = dY = None
    if sampler is not get_sampler("uniform"):
        X, dY = step.X, step.dY if rows is None or rows.size == step.W.shape[0] else step.dY[:, rows]
    r, c = sampler(step.rng, n_rows, n_in, ceil_count(gamma, nnz), X, dY)
    S = np.unique(np.asarray(r, dtype=np.int64) * n_in + np.asarray(c, dtype=np.int64))
    layer = S if rows is None else rows[S // n_in] * n_in + S % n_in
    return S[~np.isin(layer, positions(step.W))]


def update(step: Step, gamma: float = 1.0, sampler: str = "uniform") -> Update:
    W, salt = step.W, step.salt
    n_out, n_in = W.shape
    sample = get_sampler(sampler)
    A = positions(W)
    w = scores_of(W.values.ravel())
    if isinstance(W, Condensed):
        return _update_condensed(step, gamma, sample)
    n_change = ceil_count(step.alpha, A.size)  # 1.
    if n_change == 0:
        return unchanged(step, candidates=0)
    S = _candidates(step, sample, gamma, n_out, n_in, A.size)  # 2.
    k = min(n_change, S.size)  # 3.
    if k == 0:
        return unchanged(step, candidates=int(S.size))
    G = step_gradient(step)
    grown = best(scores_of(G.ravel()[S]), S, k, salt)  # 4.
    kept = best(w, A, A.size - k, salt)
    result = carry(step, csr_of(np.concatenate([kept, grown]), W.shape))
    result.stats["candidates"] = int(S.size)
    return result


def _update_condensed(step: Step, gamma: float, sample) -> Update:
    W, salt = step.W, step.salt
    n_out, n_in = W.shape
    R, K = W.indices.shape
    rows = W.rows.astype(np.int64)
    n_change = ceil_count(step.alpha, K) if R else 0
    if n_change == 0:
        return unchanged(step, candidates=0)
    S = _candidates(step, sample, gamma, R, n_in, R * K, rows)  # compact positions
    S_layer = rows[S // n_in] * n_in + S % n_in
    k_r = [min(n_change, int(np.sum(S // n_in == r))) for r in range(R)]
    if not any(k_r):
        return unchanged(step, candidates=int(S.size))
    G = step_gradient(step)
    A = positions(W).reshape(R, K)  # (R, K): row r's layer positions
    new = []
    for r in range(R):
        mine = S_layer[S // n_in == r]
        new += best(scores_of(G.ravel()[mine]), mine, k_r[r], salt).tolist()
        new += best(scores_of(W.values[r]), A[r], K - k_r[r], salt).tolist()
    result = carry(step, condensed_of(rows, new, W.shape))
    result.stats["candidates"] = int(S.size)
    return result
