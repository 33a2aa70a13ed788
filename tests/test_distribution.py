"""Layer-wise budgets (PAPERS.md 1.3, invariant 14): exact totals, capping, hand-computed cases, errors."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purerigl.dst.distribution import (
    DISTRIBUTIONS,
    DistributionError,
    layer_budgets,
    layer_densities,
)
from purerigl.errors import PureriglError
from purerigl.formats.budget import layer_budget

MNIST = [(300, 784), (100, 300), (10, 100)]  # (n_out, n_in) of the 784-300-100-10 MLP


def global_budget(shapes, s):
    return sum(layer_budget(shape, s) for shape in shapes)


# --------------------------------------------------------------------------------------------------
# hand-computed cases


def test_erk_mnist_mlp_90_hand_computed():
    # N_l = 235200, 30000, 1000; c_l = N_l - floor(0.9 N_l) = 23520, 3000, 100; C = 26620.
    # p_l N_l = n_in + n_out = 1084, 400, 110 (sum 1594).
    # Pass 1: eps = 26620 / 1594 = 16.70...; eps * p_3 = 16.70 * 110 / 1000 = 1.837 > 1 -> layer 3 dense.
    # Pass 2: R = 26620 - 1000 = 25620 over 1084 + 400 = 1484:
    #   layer 1: 25620 * 1084 / 1484 = 18714 + 504/1484 (0.3396); density 0.07957
    #   layer 2: 25620 *  400 / 1484 =  6905 + 980/1484 (0.6604); density 0.23019 <= 1, no more caps
    # Floors 18714 + 6905 + 1000 = 26619; the 1 leftover goes to the largest fraction, layer 2.
    expected = [18714, 6906, 1000]
    for kind in ("erk", "er"):
        counts = layer_budgets(MNIST, 0.9, kind)
        assert counts == expected
        assert sum(counts) == 26620 == global_budget(MNIST, 0.9)
    d = layer_densities(MNIST, 0.9, "erk")
    assert d[2] == 1.0
    assert d[0] == pytest.approx(float(Fraction(25620 * 1084, 1484 * 235200)), rel=1e-15)
    assert d[1] == pytest.approx(float(Fraction(25620 * 400, 1484 * 30000)), rel=1e-15)
    # ERK favours the small last layer over the large first one.
    assert d[2] > d[1] > d[0]
    assert counts[2] / 1000 > counts[0] / 235200


def test_uniform_mnist_mlp_90():
    assert layer_budgets(MNIST, 0.9) == [23520, 3000, 100]
    assert layer_densities(MNIST, 0.9, "uniform") == [0.1, 0.1, 0.1]


def test_uniform_dense_last_rebalanced_hand_computed():
    # R = 26620 - 1000 = 25620 over N_sparse = 265200 (density 0.0966):
    #   layer 1: 25620 * 235200 / 265200 = 22721.81..., layer 2: 25620 * 30000 / 265200 = 2898.19...
    # floors 22721 + 2898 = 25619 -> the leftover 1 goes to layer 1 (fraction 0.81).
    counts = layer_budgets(MNIST, 0.9, "uniform", dense_last=True)
    assert counts == [22722, 2898, 1000]
    assert sum(counts) == global_budget(MNIST, 0.9)


def test_erk_small_hand_cases_and_fraction_ties():
    # Two identical layers (4, 4) at s = 0.5: c = 8 each, C = 16; equal p, so d = 0.5 each: 8, 8.
    assert layer_budgets([(4, 4), (4, 4)], 0.5, "erk") == [8, 8]
    # Three (3, 3) layers at s = 0.5, first dense: c = 9 - floor(4.5) = 5, C = 15, R = 15 - 9 = 6
    # over two equal layers: 3, 3 exactly.
    assert layer_budgets([(3, 3)] * 3, 0.5, "erk", dense_first=True) == [9, 3, 3]
    # Three (1, 3) layers at s = 0.5, first dense: c = 3 - floor(1.5) = 2, C = 6, R = 6 - 3 = 3 over
    # two equal layers: 1.5 and 1.5; floors 1, 1 and the leftover 1 goes to the tied fraction of
    # the earlier layer.
    for kind in DISTRIBUTIONS:
        assert layer_budgets([(1, 3)] * 3, 0.5, kind, dense_first=True) == [3, 2, 1]


def test_capping_cascades():
    # A tiny layer and a mid layer both exceed density 1 at high sparsity; each capped layer is dense.
    shapes = [(1000, 1000), (20, 1000), (2, 20), (1, 2)]
    counts = layer_budgets(shapes, 0.8, "erk")
    d = layer_densities(shapes, 0.8, "erk")
    assert sum(counts) == global_budget(shapes, 0.8)
    assert d[3] == 1.0 and counts[3] == 2
    assert d[2] == 1.0 and counts[2] == 40
    assert all(x <= 1.0 for x in d)


def test_s_zero_is_dense_everywhere():
    shapes = [(7, 3), (5, 7), (2, 5)]
    for kind in DISTRIBUTIONS:
        assert layer_budgets(shapes, 0.0, kind) == [21, 35, 10]
        assert layer_budgets(shapes, 0.0, kind, dense_first=True, dense_last=True) == [21, 35, 10]


def test_er_equals_erk_for_linear_layers():
    shapes = [(64, 784), (64, 64), (10, 64)]
    for s in (0.5, 0.9, 0.99):
        assert layer_budgets(shapes, s, "er") == layer_budgets(shapes, s, "erk")


def test_kind_is_case_insensitive_and_dense_layers_keyword():
    assert layer_budgets(MNIST, 0.9, "ERK") == layer_budgets(MNIST, 0.9, "erk")
    assert layer_budgets(MNIST, 0.9, "uniform", dense_layers=[-1]) == layer_budgets(
        MNIST, 0.9, "uniform", dense_last=True
    )


# --------------------------------------------------------------------------------------------------
# properties


layer_shapes = st.lists(
    st.tuples(st.integers(1, 200), st.integers(1, 200)), min_size=1, max_size=6
)
sparsities = st.one_of(st.floats(0.0, 0.99), st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.95, 0.99]))


@given(shapes=layer_shapes, s=sparsities, kind=st.sampled_from(DISTRIBUTIONS),
       dense_first=st.booleans(), dense_last=st.booleans())
def test_budgets_sum_exactly_and_respect_bounds(shapes, s, kind, dense_first, dense_last):
    C = global_budget(shapes, s)
    try:
        counts = layer_budgets(shapes, s, kind, dense_first, dense_last)
    except DistributionError as err:
        # Only two legitimate failures: dense layers above C, or a layer rounded to 0.
        dense = {0} if dense_first else set()
        if dense_last:
            dense.add(len(shapes) - 1)
        dense_total = sum(shapes[i][0] * shapes[i][1] for i in dense)
        assert dense_total > C or "0 connections" in str(err)
        return
    d = layer_densities(shapes, s, kind, dense_first, dense_last)
    sizes = [a * b for a, b in shapes]
    assert sum(counts) == C
    assert all(1 <= n <= N for n, N in zip(counts, sizes))
    assert all(0.0 < x <= 1.0 for x in d)
    for n, x, N in zip(counts, d, sizes):
        assert abs(n - x * N) < 1.0 + 1e-9 * N  # rounding moves a count by less than 1
        if x == 1.0:
            assert n == N  # capped or forced-dense layers are exactly dense
    if dense_first:
        assert counts[0] == sizes[0]
    if dense_last:
        assert counts[-1] == sizes[-1]
    if kind == "uniform" and not (dense_first or dense_last):
        assert counts == [layer_budget(shape, s) for shape in shapes]


@given(shapes=layer_shapes, s=sparsities, dense_first=st.booleans(), dense_last=st.booleans())
def test_erk_densities_proportional_to_raw_scores(shapes, s, dense_first, dense_last):
    try:
        d = layer_densities(shapes, s, "erk", dense_first, dense_last)
    except DistributionError:
        return
    forced = set()
    if dense_first:
        forced.add(0)
    if dense_last:
        forced.add(len(shapes) - 1)
    raw = [(a + b) / (a * b) for a, b in shapes]
    free = [i for i in range(len(shapes)) if i not in forced and d[i] < 1.0]
    capped = [i for i in range(len(shapes)) if i not in forced and d[i] == 1.0]
    if free:
        eps = d[free[0]] / raw[free[0]]
        for i in free:
            assert d[i] == pytest.approx(eps * raw[i], rel=1e-12)
        # A capped layer has a raw score at least that of every free layer (it would exceed 1).
        for i in capped:
            assert eps * raw[i] >= 1.0 - 1e-12
    # Exact budget before rounding.
    sizes = [a * b for a, b in shapes]
    assert sum(x * N for x, N in zip(d, sizes)) == pytest.approx(global_budget(shapes, s), rel=1e-9)


@given(shapes=layer_shapes, s=sparsities)
def test_deterministic(shapes, s):
    for kind in DISTRIBUTIONS:
        try:
            a = layer_budgets(shapes, s, kind)
        except DistributionError:
            continue
        assert a == layer_budgets(list(shapes), s, kind)


# --------------------------------------------------------------------------------------------------
# errors


def test_error_class():
    assert issubclass(DistributionError, PureriglError)
    assert issubclass(DistributionError, ValueError)


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(DistributionError, match="uniform, erk, er"):
        layer_budgets(MNIST, 0.9, "gaussian")


def test_empty_shapes():
    with pytest.raises(DistributionError, match="empty"):
        layer_budgets([], 0.9)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan"), "x", None, True])
def test_bad_sparsity(s):
    with pytest.raises(DistributionError, match="sparsity"):
        layer_budgets(MNIST, s)


@pytest.mark.parametrize("shapes", [[(0, 3)], [(3,)], [(2, -1)], [(2.5, 3)], [None], 5])
def test_bad_shapes(shapes):
    with pytest.raises(DistributionError):
        layer_budgets(shapes, 0.5)


def test_dense_layers_exceed_budget():
    with pytest.raises(DistributionError, match="global budget C = 26620"):
        layer_budgets(MNIST, 0.9, "erk", dense_first=True)
    with pytest.raises(DistributionError, match="global budget"):
        layer_budgets(MNIST, 0.9, "uniform", dense_first=True)
    with pytest.raises(DistributionError, match="global budget"):
        layer_budgets([(4, 4)], 0.5, "uniform", dense_last=True)


def test_layer_with_zero_connections():
    # (1, 2) dense takes 2 of C = 1 + 1 = 2; nothing is left for the (1, 1000) layer... its c is
    # 1000 - floor(0.999 * 1000) = 1, C = 1 + 1 = 2; the dense (1, 2) layer takes both.
    with pytest.raises(DistributionError, match="0 connections"):
        layer_budgets([(1, 1000), (1, 2)], 0.999, "uniform", dense_last=True)
    with pytest.raises(DistributionError, match="0 connections"):
        layer_budgets([(1, 1000), (1, 2)], 0.999, "erk", dense_last=True)
    # ERK can starve a tiny layer: (1000, 1000) and (1, 1) at s = 0.999999 have c = 1 and 1, C = 2;
    # p_l N_l = 2000 and 2, so t = 2 * 2000 / 2002 = 1.998 and 2 * 2 / 2002 = 0.002 (no cap:
    # eps * p_2 = 4 / 2002 < 1); floors 1, 0 and the leftover goes to the larger fraction (layer 0).
    with pytest.raises(DistributionError, match="layer 1 .* 0 connections"):
        layer_budgets([(1000, 1000), (1, 1)], 0.999999, "erk")
    assert layer_budgets([(1000, 1000), (1, 1)], 0.999999, "uniform") == [1, 1]


def test_bad_dense_layer_index():
    with pytest.raises(DistributionError, match="dense_layers"):
        layer_budgets(MNIST, 0.5, dense_layers=[3])
    with pytest.raises(DistributionError, match="dense_layers"):
        layer_budgets(MNIST, 0.5, dense_layers=["a"])
