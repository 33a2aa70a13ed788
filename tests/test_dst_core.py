"""The shared DST machinery: schedule, the topology-change step, the tie rule, RigL, SET, the updater.

Brute-force expectations are computed here from dense matrices in float64 (small layers only), a
route independent of the streamed kernels the methods call.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from purerigl import CSR, Condensed, Diagonal
from purerigl.dst import METHODS, LayerUpdate, MethodError, UpdateSchedule, make_method, resolve_format
from purerigl.dst.rigl import RigL
from purerigl.formats._base import floor_count
from purerigl.dst.schedule import ScheduleError, drop_fraction, is_update_step
from purerigl.dst.set_method import SET, random_free_positions
from purerigl.dst.topology import apply_structure, rank_order
from purerigl.kernels.host_topology import csr_from_positions, flat_positions, source_of, top_mask
from purerigl.dst.updater import DSTUpdater
from purerigl.kernels._rank_key import tie_rank, tie_ranks
from purerigl.nn import SparseLinear, build_mlp, softmax_cross_entropy
from purerigl.optim import SGD, Adam

BACKENDS = ["reference", "cpu"]


# --------------------------------------------------------------------------------------------------
# schedule (PAPERS.md 7, invariant 13)


def test_drop_fraction_cosine_points():
    """alpha_t is alpha at t = 0, alpha / 2 at t_end / 2 and 0 at (and after) t_end."""
    assert drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    assert drop_fraction(1000, 0.3, 1000) == 0.0
    assert drop_fraction(5000, 0.3, 1000) == 0.0


@given(st.integers(1, 50), st.integers(1, 500))
def test_update_steps_are_multiples_of_delta_t_up_to_t_end(delta_t, t_end):
    """Updates happen exactly at t = delta_t, 2 delta_t, ... <= t_end, never at t = 0."""
    steps = [t for t in range(0, t_end + 3 * delta_t) if is_update_step(t, delta_t, t_end)]
    assert steps == list(range(delta_t, t_end + 1, delta_t))


def test_schedule_from_fraction_and_errors():
    s = UpdateSchedule.from_fraction(1000, delta_t=10, alpha=0.3, t_end=0.75)
    assert s.t_end == 750 and s.is_update_step(750) and not s.is_update_step(760)
    for kwargs in ({"delta_t": 0}, {"alpha": 1.5}, {"alpha": -0.1}):
        with pytest.raises(ScheduleError):
            UpdateSchedule.from_fraction(1000, **kwargs)
    for t_end in (0.0, 1.5):
        with pytest.raises(ScheduleError, match="t_end"):
            UpdateSchedule.from_fraction(1000, t_end=t_end)


# --------------------------------------------------------------------------------------------------
# tie rule and the shared topology step


@pytest.mark.parametrize("salt", [0, 1, 12345, 2**32 - 1])
def test_rank_order_breaks_ties_by_tie_rank(salt):
    """Higher score first; among the three equal scores 3.0 the order is that of their tie ranks
    ``tie_rank(p, salt)``, not of their positions."""
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    tied = np.array([1, 2, 4])
    by_rank = tied[np.argsort(tie_ranks(tied, salt))].tolist()
    assert rank_order(scores, salt=salt).tolist() == by_rank + [3, 0]
    positions = np.array([40, 7, 19, 3, 11])  # explicit positions: the ranks of 7, 19, 11
    tied_pos = positions[tied]
    expect = tied[np.argsort(tie_ranks(tied_pos, salt))].tolist() + [3, 0]
    assert rank_order(scores, positions, salt=salt).tolist() == expect


def test_rank_order_tie_order_depends_on_salt():
    """The salt permutes the tie order: over a few salts the first of 8 equal scores is not always 0."""
    firsts = {int(rank_order(np.zeros(8), salt=s)[0]) for s in range(16)}
    assert len(firsts) > 1


def test_top_mask_without_ties_prefers_lower_index():
    """top_mask's own default (no tie ranks given): the lower index among equal scores."""
    assert top_mask(np.array([2.0, 2.0, 2.0]), 2).tolist() == [True, True, False]
    assert top_mask(np.array([2.0, 2.0, 2.0]), 2, ties=np.array([5, 1, 3])).tolist() == [False, True, True]


