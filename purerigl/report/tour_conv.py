"""The convolution example of docs/tour.md: SRigL on a ``SparseConv2d``, where a filter is a neuron.

One training step of a two-layer network, a sparse convolution followed by global average pooling
(its C_OUT channel means are the logits), then one SRigL update of the convolution, exactly as the
training loop and :class:`purerigl.dst.updater.DSTUpdater` do them:

1. ``SparseConv2d.forward`` (backend ``reference``): the patch matrix P = im2col(X), one row per
   output position (b, ho, wo), times the filter matrix W (C_OUT, C_IN * KERNEL**2);
   ``GlobalAvgPool2d``, softmax cross-entropy, the two backwards, one SGD step with momentum;
2. ``method.update(LayerUpdate(layer=conv.linear, ...))``: the DST method sees the convolution's
   ``SparseLinear`` over its filter matrix, whose saved batch is (P, dY2), the patches and the output
   gradient at every output position, so G = dY2^T P is the filters' gradient and a filter is a row.

The data, weights and labels come from the generator ``[SEED, STREAM]``; :data:`STREAM` is the first
stream whose update ablates a filter at SRigL's default gamma_sal, so the example shows the rule
that removes whole filters. The dense gradient G is formed **only for display**;
tests/test_tour.py checks it against the filter gradient of a dense convolution computed another
way (``scipy.signal.correlate``, no patches).
"""

from __future__ import annotations

import numpy as np

from ..dst import make_method
from ..dst.srigl import ablation_threshold, neurons_to_ablate, salient_counts
from ..formats import Condensed
from ..formats._base import floor_count
from ..nn import GlobalAvgPool2d, SparseConv2d, softmax_cross_entropy
from ..optim import make_optimizer
from . import tour_common as tour

C_IN, C_OUT, KERNEL, IMAGE = 2, 4, 2, 3  # a 2x2 convolution of 2-channel 3x3 images into 4 channels
BATCH = 2
HO = IMAGE - KERNEL + 1  # output height and width (stride 1, no padding)
N_IN = C_IN * KERNEL * KERNEL  # the filter matrix's columns, one filter's fan-in when dense
K = 3  # connections per filter
BUDGET = C_OUT * K
STREAM = 8  # see the module docstring
SHAPE = (C_OUT, N_IN)
#: Column c * kh * kw + i * kw + j of the filter matrix: input channel c at kernel offset (i, j).
COLUMNS = [f"c{c}:{i}{j}" for c in range(C_IN) for i in range(KERNEL) for j in range(KERNEL)]
FILTERS = [f"f={o}" for o in range(C_OUT)]
#: Row (b, ho, wo) of the patch matrix: image b at output position (ho, wo).
PATCHES = [f"{b},{h},{w}" for b in range(BATCH) for h in range(HO) for w in range(HO)]


def conv_data():
    """X (BATCH, C_IN, IMAGE, IMAGE) float32 with one decimal, labels (BATCH,) in [0, C_OUT), and the
    filter matrix before the step: Condensed (C_OUT, N_IN), K entries per filter, two decimals."""
    rng = np.random.default_rng([tour.SEED, STREAM])
    X = (np.round(rng.standard_normal((BATCH, C_IN, IMAGE, IMAGE)), 1) + 0.0).astype(np.float32)  # no -0.0
    labels = rng.integers(0, C_OUT, size=BATCH)
    W = Condensed.random(SHAPE, None, rng, k=K)
    W.values[...] = np.round(W.values, 2) + 0.0  # no -0.0
    return X, labels, W


def conv_step():
    """(conv, optimizer, X, labels, W before the step) after one forward, backward and SGD step."""
    X, labels, W0 = conv_data()
    conv = SparseConv2d(W0.copy(), c_in=C_IN, kernel=KERNEL, backend="reference", name="conv0")
    pool = GlobalAvgPool2d(backend="reference")
    optimizer = make_optimizer("sgd", conv.parameters(), lr=tour.LR, momentum=tour.MOMENTUM, weight_decay=0.0)
    logits = pool.forward(conv.forward(X))  # (B, C_OUT, HO, HO) -> (B, C_OUT)
    _, dlogits = softmax_cross_entropy(logits, labels)  # (B, C_OUT)
    conv.backward(pool.backward(dlogits))  # sddmm over the patches: weight.grad at the stored entries
    optimizer.step()
    return conv, optimizer, X, labels, W0


def filter_gradient(conv) -> np.ndarray:
    """G = dY2^T P (C_OUT, N_IN) from the layer's saved batch, in float64: for display only."""
    P, dY2 = conv.linear.saved_batch()  # (B*HO*HO, N_IN), (B*HO*HO, C_OUT)
    return dY2.astype(np.float64).T @ P.astype(np.float64)


def _image(X) -> str:
    """The batch as text: per image, its channels side by side."""
    lines = []
    for b in range(BATCH):
        lines.append(f"  image {b}: " + "   ".join(f"{f'channel {c}':<{6 * IMAGE - 1}}" for c in range(C_IN)).rstrip())
        for y in range(IMAGE):
            lines.append(" " * 11 + "   ".join(" ".join(f"{v:5.1f}" for v in X[b, c, y]) for c in range(C_IN)))
    return "```text\n" + "\n".join(lines) + "\n```"


