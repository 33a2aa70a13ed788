"""Options a run never reads: ``purerigl train`` names them in one warning line and still runs.

Pins down: the table of who reads what agrees with the methods themselves (``scores_by_gradient``,
the static baseline), each rule of :func:`cli._ignored.ignored_options` (another method's option, a
model's option, ``--sparsity 0``, DynaDiag without a soft phase or without swaps), that defaults are
never reported, and that the sweep no longer hands CNN cells the MLP's ``--hidden``.
"""

from __future__ import annotations

import pytest

from purerigl.cli._ignored import BY_GRADIENT, DYNAMIC, METHOD_READERS, ignored_options, warning_line
from purerigl.dst import METHOD_CLASSES, METHODS
from purerigl.report.sweep import Budget, Cell
from test_cli_train import invoke


def opts(**over):
    base = {"method": "rigl", "sparsity": 0.9, "model": "mlp", "epochs": 10, "dynadiag_soft": "window",
            "dynadiag_freeze": "at_epoch", "dynadiag_freeze_epoch": None}
    return {**base, **over}


@pytest.mark.parametrize("method", METHODS)
def test_the_table_agrees_with_the_methods(method):
    classes = METHOD_CLASSES[method]
    assert (method in BY_GRADIENT) == any(getattr(c, "scores_by_gradient", False) for c in classes)
    assert (method in DYNAMIC) == (method != "static")
    assert all(c.name == "static" for c in classes) == (method == "static")


@pytest.mark.parametrize(
    "run, given, expected",
    [
        (opts(), {"gamma_sal", "alpha", "grad_accumulation"}, ["gamma_sal"]),
        (opts(method="srigl"), {"gamma_sal", "gse_sampler"}, ["gse_sampler"]),
        (opts(method="gse"), {"gse_gamma", "gse_sampler", "grad_accumulation"}, []),
        (opts(method="set"), {"grad_accumulation", "delta_t"}, ["grad_accumulation"]),
        (opts(method="static"), {"delta_t", "alpha", "t_end", "distribution"}, ["delta_t", "alpha", "t_end"]),
        (opts(sparsity=0.0), {"alpha", "distribution", "hidden"}, ["alpha", "distribution"]),
        (opts(method="diag-rigl"), {"dynadiag_t_max"}, ["dynadiag_t_max"]),
        (opts(method="dynadiag"), {"dynadiag_t_max", "delta_t", "gamma_sal"}, ["gamma_sal"]),
        (opts(method="dynadiag", dynadiag_freeze="at_start"), {"dynadiag_t_max", "delta_t", "dynadiag_freeze"},
         ["delta_t", "dynadiag_t_max"]),
        (opts(method="dynadiag", epochs=3), {"dynadiag_l1"}, ["dynadiag_l1"]),  # default freeze: epoch 1
        (opts(method="dynadiag", epochs=3, dynadiag_freeze_epoch=2), {"dynadiag_l1"}, []),
        (opts(method="dynadiag", dynadiag_soft="all"), {"delta_t", "dynadiag_window", "dynadiag_t_min"},
         ["delta_t", "dynadiag_window"]),
        (opts(method="dynadiag", dynadiag_freeze="never"), {"dynadiag_freeze_values", "dynadiag_t_max"},
         ["dynadiag_freeze_values"]),
        (opts(model="vgg-small"), {"hidden", "input_shape", "vit_width"}, ["hidden", "vit_width"]),
        (opts(model="vit-tiny"), {"vit_width", "input_shape"}, []),
        (opts(), {"input_shape", "hidden"}, ["input_shape"]),
    ],
)
def test_ignored_options(run, given, expected):
    found = [name for name, _ in ignored_options(run, given)]
    assert sorted(found) == sorted(expected)


def test_every_method_option_has_readers():
    for name, readers in METHOD_READERS.items():
        assert readers and set(readers) <= set(METHODS), name


def test_warning_line_groups_options_by_reason():
    line = warning_line([("alpha", "why a"), ("t_end", "why a"), ("gamma_sal", "why b")],
                        {"alpha": "--alpha", "t_end": "--t-end", "gamma_sal": "--gamma-sal"})
    assert line == "warning: no effect on this run: --alpha, --t-end (why a); --gamma-sal (why b)"
    assert warning_line([], {}) is None


def _train(tmp_path, *extra):
    args = ["train", "--epochs", 1, "--hidden", 16, "--out", tmp_path / "run", "--no-progress", *extra]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.startswith("warning:")]


def test_cli_warns_about_an_option_of_another_method_and_trains(tmp_path):
    (line,) = _train(tmp_path, "--method", "rigl", "--gamma-sal", 0.5)
    assert "--gamma-sal" in line and "srigl" in line and "--method rigl" in line
    assert (tmp_path / "run" / "model.npz").exists()


@pytest.mark.parametrize("extra", [[], ["--method", "srigl", "--gamma-sal", 0.5], ["--method", "rigl", "--alpha", 0.3]])
def test_cli_is_silent_when_every_option_is_read(tmp_path, extra):
    assert _train(tmp_path, *extra) == []


def test_sweep_gives_hidden_to_mlp_cells_only():
    cell = Cell("rigl", 0.9, 0)
    assert "--hidden" not in Budget(dataset="mnist", model="vgg-small").train_args(cell)
    mlp = Budget(dataset="mnist", hidden="32").train_args(cell)
    assert mlp[mlp.index("--hidden") + 1] == "32"
