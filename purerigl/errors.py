"""Exception types of purerigl.

Every error the library raises on bad input is a subclass of both :class:`PureriglError` and the
matching builtin (``ValueError`` or ``TypeError``), so callers can catch either. Messages quote the
offending numbers ("row 17 has 12 indices, expected k=11").
"""


class PureriglError(Exception):
    """Base class of every error purerigl raises on purpose."""


class FormatError(PureriglError, ValueError):
    """A sparse container's arrays break the format's invariants (shape, bounds, order)."""


class FormatTypeError(PureriglError, TypeError):
    """A sparse container was given arrays of the wrong type or dtype."""


class ShapeError(PureriglError, ValueError):
    """An operand's shape does not fit the operation."""


class DTypeError(PureriglError, TypeError):
    """An operand's dtype is not the one the operation computes in (float32)."""


class OperandError(PureriglError, ValueError):
    """An operand is unusable for another reason than its shape or dtype (e.g. ``out`` overlaps an input)."""


class DensifyError(PureriglError, ValueError):
    """A conversion to dense was asked for a matrix larger than the allowed size."""


class BackendError(PureriglError, ValueError):
    """An unknown backend was named, or the named backend cannot run on this machine."""
