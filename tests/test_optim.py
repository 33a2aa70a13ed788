"""Optimizers: update equations, in-place updates, topology remap, state (de)serialisation.

Two independent oracles, both in float64:

* ``_naive_*``: a straightforward NumPy restatement of PyTorch's update rules;
* ``_published_*``: the update as the papers write it (Sutskever/Bengio velocity form of (Nesterov)
  momentum, Kingma & Ba's bias-corrected moments, Loshchilov & Hutter's decoupled decay), which is
  algebraically but not textually the same as the implementation.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerigl.nn import Parameter
from purerigl.optim import (
    OPTIMIZERS,
    SGD,
    Adam,
    AdamW,
    Optimizer,
    OptimizerError,
    make_optimizer,
)

RTOL, ATOL = 3e-5, 1e-6
N_STEPS = 5

# --------------------------------------------------------------------------------------------------
# fixtures and helpers


def _params(seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    shapes = [("w0.values", (6, 4), True), ("w1.values", (13,), True), ("b0", (5,), False)]
    return [
        Parameter(name, rng.standard_normal(shape).astype(np.float32), decay=decay)
        for name, shape, decay in shapes
    ]


def _grads(params, n_steps: int, seed: int = 1) -> list[list[np.ndarray]]:
    """grads[t][i]: the gradient of params[i] at step t (float32)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.standard_normal(p.value.shape).astype(np.float32) for p in params]
        for _ in range(n_steps)
    ]


def _run(opt: Optimizer, grads, lrs=None) -> None:
    for t, gs in enumerate(grads):
        for p, g in zip(opt.params, gs):
            p.grad[...] = g
        opt.step() if lrs is None else opt.step(lr=lrs[t])


def _values64(params) -> list[np.ndarray]:
    return [p.value.astype(np.float64) for p in params]


# --------------------------------------------------------------------------------------------------
# oracle 1: naive float64 restatement of the PyTorch rules


def _naive_sgd(ws, decays, grads, lrs, momentum, nesterov, wd):
    ws = [w.copy() for w in ws]
    bufs = [None] * len(ws)
    for t, gs in enumerate(grads):
        for i in range(len(ws)):
            d_p = gs[i].astype(np.float64)
            if wd and decays[i]:
                d_p = d_p + wd * ws[i]
            if momentum:
                bufs[i] = d_p.copy() if bufs[i] is None else momentum * bufs[i] + d_p
                d_p = d_p + momentum * bufs[i] if nesterov else bufs[i]
            ws[i] = ws[i] - lrs[t] * d_p
    return ws


def _naive_adam(ws, decays, grads, lrs, betas, eps, wd, decoupled):
    ws = [w.copy() for w in ws]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    b1, b2 = betas
    for t, gs in enumerate(grads, start=1):
        lr = lrs[t - 1]
        for i in range(len(ws)):
            g = gs[i].astype(np.float64)
            if wd and decays[i]:
                if decoupled:
                    ws[i] = ws[i] * (1 - lr * wd)
                else:
                    g = g + wd * ws[i]
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            denom = np.sqrt(vs[i]) / np.sqrt(1 - b2**t) + eps
            ws[i] = ws[i] - (lr / (1 - b1**t)) * ms[i] / denom
    return ws


# --------------------------------------------------------------------------------------------------
# oracle 2: the published update equations


def _published_momentum(w, g_fn, lr, mu, nesterov, n_steps):
    """Velocity form (Sutskever et al. 2013; Bengio et al. 2012 for Nesterov), constant lr.

    v_t = mu v_{t-1} - lr g_t;  w_t = w_{t-1} + v_t  (classical)
    w_t = w_{t-1} - mu v_{t-1} + (1 + mu) v_t          (Nesterov, Bengio's reformulation)
    """
    v = np.zeros_like(w)
    for t in range(n_steps):
        g = g_fn(t, w)
        v_prev = v
        v = mu * v - lr * g
        w = w - mu * v_prev + (1 + mu) * v if nesterov else w + v
    return w


