"""Import and export (issue 18 §2): ``purerigl.interop``, ``purerigl export`` and ``train --init-masks``.

Pins down: masked dense -> every format -> masked dense is the identity (tall, wide, square; an active
weight of 0.0 stays active, values off the mask are ignored), and so are SciPy and torch CSR round trips;
a mask a format cannot hold is refused naming the row or diagonal; the PyTorch state_dict conventions
(``torch.ao.pruning`` as a real sparsifier saves it, ``torch.nn.utils.prune``, a mask per weight, a
separate dict) give the weight times the mask; torch is imported lazily; an exported .safetensors file
read with the safetensors package alone (the python block of docs/interop.md) gives purerigl's
logits; ``--init-masks`` starts a run from the masks, refuses masks that do not fit with exit 2 and
one line naming the file and the layer, and a resumed run neither needs the file nor differs from
an uninterrupted one.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

import purerigl.interop as interop
from purerigl.errors import DensifyError, PureriglError
from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.formats.budget import layer_budget
from purerigl.interop import InteropError
from purerigl.nn import MLP, Dense, build_mlp
from purerigl.training.checkpoint import save_model
from test_cli_resume import Killed, assert_same_run
from test_cli_train import assert_usage_error, invoke

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(7, 5), (5, 9), (6, 6)]  # tall, wide, square
FORMATS = ["csr", "condensed", "diagonal"]


def _random(fmt, shape, seed=0):
    """A random matrix of ``fmt`` whose first stored value is exactly 0.0 (still active)."""
    rng = np.random.default_rng(seed)
    W = {"csr": lambda: CSR.random(shape, 0.4, rng), "condensed": lambda: Condensed.random(shape, 0.4, rng),
         "diagonal": lambda: Diagonal.random(shape, 0.4, rng)}[fmt]()
    W.values.reshape(-1)[0] = 0.0
    return W


def _same(A, B):
    assert type(A) is type(B) and A.shape == B.shape
    for name in (*A.STRUCTURE, "values"):
        a, b = getattr(A, name), getattr(B, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


# --------------------------------------------------------------------------------------------------
# masked dense, formats, SciPy


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_masked_dense_round_trip_on_every_format(fmt, shape):
    W = _random(fmt, shape)
    weight, mask = interop.to_masked_dense(W)
    assert mask.dtype == bool and mask.sum() == W.nnz and weight.dtype == np.float32
    assert (weight[mask] == 0).sum() >= 1  # the zero-valued active weight is in the mask
    noisy = weight + (~mask) * np.float32(3.0)  # values off the mask are ignored
    _same(interop.from_masked_dense(noisy, mask, fmt), W)
    _same(interop.from_masked_dense(weight, mask.astype(np.uint8), fmt), W)  # 0/1 masks
    # every format holds the positions as CSR, and converts back without a dense step
    _same(interop.convert(interop.from_masked_dense(weight, mask, "csr"), fmt), W)
    _same(interop.from_scipy(interop.to_scipy(W), fmt), W)
    rows, cols = np.nonzero(mask)
    order = np.random.default_rng(1).permutation(rows.size)  # positions in any order
    _same(interop.from_positions(rows[order], cols[order], weight[mask][order], shape, fmt), W)


def test_from_scipy_keeps_explicit_zeros_and_casts_like_csr_from_scipy():
    m = scipy.sparse.csr_array((np.array([0.0, 2.0, 3.0]), np.array([0, 2, 1]), np.array([0, 1, 2, 3])), shape=(3, 3))
    W = interop.from_scipy(m, "condensed")
    assert isinstance(W, Condensed) and W.k == 1 and W.values.dtype == np.float32
    np.testing.assert_array_equal(W.indices.ravel(), [0, 2, 1])
    _same(interop.from_scipy(m), CSR.from_scipy(m))


@pytest.mark.parametrize("fmt, mask, words", [
    ("condensed", [[1, 1, 0], [1, 0, 0], [0, 0, 0]], ["constant fan-in", "row 0 holds 2", "row 1 holds 1"]),
    ("diagonal", [[1, 0, 0], [0, 1, 0], [0, 0, 0]], ["whole wrap-around diagonals", "diagonal 0 holds 2 of its 3"]),
    ("diagonal", [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]], ["diagonal 1 holds 2 of its 3"]),  # wide: t = row
])
def test_a_mask_the_format_cannot_hold_is_refused_by_name(fmt, mask, words):
    mask = np.array(mask, dtype=bool)
    with pytest.raises(InteropError) as err:
        interop.from_masked_dense(np.ones(mask.shape, np.float32), mask, fmt)
    for word in words:
        assert word in str(err.value)


def test_ablated_rows_and_whole_diagonals_fit():
    mask = np.zeros((4, 6), bool)
    mask[[0, 0, 3, 3], [1, 4, 0, 5]] = True  # rows 1 and 2 ablated
    W = interop.from_masked_dense(np.ones((4, 6), np.float32), mask, "condensed")
    assert W.rows.tolist() == [0, 3] and W.k == 2
    t = np.arange(4)
    wide = np.zeros((4, 6), bool)
    wide[t, (t + 5) % 6] = wide[t, (t + 2) % 6] = True  # diagonals 2 and 5 of a wide matrix
    assert interop.from_masked_dense(np.ones((4, 6), np.float32), wide, "diagonal").offsets.tolist() == [2, 5]
    assert interop.from_masked_dense(np.ones((4, 6), np.float32), np.zeros((4, 6), bool), "diagonal").K == 0


ONES, FULL = np.ones((2, 3), np.float32), np.ones((2, 3), bool)


@pytest.mark.parametrize("call, error, words", [
    (lambda: interop.from_masked_dense(np.ones((2, 3)), FULL), PureriglError, ["float32"]),
    (lambda: interop.from_masked_dense(ONES, np.ones((3, 2), bool)), InteropError, ["(3, 2)"]),
    (lambda: interop.from_masked_dense(ONES, np.full((2, 3), 2)), InteropError, ["0 and 1"]),
    (lambda: interop.from_masked_dense(ONES, FULL, "coo"), InteropError, ["coo"]),
    (lambda: interop.from_positions([0, 0], [1, 1], np.ones(2, np.float32), (2, 2)), InteropError, ["(0, 1)", "once"]),
    (lambda: interop.from_positions([0, 2], [1, 1], np.ones(2, np.float32), (2, 2)), InteropError, ["row index 2"]),
    (lambda: interop.to_masked_dense(CSR.random((64, 64), 0.1, 0), max_elements=100), DensifyError, ["4096", "100"]),
])
def test_bad_input_raises_a_purerigl_error_that_names_it(call, error, words):
    with pytest.raises(error) as err:
        call()
    for word in words:
        assert word in str(err.value)


# --------------------------------------------------------------------------------------------------
# PyTorch


def _torch():
    """torch, or a skip where it is not installed; a failure instead with ``PURERIGL_REQUIRE_TORCH=1``
    (.ci/run installs the torch extra)."""
    if os.environ.get("PURERIGL_REQUIRE_TORCH") == "1":
        import torch

        return torch
    return pytest.importorskip("torch")


def test_torch_is_imported_lazily():
    """No module of purerigl.interop imports torch at module level (purerigl imports without it)."""
    for path in (ROOT / "purerigl" / "interop").glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("torch", "safetensors") for n in names), (path.name, names)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_sparse_csr_round_trip(fmt):
    torch = _torch()
    W = _random(fmt, (7, 5))
    t = interop.to_torch_csr(W)
    assert t.layout == torch.sparse_csr and t.crow_indices().dtype == t.col_indices().dtype == torch.int64
    assert t.values().dtype == torch.float32 and t.values().numel() == W.nnz  # the explicit zero is stored
    np.testing.assert_array_equal(t.to_dense().numpy(), W.to_dense())
    _same(interop.from_torch_csr(t, fmt), W)
    _same(interop.from_torch_csr(t.to_sparse_coo(), fmt), W)
    with pytest.raises(InteropError, match="sparse_csr"):
        interop.from_torch_csr(t.to_dense())
    with pytest.raises(InteropError, match="float"):
        interop.from_torch_csr(t.to(torch.float64))


def _expected(weight, mask):
    return weight.detach().numpy() * mask.detach().numpy()


def test_state_dict_of_torch_ao_pruning():
    """A real WeightNormSparsifier: the masks are the parametrization buffers and the sparsifier's
    state_dict (model.state_dict() leaves them out); both routes give original * mask."""
    torch = _torch()
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 1), zeros_per_block=1)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    sparsifier.step()
    with_buffers = {**model.state_dict(), **dict(model.named_buffers())}
    assert "0.parametrizations.weight.0.mask" in with_buffers
    for layers in (interop.from_state_dict(with_buffers),
                   interop.from_state_dict(model.state_dict(), masks=sparsifier.state_dict())):
        assert list(layers) == ["0", "2"]
        for name, i in (("0", 0), ("2", 2)):
            p = model[i].parametrizations.weight
            want = _expected(p.original, p[0].mask)
            np.testing.assert_array_equal(layers[name].to_dense(), want)
            assert layers[name].nnz == int(p[0].mask.sum())


def test_state_dict_of_torch_nn_utils_prune_and_plain_masks():
    torch = _torch()
    import torch.nn.utils.prune as prune

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Conv2d(2, 3, 3))
    prune.random_unstructured(model[0], "weight", amount=0.5)
    prune.l1_unstructured(model[1], "weight", amount=0.3)
    weights = interop.masked_weights(model.state_dict())
    assert list(weights) == ["0", "1"] and weights["1"][0].shape == (3, 18)  # the conv's filters as rows
    np.testing.assert_array_equal(interop.from_state_dict(model.state_dict())["0"].to_dense(),
                                  _expected(model[0].weight_orig, model[0].weight_mask))

    # a mask beside each weight, in NumPy (no torch needed), an active weight of 0.0 kept
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = np.zeros((3, 4), bool)
    m[[0, 1, 2], [0, 1, 2]] = True  # (0, 0) holds 0.0
    plain = {"fc.weight": w, "fc.mask": m, "fc.bias": np.zeros(3, np.float32), "attn.mask": np.ones((2, 2))}
    got = interop.from_state_dict(plain, fmt="condensed")
    assert list(got) == ["fc"] and got["fc"].nnz == 3  # attn.mask has no weight: another buffer
    for key in ("fc", "fc.weight", "fc.mask"):  # a separate masks dict, by any of its keys
        _same(interop.from_state_dict({"fc.weight": w}, masks={key: m}, fmt="condensed")["fc"], got["fc"])


@pytest.mark.parametrize("state_dict, masks, words", [
    ({"a.weight": np.ones((2, 2), np.float32), "a.mask": np.ones((2, 2), bool)}, {"a": np.ones((2, 2))},
     ["two masks"]),
    ({"a.parametrizations.weight.0.mask": np.ones((2, 2))}, None, ["no weight", "original"]),
    ({"a.weight": np.ones((2, 2), np.float32)}, {"b": np.ones((2, 2))}, ["matches no weight"]),
    ({"a.weight": np.ones((2, 2), np.float32)}, None, ["no masked weight"]),
    ({"a.weight": np.ones((2, 2), np.float32), "a.mask": np.ones((2, 3), bool)}, None, ["shape"]),
])
def test_state_dict_errors(state_dict, masks, words):
    with pytest.raises(InteropError) as err:
        interop.from_state_dict(state_dict, masks)
    for word in words:
        assert word in str(err.value)


# --------------------------------------------------------------------------------------------------
# purerigl export


def _doc_block() -> str:
    text = (ROOT / "docs" / "interop.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "docs/interop.md: the safetensors loader is its one python block"
    assert "purerigl" not in blocks[0] and "pickle" not in blocks[0]
    return blocks[0]


def _models() -> dict:
    """Small models of every format (tall and wide diagonal layers, ablated condensed rows, a dense
    layer), with biases that matter."""
    rng = np.random.default_rng(3)
    models = {fmt: build_mlp(16, "24", 4, fmt=fmt, sparsity=0.6, backend="reference", rng=rng) for fmt in FORMATS}
    mixed = build_mlp(16, "24", 4, fmt="condensed", sparsity=0.6, backend="reference", rng=rng, dense_layers=(1,))
    rows = np.array([1, 2, 7, 20], dtype=np.int32)
    idx = np.stack([np.sort(rng.choice(16, 6, replace=False)) for _ in rows]).astype(np.int32)
    mixed.linears[0].set_structure(Condensed(rows, idx, rng.standard_normal((4, 6)).astype(np.float32), (24, 16)))
    models["condensed-ablated+dense"] = mixed
    for model in models.values():
        for lin in model.linears:
            lin.bias.value[...] = rng.standard_normal(lin.shape[0]).astype(np.float32) * 0.3
    return models


def test_export_loads_with_safetensors_alone_and_predicts_like_purerigl(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    namespace: dict = {}
    exec(compile(_doc_block(), "docs/interop.md", "exec"), namespace)  # noqa: S102 - the documented code
    predict = namespace["load_and_predict_safetensors"]
    x_raw = np.random.default_rng(4).uniform(0, 255, (9, 16)).astype(np.float32)
    norm = {"mean": 100.0, "std": 50.0}
    for name, model in _models().items():
        src, out = tmp_path / f"{name}.npz", tmp_path / f"{name}.safetensors"
        save_model(src, model, dataset="blobs", normalisation=norm)
        result = invoke(["export", src, out])
        assert result.exit_code == 0, result.output
        with np.load(src, allow_pickle=False) as f:
            saved = {k: f[k] for k in f.files}
        loaded = load_file(str(out))
        assert set(loaded) == set(saved) - {"meta"}
        for key, a in loaded.items():
            assert a.dtype == saved[key].dtype and np.array_equal(a, saved[key]), key
        with safe_open(str(out), framework="np") as handle:
            assert json.loads(handle.metadata()["meta"]) == json.loads(str(saved["meta"]))
        want = model.predict((x_raw - norm["mean"]) / norm["std"])
        np.testing.assert_allclose(predict(str(out), x_raw), want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                   err_msg=name)


def test_export_bad_input_exits_2(tmp_path):
    junk = tmp_path / "junk.npz"
    np.savez(junk, x=np.zeros(3))
    assert_usage_error(invoke(["export", junk, tmp_path / "o.safetensors"]), "junk.npz", "meta")
    assert not (tmp_path / "o.safetensors").exists()
    model = tmp_path / "m.npz"
    save_model(model, MLP([Dense(np.ones((2, 3), np.float32))]), normalisation={"mean": 0, "std": 1})
    assert_usage_error(invoke(["export", model, model]), "MODEL itself")
    assert_usage_error(invoke(["export", model, tmp_path / "o.npz"]), "o.npz", "must end in .safetensors")
    assert not (tmp_path / "o.npz").exists()


# --------------------------------------------------------------------------------------------------
# purerigl train --init-masks (digits: 64 features, 10 classes; --hidden 32: layer0 32 x 64, layer1 10 x 32)

DIGITS_SHAPES = [(32, 64), (10, 32)]


def _masks(fmt, sparsity=0.9, seed=0):
    """Masks holding each digits layer's budget as ``fmt`` rounds it, drawn another way than purerigl's."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (n_out, n_in) in enumerate(DIGITS_SHAPES):
        C = layer_budget((n_out, n_in), sparsity)
        m = np.zeros((n_out, n_in), bool)
        if fmt == "csr":
            m.flat[rng.choice(n_out * n_in, C, replace=False)] = True
        elif fmt == "condensed":  # one row ablated: k = floor(C / (n_out - 1))
            for r in range(1, n_out):
                m[r, rng.choice(n_in, C // (n_out - 1), replace=False)] = True
        else:
            L, K = min(n_out, n_in), -(-C // min(n_out, n_in))
            t = np.arange(L)
            for d in rng.choice(max(n_out, n_in), K, replace=False):
                if n_out >= n_in:
                    m[(t + d) % n_out, t] = True
                else:  # wide, as both digits layers are: (t, (t + d) mod n_in)
                    m[t, (t + d) % n_in] = True
        out[f"layer{i}.mask"] = m
    return out


def _init_args(out, method, masks_file, *extra):
    return ["train", "--method", method, "--epochs", 2, "--hidden", 32, "--out", out, "--no-progress",
            "--backend", "reference", "--init-masks", masks_file, *extra]


@pytest.mark.parametrize("fmt", FORMATS)
def test_init_structures_hold_the_masks_with_kaiming_values(fmt):
    masks = _masks(fmt)
    budgets = [layer_budget(s, 0.9) for s in DIGITS_SHAPES]
    got = interop.init_structures(masks, DIGITS_SHAPES, budgets, fmt, np.random.default_rng(0))
    for W, (key, m) in zip(got, masks.items()):
        weight, mask = interop.to_masked_dense(W)
        np.testing.assert_array_equal(mask, m, err_msg=key)
        assert np.all(weight[mask] != 0) and weight[mask].std() > 0


def test_train_starts_from_the_masks(tmp_path):
    """A static run (the structure never changes) ends with exactly the masks; config.json records
    the file; a safetensors masks file works the same."""
    save_file = pytest.importorskip("safetensors.numpy").save_file
    masks = _masks("condensed")
    np.savez(tmp_path / "masks.npz", **masks)
    save_file(masks, str(tmp_path / "masks.safetensors"))
    for name in ("masks.npz", "masks.safetensors"):
        out = tmp_path / name.replace(".", "-")
        result = invoke(_init_args(out, "static", tmp_path / name))
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["options"]["init_masks"] == str(tmp_path / name)
        with np.load(out / "model.npz", allow_pickle=False) as f:
            for i in range(2):
                W = Condensed(f[f"layer{i}.rows"], f[f"layer{i}.indices"], f[f"layer{i}.values"], DIGITS_SHAPES[i])
                np.testing.assert_array_equal(interop.to_masked_dense(W)[1], masks[f"layer{i}.mask"])


def test_resume_of_an_init_masks_run_needs_no_file_and_ends_the_same(tmp_path, monkeypatch):
    import purerigl.cli.train as cli_train

    masks = tmp_path / "masks.npz"
    np.savez(masks, **_masks("csr"))
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert invoke(_init_args(straight, "rigl", masks)).exit_code == 0
    save = cli_train.save_training_checkpoint

    def dies_at_the_second(path, trainer, **meta):
        if trainer.epoch > 1:
            raise Killed
        save(path, trainer, **meta)

    with monkeypatch.context() as m:
        m.setattr(cli_train, "save_training_checkpoint", dies_at_the_second)
        assert isinstance(invoke(_init_args(crashed, "rigl", masks)).exception, Killed)
    masks.unlink()
    resumed = invoke(["train", "--resume", crashed, "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "after epoch 1 of 2" in resumed.output
    assert_same_run(straight, crashed)


def _bad(masks: dict, key: str, value) -> dict:
    out = dict(masks)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


def _fewer(m: np.ndarray) -> np.ndarray:
    m = m.copy()
    m.flat[np.flatnonzero(m)[0]] = False
    return m


@pytest.mark.parametrize("method, fmt, change, words", [
    ("rigl", "csr", lambda m: _bad(m, "layer0.mask", _fewer(m["layer0.mask"])), ["layer0.mask", "204", "205"]),
    ("rigl", "csr", lambda m: _bad(m, "layer1.mask", None), ["layer1.mask", "no "]),
    ("rigl", "csr", lambda m: _bad(m, "layer1.mask", np.ones((32, 10), bool)), ["layer1.mask", "(32, 10)"]),
    ("rigl", "csr", lambda m: _bad(m, "layer2.mask", np.ones((3, 3), bool)), ["layer2.mask", "no layer"]),
    ("srigl", "condensed", lambda m: _bad(m, "layer1.mask", _fewer(m["layer1.mask"])), ["layer1.mask", "fan-in"]),
    ("srigl", "csr", lambda m: m, ["layer0.mask", "constant fan-in"]),  # a csr mask, condensed storage
    ("diag-rigl", "condensed", lambda m: m, ["layer0.mask", "diagonal"]),
    ("diag-rigl", "diagonal", lambda m: _bad(m, "layer0.mask", _fewer(m["layer0.mask"])), ["layer0.mask", "diagonal"]),
])
def test_init_masks_that_do_not_fit_exit_2_naming_file_and_layer(method, fmt, change, words, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **change(_masks(fmt)))
    out = tmp_path / "run"
    assert_usage_error(invoke(_init_args(out, method, path)), "bad.npz", *words)
    assert not (out / "config.json").exists()


def test_init_masks_unreadable_file_exits_2(tmp_path):
    assert_usage_error(invoke(_init_args(tmp_path / "a", "rigl", tmp_path / "none.npz")), "none.npz", "no such file")
    (tmp_path / "m.txt").write_text("x")
    assert_usage_error(invoke(_init_args(tmp_path / "b", "rigl", tmp_path / "m.txt")), "m.txt", ".npz or .safetensors")


def test_a_run_written_before_the_option_resumes(tmp_path):
    """A config.json without init_masks (a run of an older version) resumes as a random start."""
    out = tmp_path / "run"
    args = ["train", "--method", "static", "--epochs", 1, "--hidden", 32, "--out", out, "--no-progress",
            "--backend", "reference"]
    assert invoke(args).exit_code == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["options"].pop("init_masks") is None
    (out / "config.json").write_text(json.dumps(stored))
    result = invoke(["train", "--resume", out, "--no-progress"])
    assert result.exit_code == 0, result.output
