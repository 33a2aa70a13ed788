"""``purerigl verify-update`` (purerigl.dst.verify): a researcher's own update held to the method's rule.

Pins down:
- a correct masked-dense RigL and SRigL written here by another route than the package (dense arrays,
  ``argsort`` with a stable positional tie-break: lower flat index first, or higher first) agree:
  exit 0, differences reported as ``tie`` only, never as a failure;
- planted bugs get their cause: growth among kept positions, drop by signed value, new weights not
  zero, a regrown weight reset, alpha applied to the wrong count, no neuron ablation, a trim not by
  magnitude, growth outside GSE's candidates, part of a diagonal;
- SET and GSE: only the determined parts are checked (random growth is ``random``, allowed);
- the structure comes from the mask (an active weight that is exactly 0 stays active);
- bad input (a missing key, a wrong dtype or shape, a weight off its mask, an unknown file type, a
  mask the format cannot hold) exits 2 with one line naming the file, layer and key;
- ``--json`` carries the same verdict as data; ``.safetensors`` files read like ``.npz``;
- a specification scoring a given gradient (``Step.G``) equals one building it from X and dY.
Integer-valued float32 data keeps every score exact.
"""

from __future__ import annotations

import json
import re
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.cli._errors import PureriglGroup
from purerigl.cli.verify_update import verify_update
from purerigl.dst import verify as V
from purerigl.dst.spec import Step, positions, spec_update
from purerigl.formats import Condensed, Diagonal

# ----------------------------------------------------------------------------- the user's code, written here


def _n_prune(alpha, n):
    return math.floor(Fraction(str(alpha)) * n)


def _by_score(score, idx, higher_index_first=False):
    """``idx`` ordered by ``score`` descending; equal scores by flat index (a stable argsort)."""
    idx = np.asarray(idx)[::-1] if higher_index_first else np.asarray(idx)
    return idx[np.argsort(-score[idx], kind="stable")]


def rigl_masked_dense(W, mask, G, alpha, *, higher_index_first=False, signed_drop=False, grow_among_kept=False,
                      new_value=0.0, reset_regrown=False, n_prune=None):
    """One RigL step as a masked-dense implementation does it; the keywords plant bugs."""
    w, g, act = W.ravel(), G.ravel(), np.flatnonzero(mask.ravel())
    n_prune = _n_prune(alpha, act.size) if n_prune is None else n_prune
    drop_score = w.astype(np.float64) if signed_drop else np.abs(w).astype(np.float64)
    kept = _by_score(drop_score, act, higher_index_first)[: act.size - n_prune]
    grow_score = np.abs(g).astype(np.float64)
    if not grow_among_kept:
        grow_score[kept] = -np.inf
    grown = _by_score(grow_score, np.arange(w.size), higher_index_first)[:n_prune]
    new_mask = np.zeros(w.size, dtype=bool)
    new_mask[kept] = True
    new_mask[grown] = True
    new_w = np.where(new_mask, w, 0).astype(np.float32)
    new_w[new_mask & ~mask.ravel()] = new_value
    if reset_regrown:
        new_w[np.setdiff1d(grown, kept)] = 0.0
    return new_w.reshape(W.shape), new_mask.reshape(W.shape)


