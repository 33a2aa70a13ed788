"""numba.cuda import, device detection and launch configuration of the cuda backend.

Everything that touches numba.cuda's module state lives here, so the kernel modules only define
kernels:

- :data:`cuda` is ``numba.cuda``, imported when this module is (that is, only once the cuda backend
  is asked for: importing :mod:`purerigl` never imports numba.cuda), with numba's deprecation warning
  about its built-in CUDA target silenced. The same code runs on numba's built-in target, on the
  NVIDIA-maintained ``numba-cuda`` package (the ``gpu`` extra) and on the CUDA simulator
  (``NUMBA_ENABLE_CUDASIM=1``, which must be set before numba is first imported).
- :func:`unavailable_reason` / :func:`require`: whether kernels can run here; :func:`require` raises
  one :class:`~purerigl.errors.BackendError` that names the fixes.
- :data:`THREADS_PER_BLOCK`, :func:`blocks`, :func:`grid_blocks` and :func:`launch`: every kernel
  walks its independent outputs in a grid-stride loop (``for q in range(cuda.grid(1), n,
  cuda.gridsize(1))``). On a GPU the grid covers the n outputs, one per thread; on the simulator it is
  at most :data:`SIMULATOR_BLOCKS` blocks, whose threads walk them all. Tests patch
  :data:`THREADS_PER_BLOCK` small (e.g. 4) so that tiny inputs span several blocks; it is read at
  every launch.
- :func:`to_device`, :func:`to_host`, :func:`empty` and :func:`is_device_array`: the few array helpers
  the drivers need. Every copy between host and device made by this backend's training path goes
  through :func:`to_device` and :func:`to_host` (and so through ``cuda.to_device``,
  ``DeviceNDArray.copy_to_device`` and ``DeviceNDArray.copy_to_host``, which tests count).
"""

from __future__ import annotations

import os
import warnings

import numba
import numpy as np

from ...errors import BackendError

#: What to do when the cuda backend cannot run; part of every "cuda unavailable" error.
FIXES = (
    "to use it, install the gpu extra (pip install 'purerigl[gpu]') on a machine with an NVIDIA GPU and "
    "driver; or set NUMBA_ENABLE_CUDASIM=1 before starting Python to run the kernels on Numba's CUDA "
    "simulator (slow, for testing); or use another backend: --backend cpu (or PURERIGL_BACKEND=cpu; "
    "'reference' also works)"
)


