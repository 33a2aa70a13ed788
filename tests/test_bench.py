"""`purerigl bench`: each subcommand runs with --quick and prints/writes output of the right SHAPE.

Never timings: only exit codes, table headers, row counts and JSON keys (DESIGN.md section 7).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.cli.bench._shared import GROWTH_METHODS, OPS, QUICK, TRAIN_METHODS
from purerigl.cli.main import main
from purerigl.formats import FORMATS

META_KEYS = {"platform", "cpu_count", "numba", "blas", "versions", "command", "budget_s", "loadavg_start"}


def run(args, tmp_path=None):
    result = CliRunner().invoke(main, ["bench", *args])
    return result


def table_rows(output: str, head_word: str) -> list[str]:
    """The lines of the table under the header line that starts with ``head_word`` (after the dashes)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == head_word)
    assert set(lines[start + 1]) == {"-"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("wrote "):
            break
        rows.append(line)
    return rows


def test_bench_lists_its_subcommands():
    result = run(["--help"])
    assert result.exit_code == 0
    for name in ("kernels", "train", "growth"):
        assert name in result.output


def test_kernels_quick_table_and_json(tmp_path):
    path = tmp_path / "k.json"
    result = run(["kernels", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "command: purerigl bench kernels" in out and "--quick" in out
    assert "memcpy bandwidth" in out and "numba" in out and "BLAS" in out
    q = QUICK["kernels"]
    n = len(q["shapes"]) * len(q["batches"]) * len(q["sparsities"]) * len(OPS) * len(FORMATS)
    rows = table_rows(out, "shape")
    assert len(rows) == n
    report = json.loads(path.read_text())
    assert META_KEYS <= set(report["meta"])
    assert report["meta"]["memcpy_gbps"] > 0
    assert len(report["results"]) == n
    keys = {"shape", "batch", "sparsity", "op", "format", "nnz", "purerigl_us", "dense_us", "scipy_us",
            "dense_ratio", "scipy_ratio", "purerigl_gbps", "memcpy_fraction", "runs", "max_abs_err", "tol",
            "limit_us", "limit_fraction", "dense_gmacs"}
    assert report["meta"]["busy"] == 0 and "load: quiet mode" in out
    for r in report["results"]:
        assert keys <= set(r)
        assert (r["memcpy_fraction"] is not None) == (r["batch"] == 1)
        assert (r["limit_us"] is not None) == (r["batch"] > 1)  # the limit column: batched regimes only
        assert (r["scipy_us"] is None) == (r["op"] == "sddmm")  # SciPy has no SDDMM
        assert r["max_abs_err"] <= r["tol"]


def test_kernels_options_select_the_grid():
    result = run(["kernels", "--quick", "--shape", "32x48", "--batch", "4", "--op", "matmul", "--format", "csr",
                  "--sparsity", "0.8", "--sparsity", "0.95"])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output, "shape")
    assert len(rows) == 2 and all("32x48" in r and " matmul " in r and " csr " in r for r in rows)


def test_train_quick_table_and_json(tmp_path):
    path = tmp_path / "t.json"
    result = run(["train", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    q = QUICK["train"]
    n = len(q["hidden"]) * (1 + len(q["sparsities"]) * len(TRAIN_METHODS))
    rows = table_rows(result.output, "network")
    assert len(rows) == n
    assert rows[0].split()[1] == "dense"
    report = json.loads(path.read_text())
    assert META_KEYS <= set(report["meta"]) and report["meta"]["delta_t"] == 100
    assert len(report["results"]) == n
    methods = {(r["method"], r["format"]) for r in report["results"]}
    assert methods == {("dense", "dense"), *TRAIN_METHODS}
    for r in report["results"]:
        assert {"arch", "step_ms", "update_ms", "update_amortised_ms", "dense_ratio", "weights", "limit_ms",
                "limit_fraction"} <= set(r)
        assert (r["update_ms"] is None) == (r["method"] in ("dense", "static"))


def test_growth_quick_table_and_json(tmp_path):
    path = tmp_path / "g.json"
    result = run(["growth", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    q = QUICK["growth"]
    n = len(q["widths"]) * len(GROWTH_METHODS) + len(q["gse_widths"])
    rows = table_rows(result.output, "width")
    assert len(rows) == n
    report = json.loads(path.read_text())
    assert META_KEYS <= set(report["meta"])
    assert len(report["results"]) == n
    gse_only = [r for r in report["results"] if r["width"] in q["gse_widths"]]
    assert {r["method"] for r in gse_only} == {"gse"}
    for r in report["results"]:
        assert {"width", "method", "format", "nnz", "update_ms", "dense_xtdy_ms", "update_over_dense", "limit_ms",
                "update_over_limit"} <= set(r)


def test_growth_fan_in_keeps_connections_per_row_constant(tmp_path):
    path = tmp_path / "g.json"
    result = run(["growth", "--quick", "--fan-in", "4", "--method", "rigl", "--method", "gse", "--json", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert report["meta"]["fan_in"] == 4 and "fan-in 4" in result.output
    for r in report["results"]:
        assert r["nnz"] == 4 * r["width"]  # CSR: budget N - floor(sN) = 4 * width connections
        assert r["sparsity"] == pytest.approx(1 - 4 / r["width"])


@pytest.mark.parametrize(
    "args, word",
    [
        (["kernels", "--op", "conv"], "--op"),
        (["kernels", "--shape", "12"], "--shape"),
        (["kernels", "--sparsity", "1.5"], "--sparsity"),
        (["train", "--batch", "0"], "--batch"),
        (["train", "--quick", "--hidden", "a,b"], "--hidden"),
        (["train", "--quick", "--model", "alexnet"], "--model"),
        (["train", "--quick", "--vit-width", "32"], "--vit-width"),  # the ViT's options need --model vit-tiny
        (["train", "--quick", "--model", "lenet5", "--vit-depth", "2"], "--vit-depth"),
        (["train", "--quick", "--model", "vit-tiny", "--model", "lenet5"], "--model"),  # the ViT is timed alone
        (["train", "--quick", "--model", "vit-tiny", "--vit-heads", "3"], "--vit-"),  # 3 does not divide 16
        (["train", "--quick", "--model", "vit-tiny", "--vit-patch", "3"], "--vit-"),  # 3 does not divide 8
        (["growth", "--method", "magic"], "--method"),
        (["growth", "--quick", "--fan-in", "100000"], "--fan-in"),
    ],
)
def test_bad_option_exits_2_with_one_line_error(args, word):
    result = run(args)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and word in errors[0]


def test_train_model_quick_table_json_and_target(tmp_path):
    """``bench train --model``: a convolutional network per method against its dense version, the conv
    forward columns, the patch share and the target line (shape only; never timings)."""
    path = tmp_path / "cnn.json"
    result = run(["train", "--quick", "--model", "lenet5", "--sparsity", "0.9", "--sparsity", "0.99",
                  "--json", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "command: purerigl bench train" in out and "--model lenet5" in out and "--quick" in out
    assert "--hidden" not in out  # the printed command reruns as it is (--hidden is refused with --model)
    assert "--vit-" not in out  # nor are the ViT's options
    n = 1 + 2 * len(TRAIN_METHODS)
    rows = table_rows(out, "model")
    assert len(rows) == n and rows[0].split()[:2] == ["lenet5", "dense"]
    assert "target (lenet5): at 90% no sparse step slower than its dense step, at 99% every one faster:" in out
    assert any(line.strip().startswith("90%: ") for line in out.splitlines())
    assert any(line.strip().startswith("99%: ") for line in out.splitlines())
    report = json.loads(path.read_text())
    meta = report["meta"]
    assert META_KEYS <= set(meta) and meta["benchmark"] == "train-cnn" and meta["models"] == ["lenet5"]
    assert meta["batch"] == QUICK["train_cnn"]["batch"]
    assert meta["input_shapes"] == {"lenet5": list(QUICK["train_cnn"]["input_shapes"]["lenet5"])}
    target = meta["targets"]["lenet5"]
    assert set(target) == {"90", "99", "met"} and target["90"]["n"] == target["99"]["n"] == len(TRAIN_METHODS)
    assert target["met"] == (target["90"]["met"] and target["99"]["met"])
    assert len(report["results"]) == n
    assert {(r["method"], r["format"]) for r in report["results"]} == {("dense", "dense"), *TRAIN_METHODS}
    for r in report["results"]:
        assert {"model", "input_shape", "step_ms", "dense_step_ms", "update_ms", "dense_ratio", "weights",
                "conv_forward_ms", "dense_conv_forward_ms", "conv_forward_ratio", "patch_ms", "patch_fraction",
                "conv_layers"} <= set(r)
        assert (r["update_ms"] is None) == (r["method"] in ("dense", "static"))
        assert 0 < r["patch_fraction"] < 1 and r["patch_ms"] > 0
        sparse = r["method"] != "dense"
        assert [c["name"] for c in r["conv_layers"]] == (["conv1"] if sparse else [])  # conv0 stays dense
        for c in r["conv_layers"]:
            assert {"format", "shape", "nnz", "forward_ms", "dense_forward_ms", "ratio"} <= set(c)
        assert (r["conv_forward_ratio"] is not None) == sparse
    diagonal = {r["method"]: r["weights"] for r in report["results"] if r["format"] == "diagonal" and r["sparsity"] == 0.9}
    assert diagonal["dynadiag"] > diagonal["static"]  # the soft phase's gated layers store more than the budget's K


def test_train_model_refuses_hidden():
    result = run(["train", "--quick", "--model", "lenet5", "--hidden", "32"])
    assert result.exit_code == 2
    assert "--hidden" in result.output and "--model" in result.output


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_train_vit_quick_table_json_and_target(tmp_path):
    """``bench train --model vit-tiny`` on a tiny ViT: the step rows per method against the dense ViT, the
    shares of the step, one projection line per (format, sparsity, kind) and the target per format
    (structure and finite positive ratios only; never timings)."""
    from purerigl.cli.bench._train_vit import PROJECTIONS, QUICK_VIT, VIT_TARGET

    path = tmp_path / "vit.json"
    result = run(["train", "--quick", "--model", "vit-tiny", "--sparsity", "0.9", "--sparsity", "0.95",
                  "--steps", "5", "--json", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    arch = QUICK_VIT["arch"]
    assert "command: purerigl bench train --model vit-tiny" in out and "--quick" in out and "--hidden" not in out
    for name, value in arch.items():  # the command line spells out the ViT, so that it reruns as it is
        assert f"--{name.replace('_', '-')} {value} " in out
    n = 1 + 2 * len(TRAIN_METHODS)
    rows = table_rows(out, "model")
    assert len(rows) == n and rows[0].split()[:2] == ["vit-tiny", "dense"]
    assert f"target (vit-tiny): {VIT_TARGET}:" in out

    report = json.loads(path.read_text())
    meta, results, projections = report["meta"], report["results"], report["projections"]
    assert META_KEYS <= set(meta) and meta["benchmark"] == "train-vit" and meta["models"] == ["vit-tiny"]
    assert meta["batch"] == QUICK_VIT["batch"] and meta["input_shape"] == list(QUICK_VIT["input_shape"])
    assert meta["sparsities"] == [0.9, 0.95] and meta["architecture"]["width"] == arch["vit_width"]
    C, H, W = QUICK_VIT["input_shape"]
    t = (H // arch["vit_patch"]) * (W // arch["vit_patch"]) + 1
    assert meta["tokens_per_image"] == t and meta["tokens"] == t * QUICK_VIT["batch"]
    assert len(results) == n
    assert {(r["method"], r["format"]) for r in results} == {("dense", "dense"), *TRAIN_METHODS}
    built = [r for r in results if "skipped" not in r]
    assert {(r["method"], r["format"], r["sparsity"]) for r in built if r["sparsity"] == 0.9} == {
        (m, f, 0.9) for m, f in TRAIN_METHODS}  # at 90% every format builds; at 95% a row may be skipped
    at90 = {r["method"]: r["weights"] for r in built if r["sparsity"] == 0.9 and r["format"] == "diagonal"}
    assert at90["dynadiag"] > at90["static"]  # the soft phase's gated layers store more than the budget's K
    for r in results:
        if "skipped" in r:
            assert r["skipped"] and f"skipped {r['method']} {r['format']} 0.95" in out
            continue
        for key in ("step_ms", "dense_step_ms", "dense_ratio", "dense_ratio_with_update", "attention_ms",
                    "sdpa_ms", "projections_ms"):
            assert _positive(r[key]), (key, r)
        assert (r["update_ms"] is None) == (r["method"] in ("dense", "static"))
        # disjoint parts of one step: the attention without its projections, and the block projections
        assert 0 < r["sdpa_fraction"] <= r["attention_fraction"] < 1 and 0 < r["projection_fraction"] < 1
        assert r["attention_fraction"] + r["projection_fraction"] < 1

    depth = arch["vit_depth"]
    timed = {(r["format"], r["sparsity"]) for r in built if r["method"] != "dense"}
    assert {(p["format"], p["sparsity"]) for p in projections} == timed and len(projections) == len(timed)
    for p in projections:
        assert [layer["kind"] for layer in p["layers"]] == list(PROJECTIONS) * depth
        assert p["methods"] == [m for m, f in TRAIN_METHODS if f == p["format"]]
        for layer in p["layers"]:
            assert layer["format"] == p["format"] and layer["tokens"] == meta["tokens"]
            for key in ("sparse_ms", "dense_ms", "blas_ms", "ratio", "blas_ratio"):
                assert _positive(layer[key]), (key, layer)
    lines = table_rows(out, "format")
    assert len(lines) == len(projections) * len(PROJECTIONS)
    assert all(line.split()[-1] == f"{line.split()[-1].split('/')[0]}/{depth}" for line in lines)

    target = meta["targets"]
    assert target["sparsity"] == 0.9 and set(target["formats"]) == {"csr", "condensed", "diagonal"}
    for fmt, entry in target["formats"].items():
        assert entry["n"] == len(PROJECTIONS) * depth and 0 <= entry["n_ok"] <= entry["n"]
        assert entry["met"] == (entry["n_ok"] == entry["n"]) and _positive(entry["worst"]["ratio"])
        assert f"  {fmt} (" in out
    assert target["met"] == all(e["met"] for e in target["formats"].values())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_patch_timer_counts_the_patch_functions_of_sparse_and_dense_convolutions(backend):
    """The "patch %" share wraps what the convolutions really call: im2col_t in a sparse convolution
    (feature-major; on cpu at stride 1 none: its products read X, conv_direct.py, and its input
    gradient, conv_input_grad_fm, builds no patches; at stride 2 im2col_t and the backend's col2im_t),
    im2col / col2im in a dense one; and unwraps them afterwards."""
    import numpy as np

    from purerigl.cli.bench._train_cnn import patch_timer
    from purerigl.formats.budget import random_layer_with_budget
    from purerigl.nn.conv import Conv2d, SparseConv2d

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    W = random_layer_with_budget("csr", (4, 27), 30, rng)
    sparse = SparseConv2d(W, 3, 3, padding=1, backend=backend)
    strided = SparseConv2d(W.copy(), 3, 3, stride=2, padding=1, backend=backend)
    dense = Conv2d.kaiming(3, 4, 3, rng, padding=1, backend=backend)
    module = sparse.backend.module  # where the layers' backend calls land
    originals = {name: getattr(module, name) for name in ("im2col", "col2im", "im2col_t", "col2im_t")}
    want = {sparse: 0 if backend == "cpu" else 1, strided: 2 if backend == "cpu" else 1, dense: 2}
    for layer, calls in want.items():
        with patch_timer() as spent:
            Y = layer.forward(X)
            layer.backward(np.ones_like(Y))
        assert spent["calls"] == calls and (spent["s"] > 0) == (calls > 0), (layer, spent)
    assert {name: getattr(module, name) for name in originals} == originals


def test_vit_timer_counts_the_feature_major_projections_and_attention():
    """A sparse ViT's block calls its projections' forward_fm / backward_fm and the feature-major attention
    helpers (no row-layout forward): the share probe must time those too, or they would drop out of
    'proj %' and 'sdpa %'; the wrappers are removed afterwards."""
    from purerigl.cli.bench._train_common import method_calls
    from purerigl.cli.bench._vit_probes import blocks, vit_timer
    from purerigl.nn.vit import vit_tiny

    model = vit_tiny((1, 8, 8), 4, fmt="csr", sparsity=0.5, rng=np.random.default_rng(0), backend="cpu",
                     patch=4, width=8, depth=1, heads=2, mlp_ratio=2)
    X = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    step, _ = method_calls(model, "static", "csr", 0.5, X, np.array([0, 1, 2]), 0)
    block = blocks(model)[0]
    with vit_timer(model) as spent:
        step()
    assert block._mlp_fm and block.attn._fm  # the feature-major paths ran
    assert spent["projections"] > spent["attention_projections"] > 0  # fc1 and fc2 were timed
    assert spent["attention"] > spent["sdpa"] > 0  # and the feature-major attention's helpers
    for layer in (block.fc1, block.fc2, block.attn.qkv, block.attn.out):
        assert not {"forward", "backward", "forward_fm", "backward_fm"} & set(vars(layer))


def test_step_shares_are_medians_so_one_compiling_step_does_not_weigh_them():
    """A probe's share is the median over the instrumented steps: one slow step (as when a kernel's
    serial twin compiles inside it) whose extra time lies outside the part leaves the share of the
    ordinary steps, where a total over the steps would have been diluted by it."""
    import time

    from purerigl.cli.bench._train_common import median_share, run_parts

    spent = {"part": 0.0}
    calls = []

    def step():
        slow = not calls
        calls.append(1)
        t0 = time.perf_counter()
        time.sleep(0.01)
        spent["part"] += time.perf_counter() - t0  # the probed part: about 10 ms of every step
        time.sleep(0.2 if slow else 0.01)  # the first step also "compiles" for 200 ms

    steps, parts = run_parts(step, spent, runs=3)
    seconds, share = median_share(parts["part"], steps)
    assert len(steps) == 3 and len(parts["part"]) == 3 and steps[0] > steps[1]
    total_share = sum(parts["part"]) / sum(steps)
    assert share > 0.35 and share > 2 * total_share  # about 0.5 for the ordinary steps; about 0.15 pooled
    assert 0.009 < seconds < 0.2
    assert median_share([1.0], [0.0]) == (1.0, None)  # a step of no measurable time has no share
