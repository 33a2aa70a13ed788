"""`purerigl bench kernels`: matmul, matmul_t and sddmm per format against NumPy dense and SciPy CSR."""

from __future__ import annotations

import os

import click
import numpy as np

from purerigl.formats import Condensed
from purerigl.formats.budget import random_layer

from .._options import FiniteFloatRange, SHAPE
from .._selftest import compare, slot_positions
from .._timing import Timing, memcpy_bandwidth
from ..demo import stored_bytes
from . import bench
from ._shared import (
    FORMAT_NAMES,
    MAX_DENSE,
    OPS,
    QUICK,
    _ratio,
    command_line,
    common_options,
    finish,
    header,
    machine_meta,
    measure,
    product_limit_s,
    quick_default,
    thread_limit,
)
from ._busy import busy_processes

# --------------------------------------------------------------------------------------------- kernels


#: The feature-major twins of OPS (operands and results with the batch last: X^T, dY^T, Y^T, dX^T), the
#: layout a network that keeps its activations feature-major calls (issue 19); baselines in that layout.
FM_OPS = tuple(f"{op}_fm" for op in OPS)


def _kernel_setup(op, W, X, dY):
    """(purerigl call, dense call or None, scipy call or None, expected, magnitude, terms) of one op."""
    if op in FM_OPS:
        return _fm_setup(op, W, X, dY)
    S = W.to_scipy()
    S64 = S.astype(np.float64)
    A = abs(S64)
    X64, dY64 = X.astype(np.float64), dY.astype(np.float64)
    dense_ok = W.n_out * W.n_in <= MAX_DENSE
    Wd = W.to_dense(max_elements=MAX_DENSE) if dense_ok else None
    if op == "matmul":
        WdT, ST = (Wd.T if dense_ok else None), S.T
        return ((lambda: W_backend(W, X, "matmul")), (lambda: X @ WdT) if dense_ok else None, lambda: X @ ST,
                X64 @ S64.T, np.abs(X64) @ A.T, int(np.diff(S64.indptr).max(initial=0)))
    if op == "matmul_t":
        fan_out = np.bincount(S64.indices, minlength=W.n_in)
        return ((lambda: W_backend(W, dY, "matmul_t")), (lambda: dY @ Wd) if dense_ok else None, lambda: dY @ S,
                dY64 @ S64, np.abs(dY64) @ A, int(fan_out.max(initial=0)))
    # sddmm: the dense baseline is the whole dense gradient dY^T X (what a dense layer computes);
    # SciPy has no SDDMM, so there is no SciPy baseline.
    pos_row, pos_col = slot_positions(W)
    G = dY64.T @ X64
    aG = np.abs(dY64).T @ np.abs(X64)
    dYT = np.ascontiguousarray(dY.T)
    return ((lambda: W_backend(W, (X, dY), "sddmm")), lambda: dYT @ X, None,
            G[pos_row, pos_col].reshape(W.values.shape), aG[pos_row, pos_col].reshape(W.values.shape), X.shape[0])


def _fm_setup(op, W, X, dY):
    """:func:`_kernel_setup` of a feature-major op: the operands transposed once, outside the timing;
    the dense and SciPy baselines compute the same transposed results (W X^T, W^T dY^T, dY^T X)."""
    _, _, _, expected, magnitude, terms = _kernel_setup(op[: -len("_fm")], W, X, dY)
    XT, dYT = np.ascontiguousarray(X.T), np.ascontiguousarray(dY.T)  # (n_in, B), (n_out, B)
    backend = _BACKEND["b"]
    S = W.to_scipy()
    Wd = W.to_dense(max_elements=MAX_DENSE) if W.n_out * W.n_in <= MAX_DENSE else None
    if op == "matmul_fm":
        return ((lambda: backend.matmul_fm(W, XT)), (lambda: Wd @ XT) if Wd is not None else None,
                lambda: S @ XT, expected.T, magnitude.T, terms)
    if op == "matmul_t_fm":
        ST = S.T.tocsr()
        return ((lambda: backend.matmul_t_fm(W, dYT)), (lambda: Wd.T @ dYT) if Wd is not None else None,
                lambda: ST @ dYT, expected.T, magnitude.T, terms)
    return ((lambda: backend.sddmm_fm(W, XT, dYT)), lambda: dYT @ XT.T, None, expected, magnitude, terms)


_BACKEND = {}


def W_backend(W, arg, op):
    backend = _BACKEND["b"]
    if op == "sddmm":
        return backend.sddmm(W, *arg)
    return getattr(backend, op)(W, arg)


def _read_bytes(W) -> int:
    """Bytes of the stored matrix the kernel reads: as stored, except that the cpu backend reads the
    column indices of a Condensed matrix with n_in <= 65536 as a uint16 copy (2 bytes, not 4)."""
    if _BACKEND["b"].name == "cpu" and isinstance(W, Condensed) and W.n_in <= 65536:
        return stored_bytes(W) - W.indices.nbytes + 2 * W.indices.size
    return stored_bytes(W)


