"""``purerigl demo``: a first run. One 90%-sparse 3072 -> 768 layer in each format, one product each.

For each format it prints what is stored (nnz, density, bytes against a dense float32 matrix), checks
the product against SciPy CSR and times it. Exit code 1 on a mismatch.
"""

from __future__ import annotations

import click
import numpy as np

from purerigl.formats import FORMATS

from ._options import FiniteFloatRange, SHAPE, backend_option, seed_option
from ._selftest import compare
from ._timing import time_call


def stored_bytes(W) -> int:
    """Bytes of every array the format object holds (values and index arrays)."""
    return sum(a.nbytes for a in vars(W).values() if isinstance(a, np.ndarray))


def demo_rows(backend, shape, sparsity: float, batch: int, seed: int, budget_s: float = 0.2) -> list[dict]:
    """Build, check and time one layer per format; returns one dict per format."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, shape[1])).astype(np.float32)  # (B, n_in)
    rows = []
    for name, cls in FORMATS.items():
        W = cls.random(shape, 1.0 - sparsity, rng)
        S = W.to_scipy().astype(np.float64)
        got = backend.matmul(W, X)  # (B, n_out); also the warm-up (compilation)
        X64 = X.astype(np.float64)
        err, tol, note = compare(got, X64 @ S.T, np.abs(X64) @ abs(S).T, int(np.diff(S.indptr).max()))
        timing = time_call(lambda: backend.matmul(W, X), budget_s=budget_s, repeat=200)
        rows.append(
            {
                "format": name,
                "nnz": W.nnz,
                "density": W.density,
                "stored_bytes": stored_bytes(W),
                "dense_bytes": W.n_out * W.n_in * 4,
                "max_abs_err": err,
                "tol": tol,
                "passed": not note,
                "note": note,
                "median_us": timing.median_us,
                "runs": timing.runs,
            }
        )
    return rows


@click.command()
@backend_option
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True, help="Rows of X.")
@click.option(
    "--sparsity",
    type=FiniteFloatRange(0.0, 1.0, max_open=True),
    default=0.9,
    show_default=True,
    help="Fraction of weights that are zero, in [0, 1).",
)
@click.option("--shape", type=SHAPE, default="768x3072", show_default=True, help="Weight shape N_OUTxN_IN.")
@seed_option
def demo(backend, batch: int, sparsity: float, shape: tuple[int, int], seed: int) -> None:
    """Multiply a batch by a 90%-sparse 3072->768 layer in each format."""
    n_out, n_in = shape
    click.echo(
        f"purerigl demo: layer {n_in} -> {n_out} (W is {n_out}x{n_in}), sparsity {sparsity:.0%}, "
        f"batch {batch}, backend {backend.name!r}; Y = X W^T checked against SciPy CSR"
    )
    rows = demo_rows(backend, shape, sparsity, batch, seed)
    header = (
        f"{'format':<10} {'nnz':>9} {'density':>8} {'stored KiB':>11} {'of dense':>9} {'max abs err':>12} "
        f"{'time/product':>13}  result"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        click.echo(
            f"{r['format']:<10} {r['nnz']:>9} {r['density']:>8.4f} {r['stored_bytes'] / 1024:>11.1f} "
            f"{r['stored_bytes'] / r['dense_bytes']:>9.1%} {r['max_abs_err']:>12.2e} "
            f"{r['median_us']:>10.1f} us  {'ok' if r['passed'] else 'MISMATCH ' + r['note']}"
        )
    click.echo(f"dense float32 W: {rows[0]['dense_bytes'] / 1024:.1f} KiB; times: medians after warm-up")
    if not all(r["passed"] for r in rows):
        click.get_current_context().exit(1)
