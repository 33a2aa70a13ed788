"""Pooling and reshaping layers of NCHW activations: MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten.

They have no parameters and compute in the input's dtype, through their backend's operations
(``maxpool_forward``, ``avgpool_backward`` ...: :data:`purerigl.kernels.registry.CONV_OPS`), so the
same layers run on host arrays and on cuda device arrays. The specification
(:mod:`purerigl.kernels.host_conv`, the reference backend) pools over the window matrix of every
channel on its own (im2col of the (B * C, 1, H, W) view): (B * C * Ho * Wo, k * k), i.e. k * k times
the input's memory while it is built. The cpu backend runs max pooling by the Numba kernels of
:mod:`purerigl.kernels.cpu.patches`, which walk the windows in place and give the same bits (same
maxima, same tie rule, gradients added in the same order); the cuda backend by the kernels of
:mod:`purerigl.kernels.cuda.pooling` (one thread per output, backwards gathered per input pixel).
"""

from __future__ import annotations

import math

from ..errors import ShapeError
from ..kernels.host_conv import maxpool_backward as maxpool_backward_reference  # noqa: F401  (the spec)
from ..kernels.host_conv import maxpool_forward as maxpool_reference  # noqa: F401
from .parameter import Parameter
from .patches import check_conv_backend, check_nchw


class _NoParameters:
    """The parameter-free part of the layer interface."""

    def __init__(self, backend=None):
        self.backend = check_conv_backend(backend, "pooling layers")

    def parameters(self) -> list[Parameter]:
        return []

    def sync_to_host(self) -> None:
        """Nothing to copy (no parameters)."""

    def sync_to_device(self) -> None:
        """Nothing to copy (no parameters)."""

    def set_backend(self, backend) -> None:
        """Record the backend; nothing else to move."""
        self.backend = check_conv_backend(backend, "pooling layers")


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

    def _window(self) -> tuple[int, int, int]:
        return self.kernel, self.stride, self.padding

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

    def forward(self, X):
        """X (B, C, H, W) -> Y (B, C, Ho, Wo)."""
        check_nchw(X)
        self._shape = tuple(int(n) for n in X.shape)
        Y, self._arg = self.backend.maxpool_forward(X, *self._window())
        return Y  # (B, C, Ho, Wo)

    def backward(self, dY):
        """dY (B, C, Ho, Wo) -> dX (B, C, H, W): each dY to its window's first maximum."""
        dY = dY.reshape(tuple(self._arg.shape))  # (B, C, Ho, Wo)
        return self.backend.maxpool_backward(dY, self._arg, self._shape, *self._window())


class AvgPool2d(_WindowPool):
    """The mean of every k x k window, zero padding included in the count (PyTorch's default
    ``count_include_pad=True``): the divisor is always k * k.

    .. math:: Y[b, c, h_o, w_o] = \\frac{1}{k^2} \\sum_{i, j} X_p[b, c, s h_o + i, s w_o + j], \\qquad
              dX = \\mathrm{col2im}\\Big(\\frac{dY}{k^2} \\mathbf{1}^T\\Big)
    """

    def forward(self, X):
        """X (B, C, H, W) -> Y (B, C, Ho, Wo)."""
        check_nchw(X)
        self._shape = tuple(int(n) for n in X.shape)
        return self.backend.avgpool_forward(X, *self._window())

    def backward(self, dY):
        """dY (B, C, Ho, Wo) -> dX (B, C, H, W)."""
        return self.backend.avgpool_backward(dY, self._shape, *self._window())


class GlobalAvgPool2d(_NoParameters):
    """The mean over the spatial axes: (B, C, H, W) -> (B, C).

    .. math:: Y[b, c] = \\frac{1}{HW} \\sum_{y, x} X[b, c, y, x], \\qquad dX[b, c, y, x] = \\frac{dY[b, c]}{HW}
    """

    def forward(self, X):
        """X (B, C, H, W) -> Y (B, C)."""
        check_nchw(X)
        self._shape = tuple(int(n) for n in X.shape)
        return self.backend.global_avgpool_forward(X)

    def backward(self, dY):
        """dY (B, C) -> dX (B, C, H, W)."""
        return self.backend.global_avgpool_backward(dY, self._shape)

    def __repr__(self) -> str:
        return "GlobalAvgPool2d()"


class Flatten(_NoParameters):
    """(B, C, H, W) -> (B, C * H * W), in C order (c, y, x); the backward reshapes back.

    .. math:: Y[b, (c, y, x)] = X[b, c, y, x], \\qquad dX[b, c, y, x] = dY[b, (c, y, x)]
    """

    def forward(self, X):
        self._shape = tuple(int(n) for n in X.shape)
        B = self._shape[0]
        return X.reshape(B, math.prod(self._shape[1:]))  # (B, C*H*W), a view (sizes explicit: device arrays)

    def backward(self, dY):
        return dY.reshape(self._shape)  # (B, C, H, W)

    def __repr__(self) -> str:
        return "Flatten()"
