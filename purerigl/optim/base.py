"""The optimizer base class: parameter bookkeeping, state laid out like the values, the topology remap
(``remap_state``) and exact (de)serialisation; plus the hyperparameter checks the optimizers share.

The update rules live in :mod:`.sgd` and :mod:`.adam`; the package docstring explains the state rules
across topology changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import DTypeError, PureriglError
from ..nn.parameter import Parameter

#: Key of the optimizer step count in :meth:`Optimizer.state_dict` (scalar keys contain no dot, so
#: they can never collide with the per-parameter keys ``f"{param.name}.{state_name}"``).
STEP_KEY = "step"


class OptimizerError(PureriglError, ValueError):
    """Bad optimizer hyperparameters, parameters, remap sources or state dicts."""


# --------------------------------------------------------------------------------------------------
# validation helpers


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptimizerError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise OptimizerError(f"{name} must be finite, got {value!r}")
    return value


def _check_lr(lr, what: str = "lr") -> float:
    lr = _check_real(what, lr)
    if lr < 0.0:
        raise OptimizerError(f"{what} must be >= 0, got {lr!r}")
    return lr


def _check_unit_interval(name: str, value) -> float:
    value = _check_real(name, value)
    if not 0.0 <= value < 1.0:
        raise OptimizerError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _check_weight_decay(value) -> float:
    value = _check_real("weight_decay", value)
    if value < 0.0:
        raise OptimizerError(f"weight_decay must be >= 0, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# base class


class Optimizer:
    """Base class: parameter bookkeeping, state layout, topology remap and (de)serialisation.

    Subclasses declare :attr:`state_names` (one float32 array per parameter and name, laid out like
    ``param.value``, allocated as zeros) and implement :meth:`_update`, the update of one parameter.

    Parameters
    ----------
    params : iterable of Parameter
        Parameters with unique names and float32 values.
    lr : float
        Learning rate, ``>= 0`` (0 is allowed so that a warm-up or cosine schedule may reach it).

    Attributes
    ----------
    params : list of Parameter
    lr : float
        The stored learning rate, used by :meth:`step` unless overridden.
    steps : int
        Number of :meth:`step` calls completed (Adam's bias correction uses it).
    """

    #: Names of the per-parameter state arrays (e.g. ``("exp_avg", "exp_avg_sq")``).
    state_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params: list[Parameter] = list(params)
        names: dict[str, int] = {}
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] is a {type(p).__name__}, expected a Parameter")
            if p.name in names:
                raise OptimizerError(
                    f"parameter name {p.name!r} appears twice (params[{names[p.name]}] and "
                    f"params[{i}]); names must be unique"
                )
            names[p.name] = i
            _check_value(p)
        self.lr = _check_lr(lr)
        self.steps = 0
        self._index = {id(p): i for i, p in enumerate(self.params)}
        # Shape the state of each parameter is laid out for (tracked even without state arrays, so
        # remap_state can validate ``source`` against the old size).
        self._shapes: list[tuple[int, ...]] = [p.value.shape for p in self.params]
        self._state: list[dict[str, np.ndarray]] = [  # arrays of each parameter's backend
            {s: p.backend.zeros(p.value.shape) for s in self.state_names}
            for p in self.params
        ]
        self._state_backends = [p.backend for p in self.params]  # where each parameter's state lives

    # ---------------------------------------------------------------------------------------------
    # stepping

    def step(self, lr: float | None = None) -> None:
        """Apply one update to every parameter, in place, from ``param.grad``.

        Parameters
        ----------
        lr : float, optional
            Learning rate for this step only (a schedule drives it this way); the stored
            :attr:`lr` is used when omitted and is not changed.
        """
        lr = self.lr if lr is None else _check_lr(lr)
        for i, p in enumerate(self.params):
            self._check_layout(i, p)
        self.steps += 1
        for i, p in enumerate(self.params):
            self._update(p, self._state[i], lr)

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero, in place."""
        for p in self.params:
            p.backend.fill_zeros(p.grad)

    def _update(self, param: Parameter, state: dict[str, np.ndarray], lr: float) -> None:
        raise NotImplementedError

    def follow_parameters(self) -> None:
        """Move the state of every parameter that changed backend (``Model.set_backend``) to where
        the parameter lives now: one copy through the host per state array, values unchanged.

        Until this is called, :meth:`step` refuses such a parameter instead of copying silently.
        """
        for i, p in enumerate(self.params):
            old = self._state_backends[i]
            if p.backend == old:  # Backend compares by name and module
                continue
            for name, arr in self._state[i].items():
                self._state[i][name] = p.backend.to_device(np.array(old.to_host(arr), dtype=np.float32, copy=True))
            self._state_backends[i] = p.backend

    def _check_layout(self, i: int, p: Parameter) -> None:
        if p.backend != self._state_backends[i]:
            raise OptimizerError(
                f"parameter {p.name!r} moved to backend {p.backend.name!r} but its optimizer state is on "
                f"{self._state_backends[i].name!r}; call optimizer.follow_parameters() after set_backend"
            )
        if p.value.shape != self._shapes[i]:
            raise OptimizerError(
                f"parameter {p.name!r} has shape {p.value.shape} but its optimizer state is laid "
                f"out for {self._shapes[i]}; call remap_state(param, source) after param.replace()"
            )
        _check_value(p)
        if p.grad.shape != p.value.shape:
            raise OptimizerError(
                f"parameter {p.name!r}: grad shape {p.grad.shape} differs from value shape "
                f"{p.value.shape}"
            )
        if p.grad.dtype != np.float32:
            raise DTypeError(f"parameter {p.name!r}: grad dtype is {p.grad.dtype}, expected float32")

    # ---------------------------------------------------------------------------------------------
    # state access and topology changes

    def _position(self, param: Parameter) -> int:
        i = self._index.get(id(param))
        if i is None:
            raise OptimizerError(f"parameter {getattr(param, 'name', param)!r} is not in this optimizer")
        return i

    def state_arrays(self, param: Parameter) -> dict[str, np.ndarray]:
        """The live state arrays of ``param``, each shaped like ``param.value`` (empty if none).

        Returns
        -------
        dict of str to float32 array
            The optimizer's own arrays (not copies; arrays of ``param.backend``, device arrays on
            cuda): writing into them changes the state.
        """
        return dict(self._state[self._position(param)])

    def remap_state(self, param: Parameter, source) -> None:
        """Carry ``param``'s state across a topology change (after ``param.replace(new_values)``).

        Parameters
        ----------
        param : Parameter
            A parameter of this optimizer whose ``value`` has just been replaced.
        source : int ndarray, shape ``param.value.shape``; or an int64 array of ``param.backend``
            ``source.flat[e]`` is the flat index of connection ``e`` in the *old* value array, or
            ``-1`` for a new connection. Each old index may appear at most once. A host ndarray is
            checked fully (range, duplicates); a device array (what a resident topology update
            computed on the device, :func:`purerigl.dst.apply_structure`) only by shape, since a
            full check would be a pass over it on the host.

        Notes
        -----
        For every state array ``S`` (momentum, Adam moments):

        .. math:: S'_e = S_{\\mathrm{source}_e} \\text{ if } \\mathrm{source}_e \\ge 0 \\text{ else } 0

        The state is laid out for the new shape afterwards (the size may change, as when SRigL
        changes the fan-in k). The step count is unchanged. The gather is the backend's
        ``remap_by_source``, so on cuda the state never leaves the device (a host ``source`` is
        copied there once).
        """
        i = self._position(param)
        _check_value(param)
        new_shape = param.value.shape
        old_size = math.prod(self._shapes[i])
        ops = param.backend
        if not ops.resident or isinstance(source, np.ndarray):
            src = ops.to_device(_check_source(param.name, source, new_shape, old_size))
        elif tuple(source.shape) != tuple(new_shape) or np.dtype(source.dtype) != np.int64:
            raise OptimizerError(
                f"remap source for {param.name!r} has shape {tuple(source.shape)} and dtype {source.dtype}, "
                f"expected int64 of the new value shape {new_shape}"
            )
        else:
            src = source
        for name, old in self._state[i].items():
            self._state[i][name] = ops.remap_by_source(old, src)
        self._shapes[i] = new_shape

    # ---------------------------------------------------------------------------------------------
    # serialisation

    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as copies: ``f"{param.name}.{state_name}"`` arrays plus the 0-d int64 ``"step"``.

        Returns
        -------
        dict of str to ndarray
            Host arrays (copied from the device on cuda), safe to keep: later steps do not change it.
        """
        d: dict[str, np.ndarray] = {STEP_KEY: np.array(self.steps, dtype=np.int64)}
        for p, state, backend in zip(self.params, self._state, self._state_backends):
            for name, arr in state.items():
                d[f"{p.name}.{name}"] = np.array(backend.to_host(arr), copy=True)
        return d

    def load_state_dict(self, d: Mapping[str, np.ndarray]) -> None:
        """Restore state saved by :meth:`state_dict` (for an exact resume).

        The keys must be exactly those this optimizer would save, and every array must have the
        shape of its parameter's current value (so load the model first). Nothing is changed unless
        everything checks out.

        Raises
        ------
        OptimizerError
            On missing or unexpected keys, wrong shapes, a non-float state array or a bad step.
        """
        expected: dict[str, tuple[int, ...]] = {STEP_KEY: ()}
        for p in self.params:
            for name in self.state_names:
                expected[f"{p.name}.{name}"] = p.value.shape
        missing = sorted(set(expected) - set(d))
        unexpected = sorted(set(d) - set(expected))
        if missing or unexpected:
            raise OptimizerError(
                f"{type(self).__name__} state dict keys do not match: missing {missing}, "
                f"unexpected {unexpected}"
            )
        for key, shape in expected.items():
            arr = np.asarray(d[key])
            if arr.shape != shape:
                raise OptimizerError(
                    f"state dict entry {key!r} has shape {arr.shape}, expected {shape}"
                )
            if key == STEP_KEY:
                if arr.dtype.kind not in "iu" or int(arr) < 0:
                    raise OptimizerError(
                        f"state dict entry {key!r} must be a non-negative integer, got {arr!r}"
                    )
            elif arr.dtype.kind != "f":
                raise OptimizerError(
                    f"state dict entry {key!r} has dtype {arr.dtype}, expected a float array"
                )
        for i, p in enumerate(self.params):
            for name in self.state_names:
                host = np.array(d[f"{p.name}.{name}"], dtype=np.float32, copy=True)
                self._state[i][name] = p.backend.to_device(host)
            self._shapes[i] = p.value.shape
            self._state_backends[i] = p.backend
        self.steps = int(np.asarray(d[STEP_KEY]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_params={len(self.params)}, lr={self.lr}, steps={self.steps})"


def _check_value(p: Parameter) -> None:
    if not isinstance(p.value, np.ndarray) and not p.backend.resident:
        raise TypeError(f"parameter {p.name!r}: value is a {type(p.value).__name__}, expected ndarray")
    if p.value.dtype != np.float32:
        raise DTypeError(f"parameter {p.name!r}: value dtype is {p.value.dtype}, expected float32")


def _check_source(name: str, source, new_shape: tuple[int, ...], old_size: int) -> np.ndarray:
    if not isinstance(source, np.ndarray) or source.dtype.kind not in "iu":
        what = source.dtype if isinstance(source, np.ndarray) else type(source).__name__
        raise OptimizerError(f"remap source for {name!r} must be an integer ndarray, got {what}")
    if source.shape != new_shape:
        raise OptimizerError(
            f"remap source for {name!r} has shape {source.shape}, expected the new value shape "
            f"{new_shape}"
        )
    if source.size == 0:
        return source.astype(np.int64)
    lo, hi = int(source.min()), int(source.max())
    if lo < -1 or hi >= old_size:
        bad = lo if lo < -1 else hi
        raise OptimizerError(
            f"remap source for {name!r} holds {bad}, outside [-1, {old_size}) (old value size "
            f"{old_size})"
        )
    src = source.astype(np.int64, copy=False)
    kept = src[src >= 0]
    if kept.size:
        counts = np.bincount(kept, minlength=old_size)
        dup = int(np.argmax(counts))
        if counts[dup] > 1:
            raise OptimizerError(
                f"remap source for {name!r} maps {int(counts[dup])} new entries to old index {dup}; "
                "each old connection may be kept at most once"
            )
    return src
