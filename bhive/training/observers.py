"""Observers of a training: code that watches each epoch's record without being part of the
loop (experiment tracking, the pruning of a hyperparameter search).

An observer is built per training from its settings by a factory in :data:`FACTORIES` (each
returns None when its settings do not ask for it), runs in the process that writes (rank 0),
and is told three things: the training starts, an epoch ended (its record, as in
``history.json``), the training finished (the history, the model with its best weights). From
an epoch it may return a reason to stop: the loop then ends the training after that epoch,
as early stopping does, records the reason in the epoch's ``stopped`` entry and saves the
model, so that a stopped training (a pruned trial) is a complete one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bhive import search_trial
from bhive.plugins.model import TrainingSettings
from bhive.training import trackers
# defined in its own module so that the observers' modules, listed here, can subclass it
from bhive.training.observer_base import EpochObserver


Factory = Callable[[TrainingSettings, Path], "EpochObserver | None"]

#: the factories asked for each training's observers, in order
FACTORIES: tuple[Factory, ...] = (
    trackers.tensorboard_hparams, trackers.mlflow_metrics,  # experiment tracking (bhive.tracking)
    search_trial.observer,  # the pruning of a hyperparameter search (bhive.search)
)


def training_observers(settings: TrainingSettings, workdir: Path,
                       factories: Sequence[Factory] | None = None) -> list[EpochObserver]:
    """The observers the ``settings`` of a training in ``workdir`` ask for."""
    built = (factory(settings, Path(workdir)) for factory in (FACTORIES if factories is None else factories))
    return [observer for observer in built if observer is not None]


def stop_reason(observers: Sequence[EpochObserver], record: dict) -> str | None:
    """The first observer's reason to stop after the epoch of ``record``, telling every observer."""
    reasons = [observer.epoch(record) for observer in observers]
    return next((reason for reason in reasons if reason), None)
