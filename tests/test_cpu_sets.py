"""The cpu backend's Numba set operations (:mod:`purerigl.kernels.cpu.sets`) against their spec, the host
versions (:func:`purerigl.kernels.host_selection.in_sorted`, :func:`purerigl.kernels.host_topology.source_of`,
:func:`purerigl.kernels.host_topology.remap_by_source`): the same values, dtypes and shapes.

Pins down:

- ``in_sorted`` on ascending values (the merge and the galloping merge, each forced), unsorted values
  (binary search from the first descent), ascending-then-unsorted values, duplicates on both sides,
  values beyond both ends of the sorted array, empty arrays, int32 and int64 on either side, 2-D
  values; and against a Python ``set`` as an independent oracle;
- ``source_of`` on CSR, Condensed (ablated rows included) and Diagonal matrices of tall, wide and
  square shapes, pairs of independent structures, a structure against itself, and a realistic update
  (part of the old positions kept, new ones grown) built with ``purerigl.formats`` and the host ops;
- ``remap_by_source`` bit for bit (NaN and -0.0 carried, +0.0 at new entries), into a new array and
  into a given one full of garbage; the host's IndexError for a source past the end;
- the cpu backend's ops are these functions.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import shapes, sparse_matrices

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.formats.budget import random_layer
from purerigl.kernels import get_backend, host_selection, host_topology
from purerigl.kernels.cpu import sets

INT_DTYPES = (np.int32, np.int64)

#: GALLOP_RATIO values that force the galloping merge (0), leave the driver's choice (None) or force
#: the plain merge (huge).
RATIOS = (0, None, 10**9)


def _same_array(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values, dtype and shape."""
    want = np.asarray(want)
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


def _with_ratio(ratio, fn, *args):
    """``fn(*args)`` with ``sets.GALLOP_RATIO`` set to ``ratio`` (None: unchanged)."""
    if ratio is None:
        return fn(*args)
    with mock.patch.object(sets, "GALLOP_RATIO", ratio):
        return fn(*args)


# --------------------------------------------------------------------------------------------------
# in_sorted


@st.composite
def lookups(draw):
    """(values, sorted_array): integer arrays drawn from a small range (many duplicates and hits), the
    values from a wider one (beyond both ends), in one of four orders, any of the integer dtypes."""
    lo, hi = -40, 40
    s = sorted(draw(st.lists(st.integers(lo, hi), max_size=60)))
    v = draw(st.lists(st.integers(lo - 20, hi + 20), max_size=60))
    order = draw(st.sampled_from(["ascending", "descending", "unsorted", "ascending-then-unsorted"]))
    if order == "ascending":
        v = sorted(v)
    elif order == "descending":
        v = sorted(v, reverse=True)
    elif order == "ascending-then-unsorted":
        cut = draw(st.integers(0, len(v)))
        v = sorted(v[:cut]) + v[cut:]
    values = np.array(v, dtype=draw(st.sampled_from(INT_DTYPES)))
    sorted_array = np.array(s, dtype=draw(st.sampled_from(INT_DTYPES)))
    return values, sorted_array


@settings(max_examples=300, deadline=None)
@given(case=lookups(), ratio=st.sampled_from(RATIOS))
def test_in_sorted_equals_the_spec(case, ratio):
    values, sorted_array = case
    got = _with_ratio(ratio, sets.in_sorted, values, sorted_array)
    _same_array(got, host_selection.in_sorted(values, sorted_array))
    members = set(sorted_array.tolist())
    assert got.tolist() == [int(v) in members for v in values]  # an oracle built another way


