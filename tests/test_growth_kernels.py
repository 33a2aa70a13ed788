"""The growth selections of every backend against a brute force on the dense gradient.

Pins down (DESIGN.md section 3, PAPERS.md invariants 10 and 11):

- ``topk_grad`` returns the layer-wide top-m of |G| (G = dY^T X) among the non-excluded positions,
  sorted by flat index, with the shared tie rule (larger |g| first, then the smaller tie rank
  ``tie_rank(flat, salt)``, :mod:`purerigl.kernels._rank_key`); m = 0 and m larger than what is
  available work;
- ``topk_grad_rows`` returns, per row, the top counts[i] non-excluded columns (all of them if fewer),
  ascending, with ties to the smaller tie rank of the flat position ``i * n_in + j`` (not of the
  column); counts 0 and counts larger than available work;
- the salt is drawn over [0, 2^32) (0 and 2^32 - 1 included) and a bad salt is refused; where the
  gradient is all zero (a dead ReLU row) the chosen columns are spread uniformly over the salts, not
  piled on columns 0, 1, 2, ... (a chi-square test);
- ``diag_grad_norms`` equals the L2 norm of G along each wrap-around diagonal (tall, wide, square,
  P = 1);
- the reference and cpu backends return identical index sets on the same inputs;
- results do not depend on the cpu backend's tiling, buffer size, thread count or sampled starting
  threshold, and inputs are left untouched;
- bad operands raise the documented errors, identically in both backends.

The brute force builds the whole G in float64 right here and ranks it with ``np.lexsort``. With small
dyadic operands (the tie values {-1, -0.5, 0, 0.5, 1}, batch <= 6) every sum is exact in float32 as
in float64, so backends and brute force must agree exactly, ties included. With general float32
operands the backends' float32 scores may differ from the float64 ones in the last bit, so there the
checks are "is a valid top-m up to rounding": every chosen score >= every unchosen available score,
within ``TOL``. Reference vs cpu on general data (e.g. 200 x 300, batch 32) must give identical sets
except where two positions' scores agree to float32 rounding (the reference rounds float64 sums, the
cpu backend accumulates in float32): any differing position must score within 1e-6 (relative) plus
four float32 rounding bounds ((B + 2) 2^-24 sum_b |dY X|) of the selection's boundary score.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import strategies as S
from scipy.stats import chisquare

from purerigl.dst.topology import tie_salt
from purerigl.errors import DTypeError, OperandError, PureriglError, ShapeError
from purerigl.kernels import get_backend, reference_growth
from purerigl.kernels._rank_key import tie_rank, tie_ranks
from purerigl.kernels.cpu import growth as cpu_growth

#: Score tolerance for general float32 data, relative to the largest |G| entry's term sum.
TOL = 1e-5

#: The tie rule's salt: both ends of [0, 2^32) and anything between.
salts = st.one_of(st.just(0), st.just(2**32 - 1), st.integers(0, 2**32 - 1))


# --------------------------------------------------------------------------------------------------
# Brute force and drawing
# --------------------------------------------------------------------------------------------------


def dense_grad(X, dY) -> np.ndarray:
    """G = dY^T X in float64, (n_out, n_in)."""
    return dY.astype(np.float64).T @ X.astype(np.float64)


def grad_scale(X, dY) -> float:
    """Largest sum of |terms| of any G entry: float32 rounding of G is below ~B * 2^-24 of it."""
    return float((np.abs(dY).astype(np.float64).T @ np.abs(X).astype(np.float64)).max(initial=0.0))


def exclusion_csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64, indices int32) of the True positions of a bool (n_out, n_in) mask."""
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    return indptr, np.nonzero(mask)[1].astype(np.int32)  # row-major: sorted within each row


def brute_topk(G, excluded, m, salt=0) -> np.ndarray:
    """Flat indices of the top m of |G| among non-excluded positions, ascending (ties: the smaller
    ``tie_rank(flat, salt)`` first)."""
    scores = np.abs(G).ravel()
    flat = np.flatnonzero(~excluded.ravel())
    order = np.lexsort((tie_ranks(flat, salt), -scores[flat]))
    return np.sort(flat[order[:m]])


def brute_rows(G, excluded, counts, salt=0) -> list[np.ndarray]:
    """Per row, the top counts[i] non-excluded columns, ascending (ties: the smaller tie rank of the
    flat position ``i * n_in + j``, not of the column)."""
    n_in = G.shape[1]
    out = []
    for i in range(G.shape[0]):
        cols = np.flatnonzero(~excluded[i])
        order = np.lexsort((tie_ranks(i * n_in + cols, salt), -np.abs(G[i, cols])))
        out.append(np.sort(cols[order[: counts[i]]]))
    return out


def brute_diag(G) -> np.ndarray:
    """S[d] = ||G along wrap-around diagonal d||_2, straight from the definition (DESIGN.md 2)."""
    n_out, n_in = G.shape
    P, L = max(n_out, n_in), min(n_out, n_in)
    S = np.zeros(P)
    for d in range(P):
        for t in range(L):
            i, j = ((t + d) % n_out, t) if n_out >= n_in else (t, (t + d) % n_in)
            S[d] += G[i, j] ** 2
    return np.sqrt(S)


@st.composite
def growth_problems(draw, shape=None):
    """(X, dY, excluded mask, exact): dims 1..24 tall/wide/square, batch 1..6, ties or mixed floats;
    the exclusion set empty, everything, or a random subset."""
    n_out, n_in = shape if shape is not None else draw(S.shapes())
    exact = draw(st.booleans())
    B = draw(st.one_of(st.just(1), st.integers(1, S.MAX_BATCH)))
    X = draw(S.float32_arrays((B, n_in), ties=exact))
    dY = draw(S.float32_arrays((B, n_out), ties=exact))
    kind = draw(st.sampled_from(["empty", "all", "random"]))
    if kind == "empty":
        excluded = np.zeros((n_out, n_in), dtype=bool)
    elif kind == "all":
        excluded = np.ones((n_out, n_in), dtype=bool)
    else:
        excluded = draw(hnp.arrays(bool, (n_out, n_in)))
    return X, dY, excluded, exact


