"""diag-rigl (PAPERS.md 4.4, invariants 17, 18, 23): drop/grow of whole diagonals against a dense
brute force in float64, value and optimizer-state carry-over, tie rule, alpha = 0, at least one
diagonal per update while alpha > 0, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from purerigl.dst import LayerUpdate, MethodError, resolve_format
from purerigl.dst.diag_rigl import DiagRigL, diagonal_norms, swap_count
from purerigl.formats import CSR, Diagonal
from purerigl.formats._base import floor_count
from purerigl.kernels._rank_key import tie_rank
from purerigl.nn import SparseLinear
from purerigl.optim import SGD

BACKENDS = ["reference", "cpu"]
SHAPES = [(12, 5), (5, 12), (8, 8)]
TIES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
MOMENTUM = "momentum_buffer"


# --------------------------------------------------------------------------------------------------
# dense brute force (float64)


def all_diagonals(shape) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), each (P, L): the positions of every candidate diagonal, offset = row index."""
    P, L = max(shape), min(shape)
    D = Diagonal(np.arange(P, dtype=np.int32), np.zeros((P, L), np.float32), shape)
    return D.positions()


def brute_grad_norms(X, dY) -> np.ndarray:
    """float64 (P,): S[d] = ||G along d||_2 from the dense G = dY^T X."""
    shape = (dY.shape[1], X.shape[1])
    G = dY.T.astype(np.float64) @ X.astype(np.float64)
    rows, cols = all_diagonals(shape)
    return np.sqrt((G[rows, cols] ** 2).sum(axis=1))


def best(scores: dict, n: int, salt: int = 0) -> set:
    """The n keys (offsets) with the largest scores; ties: the smaller ``tie_rank(key, salt)`` first."""
    return set(sorted(scores, key=lambda d: (-scores[d], tie_rank(d, salt)))[:n])


def expected_offsets(old_offsets, old_values, S, alpha, salt=0) -> tuple[set, set, int, dict]:
    """(kept, new offset set, q, norms) by the rule of PAPERS.md 4.4, computed the slow way."""
    K = len(old_offsets)
    q = min(K, max(1, floor_count(alpha, K))) if alpha > 0 else 0  # floor(alpha K) exact, >= 1 while alpha > 0
    norms = {int(d): math.sqrt(float(np.sum(old_values[k].astype(np.float64) ** 2)))
             for k, d in enumerate(old_offsets)}
    kept = best(norms, K - q, salt)
    eligible = {d: float(S[d]) for d in range(len(S)) if d not in kept}
    grown = best(eligible, q, salt)
    return kept, kept | grown, q, norms


# --------------------------------------------------------------------------------------------------
# building layers


def make_layer(shape, K, backend, rng, offsets=None):
    W = Diagonal.random(shape, None, rng, K=K)
    if offsets is not None:
        W = Diagonal(np.asarray(offsets, np.int32), W.values[: len(offsets)].copy(), shape)
    layer = SparseLinear(W, backend=backend, name="l")
    opt = SGD(layer.parameters(), lr=0.05, momentum=0.9)
    return layer, opt


def train_steps(layer, opt, rng, steps=2, B=6):
    """Forward/backward on random batches and SGD steps, so values moved and momentum is non-zero.
    Returns the (X, dY) of the last batch (the one growth is scored on)."""
    n_out, n_in = layer.shape
    for _ in range(steps):
        X = rng.standard_normal((B, n_in)).astype(np.float32)
        layer.forward(X)
        dY = rng.standard_normal((B, n_out)).astype(np.float32)
        layer.backward(dY)
        opt.step()
    return X, dY


def set_batch(layer, X, dY):
    """Make (X, dY) the layer's last batch through its own forward and backward."""
    layer.forward(np.ascontiguousarray(X, np.float32))
    layer.backward(np.ascontiguousarray(dY, np.float32))


def momentum_of(layer, opt):
    return opt.state_arrays(layer.weight)[MOMENTUM]


