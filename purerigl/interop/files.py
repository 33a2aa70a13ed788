"""Named arrays in files, and the masks a training run starts from (``purerigl train --init-masks``).

A masks file is a ``.npz`` (read without pickles) or ``.safetensors`` file (with the ``safetensors``
extra) holding ``L.mask`` (n_out, n_in), bool or 0/1, for each layer L of the run, named as purerigl
names them: in an MLP ``layer0`` is the first linear layer (n_features -> first hidden width),
``layer1`` the next, and so on; in a network (``--model lenet5`` & co.) the layer's own name
(``conv1``, ``fc0``, ...), a convolution's mask the (c_out, c_in * kh * kw) matrix of its filters or
its weight's (c_out, c_in, kh, kw) shape (the CLI flattens it, ``cli/_init_masks.py``). Other keys are
ignored, so a BEFORE file of ``purerigl verify-update`` serves as it is.

Each mask is held to what the run would have built at random (:func:`init_structures`):

- a sparse layer needs its mask, and the mask must hold the layer's budget C (from ``--sparsity`` and
  ``--distribution``) as the run's format rounds it: exactly C positions (csr); rows of k positions or
  none, k = floor(C / rows that are not empty) (condensed, the rule SRigL keeps); K = max(1, ceil(C / L))
  whole diagonals (diagonal, see :mod:`purerigl.formats.budget`);
- a layer the run keeps dense (``--dense-first``, ``--dense-last``, ``--sparsity 0``) needs no mask; one
  given must be all ones.

The values at the mask are drawn as a random layer's are: Kaiming normal with each row's own fan-in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats._base import kaiming_values
from ..formats.budget import structure_count
from ..formats.triples import triples
from .structure import InteropError, _as_mask, from_positions


class InitMaskError(InteropError):
    """A masks file that does not fit the run: a missing or extra layer, a mask of the wrong shape, a
    count that is not the layer's budget, a mask the format cannot hold; the message names the file
    and the layer."""


def read_arrays(path, error=InteropError) -> dict[str, np.ndarray]:
    """The named arrays of a ``.npz`` (no pickles) or ``.safetensors`` file, in file order; ``error``
    (a class) is raised, naming the file, when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise error(f"{path}: no such file")
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except Exception as err:  # a corrupt or pickled archive is bad input, said in one line
            raise error(f"{path}: cannot read it as .npz ({type(err).__name__}: {err})") from None
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise error(f"{path}: reading .safetensors needs the safetensors package "
                        "(pip install 'purerigl[safetensors]'), or save .npz") from None
        try:
            return dict(load_file(str(path)))
        except Exception as err:
            raise error(f"{path}: cannot read it as .safetensors ({type(err).__name__}: {err})") from None
    raise error(f"{path}: unknown file type {suffix or '(none)'!r}; give a .npz or .safetensors file")


def _count_rule(fmt: str, shape, budget: int, W) -> str | None:
    """Why ``W`` (built from a mask) does not hold the budget as ``fmt`` rounds it; None if it does."""
    n_out, n_in = shape
    if fmt == "csr":
        return None if W.nnz == budget else f"holds {W.nnz} positions, the layer's budget is {budget}"
    if fmt == "condensed":
        if W.n_active == 0:
            return f"is empty; the layer's budget is {budget}"
        k = budget // W.n_active
        if W.k == k:
            return None
        return (f"holds k = {W.k} per row in {W.n_active} rows; the layer's budget {budget} over {W.n_active} rows "
                f"gives k = floor({budget} / {W.n_active}) = {k}")
    K = structure_count("diagonal", shape, budget)
    if W.K == K:
        return None
    return (f"holds {W.K} whole diagonals; the layer's budget {budget} gives K = max(1, ceil({budget} / "
            f"{min(n_out, n_in)})) = {K}")


def init_structures(arrays: dict, shapes, budgets, fmt: str, rng, file="masks", names=None) -> list:
    """One matrix of ``fmt`` per layer of the run, built from the file's masks; None for a dense layer.

    Parameters
    ----------
    arrays : dict str -> ndarray
        The file's arrays (:func:`read_arrays`), ``{name}.mask`` for each layer name.
    shapes : list of (n_out, n_in)
    budgets : list of int
        The layers' connection budgets C (a layer with C = n_out * n_in is dense).
    fmt : {"csr", "condensed", "diagonal"}
        The run's storage format.
    rng : numpy Generator
        Draws the values: Kaiming normal N(0, 2 / fan_in) with each row's fan-in.
    file : str
        The file's name, for the messages.
    names : list of str, optional
        The layers' names (a network's: ``conv1``, ``fc0``, ...); default ``layer0``, ``layer1``, ...
        (an MLP's).

    Raises :class:`InitMaskError` (one line naming the file and the layer) for a mask that is missing,
    of another shape, not bool (or 0/1), that the format cannot hold or whose count is not the budget's,
    and for a mask of a layer the run does not have.
    """
    names = [f"layer{i}" for i in range(len(shapes))] if names is None else list(names)
    extra = [key for key in arrays if key.endswith(".mask") and key[: -len(".mask")] not in names]
    if extra:
        raise InitMaskError(f"{file}: {extra[0]!r} names no layer of this run (its layers: {', '.join(names)})")
    out = []
    for name, shape, budget in zip(names, shapes, budgets):
        key, (n_out, n_in) = f"{name}.mask", shape
        dense = budget >= n_out * n_in
        if key not in arrays:
            if not dense:
                raise InitMaskError(f"{file}: no {key!r} for the sparse layer {name} ({n_out} x {n_in}, "
                                    f"budget {budget})")
            out.append(None)
            continue
        try:
            mask = _as_mask(arrays[key], shape, f"{file}: {key}")
        except InteropError as err:
            raise InitMaskError(str(err)) from None
        if dense:
            if not mask.all():
                raise InitMaskError(f"{file}: {key}: {name} is dense in this run ({n_out} x {n_in}) but its mask "
                                    f"holds {int(mask.sum())} of {n_out * n_in} positions")
            out.append(None)
            continue
        rows, cols = np.nonzero(mask)
        try:
            W = from_positions(rows, cols, np.zeros(rows.size, np.float32), shape, fmt, where=f"{file}: {key}")
        except InteropError as err:
            raise InitMaskError(str(err)) from None
        why = _count_rule(fmt, shape, int(budget), W)
        if why is not None:
            raise InitMaskError(f"{file}: {key} ({fmt}, {n_out} x {n_in}) {why}")
        r, _, _ = triples(W)
        W.values.reshape(-1)[...] = kaiming_values(rng, W.row_fan_in()[r])
        out.append(W)
    return out
