"""``purerigl plot`` through click's CliRunner, and the connectivity image it draws from indices.

Pins down: the PNG files written for a sparse run (curves, density, one connectivity figure per
sparse layer) and a dense one (curves only), ``--out``, bad run directories (exit 2, one Error line),
the install message when matplotlib is missing, and that the block-density image of a large layer
equals the block means of its mask computed densely on a small case.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner
from purerigl.cli.main import main

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.report.plots import connectivity_image

pytest.importorskip("matplotlib")

CLEAN_ENV = {"PURERIGL_BACKEND": None, "PURERIGL_DATA": None}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], env=CLEAN_ENV)


def assert_usage_error(result, *words):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("plot")
    out = {}
    for name, extra in {"srigl": ["--method", "srigl", "--gamma-sal", "0.9", "--delta-t", "5"],
                        "dense": ["--sparsity", "0"]}.items():
        args = ["train", "--epochs", 3, "--hidden", 32, "--out", base / name, "--no-progress", "--backend", "cpu", *extra]
        result = invoke(args)
        assert result.exit_code == 0, result.output
        out[name] = base / name
    return out


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), path


def test_plot_writes_the_figures_of_a_sparse_run(runs):
    """Default output RUN_DIR/plots: curves, density and one connectivity figure per sparse layer,
    every one a non-empty PNG and listed in the output."""
    run = runs["srigl"]
    result = invoke(["plot", run])
    assert result.exit_code == 0, result.output
    expected = ["curves.png", "density.png", "layer0_connectivity.png", "layer1_connectivity.png"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(expected)
    for name in expected:
        assert_png(run / "plots" / name)
        assert str(run / "plots" / name) in result.output
    assert "wrote 4 file(s)" in result.output


def test_plot_out_and_dense_run(runs, tmp_path):
    """--out chooses the directory; a dense run has curves only, and the output says why not more."""
    result = invoke(["plot", runs["dense"], "--out", tmp_path / "figs"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["curves.png"]
    assert_png(tmp_path / "figs" / "curves.png")
    assert "layer0 is dense" in result.output and "no per-layer topology" in result.output


def test_bad_run_directory_exits_2(tmp_path, runs):
    assert_usage_error(invoke(["plot", tmp_path / "missing"]), "no such run directory")
    assert_usage_error(invoke(["plot", runs["srigl"] / "model.npz"]), "not a directory")
    assert_usage_error(invoke(["plot", tmp_path]), "not a run directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"epoch": 1}\n{not json\n')
    assert_usage_error(invoke(["plot", broken]), "line 2", "not valid JSON")


def test_without_matplotlib_the_message_names_the_extra(runs, monkeypatch):
    """With matplotlib unimportable (sys.modules entry None), exit 2 with the pip command."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_usage_error(invoke(["plot", runs["srigl"]]), "pip install 'purerigl[plot]'")


@pytest.mark.parametrize(
    "W",
    [
        CSR.random((37, 53), 0.2, 1),
        Condensed.random((40, 30), 0.1, 2),
        Diagonal.random((23, 61), 0.1, 3),
    ],
    ids=["csr", "condensed", "diagonal"],
)
def test_density_image_is_the_block_mean_of_the_mask(W):
    """Forced to bin (max_positions 0), the image is the mean of the dense mask over each block
    (rows i * a // n_out, columns j * b // n_in), here computed from W.to_dense() of a small layer."""
    mask, kind = connectivity_image(W)
    assert kind == "mask"
    np.testing.assert_array_equal(mask, mask_of(W))
    image, kind = connectivity_image(W, max_positions=0, bins=(8, 16))
    assert kind == "density"
    n_out, n_in = W.shape
    rb, cb = np.arange(n_out) * 8 // n_out, np.arange(n_in) * 16 // n_in
    dense = mask_of(W).astype(float)
    want = np.array([[dense[rb == a][:, cb == b].mean() for b in range(16)] for a in range(8)])
    np.testing.assert_allclose(image, want)


def mask_of(W):
    """The structure as a dense bool matrix (explicit zeros count as stored)."""
    m = W.to_scipy()
    out = np.zeros(W.shape, dtype=bool)
    out[np.repeat(np.arange(W.n_out), np.diff(m.indptr)), m.indices] = True
    return out
