"""The CLI's one error convention: bad input ends in a one-line message and exit code 2, never a traceback.

Two sources of bad input exist:

- what click itself validates (``click.Choice``, ``click.IntRange``, ...): click already prints
  ``Error: Invalid value for '--x': ...`` and exits with 2;
- a :class:`purerigl.errors.PureriglError` raised by the library while a command runs (an unknown
  backend named in ``PURERIGL_BACKEND``, a shape that does not fit, ...): :class:`PureriglGroup`
  turns it into a :class:`click.UsageError`, which click prints as ``Error: <message>`` and exits with 2.

Commands therefore never catch library errors themselves; every command registered on the group (and
on any sub-group below it) gets the conversion for free. Any *other* exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import click

from purerigl.errors import PureriglError


class PureriglGroup(click.Group):
    """A click group that reports library errors raised by its commands as usage errors (exit 2)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PureriglError as err:
            raise as_usage_error(err) from None


def as_usage_error(err: PureriglError) -> click.UsageError:
    """The usage error (exit code 2) that reports ``err`` as one line, without a usage banner."""
    message = " ".join(str(err).split()) or type(err).__name__
    return click.UsageError(message)
