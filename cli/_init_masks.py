"""``purerigl train --init-masks FILE``: a fresh run starts from the user's masks instead of random ones.

The file holds ``layer{i}.mask`` per layer i (npz or safetensors); each is checked against the layer's
budget and the run's format by :func:`purerigl.interop.init_structures` (a mask that does not fit: one
``Error:`` line naming the file and the layer, exit 2). Only a fresh run reads the file: ``--resume``
restores the structure from checkpoint.npz, and config.json keeps the file's absolute path as the
``init_masks`` option, for the record.
"""

from __future__ import annotations

import numpy as np

from purerigl.interop import InitMaskError, init_structures, read_arrays

#: Mixed into the run's seed for the generator that draws the values at the user's masks.
VALUES_STREAM = 0x1A17


def install_init_masks(model, path, budgets, fmt: str, seed: int) -> None:
    """Replace every sparse layer's random structure by the one ``path``'s masks give, values Kaiming
    normal with each row's fan-in (drawn from ``seed``); dense layers keep their weights."""
    shapes = [lin.shape for lin in model.linears]
    arrays = read_arrays(path, error=InitMaskError)
    structures = init_structures(arrays, shapes, budgets, fmt, np.random.default_rng([seed, VALUES_STREAM]),
                                 file=str(path))
    for lin, W in zip(model.linears, structures):
        if W is not None:
            lin.set_structure(W)
