"""The element-wise device kernels of a training step against the purerigl NumPy code they mirror.

Runs on Numba's CUDA simulator (tests/conftest.py turns it on; ``PURERIGL_TEST_REAL_GPU=1`` runs on a
real GPU instead), with tiny hypothesis-drawn shapes and ``THREADS_PER_BLOCK`` patched to 4 so that
inputs span several blocks. Each kernel is compared with the real purerigl code:

- ``add_bias``, ``relu_forward`` / ``relu_backward``, ``bias_grad``: ``SparseLinear``'s bias lines and
  :class:`purerigl.nn.ReLU` (bit-exact: the same float32 operations);
- ``softmax_cross_entropy``: :func:`purerigl.nn.softmax_cross_entropy` (loss to 1e-6 relative,
  dlogits to a few float32 ulps) and the Trainer's accuracy count;
- ``sgd_step`` / ``adam_step``: :class:`purerigl.optim.SGD`, :class:`~purerigl.optim.Adam` and
  :class:`~purerigl.optim.AdamW` stepping a real Parameter with the same gradients (rtol 1e-6; bit-exact
  on the simulator, where no multiply-add is fused);
- ``remap_by_position`` / ``source_by_position`` / ``remap_by_source``: a dict lookup built here, and
  :func:`purerigl.kernels.host_topology.source_of` with :meth:`~purerigl.optim.Optimizer.remap_state`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import strategies as S
from purerigl.errors import BackendError, DTypeError, ShapeError
from purerigl.formats import CSR
from purerigl.nn import ReLU, softmax_cross_entropy
from purerigl.nn.parameter import Parameter
from purerigl.optim import SGD, Adam, AdamW

SMALL_BLOCK = 4
EXAMPLES = 10
MAX_DIM = 9
MAX_BATCH = 6
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def K():
    """The kernel modules, with THREADS_PER_BLOCK patched to 4 for the whole module."""
    from purerigl.kernels import get_backend

    try:
        get_backend("cuda")
    except BackendError as err:  # only with PURERIGL_TEST_REAL_GPU=1 on a machine without a GPU
        pytest.skip(f"cuda backend unavailable: {err}")
    from purerigl.kernels.cuda import _launch, elementwise, loss, topology

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = SMALL_BLOCK

    class Kernels:
        E, L, T = elementwise, loss, topology
        simulator = _launch.SIMULATOR

        @staticmethod
        def dev(a):
            return _launch.to_device(a)

    yield Kernels
    _launch.THREADS_PER_BLOCK = saved


def assert_f32(got, want, what, rtol=1e-6, exact=False):
    """float32 ``got`` equals ``want`` (bit for bit when ``exact``), else within rtol of it.

    The absolute floor is rtol times the largest magnitude of ``want`` (an update w - lr u can cancel
    to near zero, where a relative test means nothing).
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    floor = rtol * float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=floor, err_msg=what)


batches = st.one_of(st.just(1), st.integers(1, MAX_BATCH))
widths = st.one_of(st.just(1), st.integers(1, MAX_DIM))


def arrays(shape, ties=None):
    if ties is None:
        return st.booleans().flatmap(lambda t: S.float32_arrays(shape, t))
    return S.float32_arrays(shape, ties)


# --------------------------------------------------------------------------------------------------
# Layer pieces
# --------------------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(data=st.data(), B=batches, n=widths)
def test_add_bias(K, data, B, n):
    """Y[b, i] += bias[i], bit-exact with ``Y += bias`` (SparseLinear.forward)."""
    Y = data.draw(arrays((B, n)), label="Y")
    b = data.draw(arrays((n,)), label="bias")
    Y_d = K.dev(Y)
    assert K.E.add_bias(Y_d, K.dev(b)) is Y_d
    want = Y.copy()
    want += b
    assert_f32(Y_d.copy_to_host(), want, "add_bias", exact=True)


