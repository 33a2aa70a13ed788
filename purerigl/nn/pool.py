"""Pooling and reshaping layers of NCHW activations: MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten.

They have no parameters and compute in the input's dtype. The specification of the windowed pools
runs over the patch matrix of every channel on its own (:func:`~purerigl.nn.patches.im2col` of the
(B * C, 1, H, W) view): (B * C * Ho * Wo, k * k), i.e. k * k times the input's memory while it is
built. That is what AvgPool2d computes, and what MaxPool2d computes on the reference backend
(:func:`maxpool_reference`, :func:`maxpool_backward_reference`); on the cpu backend MaxPool2d runs
the Numba kernels of :mod:`purerigl.kernels.cpu.patches`, which walk the windows in place and give
the same bits (same maxima, same tie rule, gradients added in the same order). Like the convolutions
the pools run on the host backends only for now.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..kernels.cpu import patches as patch_kernels
from .parameter import Parameter
from .patches import (
    check_host_backend, check_nchw, col2im, col2im_reference, fast_path, im2col, im2col_reference, output_hw,
)


def maxpool_reference(X: np.ndarray, k: int, stride: int, padding: int):
    """The specification of max pooling: (Y (B, C, Ho, Wo), arg (B, C, Ho, Wo) intp), arg being the
    offset i * k + j of the window's first maximum (``argmax`` over the window's patch row, the
    padding counting as -inf).

    .. math:: Y[b, c, h_o, w_o] = \\max_{i, j} X_p[b, c, s h_o + i, s w_o + j]
    """
    B, C, H, W = X.shape
    Ho, Wo = output_hw(X.shape, k, k, stride, padding)
    cols = im2col_reference(X.reshape(B * C, 1, H, W), k, k, stride, padding, fill=-np.inf)  # (B*C*Ho*Wo, k*k)
    arg = cols.argmax(axis=1)  # (B*C*Ho*Wo,), first maximum in window order
    Y = cols[np.arange(cols.shape[0]), arg]  # (B*C*Ho*Wo,)
    return Y.reshape(B, C, Ho, Wo), arg.reshape(B, C, Ho, Wo)


def maxpool_backward_reference(dY: np.ndarray, arg: np.ndarray, X_shape, k: int, stride: int,
                               padding: int) -> np.ndarray:
    """The specification of the max-pooling backward: dY (B, C, Ho, Wo) -> dX (B, C, H, W), each dY at
    its window's ``arg`` in a window matrix, added back to the input by col2im.

    .. math:: dX[b, c, y^*, x^*] \\mathrel{+}= dY[b, c, h_o, w_o]
    """
    B, C, H, W = X_shape
    n = dY.size
    dcols = np.zeros((n, k * k), dtype=dY.dtype)  # (B*C*Ho*Wo, k*k)
    dcols[np.arange(n), arg.reshape(n)] = dY.reshape(n)  # (B*C*Ho*Wo,)
    return col2im_reference(dcols, (B * C, 1, H, W), k, k, stride, padding).reshape(B, C, H, W)  # (B, C, H, W)


class _NoParameters:
    """The parameter-free part of the layer interface."""

    def __init__(self, backend=None):
        self.backend = check_host_backend(backend, "pooling layers")

    def parameters(self) -> list[Parameter]:
        return []

    def sync_to_host(self) -> None:
        """Nothing to copy (no parameters)."""

    def sync_to_device(self) -> None:
        """Nothing to copy (no parameters)."""

    def set_backend(self, backend) -> None:
        """Record the (host) backend; nothing else to move."""
        self.backend = check_host_backend(backend, "pooling layers")


class _WindowPool(_NoParameters):
    """A k x k window sliding by ``stride`` (default k) over the input padded by ``padding`` <= k / 2."""

    def __init__(self, kernel: int, stride=None, padding: int = 0, backend=None):
        super().__init__(backend)
        self.kernel = int(kernel)
        self.stride = self.kernel if stride is None else int(stride)
        self.padding = int(padding)
        if self.kernel < 1 or self.stride < 1 or not 0 <= self.padding <= self.kernel // 2:
            raise ShapeError(f"need kernel >= 1, stride >= 1 and 0 <= padding <= kernel // 2; got kernel="
                             f"{self.kernel}, stride={self.stride}, padding={self.padding}")
        self._shape = None

    def _cols(self, X: np.ndarray, fill) -> tuple[np.ndarray, tuple[int, int]]:
        """The windows of every (sample, channel): (B * C * Ho * Wo, k * k), and (Ho, Wo)."""
        check_nchw(X)
        B, C, H, W = X.shape
        self._shape = X.shape
        k, s, p = self.kernel, self.stride, self.padding
        Xc = X.reshape(B * C, 1, H, W)  # (B*C, 1, H, W)
        return im2col(Xc, k, k, s, p, fill=fill), output_hw(X.shape, k, k, s, p)

    def _to_input(self, dcols: np.ndarray) -> np.ndarray:
        """The adjoint of :meth:`_cols`: (B * C * Ho * Wo, k * k) -> (B, C, H, W)."""
        B, C, H, W = self._shape
        k, s, p = self.kernel, self.stride, self.padding
        return col2im(dcols, (B * C, 1, H, W), k, k, s, p).reshape(B, C, H, W)  # (B, C, H, W)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel={self.kernel}, stride={self.stride}, padding={self.padding})"


class MaxPool2d(_WindowPool):
    """The maximum of every k x k window (padding counts as -inf, so it is never chosen).

    .. math:: Y[b, c, h_o, w_o] = \\max_{i, j} X_p[b, c, s h_o + i, s w_o + j], \\qquad
              dX[b, c, y^*, x^*] \\mathrel{+}= dY[b, c, h_o, w_o]

    where (y*, x*) is the position of the window's maximum. Ties: the gradient goes to the *first*
    maximum in window order (row-major over (i, j): lowest i, then lowest j), as ``argmax`` returns it.
    Overlapping windows (stride < k) may send several gradients to one pixel; they add up.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, C, H, W) -> Y (B, C, Ho, Wo)."""
        check_nchw(X)
        self._shape = X.shape
        k, s, p = self.kernel, self.stride, self.padding
        if self.backend.name == "cpu" and fast_path(X):
            Ho, Wo = output_hw(X.shape, k, k, s, p)
            Y, self._arg = patch_kernels.maxpool_forward(np.ascontiguousarray(X), k, s, p, Ho, Wo)
        else:
            Y, self._arg = maxpool_reference(X, k, s, p)
        return Y  # (B, C, Ho, Wo)

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, C, Ho, Wo) -> dX (B, C, H, W): each dY to its window's first maximum."""
        k, s, p = self.kernel, self.stride, self.padding
        dY = dY.reshape(self._arg.shape)  # (B, C, Ho, Wo)
        if self.backend.name == "cpu" and fast_path(dY):
            return patch_kernels.maxpool_backward(np.ascontiguousarray(dY), self._arg, self._shape, k, s, p)
        return maxpool_backward_reference(dY, self._arg, self._shape, k, s, p)


