"""How large DynaDiag's gated layers are, epoch by epoch: why a deep network without normalisation
collapses at the freeze at 90% and never learns at 98% (issue 16, LeNet-5).

Every run is built exactly as ``purerigl train`` builds it (its options parsed by the command itself,
:func:`dynadiag_compare.build`) and trained in this one process. At the initialisation and at the end of every epoch the
script reads each diagonal layer's *effective* weight, the stored values times their gates
(``W_eff = gate_d V_d`` on diagonal d while soft, ``V`` once frozen or for a plain diagonal layer), and
reports its **gain**, the median over the output rows of the row's L2 norm:

.. math:: \\mathrm{gain} = \\operatorname{median}_i \\lVert W_{\\mathrm{eff}}[i, :] \\rVert_2

He (Kaiming) initialisation gives every row E||w_i||^2 = fan_in * 2 / fan_in = 2, a gain of sqrt(2)
whatever the fan-in; a ReLU layer with gain g scales its input's second moment by about g^2 / 2. So
``prod(gain / sqrt(2))`` over the sparse layers, printed as ``net``, says how much smaller (or larger)
than a He-initialised network the sparse layers make the signal, and the gradient of the layers before
them. Dense layers are not counted; a run without diagonal layers reports none (net "-").
The ``init`` row is the network as built: a run frozen ``at_start`` freezes inside its first epoch.

    python benchmarks/dynadiag_gain.py --data-dir ../shared/data --sparsity 0.98 --sparsity 0.9
    python benchmarks/dynadiag_gain.py --run "dynadiag --optimizer adam --lr 1e-3" --sparsity 0.98

The first epoch of the first run includes Numba's compilation; no timing is reported.
"""

from __future__ import annotations

import json
import shlex

import click
import numpy as np
from dynadiag_compare import build  # benchmarks/ is the script's directory, so on sys.path

from purerigl.formats import Diagonal
from purerigl.kernels.host_arrays import to_host
from purerigl.nn import GatedDiagonalLinear

RUNS = (
    "dynadiag",  # window storage, keep freeze: the defaults
    "dynadiag --dynadiag-soft all",  # all P diagonals stored while soft: the official code
    "dynadiag --optimizer adam --lr 1e-3",  # the official optimizer on the weights too
    "dynadiag --dynadiag-freeze-values fold",
    "dynadiag --dynadiag-freeze at_start",  # frozen before the first step: a fresh K-diagonal network
    "diag-rigl",
)


def row_gain(W: Diagonal, values: np.ndarray) -> float:
    """Median over the rows of the row's L2 norm, for the diagonal matrix with ``W``'s offsets holding
    ``values`` (K_stored, L)."""
    rows, _ = W.positions()  # (K_stored, L): the row of every stored value
    row_sq = np.bincount(rows.ravel(), weights=(values**2).ravel(), minlength=W.shape[0])  # (n_out,)
    return float(np.median(np.sqrt(row_sq)))


def layer_state(lin) -> dict:
    """One diagonal layer now: K stored / P, the gain of its effective weight, and while soft the mean
    gate of the stored diagonals and the gain of the values alone (what a ``keep`` freeze hands over
    for the diagonals it keeps)."""
    W = lin.W
    values = np.asarray(to_host(W.values), dtype=np.float64)  # (K_stored, L)
    gated = isinstance(lin, GatedDiagonalLinear)
    state = {"layer": lin.name, "stored": int(W.K), "P": int(W.P), "gate": None, "value_gain": None,
             "phase": ("frozen" if lin.frozen else "soft") if gated else "plain"}
    if gated and not lin.frozen:
        g = lin.gates()  # (K_stored,)
        state.update(K=lin.k, gate=float(g.mean()), value_gain=row_gain(W, values),
                     gain=row_gain(W, values * g[:, None]))
    else:
        state.update(K=int(W.K), gain=row_gain(W, values))
    return state


def network_state(trainer) -> tuple[list[dict], float | None]:
    """Every diagonal layer's :func:`layer_state` and ``net``, the product of gain / sqrt(2)."""
    layers = [layer_state(lin) for lin in trainer.model.linears if isinstance(getattr(lin, "W", None), Diagonal)]
    net = float(np.prod([p["gain"] / np.sqrt(2.0) for p in layers])) if layers else None
    return layers, net


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def describe(layers: list[dict]) -> str:
    out = []
    for p in layers:
        text = f"{p['layer']} K={p['K']}/{p['P']} gain {p['gain']:.3g}"
        if p["phase"] == "soft":
            text += f" (gate {p['gate']:.3g}, values {p['value_gain']:.3g})"
        elif p["phase"] == "frozen":
            text += " frozen"
        out.append(text)
    return "; ".join(out)


@click.command()
@click.option("--data-dir", default="../shared/data", show_default=True)
@click.option("--dataset", default="mnist", show_default=True)
@click.option("--model", default="lenet5", show_default=True)
@click.option("--sparsity", "sparsities", type=float, multiple=True, default=(0.98, 0.9), show_default=True)
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--freeze-epoch", type=int, default=4, show_default=True,
              help="--dynadiag-freeze-epoch of the runs that freeze at an epoch.")
@click.option("--subset", type=int, default=6000, show_default=True, help="--train-subset of every run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--run", "runs", multiple=True, default=RUNS, show_default=True,
              help="A method and its options, as given to purerigl train (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(data_dir, dataset, model, sparsities, epochs, freeze_epoch, subset, seed, runs, json_path):
    rows = []
    for sparsity in sparsities:
        for run in runs:
            method, *options = shlex.split(run)
            if method == "dynadiag" and "--dynadiag-freeze" not in options:
                options += ["--dynadiag-freeze-epoch", str(freeze_epoch)]
            args = ["--dataset", dataset, "--data-dir", data_dir, "--model", model, "--method", method,
                    "--sparsity", str(sparsity), "--epochs", str(epochs), "--train-subset", str(subset),
                    "--distribution", "erk", "--seed", str(seed), *options]
            trainer = build(list(args))  # click consumes the list it parses
            print(f"\n## {run}, {sparsity:.0%}\n$ purerigl train {shlex.join(args)}", flush=True)

            layers, net = network_state(trainer)
            rows.append({"run": run, "sparsity": sparsity, "epoch": 0, "train_loss": None, "test_accuracy": None,
                         "layers": layers, "net": net})
            print(f"init:    net {_number(net)}  |  {describe(layers)}", flush=True)

            def on_epoch(tr, metrics, run=run, sparsity=sparsity):
                layers, net = network_state(tr)
                row = {"run": run, "sparsity": sparsity, "epoch": metrics["epoch"],
                       "train_loss": metrics["train_loss"], "test_accuracy": metrics["test_accuracy"],
                       "layers": layers, "net": net}
                rows.append(row)
                print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} test acc "
                      f"{row['test_accuracy']:.4f}  net {_number(net)}  |  {describe(layers)}", flush=True)

            trainer.fit(on_epoch=on_epoch)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