def _layer_with_momentum(W, seed=0):
    layer = SparseLinear(W, backend="reference", name="l")
    opt = SGD(layer.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(seed)
    layer.weight.grad[...] = rng.standard_normal(layer.weight.value.shape).astype(np.float32)
    opt.step()
    return layer, opt


@pytest.mark.parametrize("make", [
    lambda: CSR.random((6, 9), 0.4, 1),
    lambda: Condensed.random((6, 9), 0.4, 1),
    lambda: Diagonal.random((6, 9), 0.4, 1),
])
def test_apply_structure_keeps_old_and_zeroes_new(make):
    """Positions present before and after keep value and momentum bit-exactly (whether the method
    'kept' them or dropped and regrew them); new ones get value 0 and momentum 0."""
    layer, opt = _layer_with_momentum(make())
    old = layer.W.copy()
    old_flat = flat_positions(old)
    old_val = dict(zip(old_flat.tolist(), old.values.ravel().tolist()))
    old_mom = dict(zip(old_flat.tolist(), opt.state_arrays(layer.weight)["momentum_buffer"].ravel().tolist()))
    # new structure: half the old positions plus some fresh ones, as CSR
    rng = np.random.default_rng(3)
    keep = rng.choice(old_flat, size=old_flat.size // 2, replace=False)
    fresh = random_free_positions(rng, 54, np.sort(old_flat), 5)
    new = csr_from_positions(np.concatenate([keep, fresh]), (6, 9))
    stats = apply_structure(layer, opt, new)
    assert stats == {"kept": keep.size, "grown": 5, "dropped": old_flat.size - keep.size}
    assert layer.W is new and layer.weight.value is new.values
    mom = opt.state_arrays(layer.weight)["momentum_buffer"]
    for e, pos in enumerate(flat_positions(new).tolist()):
        want_v, want_m = (old_val[pos], old_mom[pos]) if pos in old_val else (0.0, 0.0)
        assert new.values.ravel()[e] == np.float32(want_v)
        assert mom.ravel()[e] == np.float32(want_m)


@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0]), min_size=0, max_size=40),  # few values: many ties
    st.integers(-2, 45),
    st.one_of(st.just(0), st.just(2**32 - 1), st.integers(0, 2**32 - 1)),
    st.data(),
)
def test_top_mask_selects_the_first_n_of_rank_order(values, n, salt, data):
    """rank_order is the full sort by (larger score, smaller ``tie_rank(position, salt)``), and the
    selection in top_mask, given those tie ranks, picks exactly the set rank_order puts first.
    Without tie ranks top_mask breaks ties by the lower index."""
    scores = np.array(values, dtype=np.float32)
    positions = np.array(
        data.draw(st.lists(st.integers(0, 2**32 - 1), unique=True, min_size=scores.size, max_size=scores.size)),
        dtype=np.int64,
    )
    order = rank_order(scores, positions, salt)
    by_hand = sorted(range(scores.size), key=lambda e: (-float(scores[e]), int(tie_rank(int(positions[e]), salt))))
    assert order.tolist() == by_hand
    want = np.zeros(scores.size, dtype=bool)
    want[order[: max(n, 0)]] = True
    assert np.array_equal(top_mask(scores, n, tie_ranks(positions, salt)), want)
    by_index = np.zeros(scores.size, dtype=bool)  # ties=None: the indices are the tie ranks
    by_index[sorted(range(scores.size), key=lambda e: (-float(scores[e]), e))[: max(n, 0)]] = True
    assert np.array_equal(top_mask(scores, n), by_index)


@given(st.lists(st.integers(0, 30), max_size=20), st.lists(st.integers(-5, 35), max_size=30))
def test_in_sorted_is_np_isin(taken, values):
    from purerigl.kernels.host_selection import in_sorted

    taken = np.unique(np.array(taken, dtype=np.int64))
    values = np.array(values, dtype=np.int64)
    assert np.array_equal(in_sorted(values, taken), np.isin(values, taken))


def test_source_of_matches_positions_across_formats():
    """source_of maps a Diagonal's entries onto the same positions of its Condensed form."""
    D = Diagonal.random((5, 12), 0.3, 2)
    C = D.to_condensed()
    src = source_of(D, C)
    assert (src >= 0).all()
    assert np.array_equal(D.values.ravel()[src.ravel()], C.values.ravel())


def test_source_of_an_empty_old_structure_marks_every_entry_new():
    """Nothing stored before (an empty CSR): every entry of the new structure has no source (-1)."""
    empty = CSR(np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (3, 5))
    new = CSR.random((3, 5), 0.4, 1)
    assert np.array_equal(source_of(empty, new), np.full(new.values.shape, -1))
    assert source_of(new, empty).shape == (0,)


