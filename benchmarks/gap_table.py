"""How far each method lies below dense, per sparsity, over the seeds done so far: one Markdown table.

    python benchmarks/gap_table.py OUT/results.json [MORE.json ...] [--within 0.3]

For every sparsity of the given sweeps' ``cells`` (several files are read as one grid, as
``curve_table.py`` reads them), one row per method, best mean first:

- the final test accuracy of each seed done, ``seed: accuracy``;
- the mean and sample standard deviation over those seeds (``purerigl.report.sweep.aggregate``, the
  numbers of the sweep's own ``results.md``);
- ``dense - mean`` in points, ``100 * (mean of dense's seeds - mean of the method's seeds)``: each
  over its own seeds, so a method with fewer seeds is compared with all of dense's;
- a ``--level`` (default 95%) confidence interval of that gap, Welch's (unequal variances, each side's
  sample variance over its own seeds, Welch-Satterthwaite degrees of freedom; needs two seeds on each
  side): with three seeds a gap near the bound cannot be told from it, and the interval says so;
- whether that gap is within ``--within`` points (the issue's expectation: 0.3), and how many of the
  method's seeds are within it of the dense cell of the same seed.

A gap needs a dense cell; without one the gap columns read ``-``. The first line says ``n of N`` cells
done, N being every cell a full grid of the seeds and methods seen would hold at the sparsities seen
and those of ``--sparsities`` (e.g. ``0.9,0.95,0.98``: a sparsity with no cell yet says so).
"""

from __future__ import annotations

import math
from pathlib import Path

import click
from scipy import stats

from purerigl.report.sweep import aggregate

from curve_table import cell_key, read_cells  # benchmarks/ is the script's directory, so on sys.path


def gap_interval(dense: list[float], method: list[float], level: float = 0.95) -> tuple[float, float] | None:
    r"""Welch's ``level`` confidence interval of ``mean(dense) - mean(method)``, in points (x 100).

    .. math:: (\bar d - \bar m) \pm t_{(1+\text{level})/2,\,\nu}\, \sqrt{s_d^2/n_d + s_m^2/n_m},\quad
              \nu = \frac{(s_d^2/n_d + s_m^2/n_m)^2}{(s_d^2/n_d)^2/(n_d-1) + (s_m^2/n_m)^2/(n_m-1)}

    ``s^2`` the sample variances (ddof 1). None with fewer than two values on either side. Where both
    variances are 0 the interval is the gap itself.
    """
    if len(dense) < 2 or len(method) < 2:
        return None
    nd, nm = len(dense), len(method)
    md, mm = sum(dense) / nd, sum(method) / nm
    vd = sum((a - md) ** 2 for a in dense) / (nd - 1) / nd  # variance of dense's mean
    vm = sum((a - mm) ** 2 for a in method) / (nm - 1) / nm
    gap = 100 * (md - mm)
    if vd + vm == 0:
        return gap, gap
    dof = (vd + vm) ** 2 / (vd ** 2 / (nd - 1) + vm ** 2 / (nm - 1))
    half = 100 * stats.t.ppf((1 + level) / 2, dof) * math.sqrt(vd + vm)
    return gap - half, gap + half


def gap_rows(cells: list[dict], within: float, level: float = 0.95) -> list[dict]:
    """One dict per (sparsity, method) of a sparse method, best mean first within a sparsity: ``method``,
    ``sparsity``, ``seeds`` {seed: accuracy}, ``mean``, ``std``, ``gap`` (points, None without dense),
    ``interval`` (:func:`gap_interval` at ``level``, or None), ``within`` (bool or None) and ``seeds_within`` (count of seeds with a same-seed dense cell and a gap
    within ``within`` points) out of ``seeds_compared``."""
    dense_seed = {cell_key(c)[2]: c["test_accuracy"] for c in cells if cell_key(c)[0] == "dense"}
    dense = next((r for r in aggregate(cells) if r["method"] == "dense"), None)
    out = []
    for row in aggregate(cells):
        if row["method"] == "dense":
            continue
        mine = [c for c in cells if cell_key(c)[:2] == (row["method"], row["sparsity"])]
        seeds = {cell_key(c)[2]: c["test_accuracy"] for c in mine}
        gap = None if dense is None else 100 * (dense["accuracy_mean"] - row["accuracy_mean"])
        compared = [s for s in seeds if s in dense_seed]
        interval = None if dense is None else gap_interval(list(dense_seed.values()), list(seeds.values()), level)
        out.append({
            "method": row["method"], "sparsity": row["sparsity"], "seeds": dict(sorted(seeds.items())),
            "mean": row["accuracy_mean"], "std": row["accuracy_std"], "gap": gap,
            "interval": interval, "within": None if gap is None else gap <= within + 1e-9,
            "seeds_within": sum(100 * (dense_seed[s] - seeds[s]) <= within + 1e-9 for s in compared),
            "seeds_compared": len(compared),
        })
    return sorted(out, key=lambda r: (r["sparsity"], -r["mean"], r["method"]))


