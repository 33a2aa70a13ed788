"""The report of ``purerigl bench gpu``: the plan printed first, the header, the kernel and training
tables, the failures, and the JSON / markdown files (rewritten after every row)."""

from __future__ import annotations

import json
from pathlib import Path

#: The SRigL paper's GPU measurement, printed beside the condensed ratios measured at batch 256, 90%.
PAPER_REFERENCE = "SRigL paper, GPU, batch 256, 90%: condensed 1.7x faster than dense, 13.0x faster than CSR"
SIMULATOR_WARNING = "CUDA SIMULATOR: timings mean nothing (kernels run as Python threads on the CPU)"

# --------------------------------------------------------------------------------------------- the plan


def plan_text(n_kernel_rows: int, n_batches: int, n_libs: int, n_methods: int, n_updates: int, n_train_batches: int,
              budget_s: float, n_growth_rows: int = 0) -> tuple[str, float]:
    """(one line describing the grid and its time estimate, estimated seconds)."""
    kernel_timings = n_kernel_rows * (1 + n_libs) + n_batches * n_libs
    growth_timings = n_growth_rows * (1 + 2 * n_libs)
    train_timings = n_train_batches * 2 * (n_methods + n_updates)
    timed = (kernel_timings + growth_timings + train_timings) * (budget_s + 0.05)
    compile_s = (20 if n_kernel_rows else 0) + (10 if n_growth_rows else 0) + (150 if n_methods else 0)  # a guess
    text = (f"plan: {n_kernel_rows} kernel rows x (purerigl + {n_libs} libraries' CSR) + {n_batches * n_libs} dense "
            f"= {kernel_timings} product timings; {growth_timings} growth-selection timings; {train_timings} training "
            f"timings (steps and updates, cpu and cuda); ~{budget_s} s each: about {timed:.0f} s timed + up to "
            f"~{compile_s} s of first-call compilation and host reference products on a fresh machine")
    return text, timed + compile_s


# ----------------------------------------------------------------------------------------------- report


