"""Numba's on-disk cache for the cpu kernels, stamped with the source of every kernel module.

Numba caches a compiled function beside the file that defines it and reuses the cached machine code
while that one file is unchanged. Code compiled *into* a kernel from another file is not watched: the
tie rule's rank key (:mod:`purerigl.kernels._rank_key`) is compiled into the growth kernels, so an
edit to it would leave a process with a warm cache running the old rule on cpu while reference and
cuda run the new one.

:func:`install` closes that hole. It puts a cache locator in front of Numba's own for the files of
this package: the locator keeps Numba's choice of cache directory (``NUMBA_CACHE_DIR``, beside the
file, or the user-wide fallback) and only changes the **source stamp** that Numba stores with every
cached function and compares on load: instead of the defining file alone, the stamp is the SHA-256
of the source of every module in :mod:`purerigl.kernels` (:func:`kernel_sources_digest`). Any edit
to any kernel module, or to the rank key, makes every cached cpu kernel stale, so it is recompiled.

The locator is registered through Numba's cache-implementation class (``CacheImpl._locator_classes``,
``_CacheImpl`` before Numba 0.61). Where neither exists, :func:`install` returns False and the cpu
kernels are compiled without a disk cache (correct, slower to start): :data:`CACHE` is what their
``cache=`` argument receives.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from numba.core import caching

#: The folder whose Python sources stamp the cache: purerigl/kernels.
KERNELS_DIR = Path(__file__).resolve().parent.parent


def kernel_sources_digest(root: Path = KERNELS_DIR) -> str:
    """SHA-256 (hex) of every ``*.py`` file under ``root``, by relative path and content, in path order."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _cache_impl_class():
    """Numba's cache implementation class holding the locator list, or None if this Numba has none."""
    for name in ("CacheImpl", "_CacheImpl"):
        impl = getattr(caching, name, None)
        if impl is not None and isinstance(getattr(impl, "_locator_classes", None), list):
            return impl
    return None


class KernelSourcesLocator(caching._CacheLocator):
    """Numba's own locator for a purerigl kernel file, with the stamp of all kernel sources added."""

    def __init__(self, inner, digest: str):
        self._inner = inner
        self._digest = digest

    def ensure_cache_path(self):
        return self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return (self._inner.get_source_stamp(), self._digest)

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        """This locator for functions defined under purerigl/kernels; None (Numba's own) elsewhere."""
        try:
            inside = Path(py_file).resolve().is_relative_to(KERNELS_DIR)
        except (OSError, ValueError):
            return None
        if not inside or not os.path.exists(py_file):
            return None
        impl = _cache_impl_class()
        for locator_class in impl._locator_classes:
            if locator_class is cls:
                continue
            inner = locator_class.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner, _digest())
        return None


_DIGEST: str | None = None


def _digest() -> str:
    global _DIGEST
    if _DIGEST is None:  # once per process: the sources a process compiles are the ones it imported
        _DIGEST = kernel_sources_digest()
    return _DIGEST


def install() -> bool:
    """Put :class:`KernelSourcesLocator` first in Numba's locator list (once); False if impossible."""
    impl = _cache_impl_class()
    if impl is None:
        return False
    if KernelSourcesLocator not in impl._locator_classes:
        impl._locator_classes.insert(0, KernelSourcesLocator)
    return True


#: The ``cache=`` argument of every cpu kernel: True once the stamped locator is installed.
CACHE = install()
