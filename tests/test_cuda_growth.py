"""The numba.cuda growth selections (purerigl.kernels.cuda.growth) against a brute force and the
reference and cpu backends, run on Numba's CUDA simulator (no GPU needed).

Pins down (DESIGN.md sections 3 and 6):

- ``topk_grad``, ``topk_grad_rows``, ``topk_grad_with_rows`` and ``diag_grad_norms`` return exactly
  what the reference and
  cpu backends return (same dtypes, same order, same index sets), and what a brute force on the dense
  G = dY^T X returns: sort by (-|G|, tie_rank(flat, salt)), take the first m (per row: the first
  counts[i]), the results ascending by position;
- the shared tie rule of :mod:`purerigl.kernels._rank_key` (equal scores: the smaller tie rank of the
  flat position, in the per-row selection too, so rows order their ties differently), with deliberate
  ties (dyadic values, all-zero rows and gradients) and the salt drawn over [0, 2^32) (0 and 2^32 - 1
  included); the device tie rank and its inverse agree with the host's; excluded positions are never
  chosen; m = 0, m >= available, empty exclusion, rows fully excluded, counts 0, counts >= available;
  tall, wide, square and 1 x 1 layers for the norms;
- the result does not depend on the tile size, the compaction lanes, the block size or the threads
  per launch (all patched tiny, so tiny layers span several tiles, blocks and grid-stride rounds),
  and the running top-k's cut-back and threshold path is taken;
- no device buffer holds n_out * n_in entries: G lives only in tiles.

Shapes are tiny (n_out, n_in <= 8, batch <= 4; long thin layers up to 24 x 3) and values dyadic
(``strategies.TIES``, quarters), so every float32 sum is exact and every backend ranks the very same
numbers. Runs on Numba's CUDA simulator (tests/conftest.py turns it on), which starts one Python
thread per CUDA thread: hence the few examples per property and the patched-down launches.
"""

from __future__ import annotations

import contextlib
import types
from unittest import mock

import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import TIES

from purerigl.errors import OperandError, ShapeError
from purerigl.kernels import _rank_key, cpu, get_backend, reference
from purerigl.kernels._rank_key import tie_ranks
from purerigl.kernels.cuda import _growth_tiles, _launch, diagonal_growth, growth, growth_ops
from purerigl.kernels.cuda._launch import cuda

pytestmark = pytest.mark.skipif(  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
    _launch.unavailable_reason() is not None, reason=f"cuda unavailable: {_launch.unavailable_reason()}"
)

EXAMPLES = settings(max_examples=12, deadline=None)

MAX_DIM = 8

#: The tie rule's salt: both ends of [0, 2^32) and anything between.
salts = st.one_of(st.just(0), st.just(2**32 - 1), st.integers(0, 2**32 - 1))


# --------------------------------------------------------------------------------------------------
# Launch configuration, brute force, drawing
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_config(tile: int = 5, lanes: int = 3, block: int = 4, grid_threads: int = 8):
    """Patch the growth module's tile size, compaction lanes and threads per launch, and the block size."""
    with contextlib.ExitStack() as stack:
        for name, value in (("TILE_ELEMS", tile), ("LANES", lanes), ("GRID_THREADS", grid_threads)):
            stack.enter_context(mock.patch.object(growth, name, value))
        stack.enter_context(mock.patch.object(_launch, "THREADS_PER_BLOCK", block))
        yield


configs = st.fixed_dictionaries(
    {
        "tile": st.integers(1, 2 * MAX_DIM),
        "lanes": st.integers(1, 5),
        "block": st.integers(1, 4),
        "grid_threads": st.sampled_from([1, 3, 8]),
    }
)


def dense_grad(X, dY) -> np.ndarray:
    return dY.astype(np.float64).T @ X.astype(np.float64)  # (n_out, n_in)