def _moved_bytes(op, W, X, dY) -> int:
    """Bytes a product must move: the stored matrix (as the kernel reads it), its input and its output."""
    op = op.removesuffix("_fm")
    if op == "matmul":
        return _read_bytes(W) + X.nbytes + dY.nbytes
    if op == "matmul_t":
        return _read_bytes(W) + dY.nbytes + X.nbytes
    return _read_bytes(W) + X.nbytes + dY.nbytes + W.values.nbytes


def run_kernels(backend, shapes, batches, sparsities, ops, formats, *, budget_s, max_call_s, seed, memcpy_bytes):
    _BACKEND["b"] = backend
    rng = np.random.default_rng(seed)
    memcpy = memcpy_bandwidth(n_bytes=memcpy_bytes) / 1e9
    results, notes = [], []
    for shape in shapes:
        n_out, n_in = shape
        for batch in batches:
            X = rng.standard_normal((batch, n_in)).astype(np.float32)
            dY = rng.standard_normal((batch, n_out)).astype(np.float32)
            dense_cache: dict[str, Timing] = {}  # the dense time depends on shape, batch and op only
            for sparsity in sparsities:
                for fmt in formats:
                    W = random_layer(fmt, shape, sparsity, rng)
                    for op in ops:
                        pr, dense, sp, expected, magnitude, terms = _kernel_setup(op, W, X, dY)
                        err, tol, note = compare(np.asarray(pr()), np.asarray(expected), np.asarray(magnitude), terms)
                        if note:
                            raise click.ClickException(
                                f"{op} {fmt} {n_out}x{n_in} batch {batch} sparsity {sparsity}: "
                                f"{note} (max abs err {err:.3g}, tol {tol:.3g}); its timing would mean nothing")
                        t_pr = measure(pr, budget_s=budget_s, max_call_s=max_call_s)
                        if dense is None:
                            t_dense = None
                            msg = f"dense {op} skipped at {n_out}x{n_in}: over {MAX_DENSE} elements"
                            if msg not in notes:
                                notes.append(msg)
                        else:
                            if op not in dense_cache:
                                dense_cache[op] = measure(dense, budget_s=budget_s, max_call_s=max_call_s,
                                                          compiled=True)
                            t_dense = dense_cache[op]
                        t_sp = None if sp is None else measure(sp, budget_s=budget_s, max_call_s=max_call_s,
                                                               compiled=True)
                        us = t_pr.median_us
                        gbps = _moved_bytes(op, W, X, dY) / (t_pr.median_s) / 1e9
                        # the limit (issue 19), batched regimes only (batch 1 has %copy): nnz * batch
                        # multiply-adds at the rate of the dense product measured above
                        limit_s = (product_limit_s(t_dense.median_s, int(W.nnz), n_out, n_in, batch)
                                   if t_dense and batch > 1 else None)
                        results.append({
                            "shape": [n_out, n_in], "batch": batch, "sparsity": sparsity, "op": op, "format": fmt,
                            "nnz": int(W.nnz), "stored_bytes": stored_bytes(W),
                            "purerigl_us": us,
                            "dense_us": t_dense.median_us if t_dense else None,
                            "scipy_us": t_sp.median_us if t_sp else None,
                            "dense_ratio": t_dense.median_us / us if t_dense else None,
                            "scipy_ratio": t_sp.median_us / us if t_sp else None,
                            "purerigl_gbps": gbps,
                            "memcpy_fraction": gbps / memcpy if batch == 1 else None,
                            "dense_gmacs": n_out * n_in * batch / t_dense.median_s / 1e9 if t_dense else None,
                            "limit_us": None if limit_s is None else limit_s * 1e6,
                            "limit_fraction": None if limit_s is None else limit_s / t_pr.median_s,
                            "runs": {"purerigl": t_pr.runs, "dense": t_dense.runs if t_dense else 0,
                                     "scipy": t_sp.runs if t_sp else 0},
                            "max_abs_err": err, "tol": tol,
                        })
    if any(op in FM_OPS for op in ops):
        notes.append("*_fm: the feature-major ops (batch last: X^T, dY^T in, Y^T, dX^T out), as a network that "
                     "keeps its activations feature-major calls them; dense and SciPy baselines in the same "
                     "layout (W X^T, W^T dY^T, dY^T X), operands transposed outside the timing")
    if "sddmm" in ops or "sddmm_fm" in ops:
        notes.append("sddmm: SciPy has no SDDMM, so no SciPy baseline; dense = the whole dY^T X (BLAS)")
    notes.append("dense time depends only on shape, batch and op: it is measured once per (shape, batch, op) "
                 "and shared by the sparsities and formats")
    return results, notes, memcpy


