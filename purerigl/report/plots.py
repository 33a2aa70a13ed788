"""Figures of a training run: curves from metrics.jsonl, and the connectivity of each sparse layer.

What ``purerigl plot`` draws. matplotlib is optional (the ``plot`` extra): it is imported inside the
functions that draw, never at module import, and figures are rendered with the Agg canvas directly
(:class:`matplotlib.figure.Figure`, no pyplot, no screen, no global backend switch).

The connectivity of a layer is computed from its stored indices (:func:`purerigl.kernels.reference.
triples`), never from a dense weight matrix:

- a layer with at most :data:`MAX_MASK_POSITIONS` positions is shown as its mask, a boolean
  (n_out, n_in) image (bounded: at most 512 KiB);
- a larger layer is shown as a density image of at most :data:`DENSITY_BINS` blocks: entry (a, b) is
  the fraction of stored positions in the block of rows and columns that maps to it, counted by
  ``np.bincount`` of the block index of every stored entry (O(nnz + bins)).

Nothing here prints; :func:`write_run_plots` returns the paths it wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..training.checkpoint import load_model
from ..errors import PureriglError
from ..formats import Condensed, Diagonal
from ..formats.triples import triples
from ..nn import SparseLinear
from .summary import fan_in_out

#: Layers with at most this many positions are drawn as their exact mask (512 x 1024).
MAX_MASK_POSITIONS = 512 * 1024
#: Most (row, column) blocks of the density image of a larger layer.
DENSITY_BINS = (256, 512)
#: Resolution of the PNG files.
DPI = 110

INSTALL_HINT = "pip install 'purerigl[plot]'"

__all__ = [
    "DENSITY_BINS",
    "MAX_MASK_POSITIONS",
    "PlotDependencyError",
    "RunError",
    "connectivity_image",
    "figure_curves",
    "figure_density",
    "figure_layer",
    "read_metrics",
    "require_matplotlib",
    "write_run_plots",
]


class RunError(PureriglError, ValueError):
    """A run directory is missing or holds unreadable files."""


class PlotDependencyError(PureriglError, ImportError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raise PlotDependencyError (naming the install command) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotDependencyError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _new_figure(width: float, height: float):
    """An empty Figure on an Agg canvas (no pyplot state, no display)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------------------------------
# data


