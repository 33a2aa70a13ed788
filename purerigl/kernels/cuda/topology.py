"""The value and optimizer-state remap of a topology change, on the device.

:func:`purerigl.dst.apply_structure` matches the positions of the old and the new structure by their
flat index ``row * n_in + col``: a position present in both keeps its value and optimizer state, a
new one starts at exactly 0 (rules 1 and 2 of :mod:`purerigl.dst.topology`). On the device the flat
keys of both structures are sorted, so each new entry finds its old position by binary search (one
thread per new entry, O(nnz_new log nnz_old), nothing dense):

- :func:`remap_by_position` does the search and the copy of one array in one launch;
- :func:`source_by_position` does only the search, returning the source indices of
  :func:`purerigl.kernels.host_topology.source_of`, and :func:`remap_by_source` copies any number of arrays
  (the values and each optimizer state array) with them, like :meth:`purerigl.optim.Optimizer.remap_state`.

Key order. Condensed and CSR store their entries in ascending flat order (rows ascending, columns
strictly increasing within a row), so their keys are sorted as stored. A Diagonal stores them by
diagonal, not in flat order: sort its keys (and permute its arrays alike) before calling these, or
pass the sorted keys' permutation through :func:`remap_by_source`.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ._device import find_sorted
from ._launch import cuda, empty, launch
from .elementwise import check_device, flat

__all__ = ["remap_by_position", "remap_by_source", "source_by_position"]


@cuda.jit
def _remap_kernel(old_keys, old_vals, new_keys, out):
    """out[e] = old_vals[j] where old_keys[j] == new_keys[e], else 0; one thread per new entry e."""
    for e in range(cuda.grid(1), new_keys.shape[0], cuda.gridsize(1)):
        j = find_sorted(old_keys, 0, old_keys.shape[0], new_keys[e])
        out[e] = old_vals[j] if j >= 0 else np.float32(0.0)


@cuda.jit
def _source_kernel(old_keys, new_keys, source):
    """source[e] = j where old_keys[j] == new_keys[e], else -1; one thread per new entry e."""
    for e in range(cuda.grid(1), new_keys.shape[0], cuda.gridsize(1)):
        source[e] = find_sorted(old_keys, 0, old_keys.shape[0], new_keys[e])


@cuda.jit
def _gather_kernel(source, old_vals, out):
    """out[e] = old_vals[source[e]] if source[e] >= 0 else 0; one thread per new entry e."""
    for e in range(cuda.grid(1), source.shape[0], cuda.gridsize(1)):
        j = source[e]
        out[e] = old_vals[j] if j >= 0 else np.float32(0.0)


def _check_keys(old_keys_d, new_keys_d):
    check_device("old_keys", old_keys_d, np.int64, ndim=1)
    check_device("new_keys", new_keys_d, np.int64, ndim=1)


def _check_out(out_d, n_new: int):
    if out_d is None:
        return empty((n_new,), np.float32)
    check_device("out", out_d)
    if out_d.size != n_new:
        _raise_size("out", out_d, n_new)
    return out_d


def _raise_size(name: str, A, n: int):
    """Raise the ShapeError of an array that should hold ``n`` entries."""
    raise ShapeError(f"{name} has shape {tuple(A.shape)} ({A.size} entries), expected {n} entries")


def remap_by_position(old_keys_d, old_vals_d, new_keys_d, out_d=None):
    """Carry an array across a topology change: old value where the position survives, else 0.

    Mirrors the value copy of :func:`purerigl.dst.apply_structure` (``source_of`` then
    ``new_values[present] = old.values.ravel()[source[present]]``) and, per state array,
    :meth:`purerigl.optim.Optimizer.remap_state`.

    .. math:: \\mathrm{out}[e] = \\begin{cases} \\mathrm{old\\_vals}[j] & \\text{if }
              \\mathrm{old\\_keys}[j] = \\mathrm{new\\_keys}[e] \\\\ 0 & \\text{if no such } j \\end{cases}

    One thread per new entry, a binary search in ``old_keys``.

    Parameters
    ----------
    old_keys_d : int64 device array, shape (n_old,)
        Flat positions ``row * n_in + col`` of the old entries, **sorted ascending and unique** (not
        checked: no pass over the data; unsorted keys give wrong results).
    old_vals_d : float32 device array with n_old entries (any shape, C-contiguous), in key order
    new_keys_d : int64 device array, shape (n_new,)
        Flat positions of the new entries, also expected **sorted ascending and unique** (the layout
        of the new structure; each entry is searched independently, so the search itself only needs
        ``old_keys`` sorted).
    out_d : float32 device array with n_new entries (any shape), optional
        Overwritten; a new (n_new,) array if omitted. Must not be ``old_vals_d``.

    Returns
    -------
    out_d : float32 device array
    """
    _check_keys(old_keys_d, new_keys_d)
    check_device("old_vals", old_vals_d)
    if old_vals_d.size != old_keys_d.shape[0]:
        _raise_size("old_vals", old_vals_d, old_keys_d.shape[0])
    n_new = int(new_keys_d.shape[0])
    out_d = _check_out(out_d, n_new)
    if n_new:
        launch(_remap_kernel, n_new, old_keys_d, flat(old_vals_d), new_keys_d, flat(out_d))
    return out_d


def source_by_position(old_keys_d, new_keys_d, out_d=None):
    """For each new entry, the index of the same position among the old entries, or -1.

    Mirrors :func:`purerigl.kernels.host_topology.source_of` for keys in ascending order (there the old keys
    are sorted by ``argsort``; here they must already be sorted, and the index is into them).

    .. math:: \\mathrm{source}[e] = j \\text{ if } \\mathrm{old\\_keys}[j] = \\mathrm{new\\_keys}[e]
              \\text{ else } -1

    Parameters
    ----------
    old_keys_d, new_keys_d : int64 device arrays, shapes (n_old,) and (n_new,)
        Sorted ascending and unique, as in :func:`remap_by_position`.
    out_d : int64 device array, shape (n_new,), optional

    Returns
    -------
    source_d : int64 device array, shape (n_new,)
    """
    _check_keys(old_keys_d, new_keys_d)
    n_new = int(new_keys_d.shape[0])
    if out_d is None:
        out_d = empty((n_new,), np.int64)
    else:
        check_device("out", out_d, np.int64, shape=(n_new,))
    launch(_source_kernel, n_new, old_keys_d, new_keys_d, out_d)
    return out_d


def remap_by_source(source_d, old_vals_d, out_d=None):
    """Gather an array through source indices, 0 where the source is -1.

    Mirrors :meth:`purerigl.optim.Optimizer.remap_state` for one state array (and the value copy of
    :func:`purerigl.dst.apply_structure`).

    .. math:: \\mathrm{out}[e] = \\mathrm{old}[\\mathrm{source}[e]] \\text{ if }
              \\mathrm{source}[e] \\ge 0 \\text{ else } 0

    Parameters
    ----------
    source_d : int64 device array, shape (n_new,), entries in [-1, n_old) (not checked)
    old_vals_d : float32 device array with n_old entries (any shape, C-contiguous)
    out_d : float32 device array with n_new entries (any shape), optional; must not be ``old_vals_d``

    Returns
    -------
    out_d : float32 device array
    """
    check_device("source", source_d, np.int64, ndim=1)
    check_device("old_vals", old_vals_d)
    n_new = int(source_d.shape[0])
    out_d = _check_out(out_d, n_new)
    if n_new:
        launch(_gather_kernel, n_new, source_d, flat(old_vals_d), flat(out_d))
    return out_d
