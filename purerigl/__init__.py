"""purerigl: dynamic sparse training with weights that are sparse from the first step to the last.

Formats: :class:`Condensed` (constant fan-in), :class:`Diagonal` (wrap-around diagonals),
:class:`CSR` (unstructured). Operations: ``get_backend(name).matmul / matmul_t / sddmm / grad_at``.

The package is built in layers (:data:`LAYERS`, lowest first); a module imports only from its own
layer's package or from lower layers, and no imports form a cycle (``tests/test_layers.py``):

errors -> formats, data -> interop -> kernels -> nn -> optim -> dst -> training -> report -> cli
"""

from .errors import (
    BackendError,
    DensifyError,
    DTypeError,
    FormatError,
    FormatTypeError,
    OperandError,
    PureriglError,
    ShapeError,
)
from .formats import CSR, Condensed, Diagonal, SparseFormat
from .kernels import OPS, Backend, available_backends, get_backend

__version__ = "0.1.0"

#: The subpackages and modules of ``purerigl``, by layer, lowest first: each may import from its own
#: package and from the layers before it, never from a later layer or from another package of its own
#: layer (formats and data know nothing of each other).
LAYERS = (
    ("errors",),
    ("formats", "data"),  # the sparse matrices and their budgets; the data sets
    ("interop",),  # the matrices to and from masked dense, SciPy, torch, mask files
    ("kernels",),  # the operations on them, per backend
    ("nn",),  # layers, models, parameters
    ("optim",),  # optimizers and learning-rate schedules
    ("dst",),  # the DST methods, their specifications, schedule and updater
    ("training",),  # the training loop and checkpoints
    ("report",),  # summaries, plots, sweeps, the generated docs
    ("cli",),  # the purerigl command
)

__all__ = [
    "CSR",
    "LAYERS",
    "OPS",
    "Backend",
    "BackendError",
    "Condensed",
    "DTypeError",
    "DensifyError",
    "Diagonal",
    "FormatError",
    "FormatTypeError",
    "OperandError",
    "PureriglError",
    "ShapeError",
    "SparseFormat",
    "available_backends",
    "get_backend",
]
