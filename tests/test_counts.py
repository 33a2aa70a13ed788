"""Counts are exact floors and ceilings: floor_count / ceil_count and the layer budget C = N - floor(sN).

Every expected value here is computed in integer arithmetic, never in floating point.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.formats._base import RATIO_MAX_DENOMINATOR, ceil_count, exact_fraction, floor_count
from purerigl.formats.budget import layer_budget

N_BIG = 32768 * 32768  # 2**30


def int_floor(p: int, n: int, q: int) -> int:
    """floor(p * n / q) in integers."""
    return (p * n) // q


def int_ceil(p: int, n: int, q: int) -> int:
    """ceil(p * n / q) in integers."""
    return -((-p * n) // q)


# --------------------------------------------------------------------------------------------------
# the cases of the issue


def test_budget_of_a_2_30_layer_at_90_percent_is_exact():
    assert layer_budget((32768, 32768), 0.9) == N_BIG - (9 * N_BIG) // 10


@pytest.mark.parametrize("shape", [(32768, 32768), (65536, 32768), (65536, 65537), (3, 1 << 31)])
@pytest.mark.parametrize("num, den", [(9, 10), (99, 100), (999, 1000), (95, 100), (1, 2), (7, 8), (1, 10)])
def test_budgets_at_2_31_scale_match_integer_arithmetic(shape, num, den):
    n = shape[0] * shape[1]
    s = num / den  # the float the user types, e.g. 0.99
    assert layer_budget(shape, s) == n - (num * n) // den
    assert layer_budget(shape, Fraction(num, den)) == n - (num * n) // den


def test_a_float_just_short_of_an_integer_is_not_snapped_up():
    assert floor_count(799382.99947) == 799382
    assert ceil_count(799382.99947) == 799383
    assert floor_count(799383.00053) == 799383
    assert ceil_count(799383.00053) == 799384


@pytest.mark.parametrize("x", [5e8 + 0.5, 5e8 + 0.25, 123456789.4, 2.0**40 + 0.5, 987654321.999])
def test_large_values_are_floored_and_ceiled_not_rounded(x):
    assert floor_count(x) == math.floor(x)
    assert ceil_count(x) == math.ceil(x)
    assert ceil_count(x) == floor_count(x) + 1


def test_ratios_built_in_code_do_not_lose_an_entry():
    assert 15 / 22 * 22 < 15  # the float product has already lost it ...
    assert floor_count(15 / 22, 22) == 15  # ... the factors read exactly have not
    assert floor_count(Fraction(15, 22), 22) == 15
    assert ceil_count(7 / 25, 25) == 7
    assert floor_count(12 / 19, 19) == 12  # repr(12 / 19) = '0.631578947368421' is below 12/19
    assert layer_budget((19, 1), 1 - Fraction(12, 19)) == 12
    assert Condensed.random((3, 22), 15 / 22, rng=0).k == 15
    assert CSR.random((1, 22), 15 / 22, rng=0).nnz == 15
    assert Diagonal.count_for_density((25, 1), 7 / 25) == 7


@pytest.mark.parametrize("k", [1, 7, 1000, 799383, 500_000_001, 2**40 + 1])
def test_floats_next_to_an_integer(k):
    below, above = np.nextafter(float(k), -np.inf), np.nextafter(float(k), np.inf)
    assert (floor_count(below), ceil_count(below)) == (k - 1, k)
    assert (floor_count(float(k)), ceil_count(float(k))) == (k, k)
    assert (floor_count(above), ceil_count(above)) == (k, k + 1)


def test_how_a_float_is_read():
    assert exact_fraction(0.9) == Fraction(9, 10)
    assert exact_fraction(15 / 22) == Fraction(15, 22)
    assert exact_fraction(1 / 3) == Fraction(1, 3)
    assert exact_fraction(0.123456789) == Fraction(123456789, 10**9)  # the decimal as typed
    assert exact_fraction(0.1 + 0.2) == Fraction("0.30000000000000004")  # not 3/10: another float
    assert exact_fraction(np.float64(0.75)) == Fraction(3, 4)
    assert exact_fraction(Fraction(2, 7)) == Fraction(2, 7)
    assert exact_fraction(Decimal("0.1234567890123456789")) == Fraction(1234567890123456789, 10**19)
    assert exact_fraction("15/22") == Fraction(15, 22)
    assert exact_fraction(np.int64(3)) == 3
    with pytest.raises(ValueError, match="finite"):
        exact_fraction(float("nan"))


def test_counts_refuse_a_non_integer_multiplier():
    with pytest.raises(TypeError):
        floor_count(0.5, 10.0)


# --------------------------------------------------------------------------------------------------
# property tests against integer arithmetic

counts_n = st.integers(min_value=0, max_value=1 << 34)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**12), st.data(), counts_n)
def test_fraction_factors_are_exact(den, data, n):
    num = data.draw(st.integers(0, 3 * den))
    assert floor_count(Fraction(num, den), n) == int_floor(num, n, den)
    assert ceil_count(Fraction(num, den), n) == int_ceil(num, n, den)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, RATIO_MAX_DENOMINATOR), st.data(), counts_n)
def test_float_ratios_are_read_as_the_ratio(den, data, n):
    num = data.draw(st.integers(0, den))
    s = num / den  # a float, as code that divides two integers builds it
    assert floor_count(s, n) == int_floor(num, n, den)
    assert ceil_count(s, n) == int_ceil(num, n, den)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 9), st.data(), counts_n)
def test_float_decimals_are_read_as_typed(places, data, n):
    m = data.draw(st.integers(0, 10**places - 1))
    s = float(f"0.{m:0{places}d}")  # a decimal with `places` digits after the point, as typed
    den = 10**places
    assert floor_count(s, n) == int_floor(m, n, den)
    assert ceil_count(s, n) == int_ceil(m, n, den)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.data(), st.integers(1, 1 << 16), st.integers(1, 1 << 16))
def test_layer_budget_matches_integer_arithmetic(places, data, n_out, n_in):
    m = data.draw(st.integers(0, 10**places - 1))
    n = n_out * n_in
    assert layer_budget((n_out, n_in), float(f"0.{m:0{places}d}")) == n - (m * n) // 10**places


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e18, max_value=1e18, allow_nan=False))
def test_a_single_float_is_floored_exactly(x):
    assert floor_count(x) == math.floor(x)
    assert ceil_count(x) == math.ceil(x)
