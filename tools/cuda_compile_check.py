"""Compile every cuda kernel of purerigl for a real GPU, without one: the check the simulator cannot make.

Numba's CUDA simulator runs a kernel as Python, so a kernel that types badly for the real compiler
(a value whose type changes between branches, an operation nvvm does not support) passes every
simulator test and fails on the first real launch. This script closes that gap in two steps:

1. ``record`` (any machine, the project's own environment): run the cuda tests on the simulator and
   write down, for every kernel launched, its module, name and the Numba types of the arguments it
   was given (arrays as dtype, dimensions and layout; scalars as Numba would type them).
2. ``compile`` (an environment with ``numba-cuda`` and the NVVM library, e.g.
   ``pip install "numba-cuda[cu12]"``; no GPU or driver needed): compile each recorded
   (kernel, signature) to PTX for compute capability 9.0 (H100/H200) with ``cuda.compile_ptx``,
   device functions included, and list every failure.

::

    python tools/cuda_compile_check.py record --out /tmp/cuda-signatures.json
    /path/to/numba-cuda-env/bin/python tools/cuda_compile_check.py compile /tmp/cuda-signatures.json

The compile step needs no driver except in one place: numba-cuda asks the current device for its
compute capability when it compiles a device function called from a kernel; the script answers
(9, 0) for it (a patch of ``numba.cuda.dispatcher.get_current_device`` inside this process only).
Exit status: 0 when everything compiles, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# every cuda test file, the topology ops and the feature-major MLP (whose cuda paths launch kernels too:
# the latter is the only one of these that launches the feature-major bias kernels)
DEFAULT_TESTS = sorted(str(p) for p in Path("tests").glob("test_cuda_*.py")) + [
    "tests/test_topology_ops.py", "tests/test_mlp_feature_major.py"]


# --------------------------------------------------------------------------------------------------
# record (on the simulator)


def _arg_type(value) -> list:
    """A JSON description of how Numba types one kernel argument: ["array", dtype, ndim, layout] or
    ["scalar", numba type name]."""
    import numba
    import numpy as np

    array = getattr(value, "_ary", None)  # the simulator's device arrays wrap a NumPy array
    if array is None and hasattr(value, "_item"):  # FakeWithinKernelCUDAArray
        array = getattr(value._item, "_ary", None)
    if array is None and isinstance(value, np.ndarray):
        array = value
    if array is not None:
        t = numba.typeof(array)
        return ["array", str(t.dtype), int(t.ndim), t.layout]
    return ["scalar", str(numba.typeof(value))]


def record(out: Path, pytest_args: list[str]) -> int:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import pytest
    from numba.cuda.simulator import kernel as sim

    seen: dict[tuple, None] = {}
    real_call = sim.FakeCUDAKernel.__call__

    def recording_call(self, *args):
        if not self._device:
            key = (self.fn.__module__, self.fn.__qualname__, json.dumps([_arg_type(a) for a in args]))
            seen.setdefault(key, None)
        return real_call(self, *args)

    sim.FakeCUDAKernel.__call__ = recording_call
    try:
        # in this process (addopts emptied: no pytest-xdist workers, which would not see the patch below)
        status = pytest.main(["-o", "addopts=", "-q", "-p", "no:cacheprovider", *pytest_args])
    finally:
        sim.FakeCUDAKernel.__call__ = real_call
    rows = [{"module": m, "kernel": k, "args": json.loads(a)} for m, k, a in sorted(seen)]
    out.write_text(json.dumps(rows, indent=1) + "\n")
    kernels = {(r["module"], r["kernel"]) for r in rows}
    print(f"recorded {len(rows)} signatures of {len(kernels)} kernels to {out} (pytest exit {status})")
    return 0 if status == 0 else 1


# --------------------------------------------------------------------------------------------------
# compile (numba-cuda with NVVM, no GPU)


def _numba_type(desc):
    from numba import types

    if desc[0] == "array":
        _, dtype, ndim, layout = desc
        return types.Array(getattr(types, "boolean" if dtype == "bool" else dtype), ndim, layout)
    name = desc[1]
    return getattr(types, {"bool": "boolean"}.get(name, name))


def compile_all(signatures: Path, cc: tuple[int, int]) -> int:
    import types as pytypes

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    if getattr(cuda, "simulator_enabled", False) or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("compile: run without NUMBA_ENABLE_CUDASIM=1 (the real compiler is needed)", file=sys.stderr)
        return 2
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    rows = json.loads(signatures.read_text())
    failures = []
    for row in rows:
        kernel = getattr(importlib.import_module(row["module"]), row["kernel"].split(".")[-1])
        sig = tuple(_numba_type(a) for a in row["args"])
        label = f"{row['module']}.{row['kernel']}{sig}"
        try:
            cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        except Exception as err:  # noqa: BLE001 - every failure is reported, none stops the run
            first = str(err).strip().splitlines()
            failures.append(f"{label}\n    {type(err).__name__}: {first[0] if first else ''}")
    kernels = {(r["module"], r["kernel"]) for r in rows}
    print(f"compiled {len(rows) - len(failures)} of {len(rows)} signatures ({len(kernels)} kernels) "
          f"for compute capability {cc[0]}.{cc[1]}")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    rec = sub.add_parser("record", help="run the cuda tests on the simulator, write the kernel signatures")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("pytest_args", nargs="*", default=None, help="tests to run (default: the cuda tests)")
    comp = sub.add_parser("compile", help="compile the recorded signatures to PTX (numba-cuda + NVVM)")
    comp.add_argument("signatures", type=Path)
    comp.add_argument("--cc", default="9.0", help="compute capability, default 9.0 (H100/H200)")
    args = parser.parse_args(argv)
    if args.step == "record":
        return record(args.out, args.pytest_args or DEFAULT_TESTS)
    major, minor = (int(x) for x in args.cc.split("."))
    return compile_all(args.signatures, (major, minor))


if __name__ == "__main__":
    sys.exit(main())
