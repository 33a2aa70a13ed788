"""PyTorch: ``torch.sparse_csr_tensor`` to and from purerigl, and the masked weights of a state_dict.

torch is imported inside the two tensor functions only (the ``torch`` extra); reading a state_dict
needs no torch at all when its values are NumPy arrays (a state_dict saved with
``safetensors.torch.save_file`` and read back with ``safetensors.numpy.load_file``), and takes torch
tensors as they are.

The state_dict conventions :func:`masked_weights` reads, for a module ``<name>`` (``fc1``,
``encoder.layers.0.linear1``):

- ``torch.ao.pruning``: weight ``<name>.parametrizations.weight.original``, mask
  ``<name>.parametrizations.weight.0.mask``;
- ``torch.nn.utils.prune``: weight ``<name>.weight_orig``, mask ``<name>.weight_mask``;
- a mask beside the weight: weight ``<name>.weight``, mask ``<name>.mask``;
- a separate dict of masks: a weight of any of the three, mask ``masks[<name>]``,
  ``masks[<name>.weight]`` or ``masks[<name>.mask]``.

``torch.ao.pruning`` keeps its masks out of ``model.state_dict()`` (its ``FakeSparsity.state_dict`` is
empty): they are the model's buffers ``<name>.parametrizations.weight.0.mask`` (save
``{**model.state_dict(), **dict(model.named_buffers())}``) and the sparsifier's ``state_dict()``, which
is accepted as ``masks`` as it is. The weight is the unmasked one in the first two conventions (its
entries off the mask are ignored). A weight of more than two dimensions (a convolution's
(c_out, c_in, kh, kw)) is read as the (c_out, c_in * kh * kw) matrix of its filters (DESIGN.md 4b). Keys of no convention (biases, unmasked layers, a ``<name>.mask``
buffer with no ``<name>.weight`` beside it, such as an attention mask) are left out.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..formats import CSR
from .structure import InteropError, convert, from_masked_dense, from_positions

#: (weight suffix, mask suffix) of the conventions a mask is saved beside its weight, tried in order.
CONVENTIONS = (
    (".parametrizations.weight.original", ".parametrizations.weight.0.mask"),  # torch.ao.pruning
    (".weight_orig", ".weight_mask"),  # torch.nn.utils.prune
    (".weight", ".mask"),  # a mask per weight
)
#: Weight suffixes a separate masks dict's entry may pair with, tried in order.
WEIGHT_SUFFIXES = tuple(w for w, _ in CONVENTIONS)


def _torch():
    try:
        import torch
    except ImportError:
        raise InteropError("this conversion needs PyTorch: pip install 'purerigl[torch]'") from None
    return torch


def _numpy(x, key: str) -> np.ndarray:
    """A torch tensor (any device; half and bfloat16 widened to float32, exactly) or array as NumPy."""
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed to read it
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as err:
        raise InteropError(f"{key}: not an array or tensor ({type(x).__name__}: {err})") from None


def to_torch_csr(W):
    """``torch.sparse_csr_tensor`` of any purerigl matrix: crow and col indices both int64 (torch
    wants one dtype for the two), values float32, explicit zeros kept."""
    torch = _torch()
    csr = W if isinstance(W, CSR) else convert(W, "csr")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(np.asarray(csr.indptr, dtype=np.int64).copy()),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.values.copy()),
            size=tuple(W.shape),
            dtype=torch.float32,
            check_invariants=True,
        )


def from_torch_csr(t, fmt: str = "csr"):
    """A purerigl matrix of ``fmt`` from a 2-D torch sparse tensor (CSR, or COO, coalesced first): its
    stored entries are the structure, explicit zeros included. float16/bfloat16 values are widened to
    float32; other dtypes are refused. :class:`InteropError` when ``fmt`` cannot hold the positions."""
    torch = _torch()
    if not isinstance(t, torch.Tensor):
        raise InteropError(f"expected a torch sparse tensor, got {type(t).__name__}")
    if t.layout == torch.sparse_coo:
        t = t.coalesce().to_sparse_csr()
    if t.layout != torch.sparse_csr:
        raise InteropError(f"expected a torch.sparse_csr (or sparse_coo) tensor, got layout {t.layout}; for a dense "
                           "weight with a mask use from_masked_dense(weight, mask, fmt)")
    if t.dim() != 2:
        raise InteropError(f"expected a 2-D sparse tensor, got shape {tuple(t.shape)}")
    crow = _numpy(t.crow_indices(), "crow_indices").astype(np.int64)
    cols = _numpy(t.col_indices(), "col_indices")
    values = _numpy(t.values(), "values")
    if values.dtype != np.float32:
        raise InteropError(f"tensor values are {t.dtype}; convert with .float() (purerigl computes in float32)")
    rows = np.repeat(np.arange(t.shape[0], dtype=np.int64), np.diff(crow))
    return from_positions(rows, cols, values, tuple(t.shape), fmt, where="sparse tensor")


def _matrix(a: np.ndarray) -> np.ndarray:
    """A weight as the (n_out, n_in) matrix: >2-D (a convolution's filters) flattened per output."""
    return a.reshape(a.shape[0], -1) if a.ndim > 2 else a


def _weight_key(state_dict, name: str) -> str | None:
    return next((name + w for w in WEIGHT_SUFFIXES if name + w in state_dict), None)


def _masks_dict(masks) -> dict:
    """The masks by key: ``masks`` itself, or the ``{fqn: mask}`` of a ``torch.ao.pruning`` sparsifier's
    ``state_dict()`` (``{"state": {"fc1.weight": {"mask": ...}}, "groups": [...]}``)."""
    if masks is None:
        return {}
    if "state" in masks and "groups" in masks and isinstance(masks["state"], dict):
        state = masks["state"]
        return {fqn: entry["mask"] for fqn, entry in state.items() if isinstance(entry, dict) and "mask" in entry}
    return dict(masks)


def masked_weights(state_dict, masks=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (weight, mask)}`` of every masked weight of a PyTorch ``state_dict``, in its order.

    Parameters
    ----------
    state_dict : mapping str -> torch.Tensor | ndarray
        In one of the conventions of the module docstring (``torch.ao.pruning``, ``torch.nn.utils.prune``,
        ``<name>.weight`` + ``<name>.mask``).
    masks : mapping str -> torch.Tensor | ndarray, optional
        Masks kept apart from the state_dict, keyed ``<name>``, ``<name>.weight`` or ``<name>.mask``;
        or a ``torch.ao.pruning`` sparsifier's ``state_dict()``, whose ``"state"`` holds them by
        ``<name>.weight``.

    Returns weight (float32 as in the state_dict, unmasked; half and bfloat16 widened) and mask (as
    saved: bool or 0/1 numbers), each (n_out, n_in); pass them to :func:`from_masked_dense`.
    :class:`InteropError` for a mask without its weight, a module masked twice, or a mask given but
    no masked weight found.
    """
    masks = _masks_dict(masks)
    found: dict[str, tuple[str, str, dict]] = {}  # name -> (weight key, mask key, the dict holding the mask)
    for key in state_dict:
        for w_suffix, m_suffix in CONVENTIONS:
            if key.endswith(m_suffix):
                name = key[: -len(m_suffix)]
                if name + w_suffix in state_dict:
                    found[name] = (name + w_suffix, key, state_dict)
                elif m_suffix != ".mask":  # a bare '<name>.mask' without a weight is some other buffer
                    raise InteropError(f"state_dict has the mask {key!r} but no weight {name + w_suffix!r}")
                break
    for key in masks:
        name = key
        for suffix in (".mask", ".weight"):
            if key.endswith(suffix) and _weight_key(state_dict, key[: -len(suffix)]):
                name = key[: -len(suffix)]
        weight_key = _weight_key(state_dict, name)
        if weight_key is None:
            raise InteropError(f"masks[{key!r}] matches no weight of the state_dict (looked for "
                               f"{', '.join(repr(name + w) for w in WEIGHT_SUFFIXES)})")
        if name in found:
            raise InteropError(f"{name!r} has two masks: masks[{key!r}] and the state_dict's {found[name][1]!r}")
        found[name] = (weight_key, key, masks)
    if not found:
        raise InteropError("no masked weight in the state_dict: expected '<name>.parametrizations.weight.0.mask', "
                           "'<name>.weight_mask' or '<name>.mask' keys, or a masks dict")
    out = {}
    for name, (weight_key, mask_key, source) in found.items():
        weight = _numpy(state_dict[weight_key], weight_key)
        mask = _numpy(source[mask_key], mask_key)
        if mask.shape != weight.shape:
            raise InteropError(f"{mask_key!r} has shape {mask.shape}, the weight {weight_key!r} {weight.shape}")
        if weight.ndim < 2:
            raise InteropError(f"{weight_key!r} has shape {weight.shape}; a masked weight has two dimensions or more")
        out[name] = (_matrix(weight), _matrix(mask))
    return out


def from_state_dict(state_dict, masks=None, fmt: str = "csr") -> dict:
    """``{name: matrix}``: every masked weight of a PyTorch state_dict (:func:`masked_weights`) as a
    purerigl matrix of ``fmt``, the structure read from the masks (an active weight of 0.0 is kept)."""
    return {name: from_masked_dense(w, m, fmt, where=f"{name!r}")
            for name, (w, m) in masked_weights(state_dict, masks).items()}
