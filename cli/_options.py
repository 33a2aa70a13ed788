"""Options and parameter types shared by the commands, so every command spells and checks them the same way.

- :func:`backend_option`: ``--backend NAME``, also read from ``PURERIGL_BACKEND``; delivers a ready
  :class:`purerigl.Backend` to the command, or stops with exit 2 naming the valid backends.
- :func:`seed_option`: ``--seed N``.
- :data:`SHAPE`: a ``N_OUTxN_IN`` parameter type (``768x3072``).
- :class:`FiniteFloatRange`: click's ``FloatRange`` that also refuses ``nan`` and ``inf`` (click's
  range checks compare, and every comparison with nan is false, so ``nan`` passed them).
"""

from __future__ import annotations

import math
import os

import click

from purerigl import OPS, available_backends, get_backend
from purerigl.errors import BackendError
from purerigl.kernels.registry import DEFAULT_BACKEND, ENV_VAR


class FiniteFloatRange(click.FloatRange):
    """A float in a range, finite: ``nan`` and ``inf`` are refused with the option's name (exit 2)."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def missing_ops(backend) -> list[str]:
    """The operations of :data:`purerigl.OPS` that ``backend``'s module does not define (yet)."""
    return [op for op in OPS if not hasattr(backend.module, op)]


def backend_status(name: str) -> str:
    """The state of backend ``name``: ``"ok"``, ``"incomplete (no matmul, ...)"`` or ``"unavailable: ..."``."""
    try:
        backend = get_backend(name)
    except BackendError as err:
        return f"unavailable: {err}"
    except ImportError as err:  # a backend module that fails to import is reported, not raised
        return f"unavailable: import failed ({err})"
    missing = missing_ops(backend)
    return f"incomplete (no {', '.join(missing)})" if missing else "ok"


def usable_backends() -> list[str]:
    """Backends that import here and define every operation."""
    return [name for name in available_backends() if backend_status(name) == "ok"]


def default_backend() -> tuple[str, str]:
    """(name, source) of the backend used when none is named; source: ``PURERIGL_BACKEND`` or ``default``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env.strip().lower(), ENV_VAR
    return DEFAULT_BACKEND, "default"


def _resolve_backend(ctx: click.Context, param: click.Parameter, value: str | None):
    """Turn the chosen name (option, else PURERIGL_BACKEND, else default) into a Backend with every op.

    The option's value is already checked by ``click.Choice``; the environment variable and the
    default are checked here, and the error names where the bad value came from.
    """
    if value is not None:
        hint = "'--backend'"
    elif os.environ.get(ENV_VAR):
        hint = f"{ENV_VAR}={os.environ[ENV_VAR]!r}"
    else:
        hint = f"the default backend {DEFAULT_BACKEND!r}"
    try:
        backend = get_backend(value)
    except BackendError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param, param_hint=hint) from None
    missing = missing_ops(backend)
    if missing:
        others = [b for b in usable_backends() if b != backend.name]
        raise click.BadParameter(
            f"backend {backend.name!r} does not provide {', '.join(missing)} yet; "
            f"usable here: {', '.join(others) or 'none'} (pass --backend NAME)",
            ctx=ctx,
            param=param,
            param_hint=hint,
        )
    return backend


def backend_option(fn):
    """Decorator adding ``--backend`` (choices from :func:`purerigl.available_backends`).

    Precedence: the option, then ``PURERIGL_BACKEND``, then the registry's default (``cpu``). The
    command receives a :class:`purerigl.Backend` that defines every operation as ``backend``.
    """
    return click.option(
        "--backend",
        "backend",
        type=click.Choice(available_backends(), case_sensitive=False),
        default=None,
        callback=_resolve_backend,
        help=f"Kernel backend.  [default: ${ENV_VAR}, else {DEFAULT_BACKEND}]",
    )(fn)


def seed_option(fn=None, *, default: int = 0):
    """Decorator adding ``--seed N`` (a non-negative int) as ``seed``."""
    decorator = click.option(
        "--seed", type=click.IntRange(min=0), default=default, show_default=True, help="Random seed."
    )
    return decorator(fn) if fn is not None else decorator


class ShapeType(click.ParamType):
    """A matrix shape written ``N_OUTxN_IN`` (e.g. ``768x3072``), both positive; gives ``(n_out, n_in)``."""

    name = "N_OUTxN_IN"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("*", "x").split("x")
        try:
            n_out, n_in = (int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not a shape; write N_OUTxN_IN, two positive integers (768x3072)", param, ctx)
        if n_out < 1 or n_in < 1:
            self.fail(f"{value!r} has a non-positive dimension; both must be >= 1", param, ctx)
        return n_out, n_in


SHAPE = ShapeType()
