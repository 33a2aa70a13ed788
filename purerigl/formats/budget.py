"""How many connections a sparse layer stores, from a sparsity and a storage format.

For a layer of shape (n_out, n_in), N = n_out * n_in, at sparsity s the connection budget is

.. math:: C = N - \\lfloor s N \\rfloor

(the uniform count of PAPERS.md 1.3), computed exactly (:func:`layer_budget`). Each format rounds the
budget to what it can hold:

- CSR stores exactly C entries;
- Condensed stores k = floor(C / n_out) per row (k * n_out <= C); C < n_out (k = 0) is an error;
- Diagonal stores K = max(1, ceil(C / L)) whole diagonals of length L = min(n_out, n_in) (K * L >= C).
"""

from __future__ import annotations

from ..errors import FormatError
from .condensed import Condensed
from .csr import CSR
from .diagonal import Diagonal
from ._base import floor_count

FORMAT_NAMES = ("condensed", "diagonal", "csr")


def check_sparsity(sparsity) -> float:
    """Return ``sparsity`` as a float in [0, 1), or raise FormatError naming the allowed range."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise FormatError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0):
        raise FormatError(f"sparsity must be in [0, 1), got {sparsity}")
    return s


def layer_budget(shape, sparsity: float) -> int:
    """C = N - floor(s * N): the number of connections a layer of this shape may hold.

    Exact at any size: ``s`` is read as the number it spells (a float 0.9 as 9/10, 15 / 22 as 15/22;
    a Fraction or Decimal as it is; see :func:`purerigl.formats._base.exact_fraction`) and the floor is
    taken in integers, so ``layer_budget((32768, 32768), 0.9) == N - (9 * N) // 10``.
    """
    n_out, n_in = shape
    total = n_out * n_in
    check_sparsity(sparsity)
    return total - floor_count(sparsity, total)


def structure_count(fmt: str, shape, budget: int) -> int:
    """The structural count a format uses for a budget: nnz (csr), k (condensed), K (diagonal)."""
    n_out, n_in = shape
    if fmt == "csr":
        return budget
    if fmt == "condensed":
        if budget < n_out:
            raise FormatError(
                f"a {n_out} x {n_in} layer with {budget} connections for its {n_out} rows would keep k = 0 "
                f"inputs per row in the condensed format; lower the sparsity (1 - 1/{n_in} = {1 - 1 / n_in:.4g} "
                "keeps k = 1) or use an unstructured format"
            )
        return budget // n_out
    if fmt == "diagonal":
        L = min(n_out, n_in)
        return max(1, -(-budget // L))
    raise FormatError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMAT_NAMES)}")


def random_layer(fmt: str, shape, sparsity: float, rng):
    """A randomly connected, Kaiming-initialised sparse matrix of the format at this sparsity."""
    return random_layer_with_budget(fmt, shape, layer_budget(shape, sparsity), rng)


def random_layer_with_budget(fmt: str, shape, budget: int, rng):
    """A randomly connected, Kaiming-initialised sparse matrix of the format holding ``budget``
    connections (rounded by the format: nnz = budget, k = floor(budget / n_out), K = ceil(budget / L))."""
    if budget < 1:
        raise FormatError(f"a {shape[0]} x {shape[1]} layer needs a budget of at least 1 connection, got {budget}")
    count = structure_count(fmt, shape, budget)
    if fmt == "csr":
        return CSR.random(shape, None, rng, nnz=count)
    if fmt == "condensed":
        return Condensed.random(shape, None, rng, k=count)
    return Diagonal.random(shape, None, rng, K=count)
