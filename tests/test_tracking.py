"""Experiment tracking: TensorBoard's hparams beside every training, and MLflow runs (the
optional tracking extra) holding a training's parameters, per-epoch metrics, artifact and the
evaluation's AUCs, read back with each tool's own reader."""

from __future__ import annotations

import json
import math
import sys

import luigi
import pytest

import dataloaders  # noqa: F401  (registers the loaders)
import models  # noqa: F401  (registers the models)
from bhive import tracking, training
from bhive.plugins.model import TrainingSettings
from bhive.training import trackers
from tests.deepntuple_files import unit_config, write_config, write_samples
from tests.training_data import tiny_dataset

SMALL = {"DNN": {"hidden": [16, 8]}}


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> str:
    """One SQLite tracking database for the module (MLflow's first use of a database creates
    its tables, which takes seconds); each test tracks into its own experiment."""
    pytest.importorskip("mlflow", reason=f"MLflow tracking needs the tracking extra: {tracking.EXTRA}")
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str) -> list:
    found = client(uri).get_experiment_by_name(experiment)
    return client(uri).search_runs([found.experiment_id]) if found else []


def build(task) -> bool:
    return luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")


# -- TensorBoard -----------------------------------------------------------------------------

def test_hparams_and_final_metrics_are_in_the_tensorboard_events(tmp_path, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    cfg, directory = tiny_dataset(tmp_path, monkeypatch, n_jets=400, model_settings=SMALL)
    settings = training.training_settings(cfg, epochs=3, batch_size=128, learning_rate=0.002, patience=0)
    history = training.train_here(cfg, "DNN", directory, tmp_path / "out", settings)

    events = EventAccumulator(str(tmp_path / "out" / "work" / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    # no experiment summary: TensorBoard then collects the parameters of every training it sees
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    values = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = values.hparams
    assert hparams["model"].string_value == "DNN"
    assert hparams["model.hidden"].string_value == "[16, 8]"
    assert hparams["learning_rate"].number_value == pytest.approx(0.002)
    assert hparams["epochs"].number_value == 3 and hparams["batch_size"].number_value == 128
    assert hparams["optimizer"].string_value == "adamw" and hparams["precision"].string_value == "fp32"
    assert "mlflow" not in hparams
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS

    def last(tag: str) -> float:
        return events.Scalars(tag)[-1].value

    losses = [record["val_loss"] for record in history]
    best = losses.index(min(losses))
    assert last("hparams/epochs_trained") == 3
    assert last("hparams/best_epoch") == best + 1
    assert last("hparams/best_val_loss") == pytest.approx(min(losses), rel=1e-6)
    assert last("hparams/best_val_accuracy") == pytest.approx(history[best]["val_accuracy"], rel=1e-6)
    assert last("hparams/final_val_loss") == pytest.approx(losses[-1], rel=1e-6)
    assert last("hparams/final_val_accuracy") == pytest.approx(history[-1]["val_accuracy"], rel=1e-6)
    # the hparams session is the run of the loop's per-epoch scalars
    assert [event.step for event in events.Scalars("val_loss")] == [1, 2, 3]


def test_final_metrics_without_validation_follow_the_training_loss() -> None:
    history = [{"epoch": 1, "loss": 0.9, "accuracy": 0.5}, {"epoch": 2, "loss": 0.7, "accuracy": 0.6},
               {"epoch": 3, "loss": 0.8, "accuracy": 0.65}]
    assert tracking.final_metrics(history) == {
        "epochs_trained": 3.0, "best_epoch": 2.0, "best_loss": 0.7, "best_accuracy": 0.6, "final_loss": 0.8,
        "final_accuracy": 0.65}
    assert tracking.final_metrics([]) == {}


def test_parameters_are_flat_single_values() -> None:
    settings = TrainingSettings(class_weights={"b": 2.0, "light": 1.0}, attack_non_negative=("pt", "mass"),
                                mlflow={"uri": "elsewhere"})
    flat = tracking.parameters(settings, "DeepJet", {"dropout": 0.1, "widths": [64, 32], "lstm": {"size": 150}})
    assert flat["model"] == "DeepJet" and flat["model.dropout"] == 0.1 and flat["model.widths"] == "[64, 32]"
    assert flat["model.lstm.size"] == 150
    assert flat["class_weights.b"] == 2.0 and flat["attack_non_negative"] == '["pt", "mass"]'
    assert flat["compile"] is False and flat["epochs"] == 10
    assert not any(key.startswith("mlflow") for key in flat)
    assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())


# -- MLflow ----------------------------------------------------------------------------------

def test_a_training_and_its_evaluation_are_one_mlflow_run(tmp_path, monkeypatch, store, database) -> None:
    from tasks.evaluation import EvaluationTask
    from tasks.export import ExportTask
    from tasks.training import TrainingTask

    samples = write_samples(tmp_path / "samples", 300)
    write_config(tmp_path / "configs", "unit", unit_config(
        samples, model_settings=SMALL, training={"epochs": 2, "batch_size": 128, "patience": 0}))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))
    common = {"config": "unit", "version": "v1", "model_name": "DNN", "executor": "iterative",
              "mlflow_uri": database, "mlflow_experiment": "through-the-tasks"}

    # stopped after the first epoch, then resumed: one run, which the resume continues
    assert not build(TrainingTask(**common, stop_after_epoch=1))
    (stopped,) = runs_of(database, "through-the-tasks")
    assert stopped.info.status == "KILLED"
    task = TrainingTask(**common, resume=True)
    assert build(task)

    (run,) = runs_of(database, "through-the-tasks")
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "unit/v1/DNN"
    identity = task.identity()
    assert run.data.tags[tracking.TRAINING_TAG] == training_key(task)
    params = run.data.params
    assert params["model"] == "DNN" and params["model.hidden"] == "[16, 8]"
    assert params["epochs"] == "2" and params["batch_size"] == "128" and params["optimizer"] == "adamw"
    assert params["config"] == "unit" and params["config_hash"] == task.cfg.hash
    assert params["dataset_identity"] == identity["input.dataset"] and params["dataset_version"] == "v1"
    assert params["code_version"]
    assert params["stop_after_epoch"] == "1"  # the first start's; a resume changes no logged value

    history = json.loads(task.local_path("history.json").read_text())
    for name in ("loss", "val_loss", "val_accuracy", "learning_rate"):
        logged = client(database).get_metric_history(run.info.run_id, name)
        assert [metric.step for metric in logged] == [1, 2]
        assert [metric.value for metric in logged] == pytest.approx([record[name] for record in history])
    assert run.data.metrics["best_val_loss"] == pytest.approx(min(record["val_loss"] for record in history))
    assert run.data.metrics["epochs_trained"] == 2
    logged = {artifact.path for artifact in client(database).list_artifacts(run.info.run_id, "model")}
    assert {"model/model.json", "model/weights.pt"} <= logged
    assert "history.json" in {artifact.path for artifact in client(database).list_artifacts(run.info.run_id)}
    recorded = json.loads(task.local_path("model", "model.json").read_text())["settings"]["mlflow"]
    assert recorded["run_id"] == run.info.run_id

    # the evaluation, given the AUCs its ROCCurveTask wrote, adds them and an existing ONNX export
    evaluation = EvaluationTask(**common)
    aucs = tmp_path / "aucs.json"
    aucs.write_text(json.dumps({"auc": {"BvsL": {"all": 0.91, "ttbar (pt 30-1000)": 0.93, "qcd": float("nan")}},
                                "notes": []}))
    onnx = ExportTask.req(evaluation).local_path()
    onnx.mkdir(parents=True)
    (onnx / "model.onnx").write_bytes(b"onnx")
    evaluation.track(aucs)
    (run,) = runs_of(database, "through-the-tasks")
    assert run.data.metrics["auc/BvsL"] == 0.91 and run.data.metrics["auc/BvsL/ttbar _pt 30-1000"] == 0.93
    assert not any(name.startswith("auc/BvsL/qcd") for name in run.data.metrics)
    assert {artifact.path for artifact in client(database).list_artifacts(run.info.run_id, "onnx")} == {
        "onnx/model.onnx"}