def srigl_masked_dense(W, mask, G, alpha, gamma_sal=0.3, *, budget=None, is_output=False, higher_index_first=False,
                       signed_drop=False, grow_among_kept=False, new_value=0.0, n_prune=None, ablate=True,
                       trim_by_index=False):
    """One SRigL step (constant fan-in, neuron ablation) on dense arrays; the keywords plant bugs."""
    n_out, n_in = W.shape
    aw, ag = np.abs(W).astype(np.float64), np.abs(G).astype(np.float64)
    n = int(mask.sum())
    C = n if budget is None else budget
    n_prune = _n_prune(alpha, n) if n_prune is None else n_prune
    n_keep = n - n_prune
    active = np.ones(n_out, dtype=bool)
    if ablate and gamma_sal > 0 and not is_output:
        salient = np.zeros(W.size, dtype=bool)
        salient[_by_score(aw.ravel(), np.flatnonzero(mask.ravel()), higher_index_first)[:n_keep]] = True
        salient[_by_score(ag.ravel(), np.arange(W.size), higher_index_first)[:n_prune]] = True
        count = salient.reshape(n_out, n_in).sum(axis=1)
        tau = math.ceil(gamma_sal) if gamma_sal >= 1 else max(1, _n_prune(gamma_sal, C // n_out))
        if C // n_in < n_out:
            active = count >= min(tau, sorted(count, reverse=True)[C // n_in])
    k = C // int(active.sum())
    drop_score = W.ravel().astype(np.float64) if signed_drop else aw.ravel()
    kept = np.zeros(W.size, dtype=bool)
    kept[_by_score(drop_score, np.flatnonzero((mask & active[:, None]).ravel()), higher_index_first)[:n_keep]] = True
    kept = kept.reshape(n_out, n_in)
    for r in range(n_out):  # trim
        cols = np.flatnonzero(kept[r])
        if cols.size > k:
            keep = cols[:k] if trim_by_index else _by_score(aw[r], cols, higher_index_first)[:k]
            kept[r] = False
            kept[r, keep] = True
    new_mask = kept.copy()
    for r in np.flatnonzero(active):  # grow per row
        score = ag[r].copy()
        if not grow_among_kept:
            score[kept[r]] = -np.inf
        new_mask[r, _by_score(score, np.arange(n_in), higher_index_first)[: k - int(kept[r].sum())]] = True
    new_w = np.where(new_mask, W, 0).astype(np.float32)
    new_w[new_mask & ~mask] = new_value
    return new_w, new_mask


# ----------------------------------------------------------------------------------------------- data


def _layer(seed, shape=(10, 12), density=0.4, values=3, constant_fan_in=False):
    """(W, mask, G): integer-valued float32, many ties when ``values`` is small; ``values=None``: no ties."""
    rng = np.random.default_rng(seed)
    n_out, n_in = shape
    if constant_fan_in:
        mask = np.zeros(shape, dtype=bool)
        k = max(1, round(density * n_in))
        for r in range(n_out):
            mask[r, rng.choice(n_in, k, replace=False)] = True
    else:
        mask = rng.random(shape) < density
    if values is None:
        sign = rng.choice([-1, 1], size=(2, n_out * n_in))
        W = ((rng.permutation(n_out * n_in) + 1) * sign[0]).reshape(shape) * mask
        G = ((rng.permutation(n_out * n_in) + 1) * sign[1]).reshape(shape)
    else:
        W = rng.integers(-values, values + 1, size=shape) * mask
        G = rng.integers(-values, values + 1, size=shape)
    return W.astype(np.float32), mask, G.astype(np.float32)


def _check(method, W, mask, G, W_after, mask_after, alpha, before_extra=None, **options):
    before = {"fc.weight": W, "fc.mask": mask}
    if G is not None:
        before["fc.grad"] = G
    before.update(before_extra or {})
    return V.verify_arrays(method, before, {"fc.weight": W_after, "fc.mask": mask_after}, alpha, **options)[0]


def _causes(report):
    return {str(f.cause) for f in report.findings}


def _failures(report):
    return {str(f.cause) for f in report.findings if not f.allowed}


def _group():
    group = PureriglGroup()
    group.add_command(verify_update)
    return group


def _cli(*args):
    return CliRunner().invoke(_group(), ["verify-update", *map(str, args)])


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


# -------------------------------------------------------------------------------------- correct updates


@pytest.mark.parametrize("seed", range(12))
def test_a_correct_rigl_agrees_whichever_way_it_breaks_ties(seed):
    rng = np.random.default_rng(seed)
    shape = [(10, 12), (12, 7), (1, 9), (9, 1), (6, 6)][seed % 5]
    alpha = [0.1, 0.3, 0.5, 1.0][seed % 4]
    W, mask, G = _layer(seed, shape, density=float(rng.choice([0.2, 0.6])), values=int(rng.choice([1, 2, 5])))
    for higher_first in (False, True):
        W_after, mask_after = rigl_masked_dense(W, mask, G, alpha, higher_index_first=higher_first)
        report = _check("rigl", W, mask, G, W_after, mask_after, alpha)
        assert report.ok, [f.message for f in report.findings]
        assert _causes(report) <= {"tie"}


def test_ties_broken_the_other_way_are_reported_and_allowed(tmp_path):
    W, mask, G = _layer(3, values=1)
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3, higher_index_first=True)
    report = _check("rigl", W, mask, G, W_after, mask_after, 0.3)
    assert report.status == "agrees" and _causes(report) == {"tie"}
    assert report.only_yours.size and report.only_ours.size
    before = _save(tmp_path / "before.npz", {"fc.weight": W, "fc.mask": mask, "fc.grad": G})
    after = _save(tmp_path / "after.npz", {"fc.weight": W_after, "fc.mask": mask_after})
    result = _cli("--method", "rigl", before, after, "--alpha", "0.3")
    assert result.exit_code == 0, result.output
    assert "fc (10 x 12, csr): agrees" in result.output and "tie [allowed]" in result.output
    assert "only in purerigl's: at (row, col)" in result.output


@pytest.mark.parametrize("seed", range(8))
def test_a_correct_srigl_agrees_with_and_without_ablation(seed):
    rng = np.random.default_rng(seed + 100)
    alpha = [0.1, 0.3, 0.5][seed % 3]
    W, mask, G = _layer(seed, (10, 12), density=float(rng.choice([0.2, 0.4])), values=int(rng.choice([1, 2, 5])),
                        constant_fan_in=True)
    for gamma_sal in (0.0, 0.3, 0.9, 2):
        for higher_first in (False, True):
            W_after, mask_after = srigl_masked_dense(W, mask, G, alpha, gamma_sal, higher_index_first=higher_first)
            report = _check("srigl", W, mask, G, W_after, mask_after, alpha, gamma_sal=gamma_sal)
            assert report.ok, (gamma_sal, higher_first, [f.message for f in report.findings])
            assert _causes(report) <= {"tie"}


def test_srigl_ablation_is_checked_and_the_output_layer_is_never_ablated():
    seen = 0
    for seed in range(8):
        W, mask, G = _layer(seed, (10, 12), density=0.3, values=None, constant_fan_in=True)
        W_after, mask_after = srigl_masked_dense(W, mask, G, 0.5, 0.9)
        assert _check("srigl", W, mask, G, W_after, mask_after, 0.5, gamma_sal=0.9).status == "equal"
        W_bad, mask_bad = srigl_masked_dense(W, mask, G, 0.5, 0.9, ablate=False)
        report = _check("srigl", W, mask, G, W_bad, mask_bad, 0.5, gamma_sal=0.9)
        if mask_after.any(axis=1).all():
            continue  # nothing ablated: the bug is invisible
        seen += 1
        assert "ablation-differs" in _failures(report)
        finding = next(f for f in report.findings if f.cause == V.ABLATION_DIFFERS)
        assert finding.unit == "row" and set(finding.items) == set(np.flatnonzero(~mask_after.any(axis=1)))
        output = _check("srigl", W, mask, G, W_bad, mask_bad, 0.5, {"fc.is_output": np.bool_(True)}, gamma_sal=0.9)
        assert output.status == "equal"  # told it is the output layer, the rule ablates nothing either
    assert seen >= 3


def test_structure_comes_from_the_mask_not_from_nonzero_values():
    W, mask, G = _layer(5, values=1)  # a third of the active weights are exactly 0
    assert np.any(mask & (W == 0))
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3)
    report = _check("rigl", W, mask, G, W_after, mask_after, 0.3)
    assert report.ok and report.counts["active_before"] == int(mask.sum())


def test_x_and_dy_score_like_the_gradient_they_make():
    rng = np.random.default_rng(4)
    W, mask, _ = _layer(4)
    X = rng.integers(-2, 3, size=(5, 12)).astype(np.float32)
    dY = rng.integers(-2, 3, size=(5, 10)).astype(np.float32)
    G = (dY.T @ X).astype(np.float32)
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3)
    with_grad = _check("rigl", W, mask, G, W_after, mask_after, 0.3)
    with_batch = _check("rigl", W, mask, None, W_after, mask_after, 0.3, {"fc.x": X, "fc.dy": dY})
    assert with_grad.ok and V.report_dict(with_grad) == V.report_dict(with_batch)


# ---------------------------------------------------------------------------------------- planted bugs

RIGL_BUGS = [
    ({"grow_among_kept": True}, {"grew-kept"}),
    ({"signed_drop": True}, {"drop-not-by-magnitude"}),
    ({"new_value": 0.5}, {"new-weight-not-zero"}),
    ({"reset_regrown": True}, {"kept-weight-changed"}),
]


@pytest.mark.parametrize("bug, causes", RIGL_BUGS, ids=lambda v: str(v))
def test_planted_rigl_bugs_get_their_cause(bug, causes):
    seen = 0
    for seed in range(6):
        W, mask, G = _layer(seed, density=0.5, values=None)
        W_right, mask_right = rigl_masked_dense(W, mask, G, 0.5)
        W_bug, mask_bug = rigl_masked_dense(W, mask, G, 0.5, **bug)
        report = _check("rigl", W, mask, G, W_bug, mask_bug, 0.5)
        if np.array_equal(W_bug, W_right) and np.array_equal(mask_bug, mask_right):
            assert report.status == "equal"  # this data hides the bug
            continue
        seen += 1
        assert report.status == "differs" and _failures(report) == causes, [f.message for f in report.findings]
    assert seen >= 3


@pytest.mark.parametrize("count, causes", [
    (lambda alpha, mask: _n_prune(alpha, mask.size), {"too-many-dropped", "too-many-grown"}),  # the dense size
    (lambda alpha, mask: _n_prune(alpha, mask.shape[0]), {"too-few-dropped", "too-few-grown"}),  # the rows
], ids=["dense-size", "rows"])
def test_alpha_applied_to_the_wrong_count(count, causes):
    for seed in range(4):
        W, mask, G = _layer(seed, (10, 12), density=0.4, values=None)
        W_bug, mask_bug = rigl_masked_dense(W, mask, G, 0.1, n_prune=count(0.1, mask))
        report = _check("rigl", W, mask, G, W_bug, mask_bug, 0.1)
        assert _failures(report) == causes, [f.message for f in report.findings]
        dropped = next(f for f in report.findings if "dropped" in f.cause)
        assert f"the rule drops {_n_prune(0.1, int(mask.sum()))}" in dropped.message


SRIGL_BUGS = [
    ({"signed_drop": True}, {"drop-not-by-magnitude"}),
    ({"new_value": -1.0}, {"new-weight-not-zero"}),
    ({"n_prune": 10}, {"too-many-dropped"}),
]


@pytest.mark.parametrize("bug, causes", SRIGL_BUGS, ids=lambda v: str(v))
def test_planted_srigl_bugs_get_their_cause(bug, causes):
    for seed in range(4):
        W, mask, G = _layer(seed, (10, 12), density=0.4, values=None, constant_fan_in=True)
        W_bug, mask_bug = srigl_masked_dense(W, mask, G, 0.1, 0.0, **bug)
        report = _check("srigl", W, mask, G, W_bug, mask_bug, 0.1, gamma_sal=0.0)
        assert _failures(report) == causes, [f.message for f in report.findings]


def test_srigl_growth_among_kept_positions_breaks_the_fan_in():
    seen = 0
    for seed in range(6):
        W, mask, G = _layer(seed, (10, 12), density=0.4, values=None, constant_fan_in=True)
        W_bug, mask_bug = srigl_masked_dense(W, mask, G, 0.3, 0.0, grow_among_kept=True)
        report = _check("srigl", W, mask, G, W_bug, mask_bug, 0.3, gamma_sal=0.0)
        if report.status == "equal":
            continue
        seen += 1
        assert _failures(report) == {"broken-fan-in", "grew-kept"}
    assert seen >= 3


def test_srigl_trim_not_by_magnitude_is_a_trimmed_row():
    for seed in range(4):  # two ablated rows before: reviving them lowers k from 5 to 4, so rows are trimmed
        rng = np.random.default_rng(seed)
        _, _, G = _layer(seed, (10, 12), values=None)
        mask = np.zeros((10, 12), dtype=bool)
        for r in range(8):
            mask[r, rng.choice(12, 5, replace=False)] = True
        W = ((rng.permutation(120).reshape(10, 12) + 1) * mask).astype(np.float32)
        W_right, mask_right = srigl_masked_dense(W, mask, G, 0.1, 0.0)
        assert _check("srigl", W, mask, G, W_right, mask_right, 0.1, gamma_sal=0.0).status == "equal"
        W_bug, mask_bug = srigl_masked_dense(W, mask, G, 0.1, 0.0, trim_by_index=True)
        assert _failures(_check("srigl", W, mask, G, W_bug, mask_bug, 0.1, gamma_sal=0.0)) == {"trimmed-row"}


def _purerigl_after(method, W, mask, G, alpha, salt=0, seed=0, **options):
    """purerigl's own update as masked-dense arrays (what a correct user implementation gives)."""
    S = V.structure_of(method, mask, W)
    out = spec_update(method, Step(S, None, None, alpha, salt=salt, budget=int(mask.sum()),
                                   rng=np.random.default_rng(seed), G=G.astype(np.float64)), **options)
    mask_after = np.zeros(mask.size, dtype=bool)
    mask_after[positions(out.W)] = True
    mask_after = mask_after.reshape(mask.shape)
    return np.where(mask_after, out.W.to_dense(), 0).astype(np.float32), mask_after


def _diagonal_layer(seed, shape):
    rng = np.random.default_rng(seed)
    D = Diagonal.random(shape, 0.4, rng)
    D.values[...] = rng.integers(-2, 3, size=D.values.shape)
    mask = np.zeros(shape, dtype=bool)
    mask[D.positions()] = True
    return D.to_dense().astype(np.float32), mask, rng.integers(-2, 3, size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(8, 12), (12, 8), (9, 9)])
