"""The training's side of experiment tracking (:mod:`bhive.tracking`): two observers of the
loop, and the MLflow run around a training.

- :class:`TensorBoardHparams`, for every training that goes through the loop: the hparams
  session beside the loop's scalars, written once, when the training ends (a resumed training
  writes it at its real end, not at every start).
- :class:`MlflowMetrics`, when the settings name an MLflow run: every epoch's record as
  metrics of that run, the epoch as the step.
- :func:`mlflow_training`: the run itself, started (or continued with ``--resume``) before
  the training and ended after it, also for models that train without the loop.

Only the process that writes (rank 0) tracks: the loop builds observers there alone, and
:func:`~bhive.training.fitting.train_here` starts the run there alone.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bhive import tracking
from bhive.plugins.model import TrainingSettings
from bhive.training.observer_base import EpochObserver
from bhive.training.state import TENSORBOARD, TrainingStopped

logger = logging.getLogger(__name__)


class TensorBoardHparams(EpochObserver):
    """Settings and hyperparameters of a training with its final metrics, for TensorBoard's
    hparams view."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.values: dict[str, tracking.Scalar] = {}

    def started(self, model, settings: TrainingSettings) -> None:
        self.values = tracking.parameters(settings, type(model).__name__, getattr(model, "hyperparameters", {}))

    def finished(self, history: Sequence[dict], model) -> None:
        tracking.write_hparams(self.logdir, self.values, tracking.final_metrics(history))


def tensorboard_hparams(settings: TrainingSettings, workdir: Path) -> TensorBoardHparams | None:
    """Every training's; none where tensorboard is missing (a declared dependency, but the loop
    stays usable without it)."""
    return TensorBoardHparams(workdir / TENSORBOARD) if importlib.util.find_spec("tensorboard") else None


class MlflowMetrics(EpochObserver):
    """Each epoch's numbers as metrics of the training's MLflow run."""

    def __init__(self, run: tracking.MlflowRun) -> None:
        self.run = run

    def epoch(self, record: dict) -> str | None:
        metrics = {key: float(value) for key, value in record.items()
                   if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        try:
            self.run.log_metrics(metrics, step=record["epoch"])
        except Exception as error:  # noqa: BLE001 - tracking must never cost a training its epochs
            logger.warning("MLflow: the metrics of epoch %s were not logged (%s: %s); the training goes on",
                           record["epoch"], type(error).__name__, error)
        return None


def mlflow_metrics(settings: TrainingSettings, workdir: Path) -> MlflowMetrics | None:
    """For a training whose settings name a started MLflow run (:func:`mlflow_training`)."""
    run = tracking.MlflowRun.of(settings)
    return MlflowMetrics(run) if run is not None and run.run_id else None


@contextmanager
def mlflow_training(settings: TrainingSettings, values: Mapping[str, Any], resume: bool,
                    writes: bool = True) -> Iterator[TrainingSettings]:
    """The training's MLflow run, when its settings ask for one and this process writes:
    started with ``values`` (or continued, with ``resume``), ended FINISHED, KILLED when the
    training stopped to be resumed, FAILED on an error. Yields the settings to train with,
    which name the started run to the observers; without a run, ``settings`` as they are."""
    run = tracking.MlflowRun.of(settings) if writes else None
    if run is None:
        yield settings
        return
    run = run.start(values, resume)
    try:
        yield replace(settings, **{tracking.TRACKING_SETTING: run.to_json()})
    except TrainingStopped:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


def log_training(settings: TrainingSettings, history: Sequence[dict], files: Iterable[tuple[str, Path]]) -> None:
    """The final metrics and ``files`` (artifact directory, local path) of a finished training,
    in the run its settings name, if any. The training is complete by then: a failure here is
    a warning, not a lost training."""
    run = tracking.MlflowRun.of(settings)
    if run is None or not run.run_id:
        return
    try:
        run.log_metrics(tracking.final_metrics(history), step=len(history))
        run.log_artifacts(files)
    except Exception as error:  # noqa: BLE001 - see above
        logger.warning("MLflow: the training's outcome was not logged to run %s (%s: %s)", run.run_id,
                       type(error).__name__, error)