def _fmt_ms(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _fmt_ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def header_lines(meta: dict) -> list[str]:
    """The lines above the tables: simulator warning, command, GPU, libraries, machine, timing, paper."""
    g, v = meta["gpu"], meta["versions"]
    lines = ["# purerigl bench gpu", ""]
    if g["simulator"]:
        lines += [f"**{SIMULATOR_WARNING}**", ""]
    cc = ".".join(str(c) for c in g["compute_capability"]) if g["compute_capability"] else "unknown"
    memory = "unknown" if g["memory_gib"] is None else f"{g['memory_gib']} GiB"
    libraries = "; ".join(f"{name} " + ", ".join(f"{k} {val}" for k, val in d.items())
                          for name, d in meta["libraries"].items())
    lines += [
        f"- command: `{meta['command']}`",
        (f"- GPU: {g['name'] or 'unknown'}; compute capability {cc}; memory {memory}; CUDA driver "
         f"{_version(g['driver'])}, runtime {_version(g['runtime'])} (as numba.cuda reports them); purerigl's "
         f"device-memory pool: {g.get('memory_pool', 'unknown')}"),
        f"- libraries: {libraries or 'none (baseline columns: n/a)'}",
        (f"- versions: purerigl {v['purerigl']}, python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, "
         f"numba-cuda {v.get('numba-cuda') or 'not installed'}, scipy {v['scipy']}"),
        (f"- host: {meta['platform']}; {meta['cpu_count']} CPUs; numba {meta['numba']['num_threads']} threads "
         f"({meta['numba']['threading_layer']}) for the cpu backend"),
        f"- timing: {meta['timer']}",
    ]
    lines += [f"- note: {n}" for n in meta["notes"]]
    return lines


def _version(v) -> str:
    """``12.4`` from ``[12, 4]``; "unknown" when not known (the simulator reports -1)."""
    return "unknown" if not v or min(v) < 0 else ".".join(str(x) for x in v)


def paper_lines(rows: list[dict], libs: list[str]) -> list[str]:
    """The SRigL paper's GPU line and the condensed ratios measured here at batch 256, 90%."""
    lines = [f"Reference: {PAPER_REFERENCE}."]
    match = [r for r in rows if r["format"] == "condensed" and r["batch"] == 256 and abs(r["sparsity"] - 0.9) < 1e-9]
    if not match:
        lines.append("Measured here: not in this grid (needs condensed, batch 256, sparsity 0.9).")
    elif not libs:
        lines.append("Measured here: n/a (no baseline library).")
    else:
        b = match[0]["baselines"]
        lines.append("Measured here, condensed, batch 256, 90%: " + "; ".join(
            f"{name}: {_fmt_ratio(b[name]['dense_ratio'])} vs dense, {_fmt_ratio(b[name]['csr_ratio'])} vs CSR"
            for name in libs) + " (above 1x: purerigl faster).")
    return lines


def kernel_table(rows: list[dict], libs: list[str]) -> list[str]:
    """Markdown table of the kernels part; one column group per library ("n/a" without one)."""
    groups = libs or [""]
    head = ["format", "sparsity", "batch", "nnz", "purerigl ms", "GB/s"]
    for name in groups:
        tag = f" [{name}]" if name else ""
        head += [f"dense ms{tag}", f"CSR ms{tag}", f"dense/pr{tag}", f"CSR/pr{tag}"]
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join(["---:"] * (len(head) - 1)) + " |"]
    for r in rows:
        cells = [r["format"], f"{r['sparsity']:g}", str(r["batch"]), str(r["nnz"]),
                 _fmt_ms(r["purerigl_ms"]) if r["purerigl"]["ok"] else "WRONG",
                 "n/a" if r["purerigl_gbps"] is None else f"{r['purerigl_gbps']:.1f}"]
        for name in groups:
            b = r["baselines"].get(name)
            if b is None:
                cells += ["n/a"] * 4
            else:
                cells += [_fmt_ms(b["dense_ms"]), _fmt_ms(b["csr_ms"]), _fmt_ratio(b["dense_ratio"]),
                          _fmt_ratio(b["csr_ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def train_table(rows: list[dict]) -> list[str]:
    """Markdown table of the training part: cpu against cuda per method and batch, and the dense PyTorch
    twin's step (its device in the header) where it was timed."""
    dense = next((r["torch_dense"] for r in rows if "torch_dense" in r), None)
    head = ["network", "method", "format", "batch", "cpu step ms", "cuda step ms", "cpu/cuda step",
            "cpu update ms", "cuda update ms", "cpu/cuda update"]
    if dense is not None:
        head += [f"torch dense step ms ({dense.get('device') or 'not run'})", "dense/cuda step"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- | " + " | ".join(["---:"] * (len(head) - 3)) + " |"]
    for r in rows:
        cpu, cuda = r.get("cpu", {}), r.get("cuda", {})
        cells = [r["arch"], r["method"], r["format"], str(r["batch"]), _cell(cpu, "step_ms"), _cell(cuda, "step_ms"),
                 _fmt_ratio(r["step_speedup"]), _cell(cpu, "update_ms", r["method"]),
                 _cell(cuda, "update_ms", r["method"]), _fmt_ratio(r["update_speedup"])]
        if dense is not None:
            cells += [_cell(r.get("torch_dense", {}), "step_ms"), _fmt_ratio(r.get("dense_speedup"))]
        lines.append("| " + " | ".join(cells) + " |")
    if dense is not None and "skipped" in dense:
        lines += ["", f"torch dense not timed: {dense['skipped']}."]
    return lines


def growth_table(rows: list[dict], libs: list[str]) -> list[str]:
    """Markdown table of the growth part; one column group per library ("n/a" without one)."""
    groups = libs or [""]
    head = ["sparsity", "batch", "nnz", "m", "purerigl ms"]
    for name in groups:
        tag = f" [{name}]" if name else ""
        head += [f"dY^T X ms{tag}", f"dense top-m ms{tag}", f"dY^T X/pr{tag}", f"top-m/pr{tag}", f"overlap{tag}"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:"] * len(head)) + " |"]
    for r in rows:
        cells = [f"{r['sparsity']:g}", str(r["batch"]), str(r["nnz"]), str(r["m"]),
                 "ERROR" if "error" in r else _fmt_ms(r["purerigl_ms"])]
        for name in groups:
            b = r["baselines"].get(name)
            if b is None or "error" in b:
                cells += ["n/a" if b is None else "error"] * 5
            else:
                cells += [_fmt_ms(b["grad_ms"]), _fmt_ms(b["topk_ms"]), _fmt_ratio(b["grad_ratio"]),
                          _fmt_ratio(b["topk_ratio"]), _fmt_pct(b["overlap"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def growth_errors(rows: list[dict]) -> list[str]:
    """One line per growth cell that raised."""
    out = [f"growth sparsity {r['sparsity']} batch {r['batch']}: purerigl {r['error']}" for r in rows if "error" in r]
    out += [f"growth sparsity {r['sparsity']} batch {r['batch']}: {name} {b['error']}"
            for r in rows for name, b in r["baselines"].items() if "error" in b]
    return out


def _cell(cell: dict, key: str, method: str = "") -> str:
    if "error" in cell:
        return "error"
    if key == "update_ms" and method == "static":
        return "-"
    return _fmt_ms(cell.get(key))


KERNELS_TEXT = (
    "Ratios: baseline time / purerigl time (above 1x: purerigl faster). GB/s: bytes of the stored matrix (values "
    "and indices), X and Y per second of the purerigl product. Every product was checked against a float64 host "
    "reference first; WRONG: it disagreed (or raised) and was not timed. purerigl writes into an output allocated "
    "beforehand; the libraries allocate theirs from their pools. The dense time depends "
    "only on the shape and batch: it is measured once per (library, batch) and shared by the rows."
)
GROWTH_TEXT = (
    "RigL's growth selection of one layer: the m = 0.3 x nnz positions of largest |dY^T X| outside its active "
    "set. purerigl: `topk_grad` on device arrays (the gradient streamed in tiles, never stored whole). Baselines: "
    "one dense dY^T X, and the dense route of a masked-dense implementation (dY^T X, |.|, active set masked, top-m). "
    "Ratios: baseline time / purerigl time (above 1x: purerigl faster). Overlap: the share of purerigl's positions "
    "that the dense route chose too."
)
TRAIN_TEXT = (
    "One step: forward, softmax cross-entropy, backward, SGD momentum 0.9 (`purerigl bench train`'s code), each "
    "method on its default format; one update: every sparse layer, drop fraction 0.3. Same seed and inputs on both "
    "backends; the device is synchronised before each clock read. cpu/cuda above 1x: cuda faster. torch dense: "
    "the same network dense in PyTorch (cuDNN / cuBLAS, TF32 off), the same step with torch.optim.SGD, timed once per batch; "
    "dense/cuda above 1x: purerigl's sparse cuda step faster than the dense one."
)


def format_report(report: dict) -> str:
    """The whole markdown report (also printed)."""
    m = report["meta"]
    libs = list(m["libraries"])
    lines = header_lines(m)
    if report.get("kernels") is not None:
        lines += ["", f"## Kernels: Y = X W^T, W {m['shape'][0]}x{m['shape'][1]} float32", ""]
        lines += paper_lines(report["kernels"], libs)
        lines += ["", KERNELS_TEXT, ""] + kernel_table(report["kernels"], libs)
    if report.get("growth") is not None:
        lines += ["", f"## Growth selection: one {m['shape'][0]}x{m['shape'][1]} layer (RigL, drop fraction 0.3)", "",
                  GROWTH_TEXT, ""] + growth_table(report["growth"], libs)
    if report.get("train") is not None:
        t = m["train"]
        kind = "MLP" if t.get("model", "mlp") == "mlp" else "CNN"
        lines += ["", f"## Training step: {t['arch']} {kind} at {t['sparsity']:g} sparsity, {t['inputs']}", "",
                  TRAIN_TEXT, ""] + train_table(report["train"])
    problems = report.get("failures", []) + report.get("errors", [])
    if problems:
        lines += ["", "## Failures and errors", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, json_path: Path | None, md_path: Path | None) -> str:
    """Write the JSON and the markdown report (after each part, so that a run cut short keeps what it
    measured); returns the markdown."""
    report["failures"] = [f for row in report["kernels"] or [] for f in row_failures(row)]
    report["errors"] = train_errors(report["train"] or []) + growth_errors(report.get("growth") or [])
    text = format_report(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(text)
    return text



def row_failures(row: dict) -> list[str]:
    """One line per product of ``row`` that disagreed with the reference or raised."""
    where = f"{row['format']} sparsity {row['sparsity']} batch {row['batch']}"
    out = [] if row["purerigl"]["ok"] else [f"purerigl {where}: {row['purerigl']['note']}"]
    for name, b in row["baselines"].items():
        out += [f"{name} {kind} {where}: {b[kind]['note']}" for kind in ("dense", "csr") if not b[kind]["ok"]]
    return out


def train_errors(rows: list[dict]) -> list[str]:
    """One line per training cell that raised."""
    out = [f"train {r['method']} batch {r['batch']} on {b}: {r[b]['error']}"
           for r in rows for b in ("cpu", "cuda") if "error" in r.get(b, {})]
    dense = {(r["batch"], r["torch_dense"]["error"]) for r in rows if "error" in r.get("torch_dense", {})}
    return out + [f"train batch {batch}, torch dense: {error}" for batch, error in sorted(dense)]
