"""DST on convolutions (issue 16): the rules act on the filter matrix (c_out, c_in * kh * kw) with the
gradient of a convolution, streamed over the patch batch.

The oracle is the filter gradient of a dense convolution computed another way, by
``scipy.signal.correlate`` of every input channel with every output gradient channel (no patch
matrix): RigL's streamed growth selection on a SparseConv2d's batch must pick the top positions of
that gradient, and one update of every method on a conv layer must equal its plain NumPy
specification fed with that oracle gradient (``Step.G``, as verify-update does)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from purerigl import get_backend
from purerigl.dst import LayerUpdate, make_method
from purerigl.dst.spec import Step, positions, spec_update
from purerigl.dst.topology import tie_salt
from purerigl.formats import FORMATS
from purerigl.nn import SparseConv2d
from purerigl.optim import SGD

C_IN, C_OUT, K, STRIDE, PAD = 3, 5, 3, 2, 1


def filter_gradient(X, dY, k=K, stride=STRIDE, padding=PAD) -> np.ndarray:
    """float64 (c_out, c_in * k * k): dL/dW of a dense convolution, by correlation per channel pair.

    .. math:: \\frac{\\partial L}{\\partial W[o, c, i, j]} = \\sum_{b, h, w} dY[b, o, h, w]\\,
              X_p[b, c, s h + i, s w + j]
    """
    B, C, H, W = X.shape
    Xp = np.pad(X.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    O, Ho, Wo = dY.shape[1], dY.shape[2], dY.shape[3]
    G = np.zeros((O, C, k, k))
    for o in range(O):
        # dY dilated by the stride: correlating the padded input with it gives every kernel offset at once
        D = np.zeros((B, (Ho - 1) * stride + 1, (Wo - 1) * stride + 1))
        D[:, ::stride, ::stride] = dY[:, o]
        for c in range(C):
            full = sum(scipy.signal.correlate(Xp[b, c], D[b], mode="valid") for b in range(B))
            G[o, c] = full[:k, :k]
    return G.reshape(O, C * k * k)  # (c_out, c_in * kh * kw), columns (c, i, j)


def _layer_and_batch(fmt, backend, seed=0):
    rng = np.random.default_rng(seed)
    W = FORMATS[fmt].random((C_OUT, C_IN * K * K), 0.3, rng)
    W.values[...] = rng.integers(-3, 4, size=W.values.shape) * 0.5
    conv = SparseConv2d(W, C_IN, K, stride=STRIDE, padding=PAD, backend=backend)
    X = rng.integers(-2, 3, size=(2, C_IN, 7, 6)).astype(np.float32)
    Y = conv.forward(X)
    dY = rng.integers(-2, 3, size=Y.shape).astype(np.float32)
    conv.backward(dY)
    return conv, X, dY


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_streamed_growth_on_a_conv_ranks_the_dense_filter_gradient(backend_name):
    conv, X, dY = _layer_and_batch("csr", backend_name)
    G = filter_gradient(X, dY)
    P, dY2 = conv.linear.saved_batch()
    np.testing.assert_allclose(dY2.T.astype(np.float64) @ P.astype(np.float64), G, rtol=0, atol=1e-9)
    W = conv.W
    m = 7
    rows, cols = get_backend(backend_name).topk_grad(P, dY2, m, W.indptr, W.indices, salt=3)
    chosen = set((rows * W.shape[1] + cols).tolist())
    stored = set(positions(W).tolist())
    free = [(abs(G.flat[p]), p) for p in range(G.size) if p not in stored]
    threshold = sorted((s for s, _ in free), reverse=True)[m - 1]
    assert len(chosen) == m and not chosen & stored
    assert all(abs(G.flat[p]) >= threshold for p in chosen)  # the m largest |G| (ties: any of them)


@pytest.mark.parametrize("method, fmt, options", [
    ("rigl", "csr", {}), ("set", "csr", {}), ("srigl", "condensed", {"gamma_sal": 0.3}),
    ("gse", "csr", {"gse_sampler": "uniform"}), ("diag-rigl", "diagonal", {}),
])
@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_an_update_on_a_conv_equals_the_specification_with_the_oracle_gradient(method, fmt, options, backend_name):
    conv, X, dY = _layer_and_batch(fmt, backend_name, seed=1)
    opt = SGD(conv.parameters(), lr=0.25, momentum=0.5)
    opt.step()
    conv.forward(X)
    conv.backward(dY)
    conv.sync_to_host()
    before = conv.W.copy()
    momentum = np.array(opt.state_arrays(conv.weight)["momentum_buffer"]).reshape(before.values.shape)
    salt = tie_salt(0, 0, 0)
    step = Step(before, None, None, 0.3, salt=salt, budget=before.nnz, rng=np.random.default_rng(9),
                state={"momentum_buffer": momentum}, G=filter_gradient(X, dY))
    if method == "gse":  # GSE scores its candidates with grad_at on the batch: give the spec the batch too
        P, dY2 = conv.linear.saved_batch()
        step.X, step.dY = np.asarray(P), np.asarray(dY2)
    want = spec_update(method, step, **options)
    make_method(method, fmt, **options).update(
        LayerUpdate(conv.linear, opt, 0.3, np.random.default_rng(9), budget=before.nnz, salt=salt))
    got = conv.W
    assert sorted(positions(got).tolist()) == sorted(positions(want.W).tolist())
    assert type(got) is type(want.W) and got.nnz == want.W.nnz
