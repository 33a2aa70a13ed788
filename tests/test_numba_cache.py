"""Numba's disk cache of the cpu kernels sees every change to the code compiled into them.

The growth kernels compile in the tie rule's rank key from purerigl/kernels/_rank_key.py; Numba's own
cache would watch only the kernel's file (purerigl/kernels/cpu/growth.py). Pins down: every cached cpu
kernel uses the locator stamped with all kernel sources; the stamp changes with any kernel source;
and, end to end in fresh processes sharing one cache directory, an edit to the rank key is used by the
cpu kernels at once (it would not be with Numba's own stamp: the stale machine code would be loaded).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

from numba.core.dispatcher import Dispatcher

import purerigl
from purerigl.kernels import cpu
from purerigl.kernels.cpu import _cache


def _cached_dispatchers():
    for info in pkgutil.iter_modules(cpu.__path__):
        module = importlib.import_module(f"{cpu.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and value._cache is not None and value.__module__ == module.__name__:
                yield value


def test_every_cached_cpu_kernel_is_stamped_with_all_kernel_sources():
    dispatchers = list(_cached_dispatchers())
    assert len(dispatchers) > 20  # the growth, product and layout kernels
    for d in dispatchers:
        locator = d._cache._impl.locator
        assert isinstance(locator, _cache.KernelSourcesLocator), d.py_func.__qualname__
        assert locator.get_source_stamp()[1] == _cache.kernel_sources_digest()


def test_the_stamp_changes_with_any_kernel_source(tmp_path):
    root = tmp_path / "kernels"
    shutil.copytree(_cache.KERNELS_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = _cache.kernel_sources_digest(root)
    assert _cache.kernel_sources_digest(root) == before  # deterministic
    (root / "_rank_key.py").write_text((root / "_rank_key.py").read_text() + "\n# an edit\n")
    assert _cache.kernel_sources_digest(root) != before


_PROBE = """
import numpy as np
from purerigl.kernels import cpu, reference
X = np.ones((2, 16), np.float32); dY = np.zeros((2, 3), np.float32)  # an all-zero gradient: ties only
none_indptr, none = np.zeros(4, np.int64), np.zeros(0, np.int32)
c = cpu.topk_grad_rows(X, dY, np.full(3, 4), none_indptr, none, 12345)[1].tolist()
r = reference.topk_grad_rows(X, dY, np.full(3, 4), none_indptr, none, 12345)[1].tolist()
print(c == r, c)
"""


def test_an_edit_to_the_rank_key_reaches_a_warm_cpu_cache(tmp_path):
    package = tmp_path / "src" / "purerigl"
    shutil.copytree(Path(purerigl.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__", "cli"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "NUMBA_NUM_THREADS": "1"}
    env.pop("NUMBA_DISABLE_JIT", None)

    def probe() -> str:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    first = probe()  # compiles and fills the cache
    assert first.startswith("True")
    rank_key = package / "kernels" / "_rank_key.py"
    text = rank_key.read_text()
    mix, inverse = 0x2545F491, pow(0x2545F491, -1, 1 << 32)  # another odd multiplier: another tie order
    assert "_MIX = 0x45D9F3B" in text and "_MIX_INVERSE = 0x119DE1F3" in text
    rank_key.write_text(text.replace("_MIX = 0x45D9F3B", f"_MIX = {mix:#x}")
                        .replace("_MIX_INVERSE = 0x119DE1F3", f"_MIX_INVERSE = {inverse:#x}"))
    second = probe()  # a warm cache; the cpu kernels must use the edited rule like the reference
    assert second.startswith("True"), second
    assert second != first  # the edit changed the chosen columns