def exclusion_csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64, indices int32) of the True positions of a bool (n_out, n_in) mask."""
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    return indptr, np.nonzero(mask)[1].astype(np.int32)


def brute_topk(X, dY, excluded, m, salt=0) -> np.ndarray:
    """Flat indices of the top m of |G| over non-excluded positions, ties to the smaller
    tie_rank(flat, salt), ascending."""
    scores = np.abs(dense_grad(X, dY)).ravel()
    flat = np.flatnonzero(~excluded.ravel())
    order = np.lexsort((tie_ranks(flat, salt), -scores[flat]))  # -score first, then the tie rank
    return np.sort(flat[order[:m]])


def brute_rows(X, dY, excluded, counts, salt=0) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, cols) of each row's top counts[i] non-excluded columns, ties to the smaller tie rank of
    the flat position i * n_in + j."""
    G = np.abs(dense_grad(X, dY))
    n_in = G.shape[1]
    chosen = []
    for i in range(G.shape[0]):
        cols = np.flatnonzero(~excluded[i])
        ties = tie_ranks(i * n_in + cols, salt)
        chosen.append(np.sort(cols[np.lexsort((ties, -G[i, cols]))[: counts[i]]]))
    indptr = np.concatenate([[0], np.cumsum([c.size for c in chosen])]).astype(np.int64)
    return indptr, np.concatenate([np.empty(0, dtype=np.int64), *chosen]).astype(np.int64)


def brute_diag(X, dY) -> np.ndarray:
    """S[d] = ||G along wrap-around diagonal d||, walking t = 0 .. L-1 (DESIGN.md section 2)."""
    G = dense_grad(X, dY)
    n_out, n_in = G.shape
    S = np.zeros(max(n_out, n_in))
    for d in range(S.size):
        for t in range(min(n_out, n_in)):
            i, j = ((t + d) % n_out, t) if n_out >= n_in else (t, (t + d) % n_in)
            S[d] += G[i, j] ** 2
    return np.sqrt(S)


def dyadic(shape):
    return st.lists(st.sampled_from(TIES), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))).map(
        lambda v: np.array(v, dtype=np.float32).reshape(shape)
    )


@st.composite
def problems(draw, orientation: str | None = None):
    """(X, dY, excluded): tiny dyadic operands (tall, wide or square), some dY columns all zero (rows
    of G all tied at 0); each row of the exclusion mask empty, full or random."""
    n_out, n_in = draw(S.shapes(orientation, max_dim=MAX_DIM))
    B = draw(st.integers(1, 4))
    X, dY = draw(dyadic((B, n_in))), draw(dyadic((B, n_out)))
    dead = np.array(draw(st.lists(st.booleans(), min_size=n_out, max_size=n_out)), dtype=bool)
    dY[:, dead] = 0.0  # a unit that was off for the whole batch: its row of G is all zero
    row = st.one_of(
        st.just([False] * n_in), st.just([True] * n_in), st.lists(st.booleans(), min_size=n_in, max_size=n_in)
    )
    excluded = np.array(draw(st.lists(row, min_size=n_out, max_size=n_out)), dtype=bool).reshape(n_out, n_in)
    return X, dY, excluded


