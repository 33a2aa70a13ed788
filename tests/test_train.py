"""The training loop (``purerigl.training.loop``) and checkpoints (``purerigl.training.checkpoint``).

Pins down: a short run learns (every format and the dense baseline); the metrics dicts; static
training keeps the sparse structure; bit-identical determinism and exact resume from a training
checkpoint; configuration errors and divergence; the model file's schema, exact round trip and
load errors; atomic writes; and that the NumPy snippet in docs/checkpoints.md evaluates a saved model
without purerigl.

Data: a small, well separated synthetic problem (4 Gaussian blobs in 16 dimensions, raw values around
50 so that the normalisation matters) built with ``from_arrays``. Everything runs on the cpu backend.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from purerigl.training.checkpoint import (
    CheckpointError,
    atomic_write,
    load_model,
    load_training_state,
    read_meta,
    save_model,
    save_training_checkpoint,
)
from purerigl.data import from_arrays
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.nn import build_mlp, softmax_cross_entropy
from purerigl.training.loop import (
    PHASES,
    TopologyUpdater,
    TrainConfig,
    TrainConfigError,
    Trainer,
    TrainingDiverged,
    evaluate,
    fit,
)

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["condensed", "diagonal", "csr"]
ALL = FORMATS + ["dense"]
N_FEATURES, N_CLASSES, HIDDEN = 16, 4, "24"

METRIC_KEYS = {
    "epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "samples_per_second",
    "forward_seconds", "backward_seconds", "optimizer_seconds", "topology_seconds",
}
STRUCTURE = {Condensed: ("rows", "indices"), Diagonal: ("offsets",), CSR: ("indptr", "indices")}


def _is_timing(key: str) -> bool:
    return key.endswith("seconds") or key == "samples_per_second"


def _strip_timing(history):
    return [{k: v for k, v in m.items() if not _is_timing(k)} for m in history]


def _raw_blobs(seed=0, n_train=480, n_test=160):
    """Raw (unnormalised) inputs of 4 Gaussian blobs: x = 50 + 10 * (mean_c + noise)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((N_CLASSES, N_FEATURES)) * 2.0

    def draw(n):
        y = rng.integers(0, N_CLASSES, n)
        return (50 + 10 * (means[y] + rng.standard_normal((n, N_FEATURES)))).astype(np.float32), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="module")
def raw():
    return _raw_blobs()


@pytest.fixture(scope="module")
def data(raw):
    return from_arrays("blobs", *raw, n_classes=N_CLASSES)


def _model(fmt, seed=1, backend="cpu"):
    if fmt == "dense":
        return build_mlp(N_FEATURES, HIDDEN, N_CLASSES, sparsity=0.0, rng=seed)
    return build_mlp(N_FEATURES, HIDDEN, N_CLASSES, fmt=fmt, sparsity=0.6, backend=backend, rng=seed)


def _config(**kw):
    base = dict(epochs=3, batch_size=32, lr=0.05, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _structure(model):
    out = {}
    for lin in model.sparse_layers():
        for attr in STRUCTURE[type(lin.W)]:
            out[f"{lin.name}.{attr}"] = getattr(lin.W, attr).copy()
    return out


def _weights(model):
    return {p.name: p.value.copy() for p in model.parameters()}


# --------------------------------------------------------------------------------------------------
# a short training run


@pytest.mark.parametrize("fmt", ALL)
def test_short_run_learns_and_reports_metrics(fmt, data):
    """Three epochs on the blobs: the training loss falls epoch over epoch and the test loss falls
    below its value at initialisation; test accuracy ends far above chance (0.25); every metrics
    dict has the documented keys with sane values; static training keeps the sparse structure
    (indices/rows/offsets/indptr) bit-identical while the values change."""
    model = _model(fmt)
    before = evaluate(model, data.x_test, data.y_test)
    structure0, weights0 = _structure(model), _weights(model)
    history = fit(model, data, _config())

    assert [m["epoch"] for m in history] == [1, 2, 3]
    for m in history:
        assert METRIC_KEYS <= m.keys(), METRIC_KEYS - m.keys()
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["test_loss"])
        assert m["seconds"] > 0 and m["samples_per_second"] > 0
        assert all(m[f"{p}_seconds"] >= 0 for p in PHASES)
        assert m["forward_seconds"] + m["backward_seconds"] + m["optimizer_seconds"] <= m["seconds"]
    assert history[0]["step"] == 15 and history[-1]["step"] == 45  # ceil(480 / 32) per epoch
    losses = [m["train_loss"] for m in history]
    assert losses[2] < losses[1] < losses[0], losses
    assert history[-1]["test_loss"] < 0.5 * before["loss"], (before, history[-1])
    assert history[-1]["test_accuracy"] >= 0.8, history[-1]
    # the reported test metrics are those of the final model
    after = evaluate(model, data.x_test, data.y_test)
    assert after == {"loss": history[-1]["test_loss"], "accuracy": history[-1]["test_accuracy"]}

    structure1 = _structure(model)
    assert structure1.keys() == structure0.keys()
    for key in structure0:
        np.testing.assert_array_equal(structure1[key], structure0[key], err_msg=key)
    for name, w0 in weights0.items():
        if name.endswith((".values", ".weight")):
            assert not np.array_equal(_weights(model)[name], w0), f"{name} did not change"
    for lin in model.sparse_layers():
        assert lin.weight.value is lin.W.values  # still wired after training


