"""The three sparse weight formats: Condensed (constant fan-in), Diagonal, CSR (unstructured), their
entries as (row, col, value) triples and the budget arithmetic (:mod:`.budget`). Imports only errors.
"""

from ._base import DEFAULT_MAX_DENSE_ELEMENTS, SparseFormat
from .condensed import Condensed
from .csr import CSR
from .diagonal import Diagonal

FORMATS = {"condensed": Condensed, "diagonal": Diagonal, "csr": CSR}

__all__ = ["CSR", "Condensed", "DEFAULT_MAX_DENSE_ELEMENTS", "Diagonal", "FORMATS", "SparseFormat"]
