"""Turn the JSON of `purerigl bench kernels|train|growth` into markdown, and check issue 6's targets.

Run after the three benchmarks (see benchmarks/README.md)::

    python benchmarks/issue6_report.py benchmarks/results 2core

reads ``bench-{kernels,train,growth}-2core.json`` there and writes ``bench-*-2core.md`` and
``issue6-targets.md``. Only formatting and arithmetic on the stored medians: nothing is timed here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def _r(x):
    return "-" if x is None else f"{x:.2f}x"


def machine(meta: dict) -> list[str]:
    v = meta["versions"]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)" for b in meta["blas"]) or "unknown"
    ls, le = meta.get("loadavg_start"), meta.get("loadavg_end")
    return [
        f"- command: `{meta['command']}`",
        f"- machine: {meta['platform']}, {meta['cpu_count']} CPUs; Numba {meta['numba']['num_threads']} threads "
        f"({meta['numba']['threading_layer']}); BLAS {blas}",
        f"- versions: purerigl {v['purerigl']}, Python {v['python']}, NumPy {v['numpy']}, Numba {v['numba']}, "
        f"SciPy {v['scipy']}",
        f"- load average (1/5/15 min) at start {ls[0]:.2f}/{ls[1]:.2f}/{ls[2]:.2f}, at end "
        f"{le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f} (2 cores: a load above ~0.5 means other work shared the machine)",
        f"- timing: median, ~{meta['budget_s']} s of timed runs per product (at least 5), warm-up excluded; "
        f"calls slower than {meta['max_call_s']} s timed once",
    ]


def kernels_md(rep: dict) -> str:
    m = rep["meta"]
    out = ["# purerigl bench kernels (2-core machine)", "", *machine(m),
           f"- memcpy bandwidth measured in the same run: {m['memcpy_gbps']:.2f} GB/s (read + write)", ""]
    out += [f"- note: {n}" for n in rep["notes"]]
    out += ["", "Ratios are baseline time / purerigl time: above 1 purerigl is faster, below 1 it loses.", "",
            "| shape | sparsity | batch | op | format | purerigl us | dense us | scipy us | dense/pr | scipy/pr "
            "| GB/s | % memcpy |",
            "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rep["results"]:
        frac = r["memcpy_fraction"]
        out.append(f"| {r['shape'][0]}x{r['shape'][1]} | {r['sparsity']} | {r['batch']} | {r['op']} | {r['format']} "
                   f"| {r['purerigl_us']:.1f} | {_f(r['dense_us'])} | {_f(r['scipy_us'])} | {_r(r['dense_ratio'])} "
                   f"| {_r(r['scipy_ratio'])} | {r['purerigl_gbps']:.2f} | {'-' if frac is None else f'{frac:.0%}'} |")
    return "\n".join(out) + "\n"


def train_md(rep: dict) -> str:
    m = rep["meta"]
    out = ["# purerigl bench train (2-core machine)", "", *machine(m),
           f"- batch {m['batch']}, optimizer {m['optimizer']}; topology update: every sparse layer, drop fraction "
           f"0.3, amortised over delta_t = {m['delta_t']}", "",
           "dense/sparse = dense step time / sparse step time (above 1: sparse faster); '+ upd' adds the "
           "amortised topology update to the sparse step.", "",
           "| network | method | format | sparsity | weights | step ms | update ms | update/delta_t ms "
           "| dense/sparse | + upd |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rep["results"]:
        out.append(f"| {r['arch']} | {r['method']} | {r['format']} | {r['sparsity']} | {r['weights']} "
                   f"| {r['step_ms']:.3f} | {_f(r['update_ms'], '{:.3f}')} "
                   f"| {_f(r['update_amortised_ms'], '{:.3f}')} | {_r(r['dense_ratio'])} "
                   f"| {_r(r['dense_ratio_with_update'])} |")
    return "\n".join(out) + "\n"


def growth_md(rep: dict) -> str:
    m = rep["meta"]
    out = ["# purerigl bench growth (2-core machine)", "", *machine(m),
           f"- square layer, batch {m['batch']}, sparsity {m['sparsity']}, drop fraction {m['alpha']}", ""]
    out += [f"- note: {n}" for n in rep["notes"]]
    out += ["", "update/dense = one topology update / one dense dY^T X (below 1: cheaper than forming the "
            "dense gradient once).", "",
            "| width | method | format | nnz | update ms | dense dY^T X ms | update/dense |",
            "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rep["results"]:
        out.append(f"| {r['width']} | {r['method']} | {r['format']} | {r['nnz']} | {r['update_ms']:.2f} "
                   f"| {_f(r['dense_xtdy_ms'], '{:.2f}')} | {_r(r['update_over_dense'])} |")
    return "\n".join(out) + "\n"


def targets_md(k: dict, t: dict, g: dict, g_fan: dict | None = None) -> str:
    def kern(shape, batch, fmt, sparsity=0.9, op="matmul"):
        for r in k["results"]:
            if (r["shape"] == list(shape) and r["batch"] == batch and r["format"] == fmt and r["op"] == op
                    and abs(r["sparsity"] - sparsity) < 1e-9):
                return r
        return None

    rows = []

    def add(regime, target, measured, met):
        rows.append(f"| {regime} | {target} | {measured} | {'MET' if met else 'MISSED'} |")

    c1 = kern((768, 3072), 1, "condensed")
    if c1:
        add("batch 1, Condensed, 3072->768, 90%", ">= 4x NumPy dense", _r(c1["dense_ratio"]), c1["dense_ratio"] >= 4)
        add("batch 1, Condensed, 3072->768, 90%", ">= 3x SciPy CSR", _r(c1["scipy_ratio"]), c1["scipy_ratio"] >= 3)
    d1 = kern((768, 3072), 1, "diagonal")
    if d1:
        add("batch 1, Diagonal, 3072->768, 90%", ">= 6x NumPy dense", _r(d1["dense_ratio"]), d1["dense_ratio"] >= 6)
    c256 = kern((768, 3072), 256, "condensed")
    if c256:
        add("batch 256, Condensed, 3072->768, 90%", ">= 1.5x NumPy dense", _r(c256["dense_ratio"]),
            c256["dense_ratio"] >= 1.5)
    big = kern((4096, 4096), 1, "condensed")
    if big:
        add("batch 1, 4096x4096, Condensed, 90%", ">= 50% of copy bandwidth",
            f"{big['memcpy_fraction']:.0%} ({big['purerigl_gbps']:.1f} of {k['meta']['memcpy_gbps']:.1f} GB/s)",
            big["memcpy_fraction"] >= 0.5)
    for arch in dict.fromkeys(r["arch"] for r in t["results"]):
        sel = [r for r in t["results"] if r["arch"] == arch and r["sparsity"] == 0.9 and r["method"] != "dense"]
        if not sel:
            continue
        best = max(sel, key=lambda r: r["dense_ratio"])
        static = next(r for r in sel if r["method"] == "static" and r["format"] == "condensed")
        add(f"training step, {arch} at 90%", ">= 2x faster than the dense step",
            f"static condensed {_r(static['dense_ratio'])}; best {best['method']}/{best['format']} "
            f"{_r(best['dense_ratio'])}; range {_r(min(r['dense_ratio'] for r in sel))}..{_r(best['dense_ratio'])}",
            static["dense_ratio"] >= 2)
    for method in ("rigl", "srigl"):
        sel = [r for r in g["results"] if r["method"] == method and r["update_over_dense"] is not None]
        if sel:
            text = ", ".join(f"{r['width']}: {r['update_over_dense']:.1f}x" for r in sel)
            add(f"growth update, {method} (update / one dense X^T dY)", "within 3x", text,
                all(r["update_over_dense"] <= 3 for r in sel))
    at = {(r["method"], r["width"]): r for r in g["results"]}
    if ("rigl", 16384) in at and ("gse", 16384) in at:
        ratio = at[("rigl", 16384)]["update_ms"] / at[("gse", 16384)]["update_ms"]
        add("growth update, GSE at width 16384", ">= 10x faster than RigL's",
            f"{ratio:.1f}x (RigL {at[('rigl', 16384)]['update_ms']:.0f} ms, GSE {at[('gse', 16384)]['update_ms']:.0f} ms)",
            ratio >= 10)
    if g_fan is not None:
        at = {(r["method"], r["width"]): r for r in g_fan["results"]}
        if ("rigl", 16384) in at and ("gse", 16384) in at:
            ratio = at[("rigl", 16384)]["update_ms"] / at[("gse", 16384)]["update_ms"]
            widths = sorted(w for m, w in at if m == "gse")
            scaling = ", ".join(f"{w}: {at[('gse', w)]['update_ms']:.0f} ms" for w in widths)
            add(f"growth update, GSE at width 16384, fan-in {g_fan['meta']['fan_in']} (nnz linear in width)",
                ">= 10x faster than RigL's; linear in width",
                f"{ratio:.1f}x (RigL {at[('rigl', 16384)]['update_ms']:.0f} ms, GSE {at[('gse', 16384)]['update_ms']:.0f} ms); "
                f"GSE by width: {scaling}", ratio >= 10)
    head = ["# Issue 6 targets on the 2-core machine", "",
            "fp32, both cores; numbers from the bench-*-2core.json files of this folder (medians; see each "
            "file for the machine, the load and the exact command). MISSED targets are reported as measured.", "",
            "| regime | target | measured | verdict |", "| --- | --- | --- | --- |"]
    return "\n".join(head + rows) + "\n"


def main(folder: str = "benchmarks/results", tag: str = "2core") -> None:
    d = Path(folder)
    reps = {}
    for name, fn in (("kernels", kernels_md), ("train", train_md), ("growth", growth_md)):
        p = d / f"bench-{name}-{tag}.json"
        if p.exists():
            reps[name] = json.loads(p.read_text())
            (d / f"bench-{name}-{tag}.md").write_text(fn(reps[name]))
            print(f"wrote {d / f'bench-{name}-{tag}.md'}")
    fan = d / f"bench-growth-fanin32-{tag}.json"
    if fan.exists():
        reps_fan = json.loads(fan.read_text())
        (d / f"bench-growth-fanin32-{tag}.md").write_text(growth_md(reps_fan))
        print(f"wrote {d / f'bench-growth-fanin32-{tag}.md'}")
    else:
        reps_fan = None
    if len(reps) == 3:
        (d / "issue6-targets.md").write_text(targets_md(reps["kernels"], reps["train"], reps["growth"], reps_fan))
        print(f"wrote {d / 'issue6-targets.md'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