@pytest.mark.slow
def test_of_two_training_processes_only_the_one_that_writes_logs(tmp_path, monkeypatch, store, database) -> None:
    from tasks.training import TrainingTask

    samples = write_samples(tmp_path / "samples", 300)
    write_config(tmp_path / "configs", "unit", unit_config(samples, model_settings=SMALL,
                                                           training={"epochs": 2, "batch_size": 128}))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert build(TrainingTask(config="unit", version="v1", model_name="DNN", executor="iterative", device="cpu",
                              devices=2, mlflow_uri=database, mlflow_experiment="two-processes"))
    (run,) = runs_of(database, "two-processes")
    assert run.info.status == "FINISHED" and run.data.params["model"] == "DNN"
    assert [metric.step for metric in client(database).get_metric_history(run.info.run_id, "val_loss")] == [1, 2]


def training_key(task) -> str:
    from bhive.store import stable_hash

    return stable_hash(task.identity())


def test_the_evaluation_of_an_untracked_training_gets_a_run_of_its_own(database) -> None:
    run = tracking.MlflowRun(uri=database, experiment="untracked", name="unit/v2/DNN", key="abc123")
    found = tracking.log_evaluation(run, {"auc": {"BvsC": {"all": 0.7}}})
    again = tracking.log_evaluation(run, {"auc": {"CvsL": {"all": 0.8}}})
    assert found.run_id == again.run_id
    (logged,) = runs_of(database, "untracked")
    assert logged.data.metrics == {"auc/BvsC": 0.7, "auc/CvsL": 0.8}
    assert logged.info.run_name == "unit/v2/DNN" and logged.data.tags[tracking.TRAINING_TAG] == "abc123"


