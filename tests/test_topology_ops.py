"""The update operations of :mod:`purerigl.kernels.host_topology` (registry.UPDATE_OPS) on every backend, and the
device RigL update.

Pins down:

- the host versions (:mod:`purerigl.kernels.host_topology`) against oracles built another way (the
  positions written out from DESIGN.md section 2's definitions with plain loops over the raw arrays,
  a dict from position to value, a full sort with Python's ``sorted``), on tall, wide and square
  shapes; and ``flat_positions``, ``to_scipy()`` and ``Diagonal.positions()`` against those positions;
- the cuda versions (Numba's CUDA simulator, blocks of 4 threads so that inputs span several blocks)
  against the host versions, on the same inputs, with many exact ties in |w|: the same kept sets
  (equal |w|: the smaller ``tie_rank(p, salt)`` kept, the salt drawn over [0, 2^32)), the same
  sources, the same remapped values (bit for bit: a gather), the same CSR arrays;
- ``cuda.topk_grad`` on device arrays returns device arrays equal to its host path;
- RigL's update of a layer on cuda (everything on the device) gives the structure, values and
  optimizer state of the same update on cpu, and the host ``W`` read afterwards is that matrix;
- the device errors: a format change on the device, a layer too large for 32-bit flat ranks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.errors import FormatTypeError, OperandError, ShapeError
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.kernels import get_backend, host_selection, host_topology
from purerigl.kernels._rank_key import tie_rank

SMALL_BLOCK = 4

#: The tie rule's salt: both ends of [0, 2^32) and anything between.
salts = st.one_of(st.just(0), st.just(2**32 - 1), st.integers(0, 2**32 - 1))


@pytest.fixture(scope="module")
def cuda():
    backend = get_backend("cuda")
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = SMALL_BLOCK
    yield backend
    _launch.THREADS_PER_BLOCK = saved


def _tied_values(rng, shape):
    """float32 values from a handful of magnitudes and both signs: many exact ties in |w|."""
    return (rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], size=shape)).astype(np.float32)


def _random_matrix(fmt: str, seed: int, shape=(7, 9), density=0.4):
    rng = np.random.default_rng(seed)
    cls = {"csr": CSR, "condensed": Condensed, "diagonal": Diagonal}[fmt]
    W = cls.random(shape, density, rng)
    W.values[...] = _tied_values(rng, W.values.shape)
    return W


def _storage_positions(W) -> list[int]:
    """Oracle: the flat position ``row * n_in + col`` of every stored value, in the order of
    ``W.values.ravel()``, written out from the definitions of DESIGN.md section 2 with plain Python
    loops over the raw arrays (no method of the format, no SciPy, no NumPy indexing):

    - Condensed: value (r, t) sits at (rows[r], indices[r, t]);
    - Diagonal: value (k, t) of offset d = offsets[k] sits at ((t + d) mod n_out, t) when
      n_out >= n_in, else at (t, (t + d) mod n_in), for t < L = min(n_out, n_in);
    - CSR: value e, with indptr[i] <= e < indptr[i + 1], sits at (i, indices[e]).
    """
    n_out, n_in = (int(n) for n in W.shape)
    flat = []
    if isinstance(W, Condensed):
        for r, row in enumerate(W.rows.tolist()):
            for t in range(W.indices.shape[1]):
                flat.append(row * n_in + int(W.indices[r, t]))
    elif isinstance(W, Diagonal):
        L = min(n_out, n_in)
        for d in W.offsets.tolist():
            for t in range(L):
                row, col = ((t + d) % n_out, t) if n_out >= n_in else (t, (t + d) % n_in)
                flat.append(row * n_in + col)
    elif isinstance(W, CSR):
        indptr, indices = W.indptr.tolist(), W.indices.tolist()
        for i in range(n_out):
            for e in range(indptr[i], indptr[i + 1]):
                flat.append(i * n_in + indices[e])
    else:
        raise TypeError(type(W).__name__)
    return flat


def _positions(W) -> dict[int, float]:
    """Oracle: {flat position: value} of every stored entry (explicit zeros kept), from
    :func:`_storage_positions`; no position is stored twice."""
    flat = _storage_positions(W)
    assert len(set(flat)) == len(flat) == W.values.size
    return dict(zip(flat, W.values.ravel().tolist()))


#: tall, wide and square shapes (the Diagonal rule differs between tall and wide), and thin ones
SHAPES = [(7, 9), (9, 7), (6, 6), (1, 5), (5, 1), (4, 10), (10, 4)]


# --------------------------------------------------------------------------------------------------
# host versions against oracles


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["csr", "condensed", "diagonal"]), frac=st.floats(0, 1),
       salt=salts)
def test_host_keep_by_magnitude_is_the_sorted_prefix(seed, fmt, frac, salt):
    W = _random_matrix(fmt, seed)
    entries = _positions(W)
    n_keep = int(frac * len(entries))
    want = sorted(sorted(entries, key=lambda p: (-abs(entries[p]), tie_rank(p, salt)))[:n_keep])
    got = host_topology.keep_by_magnitude(W, n_keep, salt)
    assert got.dtype == np.int64 and got.tolist() == want


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["csr", "condensed", "diagonal"]), shape=st.sampled_from(SHAPES))
def test_host_source_and_remap_follow_the_positions(seed, fmt, shape):
    old, new = _random_matrix(fmt, seed, shape=shape), _random_matrix(fmt, seed + 1, shape=shape)
    old_entries = _positions(old)
    source = host_topology.source_of(old, new)
    assert source.shape == new.values.shape
    out = host_topology.remap_by_source(old.values, source)
    new_flat = _storage_positions(new)
    for e, p in enumerate(new_flat):
        assert out.ravel()[e] == np.float32(old_entries.get(int(p), 0.0))
        assert (source.ravel()[e] >= 0) == (int(p) in old_entries)
    assert host_topology.count_kept(source) == len(set(new_flat) & set(old_entries))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["csr", "condensed", "diagonal"]), shape=st.sampled_from(SHAPES))
def test_host_flat_positions_follow_the_storage_definitions(seed, fmt, shape):
    """flat_positions, the format's to_scipy() and (Diagonal) positions() put every stored value where
    DESIGN.md section 2 says, value for value, tall, wide and square."""
    W = _random_matrix(fmt, seed, shape=shape)
    want = _storage_positions(W)
    got = host_topology.flat_positions(W)
    assert got.dtype == np.int64 and got.tolist() == want
    coo = W.to_scipy().tocoo()
    via_scipy = {int(r) * W.n_in + int(c): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}
    assert via_scipy == _positions(W)
    if fmt == "diagonal":
        rows, cols = W.positions()
        assert (rows * W.n_in + cols).ravel().tolist() == want


def test_storage_oracle_on_a_hand_worked_wide_and_tall_diagonal():
    """The oracle itself, on matrices small enough to check by hand: offsets (0, 2), L = 3."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    wide = Diagonal(np.array([0, 2], np.int32), values, (3, 5))  # (t, (t + d) mod 5)
    assert _storage_positions(wide) == [0 * 5 + 0, 1 * 5 + 1, 2 * 5 + 2, 0 * 5 + 2, 1 * 5 + 3, 2 * 5 + 4]
    tall = Diagonal(np.array([0, 2], np.int32), values, (5, 3))  # ((t + d) mod 5, t)
    assert _storage_positions(tall) == [0 * 3 + 0, 1 * 3 + 1, 2 * 3 + 2, 2 * 3 + 0, 3 * 3 + 1, 4 * 3 + 2]