def test_training_is_deterministic_for_a_seed(data):
    """The same seed twice gives bit-identical weights and metrics (timings aside), on the parallel
    cpu backend; another shuffling seed gives different weights (so the check is not vacuous)."""
    for fmt in ALL:
        runs = []
        for seed in (3, 3, 4):
            model = _model(fmt)
            runs.append((_weights(model), fit(model, data, _config(epochs=2, seed=seed)), model))
        (w_a, h_a, m_a), (w_b, h_b, m_b), (_, _, m_c) = runs
        assert _strip_timing(h_a) == _strip_timing(h_b), fmt
        for p, q, r in zip(m_a.parameters(), m_b.parameters(), m_c.parameters()):
            np.testing.assert_array_equal(p.value, q.value, err_msg=f"{fmt} {p.name}")
        assert any(not np.array_equal(p.value, r.value) for p, r in zip(m_a.parameters(), m_c.parameters()))


def test_evaluate_is_the_sample_weighted_mean_over_batches(data):
    """evaluate() in small batches (the last one partial) gives the full-batch mean loss and the
    fraction of correct argmax predictions; an empty split gives NaN."""
    model = _model("csr")
    res = evaluate(model, data.x_test, data.y_test, batch_size=7)
    logits = model.predict(data.x_test)
    loss, _ = softmax_cross_entropy(logits, data.y_test)
    assert res["loss"] == pytest.approx(loss, rel=1e-6)
    assert res["accuracy"] == np.mean(logits.argmax(axis=1) == data.y_test)
    empty = evaluate(model, data.x_test[:0], data.y_test[:0])
    assert math.isnan(empty["loss"]) and math.isnan(empty["accuracy"])


def test_topology_updater_hook_is_called_after_every_step(data):
    """A TopologyUpdater sees every optimizer step (1, 2, ... total) after the update, and the dict
    it returns is merged into the epoch's metrics."""

    class Recorder(TopologyUpdater):
        name = "recorder"

        def __init__(self):
            self.steps = []

        def after_step(self, step, model, optimizer):
            assert optimizer.steps == step
            self.steps.append(step)
            return {"last_step_seen": step}

    rec = Recorder()
    trainer = Trainer(_model("condensed"), data, _config(epochs=2), topology=rec)
    history = trainer.fit()
    assert rec.steps == list(range(1, 31))
    assert [m["last_step_seen"] for m in history] == [15, 30]


# --------------------------------------------------------------------------------------------------
# configuration errors and divergence


@pytest.mark.parametrize(
    "kwargs, numbers",
    [
        ({"epochs": 0}, ["0"]),
        ({"batch_size": 0}, ["0"]),
        ({"batch_size": 481}, ["481", "480"]),
        ({"lr": 0.0}, ["0"]),
        ({"lr": -0.5}, ["-0.5"]),
    ],
)
def test_bad_config_raises_train_config_error(kwargs, numbers, data):
    """Out-of-range options raise TrainConfigError (a ValueError) quoting the numbers, both from
    TrainConfig.check and when a Trainer is built."""
    config = _config(**kwargs)
    with pytest.raises(TrainConfigError) as info:
        config.check(480)
    assert isinstance(info.value, ValueError)
    for n in numbers:
        assert re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", str(info.value)), str(info.value)
    with pytest.raises(TrainConfigError):
        Trainer(_model("csr"), data, config)
    _config().check(480)  # the base config itself is fine
    _config(batch_size=480).check(480)