def assert_same(got, want):
    """Equal arrays of equal dtypes, element for element (tuples compared pairwise)."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for u, v in zip(got, want):
            assert_same(u, v)
        return
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------------
# Properties against the brute force, the reference and the cpu backend
# --------------------------------------------------------------------------------------------------


@EXAMPLES
@given(problem=problems(), config=configs, salt=salts, data=st.data())
def test_topk_grad_matches_brute_force_and_backends(problem, config, salt, data):
    X, dY, excluded = problem
    N = excluded.size
    m = data.draw(st.one_of(st.just(0), st.just(1), st.integers(0, N), st.integers(N, N + 3)), label="m")
    indptr, indices = exclusion_csr(excluded)
    with tiny_config(**config):
        got = growth.topk_grad(X, dY, m, indptr, indices, salt)
    want = reference.topk_grad(X, dY, m, indptr, indices, salt)
    assert_same(got, want)
    assert_same(got, cpu.topk_grad(X, dY, m, indptr, indices, salt))
    assert_same(got[0] * X.shape[1] + got[1], brute_topk(X, dY, excluded, m, salt))


@EXAMPLES
@given(problem=problems(), config=configs, salt=salts, data=st.data())
def test_topk_grad_rows_matches_brute_force_and_backends(problem, config, salt, data):
    X, dY, excluded = problem
    n_out, n_in = excluded.shape
    count = st.one_of(st.just(0), st.integers(0, n_in), st.integers(n_in, n_in + 2))
    counts = np.array(data.draw(st.lists(count, min_size=n_out, max_size=n_out), label="counts"), dtype=np.int64)
    indptr, indices = exclusion_csr(excluded)
    with tiny_config(**config):
        got = growth.topk_grad_rows(X, dY, counts, indptr, indices, salt)
    assert_same(got, reference.topk_grad_rows(X, dY, counts, indptr, indices, salt))
    assert_same(got, cpu.topk_grad_rows(X, dY, counts, indptr, indices, salt))
    assert_same(got, brute_rows(X, dY, excluded, counts, salt))


@EXAMPLES
@given(problem=problems(), config=configs, salt=salts, data=st.data())
def test_topk_grad_with_rows_matches_brute_force_and_backends(problem, config, salt, data):
    """SRigL's one-pass selection: the layer-wide top m and the per-row top counts[i] over every
    position (the exclusion of the drawn problem is ignored), with the scores |G| of the per-row
    columns, equal to the reference, the cpu backend and the brute force; and the device entry point
    returns the same device arrays."""
    X, dY, _ = problem
    n_out, n_in = dY.shape[1], X.shape[1]
    N = n_out * n_in
    m = data.draw(st.one_of(st.just(0), st.integers(0, N), st.integers(N, N + 3)), label="m")
    count = st.one_of(st.just(0), st.integers(0, n_in), st.integers(n_in, n_in + 2))
    counts = np.array(data.draw(st.lists(count, min_size=n_out, max_size=n_out), label="counts"), dtype=np.int64)
    with tiny_config(**config):
        got = growth_ops.topk_grad_with_rows(X, dY, m, counts, salt)
        dev = growth_ops.topk_grad_with_rows(cuda.to_device(X), cuda.to_device(dY), m, counts, salt)
    want = reference.topk_grad_with_rows(X, dY, m, counts, salt)
    assert_same(got, want)
    assert_same(tuple(a.copy_to_host() for a in dev), want)
    assert_same(got, cpu.topk_grad_with_rows(X, dY, m, counts, salt))
    nothing = np.zeros((n_out, n_in), dtype=bool)
    assert_same(got[0] * n_in + got[1], brute_topk(X, dY, nothing, m, salt))
    assert_same(got[2:4], brute_rows(X, dY, nothing, counts, salt))
    rows = np.repeat(np.arange(n_out), np.diff(got[2]))
    assert_same(got[4], np.abs(dense_grad(X, dY))[rows, got[3]].astype(np.float32))


@EXAMPLES
@given(
    problem=st.sampled_from(["tall", "wide", "square"]).flatmap(problems),
    config=configs,
)
def test_diag_grad_norms_matches_brute_force_and_backends(problem, config):
    X, dY, _ = problem
    with tiny_config(**config):
        got = diagonal_growth.diag_grad_norms(X, dY)
    assert_same(got, reference.diag_grad_norms(X, dY))  # exact: dyadic squares sum exactly in float64
    assert_same(got, cpu.diag_grad_norms(X, dY))
    np.testing.assert_allclose(got, brute_diag(X, dY), rtol=1e-6)


@EXAMPLES
@given(data=st.data(), config=configs, salt=salts)
def test_topk_grad_running_pool_on_long_thin_layers(data, config, salt):
    """Many tiny tiles and a small m: the pool is cut back and its threshold raised many times, with
    scores in any order (many distinct levels, some ties); still exactly the brute force."""
    n_out, n_in = data.draw(st.integers(2, 24), label="n_out"), data.draw(st.integers(1, 3), label="n_in")
    levels = st.integers(-16, 16).map(lambda v: v / 4)
    dY = np.array([data.draw(st.lists(levels, min_size=n_out, max_size=n_out), label="dY")], dtype=np.float32)
    X = np.array([data.draw(st.lists(st.sampled_from([-1.0, 0.5, 1.0, 2.0]), min_size=n_in, max_size=n_in))],
                 dtype=np.float32)
    excluded = np.array(data.draw(st.lists(st.booleans(), min_size=n_out * n_in, max_size=n_out * n_in)))
    excluded = excluded.reshape(n_out, n_in)
    m = data.draw(st.integers(1, 4), label="m")
    with tiny_config(**{**config, "tile": min(config["tile"], 3)}):
        rows, cols = growth.topk_grad(X, dY, m, *exclusion_csr(excluded), salt)
    np.testing.assert_array_equal(rows * n_in + cols, brute_topk(X, dY, excluded, m, salt))


def test_threshold_is_the_kth_kept_key():
    """One position per tile, k = 2: after the first cut-back the pool holds 10, 9 and a later 9.5
    must still get in (a threshold at 10 would lose it); 8.5 must not."""
    dY = np.array([[10.0, 9.0, 8.0, 7.0, 6.0, 9.5, 8.5, 5.0]], dtype=np.float32)
    X = np.ones((1, 1), dtype=np.float32)
    indptr, indices = exclusion_csr(np.zeros((8, 1), dtype=bool))
    with tiny_config(tile=1, lanes=1):
        rows, _ = growth.topk_grad(X, dY, 2, indptr, indices)
    np.testing.assert_array_equal(rows, [0, 5])


# --------------------------------------------------------------------------------------------------
# By hand: the tie rule and the edge cases
# --------------------------------------------------------------------------------------------------


def by_tie_rank(positions, salt):
    """``positions`` (Python ints) best first among equal scores: smaller tie rank first, each rank
    computed one position at a time on Python ints (not through the array helper)."""
    return sorted(positions, key=lambda p: _rank_key.tie_rank(p, salt))


@pytest.mark.parametrize("salt", [0, 1, 0x9E3779B9, 2**32 - 1])
def test_topk_grad_tie_rule_by_hand(salt):
    """All |g| equal: the available positions of smallest tie rank win, whatever their place; a larger
    score jumps the queue."""
    X = np.ones((2, 4), dtype=np.float32)  # G[i, :] = sum_b dY[b, i]: |G| = 1, 1, 0 by row
    dY = np.array([[0.5, -0.5, 1.0], [0.5, -0.5, -1.0]], dtype=np.float32)
    excluded = np.zeros((3, 4), dtype=bool)
    excluded[0, 1] = True
    indptr, indices = exclusion_csr(excluded)
    tied = [p for p in range(8) if p != 1]  # rows 0 and 1, |G| = 1 (row 2: |G| = 0)
    with tiny_config(tile=4, lanes=2):
        rows, cols = growth.topk_grad(X, dY, 3, indptr, indices, salt)
        np.testing.assert_array_equal(rows * 4 + cols, sorted(by_tie_rank(tied, salt)[:3]))
        rows, cols = growth.topk_grad(X, dY, 12, indptr, indices, salt)  # more than the 11 available
        np.testing.assert_array_equal(rows * 4 + cols, np.delete(np.arange(12), 1))
        X[:, 3] = 2.0  # G[0, 3] = G[1, 3] = 2 now rank first
        rows, cols = growth.topk_grad(X, dY, 3, indptr, indices, salt)
        rest = by_tie_rank([p for p in tied if p not in (3, 7)], salt)
        np.testing.assert_array_equal(rows * 4 + cols, sorted([3, 7, rest[0]]))


@pytest.mark.parametrize("salt", [0, 7, 2**32 - 1])
def test_topk_grad_rows_tie_rule_by_hand(salt):
    """Equal scores within a row: the columns whose flat position has the smaller tie rank win;
    counts 0 and counts > available."""
    X = np.array([[1.0, -1.0, 1.0, 0.5, -1.0]], dtype=np.float32)  # |G[i, j]| = |dY_i| |X_j|
    dY = np.array([[1.0, 0.5, 1.0, 1.0]], dtype=np.float32)
    excluded = np.zeros((4, 5), dtype=bool)
    excluded[0, 0] = excluded[2, [1, 2]] = True
    excluded[3] = True  # a row with nothing available
    counts = np.array([2, 0, 9, 4], dtype=np.int64)
    with tiny_config(tile=5, lanes=2):
        indptr, cols = growth.topk_grad_rows(X, dY, counts, *exclusion_csr(excluded), salt)
    np.testing.assert_array_equal(indptr, [0, 2, 2, 5, 5])
    row0 = by_tie_rank([1, 2, 4], salt)[:2]  # |G[0, j]| = 1 at columns 1, 2, 4 (flat 1, 2, 4), 0.5 at 3
    np.testing.assert_array_equal(cols, sorted(row0) + [0, 3, 4])


def test_tied_rows_order_their_ties_differently():
    """An all-zero gradient (every score tied at 0): each row takes the columns whose flat positions
    have the smallest tie ranks, so the rows do not all take columns 0, 1, ...; the salt reorders them,
    and all three backends agree."""
    n_out, n_in = 6, 16
    X = np.ones((2, n_in), dtype=np.float32)
    dY = np.zeros((2, n_out), dtype=np.float32)
    indptr, indices = exclusion_csr(np.zeros((n_out, n_in), dtype=bool))
    counts = np.full(n_out, 3, dtype=np.int64)
    chosen = {}
    for salt in (0, 1, 2**32 - 1):
        with tiny_config(tile=20, lanes=3):
            got = growth.topk_grad_rows(X, dY, counts, indptr, indices, salt)
            flat = growth.topk_grad(X, dY, 5, indptr, indices, salt)
        assert_same(got, reference.topk_grad_rows(X, dY, counts, indptr, indices, salt))
        assert_same(got, cpu.topk_grad_rows(X, dY, counts, indptr, indices, salt))
        assert_same(flat, reference.topk_grad(X, dY, 5, indptr, indices, salt))
        rows = [tuple(got[1][got[0][i]:got[0][i + 1]]) for i in range(n_out)]
        want = [tuple(sorted(j - i * n_in for j in by_tie_rank(range(i * n_in, (i + 1) * n_in), salt)[:3]))
                for i in range(n_out)]
        assert rows == want
        assert len(set(rows)) > 1  # rows differ
        assert (flat[0] * n_in + flat[1]).tolist() != list(range(5))  # no positional bias
        chosen[salt] = rows
    assert chosen[0] != chosen[1] != chosen[2**32 - 1]


def test_device_tie_rule_is_the_shared_text():
    """The device tie rule is compiled from the very functions of purerigl.kernels._rank_key (what the
    host and cpu backends run), its inner calls bound to device functions; the ops tests above check
    what it computes (salts and tags at both ends of [0, 2^32), negative scores)."""
    T = _growth_tiles

    def source(f):  # the Python function a device function was made from (simulator or real compiler)
        return getattr(f, "py_func", None) or f.fn

    for name in ("tie_rank", "tie_unrank", "rank_key", "index_of_key"):
        assert source(getattr(T, name)).__code__ is getattr(_rank_key, name).__code__, name
    assert source(T.rank_key).__globals__["tie_rank"] is T.tie_rank
    assert source(T.index_of_key).__globals__["tie_unrank"] is T.tie_unrank


@EXAMPLES
@given(st.integers(0, 7), st.integers(1, 3), st.integers(1, 5), st.sampled_from([1, 1, 2, 3]), st.data())
def test_bitonic_sort_sorts_rows_descending_with_few_launches(log_w, n_rows, block, sort_threads, data):
    """sort_rows_descending on a column slice of a wider device array (as the growth pools are sorted),
    with ties: each row sorted descending, the columns beyond the slice untouched, and one launch of
    its own only per pass whose pair distance is at least a chunk (a power of two, from the block
    size; the passes within chunks share one launch per merge length). The simulator sorts a chunk
    with one thread (its barriers are slow); 2 or 3 threads run the barriers of the chunk kernel."""
    W = 1 << log_w
    A = data.draw(st.lists(st.integers(-4, 4), min_size=n_rows * 2 * W, max_size=n_rows * 2 * W))
    A = np.array(A, dtype=np.int64).reshape(n_rows, 2 * W)
    passes = []
    with tiny_config(block=block), mock.patch.object(_growth_tiles, "SIMULATOR_SORT_THREADS", sort_threads):
        chunk = _growth_tiles.sort_chunk(W)
        d = cuda.to_device(A)
        _growth_tiles.sort_rows_descending(d[:, :W], lambda kernel, n, *a: (passes.append(a[1:]), growth._run(kernel, n, *a)))
        got = d.copy_to_host()
    np.testing.assert_array_equal(got[:, :W], -np.sort(-A[:, :W], axis=1))
    np.testing.assert_array_equal(got[:, W:], A[:, W:])
    want = [(j, k) for k in (1 << e for e in range(1, log_w + 1)) for j in (k >> e for e in range(1, 64)) if j >= max(chunk, 1) and k > chunk]
    assert chunk & (chunk - 1) == 0 and passes == want


def test_topk_grad_rows_returns_columns_ascending_not_by_score():
    """A row whose best columns, best first, are 3, 1, 0: they come back as 0, 1, 3."""
    X = np.array([[0.5, 1.0, 0.25, 2.0, 0.125]], dtype=np.float32)
    dY = np.array([[1.0, -1.0]], dtype=np.float32)
    excluded = np.zeros((2, 5), dtype=bool)
    excluded[1, 3] = True
    for salt in (0, 2**32 - 1):  # no ties: the same columns whatever the salt
        with tiny_config(tile=5, lanes=2):
            indptr, cols = growth.topk_grad_rows(X, dY, np.array([3, 2]), *exclusion_csr(excluded), salt)
        np.testing.assert_array_equal(indptr, [0, 3, 5])
        np.testing.assert_array_equal(cols, [0, 1, 3, 0, 1])


def test_diag_grad_norms_by_hand():
    """3 x 2 (tall): diagonal d holds (d, 0), (d + 1 mod 3, 1); transposed (wide): (0, d), (1, d + 1)."""
    X = np.array([[1.0, 2.0]], dtype=np.float32)
    dY = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)  # G = [[1, 2], [2, 4], [3, 6]]
    want = np.sqrt([1 + 16, 4 + 36, 9 + 4]).astype(np.float32)
    with tiny_config(tile=2):
        np.testing.assert_allclose(diagonal_growth.diag_grad_norms(X, dY), want, rtol=1e-6)
        np.testing.assert_allclose(diagonal_growth.diag_grad_norms(dY, X), want, rtol=1e-6)


@pytest.mark.parametrize(
    "n_out, n_in, B", [(3, 4, 0), (0, 4, 2), (3, 0, 2), (1, 1, 1)], ids=["batch0", "no-rows", "no-cols", "1x1"]
)
def test_degenerate_shapes_match_reference(n_out, n_in, B):
    """Batch 0 (G = 0: every position tied, the tie ranks decide), empty layers and 1 x 1, against the
    reference, for a few salts."""
    X = np.full((B, n_in), 0.5, dtype=np.float32)
    dY = np.full((B, n_out), -1.0, dtype=np.float32)
    excluded = np.zeros((n_out, n_in), dtype=bool)
    if excluded.size > 1:
        excluded.flat[1] = True
    indptr, indices = exclusion_csr(excluded)
    counts = np.full(n_out, 2, dtype=np.int64)
    with tiny_config(tile=3):
        for salt in (0, 5, 2**32 - 1):
            for m in (0, 2, excluded.size + 1):
                assert_same(growth.topk_grad(X, dY, m, indptr, indices, salt),
                            reference.topk_grad(X, dY, m, indptr, indices, salt))
            assert_same(growth.topk_grad_rows(X, dY, counts, indptr, indices, salt),
                        reference.topk_grad_rows(X, dY, counts, indptr, indices, salt))
        assert_same(diagonal_growth.diag_grad_norms(X, dY), reference.diag_grad_norms(X, dY))


def test_everything_excluded_or_nothing_asked():
    """All positions excluded, m = 0, counts all 0: empty results of the right dtypes and shapes."""
    X = np.ones((2, 3), dtype=np.float32)
    dY = np.ones((2, 4), dtype=np.float32)
    full = exclusion_csr(np.ones((4, 3), dtype=bool))
    none = exclusion_csr(np.zeros((4, 3), dtype=bool))
    for m, (indptr, indices) in ((5, full), (0, none)):
        assert_same(growth.topk_grad(X, dY, m, indptr, indices), (np.empty(0, np.int64), np.empty(0, np.int64)))
    nothing = (np.zeros(5, np.int64), np.empty(0, np.int64))
    for counts, (indptr, indices) in ((np.full(4, 2), full), (np.zeros(4, np.int64), none)):
        assert_same(growth.topk_grad_rows(X, dY, counts, indptr, indices), nothing)


# --------------------------------------------------------------------------------------------------
# Tiling, lanes, blocks and threads do not matter; the running top-k cuts back; G is never whole
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def general_problem():
    """A 9 x 7 layer at batch 3 with general float32 values (not dyadic) and a third excluded."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((3, 7), dtype=np.float32)
    dY = rng.standard_normal((3, 9), dtype=np.float32)
    excluded = rng.random((9, 7)) < 0.3
    return X, dY, excluded


