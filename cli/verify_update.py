"""``purerigl verify-update``: hold one update step of a researcher's own DST code to purerigl's rule.

The checks are :mod:`purerigl.dst.verify`'s; this module reads the options and prints. Exit code 0
when every layer agrees (equal, or different only by ties or random growth), 1 when a layer differs,
2 on bad input (a one-line message naming the file, layer and key).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from purerigl.dst.verify import LAYER_FORMATS, report_dict, verify_files
from ._options import FiniteFloatRange

#: Items (positions, rows, diagonals) printed per finding before "... and N more" (--json has all).
SHOWN = 12


#: How a position is named, by the number of axes of the layer's weight (a convolution's is its weight's
#: index: filter, input channel, then the kernel's axes).
POSITION_NAMES = {2: "(row, col)", 3: "(filter, channel, i)", 4: "(filter, channel, i, j)"}


def _items(unit: str, items: list, ndim: int = 2) -> str:
    if unit == "position":
        shown = ["(" + ", ".join(str(v) for v in p) + ")" for p in items[:SHOWN]]
        name = "at " + POSITION_NAMES.get(ndim, "(filter, index...)")
    else:
        shown = [str(v) for v in items[:SHOWN]]
        name = {"diagonal": "diagonals", "row": "rows"}[unit]
    more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{name}: {' '.join(shown)}{more}"


def format_report(layers: list[dict], head: str) -> str:
    """The text report of :func:`purerigl.dst.verify.report_dict` results, one block per layer."""
    lines = [head]
    for r in layers:
        c = r["counts"]
        shape = f"{r['shape'][0]} x {r['shape'][1]}, {r['format']}"
        ndim = len(r["weight_shape"])
        if ndim > 2:  # a convolution: its filters as the rows of the matrix the rule ran on
            shape = f"{' x '.join(map(str, r['weight_shape']))} filters as {shape}"
        word = {"equal": "equal", "agrees": "agrees", "differs": "DIFFERS"}[r["status"]]
        lines.append(f"{r['layer']} ({shape}): {word}  (active {c['active_before']} -> {c['active_after']}: "
                     f"{c['gone']} gone, {c['new']} new; purerigl: {c['ours_gone']} gone, {c['ours_new']} new)")
        for f in r["findings"]:
            tag = "allowed" if f["allowed"] else "FAIL"
            lines.append(f"  {f['cause']} [{tag}]: {f['message']}")
            if f["items"] and not f["allowed"]:  # an allowed difference is the lines "only in ..." below
                lines.append(f"    {_items(f['unit'], f['items'], ndim)}")
        if r["status"] != "equal":
            for side in ("only_yours", "only_ours"):
                if r[side]:
                    who = "only in yours" if side == "only_yours" else "only in purerigl's"
                    lines.append(f"  {who}: {_items(r['unit'], r[side], ndim)}")
    bad = sum(r["status"] == "differs" for r in layers)
    lines.append(f"{len(layers) - bad} of {len(layers)} layers agree" + (f"; {bad} differ" if bad else ""))
    return "\n".join(lines)


@click.command("verify-update")
@click.option("--method", type=click.Choice(list(LAYER_FORMATS)), required=True,
              help="The method the update implements.")
@click.argument("before", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--alpha", type=FiniteFloatRange(0.0, 1.0), required=True,
              help="The drop fraction the step used (already decayed by the schedule).")
@click.option("--gamma-sal", type=FiniteFloatRange(min=0.0), default=0.3, show_default=True,
              help="SRigL neuron ablation threshold (0: no ablation), as in purerigl train.")
@click.option("--salt", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="purerigl's tie salt (only its own answer depends on it, never the verdict).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the text report.")
def verify_update(method, before, after, alpha, gamma_sal, salt, as_json):
    """Check one mask update of your own DST code (masked-dense) against purerigl's rule.

    BEFORE and AFTER are .npz (or .safetensors, with the safetensors extra) files holding, per layer
    L: before the update L.weight (float32, zero off the mask), L.mask (bool) and L.grad (the
    gradient G = dY^T X the update scores) or L.x and L.dy (the batch); optional L.is_output,
    L.budget, L.candidates (GSE). After it: L.mask and L.weight. A convolution's arrays are
    (c_out, c_in, kh, kw), checked as the matrix of its filters; its batch may be the images, with
    L.stride and L.padding. Prints per layer `equal`, or the
    positions that differ with their cause; ties are reported and allowed. Exit 0 when every layer
    agrees, 1 when one differs, 2 on bad input. Details: docs/verify.md.
    """
    reports = verify_files(method, before, after, alpha, gamma_sal=gamma_sal, salt=salt)
    layers = [report_dict(r) for r in reports]
    differs = any(r["status"] == "differs" for r in layers)
    if as_json:
        status = "differs" if differs else ("equal" if all(r["status"] == "equal" for r in layers) else "agrees")
        click.echo(json.dumps({"method": method, "before": str(before), "after": str(after), "alpha": alpha,
                               "gamma_sal": gamma_sal, "salt": salt, "status": status,
                               "exit_code": int(differs), "layers": layers}))
    else:
        head = f"verify-update --method {method} --alpha {alpha}: {before} -> {after}"
        click.echo(format_report(layers, head))
    if differs:
        click.get_current_context().exit(1)
