"""The training part of ``purerigl bench gpu``: one training step and one topology update per method on the
cuda and cpu backends, and the same network dense in PyTorch on the GPU (cuDNN / cuBLAS), in one process.

The network is an MLP (``--hidden``) or a built-in CNN (``--model lenet5|vgg-small|resnet20``: the
convolutions on the cuda backend's patch kernels). Every method runs on its default format, same seed
and inputs on every backend; the device is synchronised before each clock read (:func:`_synced`). The
dense baseline is the network's dense twin in PyTorch (``_torch_twins``), trained by
``torch.optim.SGD`` with the same momentum, on the GPU where torch sees one (else on the CPU, and the
report says so). An error in one cell is reported in the table and does not stop the others.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import numpy as np

from purerigl.dst import resolve_format
from purerigl.nn import build_mlp, build_model

from ._gpu_devices import _one_line
from ._gpu_report import _fmt_ms
from ._shared import measure
from ._train_common import method_calls


@dataclass(frozen=True)
class TrainNet:
    """The network of the training part: an MLP of ``widths`` (n_features, hidden..., n_classes), or the
    built-in CNN ``model`` on images of ``input_shape`` (C, H, W), with the architecture options
    ``options`` ((name, value) pairs, e.g. narrower layers for the simulator)."""

    model: str
    widths: tuple = ()
    input_shape: tuple = ()
    n_classes: int = 10
    options: tuple = ()

    @property
    def n_features(self) -> int:
        return self.widths[0] if self.model == "mlp" else int(np.prod(self.input_shape))

    @property
    def arch(self) -> str:
        """The network in words: "784-300-100-10", "lenet5 1x28x28"."""
        if self.model == "mlp":
            return "-".join(str(w) for w in self.widths)
        options = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.model} {'x'.join(map(str, self.input_shape))}{options}"

    def build(self, backend, fmt: str, sparsity: float, seed: int):
        """The network on ``backend`` at ``sparsity`` in ``fmt`` (a CNN's first conv and classifier dense)."""
        rng = np.random.default_rng(seed)
        if self.model == "mlp":
            return build_mlp(self.widths[0], ",".join(map(str, self.widths[1:-1])), self.widths[-1], fmt=fmt,
                             sparsity=sparsity, backend=backend, rng=rng)
        return build_model(self.model, self.input_shape, self.n_classes, fmt=fmt, sparsity=sparsity, rng=rng,
                           backend=backend, **dict(self.options))


def training_inputs(data, batch: int, net: TrainNet, seed: int):
    """(X, y) of one batch: the first rows of the data set's training split, or synthetic of that shape."""
    if data is not None:
        return np.ascontiguousarray(data.x_train[:batch]), np.ascontiguousarray(data.y_train[:batch])
    rng = np.random.default_rng([seed, batch])
    return (rng.standard_normal((batch, net.n_features)).astype(np.float32),
            rng.integers(0, net.n_classes, size=batch))


def _synced(fn, synchronize):
    """``fn`` followed by ``synchronize()``, so the clock read after it counts the queued work."""

    def call():
        fn()
        synchronize()

    return call


def _measure_compiled(fn, budget_s: float, max_call_s: float, repeat: int, once: bool):
    """:func:`measure` of ``fn`` after one untimed call (compilation); with ``once`` neither that call nor
    a second one for a slow first call (see :func:`train_cell`)."""
    if not once:
        fn()
    return measure(fn, budget_s=budget_s, max_call_s=max_call_s, repeat=repeat, compiled=once)


def _error_cell(err: Exception) -> dict:
    return {"step_ms": None, "update_ms": None, "error": f"{type(err).__name__}: {_one_line(err)}",
            "traceback": traceback.format_exc(limit=6)}


def train_cell(backend, method, fmt, X, y, *, net: TrainNet, sparsity, seed, budget_s, max_call_s, repeat,
               once: bool = False) -> dict:
    """Median step and update time of one method on one backend (``error`` instead when it raises).

    The step and the update are those of ``purerigl bench train`` (:func:`._train_common.method_calls`:
    SGD with momentum; DynaDiag's soft phase with its gates and alpha's Adam step), each followed by
    a device synchronisation. One untimed call first compiles the kernels, so that :func:`measure` (whose own first call is a
    warm-up too, and which times a call slower than ``max_call_s`` once) sees compiled calls.
    ``once`` (``--quick``): no extra call, and a call slower than ``max_call_s`` is timed by its first
    call alone, so that the tests on the simulator stay short (those numbers mean nothing anyway).
    """
    try:
        model = net.build(backend, fmt, sparsity, seed)
        step, update = method_calls(model, method, fmt, sparsity, X, y, seed)
        t_step = _measure_compiled(_synced(step, backend.synchronize), budget_s, max_call_s, repeat, once)
        cell = {"step_ms": t_step.median_s * 1e3, "update_ms": None, "runs": {"step": t_step.runs, "update": 0}}
        if update is not None:
            t_up = _measure_compiled(_synced(update, backend.synchronize), budget_s, max_call_s, repeat, once)
            cell.update(update_ms=t_up.median_s * 1e3, runs={"step": t_step.runs, "update": t_up.runs})
        return cell
    except Exception as err:  # noqa: BLE001 - reported in the table; the other cells still run
        return _error_cell(err)


def torch_dense_cell(X, y, *, net: TrainNet, budget_s, max_call_s, repeat, once: bool = False) -> dict:
    """Median step time of the network's dense PyTorch twin (SGD momentum 0.9, float32 with TF32 off), on
    torch's GPU if it sees one, else on the CPU: {"step_ms", "device", "runs"}; ``skipped`` without
    PyTorch, ``error`` when it raises."""
    try:
        import torch
    except ImportError:
        return {"step_ms": None, "device": None, "skipped": "PyTorch is not installed (pip install 'purerigl[torch]')"}
    try:
        from ._torch_twins import torch_mlp_twin, torch_train_step, torch_twin

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 arithmetic, as purerigl's: no TF32 in cuBLAS
        torch.backends.cudnn.allow_tf32 = False  # nor in cuDNN's convolutions (on by default)
        torch.manual_seed(0)
        twin = (torch_mlp_twin(net.widths, device=device) if net.model == "mlp"
                else torch_twin(net.model, net.input_shape, net.n_classes, device=device, **dict(net.options)))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        t = _measure_compiled(_synced(torch_train_step(twin, X, y, momentum=0.9), sync), budget_s, max_call_s,
                              repeat, once)
        return {"step_ms": t.median_s * 1e3, "device": device, "runs": {"step": t.runs}}
    except Exception as err:  # noqa: BLE001 - no torch, or a failure: reported, the rest still runs
        return _error_cell(err)


def run_train(backends, methods, batches, *, data, net: TrainNet, sparsity, seed, budget_s, max_call_s, repeat,
              progress, rows: list, checkpoint=lambda: None, once: bool = False, torch_dense: bool = True) -> list:
    """One row per (batch, method), appended to ``rows``: step and update times on every backend of
    ``backends`` (cpu, cuda) and, with ``torch_dense``, the dense twin's step (timed once per batch and
    shared by the batch's rows); ``checkpoint()`` runs after each row."""
    for batch in batches:
        X, y = training_inputs(data, batch, net, seed)
        dense = (torch_dense_cell(X, y, net=net, budget_s=budget_s, max_call_s=max_call_s, repeat=repeat, once=once)
                 if torch_dense else None)
        for method in methods:
            fmt = resolve_format(method, None)
            row = {"arch": net.arch, "method": method, "format": fmt, "sparsity": sparsity, "batch": batch}
            for backend in backends:
                row[backend.name] = train_cell(backend, method, fmt, X, y, net=net, sparsity=sparsity, seed=seed,
                                               budget_s=budget_s, max_call_s=max_call_s, repeat=repeat, once=once)
            cpu, cuda = row.get("cpu", {}), row.get("cuda", {})
            row["step_speedup"] = safe_ratio(cpu.get("step_ms"), cuda.get("step_ms"))
            row["update_speedup"] = safe_ratio(cpu.get("update_ms"), cuda.get("update_ms"))
            if dense is not None:
                row["torch_dense"] = dense
                row["dense_speedup"] = safe_ratio(dense.get("step_ms"), cuda.get("step_ms"))
            rows.append(row)
            progress(f"train {net.arch} {method:<9} batch {batch:<4} " + "; ".join(
                f"{b.name} step {_fmt_ms(row[b.name]['step_ms'])} update {_fmt_ms(row[b.name]['update_ms'])}"
                + (f" ERROR {row[b.name]['error']}" if "error" in row[b.name] else "") for b in backends)
                + ("" if dense is None else f"; torch dense ({dense.get('device', '?')}) {_fmt_ms(dense['step_ms'])}"))
            checkpoint()
    return rows


def safe_ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None where either time is missing or ``den`` is not positive (a part that was
    skipped or failed), so a report shows a gap instead of a wrong ratio."""
    return None if num is None or den is None or den <= 0 else num / den


def check_networks(net: TrainNet, methods, sparsity: float) -> None:
    """Build each method's network once on the reference backend, so that a network its format cannot
    hold (a condensed layer with k = 0, an image too small for the CNN, ...) is bad input (exit 2)
    before any timing starts."""
    for fmt in sorted({resolve_format(m, None) for m in methods}):
        net.build("reference", fmt, sparsity, 0)
