"""When the topology changes and by how much: pure functions of the optimizer step.

PyTorch convention (PAPERS.md 1.1): after optimizer step ``t`` completes (t = 1, 2, ...), a layer's
topology is updated iff ``t mod delta_t == 0`` and ``t <= t_end``; the drop fraction decays with a
cosine from ``alpha`` to 0 at ``t_end``:

.. math:: \\alpha_t = \\frac{\\alpha}{2} \\Big(1 + \\cos\\frac{\\pi t}{t_{end}}\\Big)

Drop scores see the weights after step t; grow scores use the gradient of the batch of step t.
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
    def from_fraction(cls, total_steps: int, *, delta_t: int = 100, alpha: float = 0.3, t_end: float = 0.75):
        """t_end given as a fraction in (0, 1] of ``total_steps``."""
        if not (0.0 < t_end <= 1.0):
            raise ScheduleError(f"t_end must be a fraction in (0, 1], got {t_end}")
        return cls(delta_t=int(delta_t), alpha=float(alpha), t_end=max(1, round(t_end * total_steps)))

    def is_update_step(self, step: int) -> bool:
        return is_update_step(step, self.delta_t, self.t_end)

    def drop_fraction(self, step: int) -> float:
        return drop_fraction(step, self.alpha, self.t_end)
