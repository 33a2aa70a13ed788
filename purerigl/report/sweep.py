"""The bookkeeping of a method x sparsity x seed sweep: its cells, their state on disk, the table.

A sweep trains the same model on the same data with the same budget (:class:`Budget`) once per
**cell** (:class:`Cell`: a method, a sparsity, a seed), each cell in its own run directory
``OUT/cells/<cell name>/`` written by ``purerigl train``. This module only decides and reads; running
the cells (through Dask) is the job of ``purerigl sweep`` (:mod:`purerigl.cli.sweep`).

A cell directory is in one of three states (:func:`cell_state`):

- ``"done"``: ``result.json`` exists; it was written (atomically) after ``purerigl train`` exited 0, and
  holds the train arguments it ran with and the summary of its metrics. A done cell is never run again.
- ``"partial"``: ``config.json`` and ``checkpoint.npz`` exist but no result: an interrupted run, continued
  with ``purerigl train --resume`` (which ends exactly as an uninterrupted run would) after the epoch
  its checkpoint records (:func:`resume_epoch`).
- ``"new"``: anything else; the cell is trained from the start (``--overwrite``).

The table (:func:`aggregate`, :func:`markdown_table`) reports, per method and sparsity, the mean and
the sample standard deviation (ddof = 1) of the final test accuracy over the seeds that finished, and
the mean training seconds per epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..training.checkpoint_file import CheckpointError, atomic_write, read_meta
from ..errors import PureriglError
from .provenance import describe_code, run_code

#: Methods a sweep can run: "dense" (the same code with dense NumPy layers) and the DST methods.
SWEEP_METHODS = ("dense", "static", "set", "rigl", "srigl", "gse", "diag-rigl", "dynadiag")

#: Files of a cell directory that decide its state.
RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"

#: The sweep's own record of its budget, in OUT/.
SWEEP_FILE = "sweep.json"

#: What a cell's result keeps of each epoch of its metrics.jsonl (its learning curve).
CURVE_KEYS = ("epoch", "train_loss", "test_loss", "test_accuracy")


class SweepError(PureriglError, ValueError):
    """A sweep's grid or output directory is not usable (bad values, a budget that changed)."""


@dataclass(frozen=True, order=True)
class Cell:
    """One run of a sweep: a method at a sparsity with a seed (dense: sparsity 0)."""

    method: str
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        """Directory name, e.g. ``rigl-s90-seed0``, ``srigl-s99.5-seed2``, ``dense-s0-seed1``."""
        return f"{self.method}-s{round(self.sparsity * 100, 6):g}-seed{self.seed}"


def make_grid(methods, sparsities, seeds) -> list[Cell]:
    """The cells of a sweep: every non-dense method at every sparsity and seed, dense once per seed.

    Parameters
    ----------
    methods : iterable of str, from :data:`SWEEP_METHODS`
    sparsities : iterable of float, each in (0, 1); used by every method but dense
    seeds : iterable of int >= 0

    Returns
    -------
    list of Cell, sorted by (method order of :data:`SWEEP_METHODS`, sparsity, seed), no duplicates.
    """
    methods, sparsities, seeds = list(methods), [float(s) for s in sparsities], list(seeds)
    unknown = [m for m in methods if m not in SWEEP_METHODS]
    if unknown:
        raise SweepError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(SWEEP_METHODS)}")
    if not methods:
        raise SweepError("a sweep needs at least one method")
    if not seeds:
        raise SweepError("a sweep needs at least one seed")
    bad = [s for s in sparsities if not (0.0 < s < 1.0) or math.isnan(s)]
    if bad:
        raise SweepError(f"sparsities must lie strictly between 0 and 1 (0.9 means 90% zeros); got {bad}")
    if any(m != "dense" for m in methods) and not sparsities:
        raise SweepError("sparse methods need at least one sparsity")
    negative = [s for s in seeds if int(s) != s or s < 0]
    if negative:
        raise SweepError(f"seeds must be integers >= 0; got {negative}")
    cells = set()
    for method in methods:
        for seed in seeds:
            if method == "dense":
                cells.add(Cell("dense", 0.0, int(seed)))
            else:
                cells.update(Cell(method, s, int(seed)) for s in sparsities)
    return sorted(cells, key=lambda c: (SWEEP_METHODS.index(c.method), c.sparsity, c.seed))