def snapshot(layer, opt) -> dict:
    W = layer.W
    mom = momentum_of(layer, opt)
    return {int(d): (W.values[k].copy(), mom[k].copy()) for k, d in enumerate(W.offsets)}


def run_update(layer, opt, alpha, seed=0, salt=0):
    u = LayerUpdate(layer, opt, alpha, np.random.default_rng(seed), budget=layer.W.nnz, salt=salt)
    return DiagRigL().update(u)


# --------------------------------------------------------------------------------------------------
# the checks every update must pass


def check_update(layer, opt, before: dict, alpha: float, X, dY, stats: dict, salt: int = 0) -> tuple[set, set]:
    """Assert invariants 17, 18 and 23 against the brute force; return (old, new) offset sets."""
    W = layer.W
    old_offsets = np.array(sorted(before), dtype=np.int64)
    old_values = np.stack([before[d][0] for d in old_offsets])
    K, L, P = len(old_offsets), W.L, W.P

    # Structure: K unchanged, offsets strictly increasing and in range, parameter follows W.
    W.validate(full=True)
    assert W.K == K
    assert np.all(np.diff(W.offsets.astype(np.int64)) > 0)
    assert W.offsets.min() >= 0 and W.offsets.max() < P
    assert layer.weight.value is W.values
    mom = momentum_of(layer, opt)
    assert mom.shape == (K, L)

    # Drop and grow sets equal the brute force (float64 norms, dense G).
    S = brute_grad_norms(X, dY)
    kept, expected_new, q, norms = expected_offsets(old_offsets, old_values, S, alpha, salt)
    new = {int(d) for d in W.offsets}
    old = set(before)
    assert new == expected_new
    # Spelled out: the q dropped diagonals have the smallest norms ...
    dropped_by_rule = old - kept
    assert len(dropped_by_rule) == q
    if dropped_by_rule and kept:
        assert max(norms[d] for d in dropped_by_rule) <= min(norms[d] for d in kept)
    # ... and the q grown (new minus kept) the largest S among the offsets not kept.
    grown_by_rule = new - kept
    assert len(grown_by_rule) == q
    rest = set(range(P)) - kept - grown_by_rule
    if grown_by_rule and rest:
        assert min(S[d] for d in grown_by_rule) >= max(S[d] for d in rest)

    # Values and momentum: carried bit-exactly where the diagonal existed before (kept, or dropped
    # and regrown), exactly zero for new diagonals.
    for k, d in enumerate(W.offsets.tolist()):
        if d in before:
            old_v, old_m = before[d]
            np.testing.assert_array_equal(W.values[k], old_v)
            np.testing.assert_array_equal(mom[k], old_m)
        else:
            assert np.all(W.values[k] == 0.0)
            assert np.all(mom[k] == 0.0)

    assert stats == {
        "kept": len(old & new) * L,
        "grown": len(new - old) * L,
        "dropped": len(old - new) * L,
        "diagonals": K,
    }
    return old, new