def run_all(X, dY, excluded, m=10, count=3, salt=0):
    indptr, indices = exclusion_csr(excluded)
    counts = np.full(dY.shape[1], count, dtype=np.int64)
    return (
        growth.topk_grad(X, dY, m, indptr, indices, salt),
        growth.topk_grad_rows(X, dY, counts, indptr, indices, salt),
        diagonal_growth.diag_grad_norms(X, dY),
    )


@pytest.mark.parametrize("m, count, salt", [(1, 1, 0), (10, 3, 2**32 - 1), (40, 6, 12345)])
def test_general_data_matches_reference_and_cpu(general_problem, m, count, salt):
    """General float32 data (fixed seed, no near-ties at any boundary): the same sets as the
    reference and cpu backends, and norms equal to float32 rounding."""
    X, dY, excluded = general_problem
    indptr, indices = exclusion_csr(excluded)
    counts = np.full(dY.shape[1], count, dtype=np.int64)
    with tiny_config(tile=8, lanes=3):
        got = run_all(X, dY, excluded, m, count, salt)
    for backend in (reference, cpu):
        assert_same(got[0], backend.topk_grad(X, dY, m, indptr, indices, salt))
        assert_same(got[1], backend.topk_grad_rows(X, dY, counts, indptr, indices, salt))
        np.testing.assert_allclose(got[2], backend.diag_grad_norms(X, dY), rtol=1e-5)


