"""The transformer on the cuda backend (Numba's CUDA simulator here; no GPU needed).

Pins down:

- every transformer array operation of cuda (``add``, layer norm, GELU, self-attention, patches, class
  token, class-token pooling: :mod:`purerigl.kernels.cuda.transformer`, :mod:`purerigl.kernels.cuda.attention`)
  against the specification (:mod:`purerigl.kernels.host_transformer`, the reference backend's) on
  tiny shapes, batch 1 included, and its refusal of host arrays;
- LayerNorm, GELU and a pre-norm block with sparse projections, forward and backward, on cuda against
  the same layers on the reference backend (outputs, input gradients, every parameter gradient);
- a tiny ``vit-tiny`` trained a few steps with a topology update on cuda and on cpu: RigL (csr), SRigL
  (condensed), diag-rigl (diagonal) and DynaDiag's gated diagonal layers inside the blocks choose the
  same sets, and the values agree to float32 rounding;
- residency: a ViT training step copies only the batch in and the loss out (no host array reaches a
  kernel, nothing else crosses); a ViT moves from cpu to cuda and back with the same predictions;
- ``purerigl train --model vit-tiny --backend cuda`` finishes.

Tiny shapes, and ``THREADS_PER_BLOCK`` patched to 4 so that the launches still span several blocks
(the simulator runs every thread as a Python thread: each ViT step here costs about a second).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from purerigl.dst import UpdateSchedule, make_method
from purerigl.dst.updater import DSTUpdater
from purerigl.errors import DTypeError, ShapeError
from purerigl.formats import Condensed
from purerigl.kernels import get_backend
from purerigl.kernels.host_topology import flat_positions
from purerigl.nn import SparseLinear
from purerigl.nn.attention import MultiHeadSelfAttention
from purerigl.nn.models import build_model
from purerigl.nn.transformer import GELU, LayerNorm, TransformerBlock
from purerigl.optim import SGD

SMALL_BLOCK = 4
REF = get_backend("reference")
TOL = {"rtol": 1e-4, "atol": 1e-5}
VIT = {"width": 8, "depth": 1, "heads": 2, "patch": 4}  # 8 x 8 digits: T = 4 patches + the class token


@pytest.fixture(scope="module")
def cuda():
    """The cuda backend, with THREADS_PER_BLOCK patched small for the whole module."""
    from purerigl.errors import BackendError

    try:
        backend = get_backend("cuda")
    except BackendError as err:  # conftest turns the simulator on, so this means numba.cuda is broken
        pytest.fail(f"the cuda backend should run under the simulator: {err}")
    from purerigl.kernels.cuda import _launch

    saved = _launch.THREADS_PER_BLOCK
    _launch.THREADS_PER_BLOCK = SMALL_BLOCK
    yield backend
    _launch.THREADS_PER_BLOCK = saved


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _close(cuda, got, want, **tol):
    np.testing.assert_allclose(cuda.to_host(got), want, **(tol or TOL))


# --------------------------------------------------------------------------------------------------
# every operation against the specification


@pytest.mark.parametrize("B", [1, 2])
def test_elementwise_and_token_ops_match_the_specification(cuda, B):
    rng = np.random.default_rng(B)
    T, d = 3, 4
    X, Y, E = _normal(rng, B, T, d), _normal(rng, B, T, d), _normal(rng, T, d)
    to = cuda.to_device
    _close(cuda, cuda.add(to(X), to(Y)), REF.add(X, Y))  # residual
    _close(cuda, cuda.add(to(X), to(E)), REF.add(X, E))  # position embeddings, repeated over the batch
    _close(cuda, cuda.gelu_forward(to(X)), REF.gelu_forward(X))
    _close(cuda, cuda.gelu_backward(to(Y), to(X)), REF.gelu_backward(Y, X))
    token = _normal(rng, d)
    _close(cuda, cuda.prepend_token(to(X), to(token)), REF.prepend_token(X, token))
    dY1 = _normal(rng, B, T + 1, d)
    dtok, want_dtok = cuda.zeros((d,)), np.zeros(d, np.float32)
    _close(cuda, cuda.prepend_token_backward(to(dY1), dtok), REF.prepend_token_backward(dY1, want_dtok))
    _close(cuda, dtok, want_dtok)
    _close(cuda, cuda.first_token(to(X)), REF.first_token(X))
    dP = _normal(rng, B, d)
    _close(cuda, cuda.first_token_backward(to(dP), T), REF.first_token_backward(dP, T))


@pytest.mark.parametrize("B", [1, 2])
def test_patches_match_the_specification_and_invert(cuda, B):
    rng = np.random.default_rng(10 + B)
    X = _normal(rng, B, 2, 4, 6)  # (B, C, H, W), p = 2: T = 6 patches of 8 values
    P = cuda.patchify(cuda.to_device(X), 2)
    assert tuple(P.shape) == (B, 6, 8)
    np.testing.assert_array_equal(cuda.to_host(P), REF.patchify(X, 2))
    np.testing.assert_array_equal(cuda.to_host(cuda.unpatchify(P, 2, (2, 4, 6))), X)
    dP = _normal(rng, B, 6, 8)
    np.testing.assert_array_equal(cuda.to_host(cuda.unpatchify(cuda.to_device(dP), 2, (2, 4, 6))),
                                  REF.unpatchify(dP, 2, (2, 4, 6)))


@pytest.mark.parametrize("B", [1, 2])
def test_layer_norm_ops_match_the_specification(cuda, B):
    rng = np.random.default_rng(20 + B)
    X, dY = _normal(rng, B, 3, 5), _normal(rng, B, 3, 5)
    gamma, beta = _normal(rng, 5), _normal(rng, 5)
    to = cuda.to_device
    got = cuda.layer_norm_forward(to(X), to(gamma), to(beta), 1e-5)
    want = REF.layer_norm_forward(X, gamma, beta, 1e-5)
    assert tuple(got[2].shape) == want[2].shape == (B, 3, 1)
    for g, w in zip(got, want):
        _close(cuda, g, w)
    dg, db = cuda.zeros((5,)), cuda.zeros((5,))
    want_dg, want_db = np.zeros(5, np.float32), np.zeros(5, np.float32)
    dX = cuda.layer_norm_backward(to(dY), got[1], got[2], to(gamma), dg, db)
    _close(cuda, dX, REF.layer_norm_backward(dY, want[1], want[2], gamma, want_dg, want_db))
    _close(cuda, dg, want_dg)
    _close(cuda, db, want_db)


@pytest.mark.parametrize("B, T, d, heads", [(1, 3, 4, 2), (2, 4, 6, 3), (2, 1, 2, 1)])
def test_self_attention_ops_match_the_specification(cuda, B, T, d, heads):
    rng = np.random.default_rng(B * 100 + T * 10 + d)
    QKV, dO = _normal(rng, B, T, 3 * d), _normal(rng, B, T, d)
    O, A = cuda.self_attention_forward(cuda.to_device(QKV), heads)
    want_O, want_A = REF.self_attention_forward(QKV, heads)
    assert tuple(A.shape) == (B, heads, T, T)
    _close(cuda, O, want_O)
    _close(cuda, A, want_A)
    np.testing.assert_allclose(cuda.to_host(A).sum(axis=-1), 1.0, rtol=1e-5)
    dQKV = cuda.self_attention_backward(cuda.to_device(dO), cuda.to_device(QKV), A, heads)
    _close(cuda, dQKV, REF.self_attention_backward(dO, QKV, want_A, heads))


def test_ops_refuse_host_arrays_and_bad_shapes(cuda):
    X = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(DTypeError):
        cuda.gelu_forward(X)  # a host array: no hidden copy
    with pytest.raises(DTypeError):
        cuda.self_attention_forward(np.zeros((1, 2, 6), np.float32), 1)
    with pytest.raises(ShapeError):
        cuda.self_attention_forward(cuda.to_device(np.zeros((1, 2, 6), np.float32)), 3)  # d = 2, 3 heads
    with pytest.raises(ShapeError):
        cuda.add(cuda.to_device(X), cuda.to_device(np.zeros(3, np.float32)))


# --------------------------------------------------------------------------------------------------
# the layers on cuda against the reference backend


def test_layer_norm_and_gelu_layers_follow_the_reference(cuda):
    rng = np.random.default_rng(3)
    X, dY = _normal(rng, 2, 3, 4), _normal(rng, 2, 3, 4)
    for make in (lambda be: LayerNorm(4, backend=be), lambda be: GELU(be)):
        ref, dev = make("reference"), make(cuda)
        for p_ref, p_dev in zip(ref.parameters(), dev.parameters()):
            p_ref.value[...] = _normal(rng, *p_ref.value.shape)
            p_dev.host[...] = p_ref.value
            p_dev.sync_to_device()
        _close(cuda, dev.forward(cuda.to_device(X)), ref.forward(X))
        _close(cuda, dev.backward(cuda.to_device(dY)), ref.backward(dY))
        for p_ref, p_dev in zip(ref.parameters(), dev.parameters()):
            _close(cuda, p_dev.grad, p_ref.grad)


def _block(backend, d=4, heads=2, seed=0):
    """A pre-norm block of width d with sparse (condensed, fan-in 2) projections, the same on every backend."""
    rng = np.random.default_rng(seed)

    def sparse(name, n_out, n_in):
        W = Condensed.random((n_out, n_in), None, rng, k=2)
        return SparseLinear(W, bias=_normal(rng, n_out), backend=backend, name=name)

    attn = MultiHeadSelfAttention(d, heads, sparse("qkv", 3 * d, d), sparse("proj", d, d))
    block = TransformerBlock(attn, sparse("fc1", 2 * d, d), sparse("fc2", d, 2 * d), backend=backend)
    for ln in (block.ln1, block.ln2):
        for p in ln.parameters():
            p.host[...] = 1.0 + 0.1 * _normal(rng, *p.host.shape)
            p.sync_to_device()
    return block


def test_block_forward_and_backward_follow_the_reference(cuda):
    rng = np.random.default_rng(4)
    X, dY = _normal(rng, 2, 3, 4), _normal(rng, 2, 3, 4)  # B = 2 sequences of T = 3 tokens, d = 4
    ref, dev = _block("reference"), _block(cuda)
    _close(cuda, dev.forward(cuda.to_device(X)), ref.forward(X))
    _close(cuda, dev.attn.attention, ref.attn.attention)
    _close(cuda, dev.backward(cuda.to_device(dY)), ref.backward(dY))
    for p_ref, p_dev in zip(ref.parameters(), dev.parameters()):
        assert p_ref.name == p_dev.name
        _close(cuda, p_dev.grad, p_ref.grad)
    X_saved, dY_saved = dev.attn.qkv.linear.saved_batch()  # the growth rules' batch: the B * T tokens
    assert tuple(X_saved.shape) == (6, 4) and tuple(dY_saved.shape) == (6, 12)
    _close(cuda, dY_saved, ref.attn.qkv.linear.last_output_grad)


# --------------------------------------------------------------------------------------------------
# a tiny ViT with DST: cuda follows cpu


#: Layers kept dense in the runs that make only the fused QKV projection sparse (the simulator's cost of
#: an update grows with the sparse layers: its sorts launch hundreds of small kernels).
ONLY_QKV_SPARSE = ["embed", "block0.proj", "block0.fc1", "block0.fc2", "head"]


def _vit_run(backend, fmt, method, steps, delta_t, dense_layers=None, seed=0, **options):
    """Train a width-8 vit-tiny at 50% on 2 random images per step with a topology update every
    ``delta_t`` steps; returns (model, sparse positions at the start and after every step)."""
    rng = np.random.default_rng(seed)
    model = build_model("vit-tiny", (1, 8, 8), 10, fmt=fmt, sparsity=0.5, rng=seed, backend=backend,
                        dense_layers=dense_layers, **VIT)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
    updater = DSTUpdater(make_method(method, fmt, **options), UpdateSchedule(delta_t=delta_t, alpha=0.3, t_end=8),
                         budgets, seed=seed)
    updater.begin(model)
    to = model.backend.to_device
    positions = [[flat_positions(lin.W).copy() for lin in model.sparse_layers()]]
    for step in range(1, steps + 1):
        X, y = _normal(rng, 2, 64), rng.integers(0, 10, 2)
        _, dlogits, _ = model.backend.softmax_cross_entropy(model.forward(to(X)), to(y))
        model.backward(dlogits)
        opt.step()
        updater.after_step(step, model, opt)
        positions.append([flat_positions(lin.W).copy() for lin in model.sparse_layers()])
    model.sync_to_host()
    return model, positions


def _same_models(a, b, positions_a, positions_b):
    for step, (pa, pb) in enumerate(zip(positions_a, positions_b), 1):
        for layer, (x, y) in enumerate(zip(pa, pb)):
            assert np.array_equal(x, y), f"layer {layer} differs after step {step}"
    assert any(not np.array_equal(x, y) for x, y in zip(positions_a[0], positions_a[-1])), "no topology change"
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.name == q.name
        np.testing.assert_allclose(q.host, p.host, rtol=1e-4, atol=1e-5, err_msg=p.name)


@pytest.mark.parametrize("method, fmt, steps, delta_t, dense", [
    ("rigl", "csr", 2, 2, None),  # every block projection sparse; two steps, the update after the second
    ("srigl", "condensed", 1, 1, ONLY_QKV_SPARSE), ("diag-rigl", "diagonal", 1, 1, ONLY_QKV_SPARSE),
], ids=["rigl", "srigl", "diag-rigl"])
def test_vit_with_dst_on_cuda_follows_cpu(cuda, method, fmt, steps, delta_t, dense):
    """The block projections' growth selections read the (B * T) token batch on the device and choose
    what the cpu run chooses; values to float32 rounding."""
    cpu_model, cpu_positions = _vit_run("cpu", fmt, method, steps, delta_t, dense)
    gpu_model, gpu_positions = _vit_run(cuda, fmt, method, steps, delta_t, dense)
    assert gpu_model.backend.name == "cuda" and gpu_model.layers[1].backend.name == "cuda"
    _same_models(cpu_model, gpu_model, cpu_positions, gpu_positions)


def test_dynadiag_gated_layers_inside_the_blocks_follow_cpu(cuda):
    """DynaDiag's gated diagonal layers as the block projections: a soft step and a window swap on cuda
    and cpu give the same diagonals, values and gate gradients."""
    from purerigl.dst.dynadiag import DynaDiagOptions, DynaDiagUpdater, gate_model

    runs = {}
    for name in ("cpu", cuda):
        rng = np.random.default_rng(5)
        model = build_model("vit-tiny", (1, 8, 8), 10, fmt="diagonal", sparsity=0.5, rng=0, backend=name, **VIT)
        budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
        options = DynaDiagOptions(freeze="at_epoch", freeze_epoch=2)  # soft (gated) through the step below
        gate_model(model, budgets, options, np.random.default_rng(1), 5.0)
        updater = DynaDiagUpdater(UpdateSchedule(delta_t=1, alpha=0.3, t_end=8), budgets, options, 2, seed=0)
        updater.begin(model)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        to = model.backend.to_device
        X, y = _normal(rng, 2, 64), rng.integers(0, 10, 2)
        _, dlogits, _ = model.backend.softmax_cross_entropy(model.forward(to(X)), to(y))
        model.backward(dlogits)
        alpha_grads = [lin.alpha.grad.copy() for lin in model.sparse_layers()]
        opt.step()
        updater.after_step(1, model, opt)
        model.sync_to_host()
        runs[getattr(name, "name", name)] = model, alpha_grads
    (a, ga), (b, gb) = runs["cpu"], runs["cuda"]
    assert all(type(lin).__name__ == "GatedDiagonalLinear" for lin in b.sparse_layers())
    for la, lb, x, y in zip(a.sparse_layers(), b.sparse_layers(), ga, gb):
        np.testing.assert_array_equal(lb.W.offsets, la.W.offsets)
        np.testing.assert_allclose(lb.W.values, la.W.values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# residency and the command


def test_a_vit_step_copies_only_the_batch_in_and_the_loss_out(cuda, monkeypatch):
    from purerigl.kernels.cuda import _launch

    if not _launch.SIMULATOR:  # the log patches the simulator's own copy functions
        pytest.skip("copies are counted on Numba's CUDA simulator only")
    from numba.cuda.simulator import kernel as sim_kernel

    model = build_model("vit-tiny", (1, 8, 8), 10, fmt="csr", sparsity=0.5, rng=0, backend=cuda, **VIT)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    X, y = _normal(np.random.default_rng(6), 2, 64), np.array([1, 7])
    events = []
    device_type = type(_launch.empty((1,)))
    real = (_launch.cuda.to_device, device_type.copy_to_host, device_type.copy_to_device, sim_kernel.wrap_arg)

    def wrap_arg(value, *args, **kwargs):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            events.append(("hidden", value.shape))  # a host array handed to a kernel: a GPU copies it silently
        return real[3](value, *args, **kwargs)

    monkeypatch.setattr(_launch.cuda, "to_device", lambda a, *r, **k: (events.append(("in", np.shape(a))),
                                                                         real[0](a, *r, **k))[1])
    monkeypatch.setattr(device_type, "copy_to_host", lambda self, *r, **k: (events.append(("out", tuple(self.shape))),
                                                                           real[1](self, *r, **k))[1])
    monkeypatch.setattr(device_type, "copy_to_device", lambda self, a, *r, **k: (
        events.append(("in", tuple(self.shape))), real[2](self, a, *r, **k))[1])
    monkeypatch.setattr(sim_kernel, "wrap_arg", wrap_arg)
    to = model.backend.to_device
    _, dlogits, _ = model.backend.softmax_cross_entropy(model.forward(to(X)), to(y))
    model.backward(dlogits)
    opt.step()
    assert events == [("in", (2, 64)), ("in", (2,)), ("out", (2,))]


def test_a_vit_moves_between_cpu_and_cuda(cuda):
    """Network.set_backend moves every parameter (the class token, position embeddings and layer norms
    included) to the device and back; predictions agree to float32 rounding."""
    net = build_model("vit-tiny", (1, 8, 8), 10, fmt="csr", sparsity=0.5, rng=0, backend="cpu", **VIT)
    X = _normal(np.random.default_rng(7), 1, 64)
    before = net.predict(X)
    net.set_backend(cuda)
    assert all(p.backend.name == "cuda" for p in net.parameters())
    np.testing.assert_allclose(net.predict(X), before, **TOL)
    net.set_backend("cpu")
    np.testing.assert_allclose(net.predict(X), before, **TOL)


def test_cli_train_vit_on_cuda(cuda, tmp_path, monkeypatch):
    """The command with a tiny ViT on the digits: two steps of 5 images (static: the updates on cuda are
    tested above), the test set cut to 2 images in-process (the simulator's cost grows with the images)."""
    from click.testing import CliRunner

    from purerigl.cli import _run
    from purerigl.cli.main import main
    from purerigl.data import load_dataset

    def small(*args, **kwargs):
        data = load_dataset(*args, **kwargs)
        return dataclasses.replace(data, x_test=data.x_test[:2], y_test=data.y_test[:2])

    monkeypatch.setattr(_run, "load_dataset", small)
    args = ["train", "--model", "vit-tiny", "--dataset", "digits", "--backend", "cuda", "--epochs", "1",
            "--train-subset", "10", "--batch-size", "5", "--vit-width", "8", "--vit-depth", "1", "--vit-heads", "2",
            "--warmup-steps", "0", "--method", "static", "--sparsity", "0.5", "--no-progress",
            "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args, env={"PURERIGL_BACKEND": None, "PURERIGL_DATA": None})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.npz").exists()
