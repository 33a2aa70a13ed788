"""``purerigl sweep``: the method x sparsity x seed table, its cells run through Dask.

Every cell is one ``purerigl train`` process (a subprocess of a Dask worker, its output in the cell's
``train.log``), writing its run directory ``OUT/cells/<cell>/``. The grid's cells are Dask tasks: a
``LocalCluster`` of worker processes on this machine by default, or an existing cluster with
``--scheduler ADDRESS`` (then ``OUT`` must be a path every worker can read and write, and purerigl
must be installed on every worker). Finished cells are skipped and interrupted ones resumed from
their checkpoint (see :mod:`purerigl.report.sweep` for the states), so running the same command again after
a crash, or with more seeds, only trains what is missing; ``--restore-from`` brings in the cells of a
``results.json`` written elsewhere (:func:`purerigl.report.sweep.restore_results`). At the end it writes
``OUT/results.md``, ``OUT/results.json`` and ``OUT/accuracy_vs_sparsity.png``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import click

from purerigl.kernels.cpu.host_heap import malloc_variables, with_malloc_variables
from purerigl.training.checkpoint import atomic_write
from purerigl.data import DATASETS
from purerigl.dst.distribution import DISTRIBUTIONS
from purerigl.optim import OPTIMIZERS
from purerigl.optim.lr_schedule import SCHEDULES
from purerigl.report.sweep import (
    SWEEP_FILE, SWEEP_METHODS, Budget, Cell, aggregate, cell_state, check_budget, code_summary, collect_results, make_grid,
    markdown_table, restore_results, resume_epoch, write_failure, write_result,
)

from ._models import MODEL_NAMES, training_defaults
from ._options import FiniteFloatRange

#: Lines of a failed cell's train.log kept in failed.json and shown.
LOG_TAIL_LINES = 5


def _comma_list(kind, name):
    """A click callback parsing ``a,b,c`` into a list of ``kind``; a bad item is a usage error (exit 2)."""

    def parse(ctx, param, value):
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return [kind(v) for v in items]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list of {name}, got {value!r}") from None

    return parse


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent (the Dask worker) dies, so a
    stopped sweep leaves no orphan training process writing into a cell. A no-op elsewhere."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# The command that trains a cell. `python -m purerigl.cli.main` would put the working directory first on
# the child's sys.path, so a sweep started inside a source checkout with a non-editable install would
# import the checkout's purerigl/ (which has no cli/: it installs as purerigl.cli) and every cell would
# fail. `-c` puts '' (the working directory) there instead, which the child removes before importing.
TRAIN_ENTRY = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "from purerigl.cli.main import main\n"
    "main(prog_name='purerigl')"
)


def run_cell(cell: Cell, cell_dir: str, train_args: list[str], threads: int, malloc_env: dict | None = None) -> dict:
    """Train one cell in a ``purerigl train`` subprocess (runs on a Dask worker); returns its record.

    A partial cell is continued with ``--resume``, a new one started with ``--overwrite`` (which clears
    a run left without a checkpoint). The subprocess gets ``threads`` Numba and BLAS threads, and as its
    glibc ``malloc`` variables exactly ``malloc_env`` (those of the ``purerigl sweep`` command; None:
    the worker's own): a Dask nanny sets ``MALLOC_TRIM_THRESHOLD_`` in its own environment and its
    workers', which would fix glibc's mmap threshold at 128 KiB for the cell and turn off the cpu
    backend's host heap setting (:mod:`purerigl.kernels.cpu.host_heap`). A cell runs as
    ``purerigl train`` would from the user's shell.
    """
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    state = cell_state(cell_dir)
    if state == "done":
        return {"status": "skipped", "name": cell.name}
    base = [sys.executable, "-c", TRAIN_ENTRY, "train"]
    if state == "partial":
        cmd = base + ["--resume", str(cell_dir), "--no-progress", "--checkpoint-every", "1"]
    else:
        cmd = base + [*train_args, "--out", str(cell_dir), "--overwrite", "--no-progress", "--checkpoint-every", "1"]
    env = dict(os.environ) if malloc_env is None else with_malloc_variables(os.environ, malloc_env)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    log_path = cell_dir / "train.log"
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ purerigl {shlex.join(cmd[3:])}\n")  # what TRAIN_ENTRY runs, as a user would type it
        log.flush()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        returncode = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False, preexec_fn=preexec
        ).returncode
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:])
        return {"status": "failed", **write_failure(cell_dir, cell, returncode, tail), "seconds": seconds}
    return {"status": "resumed" if state == "partial" else "trained", **write_result(cell_dir, cell, train_args),
            "seconds": seconds}


def _client(scheduler: str | None, workers: int):
    """A Dask client: to ``scheduler`` if given, else to a new local cluster of ``workers`` processes."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise click.UsageError(
            "purerigl sweep runs its cells through Dask; install it with: pip install 'purerigl[sweep]'"
        ) from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError, ValueError) as err:
            raise click.UsageError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
    import logging

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def _run_at_most(cells: list[Cell], slots: int, submit):
    """Yield the record of every cell as it finishes, with at most ``slots`` cells on the cluster at once.

    ``submit(cell)`` hands one cell to Dask and returns its future. Submitting the whole grid at once
    lets the scheduler place every cell on a worker up front: each cell is a task of its own name, with
    no duration estimate to balance by, and a worker whose cells finish early then sits idle while
    another still holds a queue of them (seen: one of two workers idle for 10 minutes while the other
    held the grid's last three cells). Here the rest of the grid waits in this process, and each
    finished cell lets the next one in, so it goes to whichever worker is free.
    """
    from dask.distributed import as_completed

    waiting = iter(cells)
    running = as_completed([submit(cell) for cell in islice(waiting, slots)])
    for future in running:
        following = next(waiting, None)
        if following is not None:
            running.add(submit(following))
        yield future.result()


