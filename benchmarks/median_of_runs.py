"""Median of several `purerigl bench kernels`, `bench train` or `bench growth` runs, as one Markdown table.

On a shared machine one run's ratios move by tens of percent (other tenants, CPU frequency), so the
results files of issue 19 report, per row, the median ratio over repeated runs of the same command
and the range it spanned. Usage::

    python benchmarks/median_of_runs.py kernels run1.json run2.json run3.json > table.md
    python benchmarks/median_of_runs.py train run1.json run2.json > table.md
    python benchmarks/median_of_runs.py growth run1.json run2.json run3.json > table.md

Each JSON file is the ``--json`` output of the bench; rows are matched by their configuration
(kernels: shape, sparsity, batch, op, format; train: network, method, format, sparsity; growth: width,
method, format, sparsity).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

KEYS = {
    "kernels": ("shape", "sparsity", "batch", "op", "format"),
    "train": ("arch", "method", "format", "sparsity"),
    "growth": ("width", "method", "format", "sparsity"),
}


def _key(row: dict, kind: str) -> tuple:
    return tuple(tuple(row[k]) if isinstance(row[k], list) else row[k] for k in KEYS[kind])


def _median(values):
    values = [v for v in values if v is not None]
    return (statistics.median(values), min(values), max(values)) if values else None


def _ratio(stat) -> str:
    if stat is None:
        return "-"
    med, lo, hi = stat
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"


def _pct(stat) -> str:
    return "-" if stat is None else f"{stat[0]:.0%}"


def table(kind: str, reports: list[dict]) -> str:
    """The Markdown table of the per-row medians over ``reports`` (bench JSON reports of one kind)."""
    rows: dict[tuple, list[dict]] = {}
    for report in reports:
        for row in report["results"]:
            rows.setdefault(_key(row, kind), []).append(row)
    lines = [f"Median over {len(reports)} runs (range in brackets).", ""]
    if kind == "kernels":
        lines += ["| shape | sparsity | batch | op | format | purerigl us | dense/purerigl | %limit | %copy |",
                  "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for key, group in rows.items():
            shape, sparsity, batch, op, fmt = key
            us = _median([r["purerigl_us"] for r in group])
            lines.append(
                f"| {shape[0]}x{shape[1]} | {sparsity:g} | {batch} | {op} | {fmt} | {us[0]:.1f} | "
                f"{_ratio(_median([r['dense_ratio'] for r in group]))} | "
                f"{_pct(_median([r.get('limit_fraction') for r in group]))} | "
                f"{_pct(_median([r.get('memcpy_fraction') for r in group]))} |")
    elif kind == "growth":
        lines += ["| width | method | format | sparsity | update ms | dense dY^T X ms | update/dense |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for key, group in rows.items():
            width, method, fmt, sparsity = key
            ms = _median([r["update_ms"] for r in group])
            dense = _median([r.get("dense_xtdy_ms") for r in group])
            lines.append(
                f"| {width} | {method} | {fmt} | {sparsity:.4g} | {ms[0]:.1f} | "
                f"{'-' if dense is None else f'{dense[0]:.1f}'} | "
                f"{_ratio(_median([r.get('update_over_dense') for r in group]))} |")
    else:
        lines += ["| network | method | format | sparsity | step ms | dense/sparse | + update | %limit |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, group in rows.items():
            arch, method, fmt, sparsity = key
            step = _median([r["step_ms"] for r in group])
            lines.append(
                f"| {arch} | {method} | {fmt} | {sparsity:g} | {step[0]:.3f} | "
                f"{_ratio(_median([r['dense_ratio'] for r in group]))} | "
                f"{_ratio(_median([r['dense_ratio_with_update'] for r in group]))} | "
                f"{_pct(_median([r.get('limit_fraction') for r in group]))} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in KEYS:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: median_of_runs.py {kernels|train|growth} RUN.json [RUN.json ...]", file=sys.stderr)
        return 2
    reports = []
    for name in argv[1:]:
        try:
            reports.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as e:
            print(f"error: cannot read {name}: {e}", file=sys.stderr)
            return 2
    print(table(argv[0], reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
