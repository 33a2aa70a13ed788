"""Large freed blocks kept in the process heap: the host allocator setting of the cpu backend (glibc).

Why. A training step allocates the same large temporaries every step and frees them again: a
convolution's transposed patch matrix P^T (VGG-small's conv1 at batch 64: 288 x 50176 float32, 58 MB),
its output, the batch-norm and pooling buffers. glibc's ``malloc`` serves a request above its *mmap
threshold* with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed. The threshold is
dynamic but never rises above 32 MiB on a 64-bit machine, so every step maps its largest arrays afresh
and the kernel zeroes and faults in each of their pages again: writing VGG-small's conv1 patch matrix
into a new array took 19.8 ms against 12.3 ms into a reused one (one thread). Measured on whole training
steps (``benchmarks/host_heap.py``, ``benchmarks/results/host-heap-2core.md``): VGG-small and ResNet-20
1.05-1.09x faster with the blocks kept, dense and sparse alike; LeNet-5, whose arrays all stay below
32 MiB, unchanged; the same peak resident memory.

What. :func:`install` sets two of glibc's ``malloc`` parameters with ``mallopt(3)`` to :data:`LIMIT`:

- ``M_MMAP_THRESHOLD``: a request below it is served from the heap, where a freed block waits for the
  next request that fits, instead of by ``mmap``;
- ``M_TRIM_THRESHOLD``: free memory at the top of the heap goes back to the system only beyond it.

Resident memory then stays near the peak in use (plus at most :data:`LIMIT` of free heap) instead of
rising and falling with every step's arrays; a request above :data:`LIMIT` is still mapped and unmapped.
The values computed do not change: only where the memory comes from.

Not installed (``install`` says why, and ``purerigl info`` shows it):

- off glibc (macOS, Windows, musl): their allocators decide;
- when ``PURERIGL_HOST_HEAP`` is ``0``;
- when the environment sets glibc's own ``malloc`` parameters (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or a ``glibc.malloc`` tunable
  in ``GLIBC_TUNABLES``): the user's setting stands.

The setting is process-wide, and glibc's dynamic threshold cannot be restored once it is set; that is
why it happens once, when the cpu backend is first imported (:data:`purerigl.kernels.cpu.HOST_HEAP`),
as the cuda backend installs its device-memory pool (:mod:`purerigl.kernels.cuda.memory_pool`).
"""

from __future__ import annotations

import ctypes
import os
import sys

#: The environment variable that turns the setting off (``0``) or on (anything else; the default).
ENV_VAR = "PURERIGL_HOST_HEAP"

#: Both thresholds, in bytes (1 GiB): requests up to this size come from the heap.
LIMIT = 1 << 30

#: ``mallopt`` parameter numbers (glibc's ``<malloc.h>``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Environment variables through which a user sets glibc's ``malloc`` parameters directly.
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def malloc_variables(environ) -> dict:
    """The variables of ``environ`` that tune glibc's ``malloc`` (:data:`GLIBC_MALLOC_VARIABLES`, and
    ``GLIBC_TUNABLES`` when it holds a ``glibc.malloc`` tunable), by name."""
    found = {name: environ[name] for name in GLIBC_MALLOC_VARIABLES if name in environ}
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        found["GLIBC_TUNABLES"] = environ["GLIBC_TUNABLES"]
    return found


def with_malloc_variables(environ, variables: dict) -> dict:
    """A copy of ``environ`` whose glibc ``malloc`` variables are exactly ``variables`` (those of
    ``environ`` removed first): how a process started from another's environment gets the ``malloc``
    setting of a third (``purerigl sweep``'s cells get the user's, not the Dask nanny's)."""
    env = {k: v for k, v in environ.items() if k not in malloc_variables(environ)}
    env.update(variables)
    return env


def user_setting(environ) -> str | None:
    """The (first) variable through which the environment already tunes glibc's ``malloc``, or None."""
    return next(iter(malloc_variables(environ)), None)


def is_glibc() -> bool:
    """Whether this process runs on glibc (``confstr(_CS_GNU_LIBC_VERSION)``, which only glibc answers)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # a C library without the name (musl)
        return False


def _glibc():
    """The C library of this process if it is glibc (it has ``mallopt``), else None."""
    if not is_glibc():
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into the process: its C library
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return libc


def install(environ=None, libc=None) -> str:
    """Set glibc's mmap and trim thresholds to :data:`LIMIT` (module docstring); returns what it did,
    in words: ``"installed: ..."`` or ``"not installed: <why>"``.

    ``environ`` defaults to ``os.environ``; ``libc`` (an object with ``mallopt(param, value) -> int``)
    to this process's glibc, found by :func:`_glibc` (the tests give a stand-in)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, "1").strip() == "0":
        return f"not installed: {ENV_VAR}=0"
    variable = user_setting(environ)
    if variable is not None:
        return f"not installed: {variable} is set (glibc's malloc is tuned by the environment)"
    libc = _glibc() if libc is None else libc
    if libc is None:
        return "not installed: the C library is not glibc (its allocator decides)"
    for name, param in (("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD)):
        if libc.mallopt(param, LIMIT) != 1:
            return f"not installed: glibc refused mallopt({name}, {LIMIT})"
    return f"installed: glibc mmap and trim thresholds {LIMIT >> 20} MiB (freed blocks below that are reused)"