@settings(max_examples=60, deadline=None)
@given(case=lookups(), rows=st.integers(1, 4), ratio=st.sampled_from(RATIOS))
def test_in_sorted_keeps_the_shape_of_2d_values(case, rows, ratio):
    values, sorted_array = case
    n = (values.size // rows) * rows
    values = values[:n].reshape(rows, -1)  # (rows, n / rows): ascending in C order when the draw was
    _same_array(_with_ratio(ratio, sets.in_sorted, values, sorted_array), host_selection.in_sorted(values, sorted_array))
    _same_array(sets.in_sorted(values.T, sorted_array), host_selection.in_sorted(values.T, sorted_array))


@pytest.mark.parametrize("vdtype", INT_DTYPES)
@pytest.mark.parametrize("sdtype", INT_DTYPES)
def test_in_sorted_empty_arrays(vdtype, sdtype):
    for values in (np.zeros(0, vdtype), np.zeros((0, 3), vdtype), np.array([1, 5, 2], vdtype)):
        for sorted_array in (np.zeros(0, sdtype), np.array([1, 2, 2, 9], sdtype)):
            _same_array(sets.in_sorted(values, sorted_array), host_selection.in_sorted(values, sorted_array))


@pytest.mark.parametrize("ratio", RATIOS)
def test_in_sorted_large_positions(ratio):
    """Flat positions of a wide layer (past 2^32) and lopsided sizes, ascending and shuffled."""
    rng = np.random.default_rng(0)
    sorted_array = np.sort(rng.choice(1 << 40, 5000, replace=False))
    for n in (10, 1000, 5000, 20000):
        values = np.sort(np.concatenate([rng.choice(sorted_array, n // 2), rng.integers(-5, (1 << 40) + 5, n - n // 2)]))
        for v in (values, rng.permutation(values)):
            got = _with_ratio(ratio, sets.in_sorted, v, sorted_array)
            _same_array(got, host_selection.in_sorted(v, sorted_array))
            assert got.sum() >= n // 2 or v.size == 0


def test_in_sorted_hands_other_inputs_to_the_spec():
    """0-d values, float values and a 2-D sorted array: the host's result or error."""
    s = np.array([1, 3, 5], np.int64)
    assert sets.in_sorted(np.int64(3), s) == host_selection.in_sorted(np.int64(3), s)
    f = np.array([1.0, 1.5, np.nan, 5.0])
    _same_array(sets.in_sorted(f, s), host_selection.in_sorted(f, s))
    with pytest.raises(ValueError):
        host_selection.in_sorted(np.array([1]), s.reshape(1, 3))
    with pytest.raises(ValueError):
        sets.in_sorted(np.array([1]), s.reshape(1, 3))


# --------------------------------------------------------------------------------------------------
# source_of


@st.composite
def structure_pairs(draw, fmt=None):
    """(old, new) of one shape: each of the format ``fmt`` (any of the three, Condensed with or without
    ablated rows, independently, when None)."""
    shape = draw(shapes())
    old = draw(sparse_matrices(fmt, shape=shape))
    new = old if draw(st.integers(0, 5)) == 0 else draw(sparse_matrices(fmt, shape=shape))
    return old, new


def _check_source(old, new, ratio=None):
    got = _with_ratio(ratio, sets.source_of, old, new)
    want = host_topology.source_of(old, new)
    _same_array(got, want)
    assert got.shape == new.values.shape and got.dtype == np.int64
    return got


@settings(max_examples=150, deadline=None)
@given(pair=structure_pairs("csr"), ratio=st.sampled_from(RATIOS))
def test_source_of_csr(pair, ratio):
    _check_source(*pair, ratio)


@settings(max_examples=150, deadline=None)
@given(pair=structure_pairs("condensed"), ratio=st.sampled_from(RATIOS))
def test_source_of_condensed(pair, ratio):
    _check_source(*pair, ratio)


@settings(max_examples=150, deadline=None)
@given(pair=structure_pairs("diagonal"), ratio=st.sampled_from(RATIOS))
def test_source_of_diagonal(pair, ratio):
    _check_source(*pair, ratio)


@settings(max_examples=150, deadline=None)
@given(pair=structure_pairs(None), ratio=st.sampled_from(RATIOS))
def test_source_of_mixed_formats(pair, ratio):
    """Old ascending and new not (CSR into Diagonal): the merge, then binary searches."""
    _check_source(*pair, ratio)


def _updated(old, rng):
    """A new structure of old's format and shape: about 70% of old's positions kept, the rest new."""
    n_out, n_in = old.shape
    flat = host_topology.flat_positions(old)
    if isinstance(old, Diagonal):
        offsets = np.sort(old.offsets.astype(np.int64))
        keep = offsets[rng.random(offsets.size) < 0.7]
        free = np.setdiff1d(np.arange(max(n_out, n_in)), offsets)
        grown = rng.choice(free, min(free.size, offsets.size - keep.size), replace=False)
        return host_selection.diagonal_from_offsets(np.sort(np.concatenate([keep, grown])), old.shape)
    if isinstance(old, Condensed):
        positions = []
        for r, row in enumerate(old.rows.astype(np.int64)):
            cols = old.indices[r].astype(np.int64)  # (k,)
            n_swap = int(rng.integers(0, min(cols.size, n_in - cols.size) + 1))  # k per row stays k
            stay = rng.permutation(cols)[: cols.size - n_swap]
            grown = rng.choice(np.setdiff1d(np.arange(n_in), cols), n_swap, replace=False)
            positions.append(row * n_in + np.concatenate([stay, grown]))
        positions = np.sort(np.concatenate(positions)) if positions else np.zeros(0, np.int64)
        return host_selection.condensed_from_positions(old.rows, positions, old.shape)
    keep = flat[rng.random(flat.size) < 0.7]
    free = np.setdiff1d(np.arange(n_out * n_in), flat)
    grown = rng.choice(free, min(free.size, flat.size - keep.size), replace=False)
    return host_topology.csr_from_positions(host_selection.merge_sorted(keep, np.sort(grown)), old.shape)


@pytest.mark.parametrize("fmt", ["csr", "condensed", "diagonal"])
@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (57, 57)])
@pytest.mark.parametrize("ratio", RATIOS)
def test_source_of_a_realistic_update(fmt, shape, ratio):
    rng = np.random.default_rng([len(fmt), *shape])  # fixed per case (hash() of a str is salted per process)
    old = random_layer(fmt, shape, 0.8, rng)
    new = _updated(old, rng)
    assert type(new) is type(old) and new.shape == old.shape
    source = _check_source(old, new, ratio)
    assert 0 < np.count_nonzero(source >= 0) < source.size  # some kept, some grown
    _check_source(new, old, ratio)
    np.testing.assert_array_equal(_check_source(old, old, ratio).reshape(-1), np.arange(old.values.size))


def test_source_of_ablated_condensed():
    """Condensed with ablated rows, and with none active at all."""
    rows = np.array([1, 4], np.int32)
    old = Condensed(rows, np.array([[0, 2], [1, 3]], np.int32), np.ones((2, 2), np.float32), (6, 5))
    new = Condensed(np.array([0, 4], np.int32), np.array([[0, 2], [3, 4]], np.int32), np.ones((2, 2), np.float32), (6, 5))
    _same_array(sets.source_of(old, new), np.array([[-1, -1], [3, -1]]))
    _check_source(new, old)
    empty = Condensed(np.zeros(0, np.int32), np.zeros((0, 2), np.int32), np.zeros((0, 2), np.float32), (6, 5))
    for a, b in ((empty, old), (old, empty), (empty, empty)):
        _check_source(a, b)
    csr_empty = CSR(np.zeros(7, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), (6, 5))
    _check_source(csr_empty, old)
    _check_source(old, csr_empty)


# --------------------------------------------------------------------------------------------------
# remap_by_source


@st.composite
def remaps(draw):
    """(old_values, source): float32 values with NaN, infinities and -0.0 among them, and a source into
    them with -1 at about a third of the entries."""
    n_old = draw(st.integers(0, 40))
    specials = st.sampled_from([np.nan, -0.0, 0.0, np.inf, -np.inf, 1.5, -2.0])
    old = np.array(draw(st.lists(st.one_of(specials, st.floats(width=32)), min_size=n_old, max_size=n_old)),
                   dtype=np.float32)
    old = old.reshape(draw(st.sampled_from([(n_old,), (1, n_old)])))
    choices = st.integers(-1, n_old - 1) if n_old else st.just(-1)
    src = np.array(draw(st.lists(choices, max_size=40)), dtype=np.int64)
    if draw(st.booleans()) and src.size % 2 == 0:
        src = src.reshape(2, -1)  # a (K, L) source, as of a Condensed or Diagonal
    return old, src


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


@settings(max_examples=200, deadline=None)
@given(case=remaps())
def test_remap_by_source_equals_the_spec_bit_for_bit(case):
    old, src = case
    got, want = sets.remap_by_source(old, src), host_topology.remap_by_source(old, src)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(_bits(got), _bits(want))  # NaN payloads and -0.0 carried, +0.0 at -1
    out = np.full(src.shape, np.nan, dtype=np.float32)  # garbage the result must overwrite
    into = sets.remap_by_source(old, src, out=out)
    assert into is out and np.array_equal(_bits(out), _bits(want))


def test_remap_by_source_hands_other_inputs_to_the_spec():
    old = np.array([1.0, -0.0, 3.0], np.float32)
    src = np.array([2, -1, 0, 1])
    out64 = np.zeros(4, np.float64)  # another dtype than old's
    assert sets.remap_by_source(old, src, out=out64) is out64
    np.testing.assert_array_equal(out64, host_topology.remap_by_source(old, src, out=np.zeros(4, np.float64)))
    with pytest.raises(IndexError):
        host_topology.remap_by_source(old, np.array([0, 3]))
    with pytest.raises(IndexError):
        sets.remap_by_source(old, np.array([0, 3]))
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError):
        sets.remap_by_source(old, src, out=read_only)


# --------------------------------------------------------------------------------------------------
# wiring


def test_the_cpu_backend_uses_the_numba_set_operations():
    cpu = get_backend("cpu")
    assert cpu.in_sorted is sets.in_sorted
    assert cpu.source_of is sets.source_of
    assert cpu.remap_by_source is sets.remap_by_source
    assert cpu.merge_sorted is host_selection.merge_sorted  # NumPy's timsort merge was as fast
    reference = get_backend("reference")
    assert reference.in_sorted is host_selection.in_sorted and reference.source_of is host_topology.source_of
