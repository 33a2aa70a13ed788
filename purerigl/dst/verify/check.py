"""One layer's verdict: run the specification on the user's layer, and once more with ties favouring
the user's choices; name the causes of what still differs (:func:`verify_layer`, :func:`verify_files`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import PureriglError
from ...formats._base import ceil_count, floor_count
from ..spec import Step, positions, spec_update
from ..spec._common import scores_of
from .causes import ABLATION_DIFFERS, PARTIAL_DIAGONAL, RANDOM, TIE, UNCLASSIFIED
from .findings import (
    Finding, _finding, cannot_regrow, favoured_ranks, layer_wide_findings, srigl_findings, value_findings,
)
from .inputs import (
    LAYER_FORMATS, RANDOM_METHODS, LayerInput, VerifyInputError, _mask_of, diagonal_ids, layer_inputs,
    read_arrays, structure_of,
)

@dataclass
class LayerReport:
    """The verdict on one layer: ``status`` ``"equal"`` (the same masks and values as purerigl's),
    ``"agrees"`` (differences all allowed: ties, random growth) or ``"differs"``; the counts; the
    positions only the user's or only purerigl's after mask holds (``unit``: positions, or diagonal
    offsets for diag-rigl); the findings. ``shape`` is the (n_out, n_in) matrix the rule ran on; for a
    convolution ``kernel_shape`` is its weight's shape without the first axis, e.g. (c_in, kh, kw), and
    column ``col`` of the filter matrix is ``numpy.unravel_index(col, kernel_shape)``."""

    layer: str
    method: str
    shape: tuple
    format: str
    status: str
    counts: dict
    unit: str
    only_yours: np.ndarray
    only_ours: np.ndarray
    findings: list
    kernel_shape: tuple | None = None

    @property
    def ok(self) -> bool:
        return self.status != "differs"


def _rule_counts(method: str, n: int, alpha) -> tuple[int, int, str]:
    """(drop, grow, the count in words) of the layer-wide methods, for n active units."""
    if method == "diag-rigl":
        q = min(n, max(1, floor_count(alpha, n))) if alpha > 0 and n > 0 else 0
        return q, q, f" (max(1, floor({alpha} * {n})) = {q} diagonals)"
    d = floor_count(alpha, n)
    return d, d, f" (floor({alpha} * {n}) = {d})"


def _diagonal_units(layer: LayerInput, G):
    """Per diagonal offset: (active before, in the after mask, |w| norm, |G| norm) as diag-rigl scores them,
    and the offsets the after mask holds only in part."""
    n_out, n_in = layer.mask.shape
    P, L = max(n_out, n_in), min(n_out, n_in)
    D = diagonal_ids(n_out, n_in).ravel()
    a = np.bincount(D, weights=layer.mask.ravel(), minlength=P) > 0
    cu = np.bincount(D, weights=layer.after_mask.ravel(), minlength=P)
    w = np.sqrt(np.bincount(D, weights=layer.weight.ravel().astype(np.float64) ** 2, minlength=P)).astype(np.float32)
    g = np.sqrt(np.bincount(D, weights=(G * G).ravel(), minlength=P)).astype(np.float32)
    partial = np.flatnonzero((cu != 0) & (cu != L))
    return a, cu > 0, w, g, partial


def _favoured_step(method, layer: LayerInput, W, G, alpha, salt, rng, prefer=None) -> Step:
    """The layer with every score replaced by its rank, ties ranked in the user's favour (module doc, 3):
    among equal |w| kept first what the user kept (or grew back), then what cannot be a regrowth
    (:func:`cannot_regrow`), then the smaller |G|; among equal |G| grown first what the user grew.
    ``prefer`` (SRigL): a pair of per-position preferences (larger first) for equal |w| after the
    user's choice, and for equal |G| before it, that steer the salient counts of neuron ablation."""
    a, u = layer.mask.ravel(), layer.after_mask.ravel()
    n_out, n_in = layer.mask.shape
    if method == "diag-rigl":
        _, du, dw, dg, _ = _diagonal_units(layer, G)
        wr = favoured_ranks(dw, du, cannot_regrow(dg, du), -dg)
        gr = favoured_ranks(dg, du)
        Wf = W.copy()
        Wf.values[...] = 0
        Wf.values[:, 0] = wr[W.offsets].astype(np.float32)  # the norm of a diagonal is its rank
        Gf = np.zeros((n_out, n_in))
        d = np.arange(max(n_out, n_in))
        if n_out >= n_in:
            Gf[d % n_out, 0] = gr  # element t = 0 of diagonal d
        else:
            Gf[0, d % n_in] = gr
    else:
        w, g = scores_of(layer.weight.ravel()), scores_of(G.ravel())
        pw, pg = (np.zeros(a.size), np.zeros(a.size)) if prefer is None else prefer
        cannot = cannot_regrow(g, u, n_in if method == "srigl" else None)
        wr = favoured_ranks(w, u, cannot, pw, -g)
        gr = favoured_ranks(g, pg, u)  # pg never reorders a row against u (see _salient_preferences)
        Wf = W.copy()
        Wf.values[...] = wr[positions(W)].reshape(W.values.shape).astype(np.float32)
        Gf = gr.reshape(n_out, n_in).astype(np.float64)
    return Step(Wf, None, None, alpha, salt=salt, budget=layer.budget, rng=rng, is_output=layer.is_output, G=Gf)


def _salient_preferences(layer: LayerInput, G, alpha, gamma_sal) -> list:
    """SRigL: tie orders for the salient set, whose counts per row decide neuron ablation (rows below
    tau = min(tau_0, the (m+1)-th largest count) are ablated; PAPERS.md 3.3), tried in turn.

    1. The user's active rows before their ablated ones.
    2. A greedy share of the tied picks of both top-n sets, one pick at a time: to the user's active
       rows short of tau_0 first, the nearest to it first; then where it changes no count (the
       position is salient already); then to the user's other active rows, the richest first
       (raising the top m counts leaves the cap on tau as it is); last to the user's ablated rows,
       the poorest first. Within a row the user's kept or grown positions go first, so that the order
       never ranks a row's positions against the user's growth.
    """
    n_out, n_in = layer.mask.shape
    mine = layer.after_mask.any(axis=1)
    a, u = layer.mask.ravel(), layer.after_mask.ravel()
    w, g = scores_of(layer.weight.ravel()), scores_of(G.ravel())
    n = int(a.sum())
    n_prune = floor_count(alpha, n)
    tau0 = int(np.ceil(gamma_sal)) if gamma_sal >= 1 else max(1, floor_count(gamma_sal, layer.budget // n_out))
    rows = np.repeat(mine.astype(np.float64), n_in)
    salient = np.zeros(a.size, dtype=bool)
    sets = []
    for score, where, size in ((w, a, n - n_prune), (g, np.ones_like(a), n_prune)):
        if size <= 0:
            sets.append((np.zeros_like(a), 0))
            continue
        t = np.sort(score[where])[::-1][size - 1]
        salient |= where & (score > t)
        tied = where & (score == t)
        sets.append((tied, size - int((where & (score > t)).sum())))
    count = salient.reshape(n_out, n_in).sum(axis=1)
    cannot = cannot_regrow(g, u, n_in)
    prefs = []
    for (tied, picks), by_user in zip(sets, (True, False)):
        # the spec ranks equal |w| by (user's, cannot regrow, preference), equal |G| by the preference
        tiers = [tied & u & cannot, tied & u & ~cannot, tied & ~u & cannot, tied & ~u & ~cannot] if by_user else [tied]
        chosen = np.zeros(a.size, dtype=bool)
        for tier in tiers:
            if picks <= 0:
                break
            pool = tier if int(tier.sum()) > picks else None
            for r, p in (_greedy_picks(pool, u, salient, count, mine, tau0, picks, n_in) if pool is not None
                         else ((int(p) // n_in, int(p)) for p in np.flatnonzero(tier))):
                chosen[p] = True
                picks -= 1
                if not salient[p]:
                    salient[p] = True
                    count[r] += 1
        prefs.append(chosen.astype(np.float64))
    return [(rows, rows), tuple(prefs)]


def ablation_within_ties(layer: LayerInput, G, alpha, gamma_sal) -> bool:
    """SRigL: whether the user's active rows pass a necessary test of being some tie order's neuron
    ablation. Per row the salient count lies between its sure entries (scores strictly inside the
    top-n sets) and those plus its tied ones (at most as many as the set still takes); tau =
    min(tau_0, the (m+1)-th largest count) then lies between the values from those bounds. Every
    user-active row must be able to reach the lowest tau, every ablated row to stay below the highest.
    (It ignores that the rows share the tied picks: a pass is not proof, a fail is.)"""
    n_out, n_in = layer.mask.shape
    mine = layer.after_mask.any(axis=1)
    if gamma_sal <= 0 or layer.is_output or layer.budget // n_in >= n_out:
        return bool(mine.all())  # the rule ablates nothing
    a = layer.mask.ravel()
    w, g = scores_of(layer.weight.ravel()), scores_of(G.ravel())
    n = int(a.sum())
    n_prune = floor_count(alpha, n)
    sure = np.zeros(a.size, dtype=bool)
    tied_sets = []
    for score, where, size in ((w, a, n - n_prune), (g, np.ones_like(a), n_prune)):
        if size > 0:
            t = np.sort(score[where])[::-1][size - 1]
            sure |= where & (score > t)
            tied_sets.append((where & (score == t), size - int((where & (score > t)).sum())))
    lo = sure.reshape(n_out, n_in).sum(axis=1)
    hi = lo.copy()
    for tied, picks in tied_sets:
        hi += np.minimum((tied & ~sure).reshape(n_out, n_in).sum(axis=1), picks)
    m = layer.budget // n_in
    tau0 = int(np.ceil(gamma_sal)) if gamma_sal >= 1 else max(1, floor_count(gamma_sal, layer.budget // n_out))
    tau_lo, tau_hi = min(tau0, int(np.sort(lo)[::-1][m])), min(tau0, int(np.sort(hi)[::-1][m]))
    return bool(np.all(hi[mine] >= tau_lo) and np.all(lo[~mine] < tau_hi))


def _greedy_picks(pool, u, salient, count, mine, tau0, picks, n_in):
    """(row, position) pairs of the greedy share in :func:`_salient_preferences` (counts read live)."""
    queues = {}
    for p in np.flatnonzero(pool):  # within a row: the user's first, then those salient already
        queues.setdefault(int(p) // n_in, []).append(int(p))
    for r in queues:
        queues[r].sort(key=lambda p: (not u[p], not salient[p], p))
        queues[r].reverse()  # pop() from the end

    def priority(r):
        neutral = salient[queues[r][-1]]
        if mine[r] and count[r] < tau0 and not neutral:
            return (4, count[r])
        if neutral:
            return (3, 0)
        return (2, count[r]) if mine[r] else (1, -count[r])

    for _ in range(max(0, picks)):
        live = [r for r in queues if queues[r]]
        if not live:
            return
        r = max(live, key=priority)
        yield r, queues[r].pop()


def _run_spec(method: str, step: Step, gamma_sal: float, layer: LayerInput):
    """The specification's update (``gamma_sal`` for srigl); a layer it refuses is bad input."""
    try:
        return spec_update(method, step, **({"gamma_sal": gamma_sal} if method == "srigl" else {}))
    except PureriglError as err:  # SpecError, or a structure the update cannot build (an empty SRigL layer)
        raise VerifyInputError(f"layer {layer.name!r}: {err}") from None


def verify_layer(method: str, layer: LayerInput, alpha, *, gamma_sal: float = 0.3, salt: int = 0) -> LayerReport:
    """Hold one user's update of one layer to ``method``'s specification (module doc): the verdict,
    the counts, the positions that differ from purerigl's own update, and the classified causes."""
    n_out, n_in = layer.mask.shape
    W = structure_of(method, layer.mask, layer.weight, where=f"layer {layer.name!r}")
    G = layer.G
    step = Step(W, None, None, alpha, salt=salt, budget=layer.budget, rng=np.random.default_rng(salt),
                is_output=layer.is_output, G=G)
    ours = _run_spec(method, step, gamma_sal, layer)
    O = _mask_of(ours.W)
    u = layer.after_mask.ravel()
    counts = _counts(method, layer, ours, O, alpha)
    findings = value_findings(layer)
    unit = "diagonal" if method == "diag-rigl" else "position"
    partial = np.zeros(0, np.int64)
    if method == "diag-rigl":
        _, du, _, _, partial = _diagonal_units(layer, G)
        ours_d = np.zeros_like(du)
        ours_d[ours.W.offsets] = True
        only_yours, only_ours = np.flatnonzero(du & ~ours_d), np.flatnonzero(ours_d & ~du)
    else:
        only_yours = np.flatnonzero(u & ~O.ravel())
        only_ours = np.flatnonzero(O.ravel() & ~u)

    structural = []
    if method in RANDOM_METHODS:
        structural = _random_method_findings(method, layer, alpha)
        if not structural and (only_yours.size or only_ours.size):
            structural = [_finding(RANDOM, f"{only_yours.size + only_ours.size} positions differ from purerigl's "
                                   "draw; every determined part agrees", np.concatenate([only_yours, only_ours]))]
    elif only_yours.size or only_ours.size or partial.size:
        first = None
        for pref in _salient_preferences(layer, G, alpha, gamma_sal) if method == "srigl" else [None]:
            fav = _run_spec(method, _favoured_step(method, layer, W, G, alpha, salt, np.random.default_rng(salt), pref),
                            gamma_sal, layer)
            F = _mask_of(fav.W).ravel()
            if np.array_equal(F, u):
                break
            if first is None:
                first = fav
        if np.array_equal(F, u):
            structural = [_finding(TIE, f"{only_yours.size + only_ours.size} {unit}s differ from purerigl's; "
                                   "with equal scores ranked your way the rule gives your masks exactly",
                                   np.concatenate([only_yours, only_ours]), unit)]
        else:
            fav, F = first, _mask_of(first.W).ravel()
            structural = _deterministic_findings(method, layer, fav, alpha)
            if method == "srigl" and ABLATION_DIFFERS in [f.cause for f in structural] and \
                    ablation_within_ties(layer, G, alpha, gamma_sal):
                structural = [f for f in structural if f.cause != ABLATION_DIFFERS]
                if not structural:
                    structural = [_finding(TIE, f"{only_yours.size + only_ours.size} positions differ from "
                                           "purerigl's; your neuron ablation lies within the ties of the salient "
                                           "counts, and given your active rows the rule gives your masks",
                                           np.concatenate([only_yours, only_ours]))]
            elif not structural:
                structural = [_finding(UNCLASSIFIED, f"{int((F != u).sum())} positions differ from the rule's "
                                       "result with ties in your favour", F != u)]
    findings = structural + findings
    status = "differs" if any(not f.allowed for f in findings) else ("agrees" if findings else "equal")
    return LayerReport(layer.name, method, (n_out, n_in), LAYER_FORMATS[method], status, counts, unit,
                       only_yours, only_ours, findings, layer.kernel_shape)


def _counts(method, layer: LayerInput, ours, O, alpha) -> dict:
    """The numbers a report shows: active before and after, gone and new, yours and purerigl's, and the
    rule's counts (drop, grow; SRigL's active rows and k; diag-rigl's diagonals)."""
    a, u, o = layer.mask.ravel(), layer.after_mask.ravel(), O.ravel()
    n = int(a.sum())
    counts = {"active_before": n, "active_after": int(u.sum()), "gone": int((a & ~u).sum()),
              "new": int((u & ~a).sum()), "ours_active_after": int(o.sum()), "ours_gone": int((a & ~o).sum()),
              "ours_new": int((o & ~a).sum())}
    if method == "diag-rigl":
        K = int(ours.W.offsets.size)
        q = _rule_counts(method, K, alpha)[0]
        counts.update(diagonals=K, rule_drop=q, rule_grow=q)
    elif method == "srigl":
        counts.update(rule_drop=floor_count(alpha, n), active_rows_before=int(layer.mask.any(axis=1).sum()),
                      active_rows_after=int(layer.after_mask.any(axis=1).sum()),
                      ours_active_rows=int(ours.stats["active_rows"]), ours_k=int(ours.stats["k"]))
    elif method == "gse":
        counts.update(rule_change_at_most=ceil_count(alpha, n))
    else:
        d = _rule_counts(method, n, alpha)[0]
        counts.update(rule_drop=d, rule_grow=d)
    return counts


def _position_name(layer: LayerInput):
    """Flat position -> "(row, col)", or a convolution's weight index "(filter, channel, i, j)"."""
    shape = (layer.mask.shape[0], *layer.kernel_shape) if layer.kernel_shape else layer.mask.shape
    return lambda p: "(" + ", ".join(str(int(v)) for v in np.unravel_index(int(p), shape)) + ")"


def _deterministic_findings(method, layer: LayerInput, fav, alpha) -> list[Finding]:
    """The causes for rigl, srigl and diag-rigl, once the favoured run showed a real difference."""
    a, u = layer.mask.ravel(), layer.after_mask.ravel()
    G = layer.G
    if method == "diag-rigl":
        da, du, dw, dg, partial = _diagonal_units(layer, G)
        out = []
        if partial.size:
            out.append(_finding(PARTIAL_DIAGONAL, f"{partial.size} diagonal(s) are held in part", partial, "diagonal"))
        q, _, text = _rule_counts(method, int(da.sum()), alpha)
        return out + layer_wide_findings(da, du, dw, dg, q, q, growth="regrow", unit="diagonal", count_text=text)
    w, g = scores_of(layer.weight.ravel()), scores_of(G.ravel())
    if method == "rigl":
        d, _, text = _rule_counts(method, int(a.sum()), alpha)
        return layer_wide_findings(a, u, w, g, d, d, growth="regrow", count_text=text, name_of=_position_name(layer))
    n_prune = floor_count(alpha, int(a.sum()))
    return srigl_findings(a, u, w, g, layer.mask.shape, layer.budget, n_prune, fav.W.rows.astype(np.int64))


def _random_method_findings(method, layer: LayerInput, alpha) -> list[Finding]:
    """SET and GSE: the drop, the counts, growth outside the kept set, GSE's scoring among candidates."""
    a, u = layer.mask.ravel(), layer.after_mask.ravel()
    w = scores_of(layer.weight.ravel())
    g = None if layer.G is None else scores_of(layer.G.ravel())
    n = int(a.sum())
    if method == "set":
        d, _, text = _rule_counts(method, n, alpha)
        return layer_wide_findings(a, u, w, None, d, d, growth="regrow", count_text=text,
                                   name_of=_position_name(layer))
    n_change = ceil_count(alpha, n)
    cand = None
    if layer.candidates is not None:
        cand = np.zeros(a.size, dtype=bool)
        cand[layer.candidates] = True
        k = min(n_change, int((cand & ~a).sum()))
        text = f" (min(ceil({alpha} * {n}), {int((cand & ~a).sum())} candidates) = {k})"
    else:  # the candidate count is unknown: at most ceil(alpha * n), as many as were grown
        k = min(n_change, int((u & ~a).sum()))
        text = f" (GSE drops as many as it grows, at most ceil({alpha} * {n}) = {n_change})"
    return layer_wide_findings(a, u, w, g if cand is not None else None, k, k, growth="new", candidates=cand,
                               count_text=text, name_of=_position_name(layer))


def verify_arrays(method: str, before: dict, after: dict, alpha, *, gamma_sal: float = 0.3, salt: int = 0,
                  before_name: str = "BEFORE", after_name: str = "AFTER") -> list[LayerReport]:
    """:func:`verify_layer` for every layer of two dicts of arrays (keys ``L.weight``, ``L.mask``, ...)."""
    layers = layer_inputs(method, before, after, before_name, after_name)
    return [verify_layer(method, layer, alpha, gamma_sal=gamma_sal, salt=salt) for layer in layers]


def verify_files(method: str, before_path, after_path, alpha, *, gamma_sal: float = 0.3,
                 salt: int = 0) -> list[LayerReport]:
    """:func:`verify_arrays` of two ``.npz`` / ``.safetensors`` files."""
    return verify_arrays(method, read_arrays(before_path), read_arrays(after_path), alpha, gamma_sal=gamma_sal,
                         salt=salt, before_name=str(before_path), after_name=str(after_path))


def report_dict(report: LayerReport) -> dict:
    """``report`` as JSON-ready data: positions as [row, col] pairs (a convolution's as
    [filter, channel, i, j], its weight's index), diagonals and rows as ints; ``weight_shape`` is the
    shape of the user's weight, ``shape`` the matrix the rule ran on."""
    n_in = report.shape[1]
    index_shape = (report.shape[0], *report.kernel_shape) if report.kernel_shape else report.shape

    def items(unit, a):
        a = np.asarray(a, dtype=np.int64)
        if unit != "position":
            return [int(v) for v in a]
        return np.stack(np.unravel_index(a, index_shape), axis=1).tolist() if a.size else []

    weight_shape = [report.shape[0], *report.kernel_shape] if report.kernel_shape else list(report.shape)
    return {
        "layer": report.layer, "method": report.method, "shape": list(report.shape),
        "weight_shape": weight_shape, "format": report.format,
        "status": report.status, "counts": report.counts, "unit": report.unit,
        "only_yours": items(report.unit, report.only_yours), "only_ours": items(report.unit, report.only_ours),
        "findings": [{"cause": str(f.cause), "allowed": f.allowed, "message": f.message, "unit": f.unit,
                      "items": items(f.unit, f.items)} for f in report.findings],
    }