def assert_valid_topk(flat, G, excluded, m, tol):
    """``flat`` (ascending, unique, available) holds min(m, available) positions, and none of them
    scores below an unchosen available position by more than ``tol``."""
    available = np.flatnonzero(~excluded.ravel())
    assert flat.size == min(m, available.size)
    assert np.all(np.diff(flat) > 0), "not strictly ascending"
    assert np.isin(flat, available).all(), "an excluded position was returned"
    scores = np.abs(G).ravel()
    rest = np.setdiff1d(available, flat)
    if flat.size and rest.size:
        assert scores[flat].min() >= scores[rest].max() - tol


# --------------------------------------------------------------------------------------------------
# topk_grad
# --------------------------------------------------------------------------------------------------


@given(problem=growth_problems(), salt=salts, data=st.data())
def test_topk_grad_matches_brute_force(backend, problem, salt, data):
    """Layer-wide top-m of |G| over the non-excluded positions; exact (ties included) on dyadic data."""
    X, dY, excluded, exact = problem
    n_out, n_in = dY.shape[1], X.shape[1]
    N = n_out * n_in
    m = data.draw(st.one_of(st.just(0), st.just(1), st.integers(0, N), st.integers(N, 2 * N + 3)), label="m")
    indptr, indices = exclusion_csr(excluded)
    rows, cols = backend.topk_grad(X, dY, m, indptr, indices, salt)
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert np.all((0 <= cols) & (cols < n_in)) and np.all((0 <= rows) & (rows < n_out))
    flat = rows * n_in + cols
    G = dense_grad(X, dY)
    if exact:
        np.testing.assert_array_equal(flat, brute_topk(G, excluded, m, salt))
    else:
        assert_valid_topk(flat, G, excluded, m, TOL * (1 + grad_scale(X, dY)))


def by_tie_rank(positions, salt) -> list[int]:
    """``positions`` (Python ints) from the smallest tie rank to the largest, one at a time."""
    return sorted(positions, key=lambda p: int(tie_rank(p, salt)))


@pytest.mark.parametrize("salt", [0, 1, 0x9E3779B9, 2**32 - 1])
def test_topk_grad_tie_rule_by_hand(backend, salt):
    """All |g| equal: the m available positions of smallest tie rank win (not the lowest flat
    indices); then larger scores jump the queue, and the ties behind them go by tie rank again."""
    X = np.ones((2, 4), dtype=np.float32)  # G = dY^T X: row i is constant sum_b dY[b, i]
    dY = np.array([[0.5, -0.5, 1.0], [0.5, -0.5, -1.0]], dtype=np.float32)  # |G| = 1, 1, 0 by row
    excluded = np.zeros((3, 4), dtype=bool)
    excluded[0, 1] = True
    indptr, indices = exclusion_csr(excluded)
    ones = [0, 2, 3, 4, 5, 6, 7]  # the available positions of score 1 (1 is excluded)
    rows, cols = backend.topk_grad(X, dY, 3, indptr, indices, salt)
    np.testing.assert_array_equal(rows * 4 + cols, sorted(by_tie_rank(ones, salt)[:3]))
    rows, cols = backend.topk_grad(X, dY, 9, indptr, indices, salt)  # all seven 1s, two of the 0s
    np.testing.assert_array_equal(rows * 4 + cols, sorted(ones + by_tie_rank([8, 9, 10, 11], salt)[:2]))
    rows, cols = backend.topk_grad(X, dY, 12, indptr, indices, salt)  # more than available (11)
    np.testing.assert_array_equal(rows * 4 + cols, np.delete(np.arange(12), 1))
    X[:, 3] = 2.0  # column 3 doubles: G[0, 3] = G[1, 3] = 2 now rank first
    rows, cols = backend.topk_grad(X, dY, 3, indptr, indices, salt)
    np.testing.assert_array_equal(rows * 4 + cols, sorted([3, 7] + by_tie_rank([0, 2, 4, 5, 6], salt)[:1]))


def test_topk_grad_tie_rule_pinned():
    """The tie ranks are fixed numbers (the same sets in every run and on every backend): with salt 0
    the 12 positions of a 3 x 4 layer rank 0, 9, 7, 11, 5, 1, 10, 2, 8, 6, 4, 3, and the salt changes
    the order."""
    assert by_tie_rank(range(12), 0) == [0, 9, 7, 11, 5, 1, 10, 2, 8, 6, 4, 3]
    X, dY = np.zeros((1, 4), dtype=np.float32), np.zeros((1, 3), dtype=np.float32)  # G = 0 everywhere
    none = exclusion_csr(np.zeros((3, 4), dtype=bool))
    for name in ("reference", "cpu"):
        rows, cols = get_backend(name).topk_grad(X, dY, 4, *none, 0)
        np.testing.assert_array_equal(rows * 4 + cols, [0, 7, 9, 11])
    chosen = {tuple(get_backend("cpu").topk_grad(X, dY, 4, *none, s)[1]) for s in (0, 1, 2, 3, 2**32 - 1)}
    assert len(chosen) > 1