@dataclass(frozen=True)
class Budget:
    """What every cell shares: data, model and training budget (options of ``purerigl train``)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    model: str = "mlp"
    hidden: str = "300,100"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    distribution: str = "erk"
    backend: str = "cpu"
    extra: tuple[str, ...] = field(default=())

    def train_args(self, cell: Cell) -> list[str]:
        """The ``purerigl train`` arguments of ``cell`` (no ``--out``): the budget, then the cell's own."""
        hidden = ["--hidden", self.hidden] if self.model == "mlp" else []  # only the MLP reads it
        args = [
            "--dataset", self.dataset, "--model", self.model, *hidden, "--epochs", str(self.epochs),
            "--batch-size", str(self.batch_size), "--lr", repr(self.lr), "--optimizer", self.optimizer,
            "--momentum", repr(self.momentum), "--weight-decay", repr(self.weight_decay),
            "--schedule", self.schedule, "--backend", self.backend,
        ]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        if cell.method == "dense":
            args += ["--method", "static", "--sparsity", "0"]
        else:
            args += ["--method", cell.method, "--sparsity", repr(cell.sparsity), "--distribution", self.distribution]
        return args + ["--seed", str(cell.seed), *self.extra]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extra"] = list(self.extra)
        return d

    def describe_model(self) -> str:
        """``MLP 300,100`` or the built-in network's name (for titles)."""
        return f"MLP {self.hidden}" if self.model == "mlp" else self.model


def cell_state(cell_dir: Path) -> str:
    """``"done"``, ``"partial"`` or ``"new"`` (see the module docstring)."""
    cell_dir = Path(cell_dir)
    if (cell_dir / RESULT_FILE).is_file():
        return "done"
    if (cell_dir / "config.json").is_file() and (cell_dir / "checkpoint.npz").is_file():
        return "partial"
    return "new"


