"""Serial twins of the parallel kernels: small work runs on the calling thread (issue 19).

A Numba parallel region costs a few microseconds on a quiet machine, and far more on a busy one: the
region ends only when every thread has done its share, so each region waits for a worker thread to
get a core that another process is using (on 2 cores with two CPU-bound processes beside it, a
training epoch of the digits MLP ran 4-40x slower than quiet). A driver therefore calls the kernel's
serial twin instead, the same Python function compiled without ``parallel=True`` (``prange`` runs as
``range`` on the calling thread and no worker is woken), when the work is small (:func:`by_work`:
below :data:`SERIAL_WORK` multiply-adds or copied elements, :data:`VECTOR_SERIAL_WORK` at batch < 4,
:data:`GROWTH_SERIAL_WORK` for a growth kernel) or while other processes hold the cores
(:func:`cores_taken`).

A kernel whose loop the compiler vectorises only inside a parallel region may have its twin written
out instead (:func:`written_twin`): the same outputs in the same order, arranged so that the serial
loop vectorises too (max pooling's 2 x 2 window, :mod:`.pooling`). The tests hold it to the parallel
kernel bit for bit like every other twin.

Determinism. The twin runs the same loop body over the same partition (the partitions depend on the
shapes, never on the thread count) and every parallel loop writes disjoint outputs with private
accumulators, so the twin computes every output with the same operations in the same order: the same
bits. Which of the two runs depends on the work size and, through :func:`cores_taken`, on the
machine's load; the results do not (tests/test_serial_twins.py compares them bit for bit).
"""

from __future__ import annotations

import os
import time
import types

import numba
from numba import njit

from ._cache import CACHE

#: Below this many multiply-adds (a product at batch >= 4, the training regime) or elements (a
#: transpose) a kernel runs serially. In a training step of the digits MLP the parallel kernels are no
#: faster than serial ones even on a quiet machine (benchmarks/results/busy-machine-2core.md).
SERIAL_WORK = 1 << 18

#: The threshold of the products at batch < 4 (a matrix-vector product is bound by memory bandwidth,
#: which two cores share better than one: the 768 x 3072 layer at 90% and batch 1, 236k multiply-adds,
#: runs 1.5-2x slower on one thread). The same value as ``condensed.SERIAL_WORK``.
VECTOR_SERIAL_WORK = 1 << 15

#: The same for the streamed growth kernels, in multiply-adds of the gradient they stream
#: (n_out * n_in * B): they run once per topology update, not once per step, so their parallel gain
#: on a quiet machine is small in an epoch, and a serial update of a few million multiply-adds (about
#: a millisecond) costs less than the scheduler slices a parallel one waits for on a busy machine.
GROWTH_SERIAL_WORK = 1 << 22

#: Seconds between two looks at the machine's load (:func:`cores_taken`).
LOAD_CHECK_S = 0.25

#: Whether :func:`cores_taken` looks at the load at all (False: the work thresholds alone decide).
LOAD_CHECK = True

_TWINS: dict = {}
_WRITTEN: dict = {}  # parallel kernel -> its serial twin written out (written_twin)
_LOAD = [0.0, False]  # [time of the next look, whether other processes hold the cores]


def _others_running() -> int | None:
    """Runnable tasks on the machine that are not threads of this process, or None where Linux's
    /proc does not say, or where it may speak of other CPUs than ours (a CPU affinity narrower than
    the machine, as in a container pinned to some cores of a larger host)."""
    try:
        if len(os.sched_getaffinity(0)) != os.cpu_count():
            return None
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])  # "1.33 0.93 0.83 2/83 26161": 2 runnable
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:  # the thread ended in between
                continue
            own += stat[stat.rindex(")") + 2] == "R"
        return max(0, running - own)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def cores_taken() -> bool:
    """Whether other runnable processes leave fewer free cores than Numba has threads, looked at
    every :data:`LOAD_CHECK_S` seconds (about 0.1 ms a look). Then every parallel region would wait for
    a thread whose core is busy, so the drivers run the serial twins (same bits) whatever the work."""
    now = time.monotonic()
    if now >= _LOAD[0]:
        others = _others_running() if LOAD_CHECK else None
        _LOAD[0] = now + LOAD_CHECK_S
        _LOAD[1] = others is not None and others + numba.get_num_threads() > os.cpu_count()
    return _LOAD[1]


def written_twin(kernel):
    """Decorator: the decorated serial kernel (same arguments, same outputs bit for bit) is
    ``kernel``'s twin, returned by :func:`serial_twin` instead of ``kernel`` compiled serially."""

    def register(twin):
        if twin.targetoptions.get("parallel"):
            raise ValueError(f"the twin of {kernel.py_func.__name__} must be compiled without parallel=True")
        _WRITTEN[kernel] = twin
        return twin

    return register


def serial_twin(kernel):
    """The kernel's serial twin: the one written for it (:func:`written_twin`), else its Python
    function compiled with its own options but ``parallel=False``.

    The copy gets its own qualified name (``<name>_serial``), so Numba caches it on disk apart from
    the parallel version.
    """
    twin = _TWINS.get(kernel)
    if twin is None and kernel in _WRITTEN:
        twin = _TWINS[kernel] = _WRITTEN[kernel]
    if twin is None:
        f = kernel.py_func
        g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
        g.__qualname__ = f.__qualname__ + "_serial"
        g.__module__ = f.__module__
        g.__doc__ = f"Serial twin of :func:`{f.__name__}` (see :mod:`{__name__}`)."
        options = {k: v for k, v in kernel.targetoptions.items() if k not in ("parallel", "nopython")}
        twin = _TWINS[kernel] = njit(cache=CACHE, **options)(g)
    return twin


def by_work(kernel, work: int, batch: int | None = None, growth: bool = False):
    """``kernel`` when ``work`` reaches the threshold and the cores are free (:func:`cores_taken`),
    else its serial twin. The threshold is
    :data:`GROWTH_SERIAL_WORK` for a growth kernel, :data:`VECTOR_SERIAL_WORK` for a product at
    ``batch`` < 4, else :data:`SERIAL_WORK`."""
    if growth:
        limit = GROWTH_SERIAL_WORK
    elif batch is not None and batch < 4:
        limit = VECTOR_SERIAL_WORK
    else:
        limit = SERIAL_WORK
    return kernel if work >= limit and not cores_taken() else serial_twin(kernel)