@pytest.mark.parametrize("salt", [0, 12345, 2**32 - 1])
def test_topk_grad_zero_batch(backend, salt):
    """Batch 0: G = 0 everywhere, so the available positions of smallest tie rank are chosen (per row
    too: the smallest tie ranks of the row's flat positions)."""
    X = np.zeros((0, 5), dtype=np.float32)
    dY = np.zeros((0, 4), dtype=np.float32)
    excluded = np.zeros((4, 5), dtype=bool)
    excluded[0, :3] = True
    available = [p for p in range(20) if not excluded.ravel()[p]]
    rows, cols = backend.topk_grad(X, dY, 4, *exclusion_csr(excluded), salt)
    np.testing.assert_array_equal(rows * 5 + cols, sorted(by_tie_rank(available, salt)[:4]))
    counts = np.array([3, 2, 0, 5], dtype=np.int64)
    indptr, cols = backend.topk_grad_rows(X, dY, counts, *exclusion_csr(excluded), salt)
    np.testing.assert_array_equal(indptr, [0, 2, 4, 4, 9])
    for i in range(4):
        mine = [p for p in available if p // 5 == i]
        want = sorted(p - 5 * i for p in by_tie_rank(mine, salt)[: counts[i]])
        np.testing.assert_array_equal(cols[indptr[i] : indptr[i + 1]], want, err_msg=f"row {i}")


# --------------------------------------------------------------------------------------------------
# topk_grad_rows
# --------------------------------------------------------------------------------------------------


@given(problem=growth_problems(), salt=salts, data=st.data())
def test_topk_grad_rows_matches_brute_force(backend, problem, salt, data):
    """Per-row top-counts[i] among non-excluded columns, ascending; exact (ties included) on dyadic data."""
    X, dY, excluded, exact = problem
    n_out, n_in = dY.shape[1], X.shape[1]
    counts = np.array(
        data.draw(st.lists(st.one_of(st.just(0), st.integers(0, n_in), st.integers(n_in, 2 * n_in + 2)),
                           min_size=n_out, max_size=n_out), label="counts"),
        dtype=np.int64,
    )
    indptr, cols = backend.topk_grad_rows(X, dY, counts, *exclusion_csr(excluded), salt)
    assert indptr.dtype == np.int64 and cols.dtype == np.int64
    assert indptr.shape == (n_out + 1,) and indptr[0] == 0 and indptr[-1] == cols.size
    available = (~excluded).sum(axis=1)
    np.testing.assert_array_equal(np.diff(indptr), np.minimum(counts, available))
    G = dense_grad(X, dY)
    want = brute_rows(G, excluded, counts, salt)
    tol = TOL * (1 + grad_scale(X, dY))
    for i in range(n_out):
        got = cols[indptr[i] : indptr[i + 1]]
        if exact:
            np.testing.assert_array_equal(got, want[i], err_msg=f"row {i}")
        else:
            assert_valid_topk(got, G[i : i + 1], excluded[i : i + 1], counts[i], tol)


@pytest.mark.parametrize("salt", [0, 7, 0xDEADBEEF, 2**32 - 1])
def test_topk_grad_rows_tie_rule_by_hand(backend, salt):
    """Equal scores within a row: the smaller tie rank of the flat position wins; counts 0 and
    counts > available."""
    X = np.array([[1.0, -1.0, 1.0, 0.5, -1.0]], dtype=np.float32)  # |G[i, j]| = |dY_i| * |X_j|
    dY = np.array([[1.0, 0.5, 1.0]], dtype=np.float32)
    excluded = np.zeros((3, 5), dtype=bool)
    excluded[0, 0] = excluded[2, [1, 2]] = True
    counts = np.array([2, 0, 9], dtype=np.int64)
    indptr, cols = backend.topk_grad_rows(X, dY, counts, *exclusion_csr(excluded), salt)
    np.testing.assert_array_equal(indptr, [0, 2, 2, 5])
    # row 0: columns 1, 2, 4 (flat 1, 2, 4) score 1 and tie, column 3 scores 0.5; row 2: all it has
    np.testing.assert_array_equal(cols[:2], sorted(by_tie_rank([1, 2, 4], salt)[:2]))
    np.testing.assert_array_equal(cols[2:], [0, 3, 4])


def test_zero_gradient_rows_grow_uniformly_over_the_salts():
    """The point of the salted tie rule. A row whose gradient is all zero (dY = 0 there: a dead ReLU)
    grows 4 of its 61 available columns; over 400 salts (those the DST updater derives, the two ends of
    the range among them) every available column is chosen about equally often (chi-square against
    the uniform distribution, p > 1e-3), never an excluded one, where the old rule grew columns 0-3
    every time. Likewise ``topk_grad`` on a layer whose gradient is zero but at two positions: those
    two always, the other 4 spread uniformly over the 62 zero positions. The row with a gradient grows
    the same columns whatever the salt (its scores do not tie), and reference and cpu return
    identical sets for every salt."""
    n_in = 64
    rng = np.random.default_rng(2024)
    salts_ = [0, 2**32 - 1] + [tie_salt(7, u, 0) for u in range(398)]
    ref, cpu = get_backend("reference"), get_backend("cpu")

    # topk_grad_rows: row 0 has a gradient, row 1 none
    X = rng.standard_normal((3, n_in)).astype(np.float32)
    dY = rng.standard_normal((3, 2)).astype(np.float32)
    dY[:, 1] = 0.0
    excluded = np.zeros((2, n_in), dtype=bool)
    excluded[0, [1, 2]] = excluded[1, [5, 17, 40]] = True
    ex = exclusion_csr(excluded)
    counts = np.array([4, 4], dtype=np.int64)
    live = brute_rows(dense_grad(X, dY)[:1], excluded[:1], counts[:1])[0]
    hits = np.zeros(n_in)
    for salt in salts_:
        indptr, cols = ref.topk_grad_rows(X, dY, counts, *ex, salt)
        cpu_indptr, cpu_cols = cpu.topk_grad_rows(X, dY, counts, *ex, salt)
        np.testing.assert_array_equal(cpu_indptr, indptr)
        np.testing.assert_array_equal(cpu_cols, cols)
        np.testing.assert_array_equal(indptr, [0, 4, 8])
        np.testing.assert_array_equal(cols[:4], live)
        hits[cols[4:]] += 1
    assert hits[excluded[1]].sum() == 0
    assert hits.sum() == 4 * len(salts_)
    p = chisquare(hits[~excluded[1]]).pvalue
    assert p > 1e-3, (p, hits.tolist())

    # topk_grad: G = 0 except G[0, 0] and G[0, 1]
    X = np.zeros((2, 16), dtype=np.float32)
    X[:, :2] = [[1.0, -2.0], [0.5, 3.0]]
    dY = np.zeros((2, 4), dtype=np.float32)
    dY[:, 0] = [1.0, 1.0]
    none = exclusion_csr(np.zeros((4, 16), dtype=bool))
    hits = np.zeros(64)
    for salt in salts_:
        rows, cols = ref.topk_grad(X, dY, 6, *none, salt)
        cpu_rows, cpu_cols = cpu.topk_grad(X, dY, 6, *none, salt)
        np.testing.assert_array_equal(cpu_rows, rows)
        np.testing.assert_array_equal(cpu_cols, cols)
        flat = rows * 16 + cols
        assert flat[:2].tolist() == [0, 1]  # the two non-zero scores, always
        hits[flat[2:]] += 1
    assert hits.sum() == 4 * len(salts_)
    p = chisquare(hits[2:]).pvalue
    assert p > 1e-3, (p, hits.tolist())


# --------------------------------------------------------------------------------------------------
# diag_grad_norms
# --------------------------------------------------------------------------------------------------


@given(
    problem=st.sampled_from(["tall", "wide", "square", "one"]).flatmap(
        lambda o: growth_problems(shape=(1, 1)) if o == "one" else S.shapes(o).flatmap(lambda s: growth_problems(shape=s))
    )
)
def test_diag_grad_norms_matches_brute_force(backend, problem):
    """S[d] = sqrt(sum_t G[row(d, t), col(d, t)]^2) on tall, wide, square and 1 x 1 layers."""
    X, dY, _, exact = problem
    S_ = backend.diag_grad_norms(X, dY)
    want = brute_diag(dense_grad(X, dY))
    assert S_.dtype == np.float32 and S_.shape == (max(X.shape[1], dY.shape[1]),)
    L = min(X.shape[1], dY.shape[1])
    np.testing.assert_allclose(S_, want, rtol=1e-6 if exact else 1e-5, atol=TOL * np.sqrt(L) * (1 + grad_scale(X, dY)))


def test_diag_grad_norms_by_hand(backend):
    """A 3 x 2 (tall) layer: diagonal d holds (d, 0), (d + 1 mod 3, 1)."""
    X = np.array([[1.0, 2.0]], dtype=np.float32)
    dY = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)  # G[i, j] = dY_i X_j = [[1, 2], [2, 4], [3, 6]]
    np.testing.assert_allclose(backend.diag_grad_norms(X, dY), np.sqrt([1 + 16, 4 + 36, 9 + 4]), rtol=1e-6)
    # the same layer transposed is wide: diagonal d holds (0, d), (1, d + 1 mod 3)
    np.testing.assert_allclose(backend.diag_grad_norms(dY, X), np.sqrt([1 + 16, 4 + 36, 9 + 4]), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Backends agree; tiling and threads do not matter
# --------------------------------------------------------------------------------------------------


def float32_error(X, dY) -> np.ndarray:
    """(n_out, n_in): a bound on how far a float32 score may sit from the exact |G[i, j]|:
    (B + 2) * (2^-24 * sum_b |dY[b, i] X[b, j]| + 2^-126) (float32 accumulation, then one rounding; the
    absolute term is underflow: a product below float32's smallest normal number, 2^-126, may come out
    as 0 or a subnormal, e.g. 1.2e-36 * 1.2e-36 = 1.4e-72 is 0 in float32)."""
    B = X.shape[0]
    return (B + 2) * (2.0**-24 * (np.abs(dY).astype(np.float64).T @ np.abs(X).astype(np.float64)) + 2.0**-126)


def assert_same_up_to_near_ties(got, want, scores, error, rel=1e-6):
    """Index sets ``got`` and ``want`` are equal, except for float32 near-ties at the boundary.

    ``scores`` are the exact (float64) scores by flat index and ``error`` bounds each backend's
    float32 rounding of them. Two backends can only order positions differently when their scores
    agree to within that rounding, and only the boundary of the selection matters, so every position
    in one set only must score within ``rel`` (relative) plus four rounding bounds of the lowest
    exact score of ``want``.
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.size == want.size
    differing = np.setxor1d(got, want)
    if differing.size == 0:
        return
    boundary = scores[want].min()
    slack = rel * boundary + 4 * error.max()
    assert np.all(np.abs(scores[differing] - boundary) <= slack), (
        f"sets differ beyond float32 near-ties: positions {differing.tolist()} score "
        f"{scores[differing].tolist()}, boundary {boundary}"
    )


@given(problem=growth_problems(), salt=salts, data=st.data())
def test_backends_return_identical_sets(problem, salt, data):
    """reference and cpu agree on hypothesis-drawn problems (exactly on dyadic data)."""
    X, dY, excluded, exact = problem
    ref, cpu = get_backend("reference"), get_backend("cpu")
    n_out, n_in = dY.shape[1], X.shape[1]
    m = data.draw(st.integers(0, n_out * n_in + 1), label="m")
    counts = np.array(data.draw(st.lists(st.integers(0, n_in + 1), min_size=n_out, max_size=n_out)), dtype=np.int64)
    indptr, indices = exclusion_csr(excluded)
    a, b = ref.topk_grad(X, dY, m, indptr, indices, salt), cpu.topk_grad(X, dY, m, indptr, indices, salt)
    c = ref.topk_grad_rows(X, dY, counts, indptr, indices, salt)
    d = cpu.topk_grad_rows(X, dY, counts, indptr, indices, salt)
    if exact:
        for u, v in zip(a + c, b + d):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(ref.diag_grad_norms(X, dY), cpu.diag_grad_norms(X, dY))
    else:
        scores, error = np.abs(dense_grad(X, dY)).ravel(), float32_error(X, dY).ravel()
        assert_same_up_to_near_ties(b[0] * n_in + b[1], a[0] * n_in + a[1], scores, error)
        np.testing.assert_array_equal(c[0], d[0])
        for i in range(n_out):
            rows_i = slice(i * n_in, (i + 1) * n_in)
            assert_same_up_to_near_ties(
                d[1][d[0][i] : d[0][i + 1]], c[1][c[0][i] : c[0][i + 1]], scores[rows_i], error[rows_i]
            )


@pytest.fixture(scope="module")
def larger_problem():
    """A 200 x 300 layer at batch 32, random floats, half of the positions excluded."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((32, 300), dtype=np.float32)
    dY = rng.standard_normal((32, 200), dtype=np.float32)
    excluded = rng.random((200, 300)) < 0.5
    return X, dY, excluded


@pytest.mark.parametrize("m", [0, 1, 1000, 29_000, 30_001, 100_000])
def test_backends_agree_on_a_larger_layer(larger_problem, m):
    """200 x 300, batch 32: identical top-m sets (up to float32 near-ties), per-row sets, norms."""
    X, dY, excluded = larger_problem
    ref, cpu = get_backend("reference"), get_backend("cpu")
    indptr, indices = exclusion_csr(excluded)
    scores, error = np.abs(dense_grad(X, dY)), float32_error(X, dY)
    a, b = ref.topk_grad(X, dY, m, indptr, indices), cpu.topk_grad(X, dY, m, indptr, indices)
    assert a[0].size == b[0].size == min(m, int((~excluded).sum()))
    assert_same_up_to_near_ties(b[0] * 300 + b[1], a[0] * 300 + a[1], scores.ravel(), error.ravel())
    counts = np.full(200, m // 200, dtype=np.int64)
    c, d = ref.topk_grad_rows(X, dY, counts, indptr, indices), cpu.topk_grad_rows(X, dY, counts, indptr, indices)
    np.testing.assert_array_equal(c[0], d[0])
    for i in range(200):
        assert_same_up_to_near_ties(d[1][d[0][i] : d[0][i + 1]], c[1][c[0][i] : c[0][i + 1]], scores[i], error[i])


def test_diag_norms_agree_on_a_larger_layer(larger_problem):
    X, dY, _ = larger_problem
    np.testing.assert_allclose(
        get_backend("cpu").diag_grad_norms(X, dY), get_backend("reference").diag_grad_norms(X, dY), rtol=1e-5
    )
    np.testing.assert_allclose(  # wide orientation
        get_backend("cpu").diag_grad_norms(dY, X), get_backend("reference").diag_grad_norms(dY, X), rtol=1e-5
    )


@given(problem=growth_problems(), salt=salts, data=st.data())
def test_tiny_tiles_change_nothing(problem, salt, data):
    """Tiles of a single row and a minimal buffer (constant compaction): the same results as the
    default tiling, in both backends, and identical to each other on dyadic data."""
    X, dY, excluded, exact = problem
    n_out, n_in = dY.shape[1], X.shape[1]
    m = data.draw(st.integers(0, n_out * n_in), label="m")
    counts = np.array(data.draw(st.lists(st.integers(0, n_in), min_size=n_out, max_size=n_out)), dtype=np.int64)
    indptr, indices = exclusion_csr(excluded)
    results = {}
    for tiny in (False, True):
        patches = (
            mock.patch.object(cpu_growth, "TILE_ELEMS", 1),  # one row per tile
            mock.patch.object(cpu_growth, "_buffer_capacity", lambda k: k + 1),  # cut back at every key
            mock.patch.object(reference_growth, "TILE_ELEMS", 1),
        )
        with contextlib.ExitStack() as stack:
            if tiny:
                for patch in patches:
                    stack.enter_context(patch)
            for name in ("reference", "cpu"):
                B = get_backend(name)
                results[tiny, name] = (
                    B.topk_grad(X, dY, m, indptr, indices, salt),
                    B.topk_grad_rows(X, dY, counts, indptr, indices, salt),
                    B.diag_grad_norms(X, dY),
                )
    # cpu: G's entries do not depend on the tiling, so even general data gives identical sets
    (t0, r0, s0), (t1, r1, s1) = results[False, "cpu"], results[True, "cpu"]
    for u, v in zip(t0 + r0, t1 + r1):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(s0, s1, rtol=1e-12)
    if exact:  # the reference's float64 tiles may round differently with other tile shapes
        for u, v in zip(sum(results[True, "reference"][:2], ()), t1 + r1):
            np.testing.assert_array_equal(u, v)


def test_cpu_results_do_not_depend_on_thread_count(larger_problem):
    """Bit-identical cpu results with 1 thread and with all threads, and from call to call."""
    X, dY, excluded = larger_problem
    cpu = get_backend("cpu")
    indptr, indices = exclusion_csr(excluded)
    counts = np.arange(200, dtype=np.int64) % 40

    def run():
        return (
            *cpu.topk_grad(X, dY, 5000, indptr, indices),
            *cpu.topk_grad_rows(X, dY, counts, indptr, indices),
            cpu.diag_grad_norms(X, dY),
            cpu.diag_grad_norms(dY, X),
        )

    with mock.patch.object(cpu_growth, "TILE_ELEMS", 3000):  # several tiles, so several workers
        first = run()
        previous = numba.get_num_threads()
        try:
            numba.set_num_threads(1)
            single = run()
        finally:
            numba.set_num_threads(previous)
        again = run()
    for u, v, w in zip(first, single, again):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, w)


@pytest.mark.parametrize("m", [1000, 3000, 40_000])
def test_cpu_sampled_threshold_is_only_a_filter(m):
    """On a layer large enough for the cpu backend's sampled starting threshold (400 x 400), the
    result is the same with that threshold, with none, and with one too high (forcing the rescan),
    and agrees with the reference up to float32 near-ties."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 400), dtype=np.float32)
    dY = rng.standard_normal((8, 400), dtype=np.float32)
    excluded = rng.random((400, 400)) < 0.1
    indptr, indices = exclusion_csr(excluded)
    n_available = int((~excluded).sum())
    assert n_available >= 4 * cpu_growth.SAMPLE_SIZE
    cpu = get_backend("cpu")
    sampled = cpu_growth._starting_threshold(
        np.ascontiguousarray(dY.T), np.ascontiguousarray(X.T), indptr, indices, m, n_available
    )
    assert sampled > 0  # the path under test is taken
    want = cpu.topk_grad(X, dY, m, indptr, indices)
    for forced in (-1, np.float32(np.inf).view(np.int32) - 1):  # none; one that no score exceeds
        with mock.patch.object(cpu_growth, "_starting_threshold", lambda *args, t=int(forced): t):
            got = cpu.topk_grad(X, dY, m, indptr, indices)
        for u, v in zip(want, got):
            np.testing.assert_array_equal(u, v)
    ref = get_backend("reference").topk_grad(X, dY, m, indptr, indices)
    scores, error = np.abs(dense_grad(X, dY)).ravel(), float32_error(X, dY).ravel()
    assert_same_up_to_near_ties(want[0] * 400 + want[1], ref[0] * 400 + ref[1], scores, error)


@given(
    scores=hnp.arrays(np.int32, st.integers(1, 300), elements=st.integers(-1, 6)),
    n_groups=st.sampled_from([16, 64, 256]),
    k=st.integers(0, 300),
)
def test_cpu_row_threshold_is_a_lower_bound(scores, n_groups, k):
    """The per-row starting threshold of the cpu ``topk_grad_rows`` (from strided group maxima, many
    ties, excluded columns as -1) is a key that at least k of the row's scores reach: the k-th
    largest score is at least its score. With fewer than k groups holding a score it is -1."""
    gm = np.empty(n_groups, dtype=np.int32)
    cpu_growth._group_maxima(scores, gm)
    want = np.full(n_groups, -1, dtype=np.int32)
    for c in range(n_groups):
        if scores[c::n_groups].size:
            want[c] = scores[c::n_groups].max()
    np.testing.assert_array_equal(gm, want)
    threshold = int(cpu_growth._row_threshold(gm, k, np.empty(n_groups, dtype=np.int64)))
    if k == 0 or int((gm >= 0).sum()) < k:
        assert threshold == -1
        return
    assert threshold >= -1
    if threshold >= 0:
        kth_score = np.sort(scores)[::-1][k - 1]
        assert kth_score >= (threshold + 1) >> 32  # every score of the top k passes the filter


@pytest.mark.parametrize("excluded_fraction", [0.0, 0.3])
def test_cpu_rows_on_long_rows_with_ties_match_the_reference(excluded_fraction):
    """Rows of 4100 columns (256 strided groups and a remainder), small-integer data (exact sums,
    many equal scores: the tie rule decides), counts below and above the number of groups: the cpu
    per-row sets equal the reference's."""
    rng = np.random.default_rng(11)
    X = rng.integers(-2, 3, size=(3, 4100)).astype(np.float32)
    dY = rng.integers(-2, 3, size=(3, 40)).astype(np.float32)
    excluded = rng.random((40, 4100)) < excluded_fraction
    indptr, indices = exclusion_csr(excluded)
    counts = np.array([0, 1, 2, 7, 100, 255, 256, 257, 300, 4099] * 4, dtype=np.int64)
    for salt in (0, 12345):
        want = get_backend("reference").topk_grad_rows(X, dY, counts, indptr, indices, salt)
        got = get_backend("cpu").topk_grad_rows(X, dY, counts, indptr, indices, salt)
        for u, v in zip(want, got):
            np.testing.assert_array_equal(u, v)


@given(problem=growth_problems(), salt=salts, data=st.data())
def test_topk_grad_with_rows_is_both_selections_with_their_scores(backend, problem, salt, data):
    """``topk_grad_with_rows`` returns exactly ``topk_grad`` and ``topk_grad_rows`` of the same backend
    with nothing excluded, and the per-row scores are the float32 |G| those rank (to float32 rounding
    of the float64 oracle)."""
    X, dY, _, exact = problem
    n_out, n_in = dY.shape[1], X.shape[1]
    m = data.draw(st.integers(0, n_out * n_in + 1), label="m")
    counts = np.array(data.draw(st.lists(st.integers(0, n_in + 1), min_size=n_out, max_size=n_out)), dtype=np.int64)
    nothing = np.zeros(n_out + 1, dtype=np.int64), np.empty(0, dtype=np.int32)
    got = backend.topk_grad_with_rows(X, dY, m, counts, salt)
    want = (*backend.topk_grad(X, dY, m, *nothing, salt), *backend.topk_grad_rows(X, dY, counts, *nothing, salt))
    assert len(got) == 5
    for u, v in zip(got[:4], want):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)
    assert got[4].dtype == np.float32 and got[4].shape == got[3].shape
    rows = np.repeat(np.arange(n_out), np.diff(got[2]))
    oracle = np.abs(dense_grad(X, dY))[rows, got[3]]
    if exact:
        np.testing.assert_array_equal(got[4], oracle.astype(np.float32))
    else:
        np.testing.assert_allclose(got[4], oracle, rtol=1e-5, atol=4 * float(float32_error(X, dY).max()))