def resume_epoch(cell_dir: Path) -> int | None:
    """The epoch a partial cell resumes after: the ``train.epoch`` its ``checkpoint.npz`` records.
    None where the checkpoint is missing or cannot be read (the resume itself then says why). Reads
    only the checkpoint's ``meta`` entry."""
    try:
        return int(read_meta(Path(cell_dir) / "checkpoint.npz")["train"]["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):  # damaged, foreign, or no ``train`` entry
        return None


def read_json(path: Path) -> dict:
    """A JSON file as a dict; a missing or unreadable file is a :class:`SweepError` naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SweepError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path} does not hold a JSON object")
    return data


def summarize_run(run_dir: Path) -> dict:
    """The numbers a sweep keeps of a finished ``purerigl train`` run (from its metrics.jsonl).

    Returns
    -------
    dict with ``epochs``, ``test_accuracy`` and ``test_loss`` (last epoch), ``best_test_accuracy``,
    ``seconds_per_epoch`` (mean training seconds, evaluation excluded), ``train_loss`` (last epoch) and
    ``curve``: one dict per epoch with its ``epoch``, ``train_loss``, ``test_loss`` and ``test_accuracy``
    (:data:`CURVE_KEYS`), so that a committed ``results.json`` keeps the learning curves.
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise SweepError(f"cannot read the metrics of {run_dir}: {err}") from None
    if not history:
        raise SweepError(f"{path} holds no epoch")
    last = history[-1]
    return {
        "epochs": last["epoch"],
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
        "best_test_accuracy": max(m["test_accuracy"] for m in history),
        "seconds_per_epoch": sum(m["seconds"] for m in history) / len(history),
        "curve": [{key: m[key] for key in CURVE_KEYS} for m in history],
    }


def write_result(cell_dir: Path, cell: Cell, train_args: list[str]) -> dict:
    """Record a finished cell: ``result.json`` with the cell, its train arguments, the code that trained
    it (:func:`.provenance.run_code`) and its summary."""
    result = {"cell": asdict(cell), "name": cell.name, "train_args": list(train_args), **run_code(cell_dir),
              **summarize_run(cell_dir)}
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(Path(cell_dir) / RESULT_FILE, lambda f: f.write(text.encode("utf-8")))
    failed = Path(cell_dir) / FAILED_FILE
    if failed.exists():
        failed.unlink()
    return result


def write_failure(cell_dir: Path, cell: Cell, returncode: int, log_tail: str) -> dict:
    """Record a failed attempt (``failed.json``); the next sweep tries the cell again."""
    record = {"cell": asdict(cell), "name": cell.name, "returncode": returncode, "log_tail": log_tail}
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(Path(cell_dir) / FAILED_FILE, lambda f: f.write(text.encode("utf-8")))
    return record


def check_budget(out: Path, budget: Budget) -> None:
    """Write ``OUT/sweep.json`` with the budget, or refuse an OUT whose cells ran with another budget.

    Cells of one table must share the budget; adding methods, sparsities or seeds to a sweep is fine.
    """
    path = Path(out) / SWEEP_FILE
    if path.exists():
        diff = _budget_difference(budget, read_json(path).get("budget"))
        if diff:
            raise SweepError(
                f"{out} holds a sweep with another budget (differs in: {', '.join(diff)}); "
                "use another --out, or the same options as before"
            )
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    text = json.dumps({"budget": budget.to_dict()}, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _budget_difference(budget: Budget, theirs, ignore: tuple[str, ...] = ()) -> list[str]:
    """The names of the budget entries (but ``ignore``) in which a recorded budget (a dict, or None) differs."""
    mine = budget.to_dict()
    theirs = dict(theirs) if isinstance(theirs, dict) else {}
    theirs.setdefault("model", "mlp")  # a sweep written before --model existed trained MLPs
    return sorted(k for k in set(mine) | set(theirs) if theirs.get(k) != mine.get(k) and k not in ignore)


def restore_results(out: Path, results_file: Path, budget: Budget) -> tuple[list[str], list[str]]:
    """Write the cells that a sweep's ``results.json`` holds into ``OUT/cells/`` as done cells.

    A grid continued on another machine, or after its run directories were lost, starts from the
    results committed of it: each cell of ``results_file`` gets its ``result.json`` (the same record
    the sweep wrote when the cell finished), so the sweep skips it and reports it. Only cells whose
    directory does not exist yet, or is empty, are written; a cell that is done, or holds files of
    another run (an interrupted one is resumed, not replaced), is left as it is.

    Parameters
    ----------
    out : the sweep directory (its ``sweep.json`` already checked against ``budget``)
    results_file : a ``results.json`` written by ``purerigl sweep``; its budget must equal ``budget``
        but for ``data_dir`` (the same data set's files may lie elsewhere on another machine)

    Returns
    -------
    (restored, kept): the names of the cells written, and ``"name (why)"`` for each cell left as it was.

    Raises
    ------
    SweepError : the file cannot be read, is not a sweep's results, ran with another budget, or holds a
        cell record without its method, sparsity, seed and the numbers the table reads, or named unlike
        its cell.
    """
    data = read_json(results_file)
    if not isinstance(data.get("cells"), list):
        raise SweepError(f"{results_file} is not a sweep's results.json (no list of cells)")
    # where the data set's files lie is the one entry that may differ between machines: --dataset names
    # the data, and the canonical files are checked against their checksums wherever they are read from
    diff = _budget_difference(budget, data.get("budget"), ignore=("data_dir",))
    if diff:
        raise SweepError(f"{results_file} was run with another budget (differs in: {', '.join(diff)}); "
                         "restore it into a sweep with the same options")
    restored, kept = [], []
    for result in data["cells"]:
        cell = _cell_of(result, results_file)
        cell_dir = Path(out) / "cells" / cell.name
        if cell_state(cell_dir) == "done":
            kept.append(f"{cell.name} (already done)")
        elif cell_dir.exists() and any(cell_dir.iterdir()):
            kept.append(f"{cell.name} (its directory holds another run's files)")
        else:
            cell_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(result, indent=2) + "\n"
            atomic_write(cell_dir / RESULT_FILE, lambda f: f.write(text.encode("utf-8")))
            restored.append(cell.name)
    return restored, kept


def _cell_of(result, results_file: Path) -> Cell:
    """The :class:`Cell` of one record of a results.json, checked (method known, name matching)."""
    try:
        spec = result["cell"]
        cell = Cell(str(spec["method"]), float(spec["sparsity"]), int(spec["seed"]))
        name = result["name"]
        float(result["test_accuracy"]), float(result["seconds_per_epoch"])  # what the table reads
    except (KeyError, TypeError, ValueError) as err:
        raise SweepError(f"{results_file}: a cell record lacks its cell, name, test accuracy or seconds per epoch "
                         f"({err!r})") from None
    if cell.method not in SWEEP_METHODS:
        raise SweepError(f"{results_file}: cell {name} has an unknown method {cell.method!r}")
    if name != cell.name:
        raise SweepError(f"{results_file}: the record named {name} is the cell {cell.name}")
    return cell


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (method, sparsity): mean and std of the final test accuracy over seeds, and more.

    Parameters
    ----------
    results : list of dicts as written by :func:`write_result`

    Returns
    -------
    list of dicts with ``method``, ``sparsity``, ``n`` (seeds), ``seeds``, ``accuracy_mean``,
    ``accuracy_std``, ``seconds_per_epoch``, sorted like :func:`make_grid`.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        groups.setdefault((r["cell"]["method"], float(r["cell"]["sparsity"])), []).append(r)
    rows = []
    for (method, sparsity), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["cell"]["seed"])
        mean, std = _mean_std([r["test_accuracy"] for r in rs])
        rows.append({
            "method": method, "sparsity": sparsity, "n": len(rs), "seeds": [r["cell"]["seed"] for r in rs],
            "accuracy_mean": mean, "accuracy_std": std,
            "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in rs) / len(rs),
        })
    order = {m: i for i, m in enumerate(SWEEP_METHODS)}
    return sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["sparsity"]))


