"""Any stored matrix as a list of triples ``(row[e], col[e], value[e])``, in the order of ``W.values.ravel()``.

This one walk of every format is what the reference products (:mod:`purerigl.kernels.reference`), the
flat positions of the DST methods and the reports are built on.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatTypeError
from .condensed import Condensed
from .csr import CSR
from .diagonal import Diagonal


def triples(W) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of every stored entry, flat, in the order of ``W.values.ravel()``.

    - Condensed: entry (r, t) sits at (rows[r], indices[r, t]).
    - Diagonal: entry (k, t) sits at ((t + d_k) mod n_out, t) if tall or square, (t, (t + d_k) mod n_in) if wide.
    - CSR: entry e of row i (indptr[i] <= e < indptr[i+1]) sits at (i, indices[e]).
    """
    if isinstance(W, Condensed):
        rows = np.repeat(W.rows.astype(np.int64), W.k)  # (n_active * k,)
        cols = W.indices.astype(np.int64).ravel()
    elif isinstance(W, Diagonal):
        rows, cols = W.positions()  # each (K, L)
        rows, cols = rows.ravel(), cols.ravel()
    elif isinstance(W, CSR):
        rows = np.repeat(np.arange(W.n_out, dtype=np.int64), np.diff(W.indptr))  # (nnz,)
        cols = W.indices.astype(np.int64)
    else:
        raise FormatTypeError(f"W must be a purerigl Condensed, Diagonal or CSR matrix, got {type(W).__name__}")
    return rows, cols, W.values.ravel()