def read_metrics(path) -> list[dict]:
    """The epochs of a ``metrics.jsonl`` (one JSON object per line); RunError naming a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read {path} ({e})") from None
    history = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunError(f"{path} line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise RunError(f"{path} line {number} is not an epoch record of purerigl train (no 'epoch')")
        history.append(record)
    return history


def connectivity_image(W, max_positions: int = MAX_MASK_POSITIONS, bins=DENSITY_BINS) -> tuple[np.ndarray, str]:
    """(image, kind) of a sparse matrix's structure, built from its indices.

    ``kind == "mask"``: bool (n_out, n_in), True where an entry is stored; only when
    ``n_out * n_in <= max_positions``. ``kind == "density"``: float64 (a, b) with a = min(n_out,
    bins[0]), b = min(n_in, bins[1]): row i falls in block ``i * a // n_out``, column j in
    ``j * b // n_in``, and each block holds stored entries / positions of the block.
    """
    n_out, n_in = W.shape
    rows, cols, _ = triples(W)
    if n_out * n_in <= max_positions:
        mask = np.zeros((n_out, n_in), dtype=bool)
        mask[rows, cols] = True
        return mask, "mask"
    a, b = min(n_out, int(bins[0])), min(n_in, int(bins[1]))
    row_block = np.arange(n_out, dtype=np.int64) * a // n_out  # (n_out,)
    col_block = np.arange(n_in, dtype=np.int64) * b // n_in  # (n_in,)
    counts = np.bincount(row_block[rows] * b + col_block[cols], minlength=a * b).reshape(a, b)
    area = np.outer(np.bincount(row_block, minlength=a), np.bincount(col_block, minlength=b))
    return counts / area, "density"


# --------------------------------------------------------------------------------------------------
# figures


def _epochs(history):
    return [m["epoch"] for m in history]


def figure_curves(history: list[dict]):
    """Loss and accuracy per epoch (train, test, and validation when present): a Figure."""
    fig = _new_figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = _epochs(history)
    marker = "o" if len(epochs) <= 30 else None
    for split in ("train", "test", "val"):
        for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            key = f"{split}_{what}"
            if any(key in m for m in history):
                ax.plot(epochs, [m.get(key, math.nan) for m in history], marker=marker, label=split)
    ax_loss.set(title="cross-entropy loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy (fraction correct)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
    return fig


def figure_density(history: list[dict]):
    """Per-layer density, fraction of connections changed, fraction of positions explored (ever
    active) and ablated neurons over training, from the ``layers`` entries of metrics.jsonl; None
    when no epoch has any (a dense run). The explored panel is left out for a metrics.jsonl written
    before ``explored`` existed."""
    names = []
    for m in history:
        for row in m.get("layers") or []:
            if row.get("layer") not in names:
                names.append(row.get("layer"))
    if not names:
        return None

    def series(name, key, missing=math.nan):
        out = []
        for m in history:
            row = next((r for r in m.get("layers") or [] if r.get("layer") == name), {})
            out.append(row.get(key, missing))
        return out

    panels = [("density", "density (stored / all positions)"),
              ("changed", "fraction new since the previous epoch")]
    if any(v is not None for name in names for v in series(name, "explored", None)):
        panels.append(("explored", "explored (ever active / all positions)"))
    if any(v and v > 0 for name in names for v in series(name, "ablated")):
        panels.append(("ablated", "ablated neurons"))
    fig = _new_figure(5 * len(panels), 4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    epochs = _epochs(history)
    marker = "o" if len(epochs) <= 30 else None
    for ax, (key, label) in zip(axes, panels):
        for name in names:
            ax.plot(epochs, series(name, key), marker=marker, label=name)
        ax.set(title=key, xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
    fig.suptitle("topology of the sparse layers after each epoch")
    return fig


def _integer_hist(ax, values: np.ndarray, what: str, unit: str) -> None:
    lo, hi = int(values.min()), int(values.max())
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo <= 60 else 40
    from matplotlib.ticker import MaxNLocator

    ax.hist(values, bins=bins, color="tab:blue", edgecolor="white", linewidth=0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"{what}: min {lo}, mean {values.mean():.2f}, max {hi}", xlabel=f"{what} ({unit})", ylabel="count")
    ax.grid(alpha=0.3, axis="y")


def figure_layer(name: str, layer: SparseLinear):
    """Connectivity of one sparse layer: its mask (or density image), fan-in and fan-out histograms,
    and per format: ablated neurons (Condensed), active diagonals with their value norms (Diagonal)
    or the fan-in of every output neuron (CSR)."""
    W = layer.W
    n_out, n_in = W.shape
    fig = _new_figure(12, 8)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.6, 1])
    ax_img = fig.add_subplot(grid[0, :])
    image, kind = connectivity_image(W)
    if kind == "mask":
        ax_img.imshow(image, cmap="Greys", aspect="auto", interpolation="nearest", vmin=0, vmax=1)
        ax_img.set_title(f"mask: black = stored connection ({W.nnz} of {n_out * n_in})")
        ax_img.set(xlabel="input j", ylabel="output neuron i")
    else:
        a, b = image.shape
        shown = ax_img.imshow(
            image, cmap="viridis", aspect="auto", interpolation="nearest", extent=(0, n_in, n_out, 0)
        )
        fig.colorbar(shown, ax=ax_img, label="density of the block")
        ax_img.set_title(f"density in {a} x {b} blocks of about {n_out / a:.1f} x {n_in / b:.1f} positions")
        ax_img.set(xlabel="input j", ylabel="output neuron i")

    fan_in, fan_out = fan_in_out(layer)
    _integer_hist(fig.add_subplot(grid[1, 0]), fan_in, "fan-in", "stored inputs per output neuron")
    _integer_hist(fig.add_subplot(grid[1, 1]), fan_out, "fan-out", "stored outputs per input")
    ax = fig.add_subplot(grid[1, 2])
    if isinstance(W, Condensed):
        ablated = np.ones(n_out, dtype=bool)
        ablated[W.rows] = False
        ax.bar(np.arange(n_out), np.where(ablated, 1, 0), width=1.0, color="tab:red")
        ax.bar(np.arange(n_out), np.where(ablated, 0, 1), width=1.0, color="lightgray")
        ax.set(title=f"ablated neurons (red): {int(ablated.sum())} of {n_out}, k = {W.k}",
               xlabel="output neuron i", yticks=[], xlim=(-0.5, n_out - 0.5))
    elif isinstance(W, Diagonal):
        norms = np.zeros(W.P)
        norms[W.offsets] = np.sqrt((W.values.astype(np.float64) ** 2).sum(axis=1))
        ax.bar(np.arange(W.P), norms, width=1.0, color="tab:green")
        ax.set(title=f"active diagonals: K = {W.K} of P = {W.P}", xlabel="diagonal offset d",
               ylabel="L2 norm of its values", xlim=(-0.5, W.P - 0.5))
    else:
        ax.bar(np.arange(n_out), fan_in, width=1.0, color="tab:blue")
        ax.set(title="fan-in of every output neuron", xlabel="output neuron i", ylabel="stored inputs",
               xlim=(-0.5, n_out - 0.5))
    fig.suptitle(f"{name}: {type(W).__name__} {n_out} x {n_in}, nnz {W.nnz}, density {W.density:.4f}")
    return fig


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG to ``path``; returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path


# --------------------------------------------------------------------------------------------------
# a whole run


def figure_gates(history: list[dict]):
    """DynaDiag's gates over training, from the ``layers`` entries of metrics.jsonl: the temperature,
    the effective K (stored diagonals with gate > 1e-6) against the K kept in the end, and the range
    of the stored diagonals' gates (min to max) per layer; None for a run without gated layers."""
    names = []
    for m in history:
        for row in m.get("layers") or []:
            if "effective_k" in row and row.get("layer") not in names:
                names.append(row.get("layer"))
    if not names:
        return None

    def series(name, key):
        out = []
        for m in history:
            row = next((r for r in m.get("layers") or [] if r.get("layer") == name), {})
            out.append(row.get(key, math.nan))
        return np.array(out, dtype=float)

    fig = _new_figure(15, 4)
    ax_t, ax_k, ax_g = fig.subplots(1, 3)
    epochs = _epochs(history)
    marker = "o" if len(epochs) <= 30 else None
    ax_t.plot(epochs, series(names[0], "temperature"), marker=marker, color="k")
    ax_t.set(title="temperature", xlabel="epoch", ylabel="T (start of the epoch)", yscale="log")
    for name in names:
        line, = ax_k.plot(epochs, series(name, "effective_k") / series(name, "k"), marker=marker, label=name)
        ax_k.plot(epochs, series(name, "stored") / series(name, "k"), ls="--", color=line.get_color())
        ax_g.fill_between(epochs, series(name, "gate_min"), series(name, "gate_max"), alpha=0.25,
                          color=line.get_color(), label=name)
        ax_g.plot(epochs, series(name, "gate_max"), marker=marker, color=line.get_color())
    ax_k.set(title="effective K / K (dashed: stored / K)", xlabel="epoch", ylabel="diagonals / K")
    ax_g.set(title="gates of the stored diagonals (min to max)", xlabel="epoch", ylabel="gate", ylim=(0, 1.05))
    for ax in (ax_t, ax_k, ax_g):
        ax.grid(alpha=0.3)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
    ax_k.legend(fontsize="small")
    fig.suptitle("DynaDiag gates after each epoch (1 everywhere once frozen)")
    return fig


