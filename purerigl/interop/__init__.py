"""Interop: purerigl's sparse matrices to and from what other code holds. Imports only errors and formats
(its own layer sits right above them, below kernels), so every layer above may use it; torch and
safetensors are imported lazily, inside the functions that need them (purerigl imports without either).

- :mod:`.structure`: a matrix in any format from (row, col, value) triples, from a masked-dense
  ``(weight, mask)`` pair (:func:`from_masked_dense`; the structure is the mask, never the nonzero
  values) and back (:func:`to_masked_dense`, behind a size limit), between formats (:func:`convert`),
  from and to SciPy (:func:`from_scipy`, :func:`to_scipy`). A mask the format cannot hold raises
  :class:`InteropError` naming what does not fit.
- :mod:`.pytorch`: to and from ``torch.sparse_csr_tensor``; the masked weights of a PyTorch state_dict
  in the conventions researchers save (``torch.ao.pruning``, ``torch.nn.utils.prune``, a mask per
  weight, or a separate dict of masks: :func:`masked_weights`).
- :mod:`.files`: named arrays of ``.npz`` / ``.safetensors`` files, and the masks a run starts from
  (``purerigl train --init-masks``) checked against the layers' budgets and format
  (:func:`init_structures`).

The walk-through is docs/interop.md. ``purerigl export`` (a model file to ``.safetensors``) lives in
the CLI, which may read checkpoints.
"""

from .files import InitMaskError, init_structures, read_arrays
from .pytorch import from_state_dict, from_torch_csr, masked_weights, to_torch_csr
from .structure import (
    InteropError,
    convert,
    from_masked_dense,
    from_positions,
    from_scipy,
    to_masked_dense,
    to_scipy,
)

__all__ = [
    "InitMaskError", "InteropError", "convert", "from_masked_dense", "from_positions", "from_scipy",
    "from_state_dict", "from_torch_csr", "init_structures", "masked_weights", "read_arrays", "to_masked_dense",
    "to_scipy", "to_torch_csr",
]
