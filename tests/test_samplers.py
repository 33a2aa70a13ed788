"""GSE's candidate samplers (purerigl.dst.samplers): PAPERS.md section 5.1 and invariant 26.

- every sampler returns distinct, in-bound, sorted int64 pairs, at most ``n_samples`` of them, and is
  exactly the de-duplication of its raw draws;
- the raw draws follow f_out(i) f_in(j) (chi-square over the joint table, seeded), weight-0 entries
  are never drawn, an all-zero marginal falls back to uniform;
- GraBo's bound |g(i, j)| <= w_out(i) w_in(j) holds element-wise and is tight at B = 1;
- GraEst's sketch is unbiased: exact over all 2^B sign vectors, and by Monte Carlo over the module's
  own sign generator;
- memory is O(n_in + n_out + n_samples), never O(n_out * n_in) (tracemalloc on a 20000 x 20000 layer).
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from purerigl.dst import samplers
from purerigl.dst.base import MethodError

DRAWS = {
    "uniform": samplers.uniform_draws,
    "grabo": samplers.grabo_draws,
    "graest": samplers.graest_draws,
}


def _batch(rng, B, n_out, n_in, zero_rows=(), zero_cols=()):
    """Integer-valued float32 X (B, n_in), dY (B, n_out); chosen columns set to zero."""
    X = rng.integers(-3, 4, size=(B, n_in)).astype(np.float32)
    dY = rng.integers(-3, 4, size=(B, n_out)).astype(np.float32)
    X[:, list(zero_cols)] = 0.0
    dY[:, list(zero_rows)] = 0.0
    return X, dY


def _marginals(name, seed, X, dY, n_out, n_in):
    """The normalised (f_out, f_in) the sampler ``name`` uses when called with default_rng(seed)."""
    if name == "uniform":
        return np.full(n_out, 1.0 / n_out), np.full(n_in, 1.0 / n_in)
    if name == "grabo":
        w_out, w_in = samplers.grabo_weights(X, dY)
    else:  # graest draws its signs first, so a fresh generator with the same seed reproduces them
        signs = samplers.rademacher(np.random.default_rng(seed), X.shape[0])
        w_out, w_in = samplers.graest_weights(X, dY, signs)
    f = []
    for w, n in ((w_out, n_out), (w_in, n_in)):
        f.append(w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n))
    return f[0], f[1]


# --------------------------------------------------------------------------------------------------
# output contract


@given(
    name=st.sampled_from(sorted(samplers.SAMPLERS)),
    n_out=st.integers(1, 12),
    n_in=st.integers(1, 12),
    n_samples=st.integers(0, 300),
    B=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_output_distinct_sorted_in_bounds_and_dedup_of_draws(name, n_out, n_in, n_samples, B, seed):
    X, dY = _batch(np.random.default_rng(seed + 1), B, n_out, n_in)
    rows, cols = samplers.SAMPLERS[name](np.random.default_rng(seed), n_out, n_in, n_samples, X, dY)
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert rows.shape == cols.shape and rows.ndim == 1
    assert rows.size <= n_samples
    if rows.size:
        assert 0 <= rows.min() and rows.max() < n_out
        assert 0 <= cols.min() and cols.max() < n_in
    flat = rows * n_in + cols
    assert np.all(np.diff(flat) > 0)  # distinct and sorted by flat position
    # exactly the distinct raw draws (same generator use)
    raw_r, raw_c = DRAWS[name](np.random.default_rng(seed), n_out, n_in, n_samples, X, dY)
    assert raw_r.size == n_samples
    np.testing.assert_array_equal(flat, np.unique(raw_r * n_in + raw_c))


def test_zero_samples_gives_empty_sets():
    X, dY = _batch(np.random.default_rng(0), 2, 3, 4)
    for name, fn in samplers.SAMPLERS.items():
        rows, cols = fn(np.random.default_rng(0), 3, 4, 0, X, dY)
        assert rows.size == 0 and cols.size == 0 and rows.dtype == np.int64, name


def test_uniform_never_reads_X_or_dY():
    rows, cols = samplers.uniform(np.random.default_rng(0), 5, 7, 20, None, None)
    assert rows.size and cols.size


@pytest.mark.parametrize("name", ["grabo", "graest"])
def test_guided_samplers_need_X_and_dY(name):
    with pytest.raises(MethodError, match="forward and a backward"):
        samplers.SAMPLERS[name](np.random.default_rng(0), 5, 7, 20, None, None)
    X, dY = _batch(np.random.default_rng(0), 2, 5, 7)
    with pytest.raises(MethodError, match="n_in=6"):
        samplers.SAMPLERS[name](np.random.default_rng(0), 5, 6, 20, X, dY)


def test_get_sampler_names_and_callables():
    assert samplers.get_sampler("uniform") is samplers.uniform
    assert samplers.get_sampler(" GraBo ") is samplers.grabo
    assert samplers.get_sampler("graest") is samplers.graest

    def mine(rng, n_out, n_in, n_samples, X, dY):  # pragma: no cover - never called
        raise AssertionError

    assert samplers.get_sampler(mine) is mine
    with pytest.raises(MethodError, match="uniform, grabo, graest"):
        samplers.get_sampler("random")
    with pytest.raises(ValueError):  # MethodError is a ValueError
        samplers.get_sampler(3)


def test_same_seed_same_sample():
    X, dY = _batch(np.random.default_rng(3), 4, 9, 11)
    for fn in samplers.SAMPLERS.values():
        a = fn(np.random.default_rng(7), 9, 11, 50, X, dY)
        b = fn(np.random.default_rng(7), 9, 11, 50, X, dY)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------------------
# marginals


def _assert_joint_matches(rows, cols, f_out, f_in):
    """Counts of the joint (row, col) table against n f_out(i) f_in(j): zero-probability cells are
    never hit; the rest pass a chi-square test at p > 1e-4 (seeded, so deterministic)."""
    n_out, n_in = f_out.size, f_in.size
    counts = np.bincount(rows * n_in + cols, minlength=n_out * n_in).astype(np.float64)
    p = np.outer(f_out, f_in).ravel()
    assert counts[p == 0].sum() == 0
    live = p > 0
    expected = p[live] * rows.size
    assert expected.min() > 20  # the chi-square approximation is sound
    _, pvalue = scipy.stats.chisquare(counts[live], expected * counts[live].sum() / expected.sum())
    assert pvalue > 1e-4, pvalue


@pytest.mark.parametrize("name", ["uniform", "grabo", "graest"])
def test_empirical_joint_matches_marginals(name):
    n_out, n_in, B, n = 5, 7, 4, 200_000
    seed = 11
    X, dY = _batch(np.random.default_rng(5), B, n_out, n_in, zero_rows=[1], zero_cols=[2, 6])
    f_out, f_in = _marginals(name, seed, X, dY, n_out, n_in)
    if name != "uniform":  # the zeroed columns really have probability 0
        assert f_out[1] == 0 and f_in[2] == 0 and f_in[6] == 0
    rows, cols = DRAWS[name](np.random.default_rng(seed), n_out, n_in, n, X, dY)
    _assert_joint_matches(rows, cols, f_out, f_in)


@pytest.mark.parametrize("name", ["grabo", "graest"])
def test_all_zero_marginal_falls_back_to_uniform(name):
    n_out, n_in, n = 4, 6, 100_000
    X = np.random.default_rng(0).integers(1, 4, size=(3, n_in)).astype(np.float32)
    dY = np.zeros((3, n_out), dtype=np.float32)  # e.g. a perfectly fitted batch
    seed = 2
    f_out, f_in = _marginals(name, seed, X, dY, n_out, n_in)
    np.testing.assert_array_equal(f_out, np.full(n_out, 1 / n_out))
    rows, cols = DRAWS[name](np.random.default_rng(seed), n_out, n_in, n, X, dY)
    _assert_joint_matches(rows, cols, f_out, f_in)
    # and both sides zero
    rows, cols = DRAWS[name](np.random.default_rng(seed), n_out, n_in, n, X * 0, dY)
    _assert_joint_matches(rows, cols, np.full(n_out, 1 / n_out), np.full(n_in, 1 / n_in))


def test_draw_from_weights_edges():
    rng = np.random.default_rng(0)
    idx = samplers.draw_from_weights(rng, np.array([0.0, 0.0, 3.0, 0.0, 1.0, 0.0]), 10_000)
    assert set(np.unique(idx)) == {2, 4}
    assert abs((idx == 2).mean() - 0.75) < 0.03
    assert np.all(samplers.draw_from_weights(rng, np.array([0.0, 5.0]), 100) == 1)
    assert samplers.draw_from_weights(rng, np.array([2.0]), 3).tolist() == [0, 0, 0]
    for bad in ([1.0, np.nan], [1.0, np.inf], [1.0, -1.0]):
        with pytest.raises(MethodError, match="finite and non-negative"):
            samplers.draw_from_weights(rng, np.array(bad), 5)


def test_rademacher_signs():
    s = samplers.rademacher(np.random.default_rng(0), 100_000)
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert abs(s.mean()) < 0.02


# --------------------------------------------------------------------------------------------------
# GraBo bound and GraEst unbiasedness


@given(
    n_out=st.integers(1, 8),
    n_in=st.integers(1, 8),
    B=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_grabo_bound_elementwise_and_tight_at_batch_one(n_out, n_in, B, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, n_in)).astype(np.float32)
    dY = rng.standard_normal((B, n_out)).astype(np.float32)
    G = dY.T.astype(np.float64) @ X.astype(np.float64)
    w_out, w_in = samplers.grabo_weights(X, dY)
    bound = np.outer(w_out, w_in)
    assert np.all(np.abs(G) <= bound * (1 + 1e-12))
    # B = 1: equality
    w1_out, w1_in = samplers.grabo_weights(X[:1], dY[:1])
    G1 = np.outer(dY[0].astype(np.float64), X[0].astype(np.float64))
    np.testing.assert_allclose(np.abs(G1), np.outer(w1_out, w1_in), rtol=1e-12, atol=0)


def test_graest_sketch_exactly_unbiased_over_all_sign_vectors():
    rng = np.random.default_rng(4)
    B, n_out, n_in = 5, 4, 6
    X = rng.standard_normal((B, n_in))
    dY = rng.standard_normal((B, n_out))
    G = dY.T @ X
    mean = np.zeros_like(G)
    for signs in itertools.product((-1.0, 1.0), repeat=B):
        s = np.array(signs)
        mean += np.outer(s @ dY, s @ X)
    mean /= 2**B
    np.testing.assert_allclose(mean, G, rtol=1e-12, atol=1e-12)


def test_graest_sketch_unbiased_monte_carlo():
    """Mean over M sign draws from the module's generator of (sum s dY[:, i])(sum s X[:, j]) ~ g(i, j)."""
    rng = np.random.default_rng(8)
    B, n_out, n_in, M = 6, 4, 5, 40_000
    X = rng.integers(-3, 4, size=(B, n_in)).astype(np.float32)
    dY = rng.integers(-3, 4, size=(B, n_out)).astype(np.float32)
    G = dY.T.astype(np.float64) @ X.astype(np.float64)
    sign_rng = np.random.default_rng(9)
    S = np.stack([samplers.rademacher(sign_rng, B) for _ in range(M)])  # (M, B)
    a, c = S @ dY.astype(np.float64), S @ X.astype(np.float64)  # (M, n_out), (M, n_in)
    prod = a[:, :, None] * c[:, None, :]  # (M, n_out, n_in)
    mean, sem = prod.mean(axis=0), prod.std(axis=0) / np.sqrt(M)
    assert np.all(np.abs(mean - G) <= 5 * sem + 1e-12)
    # and the sketch's magnitudes are what graest_weights returns for each sign vector
    w_out, w_in = samplers.graest_weights(X, dY, S[0])
    np.testing.assert_allclose(w_out, np.abs(a[0]))
    np.testing.assert_allclose(w_in, np.abs(c[0]))


# --------------------------------------------------------------------------------------------------
# memory


@pytest.mark.parametrize("name", ["uniform", "grabo", "graest"])
def test_memory_is_never_quadratic(name):
    n_out = n_in = 20_000  # a dense float32 matrix would be 1.6 GB
    X, dY = _batch(np.random.default_rng(0), 2, n_out, n_in)
    tracemalloc.start()
    try:
        rows, cols = samplers.SAMPLERS[name](np.random.default_rng(0), n_out, n_in, 1000, X, dY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 900 < rows.size <= 1000
    limit = 2_000_000 if name != "uniform" else 200_000  # O(n_samples) for uniform, O(n) for guided
    assert peak < limit, peak
