"""Self-test of a kernel backend against SciPy CSR products: an oracle computed by another route.

Pure functions that return result rows; ``purerigl check`` and ``purerigl demo`` only print them.

For a weight matrix W of shape (n_out, n_in) held in any format, ``S = W.to_scipy()`` is the same
matrix as a SciPy CSR array. In float64:

.. math::

    Y = X S^T, \\qquad dX = dY\\, S, \\qquad G = dY^T X \\text{ read at the stored / candidate positions}

Tolerance, relative to the magnitude of the terms: an output that sums ``n`` products in float32 (in
any order) is off by at most about ``n * eps32 / 2`` times the sum of the absolute values of its
terms, so a result passes when

.. math:: \\max |got - expected| \\le (n + 1)\\, \\varepsilon_{32} \\max(|X|\\,|S|^T)

with ``n`` the largest number of terms per output (fan-in for matmul, fan-out for matmul_t, the batch
for sddmm and grad_at). A wrong index or a lost term is off by a whole term, far above that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from purerigl.formats import FORMATS

EPS32 = float(np.finfo(np.float32).eps)

#: (shape (n_out, n_in), density, label) of the self-test cases; the last is the SRigL paper's layer.
CASES = (
    ((96, 40), 0.3, "tall"),
    ((40, 96), 0.3, "wide"),
    ((64, 64), 0.25, "square"),
    ((768, 3072), 0.1, "3072->768 at 90% sparsity"),
)
#: Cases small enough for a quick run (everything but the 3072 -> 768 layer).
QUICK_CASES = CASES[:3]
BATCHES = (1, 33)
#: Tiny cases and batches for a backend that runs on the CUDA simulator (Python threads, slow).
TINY_CASES = (
    ((12, 5), 0.4, "tall (tiny)"),
    ((5, 12), 0.4, "wide (tiny)"),
    ((8, 8), 0.35, "square (tiny)"),
)
TINY_BATCHES = (1, 3)
#: Candidate (row, col) pairs drawn for grad_at in every case.
N_PAIRS = 64


@dataclass(frozen=True)
class Result:
    """One line of the self-test table."""

    format: str
    op: str
    shape: tuple[int, int]
    batch: int
    max_abs_err: float
    tol: float
    passed: bool
    note: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def compare(got, expected: np.ndarray, magnitude: np.ndarray, n_terms: int) -> tuple[float, float, str]:
    """(max abs error, tolerance, note) of ``got`` against the float64 ``expected``; note is "" when fine.

    ``magnitude`` is the sum of |terms| of every expected entry; ``n_terms`` the most terms per entry.
    """
    tol = (n_terms + 1) * EPS32 * float(magnitude.max(initial=0.0))
    if not isinstance(got, np.ndarray):
        return float("nan"), tol, f"returned {type(got).__name__}, expected a numpy array"
    if got.shape != expected.shape:
        return float("nan"), tol, f"returned shape {got.shape}, expected {expected.shape}"
    if got.dtype != np.float32:
        return float("nan"), tol, f"returned dtype {got.dtype}, expected float32"
    if not np.all(np.isfinite(got)):
        return float("nan"), tol, "result holds NaN or inf"
    err = float(np.max(np.abs(got.astype(np.float64) - expected), initial=0.0))
    return err, tol, "" if err <= tol else "error above tolerance"


def slot_positions(W) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every slot of ``W.values`` (flat order), found through SciPy, not through a kernel.

    Each slot's value is replaced by its own number; the SciPy CSR copy then says where each number sits.
    """
    if W.nnz >= 1 << 24:
        raise ValueError(f"slot_positions needs nnz < 2**24 (exact in float32), got {W.nnz}")
    ids = W.copy()
    ids.values[...] = np.arange(W.nnz, dtype=np.float32).reshape(W.values.shape)
    S = ids.to_scipy()
    rows = np.repeat(np.arange(W.n_out), np.diff(S.indptr))
    slot = S.data.astype(np.int64)
    pos_row = np.empty(W.nnz, dtype=np.int64)
    pos_col = np.empty(W.nnz, dtype=np.int64)
    pos_row[slot], pos_col[slot] = rows, S.indices
    return pos_row, pos_col


