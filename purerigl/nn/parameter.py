"""Parameter: a trainable array together with its gradient.

A sparse layer's stored ``values`` array *is* its weight parameter's ``value`` (the same object), so
an optimizer updating ``value`` in place updates the sparse matrix. After a topology change the layer
installs new arrays and tells the optimizer how the old entries map to the new ones
(``Optimizer.remap_state``).
"""

from __future__ import annotations

import numpy as np


class Parameter:
    """A named float32 array ``value`` with a gradient ``grad`` of the same shape.

    Parameters
    ----------
    name : str
        Unique within a model (e.g. ``"layer0.values"``); optimizer state and checkpoints use it.
    value : float32 ndarray
        Updated in place by optimizers.
    decay : bool
        Whether weight decay applies to this parameter.
    """

    def __init__(self, name: str, value: np.ndarray, decay: bool = True):
        self.name = name
        self.value = value
        self.grad = np.zeros_like(value)
        self.decay = decay

    def replace(self, value: np.ndarray) -> None:
        """Install a new value array (after a topology change); the gradient is reset to zeros."""
        self.value = value
        self.grad = np.zeros_like(value)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.value.shape})"