def test_absurd_learning_rate_raises_training_diverged(data):
    """lr = 1e30 blows the weights up; the loop stops with TrainingDiverged instead of training on NaN."""
    with pytest.raises(TrainingDiverged) as info:
        fit(_model("condensed"), data, _config(lr=1e30, schedule="constant"))
    assert isinstance(info.value, FloatingPointError)
    assert "loss" in str(info.value)


def test_infinite_inputs_raise_training_diverged(raw):
    """Inputs scaled to overflow float32 make the loss non-finite at the first step: TrainingDiverged."""
    data = from_arrays("blobs", *raw, n_classes=N_CLASSES)
    with np.errstate(all="ignore"):
        data.x_train[...] *= np.float32(3e38)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        fit(_model("csr"), data, _config(epochs=1))
    assert "step 0" in str(info.value)


class _Poison(TopologyUpdater):
    """Sets a weight to Inf after optimizer step ``at``, then optionally raises a library error."""

    def __init__(self, at, error=None):
        self.at, self.error = at, error

    def after_step(self, step, model, optimizer):
        if step == self.at:
            model.linears[0].bias.value[0] = np.inf
        if self.error is not None and step == self.at:
            raise self.error
        return {}


def test_divergence_in_the_last_step_of_an_epoch_is_caught_by_the_test_loss(data):
    """Weights broken by the last step of epoch 1 give a non-finite test loss: TrainingDiverged before
    the epoch is reported (no on_epoch call, nothing in history), naming the epoch and the step."""
    reported = []
    trainer = Trainer(_model("csr"), data, _config(), topology=_Poison(at=15))  # 480 / 32 = 15 steps an epoch
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        trainer.fit(on_epoch=lambda tr, m: reported.append(m))
    assert "test loss" in str(info.value) and "epoch 1" in str(info.value) and "step 14" in str(info.value)
    assert reported == [] and trainer.history == []


def test_a_topology_error_on_broken_weights_is_reported_as_divergence(data):
    """A library error raised by the topology update while the weights are no longer finite (a sampler
    refusing NaN scores, say) becomes TrainingDiverged; on finite weights it propagates unchanged."""
    from purerigl.dst import MethodError

    trainer = Trainer(_model("csr"), data, _config(), topology=_Poison(at=3, error=MethodError("NaN scores")))
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match="step 2"):
        trainer.fit()

    class Fails(TopologyUpdater):
        def after_step(self, step, model, optimizer):
            raise MethodError("a genuine bug")

    with pytest.raises(MethodError, match="genuine"):
        Trainer(_model("csr"), data, _config(), topology=Fails()).fit()


# --------------------------------------------------------------------------------------------------
# model files


EXPECTED_ARRAYS = {
    "condensed": {"rows": np.int32, "indices": np.int32, "values": np.float32, "bias": np.float32},
    "diagonal": {"offsets": np.int32, "values": np.float32, "bias": np.float32},
    "csr": {"indptr": np.int64, "indices": np.int32, "values": np.float32, "bias": np.float32},
    "dense": {"weight": np.float32, "bias": np.float32},
}


def _trained(fmt, data, epochs=1):
    model = _model(fmt)
    fit(model, data, _config(epochs=epochs))
    return model


@pytest.fixture(scope="module")
def trained(data):
    """One briefly trained model per format (and dense), shared by the file tests."""
    return {fmt: _trained(fmt, data) for fmt in ALL}


