"""Patch matrices of NCHW images: sizes, checks and tiles, and the backend check of the conv layers.

A 2-d convolution with filters W (c_out, c_in, kh, kw) is a matrix product over the *patch matrix*:
row r = (b, ho, wo) of ``im2col(X)`` holds the input window under output pixel (ho, wo) of sample b,
flattened in the order (c, i, j), i.e. column ``c * kh * kw + i * kw + j``:

.. math::

    P[(b, h_o, w_o), (c, i, j)] = X_p[b, c, s h_o + i, s w_o + j], \\qquad
    Y[b, o, h_o, w_o] = \\sum_{c, i, j} W[o, c, i, j] \\, P[(b, h_o, w_o), (c, i, j)]

where X_p is X zero-padded by p on each side of both spatial axes. The column order is that of
``W.reshape(c_out, -1)``, so ``P @ W.reshape(c_out, -1).T`` is the convolution (B * Ho * Wo, c_out).
``col2im`` is the adjoint of ``im2col`` (every patch entry is added back where it came from), which is
what the backward needs: ``dX = col2im(dP)``; ``im2col_t`` / ``col2im_t`` are the same maps in the
transposed (feature-major) layout (C * kh * kw, B * Ho * Wo), in which
:class:`~purerigl.nn.conv.SparseConv2d` hands its patches to the sparse kernels.

The maps are backend operations (:data:`purerigl.kernels.registry.CONV_OPS`): the layers call
``backend.im2col_t(...)`` & co. Their NumPy specification is :mod:`purerigl.kernels.host_conv`
(re-exported here as :func:`im2col_reference`, :func:`col2im_reference`, :func:`im2col_t_reference`,
:func:`col2im_t_reference`); :func:`im2col`, :func:`col2im`, :func:`im2col_t` and :func:`col2im_t`
here are the cpu backend's (the Numba kernels of :mod:`purerigl.kernels.cpu.patches` for float32 and
float64 arrays, the same bits: tests/test_conv_speedpaths.py).

Also here: :func:`check_conv_backend`, which the convolutional building blocks (:mod:`.conv`,
:mod:`.norm`, :mod:`.pool`) run on their backend: every backend that provides the convolutional
operations is accepted (reference, cpu, cuda); :func:`check_host_backend` refuses a device backend
(what a host-only tool, such as the CPU benchmark of the CNNs, still asks for).
"""

from __future__ import annotations

from ..errors import BackendError, ShapeError
from ..kernels import get_backend
from ..kernels.cpu.conv_ops import FAST_DTYPES, col2im, col2im_t, fast_path, im2col, im2col_t  # noqa: F401
from ..kernels.host_conv import col2im as col2im_reference  # noqa: F401  (the specifications)
from ..kernels.host_conv import col2im_t as col2im_t_reference  # noqa: F401
from ..kernels.host_conv import conv_output_size, output_hw  # noqa: F401
from ..kernels.host_conv import im2col as im2col_reference  # noqa: F401
from ..kernels.host_conv import im2col_t as im2col_t_reference  # noqa: F401
from ..kernels.registry import CONV_OPS

#: Default bound (bytes) on one tile of a patch matrix: 64 MiB.
DEFAULT_TILE_BYTES = 64 * 2**20


class ConvBackendError(BackendError):
    """A convolutional building block was given a backend it cannot run on."""


def check_conv_backend(backend, what: str = "convolution layers"):
    """The backend named by ``backend`` (see :func:`purerigl.get_backend`), refused unless it provides
    every convolutional operation (:data:`purerigl.kernels.registry.CONV_OPS`): the reference, cpu and
    cuda backends do.

    Raises
    ------
    ConvBackendError
        (a :class:`~purerigl.errors.PureriglError` and ``ValueError``) naming the missing operations.
    """
    b = get_backend(backend)
    missing = [op for op in CONV_OPS if not hasattr(b.module, op)]
    if missing:
        raise ConvBackendError(
            f"{what} need the convolutional operations, which backend {b.name!r} does not provide "
            f"(missing: {', '.join(missing)}); use backend 'reference', 'cpu' or 'cuda'"
        )
    return b


def check_host_backend(backend, what: str = "convolution layers"):
    """The backend named by ``backend``, refused if it is resident (its arrays live on a device): for
    host-only tools (the layers themselves take any backend of :func:`check_conv_backend`).

    Raises
    ------
    ConvBackendError
        For a backend whose arrays live on a device (``backend.resident``, i.e. cuda).
    """
    b = get_backend(backend)
    if b.resident:
        raise ConvBackendError(
            f"{what} run on the reference and cpu backends only, got backend {b.name!r}; "
            "use backend='cpu' (or 'reference')"
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


def check_nchw(X, channels: int | None = None, what: str = "input") -> None:
    """Refuse anything but a 4-d (B, C, H, W) array (host or device) with ``channels`` channels."""
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 4:
        raise ShapeError(f"{what} must be a (B, C, H, W) array, got shape {shape}")
    if channels is not None and shape[1] != channels:
        raise ShapeError(f"{what} has {shape[1]} channels, the layer expects {channels}")


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