def test_results_do_not_depend_on_the_launch_configuration(general_problem):
    """General float32 data: G is computed by the same code wherever an entry sits, so every tile
    size, lane count, block size and thread cap gives bit-identical results."""
    X, dY, excluded = general_problem
    X = np.round(X)  # integer values: many exact ties, which the salted tie ranks must order the same way
    with tiny_config(tile=1 << 10, lanes=64, block=4, grid_threads=64):  # one tile
        want = run_all(X, dY, excluded, salt=99)
    for config in ({"tile": 1, "lanes": 1, "grid_threads": 1}, {"tile": 8, "lanes": 3, "block": 3, "grid_threads": 5}):
        with tiny_config(**config):
            assert_same(run_all(X, dY, excluded, salt=99), want)


def test_running_topk_cuts_back_and_raises_its_threshold(general_problem):
    """Scores growing with the row and tiles of one row: every tile beats the threshold, so the pool
    is cut back again and again; the result is still exactly the brute force's."""
    X, dY, excluded = general_problem
    dY = (np.abs(dY) + np.arange(1, 10, dtype=np.float32)).astype(np.float32)  # rows ever larger
    indptr, indices = exclusion_csr(excluded)
    cuts = mock.patch.object(growth._RunningTopK, "_cut", autospec=True, side_effect=growth._RunningTopK._cut)
    with tiny_config(tile=2, lanes=2), cuts as spy:
        rows, cols = growth.topk_grad(X, dY, 3, indptr, indices)
    assert spy.call_count >= 3
    np.testing.assert_array_equal(rows * 7 + cols, brute_topk(X, dY, excluded, 3))


