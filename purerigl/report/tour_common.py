"""What the worked examples of docs/tour.md share: the 4 x 6 layer's setting, its batch, the call
that updates a layer as :class:`purerigl.dst.updater.DSTUpdater` does, and the text tables.

:mod:`purerigl.report.tour` (the examples of every method), :mod:`purerigl.report.tour_dynadiag` and
:mod:`purerigl.report.tour_conv` build on it.
"""

from __future__ import annotations

import numpy as np

from ..dst.base import LayerUpdate
from ..dst.topology import tie_salt
from ..formats.triples import triples

SHAPE = (4, 6)  # (n_out, n_in)
BATCH = 3
BUDGET = 8  # connections: k = 2 per row (condensed), 8 entries (csr), K = 2 diagonals of length 4
ALPHA = 0.5  # drop fraction of this update
LR, MOMENTUM = 0.5, 0.9
SEED = 3
SALT = tie_salt(SEED, 0, 0)  # the tie rule's salt of the first update of the first sparse layer


def example_batch():
    """X (BATCH, n_in) float32 with one decimal, labels (BATCH,) in [0, n_out)."""
    rng = np.random.default_rng(SEED)
    X = np.round(rng.standard_normal((BATCH, SHAPE[1])), 1).astype(np.float32)
    return X, rng.integers(0, SHAPE[0], size=BATCH)


def cells_of(W) -> dict:
    """{(row, column): value} of every stored entry of W."""
    rows, cols, vals = triples(W)
    return {(int(r), int(c)): float(v) for r, c, v in zip(rows, cols, vals)}


def grid_text(cells: dict, marks: dict | None = None, fmt: str = "{:6.2f}", shape=SHAPE, rows=None, cols=None) -> str:
    """A (n_out, n_in) table in a code block: values where ``cells`` has one, ``.`` elsewhere;
    ``marks`` appends a one-character tag to some entries; ``rows`` / ``cols`` label the rows and
    columns (default ``i=0``, ``j=0``, ...)."""
    n_out, n_in = shape
    marks = marks or {}
    rows = rows or [f"i={i}" for i in range(n_out)]
    cols = cols or [f"j={j}" for j in range(n_in)]
    width = max(len(r) for r in rows)
    lines = [(" " * (width + 4) + "".join(f"{c:>6}  " for c in cols)).rstrip()]
    for i in range(n_out):
        row = f"  {rows[i]:<{width}}  "
        for j in range(n_in):
            text = fmt.format(cells[(i, j)]) if (i, j) in cells else "     ."
            row += f"{text}{marks.get((i, j), ' ')} "
        lines.append(row.rstrip())
    return "```text\n" + "\n".join(lines) + "\n```"


def diagonals_text(values, fmt: str = "{:.4f}", offsets=None) -> str:
    """'d=0 0.1667, d=1 ...': one number per diagonal, of offsets 0, 1, ... or of the given ``offsets``."""
    offsets = range(len(values)) if offsets is None else offsets
    return ", ".join(f"d={int(d)} {fmt.format(float(v))}" for d, v in zip(offsets, values))


def positions_text(ps, rows=None, cols=None) -> str:
    """'(i,j), ...' of positions, or '(row label, column label), ...' when the table is labelled."""
    if rows or cols:
        return ", ".join(f"({rows[i]}, {cols[j]})" for i, j in sorted(ps)) or "none"
    return ", ".join(f"({i},{j})" for i, j in sorted(ps)) or "none"


def result_lines(layer, optimizer, before: dict, stats: dict, rule_dropped=None, **grid) -> list[str]:
    """What changed: removed and new positions, the update's statistics, W and the momentum after.
    ``rule_dropped``: the positions the drop rule removed, to name those grown straight back;
    ``grid``: the shape and labels of the tables (:func:`grid_text`)."""
    after = cells_of(layer.W)
    dropped, grown = set(before) - set(after), set(after) - set(before)
    back = set(rule_dropped or ()) & set(after)
    momentum = optimizer.state_dict()[f"{layer.name}.values.momentum_buffer"]
    mom_cells = dict(zip(cells_of(layer.W), momentum.ravel().tolist()))
    shown = {k: stats[k] for k in sorted(stats)}
    regrown = [
        "Dropped by the rule and grown straight back, so kept with value and momentum (not new): "
        f"{positions_text(back, grid.get('rows'), grid.get('cols'))}.",
        "",
    ] if back else []
    return regrown + [
        f"Removed: {positions_text(dropped, grid.get('rows'), grid.get('cols'))}. "
        f"New: {positions_text(grown, grid.get('rows'), grid.get('cols'))}. `update()` returned `{shown}`.",
        "",
        "W after the update (`*` = new connection, value exactly 0):",
        "",
        grid_text(after, {p: "*" for p in grown}, **grid),
        "",
        "Momentum buffer after the update (remapped by `apply_structure`: zero at new entries):",
        "",
        grid_text(mom_cells, {p: "*" for p in grown}, fmt="{:6.3f}", **grid),
    ]


def dense_gradient(X, dY) -> np.ndarray:
    """The dense gradient dY^T X (n_out, n_in), for display only."""
    return dY.astype(np.float64).T @ X.astype(np.float64)


def run_update(method, layer, optimizer, budget: int = BUDGET) -> dict:
    """The call DSTUpdater.after_step makes for one layer (updater's generator seeded the same way)."""
    u = LayerUpdate(layer=layer, optimizer=optimizer, alpha=ALPHA, rng=np.random.default_rng([SEED, 0x5D57]),
                    budget=budget, is_output=False, salt=SALT)
    return method.update(u)