def test_diag_rigl_whole_diagonals(shape):
    W, mask, G = _diagonal_layer(1, shape)
    W_after, mask_after = _purerigl_after("diag-rigl", W, mask, G, 0.5, salt=77)  # ties broken another way
    assert _check("diag-rigl", W, mask, G, W_after, mask_after, 0.5).ok
    new = np.argwhere(mask_after & ~mask)
    partial = mask_after.copy()
    partial[tuple(new[0])] = False
    report = _check("diag-rigl", W, mask, G, W_after * partial, partial, 0.5)
    assert "partial-diagonal" in _failures(report)
    assert next(f for f in report.findings if f.cause == V.PARTIAL_DIAGONAL).unit == "diagonal"
    W_new = W_after.copy()
    W_new[mask_after & ~mask] = 1.0
    assert _failures(_check("diag-rigl", W, mask, G, W_new, mask_after, 0.5)) == {"new-weight-not-zero"}


def test_set_checks_only_what_is_determined():
    W, mask, G = _layer(2, values=2)
    W_after, mask_after = _purerigl_after("set", W, mask, G, 0.3, seed=11)  # another random draw
    report = _check("set", W, mask, None, W_after, mask_after, 0.3)  # SET needs no gradient
    assert report.status in ("equal", "agrees") and _causes(report) <= {"random"}
    W_bug, mask_bug = _purerigl_after("rigl", W, mask, G, 0.5)
    assert _failures(_check("set", W, mask, None, W_bug, mask_bug, 0.3)) == {"too-many-dropped", "too-many-grown"}