def test_apply_structure_with_adam_state():
    layer = SparseLinear(CSR.random((4, 5), 0.5, 0), backend="reference")
    opt = Adam(layer.parameters(), lr=0.01)
    layer.weight.grad[...] = 1.0
    opt.step()
    flat = flat_positions(layer.W)
    new = csr_from_positions(np.concatenate([flat[1:], random_free_positions(np.random.default_rng(0), 20, flat, 1)]), (4, 5))
    apply_structure(layer, opt, new)
    st_ = opt.state_arrays(layer.weight)
    new_entry = ~np.isin(flat_positions(new), flat)
    assert (st_["exp_avg"][new_entry] == 0).all() and (st_["exp_avg_sq"][new_entry] == 0).all()
    assert (st_["exp_avg"][~new_entry] != 0).all()


# --------------------------------------------------------------------------------------------------
# RigL and SET on CSR


def _trained_csr_layer(backend, shape=(7, 11), density=0.35, batch=5, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    W = CSR.random(shape, density, seed)
    if ties:  # magnitudes and gradients from a small set: many exact ties
        W.values[...] = rng.choice([-1.0, -0.5, 0.5, 1.0], W.nnz).astype(np.float32)
    layer = SparseLinear(W, backend=backend)
    X = (rng.integers(-2, 3, (batch, shape[1])) if ties else rng.standard_normal((batch, shape[1]))).astype(np.float32)
    dY = (rng.integers(-2, 3, (batch, shape[0])) if ties else rng.standard_normal((batch, shape[0]))).astype(np.float32)
    layer.forward(X)
    layer.backward(dY)
    opt = SGD(layer.parameters(), lr=0.01, momentum=0.9)
    opt.step()
    return layer, opt, X.astype(np.float64), dY.astype(np.float64)


def _brute_force_rigl(W, X, dY, alpha, salt=0):
    """Kept and grown flat position sets by the rule, on dense arrays (float64); equal scores go to the
    smaller ``tie_rank(flat, salt)``."""
    n = W.nnz
    n_prune = floor_count(alpha, n)
    flat = flat_positions(W)
    order = np.argsort(flat)
    flat, mag = flat[order], np.abs(W.values.astype(np.float64)[order])
    keep_idx = np.lexsort((tie_ranks(flat, salt), -mag))[: n - n_prune]
    kept = np.sort(flat[keep_idx])
    G = np.abs(dY.T @ X).astype(np.float32).ravel().astype(np.float64)
    candidates = np.setdiff1d(np.arange(G.size), kept)
    grow_idx = np.lexsort((tie_ranks(candidates, salt), -G[candidates]))[:n_prune]
    return kept, np.sort(candidates[grow_idx])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("salt", [0, 0x2545F491, 2**32 - 1])
def test_rigl_update_matches_brute_force(backend, ties, alpha, salt):
    """RigL: nnz constant; kept = top n_keep |w| layer-wide, grown = top n_prune |G| among positions not
    kept (just-dropped eligible), ties to the smaller tie rank of the flat position under the update's
    salt; new weights and momentum exactly 0."""
    layer, opt, X, dY = _trained_csr_layer(backend, ties=ties)
    old = layer.W.copy()
    kept, grown = _brute_force_rigl(old, X, dY, alpha, salt)
    RigL().update(LayerUpdate(layer, opt, alpha, np.random.default_rng(0), old.nnz, salt=salt))
    W = layer.W.validate(full=True)
    assert W.nnz == old.nnz
    assert np.array_equal(np.sort(flat_positions(W)), np.union1d(kept, grown))
    new_positions = ~np.isin(flat_positions(W), flat_positions(old))
    assert (W.values[new_positions] == 0).all()
    assert (opt.state_arrays(layer.weight)["momentum_buffer"][new_positions] == 0).all()
    if alpha == 0.0:
        assert np.array_equal(W.values, old.values) and np.array_equal(W.indices, old.indices)


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_update_drops_by_magnitude_and_grows_at_free_positions(backend):
    layer, opt, X, dY = _trained_csr_layer(backend, shape=(9, 13), density=0.3)
    old = layer.W.copy()
    n_prune = floor_count(0.4, old.nnz)
    kept, _ = _brute_force_rigl(old, X, dY, 0.4)
    SET().update(LayerUpdate(layer, opt, 0.4, np.random.default_rng(7), old.nnz))
    now = np.sort(flat_positions(layer.W.validate(full=True)))
    assert now.size == old.nnz
    assert np.isin(kept, now).all()
    assert np.setdiff1d(now, kept).size == n_prune


def test_random_free_positions_is_uniform_and_avoids_taken():
    rng = np.random.default_rng(0)
    taken = np.array([0, 2, 4, 6, 8])
    counts = np.zeros(10)
    for _ in range(3000):
        got = random_free_positions(rng, 10, taken, 2)
        assert not np.isin(got, taken).any() and np.unique(got).size == 2
        counts[got] += 1
    free = counts[[1, 3, 5, 7, 9]]
    assert counts[taken].sum() == 0 and np.all(np.abs(free / free.sum() - 0.2) < 0.03)
    with pytest.raises(ValueError, match="only 5 free"):
        random_free_positions(rng, 10, taken, 6)


# --------------------------------------------------------------------------------------------------
# method registry and the updater


def test_resolve_format_defaults_and_refusals():
    assert resolve_format("rigl", None) == "csr"
    assert resolve_format("srigl", None) == "condensed"
    assert resolve_format("diag-rigl", None) == "diagonal"
    with pytest.raises(MethodError, match="cannot use format 'condensed'"):
        resolve_format("rigl", "condensed")
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        resolve_format("nope", None)
    assert set(METHODS) == {"static", "set", "rigl", "srigl", "gse", "diag-rigl", "dynadiag"}


def _tiny_run(method, fmt, steps=12, delta_t=3, alpha=0.3, seed=0):
    rng = np.random.default_rng(seed)
    model = build_mlp(10, "12", 3, fmt=fmt, sparsity=0.7, backend="cpu", rng=seed)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
    updater = DSTUpdater(make_method(method, fmt), UpdateSchedule(delta_t=delta_t, alpha=alpha, t_end=steps), budgets, seed=seed)
    updater.begin(model)
    for step in range(1, steps + 1):
        X = rng.standard_normal((8, 10)).astype(np.float32)
        _, d = softmax_cross_entropy(model.forward(X), rng.integers(0, 3, 8))
        model.backward(d)
        opt.step()
        updater.after_step(step, model, opt)
    return model, updater


@pytest.mark.parametrize("method, fmt", [("rigl", "csr"), ("set", "csr"), ("static", "condensed")])
def test_updater_counts_updates_and_reports_topology(method, fmt):
    model, updater = _tiny_run(method, fmt)
    assert updater.n_updates == 4  # steps 3, 6, 9, 12
    stats = updater.epoch_stats(model)
    assert stats["topology_updates"] == 4
    assert [row["layer"] for row in stats["layers"]] == ["layer0", "layer1"]
    for row, layer in zip(stats["layers"], model.sparse_layers()):
        assert row["nnz"] == layer.W.nnz and 0 <= row["changed"] <= 1
        assert row["fan_in_min"] <= row["fan_in_max"]
    changed = sum(row["changed"] for row in stats["layers"])
    assert (changed > 0) == (method != "static")
    assert all(row["changed"] == 0 for row in updater.epoch_stats(model)["layers"])  # nothing since


@pytest.mark.parametrize("method, fmt", [("rigl", "csr"), ("set", "csr")])
def test_same_seed_same_topology_and_alpha_zero_freezes(method, fmt):
    a, _ = _tiny_run(method, fmt, seed=4)
    b, _ = _tiny_run(method, fmt, seed=4)
    for la, lb in zip(a.sparse_layers(), b.sparse_layers()):
        assert np.array_equal(flat_positions(la.W), flat_positions(lb.W))
    frozen, _ = _tiny_run(method, fmt, alpha=0.0, seed=4)
    start = build_mlp(10, "12", 3, fmt=fmt, sparsity=0.7, backend="cpu", rng=4)
    for lf, ls in zip(frozen.sparse_layers(), start.sparse_layers()):
        assert np.array_equal(flat_positions(lf.W), flat_positions(ls.W))


def test_updater_state_round_trip():
    _, updater = _tiny_run("set", "csr")
    state = updater.state_dict()
    other = DSTUpdater(make_method("set", "csr"), UpdateSchedule(delta_t=3, t_end=12), {}, seed=99)
    other.load_state_dict(state)
    assert other.n_updates == updater.n_updates
    assert other.rng.integers(0, 1 << 30) == updater.rng.integers(0, 1 << 30)
    with pytest.raises(ValueError, match="method 'set'"):
        DSTUpdater(make_method("rigl", "csr"), UpdateSchedule(), {}).load_state_dict(state)