def test_only_the_process_that_writes_starts_a_run(tmp_path, database) -> None:
    run = tracking.MlflowRun(uri=database, experiment="ranks", name="unit/v1/DNN", key="def456")
    settings = TrainingSettings(mlflow=run.to_json())
    with trackers.mlflow_training(settings, {"epochs": 1}, resume=False, writes=False) as same:
        assert same is settings
        assert trackers.mlflow_metrics(same, tmp_path) is None  # no started run, nothing to log into
    assert runs_of(database, "ranks") == []
    with pytest.raises(RuntimeError), trackers.mlflow_training(settings, {"epochs": 1}, resume=False) as started:
        assert trackers.mlflow_metrics(started, tmp_path) is not None
        raise RuntimeError("the training failed")
    (failed,) = runs_of(database, "ranks")
    assert failed.info.status == "FAILED" and failed.data.params == {"epochs": "1"}


def test_without_a_uri_mlflow_is_neither_imported_nor_written(tmp_path, monkeypatch) -> None:
    from tasks.training import TrainingTask

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it now fails, as without the extra
    cfg, directory = tiny_dataset(tmp_path, monkeypatch, n_jets=400)
    settings = training.training_settings(cfg, epochs=1, batch_size=128)
    assert settings.mlflow == {} and tracking.MlflowRun.of(settings) is None
    assert trackers.mlflow_metrics(settings, tmp_path) is None
    training.train_here(cfg, "DNN", directory, tmp_path / "out", settings)
    assert json.loads((tmp_path / "out" / "model" / "model.json").read_text())["settings"]["mlflow"] == {}
    assert not [path for path in tmp_path.rglob("*") if path.name in ("mlruns", "mlartifacts", "mlflow.db")]

    # asked for without the extra: one error, when the task is made, with the way out
    with pytest.raises(tracking.TrackingError, match=r'pip install -e "\.\[tracking\]"'):
        TrainingTask(config="unit", version="v1", mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db")


@pytest.mark.parametrize(("uri", "says"), [
    ("ftp://host/runs", "'ftp' is not a tracking URI b-hive uses; give sqlite:///PATH/mlflow.db"),
    ("postgresql://host/mlflow", "'postgresql' is not a tracking URI"),
    ("sqlite://mlflow.db", "three slashes"),
    ("sqlite:////no/such/directory/mlflow.db", "the directory /no/such/directory does not exist"),
    ("https://user:secret@mlflow.example.org", "MLFLOW_TRACKING_USERNAME"),
    ("http:///runs", "no host"),
])
def test_a_bad_uri_fails_when_the_task_is_made(uri, says) -> None:
    from tasks.training import TrainingTask

    with pytest.raises(tracking.TrackingError, match="--mlflow-uri") as raised:
        TrainingTask(config="unit", version="v1", mlflow_uri=uri)
    assert says in str(raised.value)


def test_uris_are_made_absolute_for_batch_jobs(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow", reason=f"MLflow tracking needs the tracking extra: {tracking.EXTRA}")
    monkeypatch.chdir(tmp_path)
    assert tracking.check_uri("sqlite:///runs.db") == f"sqlite:///{tmp_path}/runs.db"
    assert tracking.check_uri("https://mlflow.example.org:5000") == "https://mlflow.example.org:5000"
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(tracking.TrackingError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        tracking.check_uri("mlruns")


def test_a_file_store_works_where_mlflow_is_told_to_allow_it(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow", reason=f"MLflow tracking needs the tracking extra: {tracking.EXTRA}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tracking.MlflowRun(uri=str(tmp_path / "mlruns"), experiment="files", name="unit/v1/DNN", key="f00")
    assert run.uri == (tmp_path / "mlruns").as_uri()
    started = run.start({"epochs": 2}, resume=False)
    started.log_metrics({"val_loss": 0.5}, step=1)
    started.end("FINISHED")
    (logged,) = runs_of(run.uri, "files")
    assert logged.data.params == {"epochs": "2"} and logged.data.metrics == {"val_loss": 0.5}


def test_auc_metric_names_are_ones_mlflow_takes() -> None:
    metrics = tracking.auc_metrics({"auc": {"BvsL": {"all": 0.9, "ttbar (pt 30-1000, abs_eta 0-2.5)": 0.8,
                                                     "qcd": math.nan}}})
    assert metrics == {"auc/BvsL": 0.9, "auc/BvsL/ttbar _pt 30-1000_ abs_eta 0-2.5": 0.8}
