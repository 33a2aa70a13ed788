"""Patch matrices of NCHW images: im2col, its adjoint col2im, output sizes and patch tiles.

A 2-d convolution with filters W (c_out, c_in, kh, kw) is a matrix product over the *patch matrix*:
row r = (b, ho, wo) of ``im2col(X)`` holds the input window under output pixel (ho, wo) of sample b,
flattened in the order (c, i, j), i.e. column ``c * kh * kw + i * kw + j``:

.. math::

    P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j], \\qquad
    Y[b, o, h_o, w_o] = \\sum_{c, i, j} W[o, c, i, j] \\, P[(b, h_o, w_o), (c, i, j)]

where X_p is X zero-padded by p on each side of both spatial axes. The column order is that of
``W.reshape(c_out, -1)``, so ``P @ W.reshape(c_out, -1).T`` is the convolution (B * Ho * Wo, c_out).
:func:`col2im` is the adjoint of :func:`im2col` (every patch entry is added back where it came from),
which is what the backward needs: ``dX = col2im(dP)``.

:func:`im2col` and :func:`col2im` run the Numba kernels of :mod:`purerigl.kernels.cpu.patches` for
float32 and float64 arrays; :func:`im2col_reference` and :func:`col2im_reference` are their NumPy
specifications, and the kernels return the same bits (tests/test_conv_speedpaths.py).
:func:`im2col_t` and :func:`col2im_t` are the same maps in the transposed layout (C * kh * kw,
B * Ho * Wo), the feature-major layout in which :class:`~purerigl.nn.conv.SparseConv2d` hands its
patches to the sparse kernels (specifications: :func:`im2col_t_reference`, :func:`col2im_t_reference`).

Also here: :func:`check_host_backend`, the check that the convolutional building blocks
(:mod:`.conv`, :mod:`.norm`, :mod:`.pool`) run only on the host backends for now.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import BackendError, ShapeError
from ..kernels import get_backend
from ..kernels.cpu import patches as patch_kernels

#: Default bound (bytes) on one tile of a patch matrix: 64 MiB.
DEFAULT_TILE_BYTES = 64 * 2**20


class ConvBackendError(BackendError):
    """A convolutional building block was given a backend it cannot run on (a device backend)."""


def check_host_backend(backend, what: str = "convolution layers"):
    """The backend named by ``backend`` (see :func:`purerigl.get_backend`), refused if it is resident.

    Raises
    ------
    ConvBackendError
        (a :class:`~purerigl.errors.PureriglError` and ``ValueError``) for a backend whose arrays live
        on a device (``backend.resident``, i.e. cuda).
    """
    b = get_backend(backend)
    if b.resident:
        raise ConvBackendError(
            f"{what} run on the reference and cpu backends only for now, got backend {b.name!r}; "
            "build the model with backend='cpu' (or 'reference')"
        )
    return b


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (int, int), each >= 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ShapeError(f"{name} must be an int or a pair of ints, got {value!r}")
        out = (int(value[0]), int(value[1]))
    else:
        out = (int(value), int(value))
    if min(out) < 1:
        raise ShapeError(f"{name} must be >= 1, got {value!r}")
    return out


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a window of ``kernel`` sliding by ``stride`` over ``size + 2 * padding``.

    .. math:: n_o = \\left\\lfloor \\frac{n + 2p - k}{s} \\right\\rfloor + 1

    Raises
    ------
    ShapeError
        When the padded input is shorter than the kernel (the output would be empty), or when the
        stride or kernel is < 1 or the padding < 0.
    """
    if kernel < 1 or stride < 1 or padding < 0:
        raise ShapeError(f"need kernel >= 1, stride >= 1, padding >= 0; got kernel={kernel}, "
                         f"stride={stride}, padding={padding}")
    if size + 2 * padding < kernel:
        raise ShapeError(
            f"an input of size {size} with padding {padding} is smaller than the kernel {kernel}: "
            "the output would have size < 1"
        )
    return (size + 2 * padding - kernel) // stride + 1


def output_hw(X_shape, kh: int, kw: int, stride: int, padding: int) -> tuple[int, int]:
    """(Ho, Wo) of a (B, C, H, W) input."""
    _, _, H, W = X_shape
    return conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)


def check_nchw(X, channels: int | None = None, what: str = "input") -> None:
    """Refuse anything but a 4-d (B, C, H, W) array with ``channels`` channels."""
    if getattr(X, "ndim", None) != 4:
        raise ShapeError(f"{what} must be a (B, C, H, W) array, got shape {getattr(X, 'shape', None)}")
    if channels is not None and X.shape[1] != channels:
        raise ShapeError(f"{what} has {X.shape[1]} channels, the layer expects {channels}")


