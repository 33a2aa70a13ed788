"""The training loop: epochs over shuffled batches, evaluation each epoch, timing per phase.

Nothing here prints; :meth:`Trainer.fit` returns one metrics dict per epoch and calls optional hooks,
which the CLI uses for its progress bar, ``metrics.jsonl`` and checkpoints.

One optimizer step is:

1. forward: ``logits = model(X)``
2. backward: loss and ``dL/dlogits``, back through every layer into ``param.grad``
3. optimizer: ``lr = schedule(step)``, update every parameter in place; ``step += 1``
4. topology: ``topology.after_step(step, ...)`` may change the sparse structure (DST methods)

and every epoch starts with ``topology.begin_epoch(epoch, ...)`` (DynaDiag sets its temperature and
freezes its gates there).

Each phase's wall time is measured after ``backend.synchronize()``, so asynchronous backends are
timed correctly.

Where the arrays live: every step runs on the model's backend (``model.backend``). Each batch (X, y)
is moved there once (``backend.to_device``: no copy on the host backends), forward, loss, backward
and the optimizer run on its arrays, and the loss kernel hands back the loss and the number of correct
predictions in one host copy. On cuda that is the whole traffic of a step (two copies in, one out);
a topology update adds the copies documented in :mod:`purerigl.dst.updater`, once per delta_t steps.
:func:`evaluate` runs on the device too (one copy in per batch of X and y, one out).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..data import Dataset, iterate_batches
from ..dst.base import TopologyUpdater
from ..errors import PureriglError
from ..optim.lr_schedule import make_schedule
from ..nn import MLP
from ..optim import make_optimizer

PHASES = ("forward", "backward", "optimizer", "topology")


class TrainConfigError(PureriglError, ValueError):
    """A training option is out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (everything except the model and the data)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    lr_step_size: int | None = None  # step schedule: epochs between decays (None: a third of the epochs)
    lr_gamma: float = 0.1  # step schedule: decay factor
    seed: int = 0

    def check(self, n_train: int) -> None:
        if self.epochs < 1:
            raise TrainConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.batch_size > n_train:
            raise TrainConfigError(
                f"batch size {self.batch_size} is larger than the training set ({n_train} samples)"
            )
        if not self.lr > 0:
            raise TrainConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise TrainConfigError(f"warm-up steps must be >= 0, got {self.warmup_steps}")

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(model: MLP, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> dict:
    """Mean loss and accuracy (a fraction) of ``model`` on the host arrays (x, y).

    Runs on the model's backend: each batch is moved there, and only its loss and number of correct
    predictions come back.
    """
    if x.shape[0] == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    backend = model.backend
    total_loss, correct = 0.0, 0
    with _evaluating(model):
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = model.forward(backend.to_device(np.ascontiguousarray(xb)))
            loss, _, hits = backend.softmax_cross_entropy(logits, backend.to_device(yb))
            total_loss += loss * xb.shape[0]
            correct += hits
    return {"loss": total_loss / x.shape[0], "accuracy": correct / x.shape[0]}


def _evaluating(model):
    """The model in evaluation mode for the block (a :class:`~purerigl.nn.network.Network` with batch
    normalisation: running statistics, none updated); nothing to switch for an MLP."""
    return model.evaluating() if hasattr(model, "evaluating") else contextlib.nullcontext()


class Trainer:
    """Holds everything a run needs to continue: model, optimizer, schedule, shuffling RNG, counters.

    Parameters
    ----------
    model : MLP
    data : Dataset
    config : TrainConfig
    topology : TopologyUpdater, optional
        The DST method; static sparse training when omitted.
    """

    def __init__(self, model: MLP, data: Dataset, config: TrainConfig, topology: TopologyUpdater | None = None):
        config.check(data.x_train.shape[0])
        self.model, self.data, self.config = model, data, config
        self.topology = topology or TopologyUpdater()
        self.optimizer = make_optimizer(
            config.optimizer,
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        self.steps_per_epoch = -(-data.x_train.shape[0] // config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.lr_at = make_schedule(
            config.schedule,
            config.lr,
            self.total_steps,
            warmup_steps=config.warmup_steps,
            steps_per_epoch=self.steps_per_epoch,
            **(
                {"step_size": config.lr_step_size or max(1, config.epochs // 3), "gamma": config.lr_gamma}
                if config.schedule == "step"
                else {}
            ),
        )
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.history: list[dict] = []

    def _sync(self) -> None:
        self.model.backend.synchronize()

    def run_epoch(self, on_batch=None) -> dict:
        """Train one epoch and evaluate; returns the epoch's metrics (also appended to ``history``)."""
        times = dict.fromkeys(PHASES, 0.0)
        losses, correct, seen = 0.0, 0, 0
        topo_stats: dict = {}
        clock = time.perf_counter
        backend = self.model.backend
        if hasattr(self.model, "train"):  # a Network: batch statistics while training
            self.model.train()
        self.topology.begin_epoch(self.epoch, self.model, self.optimizer)
        t_epoch = clock()
        for xb, yb in iterate_batches(self.data.x_train, self.data.y_train, self.config.batch_size, self.rng):
            t0 = clock()
            logits = self.model.forward(backend.to_device(xb))
            self._sync()
            t1 = clock()
            loss, dlogits, hits = backend.softmax_cross_entropy(logits, backend.to_device(yb))
            if not np.isfinite(loss):
                raise self._diverged(f"the training loss became {loss} at step {self.step}")
            self.model.backward(dlogits)
            self._sync()
            t2 = clock()
            self.optimizer.step(lr=self.lr_at(self.step))
            self.step += 1
            self._sync()
            t3 = clock()
            try:
                topo_stats.update(self.topology.after_step(self.step, self.model, self.optimizer))
            except PureriglError as err:  # e.g. a sampler refusing NaN scores: report the cause
                if not self._parameters_finite():
                    raise self._diverged(f"the weights became NaN or Inf at step {self.step - 1}") from err
                raise
            self._sync()
            t4 = clock()
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
            times["topology"] += t4 - t3
            losses += loss * xb.shape[0]
            correct += hits
            seen += xb.shape[0]
            if on_batch is not None:
                on_batch(xb.shape[0], loss)
        train_seconds = clock() - t_epoch
        t_eval = clock()
        test = evaluate(self.model, self.data.x_test, self.data.y_test)
        if self.data.x_test.shape[0] and not np.isfinite(test["loss"]):  # the last step broke the weights
            raise self._diverged(f"the test loss became {test['loss']} after step {self.step - 1}")
        metrics = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "lr": self.lr_at(self.step - 1),
            "train_loss": losses / seen,
            "train_accuracy": correct / seen,
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }
        if self.data.x_val.shape[0]:
            val = evaluate(self.model, self.data.x_val, self.data.y_val)
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        metrics.update(
            seconds=train_seconds,
            eval_seconds=clock() - t_eval,
            samples_per_second=seen / train_seconds if train_seconds > 0 else float("inf"),
            **{f"{phase}_seconds": t for phase, t in times.items()},
        )
        metrics.update(topo_stats)
        metrics.update(self.topology.epoch_stats(self.model))
        self.epoch += 1
        self.history.append(metrics)
        return metrics

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged: {what} (epoch {self.epoch + 1}; steps count from 0)")

    def _parameters_finite(self) -> bool:
        self.model.sync_to_host()
        return all(np.isfinite(p.host).all() for p in self.model.parameters())

    def warm_up(self) -> None:
        """One forward and backward pass on a first batch, discarded: compiles the kernels (Numba)
        so that the first epoch's timings measure training, not compilation. Changes no state (the
        batches the sparse layers keep for accumulated growth scores and the running statistics of batch
        normalisation are put back as they were)."""
        n = min(self.config.batch_size, self.data.x_train.shape[0])
        backend = self.model.backend
        kept = [(layer, layer.kept_batches()) for layer in self.model.sparse_layers()]
        buffers = {k: np.copy(v) for k, v in getattr(self.model, "buffers", dict)().items()}  # BatchNorm statistics
        xb = backend.to_device(np.ascontiguousarray(self.data.x_train[:n]))
        _, dlogits, _ = backend.softmax_cross_entropy(self.model.forward(xb), backend.to_device(self.data.y_train[:n]))
        self.model.backward(dlogits)
        for p in self.model.parameters():
            p.backend.fill_zeros(p.grad)
        for layer, pairs in kept:
            layer.set_kept_batches(pairs)
        if buffers:
            self.model.load_buffers(buffers)
        self._sync()

    def fit(self, on_epoch=None, on_batch=None, warm_up: bool = True) -> list[dict]:
        """Run the remaining epochs (all of them for a fresh trainer); returns the whole history.

        With ``warm_up`` (default) the kernels are compiled before the first timed step.
        """
        if warm_up and self.epoch < self.config.epochs:
            self.warm_up()
        self.topology.begin(self.model)
        while self.epoch < self.config.epochs:
            metrics = self.run_epoch(on_batch=on_batch)
            if on_epoch is not None:
                on_epoch(self, metrics)
        return self.history


class TrainingDiverged(PureriglError, FloatingPointError):
    """The training loss became NaN or Inf."""


def fit(model: MLP, data: Dataset, config: TrainConfig, topology=None, on_epoch=None, on_batch=None) -> list[dict]:
    """Train ``model`` on ``data``; returns one metrics dict per epoch. See :class:`Trainer`."""
    return Trainer(model, data, config, topology).fit(on_epoch=on_epoch, on_batch=on_batch)
