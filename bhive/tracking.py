"""Experiment tracking: what a training leaves behind so that trainings can be compared side by
side, outside the store.

- TensorBoard's hparams view, for every training: when it ends, its settings and its model's
  hyperparameters (:func:`parameters`) and its final metrics (:func:`final_metrics`) are
  written beside the loop's scalars (:func:`write_hparams`). TensorBoard started on a
  directory above several trainings shows them in one table.
- An MLflow run, when asked for (``--mlflow-uri``, the optional ``tracking`` extra): the same
  parameters plus the config, dataset and code identity, every epoch's metrics, the artifact,
  and later the evaluation's AUCs (:class:`MlflowRun`).

Neither changes a result, so neither is part of an output's identity. MLflow is imported only
when a run is asked for, and only tracking URIs of the kinds below are accepted: an SQLite
database (no server), an MLflow server over http(s), or, where MLflow is told to allow it, a
file store. Nothing logged is ever loaded back as code.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bhive.plugins.model import TrainingSettings

logger = logging.getLogger(__name__)

#: how to install what MLflow tracking needs
EXTRA = 'pip install -e ".[tracking]"'
URI_FLAG = "--mlflow-uri"
#: the tag holding a training's identity hash, by which its run is found again
TRAINING_TAG = "bhive.training"
#: TensorBoard's final metrics go under this prefix, apart from the per-epoch scalars
HPARAMS_PREFIX = "hparams/"
#: the setting that holds the tracking itself: where, not how, a training is recorded
TRACKING_SETTING = "mlflow"
_SQLITE = "sqlite:///"
_QUANTITIES = ("loss", "accuracy", "val_loss", "val_accuracy")
_MAX_PARAMS_PER_CALL = 100  # MLflow's limit for one batch

Scalar = bool | int | float | str


class TrackingError(ValueError):
    """Tracking asked for in a way that cannot work (a URI, a missing extra)."""


# -- what is recorded ------------------------------------------------------------------------

def parameters(settings: TrainingSettings, model: str, hyperparameters: Mapping[str, Any]) -> dict[str, Scalar]:
    """The training settings (without the tracking itself), the model's name and its
    hyperparameters (``model.<name>``), flat: nested mappings by dotted keys, lists as JSON
    text. TensorBoard and MLflow take single values, and flat keys line up across trainings."""
    flat: dict[str, Scalar] = {"model": model}
    for key, value in settings.to_json().items():
        if key != TRACKING_SETTING:
            _flatten(key, value, flat)
    for key, value in hyperparameters.items():
        _flatten(f"model.{key}", value, flat)
    return flat


def _flatten(key: str, value: Any, into: dict[str, Scalar]) -> None:
    if isinstance(value, Mapping):
        for name, item in value.items():
            _flatten(f"{key}.{name}", item, into)
    elif isinstance(value, (list, tuple)):
        into[key] = json.dumps(list(value))
    elif isinstance(value, (bool, int, float, str)):
        into[key] = value
    else:
        into[key] = str(value)


def final_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How a training ended: ``epochs_trained``, the epoch whose weights were kept
    (``best_epoch``, lowest validation loss, or training loss without validation) with its
    ``best_<quantity>``, and the last epoch's ``final_<quantity>``, for loss, accuracy and
    their validation values where the history has them."""
    if not history:
        return {}
    monitored = "val_loss" if all("val_loss" in record for record in history) else "loss"
    best = min(history, key=lambda record: record[monitored])  # the first of equals, as the loop keeps it
    metrics = {"epochs_trained": float(len(history)), "best_epoch": float(best["epoch"])}
    for name, record in (("best", best), ("final", history[-1])):
        metrics.update({f"{name}_{quantity}": float(record[quantity]) for quantity in _QUANTITIES
                        if quantity in record})
    return metrics