class AvgPool2d(_WindowPool):
    """The mean of every k x k window, zero padding included in the count (PyTorch's default
    ``count_include_pad=True``): the divisor is always k * k.

    .. math:: Y[b, c, h_o, w_o] = \\frac{1}{k^2} \\sum_{i, j} X_p[b, c, s h_o + i, s w_o + j], \\qquad
              dX = \\mathrm{col2im}\\Big(\\frac{dY}{k^2} \\mathbf{1}^T\\Big)
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, C, H, W) -> Y (B, C, Ho, Wo)."""
        cols, (Ho, Wo) = self._cols(X, fill=0.0)  # (B*C*Ho*Wo, k*k)
        Y = cols.sum(axis=1) / (self.kernel * self.kernel)  # (B*C*Ho*Wo,)
        return Y.reshape(X.shape[0], X.shape[1], Ho, Wo)  # (B, C, Ho, Wo)

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, C, Ho, Wo) -> dX (B, C, H, W)."""
        kk = self.kernel * self.kernel
        share = dY.reshape(-1, 1) / kk  # (B*C*Ho*Wo, 1)
        return self._to_input(np.repeat(share, kk, axis=1))  # cols (B*C*Ho*Wo, k*k)


class GlobalAvgPool2d(_NoParameters):
    """The mean over the spatial axes: (B, C, H, W) -> (B, C).

    .. math:: Y[b, c] = \\frac{1}{HW} \\sum_{y, x} X[b, c, y, x], \\qquad dX[b, c, y, x] = \\frac{dY[b, c]}{HW}
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        check_nchw(X)
        self._shape = X.shape
        return X.mean(axis=(2, 3))

    def backward(self, dY: np.ndarray) -> np.ndarray:
        B, C, H, W = self._shape
        share = dY.reshape(B, C, 1, 1) / (H * W)  # (B, C, 1, 1)
        return np.broadcast_to(share, self._shape).copy()  # (B, C, H, W)

    def __repr__(self) -> str:
        return "GlobalAvgPool2d()"


class Flatten(_NoParameters):
    """(B, C, H, W) -> (B, C * H * W), in C order (c, y, x); the backward reshapes back.

    .. math:: Y[b, (c, y, x)] = X[b, c, y, x], \\qquad dX[b, c, y, x] = dY[b, (c, y, x)]
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        self._shape = X.shape
        return X.reshape(X.shape[0], -1)  # (B, C*H*W)

    def backward(self, dY: np.ndarray) -> np.ndarray:
        return dY.reshape(self._shape)  # (B, C, H, W)

    def __repr__(self) -> str:
        return "Flatten()"
