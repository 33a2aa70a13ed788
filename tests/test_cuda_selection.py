"""The update operations on positions, masks and scores (registry.UPDATE_OPS, the part in
:mod:`purerigl.kernels.host_selection`, and the structure builders): host versions against oracles, cuda
against host.

Pins down:

- every function of :mod:`purerigl.kernels.host_selection` against an oracle written another way
  (Python loops, sets, ``sorted`` with an explicit key), on hypothesis-drawn tiny inputs with many
  exact ties in |score| (scores drawn from {0, -0, ±0.5, ±1, ±2}); the rankings (``top_k``,
  ``top_k_per_row``) order equal magnitudes by the shared tie rule of :mod:`purerigl.kernels._rank_key`
  (smaller ``tie_rank(tag, salt)`` first), the salt drawn over [0, 2^32) with both ends included;
- every function of :mod:`purerigl.kernels.cuda.selection` (Numba's CUDA simulator, blocks of 4
  threads and :data:`~purerigl.kernels.cuda.selection.LANES` = 3, so inputs span several blocks and
  several multi-entry chunks) against the host version on the same inputs: same values, dtypes and
  shapes, bit for bit (``row_norms`` exactly on dyadic data, to 1e-6 relative on general floats);
- the device functions return device arrays and refuse host arrays, except the arguments documented
  "host or backend" (small integer vectors a method computes on the host: per-row counts and masks,
  active rows, a host generator's draws), which they copy in themselves; ``row_counts`` and
  ``active_rows`` return host vectors, ``in_sorted`` of host values a host mask. On device operands
  they copy nothing between host and device except the one int64 of :func:`compress` and of
  :func:`count_true` (and of the rankings that compact their result), the per-row vectors that
  ``row_counts`` / ``active_rows`` return and the row layout of ``top_k_per_row``.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.errors import BackendError, DTypeError, FormatError, OperandError, ShapeError
from purerigl.kernels import reference as H  # the host update operations (host_selection, host_topology)
from purerigl.kernels._rank_key import tie_rank

SMALL_BLOCK = 4
SMALL_LANES = 3
EXAMPLES = 25  # per cuda test (the simulator runs one Python thread per thread)
HOST_EXAMPLES = 60
MAX = 24
#: A handful of magnitudes, both signs (and -0): many exact ties in |score|.
TIED = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0]

#: The tie rule's salt: both ends of [0, 2^32) and anything between.
salts = st.one_of(st.just(0), st.just(2**32 - 1), st.integers(0, 2**32 - 1))

cuda_settings = settings(max_examples=EXAMPLES, deadline=None)
host_settings = settings(max_examples=HOST_EXAMPLES, deadline=None)


@pytest.fixture(scope="module")
def K():
    """The cuda backend's update operations and a host-to-device copy, with THREADS_PER_BLOCK = 4 and
    LANES = 3."""
    from purerigl.kernels import get_backend

    try:
        get_backend("cuda")
    except BackendError as err:  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"cuda backend unavailable: {err}")
    from purerigl.kernels import cuda as cuda_backend
    from purerigl.kernels.cuda import _launch, selection

    saved = _launch.THREADS_PER_BLOCK, selection.LANES
    _launch.THREADS_PER_BLOCK, selection.LANES = SMALL_BLOCK, SMALL_LANES

    class Kernels:
        S = cuda_backend
        launch = _launch

        @staticmethod
        def dev(a):
            return _launch.to_device(np.asarray(a))

    yield Kernels
    _launch.THREADS_PER_BLOCK, selection.LANES = saved


def same(got, want: np.ndarray) -> None:
    """``got`` is a device array equal to the host array ``want``: values, dtype and shape."""
    assert not isinstance(got, np.ndarray), "expected a device array"
    g = got.copy_to_host()
    assert g.dtype == want.dtype, (g.dtype, want.dtype)
    assert g.shape == want.shape, (g.shape, want.shape)
    assert np.array_equal(g, want), (g, want)


# --------------------------------------------------------------------------------------------------
# strategies


def i64(values) -> np.ndarray:
    return np.array(list(values), dtype=np.int64)


shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))
tied_scores = st.lists(st.sampled_from(TIED), max_size=MAX).map(lambda v: np.array(v, dtype=np.float32))
masks = st.lists(st.booleans(), max_size=MAX).map(lambda v: np.array(v, dtype=bool))


@st.composite
def sorted_positions(draw, shape):
    """Ascending distinct positions of a ``shape`` layer."""
    return i64(sorted(draw(st.sets(st.integers(0, shape[0] * shape[1] - 1), max_size=MAX))))


@st.composite
def layer_and_positions(draw):
    shape = draw(shapes)
    return shape, draw(sorted_positions(shape))


#: Tags (positions) near both ends of [0, 2^32).
tag_values = st.one_of(st.integers(0, 40), st.integers(2**32 - 41, 2**32 - 1))


def best_first(scores, tags, members, salt):
    """The entries ``members`` best first: larger |score|, then smaller tie rank of the tag (each rank
    computed on Python ints, one at a time)."""
    return sorted(members, key=lambda e: (-abs(float(scores[e])), tie_rank(int(tags[e]), salt)))


@st.composite
def ranked(draw, max_size=MAX):
    """(scores, tags, n, salt): tied scores, strictly increasing tags near both ends of [0, 2^32), any
    n, any salt."""
    scores = draw(st.lists(st.sampled_from(TIED), max_size=max_size).map(lambda v: np.array(v, np.float32)))
    tags = i64(sorted(draw(st.sets(tag_values, min_size=scores.size, max_size=scores.size))))
    return scores, tags, draw(st.integers(0, scores.size + 2)), draw(salts)


@st.composite
def per_row(draw):
    """(scores, tags, row_sizes, k, among or None, salt): up to 6 rows of 0..6 entries (some empty),
    tied scores, distinct tags near both ends of [0, 2^32) in any order, any salt."""
    lengths = draw(st.lists(st.integers(0, 6), max_size=6))
    size = int(sum(lengths))
    scores = np.array(draw(st.lists(st.sampled_from(TIED), min_size=size, max_size=size)), np.float32)
    tags = i64(draw(st.lists(tag_values, min_size=size, max_size=size, unique=True)))
    counts = i64(draw(st.lists(st.integers(0, 7), min_size=len(lengths), max_size=len(lengths))))
    flags = st.lists(st.booleans(), min_size=size, max_size=size).map(lambda v: np.array(v, dtype=bool))
    among = draw(st.none() | flags)
    return scores, tags, i64(lengths), counts, among, draw(salts)


@st.composite
def csr_like(draw):
    """(shape, indptr, cols): each row some distinct columns, ascending."""
    n_out, n_in = draw(shapes)
    rows = [sorted(draw(st.sets(st.integers(0, n_in - 1)))) for _ in range(n_out)]
    indptr = i64(np.concatenate([[0], np.cumsum([len(r) for r in rows])]))
    return (n_out, n_in), indptr, i64(c for r in rows for c in r)


@st.composite
def free_draws(draw):
    """(shape, kept, rows, ranks): ascending kept positions and pairs (row, rank < free columns of row)."""
    shape, kept = draw(layer_and_positions())
    n_out, n_in = shape
    free = [n_in - int(np.count_nonzero(kept // n_in == r)) for r in range(n_out)]
    open_rows = [r for r in range(n_out) if free[r]]
    pairs = draw(st.lists(st.sampled_from(open_rows), max_size=MAX)) if open_rows else []
    ranks = [draw(st.integers(0, free[r] - 1)) for r in pairs]
    return shape, kept, i64(pairs), i64(ranks)


@st.composite
def condensed_layout(draw):
    """(shape, rows, flat): ascending active rows, each holding the same number k of columns."""
    n_out, n_in = draw(shapes)
    rows = sorted(draw(st.sets(st.integers(0, n_out - 1))))
    k = draw(st.integers(1, n_in)) if rows else 0  # an active row holds at least one entry
    flat = [r * n_in + c for r in rows for c in sorted(draw(st.sets(st.integers(0, n_in - 1), min_size=k, max_size=k)))]
    return (n_out, n_in), i64(rows), i64(flat)


# --------------------------------------------------------------------------------------------------
# host versions against oracles


@host_settings
@given(data=st.data(), shape=shapes, m=st.integers(0, MAX))
def test_host_flat_of_and_csr_positions(data, shape, m):
    n_out, n_in = shape
    rows = data.draw(st.lists(st.integers(0, n_out - 1), min_size=m, max_size=m))
    cols = data.draw(st.lists(st.integers(0, n_in - 1), min_size=m, max_size=m))
    got = H.flat_of(i64(rows), i64(cols), n_in)
    assert got.dtype == np.int64 and got.tolist() == [r * n_in + c for r, c in zip(rows, cols)]
    shape, indptr, cols = data.draw(csr_like())
    want = [i * shape[1] + int(c) for i in range(shape[0]) for c in cols[indptr[i]:indptr[i + 1]]]
    got = H.csr_positions(indptr, cols, shape[1])
    assert got.dtype == np.int64 and got.tolist() == want


@host_settings
@given(data=st.data(), n=st.integers(0, MAX), a=masks, keep=st.booleans())
def test_host_plumbing(data, n, a, keep):
    assert H.arange(n).dtype == np.int64 and H.arange(n).tolist() == list(range(n))
    values = np.arange(a.size, dtype=np.int64) * 7 - 3
    assert H.compress(values, a, keep).tolist() == [v for v, m in zip(values.tolist(), a) if m == keep]
    assert H.count_true(a) == sum(bool(m) for m in a)
    if a.size:
        idx = data.draw(st.lists(st.integers(0, a.size - 1), max_size=MAX))
        mask = H.indicator(i64(idx), a.size)
        assert mask.dtype == bool and mask.tolist() == [i in set(idx) for i in range(a.size)]
    assert H.indicator(i64([]), n).tolist() == [False] * n


@host_settings
@given(data=st.data(), found=st.sets(st.integers(0, 30)), values=st.lists(st.integers(-3, 33), max_size=MAX))
def test_host_sets_of_positions(data, found, values):
    sorted_array = i64(sorted(found))
    got = H.in_sorted(i64(values), sorted_array)
    assert got.dtype == bool and got.tolist() == [v in found for v in values]
    side = data.draw(st.lists(st.booleans(), min_size=len(found), max_size=len(found)))
    a = i64(v for v, s in zip(sorted(found), side) if s)
    b = i64(v for v, s in zip(sorted(found), side) if not s)
    assert H.merge_sorted(a, b).tolist() == sorted(found)
    shape = data.draw(shapes)
    flat = data.draw(st.lists(st.integers(0, shape[0] * shape[1] - 1), max_size=MAX))  # any order
    row_mask = np.array(data.draw(st.lists(st.booleans(), min_size=shape[0], max_size=shape[0])))
    assert H.in_rows(i64(flat), row_mask, shape[1]).tolist() == [bool(row_mask[p // shape[1]]) for p in flat]
    tally = Counter(p // shape[1] for p in flat)
    counts = H.row_counts(i64(flat), shape)
    assert counts.dtype == np.int64 and counts.tolist() == [tally[r] for r in range(shape[0])]
    rows = sorted(data.draw(st.sets(st.integers(0, shape[0] - 1))))
    active = H.active_rows(H.condensed_from_positions(i64(rows), i64(r * shape[1] for r in rows), shape))
    assert active.dtype == bool and active.tolist() == [r in rows for r in range(shape[0])]


def top_k_per_row_oracle(scores, tags, row_sizes, k, among, salt) -> np.ndarray:
    """The chosen tags, in the order of ``tags``: each row's best k[q] among its eligible entries."""
    ok = np.ones(scores.size, bool) if among is None else among
    starts = np.concatenate([[0], np.cumsum(row_sizes)]).astype(int)
    want = np.zeros(scores.size, dtype=bool)
    for q in range(len(k)):
        members = [f for f in range(starts[q], starts[q + 1]) if ok[f]]
        want[best_first(scores, tags, members, salt)[: k[q]]] = True
    return tags[want]


