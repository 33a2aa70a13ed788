"""``purerigl verify-update`` on convolutions: a (c_out, c_in, kh, kw) weight is checked as the
(c_out, c_in * kh * kw) matrix of its filters (DESIGN.md 4b), the rows the filters.

Pins down:
- a correct masked-dense RigL / SRigL / diag-rigl on 4-D arrays gets the same verdict and counts as the
  same update on the flattened 2-D arrays, and its positions are reported as weight indices
  (filter, channel, i, j) that point at the same entries as the 2-D report's (row, col);
- a planted bug on a convolution gets its cause;
- the batch form for a convolution: the images x (B, c_in, H, W) and dy (B, c_out, Ho, Wo) with
  ``L.stride`` / ``L.padding`` make G = dY^T P, held to a direct sum over output pixels written here
  (hypothesis: kernel sizes, strides, paddings, odd spatial sizes, batch 1) and to PyTorch's own
  weight gradient of ``conv2d``; the patch matrix as x works as well;
- bad convolution input exits 2 with one line naming the file, layer and key.
Integer-valued float32 data keeps every score exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.dst import verify as V
from test_verify_update import (
    _cli, _files, _gse_masked_dense, _n_prune, rigl_masked_dense, srigl_masked_dense,
)

KERNEL = (4, 3, 3, 3)  # (c_out, c_in, kh, kw)
MATRIX = (4, 27)


def _conv_layer(seed, density=0.4, constant_fan_in=False):
    """(W, mask, G) of a convolution, 4-D, integer-valued float32 without ties."""
    rng = np.random.default_rng(seed)
    if constant_fan_in:
        mask = np.zeros(MATRIX, dtype=bool)
        for r in range(MATRIX[0]):
            mask[r, rng.choice(MATRIX[1], round(density * MATRIX[1]), replace=False)] = True
        mask = mask.reshape(KERNEL)
    else:
        mask = rng.random(KERNEL) < density
    n = mask.size
    sign = rng.choice([-1, 1], size=(2, n))
    W = ((rng.permutation(n) + 1) * sign[0]).reshape(KERNEL) * mask
    G = ((rng.permutation(n) + 1) * sign[1]).reshape(KERNEL)
    return W.astype(np.float32), mask, G.astype(np.float32)


def _reports(method, W, mask, G, W_after, mask_after, alpha=0.3, **options):
    """The report of the 4-D layer and of the same layer flattened to its filter matrix."""
    def one(shape):
        before = {"conv.weight": W.reshape(shape), "conv.mask": mask.reshape(shape),
                  "conv.grad": G.reshape(shape)}
        after = {"conv.weight": W_after.reshape(shape), "conv.mask": mask_after.reshape(shape)}
        return V.report_dict(V.verify_arrays(method, before, after, alpha, **options)[0])
    return one(KERNEL), one(MATRIX)


def _flat(items_4d):
    """[filter, channel, i, j] weight indices as [row, col] of the filter matrix."""
    return [[o, int(np.ravel_multi_index((c, i, j), KERNEL[1:]))] for o, c, i, j in items_4d]


def _same_verdict(conv, flat):
    assert conv["shape"] == flat["shape"] == list(MATRIX)
    assert conv["weight_shape"] == list(KERNEL) and flat["weight_shape"] == list(MATRIX)
    assert (conv["status"], conv["counts"], conv["format"]) == (flat["status"], flat["counts"], flat["format"])
    for side in ("only_yours", "only_ours"):
        assert (_flat(conv[side]) if conv["unit"] == "position" else conv[side]) == flat[side]
    assert [f["cause"] for f in conv["findings"]] == [f["cause"] for f in flat["findings"]]
    for f4, f2 in zip(conv["findings"], flat["findings"]):
        assert (_flat(f4["items"]) if f4["unit"] == "position" else f4["items"]) == f2["items"]


# ----------------------------------------------------------------------------- verdicts on 4-D arrays


@pytest.mark.parametrize("seed", range(4))
def test_a_correct_rigl_on_a_convolution_is_equal_as_on_its_filter_matrix(seed):
    W, mask, G = _conv_layer(seed)
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3)  # works on the 4-D arrays as they are
    conv, flat = _reports("rigl", W, mask, G, W_after, mask_after)
    assert conv["status"] == "equal"
    _same_verdict(conv, flat)


def test_a_planted_bug_on_a_convolution_gets_its_cause_at_weight_indices():
    W, mask, G = _conv_layer(7)
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3, grow_among_kept=True)
    conv, flat = _reports("rigl", W, mask, G, W_after, mask_after)
    assert conv["status"] == "differs" and "grew-kept" in [f["cause"] for f in conv["findings"]]
    _same_verdict(conv, flat)
    for o, c, i, j in conv["only_ours"]:  # purerigl grows these; the planted bug did not
        assert mask_after[o, c, i, j] == 0 and 0 <= i < 3 and 0 <= j < 3


@pytest.mark.parametrize("seed", range(3))
def test_srigl_on_a_convolution_treats_each_filter_as_a_neuron(seed):
    W, mask, G = _conv_layer(seed, constant_fan_in=True)
    after = srigl_masked_dense(W.reshape(MATRIX), mask.reshape(MATRIX), G.reshape(MATRIX), 0.3)
    W_after, mask_after = (a.reshape(KERNEL) for a in after)
    conv, flat = _reports("srigl", W, mask, G, W_after, mask_after)
    assert conv["status"] != "differs"
    _same_verdict(conv, flat)


def test_diag_rigl_on_a_convolution_reads_diagonals_of_the_filter_matrix():
    n_out, n_in = MATRIX  # wide: diagonal d holds (t, (t + d) mod n_in), t < n_out
    W, _, G = _conv_layer(3)
    t = np.arange(n_out)
    mask = np.zeros(MATRIX, dtype=bool)
    for d in (0, 5, 11, 20):
        mask[t, (t + d) % n_in] = True
    W = W.reshape(MATRIX).copy()
    W[mask] = np.arange(1, mask.sum() + 1)
    W[~mask] = 0
    W, mask = W.reshape(KERNEL), mask.reshape(KERNEL)
    conv, flat = _reports("diag-rigl", W, mask, G, W, mask)  # an update that changed nothing
    assert conv["unit"] == "diagonal" and conv["status"] == "differs"
    _same_verdict(conv, flat)


def test_gse_candidates_are_flat_weight_indices_and_messages_name_weight_indices():
    W, mask, G = _conv_layer(6)
    candidates = np.random.default_rng(6).choice(W.size, 40, replace=False)
    W_bug, mask_bug = _gse_masked_dense(W, mask, G, 0.2, candidates, best=False)  # grows the worst candidates
    before = {"conv.weight": W, "conv.mask": mask, "conv.grad": G, "conv.candidates": candidates.astype(np.int64)}
    report = V.verify_arrays("gse", before, {"conv.weight": W_bug, "conv.mask": mask_bug}, 0.2)[0]
    [finding] = [f for f in report.findings if not f.allowed]
    assert str(finding.cause) == "growth-not-by-gradient"
    named = tuple(int(v) for v in finding.message.split("e.g. (")[1].split(")")[0].split(", "))
    assert len(named) == 4 and np.ravel_multi_index(named, KERNEL) in candidates  # a candidate left ungrown
    assert not mask_bug[named] and not mask[named]


def test_the_text_report_names_filters_and_weight_indices(tmp_path):
    W, mask, G = _conv_layer(7)
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3, grow_among_kept=True)
    b, a = _files(tmp_path, {"conv.weight": W, "conv.mask": mask, "conv.grad": G},
                  {"conv.weight": W_after, "conv.mask": mask_after})
    result = _cli("--method", "rigl", b, a, "--alpha", "0.3")
    assert result.exit_code == 1, result.output
    assert "conv (4 x 3 x 3 x 3 filters as 4 x 27, csr): DIFFERS" in result.output
    assert "at (filter, channel, i, j): (" in result.output
    data = json.loads(_cli("--method", "rigl", b, a, "--alpha", "0.3", "--json").output)
    assert data["layers"][0]["weight_shape"] == list(KERNEL)


# ------------------------------------------------------------------------------- the batch of a convolution


def _naive_conv_weight_grad(X, dY, kh, kw, stride, padding):
    """G[o, c, i, j] = sum over (b, ho, wo) of dY[b, o, ho, wo] * Xp[b, c, s ho + i, s wo + j], by loops."""
    B, c_in, _, _ = X.shape
    c_out, Ho, Wo = dY.shape[1:]
    Xp = np.pad(X.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    G = np.zeros((c_out, c_in, kh, kw))
    for ho in range(Ho):
        for wo in range(Wo):
            window = Xp[:, :, stride * ho: stride * ho + kh, stride * wo: stride * wo + kw]  # (B, c_in, kh, kw)
            G += np.einsum("bo,bcij->ocij", dY[:, :, ho, wo].astype(np.float64), window)
    return G


@st.composite
def conv_batches(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * padding), 7))
    W = draw(st.integers(max(1, kw - 2 * padding), 7))
    B, c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.integers(-3, 4, size=(B, c_in, H, W)).astype(np.float32)
    dY = rng.integers(-3, 4, size=(B, c_out, Ho, Wo)).astype(np.float32)
    return X, dY, (c_out, c_in, kh, kw), stride, padding


def _layer_from_batch(X, dY, shape, stride=None, padding=None):
    mask = np.zeros(shape, dtype=bool)
    mask.flat[::2] = True
    W = np.where(mask, 1.0, 0.0).astype(np.float32)
    before = {"conv.weight": W, "conv.mask": mask, "conv.x": X, "conv.dy": dY}
    if stride is not None:
        before["conv.stride"] = np.int64(stride)
    if padding is not None:
        before["conv.padding"] = np.int64(padding)
    return V.layer_inputs("rigl", before, {"conv.weight": W, "conv.mask": mask})[0]


@settings(max_examples=40, deadline=None)
@given(conv_batches())
def test_images_and_output_gradients_make_the_weight_gradient(batch):
    X, dY, shape, stride, padding = batch
    layer = _layer_from_batch(X, dY, shape, stride, padding)
    expected = _naive_conv_weight_grad(X, dY, *shape[2:], stride, padding)
    assert layer.kernel_shape == shape[1:]
    np.testing.assert_array_equal(layer.G, expected.reshape(shape[0], -1))


def test_a_batch_in_chunks_of_samples_sums_to_the_same_gradient(monkeypatch):
    from purerigl.dst.verify import inputs

    rng = np.random.default_rng(3)
    X = rng.integers(-2, 3, size=(5, 3, 6, 6)).astype(np.float32)
    dY = rng.integers(-2, 3, size=(5, 4, 3, 3)).astype(np.float32)
    whole = _layer_from_batch(X, dY, KERNEL, 2, 1).G
    monkeypatch.setattr(inputs, "PATCH_CHUNK", 2 * 9 * 27)  # two samples per patch matrix
    np.testing.assert_array_equal(_layer_from_batch(X, dY, KERNEL, 2, 1).G, whole)
    np.testing.assert_array_equal(whole, _naive_conv_weight_grad(X, dY, 3, 3, 2, 1).reshape(MATRIX))


def test_stride_and_padding_default_to_one_and_zero():
    rng = np.random.default_rng(0)
    X = rng.integers(-2, 3, size=(2, 2, 5, 6)).astype(np.float32)
    dY = rng.integers(-2, 3, size=(2, 3, 3, 4)).astype(np.float32)  # 5 - 3 + 1, 6 - 3 + 1
    layer = _layer_from_batch(X, dY, (3, 2, 3, 3))
    np.testing.assert_array_equal(layer.G, _naive_conv_weight_grad(X, dY, 3, 3, 1, 0).reshape(3, -1))


def test_the_patch_matrix_as_x_gives_the_same_gradient():
    from purerigl.kernels.host_conv import im2col

    rng = np.random.default_rng(1)
    X = rng.integers(-2, 3, size=(2, 3, 6, 6)).astype(np.float32)
    dY = rng.integers(-2, 3, size=(2, 4, 3, 3)).astype(np.float32)  # stride 2, padding 1
    images = _layer_from_batch(X, dY, KERNEL, 2, 1)
    patches = _layer_from_batch(im2col(X, 3, 3, 2, 1), dY.transpose(0, 2, 3, 1).reshape(-1, 4), KERNEL)
    np.testing.assert_array_equal(images.G, patches.G)


def test_pytorch_conv2d_weight_gradient_is_what_the_batch_makes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    X = rng.integers(-2, 3, size=(2, 3, 7, 7)).astype(np.float32)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    x = torch.from_numpy(X)
    out = conv(x)
    dY = rng.integers(-2, 3, size=tuple(out.shape)).astype(np.float32)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.integers(-2, 3, size=KERNEL).astype(np.float32)))
    conv(x).backward(torch.from_numpy(dY))
    layer = _layer_from_batch(X, dY, KERNEL, 2, 1)
    np.testing.assert_array_equal(layer.G, conv.weight.grad.numpy().astype(np.float64).reshape(MATRIX))


# ----------------------------------------------------------------------------------------------- bad input


def _bad_conv(tmp_path, before_extra, *fragments, weight=None):
    W, mask, G = _conv_layer(0)
    W = W if weight is None else weight
    before = {"conv.weight": W, "conv.mask": mask, **before_extra}
    b, a = _files(tmp_path, before, {"conv.weight": W, "conv.mask": mask})
    result = _cli("--method", "rigl", b, a, "--alpha", "0.3")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_bad_convolution_input_exits_2_naming_the_key(tmp_path):
    X = np.ones((2, 3, 6, 6), np.float32)
    dY = np.ones((2, 4, 4, 4), np.float32)
    _bad_conv(tmp_path, {"conv.x": X[:, :2], "conv.dy": dY}, "'conv.x'", "(B, 3, H, W)")
    _bad_conv(tmp_path, {"conv.x": X, "conv.dy": dY[:, :, :3]}, "'conv.dy'", "(2, 4, 4, 4)")
    _bad_conv(tmp_path, {"conv.x": X, "conv.dy": dY, "conv.padding": np.int64(-1)}, "'conv.padding'")
    _bad_conv(tmp_path, {"conv.x": X, "conv.dy": dY, "conv.stride": np.float32(1.0)}, "'conv.stride'",
              "integer")
    _bad_conv(tmp_path, {"conv.x": X[:, :, :2, :2], "conv.dy": dY}, "'conv.x'", "smaller than the 3 x 3 kernel")
    _bad_conv(tmp_path, {"conv.x": X.reshape(2, -1), "conv.dy": dY}, "'conv.x'", "patch matrix")
    W, mask, G = _conv_layer(0)
    off = W.copy()
    off[~mask] = 1.0
    _bad_conv(tmp_path, {"conv.grad": G}, "'conv.weight'", "off conv.mask", "first at index (", weight=off)
    _bad_conv(tmp_path, {"conv.grad": G[:, :, :2]}, "'conv.grad'", "expected (4, 3, 3, 3)")
    _bad_conv(tmp_path, {"conv.grad": G}, "'conv.weight'", "expected (n_out, n_in)",
              weight=np.ones(5, np.float32))


def test_counts_are_those_of_the_filter_matrix():
    W, mask, G = _conv_layer(5)
    W_after, mask_after = rigl_masked_dense(W, mask, G, 0.3)
    conv, _ = _reports("rigl", W, mask, G, W_after, mask_after)
    assert conv["counts"]["rule_drop"] == _n_prune(0.3, int(mask.sum()))