# --------------------------------------------------------------------------------------------------
# deterministic cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.3, 0.5, 1.0])
def test_update_matches_brute_force(backend, shape, alpha):
    rng = np.random.default_rng(7)
    K = max(shape) // 2
    layer, opt = make_layer(shape, K, backend, rng)
    X, dY = train_steps(layer, opt, rng)
    assert np.any(momentum_of(layer, opt) != 0.0)
    before = snapshot(layer, opt)
    stats = run_update(layer, opt, alpha)
    old, new = check_update(layer, opt, before, alpha, X, dY, stats)
    assert new != old  # the update did something
    # The layer still trains after the change (optimizer layout follows the new structure).
    train_steps(layer, opt, rng, steps=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dropped_and_regrown_keeps_values_and_state(backend, shape):
    # A diagonal with tiny values (so it is dropped) but by far the largest gradient norm (so it is
    # grown again): it must come back with its old values and momentum, not as a new zero diagonal.
    rng = np.random.default_rng(3)
    L = min(shape)
    offsets = [0, 2, 3, 5]
    layer, opt = make_layer(shape, len(offsets), backend, rng, offsets=offsets)
    train_steps(layer, opt, rng)
    d0, k0 = 3, offsets.index(3)
    tiny = np.full(L, 1e-3, dtype=np.float32)
    layer.W.values[k0] = tiny
    momentum_of(layer, opt)[k0] = 0.25
    # G = dY^T X with X = I: G = dY^T, so dY = G^T sets the gradient directly.
    G = rng.standard_normal(shape) * 0.01
    rows, cols = all_diagonals(shape)
    G[rows[d0], cols[d0]] = 10.0
    X = np.eye(shape[1], dtype=np.float32)
    dY = G.T.astype(np.float32)
    set_batch(layer, X, dY)
    before = snapshot(layer, opt)

    alpha = 0.5  # q = 2: offset 3 (tiny norm) is dropped, then regrown first
    stats = run_update(layer, opt, alpha)
    old, new = check_update(layer, opt, before, alpha, X, dY, stats)
    assert d0 in new
    k_new = layer.W.offsets.tolist().index(d0)
    np.testing.assert_array_equal(layer.W.values[k_new], tiny)
    assert np.all(momentum_of(layer, opt)[k_new] == np.float32(0.25))
    # Dropped and regrown counts as kept: K - q + 1 diagonals kept, q - 1 grown and dropped.
    assert stats["kept"] == 3 * L and stats["grown"] == L and stats["dropped"] == L


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_smaller_tie_rank_of_the_offset(backend):
    """Equal norms and S = 0 everywhere: the tie rank ``tie_rank(offset, salt)`` alone decides which
    diagonals stay and which grow (a just-dropped one may be regrown), and the salt changes it."""
    results = {}
    for salt in (0, 1, 0xDEADBEEF, 2**32 - 1):
        rng = np.random.default_rng(0)
        shape = (6, 6)
        layer, opt = make_layer(shape, 4, backend, rng, offsets=[1, 3, 4, 5])
        train_steps(layer, opt, rng)
        layer.W.values[...] = 1.0  # equal norms
        set_batch(layer, np.zeros((2, 6), np.float32), np.zeros((2, 6), np.float32))  # S = 0 everywhere
        before = snapshot(layer, opt)
        stats = run_update(layer, opt, 0.5, salt=salt)  # q = 2
        by_rank = [d for _, d in sorted((int(tie_rank(d, salt)), d) for d in range(6))]
        kept = [d for d in by_rank if d in (1, 3, 4, 5)][:2]  # the 2 stored offsets of smallest rank
        grown = [d for d in by_rank if d not in kept][:2]  # the 2 others of smallest rank
        assert layer.W.offsets.tolist() == sorted(kept + grown), salt
        check_update(layer, opt, before, 0.5, np.zeros((2, 6)), np.zeros((2, 6)), stats, salt)
        results[salt] = layer.W.offsets.tolist()
    assert results[0] == [0, 1, 2, 5]  # salt 0 ranks the offsets 0, 5, 1, 2, 4, 3
    assert len({tuple(r) for r in results.values()}) > 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [0.0])
def test_alpha_zero_changes_nothing(backend, alpha):
    rng = np.random.default_rng(1)
    layer, opt = make_layer((8, 8), 4, backend, rng)
    train_steps(layer, opt, rng)
    W, values, mom = layer.W, layer.W.values.copy(), momentum_of(layer, opt).copy()
    offsets = W.offsets.copy()

    calls = []

    class Spy:
        name = "spy"

        def __getattr__(self, op):
            calls.append(op)
            raise AssertionError(f"alpha={alpha} must not call the backend ({op})")

    layer.backend = Spy()
    stats = run_update(layer, opt, alpha)
    assert stats == {"kept": W.nnz, "grown": 0, "dropped": 0, "diagonals": 4}
    assert layer.W is W and not calls
    np.testing.assert_array_equal(W.offsets, offsets)
    np.testing.assert_array_equal(W.values, values)
    np.testing.assert_array_equal(momentum_of(layer, opt), mom)


