"""The cpu backend's host allocator setting (purerigl/kernels/cpu/host_heap.py).

Pins down: ``install`` sets glibc's mmap and trim thresholds to LIMIT, and nothing when
PURERIGL_HOST_HEAP=0, when the environment tunes glibc's malloc itself, or when the C library is not
glibc; a refusal by glibc is reported; and, end to end in fresh processes, importing the cpu backend
keeps a freed 64 MB block resident for the next allocation (where without the setting it is unmapped).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from purerigl.kernels import cpu
from purerigl.kernels.cpu import host_heap


class FakeLibc:
    """A stand-in for glibc: records ``mallopt`` calls and answers ``result``."""

    def __init__(self, result: int = 1):
        self.calls, self.result = [], result

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.result


def test_install_sets_both_thresholds():
    libc = FakeLibc()
    status = host_heap.install(environ={}, libc=libc)
    assert status.startswith("installed:")
    assert libc.calls == [(host_heap.M_MMAP_THRESHOLD, host_heap.LIMIT), (host_heap.M_TRIM_THRESHOLD, host_heap.LIMIT)]
    assert (host_heap.M_MMAP_THRESHOLD, host_heap.M_TRIM_THRESHOLD) == (-3, -1)  # glibc's <malloc.h>


@pytest.mark.parametrize("value", ["0", " 0 "])
def test_turned_off_by_the_environment(value):
    libc = FakeLibc()
    assert host_heap.install(environ={"PURERIGL_HOST_HEAP": value}, libc=libc) == "not installed: PURERIGL_HOST_HEAP=0"
    assert libc.calls == []


def test_any_other_value_leaves_it_on():
    libc = FakeLibc()
    assert host_heap.install(environ={"PURERIGL_HOST_HEAP": "1"}, libc=libc).startswith("installed:")


@pytest.mark.parametrize("variable", host_heap.GLIBC_MALLOC_VARIABLES)
def test_the_users_malloc_setting_stands(variable):
    libc = FakeLibc()
    status = host_heap.install(environ={variable: "33554432"}, libc=libc)
    assert status == f"not installed: {variable} is set (glibc's malloc is tuned by the environment)"
    assert libc.calls == []


def test_glibc_malloc_tunables_stand_and_other_tunables_do_not_count():
    libc = FakeLibc()
    assert "GLIBC_TUNABLES is set" in host_heap.install(
        environ={"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=1"}, libc=libc)
    assert libc.calls == []
    assert host_heap.install(environ={"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, libc=libc).startswith("installed:")


def test_malloc_variables_are_found_and_replaced():
    environ = {"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "65536", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    assert host_heap.malloc_variables(environ) == {"MALLOC_TRIM_THRESHOLD_": "65536",
                                                   "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    assert host_heap.malloc_variables({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) == {}
    assert host_heap.with_malloc_variables(environ, {}) == {"PATH": "/bin"}
    assert host_heap.with_malloc_variables(environ, {"MALLOC_TOP_PAD_": "1"}) == {"PATH": "/bin", "MALLOC_TOP_PAD_": "1"}
    assert environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # a copy: the given environment is untouched


def test_a_refusal_is_reported():
    status = host_heap.install(environ={}, libc=FakeLibc(result=0))
    assert status == f"not installed: glibc refused mallopt(M_MMAP_THRESHOLD, {host_heap.LIMIT})"


def test_not_glibc(monkeypatch):
    monkeypatch.setattr(host_heap.sys, "platform", "darwin")
    assert host_heap._glibc() is None
    assert host_heap.install(environ={}) == "not installed: the C library is not glibc (its allocator decides)"


def test_a_c_library_without_a_glibc_version_is_not_glibc(monkeypatch):
    def no_name(name):
        raise ValueError(f"unrecognized configuration name: {name}")  # what musl's Python raises

    monkeypatch.setattr(host_heap.sys, "platform", "linux")
    monkeypatch.setattr(host_heap.os, "confstr", no_name)
    assert not host_heap.is_glibc() and host_heap._glibc() is None


def test_the_backend_reports_its_setting():
    assert isinstance(cpu.HOST_HEAP, str)
    assert cpu.HOST_HEAP.startswith(("installed:", "not installed:"))


# A fresh process: import the cpu backend, then allocate, touch and free a 64 MB block (above glibc's
# largest dynamic mmap threshold, 32 MiB), printing the setting and the resident MiB before and after the free.
PROBE = """
import numpy as np
from purerigl.kernels import cpu
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
a = np.ones(16 << 20, dtype=np.float32)
before = rss()
del a
print(cpu.HOST_HEAP)
print(before, rss())
"""


def _probe(**extra):
    env = {k: v for k, v in host_heap.with_malloc_variables(os.environ, {}).items() if k != host_heap.ENV_VAR}
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    status, sizes = out.strip().splitlines()
    before, after = (float(x) for x in sizes.split())
    return status, before - after


@pytest.mark.skipif(not host_heap.is_glibc(),
                    reason="the setting is glibc's")
def test_a_freed_large_block_stays_resident_only_with_the_setting():
    status, released = _probe()
    assert status.startswith("installed:")
    assert released < 16, f"{released:.0f} MiB went back to the system"
    status, released = _probe(PURERIGL_HOST_HEAP="0")
    assert status == "not installed: PURERIGL_HOST_HEAP=0"
    assert released > 48, f"only {released:.0f} MiB went back to the system"
