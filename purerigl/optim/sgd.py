"""SGD with momentum, Nesterov momentum and L2 weight decay (PyTorch's update equations)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..nn.parameter import Parameter
from .base import (
    Optimizer,
    OptimizerError,
    _check_unit_interval,
    _check_weight_decay,
)

# --------------------------------------------------------------------------------------------------
# SGD


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay.

    PyTorch's ``torch.optim.SGD`` without dampening, step by step:

    .. math::

        g_t &= \nabla_w L + \lambda w_{t-1} \quad (\lambda \text{ only for params with } decay)

        b_t &= \mu b_{t-1} + g_t

        u_t &= g_t + \mu b_t \text{ (Nesterov)} \quad\text{or}\quad u_t = b_t

        w_t &= w_{t-1} - \eta u_t

    With ``momentum == 0`` there is no buffer and :math:`u_t = g_t`.

    First-step convention: the buffer starts at **zero**, so :math:`b_1 = \mu \cdot 0 + g_1 = g_1`,
    bit for bit what PyTorch does by initialising the buffer to a copy of the first gradient. A
    connection grown by a topology change gets a zero buffer, so its first update is likewise
    :math:`b = g`, as if it were fresh.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        :math:`\eta \ge 0`.
    momentum : float
        :math:`\mu \in [0, 1)`.
    nesterov : bool
        Nesterov momentum; requires ``momentum > 0``.
    weight_decay : float
        :math:`\lambda \ge 0`, added to the gradient (L2), skipped for ``decay=False`` params.
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        momentum = _check_unit_interval("momentum", momentum)
        weight_decay = _check_weight_decay(weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise OptimizerError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and momentum == 0.0:
            raise OptimizerError("nesterov=True requires momentum > 0, got momentum=0")
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        self.weight_decay = weight_decay
        self.state_names = ("momentum_buffer",) if momentum > 0.0 else ()
        super().__init__(params, lr)

    def _update(self, param: Parameter, state: dict[str, np.ndarray], lr: float) -> None:
        param.backend.sgd_step(
            param.value, param.grad, state.get("momentum_buffer"), lr, momentum=self.momentum,
            nesterov=self.nesterov, weight_decay=self.weight_decay, decay=param.decay,
        )
