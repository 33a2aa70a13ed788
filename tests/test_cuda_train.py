"""A short DST training run on the cuda backend (Numba's CUDA simulator in CI) ends with the same
topology as the same run on the cpu backend.

Both runs draw the same data, start from the same seeded model and call the same DST updater; the
only difference is the backend whose kernels compute the step (on cuda every array of the step lives
on the device: the products, bias, ReLU, loss and SGD run there) and the growth selections. The
values agree to float32 rounding (different summation orders), and the chosen positions must be the
very same sets after every update.
"""

from __future__ import annotations

import numpy as np
import pytest

from purerigl.dst import UpdateSchedule, make_method
from purerigl.kernels.host_topology import flat_positions
from purerigl.dst.updater import DSTUpdater
from purerigl.kernels import get_backend
from purerigl.nn import build_mlp
from purerigl.optim import SGD


@pytest.fixture(scope="module")
def cuda():
    from purerigl.errors import BackendError

    try:
        return get_backend("cuda")
    except BackendError as err:  # conftest turns the simulator on, so this means numba.cuda is broken
        pytest.fail(f"the cuda backend should run under the simulator: {err}")


def _run(method, fmt, backend, steps=6, delta_t=2, seed=0, **options):
    """Train a 10-12-3 MLP at 70% for ``steps`` SGD steps with a topology update every ``delta_t``
    (``options`` go to :func:`make_method`)."""
    rng = np.random.default_rng(seed)
    model = build_mlp(10, "12", 3, fmt=fmt, sparsity=0.7, backend=backend, rng=seed)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    budgets = {lin.name: lin.W.nnz for lin in model.sparse_layers()}
    # t_end = 8 > steps: the decayed drop fraction of the last update still changes every layer
    updater = DSTUpdater(make_method(method, fmt, **options),
                         UpdateSchedule(delta_t=delta_t, alpha=0.3, t_end=8), budgets, seed=seed)
    updater.begin(model)
    snapshots = []
    to_device = model.backend.to_device
    for step in range(1, steps + 1):
        X = rng.standard_normal((8, 10)).astype(np.float32)  # (B, n_in)
        logits = model.forward(to_device(X))
        _, dlogits, _ = model.backend.softmax_cross_entropy(logits, to_device(rng.integers(0, 3, 8)))
        model.backward(dlogits)
        opt.step()
        updater.after_step(step, model, opt)
        snapshots.append([flat_positions(lin.W).copy() for lin in model.sparse_layers()])
    model.sync_to_host()  # W.values and the biases' host copies (a no-op on cpu)
    return model, snapshots


@pytest.mark.parametrize(
    "method, fmt, options",
    [("static", "condensed", {}), ("set", "csr", {}), ("set", "condensed", {}), ("rigl", "csr", {}),
     ("srigl", "condensed", {}), ("srigl", "condensed", {"gamma_sal": 0.9}), ("gse", "csr", {}),
     ("gse", "condensed", {"gse_sampler": "grabo"}), ("gse", "csr", {"gse_sampler": "graest"}),
     ("diag-rigl", "diagonal", {})],
    ids=["static", "set-csr", "set-condensed", "rigl", "srigl", "srigl-ablating", "gse-uniform",
         "gse-condensed-grabo", "gse-graest", "diag-rigl"],
)
def test_cuda_run_has_the_cpu_topology_after_every_step(cuda, method, fmt, options):
    """Every method, written once with backend operations, chooses the same sets on cuda as on cpu
    (SRigL with gamma_sal 0.9 ablates neurons in this run; the SET and GSE draws come from the same
    host generator)."""
    cpu_model, cpu_steps = _run(method, fmt, "cpu", **options)
    gpu_model, gpu_steps = _run(method, fmt, cuda, **options)
    for step, (a, b) in enumerate(zip(cpu_steps, gpu_steps), 1):
        for layer, (pa, pb) in enumerate(zip(a, b)):
            assert np.array_equal(pa, pb), f"{method}: layer {layer} differs after step {step}"
    changed = any(not np.array_equal(x, y) for x, y in zip(cpu_steps[0], cpu_steps[-1]))
    assert changed == (method != "static")  # the run did exercise the growth kernels
    for la, lb in zip(cpu_model.sparse_layers(), gpu_model.sparse_layers()):
        np.testing.assert_allclose(lb.W.values, la.W.values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(lb.bias.host, la.bias.host, rtol=1e-4, atol=1e-5)
