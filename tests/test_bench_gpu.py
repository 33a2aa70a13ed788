"""`purerigl bench gpu` on Numba's CUDA simulator (conftest turns it on): exit codes, rows, headers.

Never timings (DESIGN.md section 7): on the simulator they mean nothing. CuPy and PyTorch are not
installed here, so the baseline columns are exercised with a NumPy stand-in that has the same adapter
interface (:class:`HostLibrary`); the torch and CuPy adapters themselves only run on a GPU machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.cli.bench import _gpu_devices as devices
from purerigl.cli.bench import _gpu_report as gpu_report
from purerigl.cli.bench import gpu
from purerigl.cli.main import main
from purerigl.dst import METHODS
from purerigl.formats import FORMATS

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def run(args):
    return CliRunner().invoke(main, ["bench", "gpu", *args])


#: The layer shape of the runs that include the growth part. The simulator starts a Python thread per
#: GPU thread, and the growth selection sorts its pool of candidate keys (a bitonic sort over the next
#: power of two): at --quick's 12x48 one selection took 25 s on a 2-core machine, at 6x16 1.5 s.
GROWTH_SHAPE = "6x16"


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Fewer simulated threads per block: the simulator starts one Python thread per thread of a block."""
    from purerigl.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "THREADS_PER_BLOCK", 8)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One full ``--quick`` run (kernels and train) without baseline libraries: (result, report, markdown)."""
    from purerigl.kernels.cuda import _launch

    out = tmp_path_factory.mktemp("gpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_launch, "THREADS_PER_BLOCK", 8)
        result = run(["--quick", "--shape", GROWTH_SHAPE, "--libraries", "none", "--json", str(out / "g.json"),
                      "--out-md", str(out / "g.md")])
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "g.json").read_text()), (out / "g.md").read_text()


def table_rows(md: str, first_head: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with ``| first_head |``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_head} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


class _Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class HostLibrary:
    """A baseline library on the host (NumPy dense, SciPy CSR) with the adapter interface of
    :class:`purerigl.cli.bench._gpu_devices.TorchLibrary`, standing in for torch/CuPy here."""

    name = "torch"
    timed = True

    def describe(self):
        return {"version": "host stand-in"}

    def synchronize(self):
        pass

    def event(self):
        return _Event()

    def elapsed_ms(self, start, end):
        return (end.t - start.t) * 1e3

    def upload(self, a):
        return np.ascontiguousarray(a)

    def dense_weight(self, W_dense):
        return np.ascontiguousarray(W_dense.T)

    def sparse_weight(self, S):
        return S

    def dense_product(self, WT, X):
        return devices.Product(lambda: X @ WT, np.asarray)

    def csr_product(self, S, X):
        XT = X.T
        return devices.Product(lambda: S @ XT, lambda YT: np.asarray(YT).T)

    def dense_grad(self, X, dY):
        return lambda: dY.T @ X

    def dense_topk(self, X, dY, active, m):
        def run():
            G = np.abs(dY.T @ X)
            G[active] = -1.0
            return np.argsort(-G.ravel(), kind="stable")[:m]

        return run, np.asarray


# ------------------------------------------------------------------------------------------ full run


def test_quick_run_has_a_checked_timed_row_per_format_sparsity_batch(quick_run):
    _, report, md = quick_run
    q = gpu.QUICK
    n = len(q["sparsities"]) * len(q["batches"]) * len(FORMATS)
    rows = report["kernels"]
    assert len(rows) == n
    assert {(r["format"], r["sparsity"], r["batch"]) for r in rows} == {
        (f, s, b) for f in FORMATS for s in q["sparsities"] for b in q["batches"]}
    for r in rows:
        assert r["purerigl"]["ok"] and r["purerigl"]["max_abs_err"] <= r["purerigl"]["tol"]
        assert r["purerigl_ms"] > 0 and r["purerigl_gbps"] > 0 and r["baselines"] == {}
    assert report["failures"] == [] and report["meta"]["gpu"]["simulator"] is True
    assert len(table_rows(md, "format")) == n
    assert all(cells[6:] == ["n/a"] * 4 for cells in table_rows(md, "format"))


def test_quick_markdown_header_names_the_simulator_command_and_paper(quick_run):
    result, report, md = quick_run
    assert gpu_report.SIMULATOR_WARNING in md and gpu_report.PAPER_REFERENCE in md
    assert f"command: `purerigl bench gpu --part all --shape {GROWTH_SHAPE}" in md and "--quick" in md
    assert "- GPU: numba CUDA simulator" in md and "- libraries: none" in md
    assert "device-memory pool: not installed: the CUDA simulator has no device memory" in md
    assert report["meta"]["gpu"]["memory_pool"].startswith("not installed")
    assert md in result.output  # the markdown is also printed
    assert report["meta"]["estimate_s"] > 0 and report["meta"]["plan"].startswith("plan: ")


def test_quick_train_part_has_cpu_and_cuda_times_per_method(quick_run):
    _, report, md = quick_run
    rows = report["train"]
    assert [r["method"] for r in rows] == list(METHODS) * len(gpu.QUICK["train_batches"])
    assert report["errors"] == []
    for r in rows:
        for backend in ("cpu", "cuda"):
            assert r[backend]["step_ms"] > 0
            assert (r[backend]["update_ms"] is None) == (r["method"] == "static")
        assert r["step_speedup"] > 0
    assert report["meta"]["train"]["arch"] == "10-8-3"
    assert "synthetic inputs" in md and len(table_rows(md, "network")) == len(rows)


# ------------------------------------------------------------------------------------------ libraries


def test_auto_without_cupy_or_torch_reads_na(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    monkeypatch.setitem(sys.modules, "cupy", None)
    path = tmp_path / "g.json"
    result = run(["--quick", "--part", "kernels", "--format", "csr", "--batch", "1", "--json", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert report["meta"]["libraries"] == {} and report["train"] is None
    notes = " ".join(report["meta"]["notes"])
    assert "torch is not usable here" in notes and "cupy is not usable here" in notes
    assert [r["baselines"] for r in report["kernels"]] == [{}]
    assert "Measured here: not in this grid" in result.output


def test_named_library_that_does_not_import_exits_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    result = run(["--quick", "--part", "kernels", "--libraries", "torch"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--libraries" in errors[0] and "torch is not usable here" in errors[0]


def test_a_library_fills_its_baseline_columns(monkeypatch, tmp_path):
    monkeypatch.setitem(devices.LOADERS, "torch", HostLibrary)
    path = tmp_path / "g.json"
    result = run(["--quick", "--part", "kernels", "--libraries", "torch", "--format", "condensed", "--format", "csr",
                  "--json", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert report["meta"]["libraries"] == {"torch": {"version": "host stand-in"}}
    for r in report["kernels"]:
        b = r["baselines"]["torch"]
        assert b["dense"]["ok"] and b["csr"]["ok"] and b["dense_ms"] > 0 and b["csr_ms"] > 0
        assert b["dense_ratio"] == pytest.approx(b["dense_ms"] / r["purerigl_ms"])
        assert b["csr"]["timing"]["event_ms"] is not None  # a timed clock: its events give the time
    by_batch = {}
    for r in report["kernels"]:  # the dense time is measured once per batch and shared by the formats
        by_batch.setdefault(r["batch"], set()).add(r["baselines"]["torch"]["dense_ms"])
    assert all(len(times) == 1 for times in by_batch.values())
    cells = table_rows(result.output, "format")
    assert all(c[6] != "n/a" and c[8].endswith("x") for c in cells)
    assert "dense ms [torch]" in result.output


def test_quick_run_has_a_growth_row_per_sparsity_and_batch(quick_run):
    _, report, md = quick_run
    rows = report["growth"]
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.9, 1), (0.9, 4)]  # --quick's grid
    for r in rows:
        assert "error" not in r and r["purerigl_ms"] > 0 and r["m"] == int(0.3 * r["nnz"]) and r["baselines"] == {}
    assert "## Growth selection" in md and len(table_rows(md, "sparsity")) == 2


def test_growth_part_times_the_dense_route_and_checks_the_chosen_set(monkeypatch, tmp_path):
    """With a library (a host stand-in): one dense dY^T X, the dense top-m, their ratios to purerigl's
    streamed selection, and the overlap of the chosen sets (all of them here: no equal scores)."""
    monkeypatch.setitem(devices.LOADERS, "torch", HostLibrary)
    path = tmp_path / "g.json"
    result = run(["--quick", "--part", "growth", "--shape", GROWTH_SHAPE, "--libraries", "torch", "--json", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert report["kernels"] is None and report["train"] is None and report["errors"] == []
    for r in report["growth"]:
        b = r["baselines"]["torch"]
        assert b["overlap"] == 1.0 and b["grad_ms"] > 0 and b["topk_ms"] > 0
        assert b["topk_ratio"] == pytest.approx(b["topk_ms"] / r["purerigl_ms"])
    cells = table_rows(result.output, "sparsity")
    assert len(cells) == 2 and all(c[-1] == "100.0%" and c[-2].endswith("x") for c in cells)


def test_torch_dense_route_selects_the_top_m_outside_the_active_set():
    """TorchLibrary's dense route on torch's CPU device (the same calls as on the GPU)."""
    torch = pytest.importorskip("torch")
    lib = devices.TorchLibrary.__new__(devices.TorchLibrary)  # __init__ wants a GPU
    lib.torch, lib.device = torch, torch.device("cpu")
    rng = np.random.default_rng(0)
    X, dY = rng.standard_normal((5, 9)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    active = rng.random((4, 9)) < 0.3
    G = np.abs(dY.T @ X)
    np.testing.assert_allclose(lib.dense_grad(lib.upload(X), lib.upload(dY))().numpy(), dY.T @ X, rtol=1e-5)
    run, fetch = lib.dense_topk(lib.upload(X), lib.upload(dY), lib.upload(active), 6)
    want = np.argsort(-np.where(active, -1.0, G).ravel(), kind="stable")[:6]
    assert sorted(fetch(run()).tolist()) == sorted(want.tolist())


def test_a_growth_error_is_reported_not_raised(monkeypatch, tmp_path):
    """A library whose dense route raises: the row says error, the command reports it and goes on."""

    class Broken(HostLibrary):
        def dense_topk(self, X, dY, active, m):
            raise RuntimeError("no top-k here")

    monkeypatch.setitem(devices.LOADERS, "torch", Broken)
    path = tmp_path / "g.json"
    result = run(["--quick", "--part", "growth", "--shape", GROWTH_SHAPE, "--libraries", "torch", "--json", str(path)])
    report = json.loads(path.read_text())
    assert all("no top-k here" in r["baselines"]["torch"]["error"] for r in report["growth"])
    assert any("no top-k here" in e for e in report["errors"]) and "error" in result.output


def test_paper_line_shows_the_condensed_ratios_at_batch_256_and_90_percent():
    row = {"format": "condensed", "batch": 256, "sparsity": 0.9,
           "baselines": {"torch": {"dense_ratio": 0.5, "csr_ratio": 3.25}}}
    lines = gpu_report.paper_lines([row], ["torch"])
    assert lines[0] == f"Reference: {gpu_report.PAPER_REFERENCE}."
    assert "torch: 0.50x vs dense, 3.25x vs CSR" in lines[1]
    assert "n/a" in gpu_report.paper_lines([row], [])[1]


# ------------------------------------------------------------------------------------------ timing


def test_time_device_uses_events_of_a_timed_clock_and_batches_fast_calls():
    calls = []
    t = devices.time_device(lambda: calls.append(1), HostLibrary(), budget_s=0.01, max_call_s=1.0, min_runs=3)
    assert t["event_ms"] is not None and t["ms"] == t["event_ms"] and t["wall_ms"] > 0
    assert t["samples"] >= 3 and 1 <= t["calls_per_sample"] <= devices.MAX_PER_SAMPLE
    assert len(calls) == 3 + t["samples"] * t["calls_per_sample"]  # 2 warm-up calls and 1 sizing call


def test_time_device_falls_back_to_the_wall_clock_when_events_fail():
    class BrokenEvents(HostLibrary):
        def elapsed_ms(self, start, end):
            raise RuntimeError("no timing")

    t = devices.time_device(lambda: None, BrokenEvents(), budget_s=0.0, max_call_s=1.0, min_runs=2)
    assert t["event_ms"] is None and t["ms"] == t["wall_ms"] > 0 and "no timing" in t["event_error"]


def test_time_device_times_a_slow_call_once():
    t = devices.time_device(lambda: time.sleep(0.002), HostLibrary(), budget_s=1.0, max_call_s=0.001)
    assert t["samples"] == 1 and t["event_ms"] is None and t["ms"] >= 2.0


# ------------------------------------------------------------------------------------------ failures


def test_a_wrong_purerigl_product_fails_the_command(monkeypatch, tmp_path):
    import purerigl.kernels.cuda as cuda_module

    monkeypatch.setattr(cuda_module, "matmul", lambda W, X, out=None: cuda_module.zeros(tuple(out.shape)))
    path, md = tmp_path / "g.json", tmp_path / "g.md"
    result = run(["--quick", "--part", "kernels", "--libraries", "none", "--format", "csr", "--json", str(path),
                  "--out-md", str(md)])
    assert result.exit_code == 1
    assert "disagreed with the float64 reference" in result.output and "Traceback" not in result.output
    report = json.loads(path.read_text())  # written before the command failed
    assert all(not r["purerigl"]["ok"] and r["purerigl_ms"] is None for r in report["kernels"])
    assert len(report["failures"]) == len(report["kernels"]) and "WRONG" in md.read_text()


def test_no_usable_cuda_backend_exits_2(monkeypatch):
    from purerigl.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "unavailable_reason", lambda: "numba.cuda finds no usable NVIDIA GPU (test)")
    result = run(["--quick"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "backend 'cuda' is unavailable" in errors[0] and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, word",
    [
        (["--libraries", "mkl"], "--libraries"),
        (["--part", "everything"], "--part"),
        (["--sparsity", "1.5"], "--sparsity"),
        (["--batch", "0"], "--batch"),
        (["--format", "coo"], "--format"),
        (["--method", "magic"], "--method"),
        (["--shape", "12"], "--shape"),
        (["--quick", "--hidden", "a,b"], "--hidden"),
        (["--quick", "--part", "train", "--hidden", "2", "--train-sparsity", "0.9"], "k = 0"),
        (["--quick", "--part", "train", "--model", "lenet5", "--hidden", "8"], "--hidden"),
        (["--quick", "--part", "train", "--model", "alexnet"], "--model"),
    ],
)
def test_bad_option_exits_2_with_one_line_error(args, word):
    result = run(args)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and word in errors[0]


# ------------------------------------------------------------------------------------------ data


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason="shared MNIST files not present")
def test_train_part_reads_mnist_from_data_dir(tmp_path):
    path = tmp_path / "g.json"
    result = run(["--quick", "--part", "train", "--method", "static", "--data-dir", str(MNIST), "--json", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert report["kernels"] is None and report["meta"]["train"]["arch"] == "784-8-10"
    assert report["meta"]["train"]["inputs"].startswith("MNIST training images")
    assert [r["method"] for r in report["train"]] == ["static"] and report["train"][0]["cuda"]["step_ms"] > 0


# ------------------------------------------------------------------------------------------ CNNs


def test_train_part_times_a_cnn_on_both_backends_and_its_dense_torch_twin(tmp_path):
    pytest.importorskip("torch")
    path, md_path = tmp_path / "g.json", tmp_path / "g.md"
    result = run(["--quick", "--part", "train", "--model", "lenet5", "--method", "static", "--method", "rigl",
                  "--train-batch", "2", "--json", str(path), "--out-md", str(md_path)])
    assert result.exit_code == 0, result.output
    report, md = json.loads(path.read_text()), md_path.read_text()
    train = report["meta"]["train"]
    assert (train["model"], train["input_shape"]) == ("lenet5", [1, 4, 4])
    assert train["arch"] == "lenet5 1x4x4 channels=(2, 4) hidden=(8,)"  # the simulator's narrow LeNet-5
    rows = report["train"]
    assert [r["method"] for r in rows] == ["static", "rigl"] and report["errors"] == []
    for r in rows:
        assert r["cpu"]["step_ms"] > 0 and r["cuda"]["step_ms"] > 0
        assert r["torch_dense"]["step_ms"] > 0 and r["torch_dense"]["device"] in ("cpu", "cuda")
        assert r["dense_speedup"] == pytest.approx(r["torch_dense"]["step_ms"] / r["cuda"]["step_ms"])
    assert rows[0]["torch_dense"] == rows[1]["torch_dense"]  # timed once per batch
    assert "lenet5 1x4x4 channels=(2, 4) hidden=(8,) CNN at 0.7 sparsity" in md and "torch dense step ms (" in md
    assert len(table_rows(md, "network")) == 2


def test_without_torch_the_dense_twin_is_skipped_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    path = tmp_path / "g.json"
    result = run(["--quick", "--part", "train", "--method", "static", "--json", str(path), "--out-md",
                  str(tmp_path / "g.md")])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert report["errors"] == [] and "skipped" in report["train"][0]["torch_dense"]
    assert "torch dense not timed: PyTorch is not installed" in (tmp_path / "g.md").read_text()
    off = run(["--quick", "--part", "train", "--method", "static", "--no-torch-dense", "--json", str(path)])
    assert off.exit_code == 0 and "torch_dense" not in json.loads(path.read_text())["train"][0]