def test_host_csr_from_positions_and_exclusion():
    shape = (4, 6)
    kept = np.array([1, 5, 13, 20], dtype=np.int64)  # (0, 1), (0, 5), (2, 1), (3, 2)
    grown = np.array([3, 12, 22], dtype=np.int64)  # (0, 3), (2, 0), (3, 4)
    M = host_topology.csr_from_positions(np.concatenate([kept, grown]), shape)  # the host sorts them
    assert M.indptr.tolist() == [0, 3, 3, 5, 7]
    assert (M.indptr.size, M.indices.tolist()) == (5, [1, 3, 5, 0, 1, 2, 4])
    assert not M.values.any()
    indptr, ex_cols = host_topology.exclusion_of(kept, shape)
    assert indptr.tolist() == [0, 2, 2, 3, 4] and ex_cols.tolist() == [1, 5, 1, 2]


# --------------------------------------------------------------------------------------------------
# cuda against host


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["csr", "condensed"]), frac=st.floats(0, 1), salt=salts)
def test_cuda_keep_by_magnitude_matches_host(cuda, seed, fmt, frac, salt):
    W = _random_matrix(fmt, seed)
    n_keep = int(frac * W.nnz)
    got = cuda.keep_by_magnitude(cuda.to_device(W), n_keep, salt)
    assert np.array_equal(cuda.to_host(got), host_topology.keep_by_magnitude(W, n_keep, salt))
    entries = _positions(W)  # the oracle, another way: Python's sort, one tie rank at a time
    want = sorted(sorted(entries, key=lambda p: (-abs(entries[p]), tie_rank(p, salt)))[:n_keep])
    assert cuda.to_host(got).tolist() == want