def _import_cuda():
    """``numba.cuda``, imported with numba's warnings about its built-in CUDA target silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the built-in target warns that it is deprecated
            from numba import cuda
    except Exception as err:  # ImportError, a broken numba-cuda install, ...
        raise BackendError(
            f"backend 'cuda' is unavailable: numba.cuda cannot be imported "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); {FIXES}"
        ) from err
    return cuda


cuda = _import_cuda()

#: True when numba.cuda is the CUDA simulator (kernels run as Python threads on the CPU).
SIMULATOR = bool(getattr(numba.config, "ENABLE_CUDASIM", 0))


def _numba_cuda_configs() -> list:
    """The configuration modules numba.cuda may read, first the one its dispatcher reads:
    ``numba.cuda.core.config`` (numba-cuda; in some releases the same module as the next) and
    ``numba.core.config`` (Numba's built-in CUDA target), those that import, each once."""
    import importlib

    found = []
    for name in ("numba.cuda.core.config", "numba.core.config"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if module not in found:
            found.append(module)
    return found


def _silence_low_occupancy_warnings() -> None:
    """Turn off Numba's "Grid size N will likely result in GPU under-utilization" warning, which it
    raises at every launch of fewer than 128 blocks: small layers are a normal input here, and on a GPU
    a training run printed thousands of them. Set in the configuration that the dispatcher reads
    rather than filtered per launch, so that no launch path (the loss's reduction, Numba's own array
    kernels) escapes it and no launch pays for a ``warnings.catch_warnings`` block."""
    for config in _numba_cuda_configs():
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


_silence_low_occupancy_warnings()


def _install_memory_pool() -> str:
    """:func:`purerigl.kernels.cuda.memory_pool.install`, whose failure never stops the backend's
    import (numba's own allocator then serves every array)."""
    from . import memory_pool

    try:
        return memory_pool.install(cuda, SIMULATOR, _numba_cuda_configs()[0])
    except Exception as err:  # noqa: BLE001 - a numba without the EMM interface, ...
        return f"not installed: {type(err).__name__}: {' '.join(str(err).split())[:200]}"


#: What became of the caching device-memory pool (:mod:`purerigl.kernels.cuda.memory_pool`), in words:
#: "installed", or why not.
MEMORY_POOL = _install_memory_pool()

#: Threads per block of every launch: a multiple of the warp size (32) on a GPU. The simulator starts
#: one Python thread per thread of a block, idle or not, so there small blocks are faster for the small
#: launches it is used for (8 against 32: tests/test_cuda_train.py 58-63 s -> 50-51 s on a quiet 2-core
#: machine; 4 is no faster, 1 slower) and let tiny inputs span several blocks. Some tests patch it to 4.
THREADS_PER_BLOCK = 8 if SIMULATOR else 128

#: Most blocks of a :func:`launch` on the simulator. A simulated thread costs a Python thread start,
#: idle or not, so covering n outputs with n threads made the simulator's time grow with the outputs
#: (an elementwise kernel over 512 entries: 64 blocks, about 0.9 s a launch beside two busy processes);
#: two blocks that walk the outputs in the kernels' grid-stride loops take about 0.04 s there, and
#: still exercise both the stride and more than one block.
SIMULATOR_BLOCKS = 2


def unavailable_reason() -> str | None:
    """Why numba.cuda cannot run kernels here, or None when it can (a GPU, or the simulator)."""
    if SIMULATOR:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cuda.is_available():
                return None
    except Exception as err:  # noqa: BLE001 - a broken driver: report it
        return f"numba.cuda failed to start ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
    reason = "numba.cuda finds no usable NVIDIA GPU and driver, and the CUDA simulator is off"
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0"):
        reason += " (NUMBA_ENABLE_CUDASIM is set, but numba was imported before it was set)"
    return reason


def require() -> None:
    """Raise :class:`~purerigl.errors.BackendError` naming the fixes unless kernels can run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise BackendError(f"backend 'cuda' is unavailable: {reason}; {FIXES}")


def blocks(n: int) -> int:
    """Blocks of :data:`THREADS_PER_BLOCK` threads that cover ``n`` threads (at least 1)."""
    return max(1, -(-int(n) // THREADS_PER_BLOCK))


def grid_blocks(n: int) -> int:
    """Blocks of a :func:`launch` over ``n`` work items: :func:`blocks` (n) on a GPU, one item per
    thread; on the simulator at most :data:`SIMULATOR_BLOCKS`, whose threads walk the items."""
    b = blocks(n)
    return min(b, SIMULATOR_BLOCKS) if SIMULATOR else b


def launch(kernel, n: int, *args) -> None:
    """Run the grid-stride ``kernel(*args)`` over ``n`` work items on :func:`grid_blocks` (n) blocks
    of :data:`THREADS_PER_BLOCK` threads; nothing when ``n`` is 0.

    Every kernel of this backend walks its items as ``for i in range(cuda.grid(1), n,
    cuda.gridsize(1)): ...`` (or, for the few serial ones, runs on thread 0 only), so it is correct on
    any grid: on a GPU each thread takes at most one item and those of the last block beyond ``n``
    none. Numba's warning that a small grid under-uses the GPU is off
    (:func:`_silence_low_occupancy_warnings`): small layers are a normal input.
    """
    if n <= 0:
        return
    kernel[grid_blocks(n), THREADS_PER_BLOCK](*args)


def is_device_array(a) -> bool:
    """True for a numba device array (real or simulated); host NumPy arrays are not."""
    return not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host") and hasattr(a, "shape")


def to_device(a: np.ndarray, out=None):
    """A device copy of the host array ``a`` (made C-contiguous first), or ``a`` copied into the
    device array ``out`` (same shape and dtype)."""
    if out is None:
        return cuda.to_device(np.ascontiguousarray(a))
    out.copy_to_device(np.ascontiguousarray(a))
    return out


def to_host(d, out: np.ndarray | None = None) -> np.ndarray:
    """A host copy of the device array ``d``, or ``d`` copied into the host array ``out``."""
    if out is None:
        return d.copy_to_host()
    d.copy_to_host(out)
    return out


def empty(shape, dtype=np.float32):
    """An uninitialised device array (every kernel here writes all of its output)."""
    return cuda.device_array(shape, dtype=dtype)


def synchronize() -> None:
    """Wait for every launched kernel and copy to finish (call before reading a clock)."""
    cuda.synchronize()
