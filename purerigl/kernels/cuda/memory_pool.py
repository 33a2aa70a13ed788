"""A caching device-memory pool for numba.cuda (an External Memory Management plugin).

Numba has no memory pool: every ``cuda.device_array`` calls ``cuMemAlloc``, and every array that goes
out of scope is queued for ``cuMemFree``, the queue being flushed every ten frees. ``cuMemFree``
waits for the whole device, so a training step of this backend, which makes tens of temporary arrays
(42 per MLP step when this pool was written, counted on the simulator; the step timed on an H200 in
``benchmarks/results/gpu-h200-2026-12-04``), called ``cuMemAlloc`` as often and stopped the host every
ten frees to wait for the GPU.

:func:`plugin_class`'s ``PooledMemoryManager`` keeps freed blocks instead and hands them out again:

- a request of ``size`` bytes is served from the bin of the smallest power of two >= ``size`` (at
  least 512 bytes); an empty bin calls ``cuMemAlloc`` for one block of the bin's size;
- a block whose array is garbage-collected goes back to its bin at once. That is safe because every
  kernel and copy of this backend is queued on the one default stream: work that uses the block
  again is queued after the work that used it before, and the device runs it in that order (the
  rule of PyTorch's caching allocator for one stream);
- when ``cuMemAlloc`` reports out-of-memory, every cached block is freed and the allocation is
  tried once more; its ``reset`` (a context reset) frees them all.

Memory held is at most twice the peak in use, plus the cached blocks of sizes no longer requested.

The pool is installed by :func:`install` when the cuda backend is first imported, on a real GPU only
(the simulator has no device memory), unless the environment variable ``PURERIGL_CUDA_MEMORY_POOL``
is ``0`` or numba is configured for another plugin (``NUMBA_CUDA_MEMORY_MANAGER``, e.g. RMM's). Numba
binds a memory manager to a context when it creates the context: if numba.cuda made a context before
the backend's first import, that context keeps numba's own manager.
"""

from __future__ import annotations

import functools
import os
import weakref

#: Smallest block handed out (bytes): small arrays share one bin.
MIN_BLOCK = 512

#: The environment variable that turns the pool off (``0``) or on (anything else; the default).
ENV_VAR = "PURERIGL_CUDA_MEMORY_POOL"


def block_size(size: int) -> int:
    """The bin of a request: the smallest power of two >= ``size``, at least :data:`MIN_BLOCK`.

    >>> block_size(1), block_size(512), block_size(513), block_size(3000)
    (512, 512, 1024, 4096)
    """
    return max(MIN_BLOCK, 1 << max(0, int(size) - 1).bit_length())


def plugin_class(cuda, driver=None, api_error=None):
    """The plugin class ``PooledMemoryManager``, built on the numba.cuda given (the EMM base classes,
    ``MemoryPointer`` and ``MemoryInfo`` live there). ``driver`` (with ``cuMemAlloc``, ``cuMemFree``,
    ``cuMemGetInfo``) and ``api_error`` (the exception a failed call raises) default to numba's; the
    tests give stand-ins, since the CUDA simulator has no allocator to plug into."""
    if driver is None or api_error is None:
        from numba.cuda.cudadrv import driver as cudadrv

        driver = cudadrv.driver if driver is None else driver
        api_error = cudadrv.CudaAPIError if api_error is None else api_error

    class PooledMemoryManager(cuda.GetIpcHandleMixin, cuda.HostOnlyCUDAMemoryManager):
        """numba.cuda EMM plugin: device allocations served from per-size bins of freed blocks."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._bins: dict[int, list] = {}  # block size -> free raw device pointers
            self._held: list = []  # every block allocated and not yet freed: (pointer, block size)

        @property
        def interface_version(self):
            return 1

        def initialize(self):
            # as numba's own manager: the queue of pinned host memory to free learns the device's size
            deallocations = getattr(self, "deallocations", None)
            if deallocations is not None and not deallocations.memory_capacity:
                deallocations.memory_capacity = self.get_memory_info().total

        def _allocate(self, nbytes: int):
            try:
                return driver.cuMemAlloc(nbytes)
            except api_error:
                self.release_cached()  # out of memory (or another error): retry once without the cache
                return driver.cuMemAlloc(nbytes)

        def memalloc(self, size):
            nbytes = block_size(size)
            free = self._bins.setdefault(nbytes, [])
            if free:
                pointer = free.pop()
            else:
                pointer = self._allocate(nbytes)
                self._held.append((pointer, nbytes))
            ctx = weakref.proxy(self.context) if self.context is not None else None
            return cuda.MemoryPointer(ctx, pointer, size, finalizer=functools.partial(free.append, pointer))

        def cached_bytes(self) -> int:
            """Bytes held in the bins, free for reuse."""
            return sum(size * len(blocks) for size, blocks in self._bins.items())

        def held_bytes(self) -> int:
            """Bytes allocated from the device and not freed: in use or cached."""
            return sum(size for _, size in self._held)

        def release_cached(self) -> None:
            """``cuMemFree`` every block that sits free in a bin (blocks in use stay)."""
            cached = {id(p) for blocks in self._bins.values() for p in blocks}  # the very pointer objects
            if not cached:
                return
            for pointer, _ in self._held:  # cuMemFree waits for the device: no queued work still uses them
                if id(pointer) in cached:
                    driver.cuMemFree(pointer)
            self._held = [(p, n) for p, n in self._held if id(p) not in cached]
            for blocks in self._bins.values():
                blocks.clear()  # the same list objects: the finalizers of blocks in use still find them

        def get_memory_info(self):
            free, total = driver.cuMemGetInfo()
            return cuda.MemoryInfo(free=free, total=total)

        def reset(self):
            super().reset()
            for pointer, _ in self._held:
                driver.cuMemFree(pointer)
            self._held = []
            self._bins = {}

    return PooledMemoryManager


def install(cuda, simulator: bool, config) -> str:
    """Make ``PooledMemoryManager`` numba.cuda's memory manager for the contexts created from now
    on; returns what it did, in words (``"installed"`` or why not). ``config`` is the configuration
    module numba.cuda reads (its ``CUDA_MEMORY_MANAGER`` names a plugin configured by the user)."""
    if simulator:
        return "not installed: the CUDA simulator has no device memory"
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return f"not installed: {ENV_VAR}=0"
    if getattr(config, "CUDA_MEMORY_MANAGER", "default") != "default":
        return f"not installed: numba is configured for the plugin {config.CUDA_MEMORY_MANAGER!r}"
    cuda.set_memory_manager(plugin_class(cuda))
    return "installed"