def test_cuda_keep_by_magnitude_all_tied(cuda):
    """Every |w| equal: the tie ranks alone choose, not the lowest positions; the salt changes the
    choice; cuda equals host."""
    W = _random_matrix("csr", 3, shape=(8, 10), density=0.6)
    W.values[...] = np.where(np.arange(W.nnz) % 2, 1.0, -1.0).astype(np.float32)
    n_keep = W.nnz // 3
    kept = {}
    for salt in (0, 1, 2**32 - 1):
        got = cuda.to_host(cuda.keep_by_magnitude(cuda.to_device(W), n_keep, salt))
        assert np.array_equal(got, host_topology.keep_by_magnitude(W, n_keep, salt))
        assert got.tolist() != sorted(_positions(W))[:n_keep]
        kept[salt] = got.tolist()
    assert kept[0] != kept[1] and kept[1] != kept[2**32 - 1]


@pytest.mark.parametrize("salt", [-1, 2**32, 2.0, False])
def test_cuda_keep_by_magnitude_refuses_a_bad_salt(cuda, salt):
    with pytest.raises(OperandError, match="salt"):
        cuda.keep_by_magnitude(cuda.to_device(_random_matrix("csr", 1)), 3, salt)


@pytest.mark.parametrize("salt", [-1, 2**32, 2.0, False, None])
def test_host_ops_refuse_a_bad_salt(salt):
    """The host selection ops check the salt as the cuda ones do, instead of hashing whatever
    arrives (a float or a negative salt would silently give another tie order)."""
    W = _random_matrix("csr", 1)
    scores = np.zeros(4, dtype=np.float32)
    tags = np.arange(4, dtype=np.int64)
    with pytest.raises(OperandError, match="salt"):
        host_topology.keep_by_magnitude(W, 3, salt)
    with pytest.raises(OperandError, match="salt"):
        host_selection.top_k(scores, tags, 2, salt)
    with pytest.raises(OperandError, match="salt"):
        host_selection.top_k_per_row(scores, tags, 2, 1, salt)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["csr", "condensed", "diagonal"]),
       shape=st.sampled_from([(7, 9), (9, 7), (6, 6), (1, 5), (5, 1)]))
def test_cuda_flat_positions_match_host_and_scipy(cuda, seed, fmt, shape):
    """Every stored entry's flat position, in storage order; for Diagonal the wrap-around rule of
    DESIGN.md section 2, tall and wide; checked against the SciPy oracle's positions too."""
    W = _random_matrix(fmt, seed, shape=shape)
    got = cuda.to_host(cuda.flat_positions(cuda.to_device(W)))
    assert got.dtype == np.int64
    assert np.array_equal(got, host_topology.flat_positions(W))
    assert sorted(got.tolist()) == sorted(_positions(W))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["csr", "condensed", "diagonal"]))
def test_cuda_source_remap_and_count_match_host(cuda, seed, fmt):
    old, new = _random_matrix(fmt, seed), _random_matrix(fmt, seed + 7)
    want = host_topology.source_of(old, new)
    source = cuda.source_of(cuda.to_device(old), cuda.to_device(new))
    assert tuple(source.shape) == want.shape
    assert np.array_equal(cuda.to_host(source), want)
    out = cuda.remap_by_source(cuda.to_device(old.values), source)
    assert np.array_equal(cuda.to_host(out), host_topology.remap_by_source(old.values, want))
    assert cuda.count_kept(source) == host_topology.count_kept(want)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), n_out=st.integers(1, 6), n_in=st.integers(1, 7))
def test_cuda_structure_builders_match_host(cuda, seed, n_out, n_in):
    rng = np.random.default_rng(seed)
    total = n_out * n_in
    chosen = rng.permutation(total)[: rng.integers(0, total + 1)]
    split = rng.integers(0, chosen.size + 1)
    kept, grown = np.sort(chosen[:split]).astype(np.int64), np.sort(chosen[split:]).astype(np.int64)
    want = host_topology.csr_from_positions(np.concatenate([kept, grown]), (n_out, n_in))
    got = cuda.to_host(cuda.csr_from_positions(cuda.merge_sorted(cuda.to_device(kept), cuda.to_device(grown)),
                                               (n_out, n_in)))
    assert isinstance(got, CSR) and got.shape == want.shape
    for name in ("indptr", "indices", "values"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
    ex = cuda.exclusion_of(cuda.to_device(kept), (n_out, n_in))
    for a, b in zip(ex, host_topology.exclusion_of(kept, (n_out, n_in))):
        assert np.array_equal(cuda.to_host(a), b)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(0, 70))