def _published_adam(w, g_fn, alpha, b1, b2, eps, n_steps, decoupled_lambda=0.0):
    """Kingma & Ba (2015) Algorithm 1; with decoupled_lambda, Loshchilov & Hutter (2019) Alg. 2
    (schedule multiplier eta_t = 1): w_t = w_{t-1} - (alpha mhat / (sqrt(vhat) + eps) + lambda w)."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, n_steps + 1):
        g = g_fn(t - 1, w)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        w = w - (alpha * mhat / (np.sqrt(vhat) + eps) + decoupled_lambda * w)
    return w


# --------------------------------------------------------------------------------------------------
# equations


SGD_CASES = [
    dict(momentum=0.0, nesterov=False, weight_decay=0.0),
    dict(momentum=0.0, nesterov=False, weight_decay=0.05),
    dict(momentum=0.9, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, nesterov=False, weight_decay=5e-4),
    dict(momentum=0.8, nesterov=True, weight_decay=0.0),
    dict(momentum=0.8, nesterov=True, weight_decay=0.01),
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_naive_float64(kw):
    params = _params()
    w0, decays = _values64(params), [p.decay for p in params]
    grads = _grads(params, N_STEPS)
    lrs = [0.1, 0.05, 0.2, 0.01, 0.07]  # a changing lr exercises the override
    opt = SGD(params, lr=123.0, **kw)
    _run(opt, grads, lrs)
    expected = _naive_sgd(w0, decays, grads, lrs, kw["momentum"], kw["nesterov"], kw["weight_decay"])
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.value, e, rtol=RTOL, atol=ATOL, err_msg=p.name)
        assert p.value.dtype == np.float32
    assert opt.lr == 123.0 and opt.steps == N_STEPS


@pytest.mark.parametrize(
    "cls, kw, decoupled",
    [
        (Adam, dict(weight_decay=0.0), False),
        (Adam, dict(weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6), False),
        (AdamW, dict(), True),
        (AdamW, dict(weight_decay=0.3, betas=(0.5, 0.9)), True),
    ],
)
def test_adam_matches_naive_float64(cls, kw, decoupled):
    params = _params()
    w0, decays = _values64(params), [p.decay for p in params]
    grads = _grads(params, N_STEPS)
    lrs = [1e-2, 3e-3, 2e-2, 5e-3, 1e-2]
    opt = cls(params, lr=1.0, **kw)
    _run(opt, grads, lrs)
    expected = _naive_adam(
        w0, decays, grads, lrs, opt.betas, opt.eps, opt.weight_decay, decoupled=decoupled
    )
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.value, e, rtol=RTOL, atol=ATOL, err_msg=p.name)
    for p in params:
        for arr in opt.state_arrays(p).values():
            assert arr.dtype == np.float32 and arr.shape == p.value.shape


def _quadratic_problem(seed=3, n=20):
    """A loss whose gradient depends on w (so the oracles' trajectories genuinely interact):
    L(w) = 0.5 * sum(a * (w - c)^2) + noise_t . w"""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, n)
    c = rng.standard_normal(n)
    noise = rng.standard_normal((N_STEPS + 5, n)) * 0.3
    w0 = rng.standard_normal(n).astype(np.float32)

    def g_fn(t, w):
        return a * (w - c) + noise[t]

    return w0, g_fn


def _run_closure(opt, p, g_fn, n_steps):
    for t in range(n_steps):
        p.grad[...] = g_fn(t, p.value.astype(np.float64)).astype(np.float32)
        opt.step()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_published_velocity_form(nesterov):
    w0, g_fn = _quadratic_problem()
    p = Parameter("w", w0.copy())
    lr, mu = 0.05, 0.9
    _run_closure(SGD([p], lr, momentum=mu, nesterov=nesterov), p, g_fn, N_STEPS)
    expected = _published_momentum(w0.astype(np.float64), g_fn, lr, mu, nesterov, N_STEPS)
    np.testing.assert_allclose(p.value, expected, rtol=RTOL, atol=ATOL)


def test_sgd_plain_matches_published_rule():
    w0, g_fn = _quadratic_problem()
    p = Parameter("w", w0.copy())
    _run_closure(SGD([p], 0.1), p, g_fn, N_STEPS)
    w = w0.astype(np.float64)
    for t in range(N_STEPS):
        w = w - 0.1 * g_fn(t, w)
    np.testing.assert_allclose(p.value, w, rtol=RTOL, atol=ATOL)


def test_adam_matches_kingma_ba_algorithm_1():
    w0, g_fn = _quadratic_problem()
    p = Parameter("w", w0.copy())
    _run_closure(Adam([p], 0.01, betas=(0.9, 0.999), eps=1e-8), p, g_fn, N_STEPS)
    expected = _published_adam(w0.astype(np.float64), g_fn, 0.01, 0.9, 0.999, 1e-8, N_STEPS)
    np.testing.assert_allclose(p.value, expected, rtol=RTOL, atol=ATOL)


def test_adamw_matches_loshchilov_hutter_algorithm_2():
    w0, g_fn = _quadratic_problem()
    p = Parameter("w", w0.copy())
    lr, wd = 0.01, 0.2
    _run_closure(AdamW([p], lr, weight_decay=wd), p, g_fn, N_STEPS)
    # PyTorch's decay lr * wd is the paper's lambda with eta_t = 1
    expected = _published_adam(
        w0.astype(np.float64), g_fn, lr, 0.9, 0.999, 1e-8, N_STEPS, decoupled_lambda=lr * wd
    )
    np.testing.assert_allclose(p.value, expected, rtol=RTOL, atol=ATOL)


def test_sgd_first_step_buffer_equals_gradient():
    """Torch convention: the momentum buffer after step 1 is exactly the (decayed) gradient."""
    p = Parameter("w", np.arange(6, dtype=np.float32))
    p.grad[...] = np.linspace(-1, 1, 6, dtype=np.float32)
    opt = SGD([p], 0.1, momentum=0.9, weight_decay=0.5)
    expected_buf = p.grad + np.float32(0.5) * p.value
    opt.step()
    np.testing.assert_array_equal(opt.state_arrays(p)["momentum_buffer"], expected_buf)


def _torch():
    """torch, or a skip where it is not installed; with ``PURERIGL_REQUIRE_TORCH=1`` (set by .ci/run,
    which installs the ``torch`` extra) a missing torch fails instead of skipping."""
    if os.environ.get("PURERIGL_REQUIRE_TORCH") == "1":
        import torch

        return torch
    return pytest.importorskip("torch")


#: Every optimizer and every option it has, each against torch.optim: (name, keyword arguments).
TORCH_CASES = [
    ("sgd", dict()),
    ("sgd", dict(weight_decay=0.05)),
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.8, nesterov=True)),
    ("sgd", dict(momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("adam", dict()),
    ("adam", dict(weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)),
    ("adamw", dict()),  # AdamW's default weight decay, 0.01 in both libraries
    ("adamw", dict(weight_decay=0.3, betas=(0.5, 0.9))),
    ("adamw", dict(weight_decay=0.0)),
]


@pytest.mark.parametrize(
    "name, kw", TORCH_CASES,
    ids=[f"{n}-" + ("-".join(f"{k}={v}" for k, v in kw.items()) or "defaults") for n, kw in TORCH_CASES],
)
def test_matches_torch_optim(name, kw):
    """Weights after every step and the optimizer state at the end equal torch.optim's (float32 both),
    with a learning rate that changes every step and parameters with and without weight decay."""
    torch = _torch()
    params = _params()
    grads = _grads(params, N_STEPS)
    lrs = [1e-2, 3e-3, 2e-2, 5e-3, 1e-2] if name != "sgd" else [0.1, 0.05, 0.2, 0.01, 0.07]
    opt = make_optimizer(name, params, 123.0, **kw)
    torch_kw = {k: v for k, v in kw.items() if k != "weight_decay"}
    wd = opt.weight_decay
    tparams = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    # torch has no per-parameter decay flag: one parameter group per parameter
    groups = [{"params": [tp], "weight_decay": wd if p.decay else 0.0} for tp, p in zip(tparams, params)]
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](
        groups, lr=123.0, **torch_kw
    )
    for t, gs in enumerate(grads):
        for group in topt.param_groups:
            group["lr"] = lrs[t]
        for tp, g in zip(tparams, gs):
            tp.grad = torch.tensor(g)
        topt.step()
        for p, g in zip(params, gs):
            p.grad[...] = g
        opt.step(lr=lrs[t])
        for p, tp in zip(params, tparams):
            assert tp.dtype == torch.float32
            np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {t} {p.name}")
    for p, tp in zip(params, tparams):
        ours, theirs = opt.state_arrays(p), topt.state[tp]
        assert set(ours) == {k for k in theirs if k != "step"}, (sorted(ours), sorted(theirs))
        for key, arr in ours.items():
            np.testing.assert_allclose(arr, theirs[key].numpy(), rtol=1e-5, atol=1e-7, err_msg=f"{p.name} {key}")
    assert opt.steps == N_STEPS and opt.lr == 123.0


# --------------------------------------------------------------------------------------------------
# in place, decay flag, lr override


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_updates_in_place(name):
    params = _params()
    ids = [id(p.value) for p in params]
    views = [p.value for p in params]  # a sparse layer holds the same object
    before = [v.copy() for v in views]
    opt = make_optimizer(name, params, 0.1, weight_decay=0.01)
    _run(opt, _grads(params, 3))
    assert [id(p.value) for p in params] == ids
    for v, b in zip(views, before):
        assert not np.array_equal(v, b)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_weight_decay_for_decay_false(name):
    """With zero gradient and no momentum history, only weight decay could move a weight."""
    w = np.random.default_rng(0).standard_normal(7).astype(np.float32)
    p_dec, p_nodec = Parameter("a", w.copy()), Parameter("b", w.copy(), decay=False)
    opt = make_optimizer(name, [p_dec, p_nodec], 0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_array_equal(p_nodec.value, w)
    assert not np.array_equal(p_dec.value, w)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_does_not_touch_grad(name):
    params = _params()
    grads = _grads(params, 1)
    opt = make_optimizer(name, params, 0.1, weight_decay=0.3)
    _run(opt, grads)
    for p, g in zip(params, grads[0]):
        np.testing.assert_array_equal(p.grad, g)


def test_lr_override_and_zero_lr():
    params = _params()
    before = [p.value.copy() for p in params]
    opt = SGD(params, 0.5, momentum=0.9)
    _run(opt, _grads(params, 2), lrs=[0.0, 0.0])
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.value, b)
    assert opt.lr == 0.5
    with pytest.raises(OptimizerError, match="lr must be >= 0"):
        opt.step(lr=-1.0)
    assert opt.steps == 2


def test_lr_from_numpy_float64_keeps_float32():
    params = _params()
    opt = Adam(params, np.float64(0.01))
    _run(opt, _grads(params, 2), lrs=[np.float64(0.01), np.float64(0.02)])
    for p in params:
        assert p.value.dtype == np.float32
        assert all(a.dtype == np.float32 for a in opt.state_arrays(p).values())


def test_zero_grad():
    params = _params()
    opt = SGD(params, 0.1)
    for p in params:
        p.grad[...] = 1.0
    grad_ids = [id(p.grad) for p in params]
    opt.zero_grad()
    assert all(not p.grad.any() for p in params)
    assert [id(p.grad) for p in params] == grad_ids


# --------------------------------------------------------------------------------------------------
# topology change: remap_state


def _state_opts(params):
    return [
        SGD(params, 0.1, momentum=0.9),
        SGD(params, 0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        Adam(params, 0.01),
        AdamW(params, 0.01),
    ]


@pytest.mark.parametrize("which", range(4), ids=["sgd-m", "sgd-nesterov", "adam", "adamw"])
def test_remap_keeps_state_of_kept_and_zeroes_new(which):
    params = _params()
    opt = _state_opts(params)[which]
    _run(opt, _grads(params, 3))
    p = params[0]  # (6, 4): think condensed, 6 rows with k = 4
    old_state = {k: v.copy() for k, v in opt.state_arrays(p).items()}
    old_value = p.value.copy()
    # new topology (6, 4): row r keeps some old slots (permuted) and gets new ones
    source = np.array(
        [[0, 1, -1, 3], [-1, -1, -1, -1], [9, 8, 11, 10], [12, -1, 14, 15],
         [-1, 17, 18, -1], [23, 22, 21, 20]], dtype=np.int64,
    )
    new_value = np.where(source >= 0, old_value.reshape(-1)[source], 0.0).astype(np.float32)
    p.replace(new_value)
    opt.remap_state(p, source)
    kept = source >= 0
    for name, new in opt.state_arrays(p).items():
        assert new.shape == (6, 4) and new.dtype == np.float32
        np.testing.assert_array_equal(new[kept], old_state[name].reshape(-1)[source[kept]])
        assert np.all(new[~kept] == 0.0)
    # other parameters' state untouched; a step works and updates in place
    steps = opt.steps
    ident = id(p.value)
    _run(opt, _grads(params, 1, seed=9))
    assert id(p.value) == ident and opt.steps == steps + 1


@pytest.mark.parametrize("which", range(4), ids=["sgd-m", "sgd-nesterov", "adam", "adamw"])
@pytest.mark.parametrize("new_shape", [(6, 3), (6, 5), (4, 4), (0, 4)])
def test_remap_changes_size(which, new_shape):
    """SRigL can change the fan-in k (and ablate rows): state follows the new size."""
    params = _params()
    opt = _state_opts(params)[which]
    _run(opt, _grads(params, 2))
    p = params[0]
    old = {k: v.copy() for k, v in opt.state_arrays(p).items()}
    rng = np.random.default_rng(5)
    n_new = int(np.prod(new_shape))
    source = np.full(n_new, -1, dtype=np.int64)
    n_keep = min(n_new, 24) // 2
    slots = rng.choice(n_new, size=n_keep, replace=False) if n_new else np.zeros(0, int)
    source[slots] = rng.choice(24, size=n_keep, replace=False)
    source = source.reshape(new_shape)
    p.replace(np.zeros(new_shape, dtype=np.float32))
    opt.remap_state(p, source)
    for name, arr in opt.state_arrays(p).items():
        assert arr.shape == new_shape
        expected = np.where(source >= 0, old[name].reshape(-1)[np.maximum(source, 0)], 0.0)
        np.testing.assert_array_equal(arr, expected)
    _run(opt, _grads(params, 1, seed=4))
    assert opt.state_dict()[f"{p.name}.{opt.state_names[0]}"].shape == new_shape


def test_remap_then_step_matches_reference_with_remapped_state():
    """After a remap, SGD momentum continues exactly from the remapped buffer (new entries from 0)."""
    rng = np.random.default_rng(2)
    p = Parameter("w", rng.standard_normal(8).astype(np.float32))
    opt = SGD([p], 0.1, momentum=0.9)
    _run(opt, [[rng.standard_normal(8).astype(np.float32)] for _ in range(2)])
    buf = opt.state_arrays(p)["momentum_buffer"].copy()
    source = np.array([7, -1, 2, 0, -1], dtype=np.int64)
    p.replace(np.where(source >= 0, p.value[source], 0.0).astype(np.float32))
    opt.remap_state(p, source)
    w_before = p.value.copy()
    g = rng.standard_normal(5).astype(np.float32)
    p.grad[...] = g
    opt.step()
    new_buf = np.where(source >= 0, buf[source], 0.0).astype(np.float32)
    expected_buf = np.float32(0.9) * new_buf + g
    np.testing.assert_array_equal(opt.state_arrays(p)["momentum_buffer"], expected_buf)
    np.testing.assert_allclose(p.value, w_before - 0.1 * expected_buf, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    old_n=st.integers(0, 30),
    new_n=st.integers(0, 30),
    data=st.data(),
)
def test_remap_property(old_n, new_n, data):
    p = Parameter("w", np.arange(old_n, dtype=np.float32))
    opt = Adam([p], 0.01)
    p.grad[...] = np.arange(old_n, dtype=np.float32) + 1.0
    opt.step()
    old_m = opt.state_arrays(p)["exp_avg"].copy()
    n_keep = data.draw(st.integers(0, min(old_n, new_n)))
    keep_old = data.draw(st.permutations(range(old_n)))[:n_keep]
    slots = data.draw(st.permutations(range(new_n)))[:n_keep]
    source = np.full(new_n, -1, dtype=np.int64)
    source[list(slots)] = keep_old
    p.replace(np.zeros(new_n, dtype=np.float32))
    opt.remap_state(p, source)
    m = opt.state_arrays(p)["exp_avg"]
    for e in range(new_n):
        assert m[e] == (old_m[source[e]] if source[e] >= 0 else 0.0)


def test_remap_without_state_still_validates_and_tracks_shape():
    p = Parameter("w", np.zeros(4, dtype=np.float32))
    opt = SGD([p], 0.1)  # no momentum: no state arrays
    assert opt.state_arrays(p) == {}
    p.replace(np.zeros(6, dtype=np.float32))
    with pytest.raises(OptimizerError, match=r"outside \[-1, 4\)"):
        opt.remap_state(p, np.array([0, 1, 2, 3, 4, -1]))
    opt.remap_state(p, np.array([0, 1, 2, 3, -1, -1]))
    opt.step()


def test_remap_bad_sources_raise():
    params = _params()
    opt = Adam(params, 0.01)
    p = params[1]  # (13,)
    p.replace(np.zeros(5, dtype=np.float32))
    before = {k: v.copy() for k, v in opt.state_arrays(p).items()}
    cases = [
        (np.array([0, 1, 2, 3]), r"shape \(4,\), expected the new value shape \(5,\)"),
        (np.array([[0, 1, 2, 3, 4]]), r"shape \(1, 5\)"),
        (np.array([0, 1, 2, 3, 13]), r"holds 13, outside \[-1, 13\)"),
        (np.array([0, 1, 2, -2, 4]), r"holds -2"),
        (np.array([0.0, 1, 2, 3, 4]), "integer ndarray"),
        ([0, 1, 2, 3, 4], "integer ndarray"),
        (np.array([0, 1, 1, -1, 4]), "maps 2 new entries to old index 1"),
    ]
    for source, match in cases:
        with pytest.raises(OptimizerError, match=match):
            opt.remap_state(p, source)
    for k, v in opt.state_arrays(p).items():  # failed remaps change nothing
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(OptimizerError, match="not in this optimizer"):
        opt.remap_state(Parameter("stranger", np.zeros(5, np.float32)), np.arange(5))


def test_step_after_replace_without_remap_raises():
    params = _params()
    opt = SGD(params, 0.1, momentum=0.9)
    params[0].replace(np.zeros((6, 3), dtype=np.float32))
    with pytest.raises(OptimizerError, match=r"\(6, 3\).*laid out for \(6, 4\).*remap_state"):
        opt.step()
    assert opt.steps == 0


# --------------------------------------------------------------------------------------------------
# state_dict / load_state_dict


def _clone_params(params):
    return [Parameter(p.name, p.value.copy(), decay=p.decay) for p in params]


@pytest.mark.parametrize(
    "name, kw",
    [("sgd", dict(momentum=0.9, nesterov=True, weight_decay=1e-3)), ("sgd", {}),
     ("adam", dict(weight_decay=1e-3)), ("adamw", {})],
)
def test_state_dict_round_trip_is_bit_identical(name, kw):
    params = _params()
    grads = _grads(params, 6)
    lrs = [0.05, 0.04, 0.03, 0.02, 0.01, 0.005]
    opt = make_optimizer(name, params, 0.1, **kw)
    _run(opt, grads[:3], lrs[:3])
    sd = opt.state_dict()
    resumed_params = _clone_params(params)
    _run(opt, grads[3:], lrs[3:])  # must not alter the saved dict
    assert sd["step"].shape == () and int(sd["step"]) == 3
    fresh = make_optimizer(name, resumed_params, 0.1, **kw)
    fresh.load_state_dict(sd)
    assert fresh.steps == 3
    _run(fresh, grads[3:], lrs[3:])
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a.value, b.value)
    for a, b in zip(opt.state_dict().items(), fresh.state_dict().items()):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])


def test_state_dict_keys_and_copies():
    params = _params()
    opt = Adam(params, 0.01)
    sd = opt.state_dict()
    assert set(sd) == {"step"} | {f"{p.name}.{s}" for p in params for s in ("exp_avg", "exp_avg_sq")}
    assert sd["step"].dtype == np.int64
    sd["w0.values.exp_avg"][...] = 7.0
    assert not opt.state_arrays(params[0])["exp_avg"].any()
    assert set(SGD(params, 0.1).state_dict()) == {"step"}
    assert set(SGD(params, 0.1, momentum=0.5).state_dict()) == {"step"} | {
        f"{p.name}.momentum_buffer" for p in params
    }


def test_state_dict_after_topology_change_round_trips():
    params = _params()
    opt = SGD(params, 0.1, momentum=0.9)
    _run(opt, _grads(params, 2))
    p = params[0]
    source = np.array([[0, 5, -1], [7, -1, 9], [-1, 11, 12], [13, 14, 15], [16, 17, 18], [-1, -1, 23]])
    p.replace(np.zeros((6, 3), dtype=np.float32))
    opt.remap_state(p, source)
    sd = opt.state_dict()
    resumed = _clone_params(params)
    fresh = SGD(resumed, 0.1, momentum=0.9)
    fresh.load_state_dict(sd)
    grads = _grads(params, 2, seed=11)
    _run(opt, grads)
    _run(fresh, grads)
    for a, b in zip(params, resumed):
        np.testing.assert_array_equal(a.value, b.value)


def test_load_state_dict_mismatches_raise_and_change_nothing():
    params = _params()
    opt = Adam(params, 0.01)
    _run(opt, _grads(params, 2))
    good = opt.state_dict()
    target = Adam(_clone_params(params), 0.01)
    snapshot = target.state_dict()

    missing = dict(good)
    del missing["b0.exp_avg_sq"]
    with pytest.raises(OptimizerError, match=r"missing \['b0.exp_avg_sq'\]"):
        target.load_state_dict(missing)
    extra = dict(good, **{"w9.exp_avg": np.zeros(3, np.float32)})
    with pytest.raises(OptimizerError, match=r"unexpected \['w9.exp_avg'\]"):
        target.load_state_dict(extra)
    bad_shape = dict(good, **{"w0.values.exp_avg": np.zeros((4, 6), np.float32)})
    with pytest.raises(OptimizerError, match=r"'w0.values.exp_avg' has shape \(4, 6\), expected \(6, 4\)"):
        target.load_state_dict(bad_shape)
    bad_step = dict(good, step=np.array(2.5))
    with pytest.raises(OptimizerError, match="non-negative integer"):
        target.load_state_dict(bad_step)
    bad_step_shape = dict(good, step=np.array([2]))
    with pytest.raises(OptimizerError, match=r"'step' has shape \(1,\), expected \(\)"):
        target.load_state_dict(bad_step_shape)
    bad_dtype = dict(good, **{"b0.exp_avg": np.zeros(5, np.int32)})
    with pytest.raises(OptimizerError, match="dtype int32"):
        target.load_state_dict(bad_dtype)
    with pytest.raises(OptimizerError, match="missing"):  # SGD state into Adam
        target.load_state_dict(SGD(params, 0.1, momentum=0.9).state_dict())

    after = target.state_dict()
    assert target.steps == 0
    for k in snapshot:
        np.testing.assert_array_equal(after[k], snapshot[k])


# --------------------------------------------------------------------------------------------------
# argument validation and the factory


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda ps: SGD(ps, -0.1), "lr must be >= 0"),
        (lambda ps: SGD(ps, float("nan")), "lr must be finite"),
        (lambda ps: SGD(ps, "0.1"), "lr must be a real number"),
        (lambda ps: SGD(ps, 0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda ps: SGD(ps, 0.1, momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (lambda ps: SGD(ps, 0.1, nesterov=True), "nesterov=True requires momentum > 0"),
        (lambda ps: SGD(ps, 0.1, weight_decay=-1e-4), "weight_decay must be >= 0"),
        (lambda ps: Adam(ps, 0.1, betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),
        (lambda ps: Adam(ps, 0.1, betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
        (lambda ps: Adam(ps, 0.1, betas=0.9), "betas must be a pair"),
        (lambda ps: Adam(ps, 0.1, eps=0.0), "eps must be > 0"),
        (lambda ps: AdamW(ps, 0.1, weight_decay=-0.01), "weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_raise(factory, match):
    with pytest.raises(OptimizerError, match=match):
        factory(_params())


def test_bad_params_raise():
    p = Parameter("w", np.zeros(3, np.float32))
    with pytest.raises(OptimizerError, match="'w' appears twice"):
        SGD([p, Parameter("w", np.zeros(2, np.float32))], 0.1)
    with pytest.raises(TypeError, match="expected a Parameter"):
        SGD([np.zeros(3, np.float32)], 0.1)
    with pytest.raises(TypeError, match="float64, expected float32"):
        SGD([Parameter("d", np.zeros(3))], 0.1)
    opt = SGD([p], 0.1)
    p.grad = np.zeros(3)
    with pytest.raises(TypeError, match="grad dtype is float64"):
        opt.step()
    p.grad = np.zeros(4, np.float32)
    with pytest.raises(OptimizerError, match=r"grad shape \(4,\) differs"):
        opt.step()


def test_errors_are_value_errors():
    assert issubclass(OptimizerError, ValueError)


def test_make_optimizer_names_and_defaults():
    params = _params()
    assert OPTIMIZERS == ("sgd", "adam", "adamw")
    sgd = make_optimizer("SGD", params, 0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert isinstance(sgd, SGD) and sgd.momentum == 0.9 and sgd.nesterov and sgd.weight_decay == 5e-4
    assert make_optimizer("sgd", params, 0.1).momentum == 0.0
    adam = make_optimizer("adam", params, 1e-3, betas=(0.8, 0.9), eps=1e-6)
    assert type(adam) is Adam and adam.betas == (0.8, 0.9) and adam.eps == 1e-6
    assert adam.weight_decay == 0.0
    adamw = make_optimizer("adamw", params, 1e-3)
    assert type(adamw) is AdamW and adamw.weight_decay == 0.01
    assert make_optimizer("adamw", params, 1e-3, weight_decay=0.0).weight_decay == 0.0
    with pytest.raises(OptimizerError, match="unknown optimizer 'rmsprop'; valid names: sgd, adam, adamw"):
        make_optimizer("rmsprop", params, 0.1)
    # one option set for every name (as the training loop passes it): Adam ignores momentum
    assert make_optimizer("adam", params, 0.1, momentum=0.9).betas == (0.9, 0.999)
    assert make_optimizer("adamw", params, 0.1, momentum=0.5, weight_decay=1e-4).weight_decay == 1e-4
    with pytest.raises(OptimizerError, match="nesterov applies to 'sgd' only"):
        make_optimizer("adamw", params, 0.1, nesterov=True)
