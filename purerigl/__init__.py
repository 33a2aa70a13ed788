"""purerigl: dynamic sparse training with weights that are sparse from the first step to the last.

Formats: :class:`Condensed` (constant fan-in), :class:`Diagonal` (wrap-around diagonals),
:class:`CSR` (unstructured). Operations: ``get_backend(name).matmul / matmul_t / sddmm / grad_at``.
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

__all__ = [
    "CSR",
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
