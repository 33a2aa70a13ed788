"""Training: the loop that steps a model through a data set (:mod:`.loop`) and its files on disk
(:mod:`.checkpoint`). May import every layer below it (data, formats, kernels, nn, optim, dst).

:class:`Trainer` / :func:`fit` run epochs of forward, backward, optimizer step and topology update,
time each phase and return metrics (they never print); :mod:`.checkpoint` writes models and
training state atomically and reads them back exactly.
"""

from __future__ import annotations

from ..dst.base import TopologyUpdater
from .checkpoint import CheckpointError, load_model, load_training_state, save_model, save_training_checkpoint
from .loop import TrainConfig, TrainConfigError, Trainer, TrainingDiverged, evaluate, fit

__all__ = [
    "CheckpointError", "TopologyUpdater", "TrainConfig", "TrainConfigError", "Trainer", "TrainingDiverged",
    "evaluate", "fit", "load_model", "load_training_state", "save_model", "save_training_checkpoint",
]
