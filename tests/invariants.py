"""What a DST method promises about a sparse layer after any update, as one test helper.

Used by the network and transformer training tests: after every topology update a sparse layer holds
exactly its budget in its format (CSR: nnz = budget; Condensed: the same fan-in k = budget / n_active on
every active row; Diagonal: the diagonal count the budget buys), and its matrix validates itself.
"""

from __future__ import annotations

from purerigl.formats import CSR, Condensed, Diagonal
from purerigl.formats.budget import structure_count


def check_budget_invariant(layer, fmt: str, budget: int) -> None:
    """Assert ``layer``'s sparse matrix (``layer.W``) is valid and holds ``budget`` in format ``fmt``."""
    W = layer.W
    W.validate(full=True)
    if fmt == "csr":
        assert isinstance(W, CSR) and W.nnz == budget, (layer.name, W.nnz, budget)
    elif fmt == "condensed":
        assert isinstance(W, Condensed)
        k = budget // W.n_active
        assert W.values.shape[1] == k and (W.row_fan_in()[W.rows] == k).all(), layer.name
    else:
        assert isinstance(W, Diagonal) and W.K == structure_count("diagonal", layer.shape, budget), layer.name
