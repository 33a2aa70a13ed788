"""The devices of ``purerigl bench gpu``: timing on a GPU, the PyTorch and CuPy baselines, the GPU's
description.

- :func:`time_device`: warm-up excluded, samples of back-to-back calls sized to about
  :data:`SAMPLE_S` seconds, each timed by the library's CUDA events and by ``perf_counter`` after
  synchronising; the median per call.
- :class:`PureriglClock`: numba.cuda's events and ``synchronize`` (the perf_counter time on the
  CUDA simulator, whose events record nothing).
- :class:`TorchLibrary`, :class:`CupyLibrary`: the dense fp32 GEMM (TF32 off for torch) and the
  vendor CSR SpMM of one matrix, on the device, with their own events; :func:`load_libraries` picks
  them for ``--libraries``.
- :func:`gpu_meta`: name, compute capability, memory, driver and runtime as numba.cuda reports them.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import click
import numpy as np

#: The baseline libraries ``--libraries auto`` tries, in this order.
LIBRARIES = ("torch", "cupy")
#: Seconds per sample of back-to-back calls, and the most calls in one sample.
SAMPLE_S, MAX_PER_SAMPLE = 2e-3, 100

# ----------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Product:
    """One product on the device: ``run()`` launches it and returns its device result; ``fetch(result)``
    copies a result to the host as a float32 (B, n_out) array."""

    run: Callable[[], object]
    fetch: Callable[[object], np.ndarray]


def time_device(fn, clock, *, budget_s: float, max_call_s: float, min_runs: int = 5, max_runs: int = 10000) -> dict:
    """Median time of one call of ``fn`` on the device (see the module docstring).

    Parameters
    ----------
    fn : callable
        Launches the work; returns without waiting for it.
    clock : a library adapter
        ``synchronize()``, ``event()`` (objects with ``record()`` and ``synchronize()``),
        ``elapsed_ms(start, end)`` and ``timed`` (False where events carry no time: the simulator).
    budget_s, max_call_s : float
        Seconds of timed samples; a call slower than ``max_call_s`` is timed once.
    min_runs, max_runs : int
        Fewest and most samples.

    Returns
    -------
    dict
        ``ms`` (the reported median per call), ``event_ms`` (None without timed events), ``wall_ms``,
        ``min_ms``, ``samples`` and ``calls_per_sample``.
    """
    fn()
    fn()
    clock.synchronize()
    t0 = time.perf_counter()
    fn()
    clock.synchronize()
    first = time.perf_counter() - t0
    if first > max_call_s:
        return {"ms": first * 1e3, "event_ms": None, "wall_ms": first * 1e3, "min_ms": first * 1e3,
                "samples": 1, "calls_per_sample": 1}
    k = max(1, min(MAX_PER_SAMPLE, int(SAMPLE_S / max(first, 1e-7))))
    start, end = clock.event(), clock.event()
    walls, events, spent, event_error = [], [], 0.0, None
    while len(walls) < min_runs or (spent < budget_s and len(walls) < max_runs):
        t0 = time.perf_counter()
        start.record()
        for _ in range(k):
            fn()
        end.record()
        end.synchronize()
        dt = time.perf_counter() - t0
        walls.append(dt / k)
        spent += dt
        if clock.timed and event_error is None:
            try:
                events.append(clock.elapsed_ms(start, end) / k)
            except Exception as err:  # noqa: BLE001 - an event API that fails: fall back to the wall clock
                event_error, events = f"{type(err).__name__}: {_one_line(err)}", []
    wall_ms = statistics.median(walls) * 1e3
    event_ms = statistics.median(events) if events else None
    per_call = events if events else [w * 1e3 for w in walls]
    out = {"ms": event_ms if event_ms is not None else wall_ms, "event_ms": event_ms, "wall_ms": wall_ms,
           "min_ms": min(per_call), "samples": len(walls), "calls_per_sample": k}
    if event_error:
        out["event_error"] = event_error
    return out


# -------------------------------------------------------------------------------------------- libraries


class PureriglClock:
    """The cuda backend's clock: numba.cuda synchronisation and events (no timing on the simulator)."""

    name = "purerigl"

    def __init__(self, backend):
        self.backend = backend
        self.cuda = backend.module._launch.cuda
        self.timed = not backend.module.on_simulator()

    def synchronize(self) -> None:
        self.backend.synchronize()

    def event(self):
        return self.cuda.event()

    def elapsed_ms(self, start, end) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the simulator warns that its timings are bogus
            return float(start.elapsed_time(end))

    def product(self, Wd, Xd, Yd) -> Product:
        """``matmul(Wd, Xd, out=Yd)`` on device arrays, looked up at each call (so tests can patch it)."""
        backend = self.backend
        return Product(lambda: backend.matmul(Wd, Xd, out=Yd), backend.to_host)


