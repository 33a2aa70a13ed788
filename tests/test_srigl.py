"""SRigL and condensed SET (:mod:`purerigl.dst.srigl`) against a dense brute force.

Every update is checked against :func:`oracle_update`, an independent, loop-by-loop transcription of
PAPERS.md 3.2-3.3 over a dense float64 gradient ``G = dY^T X`` and the stored entries read from the
raw arrays. With integer-valued X and dY every |G| is an exact small integer in float32 as in float64,
so the kernels' choices must equal the brute force exactly, ties included: equal scores go to the
smaller tie rank ``tie_rank(row * n_in + col, salt)`` of the flat position, layer-wide and within a
row alike (:mod:`purerigl.kernels._rank_key`). The salts vary from update to update (0, 2**32 - 1 and
seeded draws, :func:`salt_for`), so ties are decided by many different permutations. Float inputs are checked by optimality with a tolerance instead. The growth scores
come from the backends' own ``topk_grad`` / ``topk_grad_rows``, as in training.

After every update (:func:`check_update`): every active row holds exactly k strictly increasing
in-bound columns; nnz = k * n_active <= budget with a shortfall below n_active; at least
floor(budget / F) + 1 active rows and k <= F; kept connections keep value and momentum bit for bit
(dropped-and-regrown ones too); new connections are exactly 0 with zero momentum.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from purerigl.dst.base import LayerUpdate, MethodError
from purerigl.dst.srigl import SETCondensed, SRigL, neurons_to_ablate
from purerigl.formats import CSR, Condensed
from purerigl.kernels import get_backend
from purerigl.kernels._rank_key import tie_rank
from purerigl.nn import SparseLinear
from purerigl.optim import SGD

BACKENDS = ["reference", "cpu"]


# --------------------------------------------------------------------------------------------------
# backends


def sparse_linear(W, backend, bias=None) -> SparseLinear:
    """A SparseLinear whose ``backend`` may also be a test wrapper (set after construction)."""
    layer = SparseLinear(W, bias=bias, backend="reference")
    layer.backend = get_backend(backend) if isinstance(backend, str) else backend
    return layer


class _Spy:
    """Wraps a backend and records which growth ops were called (the method must use the backend's)."""

    def __init__(self, base, break_rows=False):
        self.base, self.calls, self.break_rows = base, [], break_rows
        self.name = f"spy({base.name})"

    def __getattr__(self, op):
        return getattr(self.base, op)

    def topk_grad(self, *args):
        self.calls.append("topk_grad")
        return self.base.topk_grad(*args)

    def topk_grad_with_rows(self, *args):
        self.calls.append("topk_grad_with_rows")
        return self.base.topk_grad_with_rows(*args)

    def topk_grad_rows(self, X, dY, counts, *ex):
        self.calls.append("topk_grad_rows")
        indptr, cols = self.base.topk_grad_rows(X, dY, counts, *ex)
        if self.break_rows:  # a faulty kernel: the first growing row gets one column too few
            r = int(np.flatnonzero(np.diff(indptr))[0])
            cols = np.delete(cols, indptr[r])
            indptr = np.asarray(indptr).copy()
            indptr[r + 1:] -= 1
        return indptr, cols


# --------------------------------------------------------------------------------------------------
# set-up: a layer, a batch, one SGD step with momentum


def make_layer(shape, k, seed, backend, *, rows=None, integer=True, batch=4, lr=0.05):
    """SparseLinear over Condensed.random (optionally only ``rows`` active), trained one SGD step
    (momentum 0.9) on a random batch, so values moved and momentum is non-zero."""
    rng = np.random.default_rng(seed)
    W = Condensed.random(shape, None, rng, k=k)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int32)
        W = Condensed(rows, W.indices[rows], W.values[rows], shape)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    layer = sparse_linear(W, backend, bias=bias)
    opt = SGD(layer.parameters(), lr=lr, momentum=0.9)
    train_step(layer, opt, rng, integer=integer, batch=batch)
    return layer, opt, rng