@pytest.mark.parametrize("fmt", ALL)
def test_save_load_round_trip_reproduces_predictions_exactly(fmt, trained, data, tmp_path):
    """save_model -> load_model gives the same layers and bit-identical predictions; the file holds
    exactly the documented arrays with the documented dtypes and a JSON meta string."""
    model = trained[fmt]
    path = tmp_path / "model.npz"
    save_model(path, model, dataset="blobs", normalisation={"mean": data.mean, "std": data.std})
    loaded, meta = load_model(path, backend="cpu")
    np.testing.assert_array_equal(loaded.predict(data.x_test), model.predict(data.x_test))
    assert [type(lin) for lin in loaded.linears] == [type(lin) for lin in model.linears]
    assert loaded.linears[0].needs_input_grad is False

    assert meta["schema"] == "purerigl.model" and meta["schema_version"] == 1
    assert meta["dataset"] == "blobs"
    assert meta["normalisation"] == {"mean": data.mean, "std": data.std}
    assert meta["layers"] == [
        {"kind": "dense" if fmt == "dense" else "sparse", "format": fmt, "shape": [24, 16], "activation": "relu"},
        {"kind": "dense" if fmt == "dense" else "sparse", "format": fmt, "shape": [4, 24], "activation": "none"},
    ]
    with np.load(path, allow_pickle=False) as f:
        files = {k: f[k] for k in f.files}
    meta_arr = files.pop("meta")
    assert meta_arr.shape == () and meta_arr.dtype.kind == "U"
    assert json.loads(str(meta_arr)) == meta
    expected = {f"layer{i}.{name}": dt for i in (0, 1) for name, dt in EXPECTED_ARRAYS[fmt].items()}
    assert {k: v.dtype for k, v in files.items()} == {k: np.dtype(v) for k, v in expected.items()}
    assert files["layer0.bias"].shape == (24,) and files["layer1.bias"].shape == (4,)
    if fmt == "csr":
        assert files["layer0.indptr"].shape == (25,)


def test_round_trip_keeps_ablated_rows_and_explicit_zeros(data, tmp_path):
    """A condensed layer with ablated rows and stored 0.0 values loads with the same structure
    (structure is never inferred from values) and the same predictions."""
    model = _model("condensed")
    rng = np.random.default_rng(0)
    rows = np.array([0, 3, 4, 10, 23], dtype=np.int32)
    indices = np.stack([np.sort(rng.choice(16, 5, replace=False)) for _ in rows]).astype(np.int32)
    values = rng.standard_normal((5, 5)).astype(np.float32)
    values[1, 2] = 0.0
    model.linears[0].set_structure(Condensed(rows, indices, values, (24, 16)))
    save_model(tmp_path / "m.npz", model)
    loaded, _ = load_model(tmp_path / "m.npz")
    W = loaded.linears[0].W
    np.testing.assert_array_equal(W.rows, rows)
    np.testing.assert_array_equal(W.indices, indices)
    np.testing.assert_array_equal(W.values, values)
    np.testing.assert_array_equal(loaded.predict(data.x_test), model.predict(data.x_test))


