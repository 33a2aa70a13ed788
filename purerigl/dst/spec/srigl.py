"""SRigL, one update of one Condensed layer (Lasby et al. 2024, arXiv 2305.02299; PAPERS.md 3).

The layer has n_active active rows of exactly k connections; C is its budget, n = nnz.

1. n_prune = floor(alpha * n), n_keep = n - n_prune.
2. Ablation (gamma_sal > 0, not the output layer): the salient set is the top n_keep |w| of the
   stored connections together with the top n_prune |G| of all n_out * n_in positions; count_r is
   its size in row r. tau = max(1, floor(gamma_sal * floor(C / n_out))) (gamma_sal >= 1: the count
   ceil(gamma_sal)); with m = floor(C / n_in), if m < n_out, tau = min(tau, the (m+1)-th largest
   count). Rows with count_r < tau are ablated; all others are active.
3. Fan-in k = floor(C / n_active).
4. Drop: keep the top n_keep |w| among the connections of the rows that stay active.
5. Trim: a row keeping more than k of them keeps its k largest |w|.
6. Grow: every active row keeping c_r < k grows the k - c_r positions of largest |G[r, j]| among
   the columns j it does not keep (``grow="random"``: uniformly random ones, the generator choosing
   ``rng.choice(n_free, k - c_r, replace=False)`` ranks among the free columns, rows ascending).
7. Survivors keep value and optimizer state, new connections start at 0.

If n_prune = 0 and neither the active rows nor k change, nothing changes. Equal scores: the smaller
tie rank ``tie_rank(position, salt)``. The fast version is :class:`purerigl.dst.srigl.SRigL`.
"""

from __future__ import annotations

import math

import numpy as np

from ...formats._base import floor_count
from ._common import Step, Update, best, carry, condensed_of, positions, scores_of, step_gradient, unchanged


def update(step: Step, gamma_sal: float = 0.3, grow: str = "gradient") -> Update:
    W, salt, C = step.W, step.salt, int(step.budget)
    n_out, n_in = W.shape
    A = positions(W)
    w = dict(zip(A.tolist(), W.values.ravel().tolist()))  # position -> value
    n_prune = floor_count(step.alpha, A.size)  # 1.
    n_keep = A.size - n_prune
    G = None

    active = set(range(n_out))  # 2.
    if gamma_sal > 0 and not step.is_output:
        G = step_gradient(step)
        everything = np.arange(n_out * n_in, dtype=np.int64)
        salient = set(best(scores_of(W.values.ravel()), A, n_keep, salt).tolist())
        salient |= set(best(scores_of(G.ravel()), everything, n_prune, salt).tolist())
        count = [sum(1 for p in salient if p // n_in == r) for r in range(n_out)]
        if gamma_sal >= 1:
            tau = math.ceil(gamma_sal)
        else:
            tau = max(1, floor_count(gamma_sal, C // n_out))
        m = C // n_in
        if m < n_out:
            tau = min(tau, sorted(count, reverse=True)[m])
            active = {r for r in range(n_out) if count[r] >= tau}
    k = C // len(active)  # 3.
    stats = {"n_prune": int(n_prune), "k": k, "active_rows": len(active), "ablated": n_out - len(active)}
    if n_prune == 0 and k == W.indices.shape[1] and active == set(W.rows.tolist()):
        return unchanged(step, regrown=0, **stats)

    staying = np.array([p for p in A.tolist() if p // n_in in active], dtype=np.int64)  # 4.
    kept = best(scores_of([w[p] for p in staying.tolist()]), staying, n_keep, salt)
    row_of = {r: [p for p in kept.tolist() if p // n_in == r] for r in active}
    for r, mine in row_of.items():  # 5.
        if len(mine) > k:
            row_of[r] = best(scores_of([w[p] for p in mine]), np.array(mine), k, salt).tolist()

    grown = []  # 6.
    for r in sorted(active):
        need = k - len(row_of[r])
        if need <= 0:
            continue
        mine = {p % n_in for p in row_of[r]}
        free = np.array([r * n_in + j for j in range(n_in) if j not in mine], dtype=np.int64)
        if grow == "random":
            grown += free[np.sort(step.rng.choice(free.size, size=need, replace=False))].tolist()
        else:
            if G is None:
                G = step_gradient(step)
            grown += best(scores_of(G.ravel()[free]), free, need, salt).tolist()

    new = [p for mine in row_of.values() for p in mine] + grown
    result = carry(step, condensed_of(active, new, W.shape))  # 7.
    result.stats.update(regrown=len(set(grown) & set(A.tolist())), **stats)
    return result