def _write_outputs(out: Path, cells: list[Cell], budget: Budget, n_seeds: int) -> tuple[list[dict], Path | None]:
    """results.json, results.md and the PNG from every done cell of the grid; returns (rows, png or None)."""
    results = collect_results(out, cells)
    rows = aggregate(results)
    summary = {"budget": budget.to_dict(), "rows": rows, "cells": results}
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "results.json", lambda f: f.write(text.encode("utf-8")))
    header = (
        f"# Sweep: {budget.dataset}, {budget.describe_model()}, {budget.epochs} epochs\n\n"
        f"Budget: {budget.optimizer}{f' (momentum {budget.momentum})' if budget.optimizer == 'sgd' else ''}, "
        f"lr {budget.lr} {budget.schedule}, batch "
        f"{budget.batch_size}, weight decay {budget.weight_decay}, {budget.distribution} layer budgets, "
        f"backend {budget.backend}. Final-epoch test accuracy; {len(results)} of {len(cells)} cells done.\n\n"
    )
    code = code_summary(results)
    md = header + markdown_table(rows, n_seeds) + (f"\n{code}\n" if code else "")
    atomic_write(out / "results.md", lambda f: f.write(md.encode("utf-8")))
    png = None
    if rows:
        try:
            from purerigl.report.sweep_plot import plot_accuracy_vs_sparsity

            png = plot_accuracy_vs_sparsity(
                rows, out / "accuracy_vs_sparsity.png",
                title=f"{budget.dataset}, {budget.describe_model()}, {budget.epochs} epochs, mean ± std over seeds",
            )
        except ImportError:
            png = None
    return rows, png


#: ``purerigl train`` options that every cell's own arguments set (Budget.train_args, run_cell).
_SWEEP_SET = {"--dataset", "--data-dir", "--model", "--hidden", "--epochs", "--batch-size", "--lr", "--optimizer",
              "--momentum", "--weight-decay", "--schedule", "--backend", "--method", "--sparsity", "--distribution",
              "--seed", "--out", "--resume", "--overwrite"}