def write_run_plots(run_dir, out_dir=None) -> tuple[list[Path], list[str]]:
    """Draw every figure of the run in ``run_dir`` into ``out_dir`` (default ``run_dir/plots``).

    Files: ``curves.png``, ``density.png`` and, for a DynaDiag run, ``gates.png`` (from metrics.jsonl) and ``layer{i}_connectivity.png``
    for every sparse layer of model.npz (of checkpoint.npz when the run has no model.npz yet).

    Returns
    -------
    (written, notes)
        The paths written, and one sentence per figure not drawn (and why) or drawn from a checkpoint.

    Raises
    ------
    RunError
        ``run_dir`` is not a directory, or holds neither metrics.jsonl nor a model; a malformed
        metrics.jsonl. CheckpointError for a model file that cannot be read.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunError(f"no such run directory: {run_dir}")
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory; give the run directory that purerigl train wrote")
    metrics_path = run_dir / "metrics.jsonl"
    model_path = next((run_dir / n for n in ("model.npz", "checkpoint.npz") if (run_dir / n).is_file()), None)
    if not metrics_path.is_file() and model_path is None:
        raise RunError(f"{run_dir} is not a run directory of purerigl train (no metrics.jsonl, no model.npz)")
    require_matplotlib()
    history = read_metrics(metrics_path) if metrics_path.is_file() else []
    model = load_model(model_path, backend="reference")[0] if model_path is not None else None

    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    if history:
        written.append(save_figure(figure_curves(history), out_dir / "curves.png"))
        density = figure_density(history)
        if density is None:
            notes.append("density.png: metrics.jsonl has no per-layer topology (no sparse layer)")
        else:
            written.append(save_figure(density, out_dir / "density.png"))
        gates = figure_gates(history)
        if gates is not None:
            written.append(save_figure(gates, out_dir / "gates.png"))
    else:
        notes.append("curves.png, density.png: the run has no metrics.jsonl or no finished epoch")
    if model is None:
        notes.append("layer connectivity: the run has no model.npz or checkpoint.npz")
    else:
        if model_path.name != "model.npz":
            notes.append(f"connectivity drawn from {model_path.name}: the run has no model.npz yet")
        for i, lin in enumerate(model.linears):
            if isinstance(lin, SparseLinear):
                written.append(save_figure(figure_layer(lin.name, lin), out_dir / f"layer{i}_connectivity.png"))
            else:
                notes.append(f"layer{i}_connectivity.png: layer{i} is dense")
    return written, notes
