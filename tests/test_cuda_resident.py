"""Device-resident training on the cuda backend (Numba's CUDA simulator here; no GPU needed).

Pins down:

- a short :class:`~purerigl.training.loop.Trainer` run with DST on cuda (forward, loss, backward and the
  optimizer on device arrays) has the topology of the same run on cpu after every step, and values
  equal to float32 rounding; also with a dense last layer and with Adam;
- residency: with every host <-> device copy counted (``cuda.to_device``, ``copy_to_device``,
  ``copy_to_host``, and any host array handed to a kernel, which a real GPU would copy silently), a
  step without a topology update copies exactly the batch in (X, y) and the loss out (one float64
  pair); a RigL topology update (resident) sends no array to the device and brings back only counts;
  a host method's update (SRigL) adds exactly the copies documented in :mod:`purerigl.dst.updater`;
- ``purerigl train --backend cuda`` finishes under the simulator and writes a model.npz equal (to
  float32 rounding, same structure) to the cpu run's.

Tiny shapes and ``THREADS_PER_BLOCK`` patched to 4, so the launches still span several blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from purerigl.data.datasets import from_arrays
from purerigl.dst import UpdateSchedule, make_method
from purerigl.kernels.host_topology import flat_positions
from purerigl.dst.updater import DSTUpdater
from purerigl.kernels import get_backend
from purerigl.nn import build_mlp
from purerigl.training.loop import TrainConfig, Trainer

SMALL_BLOCK = 4
B = 8  # batch size of every run here


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


def _data(n_train=32, n_test=8, n_features=10, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, n_train + n_test)
    return from_arrays("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], n_classes=n_classes)


def _trainer(backend, method="rigl", fmt="csr", optimizer="sgd", dense_last=False, delta_t=2, data=None, **options):
    """A 10-12-3 MLP at 70% trained by a Trainer with ``method`` updating every ``delta_t`` steps."""
    data = data or _data()
    model = build_mlp(10, "12", 3, fmt=fmt, sparsity=0.7, backend=backend, rng=0,
                      dense_layers=(1,) if dense_last else ())
    config = TrainConfig(epochs=1, batch_size=B, lr=0.05, optimizer=optimizer, seed=0)
    budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
    # t_end far beyond the run: the drop fraction stays near alpha, so every update changes both layers
    updater = DSTUpdater(make_method(method, fmt, **options), UpdateSchedule(delta_t=delta_t, alpha=0.3, t_end=100),
                         budgets, seed=0)
    return Trainer(model, data, config, topology=updater)


def _fit_recording(trainer):
    """Fit, recording the sparse layers' positions after every step; returns (history, snapshots)."""
    snapshots = []

    def on_batch(n, loss):
        snapshots.append([flat_positions(lin.W).copy() for lin in trainer.model.sparse_layers()])

    history = trainer.fit(on_batch=on_batch)
    trainer.model.sync_to_host()
    return history, snapshots


# --------------------------------------------------------------------------------------------------
# same run, same topology


@pytest.mark.parametrize(
    "method, fmt, optimizer, dense_last",
    [("rigl", "csr", "sgd", False), ("srigl", "condensed", "sgd", False), ("rigl", "csr", "adam", True)],
    ids=["rigl-sgd", "srigl-sgd", "rigl-adam-dense-last"],
)
def test_trainer_on_cuda_matches_cpu(cuda, method, fmt, optimizer, dense_last):
    cpu = _trainer("cpu", method, fmt, optimizer, dense_last)
    gpu = _trainer(cuda, method, fmt, optimizer, dense_last)
    assert gpu.model.backend.resident and not cpu.model.backend.resident
    h_cpu, s_cpu = _fit_recording(cpu)
    h_gpu, s_gpu = _fit_recording(gpu)
    assert len(s_cpu) == len(s_gpu) == 4
    for step, (a, b) in enumerate(zip(s_cpu, s_gpu), 1):
        for layer, (pa, pb) in enumerate(zip(a, b)):
            assert np.array_equal(pa, pb), f"layer {layer} differs after step {step}"
    assert any(not np.array_equal(x, y) for x, y in zip(s_cpu[0], s_cpu[-1]))  # DST did change it
    assert gpu.topology.n_updates == cpu.topology.n_updates >= 1
    for la, lb in zip(cpu.model.linears, gpu.model.linears):
        for pa, pb in zip(la.parameters(), lb.parameters()):
            assert isinstance(pb.host, np.ndarray)
            np.testing.assert_allclose(pb.host, pa.host, rtol=1e-4, atol=1e-5, err_msg=pa.name)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert h_gpu[-1][key] == pytest.approx(h_cpu[-1][key], rel=1e-5, abs=1e-6), key
    state_cpu, state_gpu = cpu.optimizer.state_dict(), gpu.optimizer.state_dict()
    assert state_cpu.keys() == state_gpu.keys()
    for key in state_cpu:
        np.testing.assert_allclose(state_gpu[key], state_cpu[key], rtol=1e-4, atol=1e-5, err_msg=key)


