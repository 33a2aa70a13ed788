"""``purerigl train --init-masks FILE``: a fresh run starts from the user's masks instead of random ones.

The file holds ``L.mask`` per sparse layer L (npz or safetensors): ``layer{i}`` in an MLP, the layer's
own name in a network (``conv1``, ``fc0``, ``block0.qkv``, ...; ``purerigl train`` prints them). A
convolution's mask is the (c_out, c_in * kh * kw) matrix of its filters or, as PyTorch holds it, the
weight's (c_out, c_in, kh, kw) shape, flattened here (column c kh kw + i kw + j, DESIGN.md 4b). Each
mask is checked against the layer's budget and the run's format by
:func:`purerigl.interop.init_structures` (a mask that does not fit: one ``Error:`` line naming the file
and the layer, exit 2). Only a fresh run reads the file: ``--resume`` restores the structure from
checkpoint.npz, and config.json keeps the file's absolute path as the ``init_masks`` option, for the
record.
"""

from __future__ import annotations

import numpy as np

from purerigl.interop import InitMaskError, init_structures, read_arrays

#: Mixed into the run's seed for the generator that draws the values at the user's masks.
VALUES_STREAM = 0x1A17


def install_init_masks(model, path, budgets, fmt: str, seed: int) -> None:
    """Replace every sparse layer's random structure by the one ``path``'s masks give, values Kaiming
    normal with each row's fan-in (drawn from ``seed``); dense layers keep their weights.

    ``model`` is an MLP (``budgets`` a list, layers ``layer{i}``) or a Network (``budgets`` a dict by
    layer name, as :func:`purerigl.cli._models.build_network` returns it).
    """
    arrays = read_arrays(path, error=InitMaskError)
    if isinstance(budgets, dict):  # a network: its layers by name, a convolution's mask maybe 4-D
        rows = model.describe()
        names = [row["name"] for row in rows]
        shapes = [tuple(row["shape"]) for row in rows]
        arrays = {key: _filter_matrix(key, a, rows, path) for key, a in arrays.items()}
        budget_list = [budgets[name] for name in names]
    else:
        names, shapes, budget_list = None, [lin.shape for lin in model.linears], budgets
    structures = init_structures(arrays, shapes, budget_list, fmt, np.random.default_rng([seed, VALUES_STREAM]),
                                 file=str(path), names=names)
    for lin, W in zip(model.linears, structures):
        if W is not None:
            lin.set_structure(W)


def _filter_matrix(key: str, a, rows: list[dict], path) -> np.ndarray:
    """A convolution's mask given in its weight's shape (c_out, c_in, kh, kw), as the filter matrix
    (c_out, c_in * kh * kw); any other array as it is (init_structures checks its shape)."""
    a = np.asarray(a)
    row = next((r for r in rows if f"{r['name']}.mask" == key), None)
    if row is None or row["layer_type"] != "conv" or a.ndim <= 2:
        return a
    weight_shape = (row["shape"][0], row["c_in"], *row["kernel"])
    if a.shape != weight_shape:
        raise InitMaskError(f"{path}: {key}: mask has shape {a.shape}; the convolution {row['name']} takes its "
                            f"weight's shape {weight_shape} or its filter matrix {tuple(row['shape'])}")
    return a.reshape(row["shape"])