def _gse_masked_dense(W, mask, G, alpha, candidates, *, best=True):
    """GSE on dense arrays: grow the top |G| of the candidates inactive before, drop as many smallest |w|."""
    act = np.flatnonzero(mask.ravel())
    S = np.setdiff1d(candidates, act)
    k = min(math.ceil(Fraction(str(alpha)) * act.size), S.size)
    order = _by_score(np.abs(G.ravel()).astype(np.float64), S)
    grown = order[:k] if best else order[::-1][:k]
    kept = _by_score(np.abs(W.ravel()).astype(np.float64), act)[: act.size - k]
    new_mask = np.zeros(W.size, dtype=bool)
    new_mask[kept] = True
    new_mask[grown] = True
    return np.where(new_mask, W.ravel(), 0).astype(np.float32).reshape(W.shape), new_mask.reshape(W.shape)


def test_gse_scoring_among_the_candidates():
    W, mask, G = _layer(6, values=None)
    candidates = np.random.default_rng(6).choice(W.size, 40, replace=False)
    extra = {"fc.candidates": candidates.astype(np.int64)}
    W_after, mask_after = _gse_masked_dense(W, mask, G, 0.2, candidates)
    assert _check("gse", W, mask, G, W_after, mask_after, 0.2, extra).ok
    W_bug, mask_bug = _gse_masked_dense(W, mask, G, 0.2, candidates, best=False)
    assert _failures(_check("gse", W, mask, G, W_bug, mask_bug, 0.2, extra)) == {"growth-not-by-gradient"}
    fewer = {"fc.candidates": candidates[:20].astype(np.int64)}  # grown positions outside these
    assert "growth-outside-candidates" in _failures(_check("gse", W, mask, G, W_after, mask_after, 0.2, fewer))
    random = _check("gse", W, mask, G, W_after, mask_after, 0.2)  # without candidates: the draw is unknown
    assert random.ok and _causes(random) <= {"random"}


