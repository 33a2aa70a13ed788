"""The learning curves of a `purerigl sweep`'s cells as one Markdown table.

    python benchmarks/curve_table.py OUT/results.json [MORE.json ...] [--epochs 2,6,10,15] [--last 5]

One row per cell (method, sparsity, seed), read from the ``cells`` of each sweep's ``results.json``:

- the final test accuracy, and how many points below the dense cell of the same seed it lies
  (``100 * (dense - cell)``; ``-`` where no dense cell of that seed is given);
- the final training loss (underfitting shows here before it shows in the accuracy);
- the test accuracy after each epoch of ``--epochs`` (``-`` past the cell's last epoch);
- the lowest and highest test accuracy of the last ``--last`` epochs: a narrow range means the run has
  reached its plateau, so more epochs at the same budget would not move it.

The curve columns need the cell's ``curve`` (kept in ``results.json`` by sweeps since 2026-12-06); a
cell written before that shows ``-`` there. Several files may be given (for example a grid run in two
output directories); a cell that appears in two of them is an error, not a silent choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from purerigl.report.sweep import SWEEP_METHODS  # rows in the sweep's own method order


def read_cells(paths: list[Path]) -> list[dict]:
    """The ``cells`` of every ``results.json``, sorted by method, sparsity and seed.

    Raises ``click.BadParameter`` for an unreadable file, a file that is not a sweep's results, or a
    cell that two files both hold.
    """
    seen: dict[tuple, Path] = {}
    cells = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise click.BadParameter(f"cannot read {path}: {err}", param_hint="RESULTS") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise click.BadParameter(f"{path} is not a sweep's results.json (no list of cells)", param_hint="RESULTS")
        for result in data["cells"]:
            key = cell_key(result)
            if key in seen:
                raise click.BadParameter(f"cell {result.get('name', key)} is in both {seen[key]} and {path}",
                                         param_hint="RESULTS")
            seen[key] = path
            cells.append(result)
    order = {m: i for i, m in enumerate(SWEEP_METHODS)}
    return sorted(cells, key=lambda r: (order.get(cell_key(r)[0], len(order)), cell_key(r)[1], cell_key(r)[2]))


def cell_key(result: dict) -> tuple[str, float, int]:
    """(method, sparsity, seed) of a cell of ``results.json``."""
    cell = result["cell"]
    return cell["method"], float(cell["sparsity"]), int(cell["seed"])


def rows(cells: list[dict], epochs: list[int], last: int) -> list[list[str]]:
    """The table's rows as strings: method, sparsity, seed, accuracy, gap, training loss, epochs, range."""
    dense = {cell_key(r)[2]: r["test_accuracy"] for r in cells if cell_key(r)[0] == "dense"}
    out = []
    for r in cells:
        method, sparsity, seed = cell_key(r)
        acc = r["test_accuracy"]
        gap = "" if method == "dense" else (f"{100 * (dense[seed] - acc):.2f}" if seed in dense else "-")
        curve = {m["epoch"]: m["test_accuracy"] for m in r.get("curve", [])}
        at = " / ".join(f"{curve[e]:.4f}" if e in curve else "-" for e in epochs)
        tail = [m["test_accuracy"] for m in r.get("curve", [])][-last:]
        span = f"{min(tail):.4f}-{max(tail):.4f}" if len(tail) == last else "-"
        out.append([method, f"{round(sparsity * 100, 6):g}%", str(seed), f"{acc:.4f}", gap,
                    f"{r['train_loss']:.4f}" if "train_loss" in r else "-", at, span])
    return out


def markdown(cells: list[dict], epochs: list[int], last: int) -> str:
    head = ["method", "sparsity", "seed", "test accuracy", "dense - method (points)", "final training loss",
            "test accuracy at epochs " + " / ".join(map(str, epochs)), f"last {last} epochs"]
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(cells, epochs, last)]
    return "\n".join(lines)


def _epoch_list(ctx, param, value: str) -> list[int]:
    try:
        epochs = [int(e) for e in value.split(",") if e.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epoch numbers, got {value!r}") from None
    if not epochs or min(epochs) < 1:
        raise click.BadParameter(f"expected epoch numbers from 1 up, got {value!r}")
    return epochs


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--epochs", default="2,6,10,15", show_default=True, callback=_epoch_list,
              help="Epochs whose test accuracy gets a column (comma-separated).")
@click.option("--last", default=5, show_default=True, type=click.IntRange(min=1),
              help="Show the range of the test accuracy over this many last epochs.")
def main(results: tuple[Path, ...], epochs: list[int], last: int) -> None:
    click.echo(markdown(read_cells(list(results)), epochs, last))


if __name__ == "__main__":
    main()
