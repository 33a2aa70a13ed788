r"""Learning-rate schedules: pure functions of the optimizer step.

A schedule is a small frozen dataclass called as ``lr_at(step) -> float``, where ``step`` is the
number of optimizer steps completed (0-based: ``lr_at(0)`` drives the first step). Feed it to the
optimizer with ``opt.step(lr=lr_at(t))``.

Every schedule takes an optional **linear warm-up** over the first :math:`W` steps, rising from
about 0 to the base rate :math:`\eta`:

.. math:: \eta_s = \eta \, \frac{s + 1}{W + 1}, \qquad 0 \le s < W

so the ramp is linear through :math:`\eta_W = \eta`, where the schedule proper takes over.

Schedules (:data:`SCHEDULES`): ``constant``, ``step`` (multiply by :math:`\gamma` every
``step_size`` epochs or at given milestone epochs) and ``cosine`` (from :math:`\eta` down to
``min_lr`` over the steps after the warm-up). :func:`make_schedule` builds one by name.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import PureriglError

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "CosineSchedule",
    "ScheduleError",
    "StepSchedule",
    "constant",
    "cosine",
    "make_schedule",
    "step",
]

#: Names accepted by :func:`make_schedule`.
SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine")


class ScheduleError(PureriglError, ValueError):
    """Bad schedule arguments, or a step that is not a non-negative integer."""


# --------------------------------------------------------------------------------------------------
# validation helpers


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_int(name: str, x, minimum: int) -> int:
    if not _is_int(x):
        raise ScheduleError(f"{name} must be an integer, got {x!r}")
    if x < minimum:
        raise ScheduleError(f"{name} must be >= {minimum}, got {x}")
    return int(x)


def _check_float(name: str, x) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ScheduleError(f"{name} must be a real number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ScheduleError(f"{name} must be finite, got {x!r}")
    return x


def _check_rates(base_lr, min_lr) -> tuple[float, float]:
    base_lr = _check_float("base_lr", base_lr)
    min_lr = _check_float("min_lr", min_lr)
    if base_lr <= 0.0:
        raise ScheduleError(f"base_lr must be > 0, got {base_lr!r}")
    if not 0.0 <= min_lr <= base_lr:
        raise ScheduleError(f"min_lr must be in [0, base_lr={base_lr!r}], got {min_lr!r}")
    return base_lr, min_lr


def _check_step(s) -> int:
    if not _is_int(s) or s < 0:
        raise ScheduleError(f"step must be a non-negative integer, got {s!r}")
    return int(s)


def _warmup(base_lr: float, warmup_steps: int, s: int) -> float:
    """The warm-up rate :math:`\\eta (s + 1) / (W + 1)` for ``s < W``."""
    return base_lr * (s + 1) / (warmup_steps + 1)


# --------------------------------------------------------------------------------------------------
# schedules


@dataclass(frozen=True)
class ConstantSchedule:
    r"""The base rate after an optional warm-up.

    .. math:: \eta_s = \eta \quad (s \ge W)

    Attributes
    ----------
    base_lr : float
    warmup_steps : int
    """

    base_lr: float
    warmup_steps: int = 0

    def __post_init__(self):
        object.__setattr__(self, "base_lr", _check_rates(self.base_lr, 0.0)[0])
        object.__setattr__(self, "warmup_steps", _check_int("warmup_steps", self.warmup_steps, 0))

    def __call__(self, step: int) -> float:
        s = _check_step(step)
        if s < self.warmup_steps:
            return _warmup(self.base_lr, self.warmup_steps, s)
        return self.base_lr


@dataclass(frozen=True)
class StepSchedule:
    r"""Step decay: multiply by :math:`\gamma` at every ``period`` steps, or at given boundaries.

    .. math:: \eta_s = \max\bigl(\eta_{\min},\ \eta \, \gamma^{n(s)}\bigr) \quad (s \ge W),
              \qquad n(s) = \lfloor s / P \rfloor \ \text{or}\ \#\{i : b_i \le s\}

    Decay steps are absolute optimizer steps (counted from the start of training, warm-up
    included), so the warm-up must end at or before the first one.

    Attributes
    ----------
    base_lr : float
    boundaries : tuple of int
        Strictly increasing decay steps :math:`b_i \ge 1` (empty when ``period`` is given).
    period : int or None
        Decay every :math:`P` steps (``None`` when ``boundaries`` are given).
    gamma : float
        In (0, 1].
    min_lr : float
        Floor of the decayed rate, in [0, base_lr].
    warmup_steps : int
    """

    base_lr: float
    boundaries: tuple[int, ...] = ()
    period: int | None = None
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self):
        base_lr, min_lr = _check_rates(self.base_lr, self.min_lr)
        gamma = _check_float("gamma", self.gamma)
        if not 0.0 < gamma <= 1.0:
            raise ScheduleError(f"gamma must be in (0, 1], got {gamma!r}")
        warmup = _check_int("warmup_steps", self.warmup_steps, 0)
        bounds = tuple(_check_int("boundary", b, 1) for b in self.boundaries)
        period = None if self.period is None else _check_int("period", self.period, 1)
        if period is not None and bounds:
            raise ScheduleError("give either period or boundaries, not both")
        if any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ScheduleError(f"boundaries must be strictly increasing, got {list(bounds)}")
        first = period if period is not None else (bounds[0] if bounds else None)
        if first is not None and first < warmup:
            raise ScheduleError(
                f"warm-up of {warmup} steps overlaps the first decay at step {first}; the "
                "warm-up must end at or before the first decay"
            )
        for name, value in (("base_lr", base_lr), ("min_lr", min_lr), ("gamma", gamma),
                            ("warmup_steps", warmup), ("boundaries", bounds), ("period", period)):
            object.__setattr__(self, name, value)

    def __call__(self, step: int) -> float:
        s = _check_step(step)
        if s < self.warmup_steps:
            return _warmup(self.base_lr, self.warmup_steps, s)
        if self.period is not None:
            n_decays = s // self.period
        else:
            n_decays = bisect.bisect_right(self.boundaries, s)
        return max(self.min_lr, self.base_lr * self.gamma**n_decays)


@dataclass(frozen=True)
class CosineSchedule:
    r"""Cosine decay from ``base_lr`` to ``min_lr`` over the steps after the warm-up.

    With :math:`T` = ``total_steps``, :math:`W` = ``warmup_steps`` and :math:`t = s - W`:

    .. math:: \eta_s = \eta_{\min} + \tfrac12 (\eta - \eta_{\min})
              \Bigl(1 + \cos\frac{\pi t}{T - W}\Bigr), \qquad W \le s \le T

    so :math:`\eta_W = \eta` and :math:`\eta_T = \eta_{\min}` exactly (the last step of training,
    :math:`s = T - 1`, still has a small positive rate when :math:`\eta_{\min} = 0`), and
    :math:`\eta_s = \eta_{\min}` for :math:`s > T`. Values are clamped into
    :math:`[\eta_{\min}, \eta]`, so rounding never leaves the range.

    Attributes
    ----------
    base_lr : float
    total_steps : int
        Greater than ``warmup_steps``.
    min_lr : float
        In [0, base_lr].
    warmup_steps : int
    """

    base_lr: float
    total_steps: int
    min_lr: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self):
        base_lr, min_lr = _check_rates(self.base_lr, self.min_lr)
        total = _check_int("total_steps", self.total_steps, 1)
        warmup = _check_int("warmup_steps", self.warmup_steps, 0)
        if warmup >= total:
            raise ScheduleError(
                f"warmup_steps ({warmup}) must be smaller than total_steps ({total}) for cosine"
            )
        for name, value in (("base_lr", base_lr), ("min_lr", min_lr),
                            ("total_steps", total), ("warmup_steps", warmup)):
            object.__setattr__(self, name, value)

    def __call__(self, step: int) -> float:
        s = _check_step(step)
        w = self.warmup_steps
        if s < w:
            return _warmup(self.base_lr, w, s)
        t, span = s - w, self.total_steps - w
        if t == 0:
            return self.base_lr
        if t >= span:
            return self.min_lr
        lr = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t / span))
        return min(self.base_lr, max(self.min_lr, lr))


# --------------------------------------------------------------------------------------------------
# constructors


def constant(base_lr: float, *, warmup_steps: int = 0) -> ConstantSchedule:
    """A :class:`ConstantSchedule`."""
    return ConstantSchedule(base_lr, warmup_steps)


def step(
    base_lr: float,
    *,
    step_size: int | None = None,
    milestones: list[int] | tuple[int, ...] | None = None,
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    steps_per_epoch: int = 1,
) -> StepSchedule:
    r"""A :class:`StepSchedule` from epochs: decay every ``step_size`` epochs or at ``milestones``.

    Exactly one of ``step_size`` and ``milestones`` is given. Epoch :math:`e` starts at optimizer
    step :math:`e \cdot` ``steps_per_epoch`` (:math:`S`), so with ``step_size`` :math:`k`:

    .. math:: \eta_s = \max\bigl(\eta_{\min},\ \eta\,\gamma^{\lfloor s / (k S) \rfloor}\bigr)

    and with milestones :math:`m_i` the rate is multiplied by :math:`\gamma` at each step
    :math:`m_i S`.
    """
    spe = _check_int("steps_per_epoch", steps_per_epoch, 1)
    if (step_size is None) == (milestones is None):
        raise ScheduleError("the step schedule takes exactly one of step_size and milestones")
    kwargs = dict(gamma=gamma, min_lr=min_lr, warmup_steps=warmup_steps)
    if step_size is not None:
        return StepSchedule(base_lr, period=_check_int("step_size", step_size, 1) * spe, **kwargs)
    epochs = [_check_int("milestone", m, 1) for m in milestones]
    if any(a >= b for a, b in zip(epochs, epochs[1:])):
        raise ScheduleError(f"milestones must be strictly increasing, got {epochs}")
    return StepSchedule(base_lr, boundaries=tuple(m * spe for m in epochs), **kwargs)


def cosine(
    base_lr: float, total_steps: int, *, min_lr: float = 0.0, warmup_steps: int = 0
) -> CosineSchedule:
    """A :class:`CosineSchedule`."""
    return CosineSchedule(base_lr, total_steps, min_lr=min_lr, warmup_steps=warmup_steps)


def make_schedule(
    name: str,
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    step_size: int | None = None,
    milestones: list[int] | tuple[int, ...] | None = None,
    gamma: float = 0.1,
    min_lr: float = 0.0,
    steps_per_epoch: int = 1,
) -> Callable[[int], float]:
    """Build a schedule ``lr_at(step) -> float`` by name.

    Parameters
    ----------
    name : {"constant", "step", "cosine"}
        Case-insensitive; see :data:`SCHEDULES`.
    base_lr : float
        Peak rate, > 0.
    total_steps : int
        Optimizer steps of the whole run (>= 1); the cosine reaches ``min_lr`` there.
    warmup_steps : int
        Linear warm-up length in optimizer steps (0: none).
    step_size, milestones : int or list of int, optional
        ``step`` only, in epochs; exactly one of them.
    gamma : float
        ``step`` only: decay factor in (0, 1].
    min_lr : float
        Floor for ``step``, end value for ``cosine``; in [0, base_lr].
    steps_per_epoch : int
        Optimizer steps per epoch, to turn ``step_size`` / ``milestones`` into steps.

    Raises
    ------
    ScheduleError
        For an unknown name (the valid ones are listed), an option the schedule does not take, or
        an out-of-range value.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    total = _check_int("total_steps", total_steps, 1)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    if warmup > total:
        raise ScheduleError(f"warmup_steps ({warmup}) exceeds total_steps ({total})")
    _check_int("steps_per_epoch", steps_per_epoch, 1)
    if key != "step" and (step_size is not None or milestones is not None):
        raise ScheduleError(f"step_size and milestones apply to the 'step' schedule only, not {key!r}")
    if key == "constant":
        _check_rates(base_lr, min_lr)
        return constant(base_lr, warmup_steps=warmup)
    if key == "cosine":
        return cosine(base_lr, total, min_lr=min_lr, warmup_steps=warmup)
    return step(
        base_lr,
        step_size=step_size,
        milestones=milestones,
        gamma=gamma,
        min_lr=min_lr,
        warmup_steps=warmup,
        steps_per_epoch=steps_per_epoch,
    )