# ------------------------------------------------------------------------------------------- the CLI


def _files(tmp_path, before, after, suffix=".npz"):
    b, a = tmp_path / f"before{suffix}", tmp_path / f"after{suffix}"
    _save(b, before)
    _save(a, after)
    return b, a


def _two_layers():
    W1, m1, G1 = _layer(1, values=None)
    W2, m2, G2 = _layer(2, values=None)
    a1 = rigl_masked_dense(W1, m1, G1, 0.3)
    a2 = rigl_masked_dense(W2, m2, G2, 0.3, signed_drop=True)
    before = {"fc1.weight": W1, "fc1.mask": m1, "fc1.grad": G1, "fc2.weight": W2, "fc2.mask": m2, "fc2.grad": G2}
    after = {"fc1.weight": a1[0], "fc1.mask": a1[1], "fc2.weight": a2[0], "fc2.mask": a2[1]}
    return before, after


def test_cli_exit_codes_and_json(tmp_path):
    before, after = _two_layers()
    b, a = _files(tmp_path, before, after)
    text = _cli("--method", "rigl", b, a, "--alpha", "0.3")
    assert text.exit_code == 1
    assert "fc1 (10 x 12, csr): equal" in text.output and "fc2 (10 x 12, csr): DIFFERS" in text.output
    assert "drop-not-by-magnitude [FAIL]" in text.output and "1 of 2 layers agree; 1 differ" in text.output
    data = _cli("--method", "rigl", b, a, "--alpha", "0.3", "--json")
    assert data.exit_code == 1
    report = json.loads(data.output)
    assert report["status"] == "differs" and report["exit_code"] == 1
    fc1, fc2 = report["layers"]
    assert fc1["status"] == "equal" and fc1["findings"] == []
    assert fc2["status"] == "differs" and [f["cause"] for f in fc2["findings"]] == ["drop-not-by-magnitude"]
    assert all(len(p) == 2 for p in fc2["findings"][0]["items"])  # [row, col]
    assert fc2["counts"]["rule_drop"] == _n_prune(0.3, int(before["fc2.mask"].sum()))
    only_first = _files(tmp_path, {k: v for k, v in before.items() if k.startswith("fc1")},
                        {k: v for k, v in after.items() if k.startswith("fc1")})
    ok = _cli("--method", "rigl", *only_first, "--alpha", "0.3", "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["status"] == "equal"


def test_safetensors_round_trip(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    before, after = _two_layers()
    b, a = tmp_path / "before.safetensors", tmp_path / "after.safetensors"
    save_file(before, str(b))
    save_file(after, str(a))
    npz = _files(tmp_path, before, after)
    from_st = _cli("--method", "rigl", b, a, "--alpha", "0.3", "--json")
    from_npz = _cli("--method", "rigl", *npz, "--alpha", "0.3", "--json")
    assert from_st.exit_code == from_npz.exit_code == 1
    layers = lambda out: json.loads(out)["layers"]  # noqa: E731
    assert layers(from_st.output) == layers(from_npz.output)


def _bad(tmp_path, method, before, after, *fragments):
    b, a = _files(tmp_path, before, after)
    result = _cli("--method", method, b, a, "--alpha", "0.3")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_bad_input_exits_2_with_one_line_naming_the_item(tmp_path):
    W, mask, G = _layer(0, values=None)
    good_b = {"fc.weight": W, "fc.mask": mask, "fc.grad": G}
    good_a = {"fc.weight": W, "fc.mask": mask}
    _bad(tmp_path, "rigl", good_b, {"fc.weight": W}, "after.npz", "'fc'", "'fc.mask'")
    _bad(tmp_path, "rigl", {**good_b, "fc.weight": W.astype(np.float64)}, good_a, "before.npz", "'fc.weight'",
         "float64")
    _bad(tmp_path, "rigl", good_b, {**good_a, "fc.mask": mask[:, :5]}, "after.npz", "'fc.mask'", "shape")
    off = W.copy()
    off[~mask] = 1.0
    _bad(tmp_path, "rigl", {**good_b, "fc.weight": off}, good_a, "before.npz", "'fc.weight'", "off fc.mask")
    _bad(tmp_path, "rigl", {"fc.weight": W, "fc.mask": mask}, good_a, "'fc.grad'")
    _bad(tmp_path, "rigl", {**good_b, "fc.mask": np.where(mask, 2, 0)}, good_a, "'fc.mask'", "expected bool")
    _bad(tmp_path, "rigl", good_b, {**good_a, "out.weight": W, "out.mask": mask}, "'out'", "not in")
    _bad(tmp_path, "srigl", good_b, good_a, "before.npz", "'fc.mask'", "constant fan-in")
    _bad(tmp_path, "diag-rigl", good_b, good_a, "before.npz", "'fc.mask'", "whole wrap-around diagonals")
    txt = tmp_path / "before.txt"
    txt.write_text("not arrays")
    result = _cli("--method", "rigl", txt, tmp_path / "after.npz", "--alpha", "0.3")
    assert result.exit_code == 2 and "before.txt" in result.output and "unknown file type" in result.output


def test_the_command_is_registered():
    from purerigl.cli.main import COMMANDS

    assert verify_update in COMMANDS


# ---------------------------------------------------------------------------------- library pieces


def test_every_cause_is_named_and_explained_in_the_code_and_in_docs_verify_md():
    names = [str(c) for c in V.CAUSES]
    assert len(set(names)) == len(names)
    assert all(isinstance(c, V.Cause) and len(c.__doc__) > 60 for c in V.CAUSES)
    assert {str(c) for c in V.CAUSES if c.allowed} == {"tie", "random"}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "verify.md").read_text(encoding="utf-8")
    assert [n for n in names if f"| `{n}` |" not in docs] == []


@pytest.mark.parametrize("method, fmt, options", [
    ("rigl", "csr", {}), ("srigl", "condensed", {"gamma_sal": 0.3}), ("diag-rigl", "diagonal", {}),
    ("gse", "csr", {}),
])
def test_a_specification_scoring_a_given_gradient_equals_one_building_it(method, fmt, options):
    rng = np.random.default_rng(8)
    from purerigl.formats import FORMATS

    W = FORMATS[fmt].random((9, 11), 0.4, rng)
    W.values[...] = rng.integers(-3, 4, size=W.values.shape)
    X = rng.integers(-2, 3, size=(4, 11)).astype(np.float32)
    dY = rng.integers(-2, 3, size=(4, 9)).astype(np.float32)
    common = dict(salt=3, budget=W.nnz)
    built = spec_update(method, Step(W, X, dY, 0.5, rng=np.random.default_rng(1), **common), **options)
    given = spec_update(method, Step(W, None, None, 0.5, rng=np.random.default_rng(1), G=dY.T.astype(np.float64) @ X,
                                     **common), **options)
    assert np.array_equal(positions(built.W), positions(given.W))
    assert np.array_equal(built.W.values, given.W.values)
    assert isinstance(built.W, (type(W), Condensed))


# --------------------------------------------------------------------------------------------------
# docs/verify.md's PyTorch dump, run as a user would


def _doc_python_block() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "verify.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "docs/verify.md: the PyTorch dump is its one python block"
    return blocks[0]


def test_the_docs_pytorch_dump_verifies(tmp_path, monkeypatch):
    """docs/verify.md's dump code, run inside a small PyTorch training loop around a correct
    masked-dense RigL written here: the files it writes verify as agreeing (exit 0), and a RigL that
    grows among the kept positions, dumped the same way, is caught (exit 1)."""
    torch = pytest.importorskip("torch")

    def rigl_update(model, masks, alpha, grow_among_kept=False):
        with torch.no_grad():
            for name, mask in masks.items():
                weight = getattr(model, name).weight
                n = int(mask.sum())
                n_prune = math.floor(alpha * n)
                flat_w = torch.where(mask, weight.abs(), torch.full_like(weight, math.inf)).flatten()
                dropped = torch.argsort(flat_w, stable=True)[:n_prune]  # smallest |w| among the active
                kept = mask.flatten().clone()
                kept[dropped] = False
                score = weight.grad.abs().flatten()
                eligible = torch.ones_like(kept) if grow_among_kept else ~kept
                grown = torch.argsort(torch.where(eligible, score, torch.full_like(score, -1.0)),
                                      descending=True, stable=True)[:n_prune]
                new = kept.clone()
                new[grown] = True
                new_only = new & ~mask.flatten()
                weight.copy_((weight.flatten() * new * ~new_only).reshape(weight.shape))
                mask.copy_(new.reshape(mask.shape))

    for bug, exit_code in ((False, 0), (True, 1)):
        torch.manual_seed(0)
        model = torch.nn.Module()
        model.fc1, model.fc2 = torch.nn.Linear(8, 6, bias=False), torch.nn.Linear(6, 4, bias=False)
        masks = {name: torch.rand(getattr(model, name).weight.shape) < 0.5 for name in ("fc1", "fc2")}
        with torch.no_grad():
            for name, mask in masks.items():
                getattr(model, name).weight.mul_(mask)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
        loss = torch.nn.functional.cross_entropy(model.fc2(torch.relu(model.fc1(x))), y)
        monkeypatch.chdir(tmp_path)
        namespace = dict(
            model=model, masks=masks, loss=loss, optimizer=optimizer, step=100, delta_t=100, t_end=750,
            drop_fraction=lambda step: 0.3 * (1 + math.cos(math.pi * step / 750)) / 2,
            my_mask_update=lambda model, masks, alpha: rigl_update(model, masks, alpha, grow_among_kept=bug),
        )
        exec(_doc_python_block(), namespace)  # noqa: S102 - the documented user code
        result = _cli("--method", "rigl", tmp_path / "before.npz", tmp_path / "after.npz",
                         "--alpha", repr(namespace["alpha"]))
        assert result.exit_code == exit_code, result.output
        if bug:
            assert "grew-kept" in result.output
