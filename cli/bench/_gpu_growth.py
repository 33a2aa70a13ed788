"""The growth part of ``purerigl bench gpu``: RigL's growth selection on the device against the dense route.

RigL grows the m positions of largest |G|, G = dY^T X (n_out, n_in), outside the active set. purerigl
selects them streamed (``topk_grad`` on device arrays: the gradient in tiles, never stored whole). A
masked-dense implementation computes G whole with one dense product and takes a top-k of its
magnitudes. One row per (sparsity, batch): the time of purerigl's selection; per baseline library,
the time of one dense dY^T X and of the dense route (dY^T X, |.|, the active set masked, top-m:
``torch.topk`` or ``cupy.argpartition``), and the share of purerigl's m positions that the dense route
chose too (a check: equal scores and float32 summation order aside, the same set). Its table is
rendered by :mod:`._gpu_report`.
"""

from __future__ import annotations

import traceback

import numpy as np

from purerigl.formats.budget import random_layer

from ._gpu_devices import _one_line, time_device
from ._gpu_report import _fmt_ms, _fmt_pct

#: RigL's drop fraction: the layer regrows this share of its active connections.
DROP_FRACTION = 0.3



def _lib_cells(lib, X, dY, active, m: int, chosen: np.ndarray | None, timing: dict) -> dict:
    """Times of one library's dense dY^T X and dense top-m, and the overlap with purerigl's set."""
    try:
        Xd, dYd, actived = lib.upload(X), lib.upload(dY), lib.upload(active)
        grad = lib.dense_grad(Xd, dYd)
        select, fetch = lib.dense_topk(Xd, dYd, actived, m)
        picked = fetch(select())
        lib.synchronize()
        overlap = None if chosen is None else len(np.intersect1d(chosen, np.asarray(picked))) / max(1, len(chosen))
        return {"grad": time_device(grad, lib, **timing), "topk": time_device(select, lib, **timing),
                "overlap": overlap}
    except Exception as err:  # noqa: BLE001 - reported in the row; the other cells still run
        return {"error": f"{type(err).__name__}: {_one_line(err)}", "traceback": traceback.format_exc(limit=6)}


def growth_row(clock, libs, shape, sparsity: float, batch: int, *, seed: int, timing: dict) -> dict:
    """Time purerigl's selection and every library's dense route on one (sparsity, batch); one JSON row."""
    n_out, n_in = shape
    W = random_layer("csr", shape, sparsity, np.random.default_rng(seed))  # its positions: the active set
    m = max(1, int(DROP_FRACTION * W.nnz))
    rng = np.random.default_rng([seed, batch, 1])
    X = rng.standard_normal((batch, n_in)).astype(np.float32)
    dY = rng.standard_normal((batch, n_out)).astype(np.float32)
    row = {"sparsity": sparsity, "batch": batch, "shape": [n_out, n_in], "nnz": int(W.nnz), "m": m,
           "purerigl_ms": None, "baselines": {}}
    chosen = None
    try:
        backend = clock.backend
        d_X, d_dY = backend.to_device(X), backend.to_device(dY)
        d_indptr = backend.to_device(W.indptr.astype(np.int64))
        d_indices = backend.to_device(W.indices.astype(np.int64))

        def select():
            return backend.topk_grad(d_X, d_dY, m, d_indptr, d_indices, 0)

        rows, cols = select()
        chosen = backend.to_host(rows) * n_in + backend.to_host(cols)
        row["purerigl"] = time_device(select, clock, **timing)
        row["purerigl_ms"] = row["purerigl"]["ms"]
    except Exception as err:  # noqa: BLE001 - reported in the row (and as a failure of the command)
        row["error"] = f"{type(err).__name__}: {_one_line(err)}"
        row["traceback"] = traceback.format_exc(limit=6)
    active = W.to_dense() != 0  # (n_out, n_in) bool: the baselines' mask
    for lib in libs:
        cells = _lib_cells(lib, X, dY, active, m, chosen, timing)
        for kind in ("grad", "topk"):
            ms = cells[kind]["ms"] if kind in cells else None
            cells[f"{kind}_ms"] = ms
            cells[f"{kind}_ratio"] = ms / row["purerigl_ms"] if ms is not None and row["purerigl_ms"] else None
        row["baselines"][lib.name] = cells
    return row


def run_growth(clock, libs, shape, sparsities, batches, *, seed, timing, progress, rows: list,
               checkpoint=lambda: None) -> list[dict]:
    """Every (sparsity, batch) row of the growth part, appended to ``rows`` one at a time."""
    for sparsity in sparsities:
        for batch in batches:
            row = growth_row(clock, libs, shape, sparsity, batch, seed=seed, timing=timing)
            rows.append(row)
            parts = [f"purerigl {_fmt_ms(row['purerigl_ms'])} ms" if "error" not in row else "purerigl ERROR"]
            for name, b in row["baselines"].items():
                parts.append(f"{name} error" if "error" in b else
                             f"{name} dY^T X {_fmt_ms(b['grad_ms'])} top-m {_fmt_ms(b['topk_ms'])} "
                             f"overlap {_fmt_pct(b['overlap'])}")
            progress(f"growth sparsity {sparsity:<5} batch {batch:<5} m {row['m']:<7} " + "; ".join(parts))
            checkpoint()
    return rows