@host_settings
@given(case=ranked(max_size=40), among=st.lists(st.booleans(), min_size=1, max_size=5))
def test_host_top_k_is_the_sorted_prefix(case, among):
    scores, tags, n, salt = case
    mask = np.array([among[e % len(among)] for e in range(scores.size)], dtype=bool)
    best = best_first(scores, tags, range(scores.size), salt)[:n]
    got = H.top_k(scores, tags, n, salt)
    assert got.dtype == np.int64 and got.tolist() == sorted(int(tags[e]) for e in best)
    best = best_first(scores, tags, [e for e in range(scores.size) if mask[e]], salt)[:n]
    got = H.top_k(scores, tags, n, salt, among=mask)
    assert got.dtype == np.int64 and got.tolist() == sorted(int(tags[e]) for e in best)


@host_settings
@given(case=per_row())
def test_host_top_k_per_row(case):
    scores, tags, row_sizes, k, among, salt = case
    got = H.top_k_per_row(scores, tags, row_sizes, k, salt, among=among)
    assert got.dtype == np.int64 and np.array_equal(got, top_k_per_row_oracle(scores, tags, row_sizes, k, among, salt))


def test_host_top_k_per_row_takes_ints_for_equal_rows():
    """An int row size means rows of that length; an int k the same k in every row."""
    scores = np.array([1, 3, 2, 0, 5, 4], np.float32)
    tags = np.arange(6, dtype=np.int64)
    assert H.top_k_per_row(scores, tags, 3, 1).tolist() == [1, 4]
    assert H.top_k_per_row(scores, tags, 3, i64([2, 1])).tolist() == [1, 2, 4]
    assert H.top_k_per_row(scores, tags, i64([2, 4]), 2).tolist() == [0, 1, 4, 5]
    with pytest.raises(ShapeError, match="top_k_per_row"):
        H.top_k_per_row(scores, tags, 4, i64([1, 1]))


