"""Adam (L2 weight decay) and AdamW (decoupled weight decay), with PyTorch's update equations."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..nn.parameter import Parameter
from .base import (
    Optimizer,
    OptimizerError,
    _check_real,
    _check_unit_interval,
    _check_weight_decay,
)

# --------------------------------------------------------------------------------------------------
# Adam / AdamW


class Adam(Optimizer):
    r"""Adam with L2 weight decay added to the gradient (PyTorch ``torch.optim.Adam``).

    With the optimizer step count :math:`t` (1 on the first step):

    .. math::

        g_t &= \nabla_w L + \lambda w_{t-1} \quad (\lambda \text{ only for params with } decay)

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t

        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

        w_t &= w_{t-1} - \frac{\eta}{1 - \beta_1^t} \,
               \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    :math:`m_0 = v_0 = 0`. The bias corrections use one step count per optimizer, which a topology
    change does not reset (grown entries start at :math:`m = v = 0`).

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        :math:`\eta \ge 0`.
    betas : (float, float)
        :math:`(\beta_1, \beta_2)`, each in [0, 1).
    eps : float
        :math:`\epsilon > 0`.
    weight_decay : float
        :math:`\lambda \ge 0`.
    """

    state_names = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise OptimizerError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_check_unit_interval("betas[0]", b1), _check_unit_interval("betas[1]", b2))
        self.eps = _check_real("eps", eps)
        if self.eps <= 0.0:
            raise OptimizerError(f"eps must be > 0, got {eps!r}")
        self.weight_decay = _check_weight_decay(weight_decay)
        super().__init__(params, lr)

    def _update(self, param: Parameter, state: dict[str, np.ndarray], lr: float) -> None:
        param.backend.adam_step(
            param.value, param.grad, state["exp_avg"], state["exp_avg_sq"], lr, self.steps, betas=self.betas,
            eps=self.eps, weight_decay=self.weight_decay, decay=param.decay, decoupled=self._decoupled,
        )


class AdamW(Adam):
    r"""Adam with decoupled weight decay (PyTorch ``torch.optim.AdamW``).

    The decay shrinks the weights before the Adam update (which then sees the raw gradient):

    .. math::

        w' &= w_{t-1} (1 - \eta \lambda) \quad (\lambda \text{ only for params with } decay)

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

        w_t &= w' - \frac{\eta}{1 - \beta_1^t} \,
               \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Parameters are those of :class:`Adam`; ``weight_decay`` defaults to 0.01.
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)
