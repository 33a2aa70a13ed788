"""Time the sparse forward product ``Y = X W^T`` against NumPy dense (BLAS) and SciPy CSR.

The layer is the SRigL paper's: 3072 -> 768 (W is 768 x 3072) at 90% sparsity, fp32, batch 1 and 256,
in each purerigl format (condensed, diagonal, csr). All products run in one process on the same
inputs; each is checked against SciPy before it is timed; warm-up (Numba compilation) is excluded and
the median of many runs is reported (see ``purerigl.cli._timing``).

Baselines, prepared before timing:

- dense: ``X @ W_dense.T`` (NumPy -> BLAS sgemm) with ``W_dense`` the same matrix stored densely;
- scipy: ``X @ W_csr.T`` with ``W_csr = W.to_scipy()``, SciPy computing the same product.

Ratios are baseline time / purerigl time: above 1 means purerigl is faster.

Run: ``python benchmarks/bench_matmul.py [--backend cpu] [--batch 1 --batch 256] [--threads 4]
[--json benchmarks/results/matmul.json]``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import click
import numba
import numpy as np
import scipy.linalg  # noqa: F401  loads SciPy's own BLAS now, so that --threads limits it too

from purerigl.cli._options import SHAPE, backend_option, seed_option
from purerigl.cli._selftest import compare
from purerigl.cli._timing import blas_info, blas_summary, memcpy_bandwidth, time_call
from purerigl.cli.demo import stored_bytes
from purerigl.cli.info import library_versions, numba_threading
from purerigl.formats import FORMATS
from purerigl.report.provenance import code_version, describe_code

#: Largest dense baseline built, in elements (1 GiB of float32).
MAX_DENSE = 1 << 28


def bench_format(backend, W, X: np.ndarray, *, repeat: int, budget_s: float) -> dict:
    """Check, then time purerigl, dense and SciPy products of one matrix ``W`` and input ``X`` (B, n_in)."""
    W_denseT = W.to_dense(max_elements=MAX_DENSE).T  # (n_in, n_out) view: BLAS reads it transposed
    W_csrT = W.to_scipy().T  # SciPy's transpose of the CSR matrix, prepared once
    runs = {
        "purerigl": lambda: backend.matmul(W, X),
        "dense": lambda: X @ W_denseT,
        "scipy": lambda: X @ W_csrT,
    }
    S = W.to_scipy().astype(np.float64)
    X64 = X.astype(np.float64)
    expected, magnitude = X64 @ S.T, np.abs(X64) @ abs(S).T
    fan_in = int(np.diff(S.indptr).max(initial=0))
    errors = {name: compare(np.asarray(fn()), expected, magnitude, fan_in) for name, fn in runs.items()}
    sync = getattr(backend, "synchronize", None)
    timings = {
        name: time_call(fn, repeat=repeat, budget_s=budget_s, sync=sync if name == "purerigl" else None)
        for name, fn in runs.items()
    }
    t = {name: timing.median_us for name, timing in timings.items()}
    moved = stored_bytes(W) + X.nbytes + X.shape[0] * W.n_out * 4  # bytes read (W, X) and written (Y)
    return {
        "nnz": W.nnz,
        "density": W.density,
        "stored_bytes": stored_bytes(W),
        "purerigl_us": t["purerigl"],
        "dense_us": t["dense"],
        "scipy_us": t["scipy"],
        "dense_ratio": t["dense"] / t["purerigl"],
        "scipy_ratio": t["scipy"] / t["purerigl"],
        "purerigl_gbps": moved / (t["purerigl"] * 1e-6) / 1e9,
        "runs": {name: timing.runs for name, timing in timings.items()},
        "max_abs_err": {name: err for name, (err, _tol, _note) in errors.items()},
        "tol": errors["purerigl"][1],
        "passed": not errors["purerigl"][2],
    }


def run_bench(backend, shape, sparsity: float, batches, *, repeat: int, budget_s: float, seed: int,
              measure_memcpy: bool = True) -> dict:
    """Benchmark every format and batch size; returns ``{"meta": ..., "results": [...]}`` (JSON-ready)."""
    rng = np.random.default_rng(seed)
    matrices = {name: cls.random(shape, 1.0 - sparsity, rng) for name, cls in FORMATS.items()}
    results = []
    for batch in batches:
        X = rng.standard_normal((batch, shape[1])).astype(np.float32)  # (B, n_in)
        for name, W in matrices.items():
            row = bench_format(backend, W, X, repeat=repeat, budget_s=budget_s)
            results.append({"format": name, "batch": batch, **row})
    meta = {
        "benchmark": "matmul",
        "backend": backend.name,
        "shape": list(shape),
        "layer": f"{shape[1]} -> {shape[0]}",
        "sparsity": sparsity,
        "batches": list(batches),
        "dtype": "float32",
        "timing": {"statistic": "median", "max_runs": repeat, "budget_s": budget_s, "warmup_runs": 2},
        "numba": numba_threading(initialise=True),
        "blas": blas_info(),  # [] when unknown (no threadpoolctl)
        "versions": library_versions(),
        "code": code_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "memcpy_gbps": memcpy_bandwidth() / 1e9 if measure_memcpy else None,
        "seed": seed,
    }
    return {"meta": meta, "results": results}


def format_report(report: dict) -> str:
    """The header (machine, threads, versions) and one table line per (batch, format)."""
    m = report["meta"]
    v = m["versions"]
    lines = [
        f"matmul Y = X W^T, layer {m['layer']} (W {m['shape'][0]}x{m['shape'][1]}), "
        f"sparsity {m['sparsity']:.1%}, float32, backend {m['backend']!r}",
        f"threads: numba {m['numba']['num_threads']} ({m['numba']['threading_layer']}); "
        f"BLAS {blas_summary(m['blas'])}; {m['cpu_count']} CPUs",
        f"versions: purerigl {v['purerigl']}, python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, "
        f"scipy {v['scipy']}; {describe_code(m.get('code'))}",
        f"timing: median of up to {m['timing']['max_runs']} runs or ~{m['timing']['budget_s']} s each, "
        "warm-up excluded"
        + (f"; memcpy bandwidth {m['memcpy_gbps']:.1f} GB/s" if m["memcpy_gbps"] else ""),
        "ratios: baseline time / purerigl time (> 1: purerigl is faster)",
        "",
    ]
    head = (f"{'format':<10} {'batch':>5} {'nnz':>8} {'purerigl us':>12} {'dense us':>10} {'scipy us':>10} "
            f"{'dense/pr':>9} {'scipy/pr':>9} {'pr GB/s':>8}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['format']:<10} {r['batch']:>5} {r['nnz']:>8} {r['purerigl_us']:>12.1f} "
            f"{r['dense_us']:>10.1f} {r['scipy_us']:>10.1f} {r['dense_ratio']:>8.2f}x "
            f"{r['scipy_ratio']:>8.2f}x {r['purerigl_gbps']:>8.2f}"
            + ("" if r["passed"] else "  WRONG RESULT")
        )
    return "\n".join(lines)


@click.command()
@backend_option
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 256),
              show_default=True, help="Batch size (repeatable).")
@click.option("--sparsity", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.9, show_default=True,
              help="Fraction of zero weights, in [0, 1).")
@click.option("--shape", type=SHAPE, default="768x3072", show_default=True, help="W shape N_OUTxN_IN.")
@click.option("--repeat", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Most timed runs per product.")
@click.option("--budget", type=click.FloatRange(min=0.0), default=0.5, show_default=True,
              help="Seconds of timed runs per product (at least 5 runs).")
@click.option("--threads", type=click.IntRange(1, numba.config.NUMBA_NUM_THREADS), default=None,
              help="Threads for Numba and BLAS (BLAS only with threadpoolctl).  [default: all]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results to this JSON file.")
@click.option("--no-memcpy", is_flag=True, help="Skip measuring memory-copy bandwidth.")
@seed_option
def main(backend, batches, sparsity, shape, repeat, budget, threads, json_path, no_memcpy, seed):
    """Time matmul of a sparse layer in every format against NumPy dense and SciPy CSR."""
    limit = nullcontext()
    if threads is not None:
        numba.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits

            limit = threadpool_limits(limits=threads, user_api="blas")
        except ImportError:
            click.echo("note: threadpoolctl is not installed; BLAS threads are not limited", err=True)
    with limit:
        report = run_bench(backend, shape, sparsity, batches, repeat=repeat, budget_s=budget, seed=seed,
                           measure_memcpy=not no_memcpy)
        click.echo(format_report(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    if not all(r["passed"] for r in report["results"]):
        click.echo("error: a purerigl product did not match SciPy; its timing is meaningless", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