# --------------------------------------------------------------------------------------------------
# residency: count every copy


class CopyLog:
    """Every host <-> device copy of the simulator, in order: ("in" | "out" | "hidden", shape, dtype).

    "hidden" is a host array handed straight to a kernel (a real GPU copies it in and out silently).
    """

    def __init__(self, monkeypatch):
        from purerigl.kernels.cuda import _launch

        if not _launch.SIMULATOR:  # the log patches the simulator's own copy functions
            pytest.skip("copies are counted on Numba's CUDA simulator only")
        from numba.cuda.simulator import kernel as sim_kernel

        self.events: list[tuple[str, tuple]] = []
        log = self.events
        device_type = type(_launch.empty((1,)))
        real_to_device = _launch.cuda.to_device
        real_copy_to_host = device_type.copy_to_host
        real_copy_to_device = device_type.copy_to_device
        real_wrap_arg = sim_kernel.wrap_arg

        def to_device(ary, *args, **kwargs):
            log.append(("in", tuple(np.shape(ary)), np.asarray(ary).dtype))
            return real_to_device(ary, *args, **kwargs)

        def copy_to_host(self, *args, **kwargs):
            log.append(("out", tuple(self.shape), self.dtype))
            return real_copy_to_host(self, *args, **kwargs)

        def copy_to_device(self, ary, *args, **kwargs):
            log.append(("in", tuple(self.shape), self.dtype))
            return real_copy_to_device(self, ary, *args, **kwargs)

        def wrap_arg(value, *args, **kwargs):
            if isinstance(value, np.ndarray) and value.ndim > 0:
                log.append(("hidden", value.shape, value.dtype))
            return real_wrap_arg(value, *args, **kwargs)

        monkeypatch.setattr(_launch.cuda, "to_device", to_device)
        monkeypatch.setattr(device_type, "copy_to_host", copy_to_host)
        monkeypatch.setattr(device_type, "copy_to_device", copy_to_device)
        monkeypatch.setattr(sim_kernel, "wrap_arg", wrap_arg)

    def mark(self, label):
        self.events.append(("mark", label))

    def steps(self) -> list[list[tuple[str, tuple]]]:
        """The copies between consecutive ("mark", "step") entries: one list per training step."""
        out, current = [], None
        for event in self.events:
            if event == ("mark", "step"):
                if current is not None:
                    out.append(current)
                current = []
            elif current is not None:
                current.append(event)
        return out


def _copies_per_step(cuda, monkeypatch, method, fmt, growth_ops, method_object=None, **options):
    """Train one epoch (4 steps, topology updates after steps 2 and 4) with every copy logged;
    returns (trainer, steps) where each step is a list of events, and the events inside the backend's
    ``growth_ops`` are bracketed by ("mark", "growth") / ("mark", "end growth")."""
    import purerigl.kernels.cuda as cuda_module

    trainer = _trainer(cuda, method, fmt, "sgd", **options)  # SGD with momentum: one state array
    if method_object is not None:  # a method make_method does not know
        trainer.topology.method = method_object
    trainer.warm_up()
    trainer.topology.begin(trainer.model)
    log = CopyLog(monkeypatch)
    def bracketed(real):
        def growth(*args, **kwargs):
            log.mark("growth")
            try:
                return real(*args, **kwargs)
            finally:
                log.mark("end growth")

        return growth

    for op in growth_ops:
        monkeypatch.setattr(cuda_module, op, bracketed(getattr(cuda_module, op)))
    log.mark("step")
    trainer.run_epoch(on_batch=lambda n, loss: log.mark("step"))
    steps = log.steps()
    assert len(steps) == 4
    return trainer, steps


def _split_update(step):
    """(events inside the growth selections, events outside them) of a step's topology update."""
    growth, outside, inside = [], [], False
    for event in step:
        if event[0] == "mark":
            inside = event[1] == "growth"
            continue
        (growth if inside else outside).append(event)
    return growth, outside


def _shapes(events):
    """The (kind, shape) of each logged copy (its dtype left out)."""
    return [event[:2] for event in events]


BATCH = [("in", (B, 10)), ("in", (B,)), ("out", (2,))]  # X (B, n_in), y (B,), (loss sum, correct)