def write_hparams(logdir: Path, values: Mapping[str, Scalar], metrics: Mapping[str, float]) -> None:
    """One TensorBoard hparams session in ``logdir``: the parameters and a successful end,
    with ``metrics`` as scalars under ``hparams/``.

    No experiment summary is written: TensorBoard shows the parameter list of whichever
    training's summary it finds first, while without any it collects every training's, which
    is what lets trainings of different models share one table.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    _, start, end = hparams(dict(values), {})
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        writer.file_writer.add_summary(start)
        writer.file_writer.add_summary(end)
        step = int(metrics.get("epochs_trained", 0))
        for key, value in metrics.items():
            writer.add_scalar(HPARAMS_PREFIX + key, value, step)
    finally:
        writer.close()


def auc_metrics(aucs: Mapping[str, Any]) -> dict[str, float]:
    """``auc/<discriminator>`` for all jets and ``auc/<discriminator>/<selection>`` for every
    other selection of an ``aucs.json``; undefined AUCs are left out. Characters MLflow does
    not take in a metric name (a selection's cuts: parentheses, commas) become ``_``."""
    metrics = {}
    for discriminator, per_selection in aucs.get("auc", {}).items():
        for selection, value in per_selection.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                name = f"auc/{discriminator}" + ("" if selection == "all" else f"/{selection}")
                metrics[re.sub(r"[^\w./ -]+", "_", name).strip("_ ")] = float(value)
    return metrics


# -- MLflow ----------------------------------------------------------------------------------

def check_uri(uri: str) -> str:
    """``uri`` as MLflow is given it (paths made absolute, so that batch jobs reach the same
    database), or a :class:`TrackingError` that names ``--mlflow-uri`` and the way out; also
    that the ``tracking`` extra is installed."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme == "sqlite":
        checked = _sqlite_uri(uri)
    elif scheme in ("http", "https"):
        checked = _server_uri(uri)
    elif scheme in ("", "file"):
        checked = _file_store_uri(uri)
    else:
        raise TrackingError(f"{URI_FLAG} {uri}: '{scheme}' is not a tracking URI b-hive uses; give "
                            f"sqlite:///PATH/mlflow.db (a database file, no server needed) or "
                            f"http(s)://HOST:PORT of an MLflow server")
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError(f"{URI_FLAG} {uri}: MLflow tracking needs the optional tracking extra, which is not "
                            f"installed; install it with {EXTRA}")
    return checked


def _sqlite_uri(uri: str) -> str:
    if not uri.startswith(_SQLITE) or uri == _SQLITE:
        raise TrackingError(f"{URI_FLAG} {uri}: write an SQLite database as sqlite:///PATH/mlflow.db (three "
                            f"slashes, then the path; a fourth for an absolute path)")
    path = Path(uri[len(_SQLITE):]).expanduser().absolute()
    if not path.parent.is_dir():
        raise TrackingError(f"{URI_FLAG} {uri}: the directory {path.parent} does not exist; create it (MLflow "
                            f"creates the database file, not its directory)")
    return f"{_SQLITE}{path}"


def _server_uri(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        raise TrackingError(f"{URI_FLAG} {uri}: no host; write http(s)://HOST:PORT of an MLflow server")
    if parts.username or parts.password:
        raise TrackingError(f"{URI_FLAG}: put no credentials into the URI (it is recorded in model.json); "
                            f"MLflow reads them from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or "
                            f"MLFLOW_TRACKING_TOKEN")
    return uri


def _file_store_uri(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    path = Path(urllib.parse.unquote(parts.path) if parts.scheme else uri).expanduser().absolute()
    # MLflow 3 refuses its file store unless told otherwise; say so before anything runs
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("1", "true"):
        raise TrackingError(f"{URI_FLAG} {uri}: MLflow 3 keeps its file store for old data only; use "
                            f"sqlite:///{path}/mlflow.db (a database file, no server needed), or export "
                            f"MLFLOW_ALLOW_FILE_STORE=true to write a file store anyway")
    return path.as_uri()


@functools.lru_cache(maxsize=None)
def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise TrackingError(f"{URI_FLAG} {uri}: MLflow tracking needs the optional tracking extra ({error}); "
                            f"install it with {EXTRA}") from None
    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class MlflowRun:
    """Where a training is tracked and under which name, and how its run is found again: by
    the training's identity hash (tag ``bhive.training``), so that a resumed training goes on
    in its run and the evaluation adds to it, in whichever process they run.

    ``parameters`` are what only the task knows (the dataset's identity hash); ``run_id`` is
    set once the run is started or found. As JSON it travels in ``TrainingSettings.mlflow``.
    """

    uri: str
    experiment: str
    name: str
    key: str
    parameters: dict[str, str] = field(default_factory=dict)
    run_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", check_uri(self.uri))
        if not self.experiment or not self.name:
            raise TrackingError(f"an MLflow run needs an experiment and a name (got {self.experiment!r}, "
                                f"{self.name!r})")
        if not re.fullmatch(r"[\w.-]+", self.key):
            raise TrackingError(f"the key of an MLflow run is an identity hash, not {self.key!r}")

    @classmethod
    def of(cls, settings: TrainingSettings) -> MlflowRun | None:
        """The run ``settings`` ask for; None when they ask for none."""
        data = getattr(settings, TRACKING_SETTING)
        return cls(**data) if data else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    # -- the run

    def start(self, values: Mapping[str, Scalar], resume: bool) -> MlflowRun:
        """A new run of the training, or with ``resume`` its latest run continued (a new one
        where it has none), with ``values`` and :attr:`parameters` logged; returns it with its id.

        A continued run keeps the values it has: MLflow refuses to change a parameter, and
        what may differ on a resume (``--device``, ``--stop-after-epoch``) changes no result.
        """
        client = _client(self.uri)
        experiment = self._experiment_id(client)
        run_id = self._latest(client, experiment) if resume else ""
        if run_id:
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._new(client, experiment)
        started = replace(self, run_id=run_id)
        started.log_parameters({**values, **self.parameters})
        return started

    def found(self) -> MlflowRun:
        """The training's latest run, or a new one where the training was not tracked."""
        client = _client(self.uri)
        experiment = self._experiment_id(client)
        run_id = self._latest(client, experiment)
        if not run_id:
            run_id = self._new(client, experiment)
            client.set_terminated(run_id, status="FINISHED")
        return replace(self, run_id=run_id)

    def log_parameters(self, values: Mapping[str, Scalar]) -> None:
        """The ``values`` the run does not have yet (as text, as MLflow keeps them)."""
        from mlflow.entities import Param

        client = _client(self.uri)
        logged = client.get_run(self.run_id).data.params
        new = [Param(key, str(value)) for key, value in values.items() if key not in logged]
        for start in range(0, len(new), _MAX_PARAMS_PER_CALL):
            client.log_batch(self.run_id, params=new[start:start + _MAX_PARAMS_PER_CALL])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        _client(self.uri).log_batch(self.run_id, metrics=[Metric(key, float(value), timestamp, step)
                                                          for key, value in metrics.items()])

    def log_artifacts(self, paths: Iterable[tuple[str, Path]]) -> None:
        """Each (artifact directory, local file or directory) that exists; a directory's files
        go directly under its artifact directory."""
        client = _client(self.uri)
        for destination, path in paths:
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(self.run_id, str(path), destination or None)
            elif path.is_file():
                client.log_artifact(self.run_id, str(path), destination or None)

    def end(self, status: str) -> None:
        """FINISHED, KILLED (stopped, to be resumed) or FAILED."""
        _client(self.uri).set_terminated(self.run_id, status=status)

    def _experiment_id(self, client) -> str:
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment, artifact_location=_artifact_location(self.uri))
            except MlflowException:
                # another training created it meanwhile
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise TrackingError(f"the MLflow experiment '{self.experiment}' at {self.uri} is deleted; restore it, or "
                                f"track into another with --mlflow-experiment")
        return experiment.experiment_id

    def _new(self, client, experiment: str) -> str:
        return client.create_run(experiment, run_name=self.name, tags={TRAINING_TAG: self.key}).info.run_id

    def _latest(self, client, experiment: str) -> str:
        runs = client.search_runs([experiment], filter_string=f"tags.`{TRAINING_TAG}` = '{self.key}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else ""


def _artifact_location(uri: str) -> str | None:
    """Beside an SQLite database, its runs' artifacts (MLflow's default would be a directory
    under the working directory of whichever process made the experiment); a server or a file
    store decides for itself."""
    if uri.startswith(_SQLITE):
        return (Path(uri[len(_SQLITE):]).parent / "mlartifacts").as_uri()
    return None


def log_evaluation(run: MlflowRun, aucs: Mapping[str, Any], files: Iterable[tuple[str, Path]] = ()) -> MlflowRun:
    """The evaluation's AUCs (:func:`auc_metrics`) and ``files`` (artifact directory, local
    path) added to the training's run (:meth:`MlflowRun.found`); returns that run."""
    found = run.found()
    found.log_metrics(auc_metrics(aucs))
    found.log_artifacts(files)
    logger.info("logged the AUCs to MLflow run %s (%s)", found.run_id, found.name)
    return found