@pytest.mark.parametrize("m", [0, 1, 5000, 60_000])
def test_cpu_topk_grad_with_rows_on_a_larger_layer(larger_problem, m):
    """200 x 300 (several tiles and workers, the sampled threshold and per-row thresholds taken): the
    cpu one-pass selection equals the cpu two-pass one exactly, and the reference up to near-ties."""
    X, dY, _ = larger_problem
    cpu, ref = get_backend("cpu"), get_backend("reference")
    counts = (np.arange(200, dtype=np.int64) * 7) % 90
    nothing = np.zeros(201, dtype=np.int64), np.empty(0, dtype=np.int32)
    with mock.patch.object(cpu_growth, "TILE_ELEMS", 3000):
        got = cpu.topk_grad_with_rows(X, dY, m, counts, 99)
    want = (*cpu.topk_grad(X, dY, m, *nothing, 99), *cpu.topk_grad_rows(X, dY, counts, *nothing, 99))
    for u, v in zip(got[:4], want):
        np.testing.assert_array_equal(u, v)
    r = ref.topk_grad_with_rows(X, dY, m, counts, 99)
    scores, error = np.abs(dense_grad(X, dY)), float32_error(X, dY)
    assert_same_up_to_near_ties(got[0] * 300 + got[1], r[0] * 300 + r[1], scores.ravel(), error.ravel())
    np.testing.assert_array_equal(got[2], r[2])


