"""The one exception type of :mod:`purerigl.data`.

:class:`DataError` is raised for every problem with a data set: a file that is missing, truncated,
corrupt or not the canonical one, a download that failed, an unknown data set name, an invalid option,
or inputs that hold NaN or Inf. It subclasses both :class:`purerigl.errors.PureriglError` and
``ValueError``, so callers can catch either.
"""

from __future__ import annotations

from ..errors import PureriglError


class DataError(PureriglError, ValueError):
    """A data set could not be found, fetched, read or validated; the message says which and why."""