def train_step(layer, opt, rng, *, integer=True, batch=4):
    n_out, n_in = layer.shape
    if integer:
        X = rng.integers(-2, 3, size=(batch, n_in)).astype(np.float32)
        dY = rng.integers(-2, 3, size=(batch, n_out)).astype(np.float32)
    else:
        X = rng.standard_normal((batch, n_in)).astype(np.float32)
        dY = rng.standard_normal((batch, n_out)).astype(np.float32)
    layer.forward(X)
    layer.backward(dY)
    opt.step()


def momentum_of(layer, opt):
    return opt.state_arrays(layer.weight)["momentum_buffer"]


def snapshot(layer, opt) -> dict:
    """{(row, col): (value, momentum)} of every stored entry, read from the raw arrays."""
    W = layer.W
    mom = momentum_of(layer, opt) if opt is not None else np.zeros_like(W.values)
    out = {}
    for r in range(W.rows.shape[0]):
        for t in range(W.indices.shape[1]):
            out[(int(W.rows[r]), int(W.indices[r, t]))] = (W.values[r, t], mom[r, t])
    return out


def dense_grad(layer) -> np.ndarray:
    return layer.last_output_grad.T.astype(np.float64) @ layer.last_input.astype(np.float64)


#: The ends of the salt range, always among the salts a test draws.
SALT_ENDS = (0, 2**32 - 1)


def salt_for(seed: int, step: int = 0) -> int:
    """The tie salt of a test's update number ``step``: in turn 0, 2**32 - 1 and two seeded draws from
    [0, 2**32), so that consecutive updates (and tests) decide ties by different permutations."""
    choice = (seed + step) % 4
    if choice < len(SALT_ENDS):
        return SALT_ENDS[choice]
    return int(np.random.default_rng([seed, step]).integers(0, 2**32))


def run_update(method, layer, opt, rng, alpha, budget, is_output=False, salt=0):
    u = LayerUpdate(layer=layer, optimizer=opt, alpha=alpha, rng=rng, budget=budget, is_output=is_output,
                    salt=salt)
    return method.update(u)


# --------------------------------------------------------------------------------------------------
# the brute force