def _train_args(ctx, param, value):
    """--train-args split like a shell would, refusing the options the sweep sets itself."""
    try:
        args = tuple(shlex.split(value or ""))
    except ValueError as error:
        raise click.BadParameter(f"cannot split {value!r}: {error}") from None
    for arg in args:
        if arg.split("=", 1)[0] in _SWEEP_SET:
            raise click.BadParameter(f"{arg.split('=', 1)[0]} is set by the sweep itself; use its own option")
    return args


def _state_text(cell_dir: Path, state: str, epochs: int) -> str:
    """A cell's state for --dry-run: ``done``, ``new``, or ``partial`` with the epoch it resumes after."""
    if state != "partial":
        return state
    epoch = resume_epoch(cell_dir)
    if epoch is None:
        return "partial (its checkpoint cannot be read: the resume will say why)"
    return f"partial, resumes after epoch {epoch} of {epochs}"


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/sweep"),
              show_default=True, help="Sweep directory: cells/<cell>/ run directories and the results.")
@click.option("--methods", default=",".join(SWEEP_METHODS), show_default=True,
              callback=_comma_list(str, "method names"), help="Comma-separated methods ('dense' included).")
@click.option("--sparsities", default="0.8,0.9,0.95,0.98,0.99", show_default=True,
              callback=_comma_list(float, "fractions"), help="Comma-separated sparsities (fractions of zeros).")
@click.option("--seeds", default="0,1,2", show_default=True, callback=_comma_list(int, "integers"),
              help="Comma-separated seeds.")
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="mnist", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Directory holding the dataset files (as for purerigl train).")
@click.option("--model", type=click.Choice(MODEL_NAMES), default="mlp", show_default=True,
              help="Network of every cell (as purerigl train --model).")
@click.option("--hidden", default="300,100", show_default=True, help="Hidden widths of --model mlp, comma-separated.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(sorted(OPTIMIZERS)), default=None,
              help="[default: the model's, as purerigl train: sgd; adamw for vit-tiny]")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="[default: the model's, as purerigl train: 0.05; 1e-3 for vit-tiny]")
@click.option("--momentum", type=FiniteFloatRange(0, 1, max_open=True), default=0.9, show_default=True)
@click.option("--weight-decay", type=FiniteFloatRange(min=0), default=None,
              help="[default: the model's, as purerigl train: 1e-4; 0.05 for vit-tiny]")
@click.option("--schedule", type=click.Choice(sorted(SCHEDULES)), default="cosine", show_default=True)
@click.option("--distribution", type=click.Choice(sorted(DISTRIBUTIONS)), default="erk", show_default=True,
              help="How the sparsity is spread over the layers.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local Dask worker processes (cells at once)  [default: cores / --threads-per-run]")
@click.option("--threads-per-run", type=click.IntRange(min=1), default=1, show_default=True,
              help="Numba and BLAS threads of each cell's training process.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Address of an existing Dask scheduler (tcp://host:8786) instead of a local cluster; as many cells "
                   "at once as its workers have threads when the sweep starts.")
@click.option("--train-args", default="", metavar="ARGS", callback=_train_args,
              help="More `purerigl train` options for every cell, one quoted string (for example "
                   "--train-args '--gamma-sal 0.9'); not those the sweep sets itself.")
@click.option("--restore-from", "restore_from", multiple=True, metavar="RESULTS_JSON",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A results.json of this sweep (the same budget; only the data directory may differ), for example "
                   "one committed from another machine: its cells are written into OUT as done, where OUT has no "
                   "run of them. Repeatable.")
@click.option("--dry-run", is_flag=True, help="List the cells and their state; train nothing.")
@click.option("--report-only", is_flag=True,
              help="Write results.md, results.json and the plot from the cells of the grid already done (a sweep "
                   "stopped early: missing seeds are marked); train nothing.")