@settings(max_examples=EXAMPLES)
@given(data=st.data(), B=batches, n=widths, sign=st.sampled_from(["mixed", "negative", "nonpositive"]))
def test_relu_matches_purerigl(K, data, B, n, sign):
    """Forward (values and mask) and backward bit-exact with purerigl.nn.ReLU, all-negative input included."""
    X = data.draw(arrays((B, n)), label="X")
    if sign == "negative":
        X = -np.abs(X) - np.float32(0.25)
    elif sign == "nonpositive":  # zeros and -0.0 give a False mask
        X = -np.abs(X)
    dY = data.draw(arrays((B, n)), label="dY")
    relu = ReLU()
    Y_want = relu.forward(X)
    dX_want = relu.backward(dY)
    Y_d, mask_d = K.E.relu_forward(K.dev(X))
    assert_f32(Y_d.copy_to_host(), Y_want, "relu forward", exact=True)
    assert np.array_equal(np.signbit(Y_d.copy_to_host()), np.signbit(Y_want))
    mask = mask_d.copy_to_host()
    assert mask.dtype == np.bool_ and np.array_equal(mask, relu._mask)
    assert_f32(K.E.relu_backward(K.dev(dY), mask_d).copy_to_host(), dX_want, "relu backward", exact=True)
    if sign == "negative":
        assert not mask.any() and not Y_d.copy_to_host().any()


@settings(max_examples=EXAMPLES)
@given(data=st.data(), B=st.one_of(st.just(1), st.integers(0, MAX_BATCH)), n=widths)
def test_bias_grad(K, data, B, n):
    """out[i] = sum_b dY[b, i], bit-exact with np.sum(dY, axis=0) (SparseLinear.backward); B = 0 gives 0."""
    dY = data.draw(arrays((B, n)), label="dY")
    out = K.dev(np.full(n, np.nan, np.float32))
    assert K.E.bias_grad(K.dev(dY), out) is out
    assert_f32(out.copy_to_host(), np.sum(dY, axis=0), "bias_grad", exact=True)


# --------------------------------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------------------------------


@st.composite
def loss_problems(draw):
    """(logits, labels): ties only (equal logits in a row), moderate floats, or a wide range."""
    B = draw(batches)
    C = draw(st.one_of(st.just(1), st.integers(1, 7)))
    kind = draw(st.sampled_from(["ties", "mixed", "wide"]))
    if kind == "wide":
        logits = draw(hnp.arrays(np.float32, (B, C), elements=st.floats(-40, 40, width=32)))
    else:
        logits = draw(S.float32_arrays((B, C), kind == "ties"))
    labels = draw(hnp.arrays(draw(st.sampled_from([np.int32, np.int64])), (B,), elements=st.integers(0, C - 1)))
    return logits, labels


def check_loss(K, logits, labels, use_out=False, alias=False):
    want_loss, want_grad = softmax_cross_entropy(logits, labels)
    want_correct = int((logits.argmax(axis=1) == labels).sum())  # what the Trainer counts
    z_d = K.dev(logits)
    out = z_d if alias else (K.dev(np.full(logits.shape, np.nan, np.float32)) if use_out else None)
    loss, grad_d, correct = K.L.softmax_cross_entropy(z_d, K.dev(labels), **({"out": out} if out is not None else {}))
    if out is not None:
        assert grad_d is out
    assert isinstance(loss, float) and isinstance(correct, int)
    assert correct == want_correct
    assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-7)
    grad = grad_d.copy_to_host()
    assert grad.dtype == np.float32
    # softmax values differ by an ulp or so (float32 exp, row sums); p - 1 keeps that absolute error
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=4 * EPS32 / logits.shape[0])
    return loss, grad


@settings(max_examples=EXAMPLES)
@given(problem=loss_problems(), mode=st.sampled_from(["new", "out", "alias"]))
def test_softmax_cross_entropy_matches_purerigl(K, problem, mode):
    """Loss, dlogits and the correct count agree with purerigl.nn.softmax_cross_entropy and the Trainer."""
    logits, labels = problem
    before = logits.copy()
    check_loss(K, logits, labels, use_out=mode == "out", alias=mode == "alias")
    assert np.array_equal(logits, before)