class TorchLibrary:
    """PyTorch on the GPU: ``torch.mm`` (cuBLAS, TF32 off) and a ``sparse_csr_tensor`` times a dense matrix
    (cuSPARSE SpMM)."""

    name = "torch"
    timed = True

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.torch = torch
        self.device = torch.device("cuda")

    def describe(self) -> dict:
        t = self.torch
        return {"version": t.__version__, "cuda": t.version.cuda, "device": t.cuda.get_device_name(),
                "allow_tf32": bool(t.backends.cuda.matmul.allow_tf32)}

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def elapsed_ms(self, start, end) -> float:
        return float(start.elapsed_time(end))

    def upload(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def dense_weight(self, W_dense: np.ndarray):
        return self.upload(W_dense.T)  # (n_in, n_out), contiguous

    def sparse_weight(self, S):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR tensor support is in beta state"
            return self.torch.sparse_csr_tensor(self.upload(S.indptr.astype(np.int32)),
                                                self.upload(S.indices.astype(np.int32)),
                                                self.upload(S.data.astype(np.float32)), size=S.shape)

    def dense_product(self, WT, Xd) -> Product:
        mm = self.torch.mm
        return Product(lambda: mm(Xd, WT), lambda Y: Y.cpu().numpy())

    def csr_product(self, Sd, Xd) -> Product:
        mm, XT = self.torch.mm, Xd.t().contiguous()  # (n_in, B): Y^T = S X^T
        return Product(lambda: mm(Sd, XT), lambda YT: YT.cpu().numpy().T)

    def dense_grad(self, Xd, dYd):
        """One dense G = dY^T X (n_out, n_in), as a callable."""
        mm = self.torch.mm
        return lambda: mm(dYd.t(), Xd)

    def dense_topk(self, Xd, dYd, actived, m: int):
        """(callable, fetch): the dense route of RigL's growth, the flat indices of the top-m |G| outside
        the active set (``actived``, bool (n_out, n_in)); fetch returns them as a host int64 array."""
        torch = self.torch

        def run():
            G = torch.mm(dYd.t(), Xd).abs_().masked_fill_(actived, -1.0)  # (n_out, n_in)
            return torch.topk(G.view(-1), m, sorted=False).indices

        return run, lambda idx: idx.cpu().numpy().astype(np.int64)


class CupyLibrary:
    """CuPy on the GPU: ``cupy.matmul`` (cuBLAS) and ``cupyx.scipy.sparse.csr_matrix`` times a dense
    matrix (cuSPARSE SpMM)."""

    name = "cupy"
    timed = True

    def __init__(self):
        import cupy
        import cupyx.scipy.sparse

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        self.cupy, self.sparse = cupy, cupyx.scipy.sparse

    def describe(self) -> dict:
        rt = self.cupy.cuda.runtime
        return {"version": self.cupy.__version__, "runtime": rt.runtimeGetVersion(),
                "driver": rt.driverGetVersion(), "CUPY_TF32": os.environ.get("CUPY_TF32", "0")}

    def synchronize(self) -> None:
        self.cupy.cuda.Device().synchronize()

    def event(self):
        return self.cupy.cuda.Event()

    def elapsed_ms(self, start, end) -> float:
        return float(self.cupy.cuda.get_elapsed_time(start, end))

    def upload(self, a: np.ndarray):
        return self.cupy.asarray(np.ascontiguousarray(a))

    def dense_weight(self, W_dense: np.ndarray):
        return self.upload(W_dense.T)

    def sparse_weight(self, S):
        Sd = self.sparse.csr_matrix((self.upload(S.data.astype(np.float32)), self.upload(S.indices.astype(np.int32)),
                                     self.upload(S.indptr.astype(np.int32))), shape=S.shape)
        Sd.sum_duplicates()  # marks the (already canonical) matrix so the product does not redo it
        return Sd

    def dense_product(self, WT, Xd) -> Product:
        matmul = self.cupy.matmul
        return Product(lambda: matmul(Xd, WT), self.cupy.asnumpy)

    def csr_product(self, Sd, Xd) -> Product:
        XT = Xd.T  # F-contiguous (n_in, B): what cuSPARSE's SpMM reads without a copy
        return Product(lambda: Sd @ XT, lambda YT: self.cupy.asnumpy(YT).T)

    def dense_grad(self, Xd, dYd):
        """One dense G = dY^T X (n_out, n_in), as a callable."""
        matmul = self.cupy.matmul
        return lambda: matmul(dYd.T, Xd)

    def dense_topk(self, Xd, dYd, actived, m: int):
        """(callable, fetch): as :meth:`TorchLibrary.dense_topk`, with ``cupy.argpartition``."""
        cupy = self.cupy

        def run():
            G = cupy.abs(cupy.matmul(dYd.T, Xd))  # (n_out, n_in)
            G[actived] = -1.0
            flat = G.ravel()
            return cupy.argpartition(-flat, m - 1)[:m] if m < flat.size else cupy.arange(flat.size)

        return run, lambda idx: cupy.asnumpy(idx).astype(np.int64)


LOADERS = {"torch": TorchLibrary, "cupy": CupyLibrary}


def load_libraries(choice: str) -> tuple[list, list[str]]:
    """(adapters, notes) of the baseline libraries ``--libraries`` asks for.

    ``auto`` loads every library that imports and sees a GPU (the others become notes); naming one
    library that cannot be used is bad input (exit 2); ``none`` loads nothing.
    """
    names = {"auto": LIBRARIES, "none": ()}.get(choice, (choice,))
    libs, notes = [], []
    for name in names:
        try:
            libs.append(LOADERS[name]())
        except Exception as err:  # noqa: BLE001 - ImportError, no device, a broken install: all mean "not here"
            reason = f"{name} is not usable here ({type(err).__name__}: {_one_line(err, 200)})"
            if choice != "auto":
                raise click.BadParameter(reason, param_hint="'--libraries'") from None
            notes.append(f"{reason}: its columns read n/a")
    return libs, notes


# ---------------------------------------------------------------------------------------------- machine


def gpu_meta(clock: PureriglClock) -> dict:
    """The GPU as numba.cuda sees it: name, compute capability, memory, driver and runtime versions, and
    whether the cuda backend's device-memory pool serves its arrays."""
    cuda = clock.cuda
    info = {"simulator": not clock.timed, "name": None, "compute_capability": None, "memory_gib": None,
            "driver": None, "runtime": None, "memory_pool": clock.backend.module._launch.MEMORY_POOL}
    probes = {
        "name": lambda: _text(cuda.current_context().device.name),
        "compute_capability": lambda: list(cuda.current_context().device.compute_capability),
        "memory_gib": lambda: _finite(cuda.current_context().get_memory_info()[1] / 2**30),
        "runtime": lambda: list(cuda.runtime.get_version()),
        "driver": lambda: list(_driver_version()),
    }
    for key, probe in probes.items():
        with contextlib.suppress(Exception):  # a probe that fails leaves its field unknown
            info[key] = probe()
    if info["simulator"]:
        info["name"] = "numba CUDA simulator"
    return info


def _driver_version():
    from numba.cuda.cudadrv.driver import driver

    return driver.get_version()


def _text(x) -> str | None:
    if x is None:
        return None
    return x.decode() if isinstance(x, bytes) else str(x)


def _finite(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else None


def _one_line(err: Exception, limit: int = 300) -> str:
    return " ".join(str(err).split())[:limit]