def _dense(M, rows, cols, fmt) -> str:
    return tour.grid_text({(i, j): float(M[i, j]) for i in range(M.shape[0]) for j in range(M.shape[1])},
                      fmt=fmt, shape=M.shape, rows=rows, cols=cols)


def conv_example_markdown() -> list[str]:
    """The section's markdown lines: the layer, its patches, G, SRigL's decisions and the result."""
    conv, optimizer, X, labels, W0 = conv_step()
    layer = conv.linear
    W = layer.W
    before = tour.cells_of(W)
    G = filter_gradient(conv)
    P, dY2 = layer.saved_batch()
    grid = dict(shape=SHAPE, rows=FILTERS, cols=COLUMNS)
    nnz = W.nnz
    method = make_method("srigl", "condensed")
    n_prune = floor_count(tour.ALPHA, nnz)
    counts = salient_counts(W, P, dY2, nnz - n_prune, n_prune, layer.backend, tour.SALT)
    k_ref = BUDGET // C_OUT
    tau = ablation_threshold(method.gamma_sal, k_ref)
    ablate = np.flatnonzero(neurons_to_ablate(counts, BUDGET, N_IN, method.gamma_sal)).tolist()
    n_active = C_OUT - len(ablate)
    out = [
        "### SRigL on a convolution: a filter is a neuron (`--method srigl`, condensed, `SparseConv2d`)",
        "",
        f"A `SparseConv2d` of {C_IN} input channels into {C_OUT} filters of {KERNEL} x {KERNEL} (stride 1, no "
        f"padding), followed by global average pooling whose {C_OUT} channel means are the logits; a batch of "
        f"{BATCH} images of {C_IN} x {IMAGE} x {IMAGE} (labels {labels.tolist()}), the same loss, SGD and drop "
        f"fraction as above (seed stream [{tour.SEED}, {STREAM}]). The weight is the filter matrix W ({C_OUT}, "
        f"c_in kh kw = {N_IN}), stored as Condensed with k = {K} per filter (C = {BUDGET}); row f=o is filter o, "
        "flattened: column cC:ij is input channel C at kernel offset (i, j) (c1:01 is channel 1, offset (0, 1)).",
        "",
        "X:",
        "",
        _image(X),
        "",
        "W before the step:",
        "",
        tour.grid_text(tour.cells_of(W0), **grid),
        "",
        f"The patch matrix P = im2col(X) ({BATCH} x {HO} x {HO} = {len(PATCHES)} rows, one per output "
        "position b,ho,wo; its columns in W's order): the forward is Y2 = P W^T, a linear layer whose batch is "
        "the patches.",
        "",
        _dense(P, PATCHES, COLUMNS, "{:6.1f}"),
        "",
        f"dY2, the loss gradient at every output position: the average pooling's backward gives each of "
        f"image b's {HO * HO} positions dL/dlogits[b, o] / {HO * HO}:",
        "",
        _dense(dY2, PATCHES, FILTERS, "{:6.3f}"),
        "",
        "W after the SGD step:",
        "",
        tour.grid_text(before, **grid),
        "",
        "G = dY2^T P, the filters' gradient at **every** position (formed here only to show it; it equals the "
        "gradient of a dense convolution, which tests/test_tour.py computes with `scipy.signal.correlate`):",
        "",
        _dense(G, FILTERS, COLUMNS, "{:6.3f}"),
        "",
        f"From here on the update is the linear layer's, with the patches as its batch. n_prune = "
        f"floor({tour.ALPHA} x {nnz}) = {n_prune}, n_keep = {nnz - n_prune}. Salient set: the top "
        f"{nnz - n_prune} |w| of the stored entries together with the top {n_prune} |G| over all "
        f"{C_OUT * N_IN} positions; salient entries per filter o = 0..{C_OUT - 1}: {counts.tolist()}.",
        "",
        f"Ablation (the default gamma_sal = {method.gamma_sal:g}): K_ref = floor({BUDGET} / {C_OUT}) = {k_ref}, "
        f"tau = max(1, floor({method.gamma_sal:g} x {k_ref})) = {tau}; the filters with fewer salient entries "
        f"than tau are ablated (at least floor(C / {N_IN}) + 1 = {BUDGET // N_IN + 1} filters survive): "
        f"{ablate or 'none'}. An ablated filter keeps no weight: its output channel is its bias alone, "
        f"constant over the image. Fan-in k = floor(C / n_active) = floor({BUDGET} / {n_active}) = "
        f"{BUDGET // n_active}: the ablated filter's connections go to the others.",
        "",
        f"Drop |w| among the filters that stay active, keep the top {nnz - n_prune}, trim every filter to "
        "its k largest, then each active filter grows its top k - c_r columns of |G[o, :]| that it does not "
        "keep.",
        "",
    ]
    stats = tour.run_update(method, layer, optimizer, BUDGET)
    return out + tour.result_lines(layer, optimizer, before, stats, **grid) + [""]
