"""Every seed of one sparsity column of a ``purerigl sweep``: one point per (method, seed), the mean as a
bar, dense's mean and seed range as a band, on an axis zoomed to the methods that learned.

The sweep's own figure (accuracy against sparsity) shows a single-sparsity column as one stack of dots;
this one shows how far each method sits from dense and from the others, seed by seed. A cell below
``--floor`` (a run that never learned) is left off the axis and named under the plot.

Usage: python benchmarks/plot_seeds.py SWEEP_DIR/results.json --sparsity 0.9 --out seeds.png
       [--extra LABEL=OTHER_SWEEP/results.json ...]   (more rows, e.g. a variant swept apart; a LABEL
       that names a method already there, or repeats, adds its seeds to that row)
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections import Counter, defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracies(path: str, sparsity: float, rename: str | None = None) -> dict[str, list[float]]:
    """{method: [final test accuracy per seed]} of the cells at ``sparsity`` (dense: sparsity 0)."""
    out: dict[str, list[float]] = defaultdict(list)
    for cell in json.load(open(path))["cells"]:
        method, s = cell["cell"]["method"], cell["cell"]["sparsity"]
        if method == "dense" or abs(s - sparsity) < 1e-9:
            out[rename if rename and method != "dense" else method].append(cell["test_accuracy"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=RESULTS_JSON")
    parser.add_argument("--floor", type=float, default=0.5, help="cells below this accuracy are listed, not drawn")
    args = parser.parse_args()
    acc = accuracies(args.results, args.sparsity)
    for item in args.extra:
        label, path = item.split("=", 1)
        for method, seeds in accuracies(path, args.sparsity, rename=label).items():
            if method != "dense":  # a label given twice (a variant swept in parts) gathers both parts' seeds
                acc[method].extend(seeds)
    dense = acc.pop("dense", [])
    methods = list(acc)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if dense:
        mean = sum(dense) / len(dense)
        ax.axhspan(min(dense), max(dense), color="0.9", label=f"dense: {len(dense)} seeds' range (mean {mean:.4f})")
        ax.axhline(mean, color="k", lw=1, ls="--", label="dense mean")
        ax.axhline(mean - 0.003, color="tab:red", lw=0.8, ls=":", label="dense mean - 0.3 points")
    dropped = []  # "method 2 x 0.1135": the seeds below the floor, equal values counted
    for i, method in enumerate(methods):
        shown = [a for a in acc[method] if a >= args.floor]
        below = Counter(f"{a:.4f}" for a in acc[method] if a < args.floor)
        dropped += [f"{method} {n} x {a}" if n > 1 else f"{method} {a}" for a, n in below.items()]
        ax.scatter([i] * len(shown), shown, color="tab:blue", zorder=3, s=22)
        if shown:
            ax.hlines(sum(shown) / len(shown), i - 0.25, i + 0.25, color="tab:blue", lw=2)
    ax.margins(y=0.08)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("final test accuracy")
    note = f"; not drawn (below {args.floor}): {', '.join(dropped)}" if dropped else ""
    title = f"{int(round(args.sparsity * 100))}% sparsity, one point per seed{note}"
    ax.set_title(textwrap.fill(title, 110), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
