"""``purerigl train --model``: the built-in CNNs from the command line (issue 16), their model files
(every array and the batch normalisation statistics written and read back), an exact resume of a
network with batch normalisation, inspect's per-filter summary, and the refusals (exit 2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from purerigl.data import load_dataset
from purerigl.dst import UpdateSchedule, make_method
from purerigl.dst.updater import DSTUpdater
from purerigl.nn.models import build_model
from purerigl.report.summary import inspect_model_file
from purerigl.training.checkpoint import load_model, load_training_state, save_model, save_training_checkpoint
from purerigl.training.loop import TrainConfig, Trainer
from test_cli_train import assert_usage_error, invoke

SMALL_VGG = {"widths": (4, 8)}


def _digits(n_train=256, n_test=64):
    full = load_dataset("digits", None, seed=0)
    return dataclasses.replace(full, x_train=full.x_train[:n_train], y_train=full.y_train[:n_train],
                               x_test=full.x_test[:n_test], y_test=full.y_test[:n_test])


def _trainer(data, epochs=2, method="srigl", fmt="condensed"):
    net = build_model("vgg-small", (1, 8, 8), 10, fmt=fmt, sparsity=0.8, rng=np.random.default_rng(0),
                      backend="cpu", **SMALL_VGG)
    budgets = {lin.name: lin.W.nnz for lin in net.sparse_layers()}
    steps = epochs * -(-data.x_train.shape[0] // 32)
    updater = DSTUpdater(make_method(method, fmt), UpdateSchedule.from_fraction(steps, delta_t=3, alpha=0.3,
                                                                                   t_end=0.9), budgets, seed=0)
    return Trainer(net, data, TrainConfig(epochs=epochs, batch_size=32, lr=0.05, seed=0), topology=updater)


def test_a_network_with_batch_norm_resumes_exactly(tmp_path):
    """Two epochs straight against one epoch, a checkpoint, a fresh trainer and one more epoch: the same
    weights, structures, batch-norm parameters and running statistics, bit for bit."""
    data = _digits()
    straight = _trainer(data)
    straight.fit()
    first = _trainer(data)
    first.warm_up()
    first.topology.begin(first.model)
    first.run_epoch()
    save_training_checkpoint(tmp_path / "ckpt.npz", first)
    resumed = _trainer(data)
    load_training_state(tmp_path / "ckpt.npz", resumed)
    resumed.fit()
    a, b = straight.model, resumed.model
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.host, q.host, err_msg=p.name)
    for (k, v), (k2, v2) in zip(sorted(a.buffers().items()), sorted(b.buffers().items())):
        assert k == k2
        np.testing.assert_array_equal(v, v2, err_msg=k)
    assert straight.history[-1]["test_loss"] == resumed.history[-1]["test_loss"]


@pytest.mark.parametrize("fmt", ["condensed", "diagonal", "csr"])
def test_model_file_round_trip_of_a_network(fmt, tmp_path):
    data = _digits(128, 64)
    method = {"condensed": "srigl", "diagonal": "diag-rigl", "csr": "rigl"}[fmt]
    tr = _trainer(data, epochs=1, method=method, fmt=fmt)
    tr.fit()
    save_model(tmp_path / "m.npz", tr.model, dataset="digits")
    loaded, meta = load_model(tmp_path / "m.npz", backend="cpu")
    assert meta["network"]["model"] == "vgg-small"
    np.testing.assert_array_equal(loaded.predict(data.x_test), tr.model.predict(data.x_test))
    assert [r["nnz"] for r in loaded.describe()] == [r["nnz"] for r in tr.model.describe()]


def test_lenet5_trains_from_the_command_line_and_is_inspected(tmp_path):
    out = tmp_path / "run"
    result = invoke(["train", "--model", "lenet5", "--method", "srigl", "--gamma-sal", "0.9", "--epochs", 2,
                     "--out", out, "--no-progress", "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    assert "conv1: condensed" in result.output and "conv0: dense" in result.output  # first conv dense by default
    report = inspect_model_file(out)
    conv = {r["layer"]: r for r in report["layers"]}["conv1"]["conv"]
    assert conv["filters"] == 16 and conv["c_in"] == 6 and conv["kernel"] == [5, 5]
    assert conv["ablated_filters"] >= 0 and conv["channels_unread"] <= 6
    evaluated = invoke(["evaluate", out / "model.npz", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    other = invoke(["evaluate", out / "model.npz", "--dataset", "synthetic"])  # 100 features a row
    assert_usage_error(other, "images of shape 1 x 8 x 8 (64 values)", "synthetic has 100 features")


def test_sparse_first_and_last_make_every_layer_sparse(tmp_path):
    out = tmp_path / "run"
    result = invoke(["train", "--model", "lenet5", "--sparse-first", "--sparse-last", "--epochs", 1, "--out", out,
                     "--no-progress", "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    assert "dense" not in "".join(line for line in result.output.splitlines() if line.startswith("  conv")
                                  or line.startswith("  fc"))


@pytest.mark.parametrize("args, words", [
    (["--model", "lenet5", "--dataset", "synthetic"], ["--input-shape"]),
    (["--model", "lenet5", "--input-shape", "1,9,9"], ["81 values", "64 features"]),
    (["--model", "lenet5", "--input-shape", "1,x,8"], ["three positive integers"]),
    (["--model", "lenet5", "--input-shape", "64,1,1"], ["lenet5", "64"]),
])
def test_refusals(args, words, tmp_path):
    result = invoke(["train", *args, "--epochs", 1, "--out", tmp_path / "r", "--no-progress", "--backend", "cpu"])
    assert_usage_error(result, *words)


def test_vit_trains_and_inspect_counts_connections_per_head(tmp_path):
    out = tmp_path / "vit"
    result = invoke(["train", "--model", "vit-tiny", "--vit-width", 16, "--vit-depth", 1, "--vit-heads", 2,
                     "--method", "srigl", "--gamma-sal", "0.9", "--epochs", 1, "--out", out, "--no-progress",
                     "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    config = (out / "config.json").read_text()
    assert '"optimizer": "adamw"' in config and '"warmup_steps": 1' in config  # the ViT's defaults, resolved
    rows = {r["layer"]: r for r in inspect_model_file(out)["layers"]}
    qkv, proj = rows["block0.qkv"], rows["block0.proj"]
    assert [(e["part"], e["head"]) for e in qkv["heads"]] == [(p, h) for p in "qkv" for h in (0, 1)]
    assert sum(e["nnz"] for e in qkv["heads"]) == qkv["nnz"] and qkv["shape"] == [48, 16]
    assert sum(e["nnz"] for e in proj["heads"]) == proj["nnz"] and len(proj["heads"]) == 2
    assert rows["embed"]["format"] == "dense" and rows["head"]["format"] == "dense" and rows["head"]["heads"] is None
    text = invoke(["inspect", out])
    assert "block0.qkv per head (nnz): q0 " in text.output


def test_resnet20_trains_on_cifar10_files(tmp_path):
    """resnet20 from the command line on CIFAR-10 batch files in the real format (pickled, uint8 rows in
    channel-major order: read as 3 x 32 x 32). (On synthetic images, ``--dataset synthetic --input-shape
    1,10,10``, it trains too: about a minute for the 4000 images, so not in the suite.)"""
    from data_fixtures import cifar_files

    data_dir = tmp_path / "cifar" / "cifar-10-batches-py"
    data_dir.mkdir(parents=True)
    for name, content in cifar_files(8).items():
        (data_dir / name).write_bytes(content)
    out = tmp_path / "cifar-run"
    result = invoke(["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", tmp_path / "cifar",
                     "--method", "rigl", "--epochs", 1, "--batch-size", 8, "--out", out, "--no-progress",
                     "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    assert "conv0: dense        16 x 27" in result.output  # 3 x 32 x 32 images: a 3 x 3 conv over 3 channels
