"""The cuda backend's caching device-memory pool (purerigl/kernels/cuda/memory_pool.py).

The CUDA simulator has no allocator to plug into, so the plugin runs here on stand-ins of numba's EMM
base classes, ``MemoryPointer`` (whose finalizer runs when the pointer is garbage-collected, as
numba's does) and the driver calls. On a GPU the same plugin serves every array of the cuda tests
(``PURERIGL_TEST_REAL_GPU=1``; benchmarks/gpu_session.sh).
"""

from __future__ import annotations

import gc
import weakref
from collections import namedtuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purerigl.kernels.cuda import memory_pool


class FakeAPIError(Exception):
    pass


class FakeDriver:
    """cuMemAlloc / cuMemFree / cuMemGetInfo over a counter of addresses; ``fail_next`` allocations
    raise :class:`FakeAPIError` (out of memory)."""

    def __init__(self):
        self.next_address, self.live, self.allocs, self.frees, self.fail_next = 4096, {}, 0, [], 0

    def cuMemAlloc(self, nbytes):
        if self.fail_next:
            self.fail_next -= 1
            raise FakeAPIError("CUDA_ERROR_OUT_OF_MEMORY")
        pointer = type("Ptr", (), {"address": self.next_address})()
        self.live[id(pointer)] = nbytes
        self.next_address += nbytes
        self.allocs += 1
        return pointer

    def cuMemFree(self, pointer):
        assert id(pointer) in self.live, "freed twice or never allocated"
        del self.live[id(pointer)]
        self.frees.append(pointer)

    def cuMemGetInfo(self):
        return 1 << 30, 1 << 31


class FakeCuda:
    """The parts of numba.cuda the plugin is built from."""

    class GetIpcHandleMixin:
        pass

    class HostOnlyCUDAMemoryManager:
        def __init__(self, *args, context=None, **kwargs):
            self.context = context
            self.resets = 0

        def reset(self):
            self.resets += 1

    class MemoryPointer:
        def __init__(self, context, pointer, size, owner=None, finalizer=None):
            self.context, self.device_pointer, self.size = context, pointer, size
            if finalizer is not None:
                self._finalizer = weakref.finalize(self, finalizer)

    MemoryInfo = namedtuple("MemoryInfo", "free total")


@pytest.fixture
def pool():
    driver = FakeDriver()
    manager = memory_pool.plugin_class(FakeCuda, driver=driver, api_error=FakeAPIError)(context=None)
    manager.initialize()
    return manager, driver


@given(st.integers(0, 1 << 34))
def test_block_size_is_the_smallest_power_of_two_that_holds_the_request(size):
    b = block_size = memory_pool.block_size(size)
    assert b & (b - 1) == 0 and b >= max(size, memory_pool.MIN_BLOCK)
    assert block_size == memory_pool.MIN_BLOCK or block_size // 2 < size


def test_a_freed_block_serves_the_next_request_of_its_bin(pool):
    manager, driver = pool
    a = manager.memalloc(3000)
    address = a.device_pointer.address
    assert a.size == 3000 and driver.allocs == 1 and manager.held_bytes() == 4096
    del a
    gc.collect()
    assert manager.cached_bytes() == 4096
    b = manager.memalloc(2049)  # same bin (4096 bytes): the same block, no new allocation
    assert b.device_pointer.address == address and driver.allocs == 1 and manager.cached_bytes() == 0
    c = manager.memalloc(5000)  # another bin: a new block
    assert c.device_pointer.address != address and driver.allocs == 2


def test_blocks_in_use_are_never_handed_out_twice(pool):
    manager, driver = pool
    live = [manager.memalloc(100) for _ in range(20)]
    del live[::2]  # ten go back to the bin
    gc.collect()
    live += [manager.memalloc(200) for _ in range(15)]  # ten reused, five new
    addresses = [p.device_pointer.address for p in live]
    assert len(set(addresses)) == len(addresses) == 25
    assert driver.allocs == 25 and manager.cached_bytes() == 0


def test_out_of_memory_frees_the_cached_blocks_and_retries_once(pool):
    manager, driver = pool
    kept = manager.memalloc(1000)
    dropped = [manager.memalloc(10_000) for _ in range(3)]
    del dropped
    gc.collect()
    assert manager.cached_bytes() == 3 * 16384
    driver.fail_next = 1
    fresh = manager.memalloc(1 << 20)  # a bin with no free block: the device is "full" once
    assert fresh.size == 1 << 20 and len(driver.frees) == 3 and manager.cached_bytes() == 0
    assert kept.device_pointer in [p for p, _ in manager._held]  # in use: not freed
    del kept
    gc.collect()
    assert manager.cached_bytes() == 1024  # its finalizer still finds its bin after the release
    driver.fail_next = 2
    with pytest.raises(FakeAPIError):  # still out of memory after the release: the error goes up
        manager.memalloc(1 << 21)


def test_reset_frees_every_block_and_calls_numbas_reset(pool):
    manager, driver = pool
    a, b = manager.memalloc(10), manager.memalloc(1 << 16)
    del a
    gc.collect()
    manager.reset()
    assert not driver.live and len(driver.frees) == 2 and manager.resets == 1
    assert manager.held_bytes() == 0 and manager.cached_bytes() == 0
    assert manager.get_memory_info().total == 1 << 31 and manager.interface_version == 1
    assert b.size == 1 << 16


def test_install_is_skipped_on_the_simulator_and_when_turned_off(monkeypatch):
    calls = []
    fake = type("FakeCudaModule", (), {"set_memory_manager": staticmethod(calls.append)})
    config = type("Config", (), {"CUDA_MEMORY_MANAGER": "default"})
    assert "simulator" in memory_pool.install(fake, True, config)
    monkeypatch.setenv(memory_pool.ENV_VAR, "0")
    assert f"{memory_pool.ENV_VAR}=0" in memory_pool.install(fake, False, config)
    monkeypatch.setenv(memory_pool.ENV_VAR, "1")
    monkeypatch.setattr(memory_pool, "plugin_class", lambda cuda: "the plugin class")
    assert memory_pool.install(fake, False, config) == "installed" and calls == ["the plugin class"]
    assert not calls[1:]
    config.CUDA_MEMORY_MANAGER = "rmm.allocators.numba"  # a plugin the user configured stays
    assert "rmm.allocators.numba" in memory_pool.install(fake, False, config) and calls == ["the plugin class"]


def test_the_backend_reports_the_pool():
    from purerigl.kernels.cuda import _launch

    assert _launch.MEMORY_POOL == "installed" or _launch.MEMORY_POOL.startswith("not installed: ")
    if _launch.SIMULATOR:
        assert "simulator" in _launch.MEMORY_POOL
