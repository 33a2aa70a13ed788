"""Max pooling over 2 x 2 windows at stride 2: the written-out kernels against the general ones, in one process.

The built-in networks pool with 2 x 2 windows at stride 2 (LeNet-5 and VGG-small). The cpu backend's
general kernels (:func:`purerigl.kernels.cpu.pooling._maxpool` and ``_maxpool_backward``) walk a
k x k window with a branch per value and find the window's row and column by dividing by a run-time k;
``_maxpool_2x2`` and ``_maxpool_backward_2x2`` write the four values out, compare them with selects,
and find the offset by shift and mask. This script times each pair alternately
(:func:`~purerigl.cli.bench._train_common.paired_times`), as the parallel kernel and as its serial
twin (what a driver runs on a busy machine or for small work, :mod:`purerigl.kernels.cpu._serial`), on
the networks' pooling inputs at batch 64, and fails unless both give the same maxima, offsets and
input gradient bit for bit. Run::

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/maxpool_2x2.py --json benchmarks/results/maxpool-2x2-2core.json
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
import numpy as np

from purerigl.cli.bench._shared import machine_meta
from purerigl.cli.bench._train_common import loadavg, paired_times
from purerigl.kernels.cpu import pooling as pk
from purerigl.kernels.cpu._serial import serial_twin
from purerigl.report.provenance import describe_code

#: The pooling inputs (C, H, W) of the built-in networks at their bench input shapes.
POOLS = {"lenet5 pool1": (6, 28, 28), "lenet5 pool2": (16, 10, 10),
         "vgg-small pool1": (32, 28, 28), "vgg-small pool2": (64, 14, 14)}


def pool_rows(batch: int, budget_s: float, seed: int) -> list[dict]:
    """One row per pooling input and twin: forward and backward, general -> written out."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (C, H, W) in POOLS.items():
        X = rng.standard_normal((batch, C, H, W)).astype(np.float32)
        Ho, Wo = H // 2, W // 2
        dY = rng.standard_normal((batch, C, Ho, Wo)).astype(np.float32)
        for twin in ("parallel", "serial"):
            pick = (lambda k: k) if twin == "parallel" else serial_twin
            general, general_bwd = pick(pk._maxpool), pick(pk._maxpool_backward)
            two, two_bwd = pick(pk._maxpool_2x2), pick(pk._maxpool_backward_2x2)
            Y_g, A_g = np.empty((batch, C, Ho, Wo), np.float32), np.empty((batch, C, Ho, Wo), np.intp)
            Y_2, A_2 = np.empty_like(Y_g), np.empty_like(A_g)
            general(X, Y_g, A_g, 2, 2)
            two(X, Y_2, A_2)
            dX_g, dX_2 = np.zeros_like(X), np.zeros_like(X)
            general_bwd(dY, A_g, dX_g, 2, 2)
            two_bwd(dY, A_g, dX_2)
            same = (np.array_equal(Y_g.view(np.int32), Y_2.view(np.int32)) and np.array_equal(A_g, A_2)
                    and np.array_equal(dX_g.view(np.int32), dX_2.view(np.int32)))
            f_2, f_g = paired_times(lambda: two(X, Y_2, A_2), lambda: general(X, Y_g, A_g, 2, 2),
                                    budget_s=budget_s, max_call_s=5.0)
            # the backward accumulates into a zeroed buffer: the zeroing is timed on both sides
            b_2, b_g = paired_times(lambda: two_bwd(dY, A_g, np.zeros_like(X)),
                                    lambda: general_bwd(dY, A_g, np.zeros_like(X), 2, 2),
                                    budget_s=budget_s, max_call_s=5.0)
            rows.append({"pool": name, "input": [batch, C, H, W], "twin": twin, "same_bits": bool(same),
                         "forward_general_ms": f_g.median_s * 1e3, "forward_2x2_ms": f_2.median_s * 1e3,
                         "backward_general_ms": b_g.median_s * 1e3, "backward_2x2_ms": b_2.median_s * 1e3,
                         "runs": f_2.runs})
    return rows


def table(rows) -> str:
    lines = ["| pooling | input | kernel | forward general ms | 2x2 ms | speed-up | backward general ms | 2x2 ms | speed-up |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['pool']} | {'x'.join(map(str, r['input']))} | {r['twin']} | "
                     f"{r['forward_general_ms']:.2f} | {r['forward_2x2_ms']:.2f} | "
                     f"{r['forward_general_ms'] / r['forward_2x2_ms']:.2f}x | {r['backward_general_ms']:.2f} | "
                     f"{r['backward_2x2_ms']:.2f} | {r['backward_general_ms'] / r['backward_2x2_ms']:.2f}x |")
    return "\n".join(lines)


@click.command()
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--budget", type=click.FloatRange(min=0), default=0.3, show_default=True,
              help="Seconds of timed pairs per measurement (at least 5 pairs).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(batch, budget, seed, json_path):
    """Time the 2 x 2 / stride 2 max pooling kernels against the general ones."""
    meta = machine_meta()
    rows = pool_rows(batch, budget, seed)
    meta.update({"command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "loadavg_end": loadavg(),
                 "batch": batch})
    click.echo(f"max pooling 2x2/2 on cpu; {describe_code(meta['code'])}; batch {batch}; "
               f"load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    click.echo(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if not all(r["same_bits"] for r in rows):
        raise click.ClickException("the 2x2 kernels differ from the general ones")


if __name__ == "__main__":
    main()