def check_ops(backend, fmt: str, W, X: np.ndarray, dY: np.ndarray, rng: np.random.Generator) -> list[Result]:
    """Run matmul, matmul_t, sddmm and grad_at of ``backend`` on one matrix and batch; one Result each."""
    S = W.to_scipy().astype(np.float64)
    A = abs(S)
    X64, dY64 = X.astype(np.float64), dY.astype(np.float64)
    aX, adY = np.abs(X64), np.abs(dY64)
    fan_in, fan_out = np.diff(S.indptr), np.bincount(S.indices, minlength=W.n_in)
    G, aG = dY64.T @ X64, adY.T @ aX  # (n_out, n_in): dense gradient and its term magnitudes
    pos_row, pos_col = slot_positions(W)
    pair_rows = rng.integers(0, W.n_out, size=N_PAIRS)
    pair_cols = rng.integers(0, W.n_in, size=N_PAIRS)
    batch = X.shape[0]

    checks = {  # op -> (call, expected, magnitude, terms per output)
        "matmul": (lambda: backend.matmul(W, X), X64 @ S.T, aX @ A.T, int(fan_in.max(initial=0))),
        "matmul_t": (lambda: backend.matmul_t(W, dY), dY64 @ S, adY @ A, int(fan_out.max(initial=0))),
        "sddmm": (
            lambda: backend.sddmm(W, X, dY),
            G[pos_row, pos_col].reshape(W.values.shape),
            aG[pos_row, pos_col].reshape(W.values.shape),
            batch,
        ),
        "grad_at": (
            lambda: backend.grad_at(X, dY, pair_rows, pair_cols),
            G[pair_rows, pair_cols],
            aG[pair_rows, pair_cols],
            batch,
        ),
    }
    results = []
    for op, (call, expected, magnitude, n_terms) in checks.items():
        try:
            got = call()
        except Exception as err:  # a crashing op is a failed check, reported with its message
            tol = (n_terms + 1) * EPS32 * float(np.max(magnitude, initial=0.0))
            results.append(Result(fmt, op, W.shape, batch, float("nan"), tol, False, _describe(err)))
            continue
        err, tol, note = compare(got, np.asarray(expected), np.asarray(magnitude), n_terms)
        results.append(Result(fmt, op, W.shape, batch, err, tol, not note, note))
    return results


def selftest_plan(quick: bool = False, tiny: bool = False) -> tuple[tuple, tuple[int, ...]]:
    """(cases, batches) of a run: all cases, the quick ones, or the tiny ones (with tiny batches)."""
    if tiny:
        return TINY_CASES, TINY_BATCHES
    return (QUICK_CASES if quick else CASES), BATCHES


def run_selftest(
    backend, seed: int = 0, quick: bool = False, formats=None, batches=BATCHES, cases=None
) -> list[Result]:
    """Check every op of ``backend`` for each format, case and batch size; returns all results.

    ``backend`` is anything with ``matmul``, ``matmul_t``, ``sddmm`` and ``grad_at`` attributes. The
    inputs of each (case, format, batch) come from their own seed, so ``quick`` changes no other case.
    ``cases`` (a sequence like :data:`CASES`) replaces the cases that ``quick`` picks.
    """
    formats = list(formats or FORMATS)
    if cases is None:
        cases = QUICK_CASES if quick else CASES
    results = []
    for f_idx, fmt in enumerate(formats):
        for c_idx, (shape, density, _label) in enumerate(cases):
            for batch in batches:
                rng = np.random.default_rng([seed, c_idx, f_idx, batch])
                W = FORMATS[fmt].random(shape, density, rng)
                X = rng.standard_normal((batch, shape[1])).astype(np.float32)
                dY = rng.standard_normal((batch, shape[0])).astype(np.float32)
                results.extend(check_ops(backend, fmt, W, X, dY, rng))
    return results


def _describe(err: Exception) -> str:
    return f"raised {type(err).__name__}: {' '.join(str(err).split())[:160]}"
