"""verify-update's input: the arrays of the BEFORE and AFTER files, checked per layer, and each layer's
structure built from its mask (never from nonzero values) in the storage of its method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import PureriglError
from ...formats import CSR, Condensed, Diagonal
from ...interop.files import read_arrays as interop_read_arrays
from ...kernels.host_conv import conv_output_size, im2col
from ..spec import MAX_DENSE_GRADIENT, dense_gradient, positions

#: The methods verify-update checks, and the storage each layer is built in from its mask.
LAYER_FORMATS = {"rigl": "csr", "srigl": "condensed", "set": "csr", "gse": "csr", "diag-rigl": "diagonal"}
#: Methods whose growth is drawn at random: only the determined parts are checked.
RANDOM_METHODS = ("set", "gse")
#: Entries of one patch matrix when a convolution's G is formed from its images (samples in chunks).
PATCH_CHUNK = 1 << 22


class VerifyInputError(PureriglError, ValueError):
    """Bad input to verify-update: a missing key, a wrong shape or dtype, a mask the method's format
    cannot hold; the message names the file, the layer and the key."""


@dataclass
class LayerInput:
    """One layer's update as the user dumped it (validated by :func:`layer_inputs`).

    weight, mask : (n_out, n_in) float32 and bool, before the update (weight zero off the mask); a
        convolution's (c_out, c_in, kh, kw) arrays are held as the (c_out, c_in * kh * kw) matrix of
        its filters
    G : (n_out, n_in) float64 or None, the gradient the update scores (None: SET without one)
    after_weight, after_mask : the same after the update
    is_output : the network's last layer (SRigL never ablates it)
    budget : the layer's connection budget C (default: the active positions before)
    candidates : GSE's drawn candidates, sorted distinct flat positions, or None
    kernel_shape : a convolution's weight shape without its first axis, e.g. (c_in, kh, kw), or None
        for a linear layer
    """

    name: str
    weight: np.ndarray
    mask: np.ndarray
    G: np.ndarray | None
    after_weight: np.ndarray
    after_mask: np.ndarray
    is_output: bool = False
    budget: int = 0
    candidates: np.ndarray | None = None
    kernel_shape: tuple | None = None


def read_arrays(path) -> dict:
    """The named arrays of a ``.npz`` (no pickles) or ``.safetensors`` file (with the ``safetensors``
    package), in file order (:func:`purerigl.interop.read_arrays`, raising :class:`VerifyInputError`)."""
    return interop_read_arrays(path, error=VerifyInputError)


def _layer_names(arrays: dict) -> list[str]:
    """Layer names L of the keys ``L.weight`` and ``L.mask``, in order of appearance (L may hold dots)."""
    names = {}
    for key in arrays:
        layer, _, item = key.rpartition(".")
        if layer and item in ("weight", "mask"):
            names.setdefault(layer, None)
    return list(names)


class _Reader:
    """Checked access to one file's arrays, every error naming the file, the layer and the key."""

    def __init__(self, arrays: dict, file: str, layer: str):
        self.arrays, self.file, self.layer = arrays, file, layer

    def fail(self, key: str, what: str):
        raise VerifyInputError(f"{self.file}: layer {self.layer!r}, key {key!r}: {what}")

    def has(self, item: str) -> bool:
        return f"{self.layer}.{item}" in self.arrays

    def get(self, item: str, shape=None, kind: str = "float32") -> np.ndarray:
        key = f"{self.layer}.{item}"
        if key not in self.arrays:
            raise VerifyInputError(f"{self.file}: layer {self.layer!r} has no key {key!r}")
        a = np.asarray(self.arrays[key])
        if shape is not None and a.shape != tuple(shape):
            self.fail(key, f"shape {a.shape}, expected {tuple(shape)}")
        if kind == "float32" and a.dtype != np.float32:
            self.fail(key, f"dtype {a.dtype}, expected float32")
        if kind == "float" and a.dtype not in (np.float32, np.float64):
            self.fail(key, f"dtype {a.dtype}, expected float32 or float64")
        if kind in ("float32", "float") and not np.all(np.isfinite(a)):
            self.fail(key, f"{int(np.sum(~np.isfinite(a)))} entries are not finite")
        if kind == "bool":
            if a.dtype != np.bool_:
                if a.dtype.kind not in "biuf" or not np.all((a == 0) | (a == 1)):
                    self.fail(key, f"dtype {a.dtype} with values other than 0 and 1, expected bool")
                a = a != 0
        if kind == "int" and (a.dtype.kind not in "iu"):
            self.fail(key, f"dtype {a.dtype}, expected an integer type")
        return a

    def scalar(self, item: str, kind: str):
        a = self.get(item, kind=kind)
        if a.size != 1:
            self.fail(f"{self.layer}.{item}", f"shape {a.shape}, expected a scalar")
        return a.reshape(())[()]