def test_topk_grad_with_rows_refuses_bad_operands(backend):
    with pytest.raises(PureriglError, match="m"):
        backend.topk_grad_with_rows(X0, DY0, -1, COUNTS0)
    with pytest.raises(PureriglError):
        backend.topk_grad_with_rows(X0, DY0, 1, COUNTS0[:2])
    with pytest.raises(PureriglError):
        backend.topk_grad_with_rows(X0.astype(np.float64), DY0, 1, COUNTS0)
    with pytest.raises(PureriglError, match="salt"):
        backend.topk_grad_with_rows(X0, DY0, 1, COUNTS0, -1)


def test_inputs_are_left_untouched(backend, larger_problem):
    X, dY, excluded = larger_problem
    indptr, indices = exclusion_csr(excluded)
    counts = np.full(200, 7, dtype=np.int64)
    before = [a.copy() for a in (X, dY, indptr, indices, counts)]
    backend.topk_grad(X, dY, 100, indptr, indices)
    backend.topk_grad_rows(X, dY, counts, indptr, indices)
    backend.diag_grad_norms(X, dY)
    for a, b in zip(before, (X, dY, indptr, indices, counts)):
        np.testing.assert_array_equal(a, b)


def test_operand_layouts_and_integer_widths(backend, larger_problem):
    """Non-contiguous X / dY and other integer widths of the exclusion arrays give the same results."""
    X, dY, excluded = larger_problem
    indptr, indices = exclusion_csr(excluded)
    want = backend.topk_grad(X, dY, 500, indptr, indices)
    Xf, dYf = np.asfortranarray(X), np.repeat(dY, 2, axis=1)[:, ::2]  # column-major, strided
    got = backend.topk_grad(Xf, dYf, np.int32(500), indptr.astype(np.int32), indices.astype(np.int64))
    for u, v in zip(want, got):
        np.testing.assert_array_equal(u, v)
    counts = np.full(200, 3, dtype=np.int32)
    np.testing.assert_array_equal(
        np.concatenate(backend.topk_grad_rows(X, dY, counts, indptr, indices)),
        np.concatenate(backend.topk_grad_rows(Xf, dYf, counts.astype(np.uint8), indptr, indices)),
    )


