"""Optimizers over :class:`~purerigl.nn.Parameter` lists, with state laid out like the values.

Every optimizer updates ``param.value`` **in place**: a sparse layer's stored ``values`` array is the
same object as its weight parameter's ``value``, so rebinding would silently detach the layer. All
arithmetic is float32 and every state array (momentum, Adam's first and second moments) has exactly
the shape of the value array it belongs to, so a topology change can carry it across with one gather.
The arithmetic is done by each parameter's backend (``param.backend.sgd_step`` / ``adam_step``: NumPy
on the host backends, kernels on device arrays on cuda), and the state arrays live there too.

Topology changes (PAPERS.md section 1.2)
----------------------------------------
After a layer installs new value arrays (``param.replace(new_values)``) it calls
:meth:`Optimizer.remap_state` with ``source``, an int64 array shaped like the new value:
``source.flat[e]`` is the flat index of the same connection in the old value array, or ``-1`` for a
new connection. Kept connections keep their state exactly; new connections start with zero state;
dropped connections carry nothing on. The optimizer's step count is *not* reset (as in the PyTorch
DST ports), so Adam's bias correction for a newly grown entry uses the global step count.

Optimizers: :class:`SGD` (momentum, Nesterov, L2 weight decay), :class:`Adam` (L2 weight decay) and
:class:`AdamW` (decoupled weight decay), all with PyTorch's update equations. :func:`make_optimizer`
builds one by name. :mod:`.lr_schedule`: constant, step and cosine learning rates with warm-up.
Imports nn (the parameters) and below.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..nn.parameter import Parameter
from .adam import Adam, AdamW
from .base import Optimizer, OptimizerError
from .sgd import SGD

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "OptimizerError",
    "make_optimizer",
]

#: Names accepted by :func:`make_optimizer`.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")


# --------------------------------------------------------------------------------------------------
# factory


def make_optimizer(
    name: str,
    params: Iterable[Parameter],
    lr: float,
    *,
    momentum: float | None = None,
    weight_decay: float | None = None,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    """Build an optimizer by name.

    Parameters
    ----------
    name : {"sgd", "adam", "adamw"}
        Case-insensitive; see :data:`OPTIMIZERS`.
    params : iterable of Parameter
    lr : float
    momentum : float, optional
        SGD only (default 0). Ignored by Adam/AdamW, whose momentum is ``betas[0]``, so that a
        caller (the training loop, the CLI) may pass one set of options to every name.
    weight_decay : float, optional
        Default 0 for SGD and Adam, 0.01 for AdamW.
    nesterov : bool
        SGD only; ``True`` with Adam/AdamW raises (Nesterov-accelerated Adam is not provided).
    betas, eps
        Adam and AdamW only.

    Raises
    ------
    OptimizerError
        For an unknown name (the valid ones are listed), ``nesterov=True`` with Adam/AdamW, or a
        hyperparameter out of range.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise OptimizerError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    if key == "sgd":
        return SGD(
            params,
            lr,
            momentum=0.0 if momentum is None else momentum,
            nesterov=nesterov,
            weight_decay=0.0 if weight_decay is None else weight_decay,
        )
    if nesterov:
        raise OptimizerError(f"nesterov applies to 'sgd' only, not {key!r}")
    cls = Adam if key == "adam" else AdamW
    kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}
    return cls(params, lr, betas=betas, eps=eps, **kwargs)