def test_no_device_buffer_holds_the_dense_gradient():
    """A 16 x 12 layer in tiles of 12 entries: every device allocation besides the operands is far
    smaller than n_out * n_in (192), for each of the three selections."""
    rng = np.random.default_rng(5)
    X = rng.choice(TIES, (2, 12)).astype(np.float32)
    dY = rng.choice(TIES, (2, 16)).astype(np.float32)
    excluded = rng.random((16, 12)) < 0.2
    sizes = []
    real = cuda.device_array

    def recording(shape, *args, **kwargs):
        sizes.append(int(np.prod(shape)))
        return real(shape, *args, **kwargs)

    with tiny_config(tile=12, lanes=3), mock.patch.object(growth.cuda, "device_array", recording):
        run_all(X, dY, excluded, m=4, count=2)
    assert sizes and max(sizes) <= 192 // 4, sizes


def test_inputs_are_left_untouched(general_problem):
    X, dY, excluded = general_problem
    indptr, indices = exclusion_csr(excluded)
    before = [a.copy() for a in (X, dY, indptr, indices)]
    with tiny_config():
        run_all(X, dY, excluded)
    for a, b in zip(before, (X, dY, indptr, indices)):
        np.testing.assert_array_equal(a, b)


def test_backend_dispatch_checks_operands_and_calls_these_kernels(general_problem):
    """get_backend("cuda") runs the shared operand checks, then these kernels (same results)."""
    X, dY, excluded = general_problem
    indptr, indices = exclusion_csr(excluded)
    backend = get_backend("cuda")
    with tiny_config():
        want = run_all(X, dY, excluded, m=5, count=2, salt=3)
        assert_same(backend.topk_grad(np.asfortranarray(X), dY, np.int32(5), indptr.astype(np.int32), indices,
                                      np.uint32(3)), want[0])
        assert_same(backend.topk_grad_rows(X, dY, np.full(9, 2, dtype=np.uint8), indptr, indices, salt=3), want[1])
        assert_same(backend.diag_grad_norms(X, dY), want[2])
    with pytest.raises(OperandError):
        backend.topk_grad(X, dY, -1, indptr, indices)