def test_softmax_cross_entropy_edges(K):
    """Batch 1, one class, all logits tied (loss log C, first index predicted), huge logits, determinism."""
    loss, grad = check_loss(K, np.array([[2.0, -1.0, 0.5]], np.float32), np.array([2]))
    loss, grad = check_loss(K, np.zeros((3, 1), np.float32), np.zeros(3, np.int64))
    assert loss == 0.0 and not grad.any()
    tied = np.full((5, 4), 0.5, np.float32)
    labels = np.array([0, 1, 2, 3, 0])
    loss, grad = check_loss(K, tied, labels)
    assert loss == pytest.approx(np.log(4.0), rel=1e-7)
    assert K.L.softmax_cross_entropy(K.dev(tied), K.dev(labels))[2] == 2  # argmax of a tie is index 0
    big = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 3e4]], np.float32)
    check_loss(K, big, np.array([1, 2]))
    rng = np.random.default_rng(7)
    z = rng.standard_normal((37, 5)).astype(np.float32)  # more samples than the reduction block
    y = rng.integers(0, 5, 37)
    first = check_loss(K, z, y)[0]
    assert all(K.L.softmax_cross_entropy(K.dev(z), K.dev(y))[0] == first for _ in range(2))


def test_softmax_cross_entropy_empty_batch_and_refusals(K):
    loss, grad_d, correct = K.L.softmax_cross_entropy(K.dev(np.zeros((0, 3), np.float32)), K.dev(np.zeros(0, np.int64)))
    assert np.isnan(loss) and grad_d.shape == (0, 3) and correct == 0
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(DTypeError, match="device array"):
        K.L.softmax_cross_entropy(z, K.dev(np.zeros(2, np.int64)))
    with pytest.raises(DTypeError, match="integer"):
        K.L.softmax_cross_entropy(K.dev(z), K.dev(np.zeros(2, np.float32)))
    with pytest.raises(ShapeError):
        K.L.softmax_cross_entropy(K.dev(z), K.dev(np.zeros(3, np.int64)))


# --------------------------------------------------------------------------------------------------
# Optimizer updates
# --------------------------------------------------------------------------------------------------


@st.composite
def update_problems(draw, n_steps: int):
    """(w, [g_1..g_n], [lr_1..lr_n]): a 1-D or 2-D parameter and n gradients."""
    shape = draw(st.sampled_from([(1,), (7,), (3, 5), (1, 1), (2, 9)]))
    w = draw(S.float32_arrays(shape, False))
    grads = [draw(S.float32_arrays(shape, False)) for _ in range(n_steps)]
    lrs = [draw(st.sampled_from([0.1, 0.05, 1e-3, 0.3])) for _ in range(n_steps)]
    return w, grads, lrs


def run_both(K, opt_cls, kwargs, device_step, w, grads, lrs, decay):
    """Step a real purerigl optimizer and the device kernel with the same gradients; compare each step."""
    p = Parameter("layer.values", w.copy(), decay=decay)
    opt = opt_cls([p], lrs[0], **kwargs)
    w_d = K.dev(w)
    state_d = {name: K.dev(np.zeros_like(w)) for name in opt.state_names}
    for g, lr in zip(grads, lrs):
        p.grad[...] = g
        opt.step(lr=lr)
        device_step(w_d, K.dev(g), state_d, lr, opt.steps)
        what = f"{opt_cls.__name__}{kwargs} decay={decay} step {opt.steps}"
        assert_f32(w_d.copy_to_host(), p.value, f"{what}: w", exact=K.simulator)
        for name, arr in opt.state_arrays(p).items():
            assert_f32(state_d[name].copy_to_host(), arr, f"{what}: {name}", exact=K.simulator)


@settings(max_examples=EXAMPLES)
@given(problem=update_problems(3), momentum=st.sampled_from([0.0, 0.9, 0.5]), nesterov=st.booleans(),
       weight_decay=st.sampled_from([0.0, 1e-2, 5e-4]), decay=st.booleans())
