"""GSE (purerigl.dst.gse) against a brute force on small layers: PAPERS.md 5.1, invariants 24-25.

Every update is checked against an expectation computed independently in the test, from the dense
gradient G = dY^T X in float64 and plain Python sorting:

- the candidate set S is the de-duplicated sample minus the pre-update actives (S ∩ A = ∅) and
  |S| <= ceil(gamma |A|);
- k = min(ceil(alpha |A|), |S|) (CSR) or, per active row of a condensed layer,
  k_r = min(ceil(alpha K), |S_r|);
- dropped = the k smallest |w| of the pre-update actives, grown = the top-k |G| over S; |A|
  unchanged. Equal scores go to the smaller tie rank ``tie_rank(p, salt)`` of the flat position p
  (kept / grown first), with the update's salt drawn per test (0, 2**32 - 1 and random ones);
- kept values and momentum are bit-exact, new values and momentum exactly 0;
- alpha = 0 changes nothing; the same seed gives the same topology on every backend;
- with a sampler that covers every position, GSE equals RigL restricted to growing positions that
  were inactive before the update (invariant 25).

X and dY are small integers, so every gradient is exact in float32 and ties in |g| are frequent; an
option also rounds the weights to a coarse grid to force ties in |w|.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.dst import resolve_format, samplers
from purerigl.dst.base import LayerUpdate, MethodError
from purerigl.dst.gse import GSE
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.kernels._rank_key import tie_rank
from purerigl.nn.layers import SparseLinear
from purerigl.optim import SGD

# --------------------------------------------------------------------------------------------------
# set-up helpers


def _condensed(rng, shape, k, n_active):
    """A Condensed matrix with ``n_active`` random active rows of fan-in k (others ablated)."""
    n_out, n_in = shape
    rows = np.sort(rng.choice(n_out, size=n_active, replace=False)).astype(np.int32)
    indices = np.stack([np.sort(rng.choice(n_in, size=k, replace=False)) for _ in range(n_active)])
    indices = indices.reshape(n_active, k).astype(np.int32)
    values = rng.standard_normal((n_active, k)).astype(np.float32)
    return Condensed(rows, indices, values, shape)


def _layer(fmt, shape, seed, backend="reference", density=0.3, ties=False, B=3, k=None, n_active=None):
    """A trained-once layer: forward, backward and one SGD step with momentum (non-zero state)."""
    rng = np.random.default_rng(seed)
    n_out, n_in = shape
    if fmt == "csr":
        nnz = max(1, min(n_out * n_in, round(density * n_out * n_in)))
        W = CSR.random(shape, None, rng, nnz=nnz)
    else:
        k = k if k is not None else max(1, round(density * n_in))
        n_active = n_out if n_active is None else n_active
        W = _condensed(rng, shape, k, n_active)
    layer = SparseLinear(W, backend=backend)
    X = rng.integers(-3, 4, size=(B, n_in)).astype(np.float32)
    dY = rng.integers(-3, 4, size=(B, n_out)).astype(np.float32)
    layer.forward(X)
    layer.backward(dY)
    opt = SGD(layer.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    if ties:  # coarse grid: many equal |w|, some exact zeros
        layer.W.values[...] = np.round(layer.W.values * 2) / 2
    return layer, opt


def _recording(sampler):
    """Wrap a sampler so that the test sees the pairs and the n_samples GSE asked for."""
    log = []

    def recorded(rng, n_out, n_in, n_samples, X, dY):
        rows, cols = sampler(rng, n_out, n_in, n_samples, X, dY)
        log.append((n_out, n_in, n_samples, rows.copy(), cols.copy()))
        return rows, cols

    return recorded, log


def _state(layer, opt):
    """{flat position: (value, momentum)} of every stored entry, read from the raw arrays."""
    W = layer.W
    mom = opt.state_arrays(layer.weight)["momentum_buffer"]
    out = {}
    if isinstance(W, CSR):
        for i in range(W.n_out):
            for e in range(W.indptr[i], W.indptr[i + 1]):
                out[i * W.n_in + int(W.indices[e])] = (W.values[e], mom[e])
    else:
        for r, i in enumerate(W.rows):
            for t in range(W.k):
                out[int(i) * W.n_in + int(W.indices[r, t])] = (W.values[r, t], mom[r, t])
    return out


def _bits(x):
    return np.float32(x).view(np.uint32)


def _check_values_and_state(before, after, expected_active):
    """Kept entries bit-exact (value and momentum), new entries exactly 0 with zero momentum."""
    assert set(after) == expected_active
    for p, (v, m) in after.items():
        if p in before:
            assert _bits(v) == _bits(before[p][0]) and _bits(m) == _bits(before[p][1]), p
        else:
            assert _bits(v) == _bits(0.0) and _bits(m) == _bits(0.0), p


def _dense_grad(layer):
    return layer.last_output_grad.T.astype(np.float64) @ layer.last_input.astype(np.float64)


# --------------------------------------------------------------------------------------------------
# brute-force expectations (plain Python, float64, independent of purerigl's selection code)


def _expected_csr(before, S, G, n_in, alpha, salt):
    """(k, dropped, grown) of the CSR rule; ties by the smaller ``tie_rank(p, salt)`` first."""
    A = sorted(before)
    k = min(math.ceil(alpha * len(A) - 1e-9), len(S))
    by_keep = sorted(A, key=lambda p: (-abs(float(before[p][0])), tie_rank(p, salt)))  # best kept first
    dropped = set(by_keep[len(A) - k :]) if k else set()
    by_grow = sorted(S, key=lambda p: (-abs(G[divmod(p, n_in)]), tie_rank(p, salt)))
    grown = set(by_grow[:k])
    return k, dropped, grown


def _expected_condensed(before, S, G, n_in, alpha, K, salt):
    """(k_total, dropped, grown) of the per-row condensed rule; ties by the smaller tie rank of the
    layer's flat position p (not of the column), ``tie_rank(p, salt)``, first."""
    rows = sorted({p // n_in for p in before})
    dropped, grown, total = set(), set(), 0
    for i in rows:
        A_r = [p for p in before if p // n_in == i]
        S_r = [p for p in S if p // n_in == i]
        assert len(A_r) == K
        k_r = min(math.ceil(alpha * K - 1e-9), len(S_r))
        total += k_r
        by_keep = sorted(A_r, key=lambda p: (-abs(float(before[p][0])), tie_rank(p, salt)))
        if k_r:
            dropped |= set(by_keep[K - k_r :])
        grown |= set(sorted(S_r, key=lambda p: (-abs(G[divmod(p, n_in)]), tie_rank(p, salt)))[:k_r])
    return total, dropped, grown


def _run_and_check(layer, opt, alpha, gamma, sampler_name, seed, K=None, salt=0):
    """One update (tie salt ``salt``) with a recorded sampler; every invariant checked against the
    brute force."""
    W0 = layer.W
    n_out, n_in = W0.shape
    before = _state(layer, opt)
    A = set(before)
    G = _dense_grad(layer)
    recorded, log = _recording(samplers.SAMPLERS[sampler_name])
    stats = GSE(gamma=gamma, sampler=recorded).update(
        LayerUpdate(layer, opt, alpha, np.random.default_rng(seed), budget=len(A), salt=salt)
    )
    layer.W.validate(full=True)
    assert layer.W.nnz == len(A)
    n_change = math.ceil(alpha * (len(A) if K is None else K) - 1e-9)
    if n_change == 0:  # nothing to change: no sampling at all
        assert log == [] and stats == {"kept": len(A), "grown": 0, "dropped": 0, "candidates": 0}
        assert layer.W is W0
        return stats
    (s_out, s_in, n_samples, rows, cols), = log
    assert s_in == n_in and n_samples == math.ceil(gamma * len(A) - 1e-9)
    if K is None:
        assert s_out == n_out
        sample = {int(r) * n_in + int(c) for r, c in zip(rows, cols)}
    else:  # condensed: sampled in the compact numbering of the active rows
        active_rows = sorted({p // n_in for p in A})
        assert s_out == len(active_rows)
        sample = {active_rows[int(r)] * n_in + int(c) for r, c in zip(rows, cols)}
    S = sorted(sample - A)
    assert len(S) <= n_samples and not (set(S) & A)
    assert stats["candidates"] == len(S)
    if K is None:
        k, dropped, grown = _expected_csr(before, S, G, n_in, alpha, salt)
    else:
        k, dropped, grown = _expected_condensed(before, S, G, n_in, alpha, K, salt)
    assert not (grown & A)  # grown ones were inactive, hence never among the dropped
    expected = (A - dropped) | grown
    after = _state(layer, opt)
    _check_values_and_state(before, after, expected)
    assert stats == {"kept": len(A) - k, "grown": k, "dropped": k, "candidates": len(S)}
    return stats


# --------------------------------------------------------------------------------------------------
# the rule against the brute force

#: The brute-force properties run on both backends; half the profile's examples keeps them quick
#: (the dev profile still runs many).
_half = settings(max_examples=max(10, settings().max_examples // 2))

#: Tie salts: the ends of the range [0, 2**32) as well as anything in it.
_salts = st.one_of(st.sampled_from([0, 2**32 - 1]), st.integers(0, 2**32 - 1))

_common = dict(
    n_out=st.integers(1, 10),
    n_in=st.integers(1, 10),
    alpha=st.sampled_from([0.0, 0.05, 0.2, 0.3, 0.5, 1.0]),
    gamma=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0]),
    sampler=st.sampled_from(sorted(samplers.SAMPLERS)),
    ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    salt=_salts,
)


@_half
@given(density=st.floats(0.05, 1.0), **_common)
def test_csr_update_matches_brute_force(backend, n_out, n_in, density, alpha, gamma, sampler, ties, seed, salt):
    layer, opt = _layer("csr", (n_out, n_in), seed, backend, density=density, ties=ties)
    _run_and_check(layer, opt, alpha, gamma, sampler, seed + 1, salt=salt)


@_half
@given(data=st.data(), **_common)
def test_condensed_update_matches_brute_force(backend, data, n_out, n_in, alpha, gamma, sampler, ties, seed, salt):
    K = data.draw(st.integers(1, n_in), label="K")
    n_active = data.draw(st.integers(1, n_out), label="n_active")
    layer, opt = _layer("condensed", (n_out, n_in), seed, backend, ties=ties, k=K, n_active=n_active)
    rows_before = layer.W.rows.copy()
    _run_and_check(layer, opt, alpha, gamma, sampler, seed + 1, K=K, salt=salt)
    np.testing.assert_array_equal(layer.W.rows, rows_before)  # ablated rows stay ablated
    assert layer.W.k == K


def test_csr_large_gamma_many_changes():
    """A deterministic case with a full budget of changes, ties in |w| and |g|, both kinds of rows."""
    for salt in (0, 2**32 - 1, 0x5EED1234):  # the same layer, ties decided by three permutations
        layer, opt = _layer("csr", (12, 15), seed=5, density=0.2, ties=True)
        stats = _run_and_check(layer, opt, alpha=0.5, gamma=4.0, sampler_name="uniform", seed=6, salt=salt)
        assert stats["grown"] == math.ceil(0.5 * 36)


def test_k_limited_by_candidates():
    """With one draw, |S| <= 1, so at most one connection moves however large alpha is."""
    layer, opt = _layer("csr", (8, 8), seed=1, density=0.25)
    nnz = layer.W.nnz
    stats = _run_and_check(layer, opt, alpha=1.0, gamma=1.0 / nnz, sampler_name="uniform", seed=2)
    assert stats["candidates"] <= 1 and stats["grown"] == stats["candidates"]


def test_condensed_rows_keep_fan_in_exactly():
    layer, opt = _layer("condensed", (9, 20), seed=3, k=6, n_active=7)
    for step, salt in enumerate((0, 2**32 - 1, 77, 0x9E3779B9, 123456789)):
        _run_and_check(layer, opt, alpha=0.4, gamma=1.0, sampler_name="uniform", seed=100 + step, K=6, salt=salt)
        assert layer.W.n_active == 7 and layer.W.k == 6


def test_condensed_full_rows_cannot_change():
    """K = n_in: no inactive position in an active row, so nothing is a candidate."""
    layer, opt = _layer("condensed", (4, 5), seed=0, k=5)
    W0 = layer.W
    stats = GSE(gamma=3.0).update(LayerUpdate(layer, opt, 0.5, np.random.default_rng(0), budget=20))
    assert stats == {"kept": 20, "grown": 0, "dropped": 0, "candidates": 0}
    assert layer.W is W0


@pytest.mark.parametrize("fmt", ["csr", "condensed"])
def test_alpha_zero_changes_nothing(fmt):
    layer, opt = _layer(fmt, (6, 9), seed=4)
    W0 = layer.W
    values, indices = W0.values.copy(), W0.indices.copy()
    mom = opt.state_arrays(layer.weight)["momentum_buffer"].copy()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    stats = GSE().update(LayerUpdate(layer, opt, 0.0, rng, budget=W0.nnz))
    assert stats == {"kept": W0.nnz, "grown": 0, "dropped": 0, "candidates": 0}
    assert layer.W is W0
    np.testing.assert_array_equal(layer.W.values, values)
    np.testing.assert_array_equal(layer.W.indices, indices)
    np.testing.assert_array_equal(opt.state_arrays(layer.weight)["momentum_buffer"], mom)
    assert rng.bit_generator.state == state  # not even the generator moved


@pytest.mark.parametrize("fmt", ["csr", "condensed"])
@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
def test_same_seed_same_topology_on_every_backend(fmt, sampler):
    topologies = []
    for backend in ("reference", "cpu"):
        for _ in range(2):
            layer, opt = _layer(fmt, (10, 14), seed=9, backend=backend, ties=True)
            GSE(gamma=1.5, sampler=sampler).update(
                LayerUpdate(layer, opt, 0.3, np.random.default_rng(21), budget=layer.W.nnz, salt=0xC0FFEE)
            )
            topologies.append(layer.W.to_scipy())
    for t in topologies[1:]:
        assert (t != topologies[0]).nnz == 0
        np.testing.assert_array_equal(t.indices, topologies[0].indices)
        np.testing.assert_array_equal(t.indptr, topologies[0].indptr)


# --------------------------------------------------------------------------------------------------
# invariant 25: GSE with every position as a candidate is RigL restricted to pre-update inactives


def _full_sampler(rng, n_out, n_in, n_samples, X, dY):
    """Test-only sampler: every position of the (n_out, n_in) grid (needs n_samples >= n_out n_in)."""
    assert n_samples >= n_out * n_in
    return np.divmod(np.arange(n_out * n_in, dtype=np.int64), n_in)


def _rigl_restricted(before, G, shape, k, salt=0):
    """Brute-force RigL, count k, growing only among positions inactive *before* the update; ties by
    the smaller ``tie_rank(p, salt)``."""
    n_out, n_in = shape
    A = set(before)
    by_keep = sorted(A, key=lambda p: (-abs(float(before[p][0])), tie_rank(p, salt)))
    kept = set(by_keep[: len(A) - k])
    inactive_before = [p for p in range(n_out * n_in) if p not in A]
    grown = sorted(inactive_before, key=lambda p: (-abs(G[divmod(p, n_in)]), tie_rank(p, salt)))[:k]
    return kept | set(grown)


def _rigl_standard(before, G, shape, k, salt=0):
    """Brute-force standard RigL, count k: grow among all non-kept positions, just-dropped included."""
    n_out, n_in = shape
    A = set(before)
    by_keep = sorted(A, key=lambda p: (-abs(float(before[p][0])), tie_rank(p, salt)))
    kept = set(by_keep[: len(A) - k])
    others = [p for p in range(n_out * n_in) if p not in kept]
    grown = sorted(others, key=lambda p: (-abs(G[divmod(p, n_in)]), tie_rank(p, salt)))[:k]
    return kept | set(grown)


@_half
@given(
    n_out=st.integers(1, 9),
    n_in=st.integers(1, 9),
    density=st.floats(0.05, 0.95),
    alpha=st.sampled_from([0.1, 0.3, 0.5, 1.0]),
    ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    salt=_salts,
)
def test_full_candidate_set_equals_restricted_rigl(backend, n_out, n_in, density, alpha, ties, seed, salt):
    layer, opt = _layer("csr", (n_out, n_in), seed, backend, density=density, ties=ties)
    before = _state(layer, opt)
    nnz, N = len(before), n_out * n_in
    G = _dense_grad(layer)
    # equal counts: GSE's k = min(ceil(alpha nnz), |S|) with S = all N - nnz inactive positions
    k = min(math.ceil(alpha * nnz - 1e-9), N - nnz)
    stats = GSE(gamma=N / nnz, sampler=_full_sampler).update(
        LayerUpdate(layer, opt, alpha, np.random.default_rng(seed), budget=nnz, salt=salt)
    )
    assert stats["candidates"] == N - nnz and stats["grown"] == k
    assert set(_state(layer, opt)) == _rigl_restricted(before, G, (n_out, n_in), k, salt)


def test_full_candidate_set_differs_from_standard_rigl_when_a_dropped_position_ranks_high():
    """The one difference: standard RigL may regrow a just-dropped position, GSE never does."""
    n_out, n_in = 2, 3
    W = CSR(np.array([0, 2, 3]), np.array([0, 1, 2], np.int32), np.array([0.1, 5.0, 4.0], np.float32), (n_out, n_in))
    layer = SparseLinear(W, backend="reference")
    X = np.array([[1.0, 0.0, 0.0]], np.float32)
    dY = np.array([[9.0, 1.0]], np.float32)  # G[0, 0] = 9, the largest, sits on the weakest weight
    layer.forward(X)
    layer.backward(dY)
    opt = SGD(layer.parameters(), lr=0.0, momentum=0.9)
    opt.step()
    before = _state(layer, opt)
    G = _dense_grad(layer)
    k = 1  # ceil(0.3 * 3) = 1 = floor(0.5 * 3): both counts agree
    standard = _rigl_standard(before, G, (n_out, n_in), k)
    restricted = _rigl_restricted(before, G, (n_out, n_in), k)
    assert standard == set(before)  # RigL drops (0, 0) and regrows it: no change
    GSE(gamma=2.0, sampler=_full_sampler).update(LayerUpdate(layer, opt, 0.3, np.random.default_rng(0), budget=3))
    after = set(_state(layer, opt))
    assert after == restricted != standard
    assert 0 not in after  # (0, 0) dropped and not regrown


# --------------------------------------------------------------------------------------------------
# options, errors, memory


def test_options_and_errors():
    assert GSE().gamma == 1.0 and GSE().sampler is samplers.uniform
    assert GSE.name == "gse" and GSE.formats == ("csr", "condensed")
    assert "grabo" in repr(GSE(sampler="GraBo"))
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(MethodError, match="gamma"):
            GSE(gamma=bad)
    with pytest.raises(MethodError, match="uniform, grabo, graest"):
        GSE(sampler="nope")
    with pytest.raises(MethodError, match="diagonal"):
        resolve_format("gse", "diagonal")

    layer, opt = _layer("csr", (6, 8), seed=0)
    u = LayerUpdate(layer, opt, 0.3, np.random.default_rng(0), budget=layer.W.nnz)
    with pytest.raises(MethodError, match="alpha"):
        GSE().update(LayerUpdate(layer, opt, 1.5, np.random.default_rng(0), budget=1))

    def too_many(rng, n_out, n_in, n_samples, X, dY):
        return np.zeros(n_samples + 1, np.int64), np.zeros(n_samples + 1, np.int64)

    def out_of_bounds(rng, n_out, n_in, n_samples, X, dY):
        return np.array([n_out]), np.array([0])

    def floats(rng, n_out, n_in, n_samples, X, dY):
        return np.array([0.0]), np.array([0.0])

    for bad, msg in ((too_many, "more than n_samples"), (out_of_bounds, "outside"), (floats, "integer")):
        with pytest.raises(MethodError, match=msg):
            GSE(sampler=bad).update(u)

    fresh = SparseLinear(CSR.random((4, 4), 0.5, 0), backend="reference")
    with pytest.raises(MethodError, match="forward and a backward"):
        GSE().update(LayerUpdate(fresh, None, 0.3, np.random.default_rng(0), budget=8))

    diag = SparseLinear(Diagonal.random((4, 4), 0.5, 0), backend="reference")
    diag.forward(np.ones((1, 4), np.float32))
    diag.backward(np.ones((1, 4), np.float32))
    with pytest.raises(MethodError, match="Diagonal"):
        GSE().update(LayerUpdate(diag, None, 0.3, np.random.default_rng(0), budget=8))


def test_duplicate_pairs_from_a_custom_sampler_collapse():
    def dup(rng, n_out, n_in, n_samples, X, dY):
        return np.zeros(n_samples, np.int64), np.zeros(n_samples, np.int64)  # (0, 0) n times

    layer, opt = _layer("csr", (5, 5), seed=2, density=0.2)
    expect = 0 if layer.W.indices[: layer.W.indptr[1]].tolist()[:1] == [0] else 1
    stats = GSE(sampler=dup).update(LayerUpdate(layer, opt, 0.5, np.random.default_rng(0), budget=5))
    assert stats["candidates"] == expect and stats["grown"] == expect
    layer.W.validate(full=True)


@pytest.mark.parametrize("sampler", ["uniform", "grabo"])
def test_update_memory_is_far_below_dense(sampler):
    """A 4096 x 4096 layer at 99%: one update allocates far less than one dense float32 matrix."""
    n = 4096
    rng = np.random.default_rng(0)
    layer = SparseLinear(CSR.random((n, n), 0.01, rng), backend="cpu")
    X = rng.standard_normal((8, n)).astype(np.float32)
    dY = rng.standard_normal((8, n)).astype(np.float32)
    layer.forward(X)
    layer.backward(dY)
    opt = SGD(layer.parameters(), lr=0.01, momentum=0.9)
    opt.step()
    nnz = layer.W.nnz
    GSE(sampler=sampler).update(LayerUpdate(layer, opt, 0.3, np.random.default_rng(1), budget=nnz))  # warm-up
    tracemalloc.start()
    try:
        stats = GSE(sampler=sampler).update(LayerUpdate(layer, opt, 0.3, np.random.default_rng(2), budget=nnz))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layer.W.nnz == nnz and stats["grown"] == math.ceil(0.3 * nnz)
    # O(nnz) bookkeeping (about 110 bytes per connection here, the shared step included) at 1%
    # density is about 28% of one dense float32 matrix; anything O(n_out n_in) would exceed it.
    assert peak < n * n * 4 / 2, peak