def _rewrite(src, dst, mutate):
    """Copy the model file src to dst after mutate(arrays, meta) edits the arrays / meta in place."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k].copy() for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    mutate(arrays, meta)
    np.savez(dst, meta=np.array(json.dumps(meta)), **arrays)
    return dst


def _swap_first_two(key):
    def mutate(arrays, meta):
        a = arrays[key]
        if a.ndim == 2:
            a[0, [0, 1]] = a[0, [1, 0]]
        else:
            a[[0, 1]] = a[[1, 0]]

    return mutate


def _set(key, index, value):
    def mutate(arrays, meta):
        arrays[key][index] = value

    return mutate


BAD_FILES = {
    # name: (format, mutation, words the message must contain)
    "other schema_version": ("csr", lambda a, m: m.update(schema_version=2), ["schema version 2"]),
    "other schema": ("csr", lambda a, m: m.update(schema="something.else"), ["schema"]),
    "unsorted condensed indices": ("condensed", _swap_first_two("layer0.indices"), ["layer0", "increasing"]),
    "duplicate condensed rows": ("condensed", _set("layer0.rows", 1, 0), ["layer0", "rows"]),
    "out-of-range csr index": ("csr", _set("layer0.indices", 0, 16), ["layer0", "16"]),
    "csr indptr end": ("csr", _set("layer1.indptr", -1, 1), ["layer1", "indptr"]),
    "unsorted csr row": ("csr", lambda a, m: None, ["layer0"]),  # filled in below
    "unsorted diagonal offsets": ("diagonal", _swap_first_two("layer0.offsets"), ["layer0", "offsets"]),
    "diagonal offset out of range": ("diagonal", _set("layer1.offsets", -1, 24), ["layer1", "24"]),
    "float64 values": ("condensed", lambda a, m: a.update({"layer0.values": a["layer0.values"].astype(np.float64)}), ["float32"]),
    "missing array": ("csr", lambda a, m: a.pop("layer1.indptr"), ["layer1.indptr"]),
    "bias shape": ("dense", lambda a, m: a.update({"layer1.bias": np.zeros(5, np.float32)}), ["layer1.bias"]),
    "dense weight shape": ("dense", lambda a, m: a.update({"layer0.weight": np.zeros((16, 24), np.float32)}), ["layer0.weight"]),
    "unknown layer format": ("csr", lambda a, m: m["layers"][0].update(format="coo"), ["coo"]),
    "no layers": ("csr", lambda a, m: m.update(layers=[]), ["layer"]),
}


def _unsorted_csr_row(arrays, meta):
    indptr, idx = arrays["layer0.indptr"], arrays["layer0.indices"]
    row = int(np.flatnonzero(np.diff(indptr) >= 2)[0])
    s = int(indptr[row])
    idx[[s, s + 1]] = idx[[s + 1, s]]


BAD_FILES["unsorted csr row"] = ("csr", _unsorted_csr_row, ["layer0", "sorted"])


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """A model.npz per format (and dense)."""
    d = tmp_path_factory.mktemp("saved")
    paths = {}
    for fmt, model in trained.items():
        paths[fmt] = d / f"{fmt}.npz"
        save_model(paths[fmt], model)
    return paths


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_invalid_files_raise_checkpoint_error(case, saved, tmp_path):
    """A file of another schema (version) or whose arrays break the format's invariants raises
    CheckpointError (a ValueError) with a message naming the problem, never another exception."""
    fmt, mutate, words = BAD_FILES[case]
    path = _rewrite(saved[fmt], tmp_path / "bad.npz", mutate)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg


def test_missing_and_truncated_files_raise_checkpoint_error(saved, tmp_path):
    """A missing file, the first half of a real model.npz, an empty file and a text file all raise
    CheckpointError naming the path; every truncation point of a real file does too."""
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.npz")
    raw = saved["condensed"].read_bytes()
    half = tmp_path / "half.npz"
    half.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_model(half)
    assert str(half) in str(info.value)
    for content in (b"", b"this is not a zip archive\n"):
        bad = tmp_path / "bad.npz"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError):
            load_model(bad)
    cut = tmp_path / "cut.npz"
    for n in range(0, len(raw), max(1, len(raw) // 60)):
        cut.write_bytes(raw[:n])
        with pytest.raises(CheckpointError):
            load_model(cut)


def test_read_meta_reads_only_meta_and_refuses_what_load_model_refuses(saved, tmp_path):
    """read_meta gives the meta load_model gives, and raises CheckpointError on the files load_model
    refuses for their container or schema (missing, truncated, foreign schema, future version)."""
    _, meta = load_model(saved["csr"])
    assert read_meta(saved["csr"]) == meta
    with pytest.raises(CheckpointError, match="does not exist"):
        read_meta(tmp_path / "nope.npz")
    raw = saved["csr"].read_bytes()
    (tmp_path / "half.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_meta(tmp_path / "half.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="no 'meta' entry"):
        read_meta(tmp_path / "plain.npz")
    for field, value, words in (("schema", "other.model", "schema 'other.model'"), ("schema_version", 99, "version 99")):
        path = _rewrite(saved["csr"], tmp_path / "bad.npz", lambda a, m: m.update({field: value}))
        with pytest.raises(CheckpointError, match=words):
            read_meta(path)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda a, m: m["layers"][0].pop("shape"), id="layer-without-shape"),
        pytest.param(lambda a, m: m.update(layers=[1, 2]), id="layer-not-an-object"),
        pytest.param(lambda a, m: m["layers"][1].update(shape=None), id="shape-null"),
        pytest.param(lambda a, m: m["layers"].__setitem__(0, "layer"), id="layer-a-string"),
    ],
)
def test_malformed_meta_raises_checkpoint_error(mutate, saved, tmp_path):
    """A meta whose layer list is malformed raises CheckpointError, like every other bad file."""
    path = _rewrite(saved["csr"], tmp_path / "bad.npz", mutate)
    with pytest.raises(CheckpointError):
        load_model(path)


def test_corrupted_zip_directory_raises_checkpoint_error(saved, tmp_path):
    """A model.npz whose central directory names an unknown compression method (0xFFFF) for its
    first member raises CheckpointError."""
    raw = bytearray(saved["csr"].read_bytes())
    central = raw.find(b"PK\x01\x02")  # first central-directory file header
    assert central > 0
    raw[central + 10 : central + 12] = b"\xff\xff"  # its compression method
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_load_training_state_refuses_a_model_file_and_a_different_run(saved, data, tmp_path):
    """load_training_state needs a training checkpoint (a model file is refused) of the same
    architecture (a checkpoint of another hidden width is refused), both with CheckpointError."""
    trainer = Trainer(_model("csr"), data, _config())
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_training_state(saved["csr"], trainer)
    other = Trainer(build_mlp(N_FEATURES, "12", N_CLASSES, fmt="csr", sparsity=0.6, rng=0), data, _config())
    save_training_checkpoint(tmp_path / "ckpt.npz", other)
    with pytest.raises(CheckpointError):
        load_training_state(tmp_path / "ckpt.npz", trainer)


# --------------------------------------------------------------------------------------------------
# exact resume


class _Crash(Exception):
    pass


@pytest.mark.parametrize(
    "fmt, optimizer",
    [("condensed", "sgd"), ("diagonal", "sgd"), ("csr", "sgd"), ("dense", "sgd"), ("csr", "adam")],
)
def test_resume_from_checkpoint_is_bit_identical(fmt, optimizer, data, tmp_path):
    """Train 3 epochs straight; separately train 1 epoch, write a training checkpoint and stop; build
    a fresh Trainer (same config; its model even initialised from another seed) and
    load_training_state, then continue to 3 epochs. Final weights, sparse structure, optimizer state
    and all non-timing metrics equal the uninterrupted run bit for bit."""
    lr = 0.05 if optimizer == "sgd" else 0.01
    config = _config(optimizer=optimizer, lr=lr)

    straight = Trainer(_model(fmt, seed=1), data, config)
    straight.fit()

    first = Trainer(_model(fmt, seed=1), data, config)
    ckpt = tmp_path / "checkpoint.npz"

    def stop_after_saving(trainer, metrics):
        save_training_checkpoint(ckpt, trainer, dataset="blobs")
        raise _Crash

    with pytest.raises(_Crash):
        first.fit(on_epoch=stop_after_saving)
    assert first.epoch == 1

    resumed = Trainer(_model(fmt, seed=2), data, config)
    load_training_state(ckpt, resumed)
    assert (resumed.epoch, resumed.step) == (1, 15)
    resumed.fit()

    assert resumed.epoch == straight.epoch == 3
    assert resumed.step == straight.step == 45
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert p.name == q.name
        np.testing.assert_array_equal(p.value, q.value, err_msg=p.name)
    s_struct, r_struct = _structure(straight.model), _structure(resumed.model)
    assert s_struct.keys() == r_struct.keys()
    for key in s_struct:
        np.testing.assert_array_equal(s_struct[key], r_struct[key], err_msg=key)
    sd, rd = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sd.keys() == rd.keys() and len(sd) > 1
    for key in sd:
        np.testing.assert_array_equal(sd[key], rd[key], err_msg=key)
    assert _strip_timing(resumed.history) == _strip_timing(straight.history)
    for lin in resumed.model.sparse_layers():
        assert lin.weight.value is lin.W.values


def test_checkpoint_holds_the_documented_training_entries(data, tmp_path):
    """checkpoint.npz = model arrays + optim.<param>.<state> arrays + optim.step, and meta['train']
    with epoch, step, rng_state, topology and history (docs/checkpoints.md)."""
    trainer = Trainer(_model("condensed"), data, _config(epochs=1))
    trainer.fit()
    save_training_checkpoint(tmp_path / "c.npz", trainer)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        keys = set(f.files)
        meta = json.loads(str(f["meta"]))
        assert int(f["optim.step"]) == 15
    for i in (0, 1):
        assert {f"optim.layer{i}.values.momentum_buffer", f"optim.layer{i}.bias.momentum_buffer"} <= keys
    assert {"layer0.rows", "layer0.indices", "layer0.values", "layer0.bias"} <= keys
    train = meta["train"]
    assert {"epoch", "step", "rng_state", "topology", "history"} <= train.keys()
    assert (train["epoch"], train["step"]) == (1, 15)
    assert train["rng_state"]["bit_generator"] == "PCG64"
    # a training checkpoint is also a model file
    model, _ = load_model(tmp_path / "c.npz")
    np.testing.assert_array_equal(model.predict(data.x_test), trainer.model.predict(data.x_test))


# --------------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_leaves_the_target_intact_when_the_writer_fails(tmp_path):
    """If the write callback raises, the exception propagates, the previous content of the target is
    intact and no temporary file is left in the directory; a successful write replaces the file."""
    target = tmp_path / "model.npz"
    target.write_bytes(b"previous content")

    def failing(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    missing = tmp_path / "new.npz"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(missing, interrupted)
    assert not missing.exists()
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]

    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_save_model_failure_keeps_the_previous_file(trained, tmp_path, monkeypatch):
    """save_model is atomic too: if writing the archive fails, the old model.npz still loads."""
    path = tmp_path / "model.npz"
    save_model(path, trained["csr"])
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_model(path, trained["condensed"])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


# --------------------------------------------------------------------------------------------------
# the NumPy snippet of docs/checkpoints.md


def _doc_snippet() -> str:
    text = (ROOT / "docs" / "checkpoints.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, f"expected one python block in docs/checkpoints.md, found {len(blocks)}"
    assert "import purerigl" not in blocks[0] and "from purerigl" not in blocks[0]
    return blocks[0]


@pytest.mark.parametrize("fmt", ALL + ["condensed-ablated", "diagonal-gated"])
def test_documented_numpy_snippet_evaluates_a_saved_model(fmt, raw, data, trained, tmp_path):
    """The ```python block of docs/checkpoints.md, run on its own (no purerigl import), computes
    from model.npz and raw inputs the same logits as the trained model (rtol 1e-4): the documented
    schema is enough to use a saved model. Covers every format (the diagonal model has a tall 24 x 16
    and a wide 4 x 24 layer), dense, and a condensed layer with ablated rows."""
    namespace: dict = {}
    exec(compile(_doc_snippet(), "docs/checkpoints.md", "exec"), namespace)
    load_and_predict = namespace["load_and_predict"]

    if fmt == "condensed-ablated":
        model = _model("condensed")
        rng = np.random.default_rng(5)
        rows = np.array([1, 2, 7, 20], dtype=np.int32)
        idx = np.stack([np.sort(rng.choice(16, 6, replace=False)) for _ in rows]).astype(np.int32)
        model.linears[0].set_structure(Condensed(rows, idx, rng.standard_normal((4, 6)).astype(np.float32), (24, 16)))
        for lin in model.linears:
            lin.bias.value[...] = rng.standard_normal(lin.shape[0]).astype(np.float32) * 0.3
    elif fmt == "diagonal-gated":  # DynaDiag's soft gates on every layer (the file adds alpha and a gate entry)
        from purerigl.nn import GatedDiagonalLinear

        model = _model("diagonal")
        rng = np.random.default_rng(6)
        for i, lin in enumerate(model.linears):
            gated = GatedDiagonalLinear(lin.W, max(1, lin.W.K // 2), alpha=rng.normal(size=lin.W.P), temperature=0.5,
                                        bias=rng.standard_normal(lin.shape[0]).astype(np.float32) * 0.3,
                                        name=lin.name, backend=lin.backend)
            model.layers[model.layers.index(lin)] = model.linears[i] = gated
    else:
        model = trained[fmt]
    assert all(lin.bias.value.any() for lin in model.linears)  # biases matter in the comparison

    path = tmp_path / "model.npz"
    save_model(path, model, dataset="blobs", normalisation={"mean": data.mean, "std": data.std})
    x_raw = raw[2]  # the raw test inputs
    got = load_and_predict(str(path), x_raw)
    want = model.predict(data.x_test)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