def test_swap_count_is_at_least_one_while_alpha_is_above_zero():
    """q = min(K, max(1, floor(alpha K))) for alpha > 0, 0 for alpha = 0 or K = 0: a plain floor would
    leave every layer with K < 1 / alpha unchanged forever (K <= 3 at alpha 0.3)."""
    for K in range(0, 12):
        for alpha in (0.0, 1e-9, 0.05, 0.2, 0.3, 1 / 3, 0.5, 0.99, 1.0):
            q = swap_count(alpha, K)
            if alpha == 0 or K == 0:
                assert q == 0, (alpha, K)
            else:
                assert q == max(1, math.floor(alpha * K + 1e-12)) and 1 <= q <= K, (alpha, K, q)
    assert swap_count(0.3, 3) == 1 and swap_count(0.3, 1) == 1 and swap_count(0.3, 10) == 3
    assert swap_count(1.0, 3) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K, alpha", [(1, 0.3), (3, 0.3), (4, 0.2), (3, 1e-6)])
def test_few_diagonals_still_change_while_alpha_is_above_zero(backend, K, alpha):
    """A layer with floor(alpha K) = 0 replaces exactly one diagonal: the weakest goes, the offset with
    the largest gradient norm comes (here one that was not stored), new values and momentum at 0."""
    rng = np.random.default_rng(5)
    shape = (8, 8)
    offsets = [1, 3, 6][:K] if K <= 3 else [1, 3, 5, 6]
    layer, opt = make_layer(shape, K, backend, rng, offsets=offsets)
    train_steps(layer, opt, rng)
    weakest = offsets[-1]
    layer.W.values[offsets.index(weakest)] = 1e-3  # the smallest norm: dropped
    # G = dY^T X with X = I: G = dY^T; offset 7 (never stored) gets by far the largest norm
    G = rng.standard_normal(shape) * 0.01
    rows, cols = all_diagonals(shape)
    G[rows[7], cols[7]] = 10.0
    X, dY = np.eye(8, dtype=np.float32), G.T.astype(np.float32)
    set_batch(layer, X, dY)
    before = snapshot(layer, opt)
    stats = run_update(layer, opt, alpha)
    old, new = check_update(layer, opt, before, alpha, X, dY, stats)
    assert new == (old - {weakest}) | {7}
    assert stats["grown"] == stats["dropped"] == 8  # one diagonal of length L = 8


@pytest.mark.parametrize("shape", SHAPES)
def test_same_inputs_same_result_on_every_backend(shape):
    results = []
    for backend in BACKENDS + BACKENDS:
        rng = np.random.default_rng(11)
        layer, opt = make_layer(shape, 3, backend, rng)
        train_steps(layer, opt, rng)
        run_update(layer, opt, 0.7)
        results.append((backend, layer.W.offsets.copy(), layer.W.values.copy()))
    for backend, offsets, values in results[2:]:
        same = next(r for r in results if r[0] == backend)
        np.testing.assert_array_equal(offsets, same[1])
        np.testing.assert_array_equal(values, same[2])
    # Topologies agree across backends (values may differ in the last bits of the SGD steps).
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_method_uses_the_backend_op():
    rng = np.random.default_rng(5)
    shape = (5, 12)
    layer, opt = make_layer(shape, 3, "reference", rng)
    X, dY = train_steps(layer, opt, rng)
    calls = []
    real = layer.backend

    class Spy:
        name = "spy"

        def __getattr__(self, op):
            return getattr(real, op)

        def diag_grad_norms(self, X_, dY_):
            calls.append((X_, dY_))
            S = np.zeros(12, np.float32)
            S[[4, 9]] = 1.0  # the op's scores decide growth
            return S

    layer.backend = Spy()
    salt = 0x5EED
    run_update(layer, opt, 1.0, salt=salt)  # q = K = 3: everything may be replaced
    assert len(calls) == 1 and calls[0][0] is X and calls[0][1] is dY
    new = set(layer.W.offsets.tolist())
    assert {4, 9} <= new
    assert len(new) == 3
    third = (new - {4, 9}).pop()
    # remaining ties (S = 0): the offset of smallest tie rank
    assert third == min(set(range(12)) - {4, 9}, key=lambda d: int(tie_rank(d, salt)))