def format_kernels(report: dict) -> str:
    m = report["meta"]
    lines = header(m, "purerigl bench kernels: sparse products against NumPy dense (BLAS) and SciPy CSR, float32")
    lines += [
        f"memcpy bandwidth (read + write) measured in this run: {m['memcpy_gbps']:.2f} GB/s",
        "ops: matmul Y = X W^T; matmul_t dX = dY W; sddmm dW = (dY^T X) at stored entries; *_fm the same "
        "with the batch last (Y^T = W X^T, dX^T = W^T dY^T)",
        "ratios: baseline time / purerigl time (> 1: purerigl is faster); GB/s: stored matrix + input + output "
        "bytes per second; %copy at batch 1 only",
        "limit (batch > 1): the time of the sparse product's nnz * batch multiply-adds at the rate of the dense "
        "BLAS product measured in this run, i.e. dense us * nnz / (n_out * n_in); %limit = limit / purerigl time "
        "(100%: the sparse work runs at BLAS's multiply-add rate)",
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append("")
    head = (f"{'shape':>10} {'sparsity':>8} {'batch':>5} {'op':<11} {'format':<9} {'purerigl us':>12} "
            f"{'dense us':>11} {'scipy us':>11} {'dense/pr':>9} {'scipy/pr':>9} {'GB/s':>7} {'%copy':>6} "
            f"{'limit us':>10} {'%limit':>7}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        f = r["memcpy_fraction"]
        lf = r.get("limit_fraction")
        lines.append(
            f"{str(r['shape'][0]) + 'x' + str(r['shape'][1]):>10} {r['sparsity']:>8.2f} {r['batch']:>5} {r['op']:<11} {r['format']:<9} "
            f"{r['purerigl_us']:>12.1f} {_us(r['dense_us']):>11} {_us(r['scipy_us']):>11} "
            f"{_ratio(r['dense_ratio']):>9} {_ratio(r['scipy_ratio']):>9} {r['purerigl_gbps']:>7.2f} "
            f"{'-' if f is None else f'{f:.0%}':>6} {_us(r.get('limit_us')):>10} "
            f"{'-' if lf is None else f'{lf:.0%}':>7}"
        )
    return "\n".join(lines)


def _us(x) -> str:
    return "-" if x is None else f"{x:.1f}"


@bench.command()
@click.option("--shape", "shapes", type=SHAPE, multiple=True, default=("768x3072", "4096x4096"), show_default=True,
              help="W shape N_OUTxN_IN (repeatable).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 8, 64, 256, 2048),
              show_default=True, help="Batch size (repeatable).")
@click.option("--sparsity", "sparsities", type=FiniteFloatRange(0.0, 1.0, max_open=True), multiple=True,
              default=(0.8, 0.9, 0.95, 0.99), show_default=True, help="Fraction of zero weights (repeatable).")
@click.option("--op", "ops", type=click.Choice(OPS + FM_OPS), multiple=True, default=OPS, show_default=True,
              help="Operation (repeatable); the *_fm ops are the feature-major twins (batch last).")
@click.option("--format", "formats", type=click.Choice(FORMAT_NAMES), multiple=True, default=FORMAT_NAMES,
              show_default=True, help="Storage format (repeatable).")
@common_options
@click.pass_context
def kernels(ctx, shapes, batches, sparsities, ops, formats, budget, max_call, threads, busy, json_path, quick,
            seed, backend):
    """matmul, matmul_t, sddmm per format against NumPy dense (BLAS) and SciPy CSR."""
    q = QUICK["kernels"]
    shapes = quick_default(ctx, "shapes", shapes, q["shapes"])
    batches = quick_default(ctx, "batches", batches, q["batches"])
    sparsities = quick_default(ctx, "sparsities", sparsities, q["sparsities"])
    budget = quick_default(ctx, "budget", budget, 0.005)
    ctx.params.update(shapes=shapes, batches=batches, sparsities=sparsities, budget=budget)
    with thread_limit(threads), busy_processes(busy):
        meta = machine_meta()
        results, notes, memcpy = run_kernels(
            backend, shapes, batches, sparsities, ops, formats, budget_s=budget, max_call_s=max_call, seed=seed,
            memcpy_bytes=(1 << 22) if quick else (1 << 28))
    meta.update(benchmark="kernels", command=command_line(ctx), backend=backend.name, budget_s=budget,
                max_call_s=max_call, memcpy_gbps=memcpy, seed=seed, dtype="float32", busy=busy,
                loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                shapes=[list(s) for s in shapes], batches=list(batches), sparsities=list(sparsities),
                ops=list(ops), formats=list(formats))
    report = {"meta": meta, "notes": notes, "results": results}
    finish(report, format_kernels(report), json_path)
