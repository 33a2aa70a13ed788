"""``purerigl plot RUN_DIR``: PNG figures of a training run (the drawing: purerigl.report.plots)."""

from __future__ import annotations

from pathlib import Path

import click

from purerigl.report.plots import require_matplotlib, write_run_plots


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Directory for the PNG files  [default: RUN_DIR/plots]")
def plot(run_dir, out):
    """Draw a run's figures as PNG files: loss and accuracy per epoch (curves.png), per-layer density,
    changed connections, explored positions (ever active) and ablated neurons per epoch (density.png), and for every sparse layer of
    model.npz its connectivity (layer<i>_connectivity.png: mask or block density, fan-in and fan-out
    histograms, ablated neurons or active diagonals).

    Needs matplotlib: pip install 'purerigl[plot]'.
    """
    require_matplotlib()  # before reading anything: a missing extra is the first thing to say
    written, notes = write_run_plots(run_dir, out)
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {len(written)} file(s):")
    for path in written:
        click.echo(f"  {path}")
