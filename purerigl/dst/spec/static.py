"""Static sparse training: the structure chosen at initialisation never changes (the baseline)."""

from __future__ import annotations

from ._common import Step, Update, unchanged


def update(step: Step) -> Update:
    return unchanged(step)
