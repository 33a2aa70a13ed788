"""Timing core shared by ``purerigl demo``, ``benchmarks/`` and (later) ``purerigl bench``.

Rules of DESIGN.md section 7: warm-up calls (Numba compilation, first-touch allocation) are run and
excluded; then the call is repeated until a time budget is spent or a run count is reached, and the
**median** is reported. Clock: :func:`time.perf_counter`. A ``sync`` callable (a GPU backend's
``synchronize``) runs before each clock read so queued work is counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``runs`` timed calls (warm-up excluded)."""

    median_s: float
    min_s: float
    max_s: float
    runs: int

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6

    def as_dict(self) -> dict:
        return {**asdict(self), "median_us": self.median_us}


def time_call(
    fn: Callable[[], object],
    *,
    repeat: int = 1000,
    budget_s: float = 0.5,
    min_runs: int = 5,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then timed calls until ``repeat`` runs or ``budget_s`` seconds

    At least ``min(min_runs, repeat)`` calls are timed even when one call exceeds the budget.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeat and (spent < budget_s or len(samples) < min(min_runs, repeat)):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples))


def memcpy_bandwidth(n_bytes: int = 1 << 28, repeat: int = 5) -> float:
    """The machine's memory-copy bandwidth in bytes per second (read + write counted), median of ``repeat``.

    This is the physical limit of a batch-1 sparse product, which streams its stored matrix once.
    """
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    t = time_call(lambda: np.copyto(dst, src), repeat=repeat, budget_s=0.0, min_runs=repeat, warmup=1)
    return 2 * src.nbytes / t.median_s


def blas_info() -> list[dict]:
    """The BLAS libraries NumPy/SciPy loaded, with thread counts (threadpoolctl); ``[]`` if unknown."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        {k: lib.get(k) for k in ("internal_api", "num_threads", "version", "threading_layer")}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def blas_summary(libs: list[dict] | None = None) -> str:
    """``"openblas 0.3.31, 4 threads"`` text of ``libs`` (default: :func:`blas_info` now), or ``"unknown ..."``."""
    libs = blas_info() if libs is None else libs
    if not libs:
        return "unknown (threadpoolctl not installed or no BLAS found)"
    return "; ".join(f"{b['internal_api']} {b['version']}, {b['num_threads']} threads" for b in libs)