def _percent(s: float) -> str:
    return f"{round(s * 100, 6):g}%"


def markdown_table(rows: list[dict], n_seeds: int | None = None) -> str:
    """The accuracy table (methods x sparsities, ``mean ± std``) and the seconds-per-epoch table.

    A cell with fewer seeds than ``n_seeds`` shows how many finished (``n=2``); a cell of one seed shows
    its accuracy alone, as one value has no spread to print; the dense baseline is one row with its
    value in every column, as papers print it.
    """
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    methods = [m for m in SWEEP_METHODS if any(r["method"] == m for r in rows)]
    by_key = {(r["method"], r["sparsity"]): r for r in rows}

    def entry(r, what):
        if r is None:
            return "-"
        if what == "acc":
            text = f"{r['accuracy_mean']:.4f}"
            if r["n"] > 1:
                text += f" ± {r['accuracy_std']:.4f}"
        else:
            text = f"{r['seconds_per_epoch']:.2f}"
        if n_seeds is not None and r["n"] < n_seeds:
            text += f" (n={r['n']})"
        return text

    lines = []
    for title, what in (("test accuracy, mean ± std over seeds", "acc"), ("training seconds per epoch", "sec")):
        lines += [f"**{title}**", "", "| method | " + " | ".join(_percent(s) for s in sparsities) + " |"]
        lines.append("| --- |" + " --- |" * len(sparsities))
        for m in methods:
            if m == "dense":
                r = by_key.get(("dense", 0.0))
                lines.append("| dense | " + " | ".join(entry(r, what) for _ in sparsities) + " |")
            else:
                lines.append(f"| {m} | " + " | ".join(entry(by_key.get((m, s)), what) for s in sparsities) + " |")
        lines.append("")
    return "\n".join(lines)


def code_summary(results: list[dict]) -> str:
    """One paragraph naming the code that trained the cells of a table (:mod:`.provenance`).

    The cells are grouped by the code that started them; a cell resumed by other code is named with
    the epoch after which it changed. A table trained by one version reads
    ``Code: all 8 cells by source 1a2b3c4d5e6f (git 8fe2546).``; cells whose runs predate the record
    read ``code not recorded``.
    """
    groups: dict[str, list[str]] = {}
    for result in results:
        name = result.get("name", "?")
        resumed = [r for r in result.get("code_resumed", []) if isinstance(r, dict)]
        if resumed:
            name += " (then " + ", ".join(f"{describe_code(r)} after epoch {r.get('after_epoch', '?')}"
                                          for r in resumed) + ")"
        groups.setdefault(describe_code(result.get("code")), []).append(name)
    if not groups:
        return ""
    if len(groups) == 1 and not any(result.get("code_resumed") for result in results):
        (version, names), = groups.items()
        cells = f"all {len(names)} cells" if len(names) > 1 else "the one cell"
        if version == describe_code(None):
            return f"Code: not recorded for {cells} (trained before runs recorded their code)."
        return f"Code: {cells} by {version}."
    parts = [f"{version}: {', '.join(names)}" for version, names in groups.items()]
    return "Code (cells by the version that started them): " + "; ".join(parts) + "."


def collect_results(out: Path, cells: list[Cell]) -> list[dict]:
    """The ``result.json`` of every done cell among ``cells`` in ``OUT/cells/``.

    A result written before results kept their ``curve`` (or their ``code``) gets it from the cell's
    ``metrics.jsonl`` (``config.json``) where that file is still there (the result file itself is left
    as it is).
    """
    results = []
    for cell in cells:
        cell_dir = Path(out) / "cells" / cell.name
        if (cell_dir / RESULT_FILE).is_file():
            result = read_json(cell_dir / RESULT_FILE)
            if "curve" not in result and (cell_dir / "metrics.jsonl").is_file():
                result["curve"] = summarize_run(cell_dir)["curve"]
            if "code" not in result:
                result.update(run_code(cell_dir))
            results.append(result)
    return results


__all__ = [
    "Budget", "CURVE_KEYS", "Cell", "FAILED_FILE", "RESULT_FILE", "SWEEP_FILE", "SWEEP_METHODS", "SweepError",
    "aggregate", "cell_state", "check_budget", "code_summary", "collect_results", "make_grid", "markdown_table", "read_json",
    "restore_results", "summarize_run", "write_failure", "write_result",
]