@pytest.mark.parametrize("salt", [-1, 2**32, 1.0, True, None])
def test_a_bad_salt_is_refused_like_the_reference(general_problem, salt):
    """A salt outside [0, 2^32) or not an integer: OperandError from the host and the device entry
    points alike, as from the reference."""
    X, dY, excluded = general_problem
    indptr, indices = exclusion_csr(excluded)
    counts = np.full(dY.shape[1], 2, dtype=np.int64)
    dev = [cuda.to_device(a) for a in (X, dY, counts, indptr, indices.astype(np.int64))]
    calls = [
        lambda: reference.topk_grad(X, dY, 3, indptr, indices, salt),
        lambda: growth_ops.topk_grad(X, dY, 3, indptr, indices, salt),
        lambda: growth_ops.topk_grad(dev[0], dev[1], 3, dev[3], dev[4], salt),
        lambda: reference.topk_grad_rows(X, dY, counts, indptr, indices, salt),
        lambda: growth_ops.topk_grad_rows(X, dY, counts, indptr, indices, salt),
        lambda: growth_ops.topk_grad_rows(dev[0], dev[1], dev[2], dev[3], dev[4], salt),
    ]
    for call in calls:
        with pytest.raises(OperandError, match="salt"):
            call()


@EXAMPLES
@given(problem=problems(), salt=salts, data=st.data())
def test_device_entry_points_take_the_salt(problem, salt, data):
    """Given device arrays, topk_grad and topk_grad_rows return device arrays equal to the host
    entry points' results for the same salt."""
    X, dY, excluded = problem
    n_out, n_in = excluded.shape
    m = data.draw(st.integers(0, excluded.size + 1), label="m")
    counts = np.array(data.draw(st.lists(st.integers(0, n_in), min_size=n_out, max_size=n_out)), dtype=np.int64)
    indptr, indices = exclusion_csr(excluded)
    dev = [cuda.to_device(a) for a in (X, dY, counts, indptr, indices.astype(np.int64))]
    with tiny_config():
        rows, cols = growth_ops.topk_grad(dev[0], dev[1], m, dev[3], dev[4], salt)
        assert_same((rows.copy_to_host(), cols.copy_to_host()), reference.topk_grad(X, dY, m, indptr, indices, salt))
        out_indptr, out_cols = growth_ops.topk_grad_rows(*dev, salt=salt)
        assert_same((out_indptr.copy_to_host(), out_cols.copy_to_host()),
                    reference.topk_grad_rows(X, dY, counts, indptr, indices, salt))


def test_device_entry_points_refuse_layers_beyond_32_bit_positions():
    """Ties are ranked by the flat position in 32 bits: a device layer of more than 2^32 positions is
    refused before any kernel runs (checked on shapes only: stand-ins with a shape, no memory spent)."""
    X, dY = types.SimpleNamespace(shape=(1, 2**16 + 1)), types.SimpleNamespace(shape=(1, 2**16))
    with mock.patch.object(_launch, "is_device_array", return_value=True), \
            mock.patch.object(growth_ops, "check_device"):
        with pytest.raises(ShapeError, match="2\\*\\*32"):
            growth_ops.topk_grad(X, dY, 1, None, None)
        with pytest.raises(ShapeError, match="2\\*\\*32"):
            growth_ops.topk_grad_rows(X, dY, None, None, None)