#: The dtypes the Numba kernels of :mod:`purerigl.kernels.cpu.patches` take; others use the reference.
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fast_path(*arrays) -> bool:
    """Whether the Numba kernels take these arrays: all float32 or all float64 (C order is made by the
    caller). Anything else (integers, float16, mixed dtypes) runs the NumPy reference."""
    dtype = arrays[0].dtype
    return dtype in FAST_DTYPES and all(a.dtype == dtype for a in arrays)


def im2col(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0) -> np.ndarray:
    """The patch matrix of X (B, C, H, W): (B * Ho * Wo, C * kh * kw), in X's dtype (a new array).

    Rows are ordered (b, ho, wo), columns (c, i, j): column ``c * kh * kw + i * kw + j``.

    .. math:: P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j]

    ``fill`` is the value of the padding (0 for a convolution; ``-inf`` for max pooling). Float32 and
    float64 inputs run the Numba kernel :func:`purerigl.kernels.cpu.patches.im2col` (copies at cache
    speed through a small transposed tile); the values are those of :func:`im2col_reference`, the
    specification.
    """
    if not fast_path(X):
        return im2col_reference(X, kh, kw, stride, padding, fill)
    Ho, Wo = output_hw(X.shape, kh, kw, stride, padding)
    return patch_kernels.im2col(X, kh, kw, stride, padding, Ho, Wo, fill)