def oracle_update(before: dict, G: np.ndarray, shape, alpha, budget, gamma, is_output, active=None, salt=0):
    """PAPERS.md 3.2-3.3 on dense arrays, one loop at a time.

    Returns (new positions set, active rows list, k, kept-by-rule set) for gradient growth. If
    ``active`` is given the ablation decision is taken from it instead (float tests). Every sort
    breaks equal scores by the smaller tie rank of the flat position under ``salt`` (within a row
    too: the flat position, not the column).
    """
    n_out, n_in = shape
    rank = {(i, j): int(tie_rank(i * n_in + j, salt)) for i in range(n_out) for j in range(n_in)}
    n = len(before)
    n_prune = math.floor(Fraction(alpha).limit_denominator(10**6) * n)
    n_keep = n - n_prune
    by_mag = sorted(before, key=lambda rc: (-abs(float(before[rc][0])), rank[rc]))
    if active is None:
        if gamma > 0 and not is_output:
            everything = [(i, j) for i in range(n_out) for j in range(n_in)]
            by_grad = sorted(everything, key=lambda rc: (-abs(G[rc]), rank[rc]))
            salient = set(by_mag[:n_keep]) | set(by_grad[:n_prune])
            counts = [sum(1 for rc in salient if rc[0] == i) for i in range(n_out)]
            if gamma >= 1:
                tau = math.ceil(gamma)
            else:
                tau = max(1, math.floor(Fraction(gamma).limit_denominator(10**6) * (budget // n_out)))
            m = budget // n_in
            tau = min(tau, sorted(counts, reverse=True)[m]) if m < n_out else 0
            active = [i for i in range(n_out) if counts[i] >= tau]
        else:
            active = list(range(n_out))
    k = budget // len(active)
    kept = [rc for rc in by_mag if rc[0] in active][:n_keep]
    per_row = {i: [] for i in active}
    for rc in sorted(kept, key=lambda rc: (-abs(float(before[rc][0])), rank[rc])):
        if len(per_row[rc[0]]) < k:
            per_row[rc[0]].append(rc)
    new, kept_rule = set(), set()
    for i in active:
        mine = {c for _, c in per_row[i]}
        free = sorted((c for c in range(n_in) if c not in mine), key=lambda c: (-abs(G[i, c]), rank[i, c]))
        new |= set(per_row[i]) | {(i, c) for c in free[: k - len(mine)]}
        kept_rule |= set(per_row[i])
    return new, active, k, kept_rule


def positions(W) -> set:
    n_active, k = W.indices.shape
    return {(int(W.rows[r]), int(W.indices[r, t])) for r in range(n_active) for t in range(k)}


def check_update(layer, opt, before: dict, budget: int, stats: dict, *, ablation=True):
    """Structure invariants and the value / momentum rules (PAPERS.md 1.2, 7: 15, 17-19, 22)."""
    W = layer.W
    n_out, n_in = W.shape
    W.validate(full=True)
    n_active, k = W.indices.shape
    assert W.values.shape == (n_active, k) and W.values.dtype == np.float32
    assert np.all(np.diff(W.indices.astype(np.int64), axis=1) > 0)  # strictly increasing: k distinct
    assert W.indices.min() >= 0 and W.indices.max() < n_in
    assert np.all(np.diff(W.rows.astype(np.int64)) > 0)
    assert W.nnz == k * n_active <= budget and budget - W.nnz < n_active
    assert 1 <= k <= n_in
    if ablation:
        assert n_active >= min(n_out, budget // n_in + 1)
    assert stats["k"] == k and stats["active_rows"] == n_active and stats["ablated"] == n_out - n_active
    assert stats["kept"] + stats["grown"] == W.nnz and stats["kept"] + stats["dropped"] == len(before)
    mom = momentum_of(layer, opt)
    assert mom.shape == W.values.shape
    for r in range(n_active):
        for t in range(k):
            rc = (int(W.rows[r]), int(W.indices[r, t]))
            if rc in before:  # kept, or dropped and regrown: value and momentum carried bit for bit
                assert W.values[r, t] == before[rc][0] and mom[r, t] == before[rc][1], rc
            else:  # new: exactly 0, zero momentum
                assert W.values[r, t] == 0.0 and mom[r, t] == 0.0, rc
    assert layer.weight.value is W.values


# --------------------------------------------------------------------------------------------------
# exact agreement with the brute force


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(
    "shape,k,budget,gamma,alpha",
    [
        ((6, 10), 4, 24, 0.3, 0.3),
        ((6, 10), 4, 24, 0.0, 0.5),
        ((8, 20), 5, 40, 0.3, 0.3),
        ((8, 20), 5, 40, 0.95, 0.5),  # aggressive ablation: the floor keeps budget // F + 1 rows
        ((8, 20), 6, 32, 0.0, 0.3),  # budget below nnz: k 6 -> 4, over-full rows trimmed
        ((8, 20), 3, 40, 0.3, 0.2),  # budget above nnz: k 3 -> 5
        ((5, 12), 12, 60, 0.3, 0.4),  # dense fan-in: k = n_in, min_neurons = n_out
        ((7, 9), 1, 7, 0.3, 1.0),  # k = 1, everything dropped
        ((8, 20), 5, 40, 4, 0.3),  # absolute gamma_sal
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_updates_match_brute_force(backend_name, shape, k, budget, gamma, alpha, ties):
    backend = get_backend(backend_name)
    seed = 1000 * shape[0] + 10 * shape[1] + 7 * k + budget + int(ties)
    layer, opt, rng = make_layer(shape, k, seed=seed, backend=backend)
    method = SRigL(gamma_sal=gamma)
    for step in range(3):  # consecutive updates: ablated rows stay out or revive, k moves
        if ties:  # many equal |w| so the layer-wide and per-row tie rules decide
            layer.W.values[...] = np.round(layer.W.values * 2) / 2
        before = snapshot(layer, opt)
        G = dense_grad(layer)
        salt = salt_for(seed, step)
        want, active, want_k, _ = oracle_update(before, G, shape, alpha, budget, gamma, False, salt=salt)
        stats = run_update(method, layer, opt, rng, alpha, budget, salt=salt)
        check_update(layer, opt, before, budget, stats, ablation=gamma > 0)
        assert layer.W.rows.tolist() == active and layer.W.k == want_k
        assert positions(layer.W) == want
        train_step(layer, opt, rng)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_float_inputs_optimal_drop_trim_and_growth(backend_name):
    """Float batch: |G| from float32 kernels may differ from float64 in the last bits, so growth is
    checked by optimality with a tolerance; the magnitude drop and trim are exact."""
    backend = get_backend(backend_name)
    shape, budget = (8, 20), 40
    layer, opt, rng = make_layer(shape, 5, seed=11, backend=backend, integer=False, batch=6)
    method = SRigL(gamma_sal=0.3)
    for step in range(4):
        before = snapshot(layer, opt)
        G = np.abs(dense_grad(layer))
        salt = salt_for(11, step)
        stats = run_update(method, layer, opt, rng, 0.3, budget, salt=salt)
        check_update(layer, opt, before, budget, stats)
        W = layer.W
        _, _, k, kept = oracle_update(before, G, shape, 0.3, budget, 0.3, False, active=W.rows.tolist(), salt=salt)
        new = positions(W)
        assert kept <= new  # kept by magnitude (layer-wide), trimmed by magnitude per row
        tol = 1e-5 * (1.0 + G.max())
        for i in W.rows.tolist():
            mine = {c for r, c in kept if r == i}
            grown = [c for r, c in new if r == i and c not in mine]
            assert len(mine) + len(grown) == k
            rest = [c for c in range(shape[1]) if c not in mine and c not in grown]
            if grown and rest:
                assert min(G[i, grown]) >= max(G[i, rest]) - tol
        train_step(layer, opt, rng, integer=False, batch=6)


# --------------------------------------------------------------------------------------------------
# counts: gamma = 0, alpha = 0


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_no_ablation_grows_as_many_as_dropped(backend_name):
    backend = get_backend(backend_name)
    layer, opt, rng = make_layer((8, 20), 5, seed=3, backend=backend)
    method = SRigL(gamma_sal=0.0)
    for _ in range(3):
        before = snapshot(layer, opt)
        stats = run_update(method, layer, opt, rng, 0.5, 40)
        check_update(layer, opt, before, 40, stats, ablation=False)
        assert layer.W.nnz == 40 and layer.W.k == 5 and stats["ablated"] == 0
        assert stats["grown"] == stats["dropped"]
        assert stats["dropped"] + stats["regrown"] == stats["n_prune"] == 20
        train_step(layer, opt, rng)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dropped_and_regrown_keeps_value_and_momentum(backend_name):
    """Row 0's |w| = 0.1 at column 2 is dropped by magnitude but has the largest |G|: it is regrown
    with its old value and momentum; column 4 is new (value 0, momentum 0)."""
    W = Condensed(np.array([0, 1], np.int32), np.array([[0, 1, 2], [0, 1, 2]], np.int32),
                  np.array([[3.0, 2.0, 0.1], [4.0, -5.0, 6.0]], np.float32), (2, 6))
    layer = sparse_linear(W, get_backend(backend_name))
    Gt = np.array([[1, 1, 100, 1, 50, 2], [1, 1, 1, 1, 1, 1]], dtype=np.float32)
    layer.forward(np.eye(6, dtype=np.float32))
    layer.backward(Gt.T.copy())
    opt = SGD(layer.parameters(), lr=0.0, momentum=0.9)
    opt.step()
    before = snapshot(layer, opt)
    stats = run_update(SRigL(gamma_sal=0.0), layer, opt, np.random.default_rng(0), 1 / 3, 6)
    check_update(layer, opt, before, 6, stats, ablation=False)
    assert layer.W.indices.tolist() == [[0, 2, 4], [0, 1, 2]]
    assert layer.W.values[0].tolist() == [3.0, np.float32(0.1), 0.0]
    assert momentum_of(layer, opt)[0].tolist() == [1.0, 100.0, 0.0]
    assert stats["regrown"] == 1 and stats["grown"] == stats["dropped"] == 1 and stats["n_prune"] == 2


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_alpha_zero_changes_nothing(gamma):
    layer, opt, rng = make_layer((8, 20), 5, seed=4, backend=get_backend("reference"))
    W0 = layer.W
    rows, indices, values = W0.rows.copy(), W0.indices.copy(), W0.values.copy()
    mom = momentum_of(layer, opt).copy()
    stats = run_update(SRigL(gamma_sal=gamma), layer, opt, rng, 0.0, 40)
    assert stats["grown"] == stats["dropped"] == 0 and stats["kept"] == 40
    assert layer.W is W0
    np.testing.assert_array_equal(layer.W.rows, rows)
    np.testing.assert_array_equal(layer.W.indices, indices)
    np.testing.assert_array_equal(layer.W.values, values)
    np.testing.assert_array_equal(momentum_of(layer, opt), mom)


# --------------------------------------------------------------------------------------------------
# ablation: the pure decision, the hand case end to end, the output layer, revival


def test_neurons_to_ablate_hand_case():
    """PAPERS.md invariant 21."""
    assert neurons_to_ablate([10, 10, 2], 30, 20, 0.3).tolist() == [False, False, True]
    assert neurons_to_ablate([10, 10, 2], 30, 15, 0.3).tolist() == [False, False, False]  # floor: tau 3 -> 2
    assert neurons_to_ablate([10, 2, 10], 30, 20, 0.3).tolist() == [False, True, False]
    assert not neurons_to_ablate([10, 10, 2], 30, 20, 0.0).any()  # disabled
    assert neurons_to_ablate([10, 10, 2, 4], 40, 20, 4).tolist() == [False, False, True, False]  # absolute
    assert neurons_to_ablate([10, 10, 2, 3], 40, 40, 3.5).tolist() == [False, False, True, True]  # ceil(3.5)
    # the same with F = 20: min_neurons = 2 and the floor lowers tau from 4 to 3
    assert neurons_to_ablate([10, 10, 2, 3], 40, 20, 3.5).tolist() == [False, False, True, False]
    assert not neurons_to_ablate([5, 0, 0], 60, 20, 0.9).any()  # min_neurons = 3 = n_out: all needed
    assert neurons_to_ablate([0, 0, 0, 5], 8, 20, 0.5).tolist() == [True, True, True, False]  # tau max(1, 1)


@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    n_in=st.integers(1, 30),
    fill=st.floats(0.01, 1.0),
    gamma=st.one_of(st.just(0.0), st.floats(0.01, 0.99), st.integers(1, 20)),
)
def test_neurons_to_ablate_properties(counts, n_in, fill, gamma):
    n_out = len(counts)
    budget = max(1, int(fill * n_out * n_in))
    ablated = neurons_to_ablate(counts, budget, n_in, gamma)
    survivors = np.flatnonzero(~ablated)
    assert survivors.size >= min(n_out, budget // n_in + 1)
    assert budget // survivors.size <= n_in  # k <= F
    c = np.asarray(counts)
    if ablated.any():
        assert c[ablated].max() < c[~ablated].min()  # a threshold: every ablated count below every survivor
    if gamma == 0:
        assert not ablated.any()


def hand_case_layer(n_in: int, backend, rows=(0, 1, 2), k=10):
    """n_out = 3: rows 0 and 1 hold large weights, row 2 tiny ones; G = dY^T X = Gt exactly (X = I).

    Gt: 100 at 4 active positions of each of rows 0 and 1 and at columns 0, 1 of row 2 (the top 10
    of |G|), c + 1 at every other column c. With alpha = 1/3 on nnz 30: n_keep = 20 (all of rows 0
    and 1 by magnitude), n_prune = 10 (the ten 100s), so the salient counts are {10, 10, 2}.
    """
    rng = np.random.default_rng(7)
    rows = np.asarray(rows, dtype=np.int32)
    indices = np.stack([np.sort(rng.choice(n_in, size=k, replace=False)) for _ in rows]).astype(np.int32)
    values = np.where(rows[:, None] < 2, 1.0 + rng.random((rows.size, k)), 1e-3 * rng.random((rows.size, k)))
    values *= rng.choice([-1.0, 1.0], size=values.shape)
    W = Condensed(rows, indices, values.astype(np.float32), (3, n_in))
    Gt = np.tile(np.arange(1, n_in + 1, dtype=np.float64), (3, 1))
    for r in range(rows.size):
        if rows[r] < 2:
            Gt[rows[r], indices[r, :4]] = 100.0
    Gt[2, :2] = 100.0
    layer = sparse_linear(W, backend, bias=np.array([0.5, -1.5, 2.25], dtype=np.float32))
    X = np.eye(n_in, dtype=np.float32)
    layer.forward(X)
    layer.backward(Gt.T.astype(np.float32))
    opt = SGD(layer.parameters(), lr=0.0, momentum=0.9)
    opt.step()  # lr 0: values unchanged, momentum = gradient (non-zero)
    return layer, opt, Gt


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hand_case_ablates_third_row(backend_name):
    layer, opt, Gt = hand_case_layer(20, get_backend(backend_name))
    before = snapshot(layer, opt)
    old_cols = {r: sorted(c for rr, c in before if rr == r) for r in range(3)}
    stats = run_update(SRigL(gamma_sal=0.3), layer, opt, np.random.default_rng(0), 1 / 3, 30)
    check_update(layer, opt, before, 30, stats)
    W = layer.W
    assert W.rows.tolist() == [0, 1] and W.k == 15 and stats["ablated"] == 1 and W.nnz == 30
    for r in (0, 1):  # keeps its 10, grows the 5 largest c + 1 among the others: the highest free columns
        free = [c for c in range(20) if c not in old_cols[r]]
        assert W.indices[r].tolist() == sorted(old_cols[r] + free[-5:])
    # the ablated row outputs exactly its bias
    X = np.random.default_rng(1).standard_normal((5, 20)).astype(np.float32)
    Y = layer.forward(X)
    assert np.all(Y[:, 2] == np.float32(2.25))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hand_case_floor_keeps_every_row(backend_name):
    layer, opt, Gt = hand_case_layer(15, get_backend(backend_name))
    before = snapshot(layer, opt)
    salt = salt_for(15, 3)  # a seeded draw
    stats = run_update(SRigL(gamma_sal=0.3), layer, opt, np.random.default_rng(0), 1 / 3, 30, salt=salt)
    check_update(layer, opt, before, 30, stats)
    assert layer.W.rows.tolist() == [0, 1, 2] and layer.W.k == 10 and stats["ablated"] == 0
    want, _, _, _ = oracle_update(before, Gt, (3, 15), 1 / 3, 30, 0.3, False, salt=salt)
    assert positions(layer.W) == want


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_output_layer_is_never_ablated(backend_name):
    layer, opt, Gt = hand_case_layer(20, get_backend(backend_name))
    before = snapshot(layer, opt)
    salt = 2**32 - 1
    stats = run_update(SRigL(gamma_sal=0.3), layer, opt, np.random.default_rng(0), 1 / 3, 30, is_output=True,
                       salt=salt)
    check_update(layer, opt, before, 30, stats)
    assert layer.W.rows.tolist() == [0, 1, 2] and layer.W.k == 10
    want, _, _, _ = oracle_update(before, Gt, (3, 20), 1 / 3, 30, 0.3, True, salt=salt)
    assert positions(layer.W) == want
    # a strongly ablating gamma changes nothing for the output layer either
    layer2, opt2, _ = make_layer((8, 20), 5, seed=9, backend=get_backend(backend_name))
    stats = run_update(SRigL(gamma_sal=0.99), layer2, opt2, np.random.default_rng(0), 0.5, 40, is_output=True)
    assert stats["ablated"] == 0 and layer2.W.n_active == 8


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_ablated_row_revives_and_overfull_rows_trim_by_magnitude(backend_name):
    """Row 2 ablated (rows 0, 1 hold k = 15); the gradient concentrates on row 2, so the gradient half
    of the salient set revives it; k drops to 10 and rows 0 and 1 keep their 10 largest |w|."""
    backend = get_backend(backend_name)
    layer, opt, _ = hand_case_layer(20, backend, rows=(0, 1), k=15)
    Gt = np.ones((3, 20))
    Gt[2] = 50.0 + np.arange(20)  # the top n_prune |G| all lie in row 2
    layer.forward(np.eye(20, dtype=np.float32))
    layer.backward(Gt.T.astype(np.float32))
    before = snapshot(layer, opt)
    salt = salt_for(20, 2)  # a seeded draw
    stats = run_update(SRigL(gamma_sal=0.3), layer, opt, np.random.default_rng(0), 0.2, 30, salt=salt)
    check_update(layer, opt, before, 30, stats)
    W = layer.W
    assert W.rows.tolist() == [0, 1, 2] and W.k == 10
    for r in (0, 1):
        old = [(c, v) for (rr, c), (v, _) in before.items() if rr == r]
        old.sort(key=lambda cv: (-abs(cv[1]), tie_rank(r * 20 + cv[0], salt)))
        assert W.indices[r].tolist() == sorted(c for c, _ in old[:10])  # all 10 survivors kept, no growth
    assert W.indices[2].tolist() == list(range(10, 20)) and np.all(W.values[2] == 0.0)  # largest |G[2, j]|
    want, _, _, _ = oracle_update(before, Gt, (3, 20), 0.2, 30, 0.3, False, salt=salt)
    assert positions(W) == want


# --------------------------------------------------------------------------------------------------
# determinism, backend use, errors


@pytest.mark.parametrize("integer", [True, False])
def test_same_inputs_same_topology(integer):
    """Same seed and inputs: the same topology and values, run after run; with exact (integer) batches
    also across backends (float batches may round differently in each backend's products)."""
    names = BACKENDS + ["reference"] if integer else ["reference", "reference"]
    results = []
    for name in names:
        layer, opt, rng = make_layer((8, 20), 5, seed=21, backend=get_backend(name), integer=integer)
        for step in range(3):
            run_update(SRigL(gamma_sal=0.5), layer, opt, rng, 0.4, 40, salt=salt_for(21, step))
            train_step(layer, opt, rng, integer=integer)
        results.append((layer.W.rows.copy(), layer.W.indices.copy(), layer.W.values.copy()))
    for rows, indices, values in results[1:]:
        np.testing.assert_array_equal(rows, results[0][0])
        np.testing.assert_array_equal(indices, results[0][1])
        np.testing.assert_array_equal(values, results[0][2])


def test_method_calls_the_backend_growth_ops():
    spy = _Spy(get_backend("reference"))
    layer, opt, rng = make_layer((8, 20), 5, seed=5, backend=spy)
    stats = run_update(SRigL(gamma_sal=0.3), layer, opt, rng, 0.3, 40)
    assert stats["k"] == 5  # the fan-in did not grow: the growth comes from the candidates of the one pass
    assert spy.calls == ["topk_grad_with_rows"]
    spy.calls.clear()
    run_update(SRigL(gamma_sal=0.0), layer, opt, rng, 0.3, 40)
    assert spy.calls == ["topk_grad_rows"]
    spy.calls.clear()
    run_update(SETCondensed(), layer, opt, rng, 0.3, 40)
    assert spy.calls == []


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_growth_beyond_the_candidates_takes_a_second_pass(backend_name):
    """When ablation raises the fan-in k above the current one, a row may need more columns than its
    candidates hold: the growth then reads G again (``topk_grad_rows``), and the update is still the
    brute force's."""
    spy = _Spy(get_backend(backend_name))
    layer, opt, rng = make_layer((8, 20), 5, seed=3, backend=spy)
    before = snapshot(layer, opt)
    salt = salt_for(3, 0)
    want, active, want_k, _ = oracle_update(before, dense_grad(layer), (8, 20), 0.5, 40, 0.95, False, salt=salt)
    assert want_k > 5  # rows ablated: k = 40 // n_active grows
    stats = run_update(SRigL(gamma_sal=0.95), layer, opt, rng, 0.5, 40, salt=salt)
    assert spy.calls == ["topk_grad_with_rows", "topk_grad_rows"]
    assert stats["k"] == want_k and layer.W.rows.tolist() == active and positions(layer.W) == want


def test_broken_fan_in_raises():
    spy = _Spy(get_backend("reference"), break_rows=True)
    layer, opt, rng = make_layer((8, 20), 5, seed=5, backend=spy)
    W0 = layer.W
    with pytest.raises(MethodError, match=r"constant fan-in broken: row \d+ would hold 4 connections, expected 5 .*spy"):
        run_update(SRigL(gamma_sal=0.0), layer, opt, rng, 0.3, 40)
    assert layer.W is W0  # nothing installed


def test_errors():
    backend = get_backend("reference")
    layer, opt, rng = make_layer((8, 20), 5, seed=6, backend=backend)
    with pytest.raises(MethodError, match="k would be 0"):
        run_update(SRigL(gamma_sal=0.0), layer, opt, rng, 0.3, 7)  # 7 < 8 rows
    with pytest.raises(MethodError, match="n_in"):
        run_update(SRigL(gamma_sal=0.0), layer, opt, rng, 0.3, 8 * 21)
    with pytest.raises(MethodError, match="alpha"):
        run_update(SRigL(), layer, opt, rng, 1.5, 40)
    for bad in (-0.1, float("nan"), "0.3", True):
        with pytest.raises(MethodError):
            SRigL(gamma_sal=bad)
    csr = SparseLinear(CSR.random((4, 5), 0.5, 0), backend=backend)
    with pytest.raises(MethodError, match="Condensed"):
        run_update(SRigL(), csr, None, rng, 0.3, 4)
    fresh = SparseLinear(Condensed.random((4, 6), None, 0, k=2), backend=backend)
    with pytest.raises(MethodError, match="forward and a backward"):
        run_update(SRigL(gamma_sal=0.3), fresh, None, rng, 0.5, 8)
    assert SRigL().name == "srigl" and SRigL.formats == ("condensed",)
    assert SETCondensed().name == "set" and SETCondensed.formats == ("condensed",)


# --------------------------------------------------------------------------------------------------
# SET on condensed storage


def test_set_condensed_keeps_k_and_grows_only_off_the_kept_set():
    layer, opt, rng = make_layer((8, 20), 5, seed=8, backend=get_backend("reference"))
    method = SETCondensed()
    for step in range(3):
        before = snapshot(layer, opt)
        salt = salt_for(8, step)
        stats = run_update(method, layer, opt, rng, 0.4, 40, salt=salt)
        check_update(layer, opt, before, 40, stats, ablation=False)
        assert layer.W.rows.tolist() == list(range(8)) and layer.W.k == 5
        assert stats["grown"] == stats["dropped"] and stats["dropped"] + stats["regrown"] == 16
        _, _, _, kept = oracle_update(before, np.zeros((8, 20)), (8, 20), 0.4, 40, 0.0, False, salt=salt)
        new = positions(layer.W)
        assert kept <= new  # the layer-wide magnitude keep
        for i in range(8):  # every row refilled to k with columns outside its kept set
            assert sum(1 for r, _ in new if r == i) == 5
        train_step(layer, opt, rng)


def test_set_condensed_needs_no_gradient_and_follows_the_seed():
    def topology(seed):
        W = Condensed.random((6, 10), None, 1, k=4)
        layer = SparseLinear(W, backend=get_backend("reference"))  # no forward / backward ever run
        run_update(SETCondensed(), layer, None, np.random.default_rng(seed), 0.5, 24)
        return layer.W.indices.copy()

    np.testing.assert_array_equal(topology(0), topology(0))
    assert any(not np.array_equal(topology(0), topology(s)) for s in range(1, 5))


def test_set_condensed_growth_is_uniform_over_free_columns():
    """One row, n_in = 8, k = 4, alpha = 0.5: two kept, two grown among the 6 free columns."""
    rng = np.random.default_rng(0)
    hits = np.zeros(8)
    reps = 600
    for _ in range(reps):
        W = Condensed(np.array([0], np.int32), np.array([[0, 1, 2, 3]], np.int32),
                      np.array([[4.0, 3.0, 2.0, 1.0]], np.float32), (1, 8))
        layer = SparseLinear(W, backend=get_backend("reference"))
        run_update(SETCondensed(), layer, None, rng, 0.5, 4)
        assert layer.W.indices[0, :2].tolist() == [0, 1]  # largest |w| kept
        hits[layer.W.indices[0]] += 1
    assert hits[0] == hits[1] == reps
    frac = hits[2:] / reps  # each free column is drawn with probability 2/6
    assert np.all(np.abs(frac - 1 / 3) < 0.08), frac