def test_a_step_copies_only_the_batch_in_and_the_loss_out(cuda, monkeypatch):
    """Steps 1 and 3 (no topology update): X and y in, the (loss, correct) pair out, nothing else.
    Steps 2 and 4 update the topology with RigL, a resident method, on the device: per sparse layer
    only the ``kept`` count's lane sums come out, and inside the growth selection one candidate count
    per gradient tile. No array goes in."""
    from purerigl.kernels.cuda import structure

    trainer, steps = _copies_per_step(cuda, monkeypatch, "rigl", "csr", ["topk_grad"])
    assert _shapes(steps[0]) == BATCH
    assert _shapes(steps[2]) == BATCH
    layers = trainer.model.sparse_layers()
    for step in (steps[1], steps[3]):
        assert _shapes(step[:3]) == BATCH  # the step itself is the same; the update follows
        growth, outside = _split_update(step[3:])
        nnz = [lin.matrix.values.size for lin in layers]  # rigl keeps nnz constant
        assert _shapes(outside) == [("out", (min(structure.LANES, n),)) for n in nnz]  # count_kept per layer
        assert growth and set(_shapes(growth)) == {("out", (1,))}  # one candidate count per tile, nothing else
    assert trainer.topology.n_updates == 2


@pytest.mark.parametrize(
    "method, fmt, growth_ops",
    [("set", "csr", []), ("set", "condensed", []), ("srigl", "condensed", ["topk_grad", "topk_grad_rows"]),
     ("gse", "csr", []), ("gse", "condensed", []), ("diag-rigl", "diagonal", ["diag_grad_norms"])],
)
def test_every_method_updates_on_the_device(cuda, monkeypatch, method, fmt, growth_ops):
    """The other built-in methods are resident too: in an update step no float array crosses (no
    values, bias, batch, gradient or optimizer state) and no host array is handed to a kernel; what
    crosses is integer or bool vectors no longer than the update needs (the host generator's draws
    and their membership bits for SET and GSE, per-row counts of length n_out for SRigL) and counts."""
    trainer, steps = _copies_per_step(cuda, monkeypatch, method, fmt, growth_ops)
    layers = trainer.model.sparse_layers()
    longest = max(2 * lin.matrix.values.size + 16 for lin in layers)  # SET's first draw, GSE's candidates
    longest = max(longest, max(lin.shape[0] + 1 for lin in layers))  # SRigL's per-row vectors
    for step in (steps[1], steps[3]):
        assert _shapes(step[:3]) == BATCH
        growth, outside = _split_update(step[3:])
        crossing = outside + growth
        assert crossing, "an update copies at least the kept count"
        assert not [e for e in crossing if e[0] == "hidden"], crossing
        floats = [e for e in crossing if np.dtype(e[2]).kind == "f"]
        assert floats == [], f"{method}: float arrays crossed: {floats}"
        too_long = [e for e in crossing if int(np.prod(e[1])) > longest]
        assert too_long == [], too_long
    assert trainer.topology.n_updates == 2


def test_graest_reads_the_batch_on_the_host(cuda, monkeypatch):
    """GSE's GraBo and GraEst draw from marginals of X and dY computed on the host (so the draws are
    the cpu backend's): per layer and update X and dY come out once, and no other float array."""
    trainer, steps = _copies_per_step(cuda, monkeypatch, "gse", "csr", [], gse_sampler="graest")
    for step in (steps[1], steps[3]):
        _, outside = _split_update(step[3:])
        floats = [e[:2] for e in outside if np.dtype(e[2]).kind == "f"]
        want = []
        for lin in trainer.model.sparse_layers():
            want += [("out", (B, lin.shape[1])), ("out", (B, lin.shape[0]))]
        assert floats == want


class _MoveOneConnection:
    """A user's host method (``runs_on_backend = False``): reads ``layer.W`` on the host and moves the
    smallest connection of the first row to the first free column of that row."""

    name = "host-move"
    runs_on_backend = False
    formats = ("csr",)

    def update(self, u):
        from purerigl.dst.topology import apply_structure
        from purerigl.kernels.host_topology import csr_from_positions, flat_positions

        W = u.layer.W
        flat = np.sort(flat_positions(W))
        first_row = flat[flat < W.n_in]
        free = np.setdiff1d(np.arange(W.n_in), first_row)
        if first_row.size == 0 or free.size == 0:
            return {"kept": W.nnz, "grown": 0, "dropped": 0}
        smallest = first_row[np.argmin(np.abs(W.values[: first_row.size]))]
        new = csr_from_positions(np.r_[flat[flat != smallest], free[0]], W.shape)
        return apply_structure(u.layer, u.optimizer, new)


