"""Shared test configuration: hypothesis profiles and the backend fixture.

Profiles (pick with the environment variable ``HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: few examples per property, no deadline (the numba backend compiles on first use), random
  seeds, and a reproduction blob printed on failure.
- ``dev``: many more examples, for a thorough local run.

CUDA: the environment variable ``NUMBA_ENABLE_CUDASIM`` defaults to ``1`` here, set at the very top of
this file, before anything imports numba (Numba reads it once, at import): the cuda backend's tests
then run on Numba's CUDA simulator on any machine, GPU or not. To test on a real GPU instead, run with
``PURERIGL_TEST_REAL_GPU=1`` (the variable is then left as the environment has it). An explicit
``NUMBA_ENABLE_CUDASIM=0`` also turns the simulator off. The simulator is slow, so "cuda" is not in
:data:`BACKEND_NAMES` (the big hypothesis tests); ``tests/test_cuda_ops.py`` tests it on tiny shapes.
"""

from __future__ import annotations

import os

if os.environ.get("PURERIGL_TEST_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before numba is imported anywhere

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=False, print_blob=True)
settings.register_profile("dev", max_examples=300, deadline=None, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Every backend the operation tests run against. A backend listed here but missing an op fails the
#: tests that use it (and tests/test_registry.py's completeness test) instead of being skipped.
BACKEND_NAMES = ["reference", "cpu"]


@pytest.fixture(scope="session", params=BACKEND_NAMES)
def backend(request):
    """The purerigl backend under test, one per name in BACKEND_NAMES (session-scoped: hypothesis-safe)."""
    from purerigl.kernels import get_backend

    return get_backend(request.param)