def col2im(cols: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The adjoint of :func:`im2col`: every patch entry added back to the input pixel it came from.

    cols (B * Ho * Wo, C * kh * kw) -> (B, C, H, W) in cols' dtype; entries that came from the
    padding are dropped.

    .. math:: dX[b, c, y, x] = \\sum_{(h_o, w_o, i, j) :\\ s h_o + i - p = y,\\ s w_o + j - p = x}
              dP[(b, h_o, w_o), (c, i, j)]

    Float32 and float64 inputs run the Numba kernel :func:`purerigl.kernels.cpu.patches.col2im`, which
    adds every pixel's contributions in the order of :func:`col2im_reference` (the specification):
    the same bits (and, as there, a view into a zero-padded buffer when ``padding`` > 0).
    """
    B, C, H, W = X_shape
    Ho, Wo = output_hw(X_shape, kh, kw, stride, padding)
    if cols.shape != (B * Ho * Wo, C * kh * kw):
        raise ShapeError(f"cols has shape {cols.shape}, expected {(B * Ho * Wo, C * kh * kw)}")
    if not fast_path(cols):
        return col2im_reference(cols, X_shape, kh, kw, stride, padding)
    return patch_kernels.col2im(np.ascontiguousarray(cols), X_shape, kh, kw, stride, padding, Ho, Wo)


def im2col_t(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0, fill=0.0) -> np.ndarray:
    """The transposed patch matrix ``im2col(X).T`` (C * kh * kw, B * Ho * Wo), C-contiguous, built
    directly: the layout in which the cpu backend's batched sparse kernels read a batch (they
    transpose an (n, n_in) operand to (n_in, n) first), here without that transpose.

    .. math:: P^T[(c, i, j), (b, h_o, w_o)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    if not fast_path(X):
        return im2col_t_reference(X, kh, kw, stride, padding, fill)
    Ho, Wo = output_hw(X.shape, kh, kw, stride, padding)
    return patch_kernels.im2col_t(X, kh, kw, stride, padding, Ho, Wo, fill)


def col2im_t(cols_t: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The adjoint of :func:`im2col_t`: ``col2im(cols_t.T)`` for cols_t (C * kh * kw, B * Ho * Wo), with
    the same bits (every pixel adds its contributions in the same (i, j) order)."""
    B, C, H, W = X_shape
    Ho, Wo = output_hw(X_shape, kh, kw, stride, padding)
    if cols_t.shape != (C * kh * kw, B * Ho * Wo):
        raise ShapeError(f"cols_t has shape {cols_t.shape}, expected {(C * kh * kw, B * Ho * Wo)}")
    if not fast_path(cols_t):
        return col2im_t_reference(cols_t, X_shape, kh, kw, stride, padding)
    return patch_kernels.col2im_t(np.ascontiguousarray(cols_t), X_shape, kh, kw, stride, padding, Ho, Wo)


def im2col_reference(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0,
                     fill=0.0) -> np.ndarray:
    """The specification of :func:`im2col`, in NumPy: a padded copy, a window view, one copy.

    .. math:: P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, H, W = X.shape
    Ho, Wo = output_hw(X.shape, kh, kw, stride, padding)
    p = padding
    if p:
        Xp = np.full((B, C, H + 2 * p, W + 2 * p), fill, dtype=X.dtype)  # (B, C, Hp, Wp)
        Xp[:, :, p:p + H, p:p + W] = X
    else:
        Xp = X
    win = sliding_window_view(Xp, (kh, kw), axis=(2, 3))  # (B, C, Hp-kh+1, Wp-kw+1, kh, kw), a view
    win = win[:, :, ::stride, ::stride]  # (B, C, Ho, Wo, kh, kw)
    win = win.transpose(0, 2, 3, 1, 4, 5)  # (B, Ho, Wo, C, kh, kw)
    return np.ascontiguousarray(win).reshape(B * Ho * Wo, C * kh * kw)  # (B*Ho*Wo, C*kh*kw), copy


def col2im_reference(cols: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The specification of :func:`col2im`, in NumPy: kh * kw strided scatter-adds, offset (i, j) by
    offset in row-major order, into a zero-padded buffer.

    cols (B * Ho * Wo, C * kh * kw) -> (B, C, H, W) in cols' dtype; entries that came from the
    padding are dropped.

    .. math:: dX[b, c, y, x] = \\sum_{(h_o, w_o, i, j) :\\ s h_o + i - p = y,\\ s w_o + j - p = x}
              dP[(b, h_o, w_o), (c, i, j)]

    so that :math:`\\langle \\mathrm{col2im}(C), X \\rangle = \\langle C, \\mathrm{im2col}(X) \\rangle`.
    """
    B, C, H, W = X_shape
    Ho, Wo = output_hw(X_shape, kh, kw, stride, padding)
    p, s = padding, stride
    if cols.shape != (B * Ho * Wo, C * kh * kw):
        raise ShapeError(f"cols has shape {cols.shape}, expected {(B * Ho * Wo, C * kh * kw)}")
    c6 = cols.reshape(B, Ho, Wo, C, kh, kw)  # (B, Ho, Wo, C, kh, kw), a view
    c6 = c6.transpose(0, 3, 4, 5, 1, 2)  # (B, C, kh, kw, Ho, Wo), a view
    Xp = np.zeros((B, C, H + 2 * p, W + 2 * p), dtype=cols.dtype)  # (B, C, Hp, Wp)
    for i in range(kh):  # kh * kw vectorised scatter-adds; within one (i, j) no two patches collide
        for j in range(kw):
            Xp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s] += c6[:, :, i, j]  # (B, C, Ho, Wo)
    return Xp[:, :, p:p + H, p:p + W] if p else Xp


def im2col_t_reference(X: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0,
                       fill=0.0) -> np.ndarray:
    """The specification of :func:`im2col_t`: the transpose of :func:`im2col_reference`, C-contiguous.

    .. math:: P^T[(c, i, j), (b, h_o, w_o)] = X_p[b, c, s h_o + i, s w_o + j]
    """
    P = im2col_reference(X, kh, kw, stride, padding, fill)  # (B*Ho*Wo, C*kh*kw)
    return np.ascontiguousarray(P.T)  # (C*kh*kw, B*Ho*Wo)


def col2im_t_reference(cols_t: np.ndarray, X_shape, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The specification of :func:`col2im_t`: :func:`col2im_reference` of the transpose.

    cols_t (C * kh * kw, B * Ho * Wo) -> (B, C, H, W).
    """
    return col2im_reference(cols_t.T, X_shape, kh, kw, stride, padding)  # cols_t.T: (B*Ho*Wo, C*kh*kw), a view


def patch_tiles(n_patches: int, row_bytes: int, max_bytes: int = DEFAULT_TILE_BYTES):
    """Yield (start, stop) ranges covering ``range(n_patches)`` in order, each tile of rows holding at
    most ``max_bytes`` (rows of ``row_bytes`` each; at least one row per tile, even if it is larger).

    A row can be one patch (``row_bytes = C * kh * kw * itemsize``) or one sample's patches
    (``Ho * Wo`` times that), as :class:`~purerigl.nn.conv.SparseConv2d` uses it.
    """
    if max_bytes < 1 or row_bytes < 0:
        raise ValueError(f"need max_bytes >= 1 and row_bytes >= 0, got {max_bytes} and {row_bytes}")
    step = max(1, int(max_bytes) // max(1, int(row_bytes)))
    for start in range(0, int(n_patches), step):
        yield start, min(start + step, int(n_patches))


def sample_tiles(X_shape, kh: int, kw: int, stride: int, padding: int, itemsize: int,
                 max_bytes: int = DEFAULT_TILE_BYTES) -> list[tuple[int, int]]:
    """Ranges of samples whose patch matrix stays within ``max_bytes`` (one sample at least)."""
    B, C = X_shape[:2]
    Ho, Wo = output_hw(X_shape, kh, kw, stride, padding)
    return list(patch_tiles(B, Ho * Wo * C * kh * kw * itemsize, max_bytes))