def test_a_host_method_on_cuda_copies_what_the_updater_documents(cuda, monkeypatch):
    """A method with ``runs_on_backend = False`` still runs on cuda: per sparse layer and update the host
    copies are refreshed (values, bias), the new structure goes in (indptr, indices, values) and the
    ``kept`` count comes out; the remap of values and momentum stays on the device."""
    from purerigl.kernels.cuda import structure

    trainer, steps = _copies_per_step(cuda, monkeypatch, "rigl", "csr", [], method_object=_MoveOneConnection())
    for step in (steps[1], steps[3]):
        assert _shapes(step[:3]) == BATCH
        _, outside = _split_update(step[3:])
        expected = []
        for lin in trainer.model.sparse_layers():
            nnz = lin.W.nnz
            expected += [
                ("out", (nnz,)), ("out", (lin.shape[0],)),  # sync_to_host: values, bias
                ("in", (lin.shape[0] + 1,)), ("in", (nnz,)), ("in", (nnz,)),  # the new structure
                ("out", (min(structure.LANES, nnz),)),  # count_kept
            ]
        assert [e[:2] for e in outside] == expected
    assert trainer.topology.n_updates == 2


# --------------------------------------------------------------------------------------------------
# the command


def test_cli_train_on_cuda_writes_the_cpu_model(cuda, tmp_path, monkeypatch):
    from purerigl.training.checkpoint import load_model
    from purerigl.cli.main import main

    digits_like = _data(n_train=48, n_test=16, n_features=64, n_classes=10, seed=1)
    from purerigl.cli import _run

    monkeypatch.setattr(_run, "load_dataset", lambda *args, **kwargs: digits_like)  # build_run reads the data
    args = ["train", "--dataset", "digits", "--hidden", "12", "--epochs", "1", "--batch-size", "16",
            "--method", "rigl", "--delta-t", "1", "--sparsity", "0.7", "--no-progress"]
    models = {}
    for name in ("cpu", "cuda"):
        out = tmp_path / name
        result = CliRunner().invoke(main, [*args, "--backend", name, "--out", str(out)],
                                    env={"PURERIGL_BACKEND": None, "PURERIGL_DATA": None})
        assert result.exit_code == 0, result.output
        models[name], _ = load_model(out / "model.npz")
    for a, b in zip(models["cpu"].linears, models["cuda"].linears):
        assert np.array_equal(a.W.indptr, b.W.indptr) and np.array_equal(a.W.indices, b.W.indices)
        np.testing.assert_allclose(b.W.values, a.W.values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.bias.host, a.bias.host, rtol=1e-4, atol=1e-5)


def test_set_backend_moves_a_model_and_predict_stays_on_the_host_interface(cuda):
    """A cpu model moved to cuda predicts the same logits (host arrays in and out) to float32
    rounding; moved back, its parameters are exactly the ones it left with."""
    model = build_mlp(10, "12", 3, fmt="condensed", sparsity=0.7, backend="cpu", rng=0, dense_layers=(1,))
    X = np.random.default_rng(1).standard_normal((5, 10)).astype(np.float32)
    want = model.predict(X)
    before = [p.host.copy() for p in model.parameters()]
    model.set_backend(cuda)
    assert model.backend is cuda and all(not isinstance(p.value, np.ndarray) for p in model.parameters())
    got = model.predict(X)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    model.set_backend("cpu")
    for b, p in zip(before, model.parameters()):
        assert p.value is p.host and np.array_equal(p.value, b)


def test_an_optimizer_follows_its_parameters_to_another_backend(cuda):
    """After ``Model.set_backend`` the optimizer refuses to step until ``follow_parameters()`` moves
    its state; then its momentum is the very state it had, it steps on the device, and it comes back."""
    from purerigl.optim import SGD
    from purerigl.optim.base import OptimizerError

    model = build_mlp(10, "12", 3, fmt="csr", sparsity=0.7, backend="cpu", rng=0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    X = np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)
    y = np.array([0, 1, 2, 0])

    def step():
        logits = model.forward(model.backend.to_device(X))
        _, dlogits, _ = model.backend.softmax_cross_entropy(logits, model.backend.to_device(y))
        model.backward(dlogits)
        opt.step()

    step()
    before = opt.state_dict()
    model.set_backend(cuda)
    with pytest.raises(OptimizerError, match="follow_parameters"):
        opt.step()
    opt.follow_parameters()
    after = opt.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert np.array_equal(before[key], after[key]), key
    assert all(not isinstance(a, np.ndarray) for state in opt._state for a in state.values())
    step()  # on the device
    model.set_backend("cpu")
    opt.follow_parameters()
    step()
    assert opt.steps == 3