def test_cuda_topk_grad_on_device_arrays_matches_its_host_path(cuda, seed, m):
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, (3, 9)).astype(np.float32)  # small integers: exact sums, many ties
    dY = rng.integers(-2, 3, (3, 7)).astype(np.float32)
    excluded = np.sort(rng.permutation(63)[:20]).astype(np.int64)
    indptr, cols = host_topology.exclusion_of(excluded, (7, 9))
    want = cuda.topk_grad(X, dY, m, indptr, cols)
    to = cuda.to_device
    got = cuda.topk_grad(to(X), to(dY), m, to(indptr), to(cols))
    for g, w in zip(got, want):
        assert not isinstance(g, np.ndarray)
        assert np.array_equal(cuda.to_host(g), w)


# --------------------------------------------------------------------------------------------------
# RigL's whole update on the device


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rigl_update_on_cuda_matches_cpu(cuda, seed):
    from purerigl.dst import LayerUpdate, make_method
    from purerigl.nn.layers import SparseLinear
    from purerigl.optim import SGD

    rng = np.random.default_rng(seed)
    W = CSR.random((6, 8), 0.4, rng)
    W.values[...] = _tied_values(rng, W.values.shape)
    X = rng.integers(-2, 3, (4, 8)).astype(np.float32)
    dY = rng.integers(-2, 3, (4, 6)).astype(np.float32)
    results = {}
    for name in ("cpu", cuda):
        layer = SparseLinear(W.copy(), backend=name, name="l")
        opt = SGD(layer.parameters(), lr=0.1, momentum=0.9)
        layer.forward(layer.backend.to_device(X))
        layer.backward(layer.backend.to_device(dY))
        opt.step()  # momentum becomes nonzero at every stored entry
        stats = make_method("rigl", "csr").update(
            LayerUpdate(layer=layer, optimizer=opt, alpha=0.5, rng=np.random.default_rng(0), budget=W.nnz)
        )
        layer.sync_to_host()
        momentum = layer.backend.to_host(opt.state_arrays(layer.weight)["momentum_buffer"])
        results[getattr(name, "name", name)] = (layer.W, momentum, stats)
    (Wc, mc, sc), (Wg, mg, sg) = results["cpu"], results["cuda"]
    assert sc == sg and sc["grown"] > 0
    assert np.array_equal(Wc.indptr, Wg.indptr) and np.array_equal(Wc.indices, Wg.indices)
    np.testing.assert_allclose(Wg.values, Wc.values, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mg, mc, rtol=1e-6, atol=1e-7)
    assert Wg.nnz == W.nnz


def test_device_format_change_is_refused(cuda):
    old = cuda.to_device(_random_matrix("csr", 0))
    new = cuda.to_device(_random_matrix("condensed", 0))
    with pytest.raises(FormatTypeError, match="keeps the format"):
        cuda.source_of(old, new)


def test_device_ranks_refuse_layers_beyond_32_bit_positions(cuda):
    from purerigl.kernels.cuda.csr import DeviceCSR

    W = DeviceCSR((1 << 17, 1 << 16), None, None, None)  # never read: the size check comes first
    with pytest.raises(ShapeError, match="2\\^32"):
        cuda.keep_by_magnitude(W, 1)


def test_ascending_skips_the_sort_only_when_already_sorted():
    """The sort-skipping helpers of the topology step return what np.sort would, and the input itself
    when it is already ascending."""
    from purerigl.formats._base import ascending, is_ascending, sorted_unique

    sorted_in = np.array([0, 3, 3, 7, 12], dtype=np.int64)
    assert is_ascending(sorted_in) and ascending(sorted_in) is sorted_in
    shuffled = np.array([5, 1, 9, 1, 0], dtype=np.int64)
    assert not is_ascending(shuffled)
    assert np.array_equal(ascending(shuffled), np.sort(shuffled)) and shuffled[0] == 5  # input untouched
    for a in (sorted_in, shuffled, np.array([], dtype=np.int64), np.array([4], dtype=np.int64)):
        got = sorted_unique(a)
        assert np.array_equal(got, np.unique(a)) and got is not a
