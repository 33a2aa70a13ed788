"""Learning-rate schedules: exact values at the landmarks, bounds and monotonicity (hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.optim.lr_schedule import (
    SCHEDULES,
    ConstantSchedule,
    CosineSchedule,
    ScheduleError,
    StepSchedule,
    constant,
    cosine,
    make_schedule,
    step,
)

# --------------------------------------------------------------------------------------------------
# warm-up


@pytest.mark.parametrize("name", SCHEDULES)
def test_warmup_is_linear_from_about_zero_to_base(name):
    extra = {"step_size": 5} if name == "step" else {}
    lr_at = make_schedule(name, 0.4, 100, warmup_steps=4, **extra)
    # eta * (s + 1) / (W + 1): 0.08, 0.16, 0.24, 0.32, then the base rate at s = W
    assert [lr_at(s) for s in range(4)] == [0.4 * (s + 1) / 5 for s in range(4)]
    assert lr_at(0) == pytest.approx(0.08)
    assert lr_at(3) == pytest.approx(0.32)
    assert lr_at(4) == 0.4
    ramp = [lr_at(s) for s in range(5)]
    assert np.allclose(np.diff(ramp), 0.08)  # linear through the hand-over


@pytest.mark.parametrize("name", SCHEDULES)
def test_no_warmup_starts_at_base(name):
    extra = {"milestones": [3]} if name == "step" else {}
    assert make_schedule(name, 0.1, 50, **extra)(0) == 0.1


# --------------------------------------------------------------------------------------------------
# constant


def test_constant():
    lr_at = make_schedule("constant", 0.05, 10)
    assert all(lr_at(s) == 0.05 for s in (0, 1, 9, 10, 1000))
    assert isinstance(lr_at, ConstantSchedule)
    assert constant(0.05) == lr_at


# --------------------------------------------------------------------------------------------------
# step decay


def test_step_size_boundaries_in_epochs():
    lr_at = make_schedule("step", 1.0, 1000, step_size=3, gamma=0.5, steps_per_epoch=10)
    # decays at steps 30, 60, 90, ...
    assert lr_at(0) == 1.0
    assert lr_at(29) == 1.0
    assert lr_at(30) == 0.5
    assert lr_at(59) == 0.5
    assert lr_at(60) == 0.25
    assert lr_at(90) == 0.125


def test_step_milestones_in_epochs():
    lr_at = make_schedule("step", 0.1, 300, milestones=[2, 5], gamma=0.1, steps_per_epoch=7)
    assert lr_at(13) == 0.1
    assert lr_at(14) == pytest.approx(0.01, rel=1e-12)
    assert lr_at(34) == pytest.approx(0.01, rel=1e-12)
    assert lr_at(35) == pytest.approx(0.001, rel=1e-12)
    assert lr_at(10_000) == pytest.approx(0.001, rel=1e-12)


def test_step_min_lr_floor_and_warmup():
    lr_at = make_schedule("step", 1.0, 100, step_size=1, gamma=0.1, min_lr=0.005, warmup_steps=3,
                          steps_per_epoch=4)
    assert lr_at(2) == pytest.approx(0.75)  # warm-up 3/4
    assert lr_at(3) == 1.0
    assert lr_at(4) == pytest.approx(0.1)
    assert lr_at(8) == pytest.approx(0.01)
    assert lr_at(12) == 0.005  # 0.001 floored
    assert lr_at(10**6) == 0.005  # gamma**n underflows to 0, still floored


def test_step_constructor_and_dataclass():
    s = step(0.1, milestones=(1, 3), steps_per_epoch=2)
    assert s == StepSchedule(0.1, boundaries=(2, 6))
    assert step(0.1, step_size=2, steps_per_epoch=5) == StepSchedule(0.1, period=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.base_lr = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# cosine


def test_cosine_landmarks():
    lr_at = make_schedule("cosine", 0.1, 100, min_lr=0.001)
    assert lr_at(0) == 0.1
    assert lr_at(50) == pytest.approx(0.001 + 0.5 * 0.099, rel=1e-12)  # midway: the mean
    assert lr_at(25) == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert lr_at(99) > 0.001
    assert lr_at(100) == 0.001
    assert lr_at(5000) == 0.001


def test_cosine_with_warmup_landmarks():
    lr_at = make_schedule("cosine", 0.2, 110, warmup_steps=10)
    assert lr_at(0) == pytest.approx(0.2 / 11)
    assert lr_at(9) == pytest.approx(0.2 * 10 / 11)
    assert lr_at(10) == 0.2  # end of warm-up: the base rate exactly
    assert lr_at(60) == pytest.approx(0.1, rel=1e-12)  # midway through the cosine part
    assert lr_at(110) == 0.0
    assert lr_at(109) == pytest.approx(0.1 * (1 + math.cos(math.pi * 99 / 100)), rel=1e-12)
    assert cosine(0.2, 110, warmup_steps=10) == lr_at
    assert isinstance(lr_at, CosineSchedule)


def test_cosine_matches_formula_everywhere():
    base, lo, total, warm = 0.3, 0.02, 37, 5
    lr_at = make_schedule("cosine", base, total, warmup_steps=warm, min_lr=lo)
    for s in range(warm, total + 1):
        t = s - warm
        expected = lo + 0.5 * (base - lo) * (1 + math.cos(math.pi * t / (total - warm)))
        assert lr_at(s) == pytest.approx(expected, rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------------------------------
# hypothesis: bounds and monotonicity


rates = st.tuples(
    st.floats(1e-6, 10.0, allow_nan=False), st.floats(0.0, 1.0, allow_nan=False)
).map(lambda t: (t[0], t[0] * t[1]))  # (base_lr, min_lr <= base_lr)


@settings(max_examples=60, deadline=None)
@given(rates=rates, total=st.integers(1, 500), warm_frac=st.floats(0.0, 0.99), data=st.data())
def test_cosine_bounded_and_monotone_after_warmup(rates, total, warm_frac, data):
    base, lo = rates
    warm = min(int(warm_frac * total), total - 1)
    lr_at = make_schedule("cosine", base, total, warmup_steps=warm, min_lr=lo)
    lrs = [lr_at(s) for s in range(warm, total + 3)]
    assert all(lo <= x <= base for x in lrs)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] == base and lrs[-1] == lo
    ramp = [lr_at(s) for s in range(warm)]
    assert all(0.0 < x < base for x in ramp)
    assert all(a < b for a, b in zip(ramp, ramp[1:]))


@settings(max_examples=60, deadline=None)
@given(
    rates=rates,
    gamma=st.floats(0.01, 1.0),
    step_size=st.integers(1, 20),
    spe=st.integers(1, 5),
    warm=st.integers(0, 20),
)
def test_step_bounded_and_monotone_after_warmup(rates, gamma, step_size, spe, warm):
    base, lo = rates
    warm = min(warm, step_size * spe)
    lr_at = make_schedule("step", base, 200, step_size=step_size, gamma=gamma, min_lr=lo,
                          warmup_steps=warm, steps_per_epoch=spe)
    lrs = [lr_at(s) for s in range(warm, 200)]
    assert all(lo <= x <= base for x in lrs)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert all(0.0 < lr_at(s) <= base for s in range(warm))


@settings(max_examples=30, deadline=None)
@given(rates=rates, total=st.integers(1, 100), warm=st.integers(0, 100), s=st.integers(0, 10**6))
def test_constant_bounded(rates, total, warm, s):
    base, _ = rates
    warm = min(warm, total)
    lr = make_schedule("constant", base, total, warmup_steps=warm)(s)
    assert 0.0 < lr <= base
    if s >= warm:
        assert lr == base


def test_numpy_integer_steps_accepted():
    lr_at = make_schedule("cosine", 0.1, 10)
    assert lr_at(np.int64(10)) == 0.0
    assert isinstance(lr_at(np.int32(3)), float)


# --------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="linear"), "unknown schedule 'linear'; valid names: constant, step, cosine"),
        (dict(base_lr=0.0), "base_lr must be > 0"),
        (dict(base_lr=float("inf")), "base_lr must be finite"),
        (dict(total_steps=0), "total_steps must be >= 1"),
        (dict(total_steps=10.0), "total_steps must be an integer"),
        (dict(warmup_steps=-1), "warmup_steps must be >= 0"),
        (dict(warmup_steps=101), r"warmup_steps \(101\) exceeds total_steps \(100\)"),
        (dict(warmup_steps=100), r"warmup_steps \(100\) must be smaller than total_steps"),
        (dict(min_lr=0.2), r"min_lr must be in \[0, base_lr=0.1\]"),
        (dict(min_lr=-0.01), r"min_lr must be in \[0, base_lr=0.1\]"),
        (dict(step_size=3), "apply to the 'step' schedule only"),
        (dict(name="constant", milestones=[3]), "apply to the 'step' schedule only"),
        (dict(name="step"), "exactly one of step_size and milestones"),
        (dict(name="step", step_size=2, milestones=[3]), "exactly one of step_size and milestones"),
        (dict(name="step", step_size=0), "step_size must be >= 1"),
        (dict(name="step", milestones=[5, 3]), r"milestones must be strictly increasing, got \[5, 3\]"),
        (dict(name="step", milestones=[0]), "milestone must be >= 1"),
        (dict(name="step", step_size=2, gamma=0.0), r"gamma must be in \(0, 1\]"),
        (dict(name="step", step_size=2, gamma=1.5), r"gamma must be in \(0, 1\]"),
        (dict(name="step", step_size=2, warmup_steps=3), "overlaps the first decay at step 2"),
        (dict(name="step", step_size=2, steps_per_epoch=0), "steps_per_epoch must be >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(name="cosine", base_lr=0.1, total_steps=100)
    args.update(kwargs)
    name, base, total = args.pop("name"), args.pop("base_lr"), args.pop("total_steps")
    with pytest.raises(ScheduleError, match=match):
        make_schedule(name, base, total, **args)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_bad_step_raises(bad):
    lr_at = make_schedule("constant", 0.1, 10)
    with pytest.raises(ScheduleError, match="step must be a non-negative integer"):
        lr_at(bad)


def test_schedule_error_is_value_error_and_names():
    assert issubclass(ScheduleError, ValueError)
    assert SCHEDULES == ("constant", "step", "cosine")
    assert isinstance(make_schedule("COSINE", 0.1, 10), CosineSchedule)