# --------------------------------------------------------------------------------------------------
# Bad operands
# --------------------------------------------------------------------------------------------------

X0 = np.ones((2, 4), dtype=np.float32)
DY0 = np.ones((2, 3), dtype=np.float32)
INDPTR0 = np.array([0, 1, 1, 3], dtype=np.int64)
INDICES0 = np.array([2, 0, 3], dtype=np.int32)
COUNTS0 = np.array([1, 0, 2], dtype=np.int64)

BAD_DENSE = [
    ("X float64", dict(X=X0.astype(np.float64)), DTypeError),
    ("X list", dict(X=X0.tolist()), DTypeError),
    ("X 1-D", dict(X=X0[0]), ShapeError),
    ("batch mismatch", dict(dY=DY0[:1]), ShapeError),
    ("X nan", dict(X=np.where(np.eye(2, 4, dtype=bool), np.float32(np.nan), X0).astype(np.float32)), OperandError),
    ("dY inf", dict(dY=np.full((2, 3), np.inf, dtype=np.float32)), OperandError),
]

BAD_EXCLUSION = [
    ("indptr float", dict(exclude_indptr=INDPTR0.astype(np.float64)), DTypeError),
    ("indices list", dict(exclude_indices=[2, 0, 3]), DTypeError),
    ("indptr length", dict(exclude_indptr=INDPTR0[:-1]), ShapeError),
    ("indptr 2-D", dict(exclude_indptr=INDPTR0[None]), ShapeError),
    ("indptr start", dict(exclude_indptr=np.array([1, 1, 1, 3])), OperandError),
    ("indptr end", dict(exclude_indptr=np.array([0, 1, 1, 2])), OperandError),
    ("indptr decreasing", dict(exclude_indptr=np.array([0, 2, 1, 3])), OperandError),
    ("column too large", dict(exclude_indices=np.array([4, 0, 3], dtype=np.int32)), ShapeError),
    ("column negative", dict(exclude_indices=np.array([2, -1, 3], dtype=np.int32)), ShapeError),
    ("row unsorted", dict(exclude_indices=np.array([2, 3, 0], dtype=np.int32)), OperandError),
    ("row duplicate", dict(exclude_indices=np.array([2, 3, 3], dtype=np.int32)), OperandError),
]


