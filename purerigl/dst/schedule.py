"""When the topology changes and by how much: pure functions of the optimizer step.

PyTorch convention (PAPERS.md 1.1): after optimizer step ``t`` completes (t = 1, 2, ...), a layer's
topology is updated iff ``t mod delta_t == 0`` and ``t <= t_end``; the drop fraction decays with a
cosine from ``alpha`` to 0 at ``t_end``:

.. math:: \\alpha_t = \\frac{\\alpha}{2} \\Big(1 + \\cos\\frac{\\pi t}{t_{end}}\\Big)

Drop scores see the weights after step t; grow scores use the gradient of the batch of step t.

How often: :func:`auto_delta_t` derives delta_t from the length of the run (``purerigl train``'s
default, ``--delta-t auto``), so that a short run on a small data set still changes its topology
a meaningful number of times; :meth:`UpdateSchedule.n_updates` counts the update steps of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PureriglError


class ScheduleError(PureriglError, ValueError):
    """A DST schedule option is out of range."""


def drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """alpha_t = alpha / 2 * (1 + cos(pi * t / t_end)) for t <= t_end, 0 after."""
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


#: :func:`auto_delta_t`: the RigL paper's delta_t, never exceeded (PAPERS.md 1.1).
AUTO_DELTA_T_MAX = 100
#: :func:`auto_delta_t`: the number of update steps up to t_end it gives at the least.
AUTO_MIN_UPDATES = 20


def auto_delta_t(t_end_steps: int, *, max_delta_t: int = AUTO_DELTA_T_MAX, min_updates: int = AUTO_MIN_UPDATES) -> int:
    """delta_t chosen from the number of steps before the topology freezes:

    .. math:: \\Delta T = \\min\\big(100, \\max(1, \\lfloor t_{end} / 20 \\rfloor)\\big)

    so a run has at least 20 update steps up to ``t_end`` (one every step when ``t_end`` < 20 steps),
    and delta_t is never above 100, the RigL paper's value. A fixed 100 gives a short run on small
    data few updates or none (the embedded digits data has 23 steps per epoch).
    Long runs keep 100: MNIST at batch 64 for 20 epochs (t_end = 0.75 x 18,760 = 14,070 steps) gets
    100 and 140 updates; the embedded digits data (23 steps per epoch) gets 17 for 20 epochs (20
    updates) and 2 for 3 epochs (t_end = 52 steps, 26 updates).
    """
    if t_end_steps < 1:
        raise ScheduleError(f"t_end must be at least one step, got {t_end_steps}")
    return min(int(max_delta_t), max(1, int(t_end_steps) // int(min_updates)))


def is_update_step(step: int, delta_t: int, t_end: int) -> bool:
    """True after optimizer steps delta_t, 2 delta_t, ... up to and including t_end."""
    return step > 0 and step % delta_t == 0 and step <= t_end


@dataclass(frozen=True)
class UpdateSchedule:
    """The update schedule of one run.

    Parameters
    ----------
    delta_t : int
        Optimizer steps between two topology updates (> 0).
    alpha : float
        Initial drop fraction, in [0, 1].
    t_end : int
        Last step at which the topology may change (>= 1); usually a fraction of all steps, see
        :meth:`from_fraction`.
    """

    delta_t: int = 100
    alpha: float = 0.3
    t_end: int = 1

    def __post_init__(self):
        if not isinstance(self.delta_t, int) or self.delta_t < 1:
            raise ScheduleError(f"delta_t must be a positive integer, got {self.delta_t}")
        if not (0.0 <= self.alpha <= 1.0):
            raise ScheduleError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.t_end < 1:
            raise ScheduleError(f"t_end must be at least one step, got {self.t_end}")

    @classmethod
    def from_fraction(cls, total_steps: int, *, delta_t: int | str = 100, alpha: float = 0.3, t_end: float = 0.75):
        """t_end given as a fraction in (0, 1] of ``total_steps``; ``delta_t="auto"`` derives delta_t
        from that t_end with :func:`auto_delta_t`."""
        if not (0.0 < t_end <= 1.0):
            raise ScheduleError(f"t_end must be a fraction in (0, 1], got {t_end}")
        t_end_steps = max(1, round(t_end * total_steps))
        if delta_t == "auto":
            delta_t = auto_delta_t(t_end_steps)
        return cls(delta_t=int(delta_t), alpha=float(alpha), t_end=t_end_steps)

    def is_update_step(self, step: int) -> bool:
        return is_update_step(step, self.delta_t, self.t_end)

    def n_updates(self, total_steps: int | None = None, *, changing: bool = False) -> int:
        """How many of the steps 1..``total_steps`` (all steps up to t_end if None) are update steps:
        floor(min(t_end, total_steps) / delta_t).

        With ``changing``, only those whose drop fraction alpha_t is above 0: none when alpha = 0, and
        not an update at t_end itself (alpha_t = 0 there), so floor((t_end - 1) / delta_t) at most.
        An update with alpha_t = 0 is still an update step (the updater counts it) but changes nothing.
        """
        last = self.t_end if total_steps is None else min(self.t_end, int(total_steps))
        if changing:
            if self.alpha == 0.0:
                return 0
            last = min(last, self.t_end - 1)
        return max(0, last) // self.delta_t

    def drop_fraction(self, step: int) -> float:
        return drop_fraction(step, self.alpha, self.t_end)
