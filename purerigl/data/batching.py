"""Mini-batches: :func:`iterate_batches`, one pass (epoch) over a data set."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import DataError


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the mini-batches of one epoch.

    Parameters
    ----------
    x : numpy.ndarray, shape (n, n_features)
        Inputs.
    y : numpy.ndarray, shape (n,)
        Integer labels.
    batch_size : int
        Samples per batch, at least 1. The last batch is smaller when ``batch_size`` does not
        divide ``n`` (unless ``drop_last``).
    rng : numpy.random.Generator, optional
        When given, the samples are visited in the order ``rng.permutation(n)``, drawn once when this
        function is called; otherwise in storage order.
    drop_last : bool
        Skip the final, smaller batch.

    Yields
    ------
    xb : numpy.ndarray of float32, shape (b, n_features), C-contiguous
    yb : numpy.ndarray of int64, shape (b,)

    Notes
    -----
    Every sample appears exactly once per epoch (``n - n % batch_size`` of them with
    ``drop_last``). Without shuffling, batches that need no conversion are views of ``x`` and ``y``.
    Arguments are checked when the function is called, not at the first batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise DataError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"x and y must hold the same number of samples, got shapes {x.shape} and {y.shape}")
    n = x.shape[0]
    order = rng.permutation(n) if rng is not None else None
    stop = n - n % batch_size if drop_last else n
    return _batches(x, y, int(batch_size), order, stop)


def _batches(x, y, batch_size, order, stop):
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, x.shape[0])
        if order is None:
            xb, yb = x[start:end], y[start:end]
        else:
            idx = order[start:end]
            xb, yb = x[idx], y[idx]
        yield np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(yb, dtype=np.int64)
