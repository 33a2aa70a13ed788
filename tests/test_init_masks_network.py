"""``purerigl train --init-masks`` on networks (issue 16): a CNN or the ViT starts from the user's masks.

Pins down: the masks are keyed by the network's own layer names (``conv1.mask``, ``fc0.mask``,
``block0.qkv.mask``); a convolution's mask may be its filter matrix (c_out, c_in kh kw) or its weight's
(c_out, c_in, kh, kw) shape, and both give the same run, bit for bit; a static run ends with exactly
the masks (csr: LeNet-5 and the ViT; condensed: SRigL's constant fan-in per filter); masks that do
not fit (a 4-D mask of the wrong shape, an MLP's layer name, a missing sparse layer, the wrong count)
exit 2 with one line naming the file and the layer. Digits (1 x 8 x 8): LeNet-5's sparse layers are
conv1 (16, 6, 5, 5), fc0 120 x 64, fc1 84 x 120 at 90% uniform sparsity.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from purerigl.formats.budget import layer_budget
from test_cli_train import assert_usage_error, invoke

CONV1 = (16, 6, 5, 5)
LENET_SPARSE = {"conv1": (16, 150), "fc0": (120, 64), "fc1": (84, 120)}


def _csr_masks(shapes: dict, seed=0, sparsity=0.9) -> dict:
    """Masks holding each layer's uniform budget at ``sparsity``, drawn here."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        m = np.zeros(shape, bool)
        m.flat[rng.choice(m.size, layer_budget(shape, sparsity), replace=False)] = True
        out[f"{name}.mask"] = m
    return out


def _run(tmp_path, name, masks, *extra, model="lenet5"):
    path = tmp_path / f"{name}.npz"
    np.savez(path, **masks)
    out = tmp_path / name
    result = invoke(["train", "--model", model, "--epochs", 1, "--out", out, "--no-progress", "--backend", "cpu",
                     "--init-masks", path, *extra])
    return result, out


def _stored_masks(model_npz, shapes: dict, fmt: str) -> dict:
    """Each layer's positions as a bool matrix, read from model.npz's arrays (docs/checkpoints.md)."""
    out = {}
    with np.load(model_npz, allow_pickle=False) as f:
        for name, (n_out, n_in) in shapes.items():
            m = np.zeros((n_out, n_in), bool)
            if fmt == "csr":
                ptr, ind = f[f"{name}.indptr"], f[f"{name}.indices"]
                for r in range(n_out):
                    m[r, ind[ptr[r]:ptr[r + 1]]] = True
            else:  # condensed
                m[np.repeat(f[f"{name}.rows"], f[f"{name}.indices"].shape[1]), f[f"{name}.indices"].ravel()] = True
            out[f"{name}.mask"] = m
    return out


def test_a_cnn_starts_from_the_masks_given_flat_or_as_the_weight_shape(tmp_path):
    masks = _csr_masks(LENET_SPARSE)
    flat, out_flat = _run(tmp_path, "flat", masks, "--method", "static", "--format", "csr")
    as_weight = {**masks, "conv1.mask": masks["conv1.mask"].reshape(CONV1)}
    four_d, out_4d = _run(tmp_path, "four-d", as_weight, "--method", "static", "--format", "csr")
    assert flat.exit_code == 0 and four_d.exit_code == 0, flat.output + four_d.output
    assert _stored_masks(out_flat / "model.npz", LENET_SPARSE, "csr").keys() == masks.keys()
    for key, m in _stored_masks(out_flat / "model.npz", LENET_SPARSE, "csr").items():
        np.testing.assert_array_equal(m, masks[key], err_msg=key)
    with np.load(out_flat / "model.npz") as a, np.load(out_4d / "model.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "meta")
    assert json.loads((out_4d / "config.json").read_text())["options"]["init_masks"] == str(tmp_path / "four-d.npz")


def test_srigl_on_a_cnn_starts_from_constant_fan_in_filters(tmp_path):
    rng = np.random.default_rng(3)
    masks = {}
    for name, (n_out, n_in) in LENET_SPARSE.items():
        k = layer_budget((n_out, n_in), 0.9) // n_out
        m = np.zeros((n_out, n_in), bool)
        for r in range(n_out):
            m[r, rng.choice(n_in, k, replace=False)] = True
        masks[f"{name}.mask"] = m
    masks["conv1.mask"] = masks["conv1.mask"].reshape(CONV1)
    result, out = _run(tmp_path, "srigl", masks, "--method", "static", "--format", "condensed")
    assert result.exit_code == 0, result.output
    for key, m in _stored_masks(out / "model.npz", LENET_SPARSE, "condensed").items():
        np.testing.assert_array_equal(m, masks[key].reshape(m.shape), err_msg=key)


def test_the_vit_starts_from_masks_of_its_block_projections(tmp_path):
    shapes = {"block0.qkv": (24, 8), "block0.proj": (8, 8), "block0.fc1": (16, 8), "block0.fc2": (8, 16)}
    masks = _csr_masks(shapes, seed=1)
    result, out = _run(tmp_path, "vit", masks, "--method", "static", "--format", "csr", "--vit-width", 8,
                       "--vit-depth", 1, "--vit-heads", 2, model="vit-tiny")
    assert result.exit_code == 0, result.output
    for key, m in _stored_masks(out / "model.npz", shapes, "csr").items():
        np.testing.assert_array_equal(m, masks[key], err_msg=key)


@pytest.mark.parametrize("change, words", [
    (lambda m: {**m, "conv1.mask": m["conv1.mask"].reshape(16, 6, 25)}, ["conv1.mask", "(16, 6, 5, 5)", "(16, 150)"]),
    (lambda m: {**m, "conv1.mask": np.ones(CONV1[::-1], bool)}, ["conv1.mask", "(5, 5, 6, 16)", "(16, 6, 5, 5)"]),
    (lambda m: {"layer1.mask": m["conv1.mask"], **{k: v for k, v in m.items() if k != "conv1.mask"}},
     ["'layer1.mask' names no layer", "conv0, conv1, fc0, fc1, fc2"]),
    (lambda m: {k: v for k, v in m.items() if k != "fc0.mask"}, ["no 'fc0.mask'", "fc0"]),
    (lambda m: {**m, "fc1.mask": np.ones((84, 120), bool)}, ["fc1.mask", "budget"]),
])
def test_masks_that_do_not_fit_a_cnn_exit_2_naming_file_and_layer(tmp_path, change, words):
    masks = change(_csr_masks(LENET_SPARSE))
    result, out = _run(tmp_path, "bad", masks, "--method", "rigl")
    assert_usage_error(result, "bad.npz", *words)
    assert not (out / "model.npz").exists()
