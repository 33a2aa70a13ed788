"""``purerigl info``: what this machine and this install look like (versions, threads, backends, CUDA,
and the code: source fingerprint and git commit, :mod:`purerigl.report.provenance`).

The collection functions return plain dicts (JSON-ready) and never raise for a missing GPU or driver;
benchmarks reuse :func:`library_versions` and :func:`numba_threading`.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from importlib import metadata

import click

import purerigl
from purerigl.report.provenance import code_version

from ._options import backend_status, default_backend
from ._timing import blas_summary


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict:
    """Versions of purerigl, Python and the libraries it computes with (None where not installed)."""
    import numba
    import numpy
    import scipy

    return {
        "purerigl": purerigl.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "click": _dist_version("click"),
        "threadpoolctl": _dist_version("threadpoolctl"),
        "numba-cuda": _dist_version("numba-cuda"),
    }


def numba_threading(initialise: bool = True) -> dict:
    """Numba's thread count, its maximum and the threading layer.

    The layer is only chosen once a parallel function has run; with ``initialise`` a tiny
    ``parallel=True`` function is compiled and run first (well under a second), otherwise the layer
    reads ``"not yet initialised"`` if nothing parallel has run in this process.
    """
    import numba

    if initialise:
        _touch_parallel()
    try:
        layer = numba.threading_layer()
    except ValueError:  # raised while no parallel function has run
        layer = "not yet initialised"
    return {
        "num_threads": numba.get_num_threads(),
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": layer,
    }


def _touch_parallel() -> None:
    """Run a minimal parallel Numba function so that the threading layer gets chosen."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def count(n):
        total = 0
        for i in numba.prange(n):
            total += 1
        return total

    count(4)


def cuda_status() -> dict:
    """Whether numba.cuda imports and sees a GPU, the simulator flag, the device's name if any, and
    whether the cuda backend's caching memory pool is installed (:mod:`purerigl.kernels.cuda.memory_pool`).

    Never raises: every failure is reported as text under ``error``.
    """
    import numba

    status = {
        "simulator": bool(numba.config.ENABLE_CUDASIM),
        "importable": False,
        "available": False,
        "device": None,
        "compute_capability": None,
        "memory_pool": None,
        "error": None,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba's built-in CUDA target warns that it is deprecated
            from numba import cuda

            status["importable"] = True
            status["available"] = bool(cuda.is_available())
            if status["available"]:
                from purerigl.kernels.cuda import _launch  # installs the backend's pool before the context below

                status["memory_pool"] = _launch.MEMORY_POOL
                device = cuda.current_context().device  # works on a GPU and in the simulator
                name = getattr(device, "name", None) or ("CUDA simulator" if status["simulator"] else "unknown")
                status["device"] = name.decode() if isinstance(name, bytes) else str(name)
                status["compute_capability"] = ".".join(str(c) for c in device.compute_capability)
    except Exception as err:  # no driver, broken toolkit, ...: report, never crash
        status["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    return status


def machine() -> dict:
    """Platform, CPU counts (all and usable by this process), BLAS threads and the host allocator
    setting of the cpu backend (:mod:`purerigl.kernels.cpu.host_heap`)."""
    from purerigl.kernels import cpu  # imported once, it has made the setting

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "blas": blas_summary(),
        "host_heap": cpu.HOST_HEAP,
    }


def backends() -> dict:
    """The default backend, where it came from, and the status of every registered backend."""
    name, source = default_backend()
    return {
        "default": name,
        "default_source": source,
        "default_status": backend_status(name),
        "all": {b: backend_status(b) for b in purerigl.available_backends()},
    }


def collect() -> dict:
    """Everything ``purerigl info`` reports, as one JSON-ready dict."""
    return {
        "versions": library_versions(),
        "machine": machine(),
        "numba": numba_threading(initialise=True),
        "backends": backends(),
        "cuda": cuda_status(),
        "code": code_version(),
    }


def format_text(report: dict) -> str:
    """Aligned ``key: value`` lines, one block per section."""
    width = max(len(k) for section in report.values() for k in section) + 2
    lines = []
    for section, entries in report.items():
        lines.append(f"[{section}]")
        for key, value in entries.items():
            if isinstance(value, dict):  # one nested level: one indented line per entry
                lines.append(f"  {key}:")
                lines.extend(f"    {k + ':':<{width - 2}}{v}" for k, v in value.items())
            else:
                lines.append(f"  {key + ':':<{width}}{'-' if value is None else value}")
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(as_json: bool) -> None:
    """Show versions, threads, backends and CUDA status of this machine."""
    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=False))
    else:
        click.echo(format_text(report))


__all__ = ["collect", "cuda_status", "info", "library_versions", "machine", "numba_threading"]
