"""Batch normalisation of NCHW activations with a hand-written forward and backward.

Per channel c, over the N = B * H * W values of the batch (training mode):

.. math::

    \\mu_c = \\frac{1}{N} \\sum_{b, y, x} X_{bcyx}, \\qquad
    \\sigma^2_c = \\frac{1}{N} \\sum_{b, y, x} (X_{bcyx} - \\mu_c)^2, \\qquad
    \\hat X = \\frac{X - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}}, \\qquad
    Y = \\gamma_c \\hat X + \\beta_c

and the running statistics follow (as PyTorch: the biased variance normalises, the unbiased one is
averaged) :math:`m \\leftarrow (1 - \\alpha) m + \\alpha \\mu`,
:math:`v \\leftarrow (1 - \\alpha) v + \\alpha \\frac{N}{N - 1} \\sigma^2`. In evaluation mode
:math:`\\mu, \\sigma^2` are replaced by the running m, v (and nothing is updated).

The layer calls its backend's ``batchnorm_forward`` / ``batchnorm_backward``
(:data:`purerigl.kernels.registry.CONV_OPS`): the NumPy specification
(:func:`purerigl.kernels.host_conv.batchnorm_forward` / ``batchnorm_backward``) on the reference
backend; on the cpu backend the Numba kernels of :mod:`purerigl.kernels.cpu.patches` (one pass for the
statistics, one for the output; the same for the backward), which sum the statistics in float64 and
otherwise repeat the specification's elementwise operations in its order; on cuda the kernels of
:mod:`purerigl.kernels.cuda.batchnorm` (float64 sums in a fixed order). They agree to float32 rounding.

Residency. The running statistics live where the backend computes (device arrays on cuda, updated
there in training) with host mirrors :attr:`BatchNorm2d.running_mean` / ``running_var`` (the same
arrays on a host backend), refreshed by :meth:`BatchNorm2d.sync_to_host` and by
:meth:`BatchNorm2d.buffers`, which checkpoints and model files read.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..kernels.host_conv import _per_channel  # noqa: F401  (re-exported for the tests of the cpu kernels)
from .parameter import Parameter, SyncsParameters
from .patches import check_conv_backend, check_nchw


class BatchNorm2d(SyncsParameters):
    """Batch normalisation over (B, H, W) per channel, with learnt scale and shift.

    Parameters
    ----------
    channels : int
    eps : float
        Added to the variance.
    momentum : float
        Weight alpha of the batch statistic in the running averages.
    name : str
        Parameters ``{name}.weight`` (gamma, ones) and ``{name}.bias`` (beta, zeros), both without weight
        decay; buffers ``{name}.running_mean`` (zeros) and ``{name}.running_var`` (ones).
    backend : str | Backend, optional
        "reference", "cpu" or "cuda" (the parameters' backend; float32 only on cuda).
    dtype : numpy dtype
        Of the parameters and buffers: float32 (default) or float64 (gradient checks). The layer
        computes in the input's dtype (promoted with the parameters').

    Attributes
    ----------
    training : bool
        True (default): batch statistics, running statistics updated; False: running statistics.
    running_mean, running_var : ndarray (C,)
        Host arrays; on cuda mirrors of the device statistics, current after :meth:`sync_to_host`
        or :meth:`buffers`.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, name: str = "bn", backend=None,
                 dtype=np.float32):
        self.backend = check_conv_backend(backend, "batch normalisation layers")
        self.channels, self.eps, self.momentum, self.name = int(channels), float(eps), float(momentum), name
        self.weight = Parameter(f"{name}.weight", np.ones(self.channels, dtype), decay=False, backend=self.backend)
        self.bias = Parameter(f"{name}.bias", np.zeros(self.channels, dtype), decay=False, backend=self.backend)
        self.running_mean = np.zeros(self.channels, dtype)
        self.running_var = np.ones(self.channels, dtype)
        self._stats = self._stats_on(self.backend)  # (mean, var) where the backend computes
        self.training = True
        self._xhat = self._inv = None  # \hat X and 1 / sqrt(var + eps) of the last forward
        self._trained = True  # the mode of the last forward

    def train(self) -> "BatchNorm2d":
        self.training = True
        return self

    def eval(self) -> "BatchNorm2d":
        self.training = False
        return self

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def _stats_on(self, backend) -> tuple:
        """The running statistics as arrays of ``backend`` (the host arrays themselves on a host backend)."""
        return backend.to_device(self.running_mean), backend.to_device(self.running_var)

    def buffers(self) -> dict[str, np.ndarray]:
        """The running statistics by name (the host arrays themselves, refreshed from the device first
        on cuda), for checkpoints."""
        self._stats_to_host()
        return {f"{self.name}.running_mean": self.running_mean, f"{self.name}.running_var": self.running_var}

    def load_buffers(self, buffers: dict) -> None:
        """Copy ``{name}.running_mean`` / ``{name}.running_var`` from ``buffers`` into the layer's."""
        for key, mine in self.buffers().items():
            if key not in buffers:
                raise KeyError(f"buffer {key!r} missing (have: {', '.join(sorted(buffers)) or 'none'})")
            value = np.asarray(buffers[key])
            if value.shape != mine.shape:
                raise ShapeError(f"buffer {key!r} has shape {value.shape}, expected {mine.shape}")
            mine[...] = value
        self._stats_to_device()

    def _stats_to_host(self) -> None:
        """Copy the running statistics into their host mirrors (nothing to do on a host backend)."""
        to_host = self.backend.to_host
        to_host(self._stats[0], out=self.running_mean)
        to_host(self._stats[1], out=self.running_var)

    def _stats_to_device(self) -> None:
        """Copy the host mirrors of the running statistics to the backend (nothing on a host backend)."""
        to_device = self.backend.to_device
        to_device(self.running_mean, out=self._stats[0])
        to_device(self.running_var, out=self._stats[1])

    def sync_to_host(self) -> None:
        """Refresh the parameters' and the running statistics' host copies (no-op on a host backend)."""
        super().sync_to_host()
        self._stats_to_host()

    def sync_to_device(self) -> None:
        """Copy the parameters' and the running statistics' host copies to the backend."""
        super().sync_to_device()
        self._stats_to_device()

    def forward(self, X):
        """X (B, C, H, W) -> Y (B, C, H, W), by the backend's ``batchnorm_forward``.

        .. math:: Y = \\gamma_c \\frac{X - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}} + \\beta_c

        with the batch's (training; the running statistics are updated) or the running (evaluation)
        statistics.
        """
        check_nchw(X, self.channels)
        if self.training:
            n = X.shape[0] * X.shape[2] * X.shape[3]
            if n < 2:
                raise ShapeError(f"batch normalisation in training mode needs more than one value per channel, "
                                 f"got an input of shape {tuple(X.shape)}")
        Y, self._xhat, self._inv = self.backend.batchnorm_forward(
            X, self.weight.value, self.bias.value, *self._stats, self.training, self.momentum, self.eps)
        self._trained = self.training
        return Y

    def backward(self, dY):
        """dY (B, C, H, W) -> dX; fills ``weight.grad`` (gamma) and ``bias.grad`` (beta), by the
        backend's ``batchnorm_backward``.

        .. math::

            d\\gamma_c = \\sum dY \\hat X, \\qquad d\\beta_c = \\sum dY, \\qquad
            dX = \\frac{\\gamma_c}{\\sqrt{\\sigma^2_c + \\epsilon}}
                 \\Big(dY - \\frac{d\\beta_c}{N} - \\hat X \\frac{d\\gamma_c}{N}\\Big) \\ \\text{(training)},
            \\qquad dX = \\frac{\\gamma_c}{\\sqrt{v_c + \\epsilon}} \\, dY \\ \\text{(evaluation)}
        """
        return self.backend.batchnorm_backward(dY, self._xhat, self._inv, self.weight.value, self._trained,
                                               self.weight.grad, self.bias.grad)

    def set_backend(self, backend) -> None:
        """Move the layer to another backend, parameters and running statistics (gradients restart at zero)."""
        self._move_parameters(check_conv_backend(backend, "batch normalisation layers"))
        self._stats = self._stats_on(self.backend)
        self._xhat = self._inv = None

    def __repr__(self) -> str:
        return (f"BatchNorm2d({self.channels}, eps={self.eps}, momentum={self.momentum}, "
                f"training={self.training})")
