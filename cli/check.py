"""``purerigl check``: self-test a backend on this machine against SciPy CSR products, its sparse
convolution against SciPy's dense 2-d correlation, and its DST updates against the methods' plain
NumPy specifications (:mod:`purerigl.dst.spec`).

Exit code 0 when every check passes, 1 when any fails, 2 on bad input (e.g. an unknown backend).
"""

from __future__ import annotations

import json
import time

import click

from ._conv_selftest import run_conv_selftest
from ._options import backend_option, seed_option
from ._selftest import Result, run_selftest, selftest_plan
from ._update_selftest import run_update_selftest


def format_table(results: list[Result]) -> str:
    """The results as an aligned text table, one line per (format, op, shape, batch)."""
    header = ("format", "op", "shape", "batch", "max abs err", "tolerance", "result")
    rows = [
        (
            r.format,
            r.op,
            f"{r.shape[0]}x{r.shape[1]}",
            str(r.batch),
            f"{r.max_abs_err:.2e}",
            f"{r.tol:.2e}",
            "PASS" if r.passed else f"FAIL  {r.note}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    right = {3, 4, 5}  # numbers right-aligned

    def line(row):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells + [row[-1]])

    return "\n".join([line(header), line(tuple("-" * w for w in widths) + ("-" * 6,)), *map(line, rows)])


@click.command()
@backend_option
@seed_option
@click.option("--quick", is_flag=True, help="Skip the 3072 -> 768 layer (small shapes only).")
@click.option("--tiny", is_flag=True, help="Tiny shapes and batches only (automatic on the CUDA simulator).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def check(backend, seed: int, quick: bool, tiny: bool, as_json: bool) -> None:
    """Test every op of a backend against SciPy CSR products.

    Runs matmul, matmul_t, sddmm and grad_at for the condensed, diagonal and csr formats on tall, wide
    and square shapes (and the 3072 -> 768 layer at 90% sparsity unless --quick), batch 1 and 33.
    With --tiny (chosen automatically for the cuda backend on Numba's CUDA simulator, whose kernels
    run as Python threads) the shapes are at most 12 wide and the batches 1 and 3.
    Then a sparse convolution (SparseConv2d: forward, input, value and bias gradients) in every
    format, against a dense convolution by SciPy's correlate2d / convolve2d, with padding, strides
    and batch 1, and DynaDiag's soft gated diagonal convolution (the same, over the gated filters, and
    the gradient of its scores alpha through the soft top-K's Jacobian).
    Then one topology update of every DST method (static, RigL, SET on CSR and condensed, SRigL with
    and without ablation, GSE with each sampler, diag-rigl, DynaDiag) on the backend against the method's NumPy
    specification (purerigl/dst/spec/), on integer data where both must agree exactly: structure,
    values, momentum and statistics.
    Exits with 1 if any check fails.
    """
    simulated = bool(getattr(backend.module, "on_simulator", lambda: False)())
    tiny = tiny or simulated
    cases, batches = selftest_plan(quick=quick, tiny=tiny)
    t0 = time.perf_counter()
    results = run_selftest(backend, seed=seed, cases=cases, batches=batches)
    results += run_conv_selftest(backend, seed=seed, tiny=tiny)
    results += run_update_selftest(backend, seed=seed, tiny=tiny)
    seconds = time.perf_counter() - t0
    failed = [r for r in results if not r.passed]
    if as_json:
        report = {
            "backend": backend.name,
            "seed": seed,
            "quick": quick,
            "tiny": tiny,
            "simulator": simulated,
            "cases": [{"shape": list(s), "density": d, "label": lab} for s, d, lab in cases],
            "batches": list(batches),
            "passed": not failed,
            "n_checks": len(results),
            "n_failed": len(failed),
            "seconds": round(seconds, 3),
            "results": [r.as_dict() for r in results],
        }
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"purerigl check: backend {backend.name!r}, seed {seed}")
        click.echo("  products (matmul, matmul_t, sddmm, grad_at): against SciPy CSR in float64")
        click.echo("  convolutions (SparseConv2d forward and gradients; DynaDiag's gated one also alpha's): "
                   "against SciPy's correlate2d / convolve2d in float64")
        click.echo(f"  updates: {backend.name!r}'s fast update of each method against its NumPy specification "
                   "(purerigl/dst/spec/<method>.py), exact; dynadiag also its gated layer's output and "
                   "gradients, to float32 rounding (relative 1e-5)")
        if simulated:
            click.echo("running on Numba's CUDA simulator (slow): tiny shapes only")
        click.echo(format_table(results))
        verdict = "all passed" if not failed else f"{len(failed)} FAILED"
        click.echo(f"{len(results)} checks, {verdict} ({seconds:.1f} s)")
    if failed:
        click.get_current_context().exit(1)