@host_settings
@given(n_rows=st.integers(0, 5), L=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_host_row_norms(n_rows, L, seed):
    rng = np.random.default_rng(seed)
    dyadic = (rng.integers(-8, 9, (n_rows, L)) / 2).astype(np.float32)  # multiples of 0.5, |v| <= 4: exact
    want = np.array([math.sqrt(sum(float(v) ** 2 for v in row)) for row in dyadic], dtype=np.float32)
    got = H.row_norms(dyadic)
    assert got.dtype == np.float32 and got.shape == (n_rows,) and np.array_equal(got, want)
    general = rng.standard_normal((n_rows, L)).astype(np.float32)
    want = np.array([math.sqrt(sum(float(v) ** 2 for v in row)) for row in general], dtype=np.float32)
    np.testing.assert_allclose(H.row_norms(general), want, rtol=1e-6)


@host_settings
@given(case=free_draws())
def test_host_free_positions_is_the_ranked_free_column(case):
    (n_out, n_in), kept, rows, ranks = case
    held = set(kept.tolist())
    want = [r * n_in + [c for c in range(n_in) if r * n_in + c not in held][k] for r, k in zip(rows.tolist(), ranks.tolist())]
    got = H.free_positions(kept, (n_out, n_in), rows, ranks)
    assert got.dtype == np.int64 and got.tolist() == want


@host_settings
@given(data=st.data(), case=layer_and_positions(), layout=condensed_layout(), shape=shapes)
def test_host_structures_hold_the_positions(data, case, layout, shape):
    (n_out, n_in), flat = case
    M = H.csr_from_positions(flat, (n_out, n_in))
    entries = [(i, int(c)) for i in range(n_out) for c in M.indices[M.indptr[i]:M.indptr[i + 1]]]
    assert entries == [divmod(int(p), n_in) for p in flat] and M.indptr.size == n_out + 1
    assert M.values.dtype == np.float32 and not M.values.any() and M.values.size == flat.size
    (n_out, n_in), rows, flat = layout
    C = H.condensed_from_positions(rows, flat, (n_out, n_in))
    k = flat.size // rows.size if rows.size else 0
    assert C.rows.tolist() == rows.tolist() and C.indices.shape == (rows.size, k)
    assert [int(r) * n_in + int(c) for r, row in zip(C.rows, C.indices) for c in row] == flat.tolist()
    assert C.values.shape == (rows.size, k) and not C.values.any()
    offsets = data.draw(st.sets(st.integers(0, max(shape) - 1)))  # P = max(n_out, n_in) diagonals
    D = H.diagonal_from_offsets(i64(sorted(offsets)), shape)
    assert D.offsets.dtype == np.int32 and D.offsets.tolist() == sorted(offsets)
    assert D.values.shape == (len(offsets), min(shape)) and not D.values.any()


# --------------------------------------------------------------------------------------------------
# cuda against host


@cuda_settings
@given(data=st.data(), shape=shapes, m=st.integers(0, MAX))
def test_cuda_flat_of_and_csr_positions(K, data, shape, m):
    n_out, n_in = shape
    rows = i64(data.draw(st.lists(st.integers(0, n_out - 1), min_size=m, max_size=m)))
    cols = i64(data.draw(st.lists(st.integers(0, n_in - 1), min_size=m, max_size=m)))
    same(K.S.flat_of(K.dev(rows), K.dev(cols), n_in), H.flat_of(rows, cols, n_in))
    shape, indptr, cols = data.draw(csr_like())
    same(K.S.csr_positions(K.dev(indptr), K.dev(cols), shape[1]), H.csr_positions(indptr, cols, shape[1]))


@cuda_settings
@given(data=st.data(), n=st.integers(0, MAX))
def test_cuda_arange_indicator(K, data, n):
    same(K.S.arange(n), H.arange(n))
    idx = i64(data.draw(st.lists(st.integers(0, n - 1), max_size=MAX))) if n else i64([])
    same(K.S.indicator(K.dev(idx), n), H.indicator(idx, n))


@cuda_settings
@given(mask=masks, keep=st.booleans(), dtype=st.sampled_from([np.int64, np.float32, np.bool_]))
def test_cuda_compress_and_count_true(K, mask, keep, dtype):
    a = (np.arange(mask.size) * 7 - 20).astype(dtype)
    same(K.S.compress(K.dev(a), K.dev(mask), keep), H.compress(a, mask, keep))
    assert K.S.compress(K.dev(a), K.dev(mask)).copy_to_host().tolist() == H.compress(a, mask).tolist()
    got = K.S.count_true(K.dev(mask))
    assert type(got) is int and got == H.count_true(mask)
    if mask.size % 2 == 0:  # 2-D operands are read flat, as on the host
        a2, m2 = a.reshape(2, -1), mask.reshape(2, -1)
        same(K.S.compress(K.dev(a2), K.dev(m2), keep), H.compress(a2, m2, keep))
        assert K.S.count_true(K.dev(m2)) == H.count_true(m2)


@cuda_settings
@given(data=st.data(), found=st.sets(st.integers(0, 30)), values=st.lists(st.integers(-3, 33), max_size=MAX),
       dtype=st.sampled_from([np.int64, np.int32]))
def test_cuda_in_sorted_and_merge_sorted(K, data, found, values, dtype):
    sorted_array = np.array(sorted(found), dtype=dtype)
    vals = i64(values)
    same(K.S.in_sorted(K.dev(vals), K.dev(sorted_array)), H.in_sorted(vals, sorted_array))
    on_host = K.S.in_sorted(vals, K.dev(sorted_array))  # host values (a draw): a host mask
    assert isinstance(on_host, np.ndarray) and np.array_equal(on_host, H.in_sorted(vals, sorted_array))
    if vals.size % 2 == 0:  # any shape: the result has it
        vals2 = vals.reshape(2, -1)
        same(K.S.in_sorted(K.dev(vals2), K.dev(sorted_array)), H.in_sorted(vals2, sorted_array))
    side = data.draw(st.lists(st.booleans(), min_size=len(found), max_size=len(found)))
    a = i64(v for v, s in zip(sorted(found), side) if s)
    b = i64(v for v, s in zip(sorted(found), side) if not s)
    same(K.S.merge_sorted(K.dev(a), K.dev(b)), H.merge_sorted(a, b))
    same(K.S.merge_sorted(K.dev(a), b), H.merge_sorted(a, b))  # b: host or backend
    # overlapping lists with repeats (outside the spec): still the host's stable sort
    c, d = (i64(sorted(data.draw(st.lists(st.integers(0, 6), max_size=8)))) for _ in range(2))
    same(K.S.merge_sorted(K.dev(c), K.dev(d)), H.merge_sorted(c, d))


@cuda_settings
@given(data=st.data(), case=layer_and_positions())
def test_cuda_in_rows_row_counts_and_active_rows(K, data, case):
    shape, flat = case
    row_mask = np.array(data.draw(st.lists(st.booleans(), min_size=shape[0], max_size=shape[0])))
    want = H.in_rows(flat, row_mask, shape[1])
    same(K.S.in_rows(K.dev(flat), K.dev(row_mask), shape[1]), want)
    same(K.S.in_rows(K.dev(flat), row_mask, shape[1]), want)  # the row mask: host or backend
    counts = K.S.row_counts(K.dev(flat), shape)  # a per-row vector, on the host
    assert isinstance(counts, np.ndarray) and counts.dtype == np.int64
    assert np.array_equal(counts, H.row_counts(flat, shape))
    rows = i64(sorted(data.draw(st.sets(st.integers(0, shape[0] - 1)))))
    C = H.condensed_from_positions(rows, rows * shape[1], shape)
    active = K.S.active_rows(K.S.to_device(C))
    assert isinstance(active, np.ndarray) and np.array_equal(active, H.active_rows(C))


@cuda_settings
@given(case=ranked(), dtype=st.sampled_from([np.int64, np.int32]))
def test_cuda_top_k(K, case, dtype):
    scores, tags, n, salt = case
    want = H.top_k(scores, tags, n, salt)
    assert want.tolist() == sorted(int(tags[e]) for e in best_first(scores, tags, range(scores.size), salt)[:n])
    same(K.S.top_k(K.dev(scores), K.dev(tags), n, salt), want)
    if dtype is np.int32 and (tags < 2**31).all():  # int32 tags (offsets, indices): the same tags
        same(K.S.top_k(K.dev(scores), K.dev(tags.astype(np.int32)), n, salt), want)
    among = np.arange(scores.size) % 3 != 1
    same(K.S.top_k(K.dev(scores), K.dev(tags), n, salt, among=K.dev(among)), H.top_k(scores, tags, n, salt, among=among))


@cuda_settings
@given(case=per_row())
def test_cuda_top_k_per_row(K, case):
    scores, tags, row_sizes, k, among, salt = case
    want = H.top_k_per_row(scores, tags, row_sizes, k, salt, among=among)
    assert np.array_equal(want, top_k_per_row_oracle(scores, tags, row_sizes, k, among, salt))
    el = None if among is None else K.dev(among)
    same(K.S.top_k_per_row(K.dev(scores), K.dev(tags), row_sizes, K.dev(k), salt, among=el), want)
    same(K.S.top_k_per_row(K.dev(scores), K.dev(tags), row_sizes, k, salt, among=el), want)  # k: host or backend


def test_cuda_rankings_follow_the_salted_tie_rule(K):
    """All scores equal (the rows of a layer whose gradient is zero): the tie ranks alone decide, so
    the choice is not the lowest tags, it changes with the salt, and segments of equal length choose
    different places; cuda equals host for every salt."""
    n_seg, length, c = 6, 12, 3
    scores = np.zeros(n_seg * length, np.float32)
    tags = np.arange(n_seg * length, dtype=np.int64)  # flat positions of a 6 x 12 layer
    picks = {}
    for salt in (0, 1, 2**32 - 1):
        top = H.top_k(scores, tags, 5, salt)
        same(K.S.top_k(K.dev(scores), K.dev(tags), 5, salt), top)
        assert top.tolist() != list(range(5))
        chosen = H.top_k_per_row(scores, tags, length, c, salt)
        same(K.S.top_k_per_row(K.dev(scores), K.dev(tags), length, c, salt), chosen)
        places = [tuple(p % length for p in chosen[chosen // length == q]) for q in range(n_seg)]
        assert all(len(p) == c for p in places) and len(set(places)) > 1
        picks[salt] = (top.tolist(), places)
    assert picks[0] != picks[1] and picks[1] != picks[2**32 - 1]


@pytest.mark.parametrize("salt", [-1, 2**32, 0.5, True])
def test_cuda_rankings_refuse_a_bad_salt(K, salt):
    scores, tags = K.dev(np.ones(3, np.float32)), K.dev(i64([0, 1, 2]))
    with pytest.raises(OperandError, match="salt"):
        K.S.top_k(scores, tags, 2, salt)
    with pytest.raises(OperandError, match="salt"):
        K.S.top_k_per_row(scores, tags, 3, 1, salt)


@cuda_settings
@given(n_rows=st.integers(0, 5), L=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_cuda_row_norms(K, n_rows, L, seed):
    rng = np.random.default_rng(seed)
    dyadic = (rng.integers(-8, 9, (n_rows, L)) / 2).astype(np.float32)  # exact sums in any order
    same(K.S.row_norms(K.dev(dyadic)), H.row_norms(dyadic))
    general = (rng.standard_normal((n_rows, L)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
    got = K.S.row_norms(K.dev(general)).copy_to_host()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, H.row_norms(general), rtol=1e-6)  # einsum may sum in another order
    if K.launch.SIMULATOR:  # no fused multiply-add there: exactly the ascending float64 sum
        assert np.array_equal(got, _ascending_norms(general))


def _ascending_norms(values: np.ndarray) -> np.ndarray:
    """Oracle: float32(sqrt(float64 squares summed in ascending t)), row by row."""
    want = []
    for row in values:
        acc = 0.0
        for v in row:
            acc += float(v) * float(v)
        want.append(math.sqrt(acc))
    return np.array(want, dtype=np.float32)


def test_cuda_row_norms_square_in_float64(K):
    """Many general rows: float32 squares (or a float32 sum) would change some rounded norms."""
    values = np.random.default_rng(3).standard_normal((120, 7)).astype(np.float32)
    got = K.S.row_norms(K.dev(values)).copy_to_host()
    np.testing.assert_allclose(got, H.row_norms(values), rtol=1e-6)
    if K.launch.SIMULATOR:
        assert np.array_equal(got, _ascending_norms(values))


@cuda_settings
@given(case=free_draws())
def test_cuda_free_positions(K, case):
    shape, kept, rows, ranks = case
    want = H.free_positions(kept, shape, rows, ranks)
    same(K.S.free_positions(K.dev(kept), shape, K.dev(rows), K.dev(ranks)), want)
    same(K.S.free_positions(K.dev(kept), shape, rows, ranks), want)  # the draw: host or backend


@cuda_settings
@given(data=st.data(), case=layer_and_positions(), layout=condensed_layout(), shape=shapes,
       dtype=st.sampled_from([np.int64, np.int32]))
def test_cuda_structures(K, data, case, layout, shape, dtype):
    (n_out, n_in), flat = case
    got, want = K.S.csr_from_positions(K.dev(flat), (n_out, n_in)), H.csr_from_positions(flat, (n_out, n_in))
    assert type(got).__name__ == "DeviceCSR" and got.shape == want.shape
    for name in ("indptr", "indices", "values"):
        same(getattr(got, name), getattr(want, name))
    layout_shape, rows, flat = layout
    rows_d = K.dev(rows.astype(dtype))
    got = K.S.condensed_from_positions(rows_d, K.dev(flat), layout_shape)
    want = H.condensed_from_positions(rows.astype(dtype), flat, layout_shape)
    assert type(got).__name__ == "DeviceCondensed" and got.shape == want.shape
    assert got.rows is not rows_d  # a new array, as on the host
    for name in ("rows", "indices", "values"):
        same(getattr(got, name), getattr(want, name))
    got = K.S.condensed_from_positions(rows.astype(dtype), K.dev(flat), layout_shape)  # rows: host or backend
    for name in ("rows", "indices", "values"):
        same(getattr(got, name), getattr(want, name))
    offsets = np.array(sorted(data.draw(st.sets(st.integers(0, max(shape) - 1)))), dtype=dtype)
    got, want = K.S.diagonal_from_offsets(K.dev(offsets), shape), H.diagonal_from_offsets(offsets, shape)
    assert type(got).__name__ == "DeviceDiagonal" and got.shape == want.shape
    for name in ("offsets", "values"):
        same(getattr(got, name), getattr(want, name))


def test_cuda_compress_spans_many_chunks(K):
    """More entries than lanes x block: chunks of several entries, a ragged last chunk."""
    rng = np.random.default_rng(5)
    for size in (1, 2, 3, 4, 7, 29, 61):
        a = rng.integers(-9, 9, size).astype(np.int64)
        mask = rng.random(size) < 0.5
        same(K.S.compress(K.dev(a), K.dev(mask)), H.compress(a, mask))
        same(K.S.compress(K.dev(a), K.dev(mask), False), H.compress(a, mask, False))
        assert K.S.count_true(K.dev(mask)) == H.count_true(mask)


# --------------------------------------------------------------------------------------------------
# device API: no host arrays but the documented host vectors, no hidden copies


def _host_args():
    """name -> arguments of one call on host data (ints and shapes stay as they are)."""
    flat = i64([1, 4, 6])
    return {
        "flat_of": (i64([0, 1]), i64([1, 2]), 3),
        "csr_positions": (i64([0, 1, 3]), i64([2, 0, 1]), 3),
        "compress": (i64([5, 6, 7]), np.array([True, False, True])),
        "count_true": (np.array([True, False, True]),),
        "indicator": (i64([0, 2]), 4),
        "in_sorted": (i64([1, 2]), flat),
        "merge_sorted": (i64([0, 5]), flat),
        "in_rows": (flat, np.array([True, False, True]), 3),
        "row_counts": (flat, (3, 3)),
        "top_k": (np.array([1.0, -2.0, 0.5], np.float32), flat, 2, 0, np.array([True, False, True])),
        "top_k_per_row": (np.array([1.0, -2.0, 0.5], np.float32), i64([7, 3, 5]), i64([2, 1]), i64([1, 1]), 0,
                          np.array([True, True, False])),
        "row_norms": (np.ones((2, 3), np.float32),),
        "free_positions": (flat, (3, 3), i64([0, 2]), i64([1, 0])),
        "csr_from_positions": (flat, (3, 3)),
        "condensed_from_positions": (np.array([0, 2], np.int32), i64([1, 2, 6, 8]), (3, 3)),
        "diagonal_from_offsets": (i64([0, 2]), (3, 4)),
    }


#: The arguments documented "host or backend": small integer vectors a method computes on the host
#: (per-row counts and masks, active rows, a host generator's draws), copied in by the operation.
HOST_OR_BACKEND = {
    "in_sorted": {0}, "merge_sorted": {1}, "in_rows": {1}, "top_k_per_row": {3}, "free_positions": {2, 3},
    "condensed_from_positions": {0},
}
#: Arguments that are host data on every backend (the row layout of top_k_per_row is summed on the host).
HOST_ONLY = {"top_k_per_row": {2}}


def _on_device(K, name, host_at=()):
    """The arguments of ``name`` with every array on the device except at ``host_at`` and HOST_ONLY."""
    keep = set(host_at) | HOST_ONLY.get(name, set())
    return [a if i in keep or not isinstance(a, np.ndarray) else K.dev(a) for i, a in enumerate(_host_args()[name])]


_HOST_ARRAY_CASES = [
    (name, i) for name, args in _host_args().items() for i, a in enumerate(args)
    if isinstance(a, np.ndarray) and i not in HOST_OR_BACKEND.get(name, set()) | HOST_ONLY.get(name, set())
]


@pytest.mark.parametrize(("name", "position"), _HOST_ARRAY_CASES)
def test_cuda_refuses_host_arrays(K, name, position):
    """Values, scores, masks over entries and positions derived from a structure never cross
    implicitly: a host array there is refused."""
    with pytest.raises(DTypeError, match="must be a numba device array"):
        getattr(K.S, name)(*_on_device(K, name, host_at=[position]))


def _as_host(x):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return [getattr(x, f).copy_to_host() for f in ("rows", "indices", "values")]  # a DeviceCondensed


@pytest.mark.parametrize(("name", "position"), [(n, i) for n, at in HOST_OR_BACKEND.items() for i in sorted(at)])
def test_cuda_copies_in_the_documented_host_vectors(K, name, position):
    """An argument documented "host or backend" may be a host array: the result is the one of the
    device argument (in_sorted of host values: the same mask, on the host)."""
    want = _as_host(getattr(K.S, name)(*_on_device(K, name)))
    got = _as_host(getattr(K.S, name)(*_on_device(K, name, host_at=[position])))
    if isinstance(want, list):
        assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want))
    else:
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_cuda_refuses_wrong_dtypes_and_sizes(K):
    d = K.dev
    with pytest.raises(DTypeError, match="int64"):
        K.S.merge_sorted(d(np.array([1, 2], np.int32)), d(i64([3])))
    with pytest.raises(DTypeError, match="bool"):
        K.S.compress(d(i64([1, 2])), d(i64([1, 0])))
    with pytest.raises(DTypeError, match="float32"):
        K.S.top_k(d(np.ones(2)), d(i64([0, 1])), 1)
    with pytest.raises(DTypeError, match="tags"):
        K.S.top_k_per_row(d(np.ones(2, np.float32)), d(np.ones(2)), 2, 1)
    with pytest.raises(ShapeError, match="must match"):
        K.S.top_k_per_row(d(np.ones(2, np.float32)), d(i64([0])), 2, 1)
    with pytest.raises(ShapeError, match="top_k_per_row"):
        K.S.top_k_per_row(d(np.ones(2, np.float32)), d(i64([0, 1])), 3, d(i64([1])))
    with pytest.raises(DTypeError, match="row_sizes"):
        K.S.top_k_per_row(d(np.ones(2, np.float32)), d(i64([0, 1])), d(i64([2])), 1)
    with pytest.raises(ShapeError, match="must match"):
        K.S.flat_of(d(i64([1, 2])), d(i64([1])), 3)
    with pytest.raises(ShapeError, match="equal length"):
        K.S.condensed_from_positions(d(np.array([0, 1], np.int32)), d(i64([0, 1, 4])), (2, 3))
    with pytest.raises(FormatError, match="k >= 1"):
        K.S.condensed_from_positions(d(np.array([0, 1], np.int32)), d(i64([])), (2, 3))


def test_cuda_copies_only_the_output_sizes(K, monkeypatch):
    """Every call on device inputs copies nothing between host and device, except one int64 back for
    compress and count_true (and the rankings that compact: top_k with ``among``, top_k_per_row, which
    also sends its row starts in), the counts that row_counts returns on the host, and the active rows
    that active_rows reads; no host array reaches a kernel."""
    from numba.cuda.simulator import kernel as sim_kernel

    if not K.launch.SIMULATOR:
        pytest.skip("counts the simulator's copies")
    calls = {name: _on_device(K, name) for name in _host_args()}
    calls["arange"] = [5]
    calls["top_k (every entry)"] = calls["top_k"][:4]
    calls["top_k_per_row (every entry)"] = calls["top_k_per_row"][:5]
    calls["active_rows"] = [K.S.condensed_from_positions(K.dev(np.array([0, 2], np.int32)), K.dev(i64([1, 7])), (3, 3))]
    log: list[tuple[str, tuple]] = []
    device_type = type(K.launch.empty((1,)))
    real_to_device, real_copy_to_host = K.launch.cuda.to_device, device_type.copy_to_host
    real_copy_to_device, real_wrap_arg = device_type.copy_to_device, sim_kernel.wrap_arg

    def to_device(ary, *args, **kwargs):
        log.append(("in", tuple(np.shape(ary))))
        return real_to_device(ary, *args, **kwargs)

    def copy_to_host(self, *args, **kwargs):
        log.append(("out", tuple(self.shape)))
        return real_copy_to_host(self, *args, **kwargs)

    def copy_to_device(self, ary, *args, **kwargs):
        log.append(("in", tuple(self.shape)))
        return real_copy_to_device(self, ary, *args, **kwargs)

    def wrap_arg(value, *args, **kwargs):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            log.append(("hidden", value.shape))
        return real_wrap_arg(value, *args, **kwargs)

    monkeypatch.setattr(K.launch.cuda, "to_device", to_device)
    monkeypatch.setattr(device_type, "copy_to_host", copy_to_host)
    monkeypatch.setattr(device_type, "copy_to_device", copy_to_device)
    monkeypatch.setattr(sim_kernel, "wrap_arg", wrap_arg)
    copies = {}
    for name, args in calls.items():
        log.clear()
        getattr(K.S, name.split()[0])(*args)
        copies[name] = list(log)
    want = {name: [] for name in calls}
    want["compress"] = want["count_true"] = [("out", (1,))]
    want["top_k"] = [("out", (1,)), ("out", (1,))]  # the compacted scores and tags
    want["top_k_per_row"] = want["top_k_per_row (every entry)"] = [("in", (3,)), ("out", (1,))]  # starts; the size
    want["row_counts"] = [("out", (3,))]
    want["active_rows"] = [("out", (2,))]
    assert copies == want