def _zero_off_mask(r: _Reader, weight, mask) -> None:
    off = (weight != 0) & ~mask
    if off.any():
        at = tuple(int(v) for v in np.argwhere(off)[0])
        where = f"row {at[0]}, col {at[1]}" if len(at) == 2 else f"index {at}"
        r.fail(f"{r.layer}.weight", f"{int(off.sum())} weights are nonzero off {r.layer}.mask (first at "
                                    f"{where}); save weight * mask")


def layer_inputs(method: str, before: dict, after: dict, before_name: str = "BEFORE",
                 after_name: str = "AFTER") -> list[LayerInput]:
    """Validate the two files' arrays and collect each layer's :class:`LayerInput`.

    Raises :class:`VerifyInputError` (a one-line message naming the file, layer and key) for a
    missing key, a wrong shape or dtype, a non-finite value, a weight nonzero off its mask, a layer
    in one file only, or a BEFORE mask the method's storage cannot hold (:func:`structure_of`).
    """
    if method not in LAYER_FORMATS:
        raise VerifyInputError(f"unknown method {method!r}; choose one of: {', '.join(LAYER_FORMATS)}")
    names = _layer_names(before)
    if not names:
        raise VerifyInputError(f"{before_name}: no layers (expected keys 'L.weight' and 'L.mask' per layer L)")
    extra = [n for n in _layer_names(after) if n not in names]
    if extra:
        raise VerifyInputError(f"{after_name}: layer {extra[0]!r} is not in {before_name}")
    out = []
    for name in names:
        b, a = _Reader(before, before_name, name), _Reader(after, after_name, name)
        weight = b.get("weight")
        if weight.ndim < 2:
            b.fail(f"{name}.weight", f"shape {weight.shape}, expected (n_out, n_in) or a convolution's "
                                     "(c_out, c_in, kh, kw)")
        full = weight.shape  # (n_out, n_in), or (c_out, c_in, kh, kw) for a convolution
        kernel_shape = full[1:] if weight.ndim > 2 else None
        shape = (full[0], int(np.prod(full[1:])))  # the filter matrix (DESIGN.md 4b)
        if shape[0] * shape[1] > MAX_DENSE_GRADIENT:
            b.fail(f"{name}.weight", f"{shape[0]} x {shape[1]} positions: more than the {MAX_DENSE_GRADIENT} "
                                     "a specification handles (it builds the dense gradient)")
        mask = b.get("mask", full, "bool")
        _zero_off_mask(b, weight, mask)
        after_weight, after_mask = a.get("weight", full), a.get("mask", full, "bool")
        _zero_off_mask(a, after_weight, after_mask)
        weight, mask = weight.reshape(shape), mask.reshape(shape)
        after_weight, after_mask = after_weight.reshape(shape), after_mask.reshape(shape)
        G = None
        if b.has("grad"):
            G = b.get("grad", full, "float").astype(np.float64).reshape(shape)
        elif b.has("x") or b.has("dy"):
            G = _batch_gradient(b, full)
        elif method != "set":
            raise VerifyInputError(f"{before_name}: layer {name!r} has neither {name + '.grad'!r} nor "
                                   f"{name + '.x'!r} and {name + '.dy'!r}: {method} scores growth by the gradient")
        is_output = bool(b.scalar("is_output", "bool")) if b.has("is_output") else False
        nnz = int(mask.sum())
        budget = nnz
        if b.has("budget"):
            budget = int(b.scalar("budget", "int"))
            if budget < nnz:
                b.fail(f"{name}.budget", f"{budget} is below the {nnz} active positions of {name}.mask")
        candidates = None
        if b.has("candidates"):
            c = b.get("candidates", kind="int").astype(np.int64)
            if c.ndim != 1 or (c.size and (c.min() < 0 or c.max() >= shape[0] * shape[1])):
                b.fail(f"{name}.candidates", f"expected a 1-D array of flat positions row * n_in + col in "
                                             f"[0, {shape[0] * shape[1]})")
            candidates = np.unique(c)
        layer = LayerInput(name, weight, mask, G, after_weight, after_mask, is_output, budget, candidates,
                           kernel_shape)
        structure_of(method, mask, weight, where=f"{before_name}: layer {name!r}, key {name + '.mask'!r}")
        out.append(layer)
    return out


