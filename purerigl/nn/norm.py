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

Two implementations: the NumPy specification (:meth:`BatchNorm2d._forward_reference`,
:meth:`BatchNorm2d._backward_reference`), which the reference backend runs, and on the cpu backend the
Numba kernels of :mod:`purerigl.kernels.cpu.patches` (one pass for the statistics, one for the
output; the same for the backward), which sum the statistics in float64 and otherwise repeat the
specification's elementwise operations in its order: the two agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..kernels.cpu import patches as patch_kernels
from .parameter import Parameter, SyncsParameters
from .patches import check_host_backend, check_nchw, fast_path


def _per_channel(v: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1, 1), to broadcast over NCHW."""
    return v.reshape(1, -1, 1, 1)  # (1, C, 1, 1)


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
        "reference" or "cpu" (the parameters' backend); a device backend is refused.
    dtype : numpy dtype
        Of the parameters and buffers: float32 (default) or float64 (gradient checks). The layer
        computes in the input's dtype (promoted with the parameters').

    Attributes
    ----------
    training : bool
        True (default): batch statistics, running statistics updated; False: running statistics.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, name: str = "bn", backend=None,
                 dtype=np.float32):
        self.backend = check_host_backend(backend, "batch normalisation layers")
        self.channels, self.eps, self.momentum, self.name = int(channels), float(eps), float(momentum), name
        self.weight = Parameter(f"{name}.weight", np.ones(self.channels, dtype), decay=False, backend=self.backend)
        self.bias = Parameter(f"{name}.bias", np.zeros(self.channels, dtype), decay=False, backend=self.backend)
        self.running_mean = np.zeros(self.channels, dtype)
        self.running_var = np.ones(self.channels, dtype)
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

    def buffers(self) -> dict[str, np.ndarray]:
        """The running statistics by name (the arrays themselves), for checkpoints."""
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

    def forward(self, X: np.ndarray) -> np.ndarray:
        """X (B, C, H, W) -> Y (B, C, H, W).

        .. math:: Y = \\gamma_c \\frac{X - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}} + \\beta_c

        with the batch's (training) or the running (evaluation) statistics. On the cpu backend, for
        float32 or float64 inputs of the parameters' dtype, the Numba kernels compute it
        (:meth:`_forward_fast`); otherwise the NumPy specification (:meth:`_forward_reference`).
        """
        check_nchw(X, self.channels)
        if self.training:
            n = X.shape[0] * X.shape[2] * X.shape[3]
            if n < 2:
                raise ShapeError(f"batch normalisation in training mode needs more than one value per channel, "
                                 f"got an input of shape {X.shape}")
        if self._fast(X):
            return self._forward_fast(np.ascontiguousarray(X))
        return self._forward_reference(X)

    def backward(self, dY: np.ndarray) -> np.ndarray:
        """dY (B, C, H, W) -> dX; fills ``weight.grad`` (gamma) and ``bias.grad`` (beta).

        .. math::

            d\\gamma_c = \\sum dY \\hat X, \\qquad d\\beta_c = \\sum dY, \\qquad
            dX = \\frac{\\gamma_c}{\\sqrt{\\sigma^2_c + \\epsilon}}
                 \\Big(dY - \\frac{d\\beta_c}{N} - \\hat X \\frac{d\\gamma_c}{N}\\Big) \\ \\text{(training)},
            \\qquad dX = \\frac{\\gamma_c}{\\sqrt{v_c + \\epsilon}} \\, dY \\ \\text{(evaluation)}
        """
        if self._fast(dY, self._xhat):
            return self._backward_fast(np.ascontiguousarray(dY))
        return self._backward_reference(dY)

    # ------------------------------------------------------------------------------ the specification
    def _forward_reference(self, X: np.ndarray) -> np.ndarray:
        """The specification of :meth:`forward`, in NumPy (sums in X's dtype, NumPy's order)."""
        axes = (0, 2, 3)
        if self.training:
            n = X.shape[0] * X.shape[2] * X.shape[3]
            mean = X.mean(axis=axes)  # (C,)
            xc = X - _per_channel(mean)  # (B, C, H, W)
            var = (xc * xc).mean(axis=axes)  # (C,), biased
            self._update_running(mean, var, n)
        else:
            xc = X - _per_channel(self.running_mean.astype(X.dtype, copy=False))
            var = self.running_var.astype(X.dtype, copy=False)
        inv = 1.0 / np.sqrt(var + self.eps)  # (C,)
        self._xhat, self._inv, self._trained = xc * _per_channel(inv), inv, self.training
        return self._xhat * _per_channel(self.weight.value) + _per_channel(self.bias.value)

    def _backward_reference(self, dY: np.ndarray) -> np.ndarray:
        """The specification of :meth:`backward`, in NumPy."""
        axes = (0, 2, 3)
        dgamma = (dY * self._xhat).sum(axis=axes)  # (C,)
        dbeta = dY.sum(axis=axes)  # (C,)
        self.weight.grad[...] = dgamma
        self.bias.grad[...] = dbeta
        scale = _per_channel(self.weight.value * self._inv)  # (1, C, 1, 1)
        if not self._trained:
            return dY * scale
        n = dY.shape[0] * dY.shape[2] * dY.shape[3]
        return scale * (dY - _per_channel(dbeta / n) - self._xhat * _per_channel(dgamma / n))

    def _update_running(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        """m <- (1 - a) m + a mean, v <- (1 - a) v + a var N / (N - 1)."""
        a = self.momentum
        self.running_mean[...] = (1 - a) * self.running_mean + a * mean
        self.running_var[...] = (1 - a) * self.running_var + a * var * (n / (n - 1))

    # -------------------------------------------------------------------------------- the fast path
    def _fast(self, *arrays) -> bool:
        """Whether the Numba kernels run: cpu backend, all arrays and parameters of one float dtype."""
        return (self.backend.name == "cpu" and all(a is not None for a in arrays)
                and fast_path(*arrays, self.weight.value, self.bias.value))

    def _forward_fast(self, X: np.ndarray) -> np.ndarray:
        """:meth:`forward` by the Numba kernels: the per-channel statistics in one kernel (float64 sums),
        then one elementwise pass writing xhat and Y (the specification's operations, in its order)."""
        if self.training:
            mean, var = patch_kernels.bn_stats(X)  # (C,), (C,) in X's dtype
            self._update_running(mean, var, X.shape[0] * X.shape[2] * X.shape[3])
        else:
            mean = self.running_mean.astype(X.dtype, copy=False)
            var = self.running_var.astype(X.dtype, copy=False)
        inv = 1.0 / np.sqrt(var + self.eps)  # (C,)
        self._xhat, Y = patch_kernels.bn_normalise(X, mean, inv, self.weight.value, self.bias.value)
        self._inv, self._trained = inv, self.training
        return Y

    def _backward_fast(self, dY: np.ndarray) -> np.ndarray:
        """:meth:`backward` by the Numba kernels: both gradient sums in one kernel (float64 sums), then
        one elementwise pass for dX (the specification's operations, in its order)."""
        dgamma, dbeta = patch_kernels.bn_grad_sums(dY, self._xhat)  # (C,), (C,)
        self.weight.grad[...] = dgamma
        self.bias.grad[...] = dbeta
        scale = self.weight.value * self._inv  # (C,)
        if not self._trained:
            return dY * _per_channel(scale)
        n = dY.shape[0] * dY.shape[2] * dY.shape[3]
        return patch_kernels.bn_input_grad(dY, self._xhat, scale, dbeta / n, dgamma / n)

    def set_backend(self, backend) -> None:
        """Move the layer to another host backend (gradients restart at zero)."""
        self.backend = check_host_backend(backend, "batch normalisation layers")
        for p in self.parameters():
            p.backend = self.backend
            p.replace(p.value, host=p.host)
        self._xhat = self._inv = None

    def __repr__(self) -> str:
        return (f"BatchNorm2d({self.channels}, eps={self.eps}, momentum={self.momentum}, "
                f"training={self.training})")