def sweep(out, methods, sparsities, seeds, dataset, data_dir, model, hidden, epochs, batch_size, optimizer, lr,
          momentum, weight_decay, schedule, distribution, workers, threads_per_run, scheduler, train_args,
          restore_from, dry_run, report_only):
    """Train a grid of methods x sparsities x seeds and write the accuracy table and plot.

    Cells already done in OUT are skipped and interrupted ones resumed, so the same command can be
    run again to finish or extend a sweep. Exit 1 if any cell failed (its train.log says why).
    """
    from purerigl.nn import parse_hidden

    parse_hidden(hidden)  # a bad --hidden stops here (exit 2), not in every cell
    model_defaults = training_defaults(model)  # what purerigl train would use for this model (AdamW for the ViT)
    optimizer = model_defaults["optimizer"] if optimizer is None else optimizer
    lr = model_defaults["lr"] if lr is None else lr
    weight_decay = model_defaults["weight_decay"] if weight_decay is None else weight_decay
    cells = make_grid(methods, sparsities, seeds)
    budget = Budget(
        dataset=dataset, data_dir=None if data_dir is None else str(Path(data_dir).resolve()), model=model,
        hidden=hidden, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, distribution=distribution, extra=train_args,
    )
    if restore_from:
        if dry_run:
            raise click.UsageError("--restore-from writes cells into OUT; it cannot be combined with --dry-run")
        check_budget(out, budget)  # OUT's own budget first: exit 2 before anything is written
        for path in restore_from:
            restored, kept = restore_results(out, path, budget)
            click.echo(f"restored {len(restored)} cell(s) from {path}"
                       + (f"; left as they were: {', '.join(kept)}" if kept else ""))
    states = {cell: cell_state(out / "cells" / cell.name) for cell in cells}
    todo = [cell for cell in cells if states[cell] != "done"]
    left = f"{len(todo)} not done (report only: nothing is trained)" if report_only else f"{len(todo)} to run"
    click.echo(f"sweep {out}: {len(cells)} cells, {len(cells) - len(todo)} done, {left}")
    if dry_run:
        click.echo(f"budget: {budget.optimizer}, lr {budget.lr} {budget.schedule}, weight decay {budget.weight_decay}, "
                   f"{budget.epochs} epochs, batch {budget.batch_size}")
        for cell in cells:
            click.echo(f"  {cell.name:28s} {_state_text(out / 'cells' / cell.name, states[cell], budget.epochs)}")
        return
    if report_only:
        if not (out / SWEEP_FILE).exists():
            raise click.UsageError(f"{out} holds no sweep ({SWEEP_FILE} is missing): nothing to report")
        check_budget(out, budget)  # the same budget as the cells' own, or exit 2
        todo = []
    check_budget(out, budget)
    failed = []
    if todo:
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) // threads_per_run)
        malloc_env = malloc_variables(os.environ)  # the user's, read before a Dask nanny adds its own
        client, cluster = _client(scheduler, workers)
        try:
            # seed-major order (all of seed 0 first): a sweep stopped early still covers the whole grid
            todo.sort(key=lambda c: (c.seed, cells.index(c)))
            slots = workers if cluster is not None else max(1, sum(client.nthreads().values()))

            def submit(cell):
                return client.submit(run_cell, cell, str((out / "cells" / cell.name).resolve()),
                                     budget.train_args(cell), threads_per_run, malloc_env,
                                     key=f"purerigl-{cell.name}-{time.time_ns()}", pure=False)

            for done, record in enumerate(_run_at_most(todo, slots, submit), 1):
                if record["status"] == "failed":
                    failed.append(record)
                    click.echo(f"[{done}/{len(todo)}] {record['name']}: FAILED (exit {record['returncode']}), see "
                               f"{out / 'cells' / record['name'] / 'train.log'}")
                else:
                    click.echo(f"[{done}/{len(todo)}] {record['name']}: {record['status']}, test accuracy "
                               f"{record.get('test_accuracy', float('nan')):.4f}, {record['seconds']:.0f} s")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    rows, png = _write_outputs(out, cells, budget, len(set(seeds)))
    click.echo(f"wrote {out / 'results.md'}, {out / 'results.json'}" + (f", {png}" if png else
               " (no plot: pip install 'purerigl[plot]')"))
    if failed:
        raise click.ClickException(f"{len(failed)} cell(s) failed: {', '.join(r['name'] for r in failed)}")