def call(backend, op, **overrides):
    """The op on the baseline operands with ``overrides``; the salt is passed only when overridden
    (else the op's default, 0)."""
    args = dict(X=X0, dY=DY0, exclude_indptr=INDPTR0, exclude_indices=INDICES0)
    args.update(overrides)
    salt = (args["salt"],) if "salt" in args else ()
    if op == "topk_grad":
        return backend.topk_grad(
            args["X"], args["dY"], args.get("m", 2), args["exclude_indptr"], args["exclude_indices"], *salt
        )
    if op == "topk_grad_rows":
        return backend.topk_grad_rows(
            args["X"], args["dY"], args.get("counts", COUNTS0), args["exclude_indptr"], args["exclude_indices"], *salt
        )
    return backend.diag_grad_norms(args["X"], args["dY"])


def test_good_operands_pass(backend):
    """The baseline of the bad-operand cases is accepted (rows of 1, 0 and 2 excluded columns). Every
    |G| is 2, so the tie rule alone chooses: with the default salt 0 the available positions in order
    of tie rank are 0, 9, 7, 5, 1, 10, 6, 4, 3."""
    available = [0, 1, 3, 4, 5, 6, 7, 9, 10]  # 2, 8 and 11 are excluded
    assert by_tie_rank(available, 0) == [0, 9, 7, 5, 1, 10, 6, 4, 3]
    rows, cols = call(backend, "topk_grad")
    np.testing.assert_array_equal(rows * 4 + cols, [0, 9])
    for salt in (0, 5, 2**32 - 1):
        rows, cols = call(backend, "topk_grad", salt=salt)
        np.testing.assert_array_equal(rows * 4 + cols, sorted(by_tie_rank(available, salt)[:2]))
    indptr, cols = call(backend, "topk_grad_rows")
    np.testing.assert_array_equal(indptr, [0, 1, 1, 3])
    np.testing.assert_array_equal(cols, [0, 1, 2])  # row 0: position 0 (tie rank 0) of 0, 1, 3
    np.testing.assert_allclose(call(backend, "diag_grad_norms"), np.full(4, np.sqrt(3 * 2.0**2)), rtol=1e-6)