# --------------------------------------------------------------------------------------------------
# property test


@given(
    orientation=st.sampled_from(["tall", "wide", "square"]),
    small=st.integers(1, 8),
    extra=st.integers(1, 8),
    k_frac=st.floats(0.0, 1.0),
    alpha=st.one_of(st.sampled_from([0.0, 0.3, 0.5, 1.0]), st.floats(0.0, 1.0)),
    ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    salt=st.one_of(st.sampled_from([0, 2**32 - 1]), st.integers(0, 2**32 - 1)),
    backend=st.sampled_from(BACKENDS),
)
def test_update_invariants_property(orientation, small, extra, k_frac, alpha, ties, seed, salt, backend):
    if orientation == "square":
        shape = (small, small)
    elif orientation == "tall":
        shape = (small + extra, small)
    else:
        shape = (small, small + extra)
    P, L = max(shape), min(shape)
    K = max(1, min(P, round(k_frac * P)))
    rng = np.random.default_rng(seed)
    layer, opt = make_layer(shape, K, backend, rng)
    B = int(rng.integers(1, 5))
    if ties:
        # Values, momentum, X and dY from a small set: deliberate ties in both scores, all exact.
        train_steps(layer, opt, rng, steps=1, B=B)
        layer.W.values[...] = rng.choice(TIES, size=(K, L))
        momentum_of(layer, opt)[...] = rng.choice(TIES, size=(K, L))
        X = rng.choice(TIES, size=(B, shape[1]))
        dY = rng.choice(TIES, size=(B, shape[0]))
        set_batch(layer, X, dY)
    else:
        X, dY = train_steps(layer, opt, rng, steps=2, B=B)
    before = snapshot(layer, opt)
    stats = run_update(layer, opt, alpha, salt=salt)
    check_update(layer, opt, before, alpha, X, dY, stats, salt)


# --------------------------------------------------------------------------------------------------
# errors


def test_errors():
    rng = np.random.default_rng(0)
    layer, opt = make_layer((8, 8), 2, "reference", rng)
    with pytest.raises(MethodError, match="needs the layer.s last batch"):
        run_update(layer, opt, 0.5)
    train_steps(layer, opt, rng)
    with pytest.raises(MethodError, match="alpha"):
        run_update(layer, opt, 1.5)
    with pytest.raises(MethodError, match="alpha"):
        run_update(layer, opt, -0.1)
    csr = SparseLinear(CSR.random((4, 4), 0.5, rng), backend="reference")
    with pytest.raises(MethodError, match="Diagonal"):
        DiagRigL().update(LayerUpdate(csr, None, 0.5, rng, budget=8))
    assert DiagRigL().name == "diag-rigl" and DiagRigL().formats == ("diagonal",)
    assert resolve_format("diag-rigl", None) == "diagonal"
    with pytest.raises(MethodError):
        resolve_format("diag-rigl", "csr")


def test_optimizer_none_is_allowed():
    rng = np.random.default_rng(2)
    layer, opt = make_layer((5, 12), 4, "reference", rng)
    train_steps(layer, opt, rng)
    stats = DiagRigL().update(LayerUpdate(layer, None, 0.5, rng, budget=layer.W.nnz))
    assert stats["diagonals"] == 4 and layer.W.K == 4


def test_make_method_builds_diag_rigl():
    from purerigl.dst import make_method

    m = make_method("diag-rigl", "diagonal")
    assert isinstance(m, DiagRigL)


def test_diagonal_norms():
    rng = np.random.default_rng(4)
    W = Diagonal.random((7, 3), None, rng, K=4)
    np.testing.assert_allclose(
        diagonal_norms(W), np.linalg.norm(W.values.astype(np.float64), axis=1), rtol=1e-14
    )
    assert diagonal_norms(W).dtype == np.float64