def markdown(cells: list[dict], within: float, sparsities: list[float] | None = None,
             level: float = 0.95) -> str:
    """The tables, one per sparsity (``sparsities``: the grid's, default those of the cells), after a line
    that counts the cells done out of the full grid of the seeds and methods seen."""
    methods = {cell_key(c)[0] for c in cells}
    seen = sorted({cell_key(c)[1] for c in cells if cell_key(c)[0] != "dense"})
    sparsities = sorted(set(sparsities or seen) | set(seen))
    seeds = sorted({cell_key(c)[2] for c in cells})
    sparse = methods - {"dense"}
    n_full = (len(seeds) if "dense" in methods else 0) + len(sparse) * len(sparsities) * len(seeds)
    lines = [f"{len(cells)} of {n_full} cells done ({len(sparse)} sparse methods at {len(sparsities)} "
             f"sparsities{' and dense' if 'dense' in methods else ''}, seeds {', '.join(map(str, seeds))})."]
    dense = sorted((c for c in cells if cell_key(c)[0] == "dense"), key=cell_key)
    if dense:
        d = aggregate(dense)[0]
        per_seed = ", ".join(f"{cell_key(c)[2]}: {c['test_accuracy']:.4f}" for c in dense)
        lines.append(f"Dense: {per_seed}; mean {d['accuracy_mean']:.4f} ± {d['accuracy_std']:.4f}.")
    head = ["method", "seeds done", "mean ± std", "dense - mean (points)",
            f"{100 * level:g}% interval (Welch)", f"within {within:g}",
            f"seeds within {within:g} of dense's same seed"]
    rows = gap_rows(cells, within, level)
    for sparsity in sparsities:
        lines += ["", f"**{round(sparsity * 100, 6):g}%**", ""]
        here = [r for r in rows if r["sparsity"] == sparsity]
        if not here:
            lines.append("No cell yet.")
            continue
        lines += ["| " + " | ".join(head) + " |", "| --- | --- | --- | ---: | ---: | --- | ---: |"]
        for r in here:
            done = ", ".join(f"{s}: {a:.4f}" for s, a in r["seeds"].items())
            std = f" ± {r['std']:.4f}" if len(r["seeds"]) > 1 else ""
            gap = "-" if r["gap"] is None else f"{r['gap']:.2f}"
            span = "-" if r["interval"] is None else f"{r['interval'][0]:.2f} to {r['interval'][1]:.2f}"
            yes = "-" if r["within"] is None else ("yes" if r["within"] else "no")
            lines.append(f"| {r['method']} | {done} | {r['mean']:.4f}{std} | {gap} | {span} | {yes} | "
                         f"{r['seeds_within']} of {r['seeds_compared']} |")
    return "\n".join(lines)


def _sparsity_list(ctx, param, value: str | None) -> list[float] | None:
    if not value:
        return None
    try:
        out = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated sparsities such as 0.9,0.95, got {value!r}") from None
    if not all(0 < s < 1 for s in out):
        raise click.BadParameter(f"sparsities lie strictly between 0 and 1, got {value!r}")
    return out


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--within", default=0.3, show_default=True, type=click.FloatRange(min=0),
              help="the gap to dense, in points, that counts as close")
@click.option("--sparsities", callback=_sparsity_list,
              help="the grid's sparsities, e.g. 0.9,0.95,0.98 (default: those of the cells given)")
@click.option("--level", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="confidence level of the gap's interval")
def main(results: tuple[Path, ...], within: float, sparsities: list[float] | None, level: float) -> None:
    click.echo(markdown(read_cells(list(results)), within, sparsities, level))


if __name__ == "__main__":
    main()