@pytest.mark.parametrize("op", ["topk_grad", "topk_grad_rows", "diag_grad_norms"])
@pytest.mark.parametrize("case, overrides, error", BAD_DENSE, ids=[c[0] for c in BAD_DENSE])
def test_bad_dense_operands(backend, op, case, overrides, error):
    with pytest.raises(error):
        call(backend, op, **overrides)


@pytest.mark.parametrize("op", ["topk_grad", "topk_grad_rows"])
@pytest.mark.parametrize("case, overrides, error", BAD_EXCLUSION, ids=[c[0] for c in BAD_EXCLUSION])
def test_bad_exclusion_sets(backend, op, case, overrides, error):
    with pytest.raises(error) as info:
        call(backend, op, **overrides)
    assert isinstance(info.value, PureriglError)


@pytest.mark.parametrize(
    "m, error", [(-1, OperandError), (2.0, DTypeError), (True, DTypeError), (None, DTypeError), (np.int64(-3), OperandError)]
)
def test_bad_m(backend, m, error):
    with pytest.raises(error, match="m must"):
        call(backend, "topk_grad", m=m)


@pytest.mark.parametrize(
    "counts, error",
    [
        (np.array([1, -1, 0]), OperandError),
        (np.array([1.0, 0.0, 2.0]), DTypeError),
        ([1, 0, 2], DTypeError),
        (np.array([1, 0]), ShapeError),
        (np.array([[1, 0, 2]]), ShapeError),
    ],
    ids=["negative", "float", "list", "short", "2-D"],
)
def test_bad_counts(backend, counts, error):
    with pytest.raises(error, match="counts"):
        call(backend, "topk_grad_rows", counts=counts)


@pytest.mark.parametrize("op", ["topk_grad", "topk_grad_rows"])
@pytest.mark.parametrize(
    "salt, match",
    [
        (-1, r"salt must be in \[0, 2\*\*32\), got -1"),
        (2**32, r"salt must be in \[0, 2\*\*32\), got 4294967296"),
        (np.int64(-5), r"salt must be in \[0, 2\*\*32\), got -5"),
        (2**64, r"salt must be in \[0, 2\*\*32\)"),
        (2.0, r"salt must be an integer in \[0, 2\*\*32\), got 2\.0"),
        (np.float32(1.0), r"salt must be an integer"),
        ("3", r"salt must be an integer"),
        (None, r"salt must be an integer"),
        (True, r"salt must be an integer"),
        (np.bool_(False), r"salt must be an integer"),
        (np.array([1]), r"salt must be an integer"),
    ],
    ids=["-1", "2**32", "int64 -5", "2**64", "float", "float32", "str", "None", "bool", "np.bool_", "array"],
)
def test_bad_salt(backend, op, salt, match):
    """A salt that is not an integer in [0, 2^32) is refused with an error that names it, in both
    backends."""
    with pytest.raises(OperandError, match=match):
        call(backend, op, salt=salt)


def test_salt_integer_types_are_accepted(backend):
    """Any integer type holding the same value gives the same sets."""
    X, dY = np.zeros((1, 6), dtype=np.float32), np.zeros((1, 5), dtype=np.float32)  # all ties
    none = exclusion_csr(np.zeros((5, 6), dtype=bool))
    counts = np.full(5, 2, dtype=np.int64)
    for value in (0, 3, 2**31, 2**32 - 1):
        want = backend.topk_grad(X, dY, 7, *none, value)
        want_rows = backend.topk_grad_rows(X, dY, counts, *none, value)
        for typed in (np.int64(value), np.uint32(value), np.uint64(value)):
            for u, v in zip(want + want_rows, backend.topk_grad(X, dY, 7, *none, typed)
                            + backend.topk_grad_rows(X, dY, counts, *none, typed)):
                np.testing.assert_array_equal(u, v)


def test_errors_are_the_builtin_kinds_too():
    """Callers may catch ValueError / TypeError (errors.py contract)."""
    assert issubclass(OperandError, ValueError) and issubclass(ShapeError, ValueError)
    assert issubclass(DTypeError, TypeError)