def test_sgd_step_matches_purerigl(K, problem, momentum, nesterov, weight_decay, decay):
    """sgd_step = purerigl.optim.SGD over 3 steps: momentum 0 / > 0, Nesterov on / off, weight decay on / off."""
    nesterov = nesterov and momentum > 0
    kwargs = {"momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}

    def device_step(w_d, g_d, state_d, lr, step):
        K.E.sgd_step(w_d, g_d, state_d.get("momentum_buffer"), lr, momentum, nesterov, weight_decay, decay)

    run_both(K, SGD, kwargs, device_step, *problem, decay)


@settings(max_examples=EXAMPLES)
@given(problem=update_problems(5), decoupled=st.booleans(), weight_decay=st.sampled_from([0.0, 1e-2, 0.1]),
       decay=st.booleans(), betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.0)]),
       eps=st.sampled_from([1e-8, 1e-3]))
def test_adam_step_matches_purerigl(K, problem, decoupled, weight_decay, decay, betas, eps):
    """adam_step = purerigl.optim.Adam / AdamW at steps 1 to 5 (bias correction), weight decay on / off."""
    kwargs = {"betas": betas, "eps": eps, "weight_decay": weight_decay}

    def device_step(w_d, g_d, state_d, lr, step):
        K.E.adam_step(w_d, g_d, state_d["exp_avg"], state_d["exp_avg_sq"], lr, step, betas, eps, weight_decay,
                      decay, decoupled=decoupled)

    run_both(K, AdamW if decoupled else Adam, kwargs, device_step, *problem, decay)


def test_update_refusals(K):
    w = K.dev(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="momentum buffer"):
        K.E.sgd_step(w, K.dev(np.zeros(3, np.float32)), None, 0.1, momentum=0.9)
    with pytest.raises(ShapeError):
        K.E.sgd_step(w, K.dev(np.zeros(4, np.float32)), None, 0.1)
    with pytest.raises(DTypeError, match="device array"):
        K.E.sgd_step(w, np.zeros(3, np.float32), None, 0.1)
    with pytest.raises(ValueError, match="step"):
        K.E.adam_step(w, w, w, w, 0.1, step=0)


# --------------------------------------------------------------------------------------------------
# Topology change: remap by position
# --------------------------------------------------------------------------------------------------


def remap_oracle(old_keys, old_vals, new_keys):
    lookup = {int(k): v for k, v in zip(old_keys, old_vals.ravel())}
    return np.array([lookup.get(int(k), 0.0) for k in new_keys], np.float32)


def check_remap(K, old_keys, old_vals, new_keys):
    ok, nk = (K.dev(np.asarray(a, np.int64)) for a in (old_keys, new_keys))
    got = K.T.remap_by_position(ok, K.dev(old_vals), nk).copy_to_host()
    want = remap_oracle(old_keys, old_vals, new_keys)
    assert_f32(got, want, "remap_by_position", exact=True)
    source = K.T.source_by_position(ok, nk).copy_to_host()
    lookup = {int(k): j for j, k in enumerate(old_keys)}
    assert np.array_equal(source, [lookup.get(int(k), -1) for k in new_keys])
    out = K.dev(np.full(len(new_keys), np.nan, np.float32))
    assert K.T.remap_by_source(K.dev(source), K.dev(old_vals), out) is out
    assert_f32(out.copy_to_host(), want, "remap_by_source", exact=True)


@settings(max_examples=EXAMPLES)
@given(data=st.data(), universe=st.integers(1, 40))
def test_remap_by_position_matches_dict(K, data, universe):
    """Drawn sorted unique key sets (any overlap, either one empty) against a dict lookup."""
    old_keys = sorted(data.draw(st.sets(st.integers(0, universe - 1)), label="old"))
    new_keys = sorted(data.draw(st.sets(st.integers(0, universe - 1)), label="new"))
    old_vals = data.draw(S.float32_arrays((len(old_keys),), False), label="vals")
    check_remap(K, old_keys, old_vals, new_keys)


