"""The rules verify-update checks a user's masks with, each giving :class:`Finding` s with their cause:
the counts, the drop by magnitude, growth outside the kept set and by gradient, SRigL's ablation, fan-in
and trim, and the values."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .causes import (
    ABLATION_DIFFERS, BROKEN_FAN_IN, DROP_NOT_BY_MAGNITUDE, GREW_KEPT, GROWTH_NOT_BY_GRADIENT,
    GROWTH_OUTSIDE_CANDIDATES, KEPT_WEIGHT_CHANGED, NEW_WEIGHT_NOT_ZERO, TOO_FEW_DROPPED, TOO_FEW_GROWN,
    TOO_MANY_DROPPED, TOO_MANY_GROWN, TRIMMED_ROW, Cause,
)
from .inputs import LayerInput

# --------------------------------------------------------------------------------------------- ranks


def favoured_ranks(*keys) -> np.ndarray:
    """int64 ranks 1..N of N elements ordered by ``keys`` (1-D, the first the primary one; larger is
    better): N is the best. Elements equal on every key are ranked by index (lower index, lower rank)."""
    n = keys[0].size
    order = np.lexsort(tuple(np.asarray(k, dtype=np.float64) for k in reversed(keys)))  # ascending
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    return rank


def top(rank: np.ndarray, where: np.ndarray, n: int) -> np.ndarray:
    """bool like ``where``: the ``n`` entries of ``where`` of largest ``rank``."""
    idx = np.flatnonzero(where)
    out = np.zeros(where.shape, dtype=bool)
    out[idx[np.argsort(-rank[idx], kind="stable")[: max(0, min(int(n), idx.size))]]] = True
    return out


def _max(a: np.ndarray, where: np.ndarray) -> float:
    return float(np.max(a[where])) if where.any() else -np.inf


def cannot_regrow(g: np.ndarray, u: np.ndarray, n_in: int | None = None) -> np.ndarray:
    """bool like ``g``: |G| below the best position left ungrown (``~u``), layer-wide, or within the
    row when ``n_in`` is given (SRigL's per-row growth). A position of ``u`` outside the kept set
    that is one of these cannot be a drop and regrow, so among equal |w| it is kept first."""
    if n_in is None:
        return g < _max(g, ~u)
    g2, free = g.reshape(-1, n_in), ~u.reshape(-1, n_in)
    best = np.max(np.where(free, g2, -np.inf), axis=1, initial=-np.inf)
    return (g2 < best[:, None]).ravel()


# ----------------------------------------------------------------------------------- findings (rules)


@dataclass
class Finding:
    """One classified difference: its cause, a sentence with the numbers, and the items it concerns
    (flat positions ``row * n_in + col``, diagonal offsets or rows, as ``unit`` says)."""

    cause: Cause
    message: str
    unit: str = "position"
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def allowed(self) -> bool:
        return self.cause.allowed


def _finding(cause, message, items=None, unit="position") -> Finding:
    items = np.zeros(0, np.int64) if items is None else np.asarray(items)
    if items.dtype == bool:
        items = np.flatnonzero(items)
    return Finding(cause, message, unit, np.sort(items.astype(np.int64)))


def _lowest(rank, where, n):
    """bool: the ``n`` entries of ``where`` of smallest ``rank``."""
    return top(-rank, where, n)


def _deemed_kept(R, forced, margin, n_lost) -> np.ndarray:
    """Which of R (the user's surviving positions outside the rule's kept set) the user kept rather
    than grew back: ``forced`` (their |G| rules out a regrowth), and as many more, least justified
    (smallest ``margin``) first, as make the user's kept count match the rule's after ``n_lost``
    positions the rule keeps went: the explanation with the fewest count errors."""
    extra = max(0, n_lost - int(forced.sum()))
    maybe = np.flatnonzero(R & ~forced)
    out = forced.copy()
    out[maybe[np.argsort(margin[maybe], kind="stable")[:extra]]] = True
    return out


def _count_off(a, u, wrank, g, n_drop: int, unit: str, count_text: str) -> list[Finding]:
    """A layer-wide update that is the rule's for another drop count d (dropping and growing d instead
    of ``n_drop``), as the count causes; [] when there is no such d or it is ``n_drop``.

    With the active positions in the rule's order o_1..o_n (ties in the user's favour), dropping d
    keeps o_1..o_(n-d): all must survive in ``u`` (d >= n - L, L the longest prefix of ``o`` in
    ``u``), and every survivor past it must be a regrowth, |G| at least that of any position left
    ungrown (d <= n - J, J the last survivor that cannot be one); every new position too."""
    n = int(a.sum())
    act = np.flatnonzero(a)
    order = act[np.argsort(-wrank[act], kind="stable")]
    in_u = u[order]
    L = int(np.argmin(in_u)) if not in_u.all() else n
    if g is None:
        J = 0
    else:
        thr = _max(g, ~u)
        if np.any(u & ~a & (g < thr)):
            return []
        forced = np.flatnonzero(in_u & (g[order] < thr))
        J = int(forced[-1]) + 1 if forced.size else 0
    if J > L or n - L <= n_drop <= n - J:
        return []
    d = n - L if n_drop < n - L else n - J
    text = f"your masks are the rule's for dropping and growing {d}"
    if d > n_drop:
        lost = np.zeros_like(a)
        lost[order[: n - n_drop]] = True
        lost &= ~u
        return [_finding(TOO_MANY_DROPPED, f"dropped {d} of the {n} active, the rule drops {n_drop}{count_text}: "
                         f"{text} (listed: dropped ones the rule keeps)", lost, unit),
                _finding(TOO_MANY_GROWN, f"grew {d}, the rule grows {n_drop}", None, unit)]
    stayed = np.zeros_like(a)
    stayed[order[n - n_drop: n - d]] = True
    stayed &= u
    return [_finding(TOO_FEW_DROPPED, f"dropped {d} of the {n} active, the rule drops {n_drop}{count_text}: "
                     f"{text} (listed: kept ones the rule drops)", stayed, unit),
            _finding(TOO_FEW_GROWN, f"grew {d}, the rule grows {n_drop}", None, unit)]


def layer_wide_findings(a, u, w, g, n_drop: int, n_grow: int, *, growth: str, candidates=None,
                        unit: str = "position", count_text: str = "", name_of=str) -> list[Finding]:
    """The causes of a layer-wide drop-and-grow update that does not follow its rule.

    Units are positions (RigL, SET, GSE) or diagonals (diag-rigl, their norms as scores).

    Parameters
    ----------
    a, u : bool (N,)
        Active before the update; active after it (the user's).
    w : float32 (N,)
        Drop score |w| (meaningful where ``a``).
    g : float32 (N,) or None
        Growth score |G|; None for growth at random.
    n_drop, n_grow : int
        How many the rule drops and grows.
    growth : "regrow" (RigL, diag-rigl, SET: growth among all positions not kept, just-dropped ones
        included) or "new" (GSE: only positions inactive before, among ``candidates`` when given).
    candidates : bool (N,) or None
        GSE's drawn candidates.
    name_of : callable
        A unit's name in a message from its flat index (default ``str``; positions are named by their
        (row, col), or a convolution's weight index, by the caller).

    First, when ``u`` is the rule's update for another drop count d, that is the cause
    (:func:`_count_off`). Otherwise the rule's kept set K is the top n - n_drop of ``a`` by |w|, equal
    |w| ranked in the user's favour (:func:`favoured_ranks`: kept by the user first, then those that
    cannot be a regrowth, then smaller |G|). P = K minus ``u`` (kept by the rule, dropped by the user);
    Q = the user's survivors outside K taken as kept rather than grown back: those whose |G| is below
    the best position left ungrown (GSE: all), and as many more as balance P (:func:`_deemed_kept`).
    P and Q both: :data:`DROP_NOT_BY_MAGNITUDE`; the user kept n - n_drop - |P| + |Q| (less what K
    may have lost and regrown) and grew the rest of ``u``, against the rule's counts.
    """
    n = int(a.sum())
    n_keep = n - n_drop
    keys = (w, u) if g is None else (w, u, cannot_regrow(g, u), -g)
    wrank = favoured_ranks(*keys)
    if growth == "regrow" and int(u.sum()) == n and n_drop == n_grow:
        found = _count_off(a, u, wrank, g, n_drop, unit, count_text)
        if found:
            return found
    K = top(wrank, a, n_keep)
    if growth == "regrow":
        eligible = ~K
    else:
        eligible = ~a if candidates is None else (candidates & ~a)
    scored = g is not None and (growth == "regrow" or candidates is not None)
    thr = _max(g, eligible & ~u) if scored else -np.inf
    P = K & ~u
    R = a & u & ~K
    if growth == "new":
        Q = R
    elif g is None:
        Q = np.zeros_like(R)  # at random, any position outside K may have grown back
    else:
        Q = _deemed_kept(R, R & (g < thr), g - thr, int(P.sum()))
    kept = n_keep - int(P.sum()) + int(Q.sum())
    if growth == "regrow" and g is not None and kept > n_keep:  # some of K may be the user's drop-and-regrow
        kept -= min(kept - n_keep, int((K & u & (g >= thr)).sum()))
    grown_set = u & ~K & ~Q
    grown = int(u.sum()) - kept
    out = []
    if P.any() and Q.any():
        out.append(_finding(DROP_NOT_BY_MAGNITUDE, f"{int(P.sum())} dropped weight(s) are kept by the rule (the "
                            f"{n_keep} largest |w|) while {int(Q.sum())} smaller one(s) stayed", P | Q, unit))
    if kept < n_keep:
        out.append(_finding(TOO_MANY_DROPPED, f"dropped {n - kept} of the {n} active, the rule drops {n_drop}"
                            f"{count_text}", None if Q.any() else P, unit))
    if kept > n_keep:
        out.append(_finding(TOO_FEW_DROPPED, f"dropped {n - kept} of the {n} active, the rule drops {n_drop}"
                            f"{count_text}", None if P.any() else Q, unit))
    grank = None if g is None else favoured_ranks(g, u)
    extra = np.zeros_like(a)
    if grown > n_grow:
        if scored:
            extra = _lowest(grank, grown_set, grown - n_grow)
        out.append(_finding(TOO_MANY_GROWN, f"grew {grown}, the rule grows {n_grow}", extra, unit))
    if grown < n_grow:
        m = n_grow - grown
        onto = top(grank, K & u, m) if (g is not None and growth == "regrow") else None
        hyp = None if onto is None else (grown_set | onto)
        if onto is not None and int(onto.sum()) == m and hyp.any() and np.min(g[hyp]) >= _max(g, ~hyp):
            out.append(_finding(GREW_KEPT, f"grew {grown}, the rule grows {n_grow}: {m} of the grown fell on "
                                f"kept {unit}s (the growth ranking did not exclude the kept ones)", onto, unit))
        else:
            missing = top(grank, eligible & ~u, m) if scored else None
            out.append(_finding(TOO_FEW_GROWN, f"grew {grown}, the rule grows {n_grow}", missing, unit))
    if growth == "new":
        outside = u & ~a if candidates is None else (u & ~a & ~candidates)
        if candidates is not None and outside.any():
            out.append(_finding(GROWTH_OUTSIDE_CANDIDATES, f"{int(outside.sum())} grown {unit}(s) are not among "
                                f"the {int(candidates.sum())} candidates given", outside, unit))
            grown_set = grown_set & ~outside
    if scored:
        bad = grown_set & ~extra & (g < thr)
        if bad.any():
            best = int(np.flatnonzero(eligible & ~u & (g == thr))[0])
            hint = (" (it was just dropped: a just-dropped position may grow back)"
                    if growth == "regrow" and a[best] else "")
            out.append(_finding(GROWTH_NOT_BY_GRADIENT, f"{int(bad.sum())} grown {unit}(s) have |G| below "
                                f"{thr:.6g}, the score of a {unit} left ungrown, e.g. {name_of(best)}{hint}", bad, unit))
    return out


def _srigl_drop(a, u, g, wrank, staying, rows_user, k: int, n_keep: int, n_in: int):
    """SRigL's drop for the user's active rows, ties in the user's favour: (K the kept set after the
    layer-wide drop of all but ``n_keep`` and the trim of every row to k, the trimmed ones, P = K minus
    ``u``, Q = the user's survivors outside K that cannot be a regrowth, the per-position growth
    threshold: the best |G| left ungrown in the row)."""
    K1 = top(wrank, staying, n_keep)
    K = np.zeros_like(K1)
    thr = np.full(a.size // n_in, -np.inf)
    for r in rows_user:
        sl = slice(r * n_in, (r + 1) * n_in)
        K[sl] = top(wrank[sl], K1[sl], k)
        thr[r] = _max(g[sl], ~K[sl] & ~u[sl])
    thr_of = np.repeat(thr, n_in)
    return K, K1 & ~K, K & ~u, a & u & ~K & (g < thr_of), thr_of


def srigl_findings(a, u, w, g, shape, budget: int, n_prune: int, rows_rule) -> list[Finding]:
    """The causes of an SRigL update that does not follow its rule (PAPERS.md 3.2, purerigl's spec).

    ``a``, ``u``, ``w``, ``g`` as in :func:`layer_wide_findings` (positions, flat); ``rows_rule``: the
    active rows of the rule's result with ties favouring the user. The user's active rows (those
    holding a connection after) are compared with them (:data:`ABLATION_DIFFERS`); then, taking the
    user's active rows R as given, with k = floor(C / |R|): every row in R must hold k
    (:data:`BROKEN_FAN_IN`, or a count cause when all hold the same wrong number); the layer-wide drop
    keeps the top n - n_prune |w| of the rows in R, a row keeping more than k is trimmed to its k
    largest (:data:`TRIMMED_ROW`), and each row grows its top |G| among the columns it does not keep.
    """
    n_out, n_in = shape
    U2 = u.reshape(shape)
    rows_user = np.flatnonzero(U2.any(axis=1))
    out = []
    rows_rule = np.asarray(rows_rule, dtype=np.int64)
    if not np.array_equal(rows_user, rows_rule):
        differ = np.setxor1d(rows_user, rows_rule)
        out.append(_finding(ABLATION_DIFFERS, f"{rows_user.size} active rows, the rule keeps {rows_rule.size} "
                            f"active (ablation with ties in your favour); rows on one side only listed",
                            differ, "row"))
    if rows_user.size == 0:
        return out
    k = budget // rows_user.size
    count = U2.sum(axis=1)[rows_user]
    in_rows = np.zeros(n_out, dtype=bool)
    in_rows[rows_user] = True
    row_of = np.repeat(np.arange(n_out), n_in)
    staying = a & in_rows[row_of]
    wrank = favoured_ranks(w, u, cannot_regrow(g, u, n_in), -g)
    n = int(a.sum())
    K, trimmed, P, Q, thr_of = _srigl_drop(a, u, g, wrank, staying, rows_user, k, n - n_prune, n_in)
    # a row that kept what the trim removes: no room to grow it back if the row also lost one the rule keeps
    R_trim = a & u & trimmed
    trim_rows = np.union1d(row_of[Q & trimmed], np.intersect1d(row_of[R_trim], row_of[P]))
    in_trim = np.isin(row_of, trim_rows)
    if trim_rows.size:
        out.append(_finding(TRIMMED_ROW, f"{trim_rows.size} row(s) kept a connection the trim to the k = {k} "
                            f"largest |w| removes: rows {trim_rows.tolist()[:8]}", (P | Q | R_trim) & in_trim))
    d = n_prune
    if ((P | Q) & ~in_trim).any():  # is it the rule's update for another drop count?
        for d in sorted(range(max(0, n_prune - 64), min(n, n_prune + 64) + 1), key=lambda x: abs(x - n_prune)):
            sets = _srigl_drop(a, u, g, wrank, staying, rows_user, k, n - d, n_in)
            if not ((sets[2] | sets[3]) & ~in_trim).any():
                break
        else:
            d = n_prune
    if d != n_prune:
        K, trimmed, P, Q, thr_of = sets
        cause, more = (TOO_MANY_DROPPED, "more") if d > n_prune else (TOO_FEW_DROPPED, "fewer")
        out.append(_finding(cause, f"dropped {d}, {abs(d - n_prune)} {more} than the rule's floor(alpha * n) = "
                            f"{n_prune}: your masks are the rule's for dropping {d}"))
    grown_set = u & ~K & ~Q
    P, Q = P & ~in_trim, Q & ~in_trim
    n_keep = min(n - n_prune, int(staying.sum()))
    if P.any() and Q.any():
        out.append(_finding(DROP_NOT_BY_MAGNITUDE, f"{int(P.sum())} dropped weight(s) are kept by the rule (the "
                            f"{n_keep} largest |w| of the active rows) while {int(Q.sum())} smaller one(s) "
                            "stayed", P | Q))
    elif P.any():
        out.append(_finding(TOO_MANY_DROPPED, f"{int(P.sum())} more dropped than the rule's floor(alpha * n) = "
                            f"{n_prune} (listed: dropped weights the rule keeps)", P))
    elif Q.any():
        out.append(_finding(TOO_FEW_DROPPED, f"{int(Q.sum())} fewer dropped than the rule's floor(alpha * n) = "
                            f"{n_prune} (listed: kept weights the rule drops)", Q))
    grank = favoured_ranks(g, u)
    wrong = rows_user[count != k]
    if np.unique(count).size > 1:
        out.append(_finding(BROKEN_FAN_IN, f"active rows hold {sorted(Counter(count.tolist()).items())} "
                            f"(count, rows); constant fan-in k = floor({budget} / {rows_user.size}) = {k}",
                            wrong, "row"))
    elif wrong.size:
        cause = TOO_MANY_GROWN if count[0] > k else TOO_FEW_GROWN
        out.append(_finding(cause, f"every active row holds {int(count[0])}, the rule refills each to "
                            f"k = floor({budget} / {rows_user.size}) = {k}", wrong, "row"))
    onto_all = np.zeros_like(a)
    for r in wrong[count[np.isin(rows_user, wrong)] < k]:  # a short row: did growth fall on kept ones?
        sl = slice(r * n_in, (r + 1) * n_in)
        m = k - int(U2[r].sum())
        onto = top(grank[sl], K[sl] & u[sl], m)
        hyp = grown_set[sl] | onto
        if int(onto.sum()) == m and hyp.any() and np.min(g[sl][hyp]) >= _max(g[sl], ~hyp):
            onto_all[sl] = onto
    if onto_all.any():
        out.append(_finding(GREW_KEPT, f"in {len(np.unique(row_of[onto_all]))} short row(s) the growth fell on "
                            "kept connections (the per-row growth ranking did not exclude them)", onto_all))
    bad = grown_set & (g < thr_of)
    if bad.any():
        out.append(_finding(GROWTH_NOT_BY_GRADIENT, f"{int(bad.sum())} grown position(s) have |G| below that of "
                            "a column of the same row left ungrown", bad))
    return out


def value_findings(layer: LayerInput) -> list[Finding]:
    """New connections start at exactly 0; connections active before and after keep their value."""
    a, u = layer.mask, layer.after_mask
    out = []
    new_bad = u & ~a & (layer.after_weight != 0)
    if new_bad.any():
        out.append(_finding(NEW_WEIGHT_NOT_ZERO, f"{int(new_bad.sum())} new weight(s) are not 0",
                            new_bad.ravel()))
    changed = u & a & (layer.after_weight != layer.weight)
    if changed.any():
        out.append(_finding(KEPT_WEIGHT_CHANGED, f"{int(changed.sum())} weight(s) active before and after "
                            "changed value", changed.ravel()))
    return out
