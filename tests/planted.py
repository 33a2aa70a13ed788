"""Backends with planted faults, for tests that show a self-test catches them."""

from __future__ import annotations

import types

from purerigl.kernels import get_backend
from purerigl.kernels.registry import Backend


def broken_backend(**replacements) -> Backend:
    """The cpu backend with the named operations replaced (the rest are cpu's own)."""
    cpu = get_backend("cpu")
    module = types.ModuleType("broken")
    module.__dict__.update({k: v for k, v in vars(cpu.module).items() if not k.startswith("__")})
    module.__dict__.update(replacements)
    return Backend("broken", module)