def test_remap_edges(K):
    """No overlap, full overlap, empty old, empty new, both empty, 2-D values, large flat keys."""
    vals = np.arange(1, 6, dtype=np.float32)
    check_remap(K, [0, 2, 4, 6, 8], vals, [1, 3, 5, 7, 9, 11])  # no overlap: all zeros
    check_remap(K, [0, 2, 4, 6, 8], vals, [0, 2, 4, 6, 8])  # full overlap: a copy
    check_remap(K, [], np.zeros(0, np.float32), [1, 2, 3])
    check_remap(K, [1, 2, 3], vals[:3], [])
    check_remap(K, [], np.zeros(0, np.float32), [])
    big = [5, 2**40 + 3, 2**40 + 7, 2**62]
    check_remap(K, big, vals[:4], [2**40 + 7, 2**62, 2**62 + 1])
    vals_2d = K.dev(np.arange(6, dtype=np.float32).reshape(2, 3))  # laid out like Condensed values
    out_2d = K.dev(np.full((1, 3), np.nan, np.float32))
    got = K.T.remap_by_position(K.dev(np.arange(6, dtype=np.int64)), vals_2d, K.dev(np.array([1, 5, 9], np.int64)), out_2d)
    assert got.shape == (1, 3) and np.array_equal(got.copy_to_host(), [[1.0, 5.0, 0.0]])
    with pytest.raises(ShapeError):
        K.T.remap_by_position(K.dev(np.arange(3, dtype=np.int64)), K.dev(vals), K.dev(np.arange(2, dtype=np.int64)))
    with pytest.raises(DTypeError):
        K.T.remap_by_position(K.dev(np.arange(3, dtype=np.int32)), K.dev(vals[:3]), K.dev(np.arange(2, dtype=np.int64)))


def _csr_from_flat(flat, shape, rng):
    flat = np.array(sorted(flat), np.int64)
    rows, cols = np.divmod(flat, shape[1])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=shape[0]))]).astype(np.int64)
    return CSR(indptr, cols.astype(np.int32), rng.uniform(-2, 2, flat.size).astype(np.float32), shape)


@settings(max_examples=EXAMPLES)
@given(data=st.data(), shape=S.shapes(max_dim=6))
def test_remap_matches_apply_structure_and_remap_state(K, data, shape):
    """On real CSR structures: source_of's indices, and the values and Adam state apply_structure leaves."""
    from purerigl.dst.topology import apply_structure
    from purerigl.kernels.host_topology import flat_positions, source_of
    from purerigl.nn import SparseLinear

    n = shape[0] * shape[1]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    # old holds at least one entry: source_of fails on an empty old structure (never one in training)
    old = _csr_from_flat(data.draw(st.sets(st.integers(0, n - 1), min_size=1), label="old"), shape, rng)
    new = _csr_from_flat(data.draw(st.sets(st.integers(0, n - 1)), label="new"), shape, rng)
    old_keys, new_keys = flat_positions(old), flat_positions(new)  # ascending for CSR
    ok, nk = K.dev(old_keys), K.dev(new_keys)
    assert np.array_equal(K.T.source_by_position(ok, nk).copy_to_host(), source_of(old, new).ravel())

    layer = SparseLinear(old, backend="cpu")
    opt = Adam(layer.parameters(), lr=0.1)
    layer.weight.grad[...] = rng.uniform(-1, 1, old.nnz).astype(np.float32)
    opt.step()
    old_vals_d = K.dev(old.values)
    old_state_d = {k: K.dev(v) for k, v in opt.state_arrays(layer.weight).items()}
    apply_structure(layer, opt, new)
    assert_f32(K.T.remap_by_position(ok, old_vals_d, nk).copy_to_host(), layer.W.values, "values", exact=True)
    source_d = K.T.source_by_position(ok, nk)
    for name, arr in opt.state_arrays(layer.weight).items():
        assert_f32(K.T.remap_by_source(source_d, old_state_d[name]).copy_to_host(), arr, name, exact=True)
