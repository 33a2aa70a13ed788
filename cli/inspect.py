"""``purerigl inspect MODEL.npz``: a per-layer summary of a saved model (the numbers: purerigl.report.summary)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from purerigl.report.provenance import describe_code
from purerigl.report.summary import inspect_model_file

COLUMNS = (
    ("layer", "<"), ("format", "<"), ("shape", ">"), ("nnz", ">"), ("density", ">"),
    ("fan-in min/mean/max", ">"), ("fan-out min/mean/max", ">"), ("ablated", ">"), ("diagonals", ">"),
    ("gates", "<"), ("filters", "<"), ("bytes", ">"), ("dense bytes", ">"), ("ratio", ">"),
)


def _size(n: int) -> str:
    """Bytes in a short readable unit: 812 B, 7.4 KiB, 3.1 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fan(f: dict) -> str:
    return f"{f['min']} / {f['mean']:.2f} / {f['max']}"


def _gates(g: dict | None) -> str:
    """A DynaDiag layer's gates in a few words: frozen to K, or effective K of the stored, T and max gate."""
    if g is None:
        return "-"
    if g["frozen"]:
        return f"frozen to {g['k']}"
    return f"eff. K {g['effective_k']} of {g['stored']} (K {g['k']}), T {g['temperature']:.3g}, max {g['max']:.3f}"


def _filters(c: dict | None) -> str:
    """A convolution's filters in a few words: kernel, ablated filters, fan-in per filter, unread channels."""
    if c is None:
        return "-"
    f = c["fan_in_per_filter"]
    return (f"{c['kernel'][0]}x{c['kernel'][1]}/{c['stride']}, {c['ablated_filters']} of {c['filters']} ablated, "
            f"fan-in {f['min']}-{f['max']}, {c['channels_unread']} of {c['c_in']} channels unread")


def _cells(row: dict) -> list[str]:
    n_out, n_in = row["shape"]
    diag = row["diagonals"]
    return [
        row["layer"], row["format"], f"{n_out} x {n_in}", str(row["nnz"]), f"{row['density']:.4f}",
        _fan(row["fan_in"]), _fan(row["fan_out"]),
        "-" if row["ablated"] is None else f"{row['ablated']} of {n_out}",
        "-" if diag is None else f"{diag['K']} of {diag['P']}", _gates(row.get("gates")), _filters(row.get("conv")),
        _size(row["bytes"]["total"]), _size(row["bytes"]["dense"]), f"{row['bytes_ratio']:.3f}",
    ]


def format_report(report: dict) -> str:
    """The text table of :func:`purerigl.report.summary.inspect_model_file`'s result."""
    head = f"{report['kind']} {report['file']}"
    if report["epoch"] is not None:
        head += f" (after epoch {report['epoch']}; its optimizer state is counted in no layer)"
    about = [f"{key} {report[key]}" for key in ("method", "dataset", "sparsity") if report[key] is not None]
    lines = [head + (": " + ", ".join(about) if about else "")]
    total = report["total"]
    rows = [[name for name, _ in COLUMNS]] + [_cells(r) for r in report["layers"]]
    rows.append([
        "total", "", "", str(total["nnz"]), f"{total['density']:.4f}", "", "", "", "", "", "",
        _size(total["bytes"]["total"]), _size(total["bytes"]["dense"]), f"{total['bytes_ratio']:.3f}",
    ])
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    for r in rows:
        cells = [f"{cell:{align}{w}}" for cell, (_, align), w in zip(r, COLUMNS, widths)]
        lines.append("  ".join(cells).rstrip())
    for r in report["layers"]:  # a ViT block's projections per attention head
        if r.get("heads"):
            cells = ", ".join(f"{e['part']}{e['head']} {e['nnz']}" + (f" ({e['ablated']} empty)" if e["ablated"] else "")
                              for e in r["heads"])
            lines.append(f"  {r['layer']} per head (nnz): {cells}")
    lines.append(
        "fan-in: stored inputs per output neuron; fan-out: stored outputs per input; bytes: values + "
        "indices + bias, against a dense float32 layer of the same shape with its bias"
    )
    if report.get("code"):  # a file in a run directory whose config.json records its code
        resumed = "".join(f"; resumed by {describe_code(r)} after epoch {r.get('after_epoch', '?')}"
                          for r in report.get("code_resumed", []))
        lines.append(f"trained by {describe_code(report['code'])}{resumed}")
    return "\n".join(lines)


@click.command()
@click.argument("model_path", metavar="MODEL.npz", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (per-layer dicts and a total).")
def inspect(model_path, as_json):
    """Per-layer summary of a saved model: format, shape, nnz, density, fan-in and fan-out, ablated
    neurons, active diagonals, a convolution's filters (ablated filters, fan-in per filter, input channels no
    filter reads), DynaDiag's gates (effective K = #(gate > 1e-6), temperature, the frozen
    set; with --json every stored offset and the ten largest gates) and memory against a dense layer.

    MODEL.npz may also be a training checkpoint (checkpoint.npz) or a run directory (its model.npz,
    else its checkpoint.npz); in a run directory it also names the code that trained the run (from its
    config.json). Nothing is densified: every number comes from the stored indices.
    """
    report = inspect_model_file(model_path)
    click.echo(json.dumps(report) if as_json else format_report(report))
