"""The sweep's figure: test accuracy against sparsity, one line per method, dense as a horizontal line.

matplotlib is an optional dependency (the ``plot`` and ``sweep`` extras); it is imported when a
figure is drawn, on an Agg canvas of its own (no pyplot state, no screen, the user's backend untouched).
"""

from __future__ import annotations

from pathlib import Path

from .sweep import SWEEP_METHODS


def plot_accuracy_vs_sparsity(rows: list[dict], path: Path, title: str = "") -> Path:
    """Write a PNG of accuracy (mean ± std over seeds) against sparsity.

    Parameters
    ----------
    rows : list of dicts from :func:`purerigl.report.sweep.aggregate`
    path : where the PNG goes
    title : figure title (the budget, say)

    Returns
    -------
    path
    """
    path = Path(path)
    accuracy_figure(rows, title).savefig(path)
    return path


def accuracy_figure(rows: list[dict], title: str = ""):
    """The figure of :func:`plot_accuracy_vs_sparsity` (a matplotlib ``Figure`` on an Agg canvas), not
    saved: one errorbar line per sparse method over equally spaced sparsities, dense as a dashed line
    with its ± std band, the legend beside the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    # equally spaced ticks: 80, 90, 95, 98, 99% would crowd at the right on a linear axis
    position = {s: i for i, s in enumerate(sparsities)}
    for method in SWEEP_METHODS:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        if not mine:
            continue
        if method == "dense":
            r = mine[0]
            ax.axhline(r["accuracy_mean"], color="black", linestyle="--", linewidth=1.2,
                       label=f"dense ({r['accuracy_mean']:.4f})")
            if r["accuracy_std"] > 0:
                ax.axhspan(r["accuracy_mean"] - r["accuracy_std"], r["accuracy_mean"] + r["accuracy_std"],
                           color="black", alpha=0.08)
            continue
        xs = [position[r["sparsity"]] for r in mine]
        ax.errorbar(xs, [r["accuracy_mean"] for r in mine], yerr=[r["accuracy_std"] for r in mine],
                    marker="o", markersize=4, capsize=3, linewidth=1.4, label=method)
    ax.set_xticks(range(len(sparsities)), [f"{round(s * 100, 6):g}%" for s in sparsities])
    ax.set_xlabel("sparsity (fraction of zero weights)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    # beside the axes: inside, it covered the points wherever the methods crowd (one column, say)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["accuracy_figure", "plot_accuracy_vs_sparsity"]