def _batch_gradient(b: _Reader, full: tuple) -> np.ndarray:
    """float64 (n_out, n_in): G = dY^T X from the layer's batch ``L.x``, ``L.dy``.

    A linear layer: x (B, n_in), dy (B, n_out). A convolution (weight (c_out, c_in, kh, kw)): either
    the same with its patch matrix, x (B Ho Wo, c_in kh kw) and dy (B Ho Wo, c_out), or the images,
    x (B, c_in, H, W) and dy (B, c_out, Ho, Wo) with the optional scalars ``L.stride`` (default 1) and
    ``L.padding`` (default 0, zeros on every side); then

    .. math:: G[o, (c, i, j)] = \\sum_{b, h_o, w_o} dY[b, o, h_o, w_o] \\, X_p[b, c, s h_o + i, s w_o + j]

    through the patch matrix of :func:`purerigl.kernels.host_conv.im2col` (its columns are in the order
    (c, i, j) of ``weight.reshape(c_out, -1)``).
    """
    name, n_out, n_in = b.layer, full[0], int(np.prod(full[1:]))
    x = b.get("x", kind="float")
    if x.ndim == 2 or len(full) != 4:
        if x.ndim != 2 or x.shape[1] != n_in:
            b.fail(f"{name}.x", f"shape {x.shape}, expected (B, n_in) with n_in = {n_in}"
                   + (" (the patch matrix) or the images (B, c_in, H, W)" if len(full) == 4 else ""))
        return dense_gradient(x, b.get("dy", (x.shape[0], n_out), "float"))
    c_out, c_in, kh, kw = full
    if x.ndim != 4 or x.shape[1] != c_in:
        b.fail(f"{name}.x", f"shape {x.shape}, expected the images (B, {c_in}, H, W) or the patch matrix "
                            f"(B Ho Wo, {n_in})")
    stride = int(b.scalar("stride", "int")) if b.has("stride") else 1
    padding = int(b.scalar("padding", "int")) if b.has("padding") else 0
    if stride < 1 or padding < 0:
        b.fail(f"{name}.stride" if stride < 1 else f"{name}.padding",
               f"stride {stride}, padding {padding}: expected stride >= 1 and padding >= 0")
    B, _, H, W = x.shape
    if min(H - kh, W - kw) + 2 * padding < 0:
        b.fail(f"{name}.x", f"images of {H} x {W} with padding {padding} are smaller than the {kh} x {kw} kernel")
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    dy = b.get("dy", (B, c_out, Ho, Wo), "float")
    G = np.zeros((c_out, n_in))
    step = max(1, PATCH_CHUNK // (Ho * Wo * n_in))  # samples per patch matrix
    for a in range(0, B, step):
        patches = im2col(x[a:a + step].astype(np.float64), kh, kw, stride, padding)  # (n Ho Wo, c_in kh kw)
        dy_rows = dy[a:a + step].astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, c_out)  # rows (b, ho, wo)
        G += dense_gradient(patches, dy_rows)
    return G


# ------------------------------------------------------------------------------- structure from the mask


def diagonal_ids(n_out: int, n_in: int) -> np.ndarray:
    """int64 (n_out, n_in): the offset d of the wrap-around diagonal through every position (DESIGN.md 2:
    element t of diagonal d sits at ((t + d) mod n_out, t) if n_out >= n_in, else (t, (t + d) mod n_in))."""
    i = np.arange(n_out)[:, None]
    j = np.arange(n_in)[None, :]
    return (i - j) % n_out if n_out >= n_in else (j - i) % n_in


def structure_of(method: str, mask: np.ndarray, weight: np.ndarray, where: str = "mask"):
    """The layer in its method's storage (:data:`LAYER_FORMATS`), built from ``mask`` with the values
    of ``weight`` there: an active weight that is exactly 0 stays active. A mask the storage cannot
    hold (SRigL: active rows of unequal counts; diag-rigl: part of a diagonal) raises VerifyInputError."""
    n_out, n_in = mask.shape
    fmt = LAYER_FORMATS[method]
    rows, cols = np.nonzero(mask)  # row-major: columns ascending within each row
    if fmt == "csr":
        indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
        return CSR(indptr, cols.astype(np.int32), weight[rows, cols].astype(np.float32), (n_out, n_in))
    if fmt == "condensed":
        count = mask.sum(axis=1)
        active = np.flatnonzero(count)
        if active.size and np.any(count[active] != count[active[0]]):
            r = int(active[np.flatnonzero(count[active] != count[active[0]])[0]])
            raise VerifyInputError(f"{where}: srigl needs constant fan-in, but row {int(active[0])} holds "
                                   f"{int(count[active[0]])} and row {r} holds {int(count[r])}")
        k = int(count[active[0]]) if active.size else 0
        shape2 = (active.size, k)
        return Condensed(active.astype(np.int32), cols.reshape(shape2).astype(np.int32),
                         weight[rows, cols].reshape(shape2).astype(np.float32), (n_out, n_in))
    P, L = max(n_out, n_in), min(n_out, n_in)
    count = np.bincount(diagonal_ids(n_out, n_in)[mask], minlength=P)
    partial = np.flatnonzero((count != 0) & (count != L))
    if partial.size:
        d = int(partial[0])
        raise VerifyInputError(f"{where}: diag-rigl stores whole wrap-around diagonals, but diagonal {d} has "
                               f"{int(count[d])} of its {L} positions ({partial.size} partial diagonals)")
    D = Diagonal(np.flatnonzero(count).astype(np.int32), np.zeros((int(np.sum(count > 0)), L), np.float32),
                 (n_out, n_in))
    r, c = D.positions()
    D.values[...] = weight[r, c]
    return D


def _mask_of(W) -> np.ndarray:
    """bool (n_out, n_in): the positions a stored matrix holds."""
    out = np.zeros(W.shape[0] * W.shape[1], dtype=bool)
    out[positions(W)] = True
    return out.reshape(W.shape)
