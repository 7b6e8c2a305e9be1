"""TrainingTask and ExportTask end to end on a small generated config."""

import json

import luigi
import numpy as np
import torch

from bhive.training import load_tensors
from models.base import load_model
from tasks.export import ExportTask
from tasks.training import TrainingTask
from tests.deepntuple_files import unit_config, write_config, write_samples

SMALL = {"DNN": {"hidden": [16]}, "GradientBoosting": {"max_iter": 20}}


def configure(tmp_path, monkeypatch):
    samples = write_samples(tmp_path / "samples", 600)
    write_config(tmp_path / "configs", "unit", unit_config(
        samples, model_settings=SMALL, training={"epochs": 2, "batch_size": 128}))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))


def build(task) -> bool:
    return luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")


def test_scikit_learn_model_through_training_task(tmp_path, monkeypatch, store):
    configure(tmp_path, monkeypatch)
    task = TrainingTask(config="unit", version="v1", model_name="GradientBoosting", executor="iterative")
    assert build(task)
    artifact = task.local_path("model")
    assert task.local_path().parts[-2:] == ("v1", "GradientBoosting")
    description = json.loads((artifact / "model.json").read_text())
    assert description["model"] == "GradientBoosting" and description["classes"]["isB"] == ["isB"]
    assert description["truth_labels"] == ["isB", "isC", "isL"]
    # the task's additions to model.json keep the artifact's file list
    assert set(description["files"]) == {"estimator.skops"}
    history = json.loads(task.local_path("history.json").read_text())
    assert history[0]["val_accuracy"] > 0.4
    assert (task.local_path("plots") / "loss.png").exists()
    assert type(load_model(artifact)).__name__ == "GradientBoosting"


def test_torch_model_trains_and_exports_to_onnx(tmp_path, monkeypatch, store):
    configure(tmp_path, monkeypatch)
    # a check that cannot pass: the export is kept for inspection, but the task is not complete
    rejected = ExportTask(config="unit", version="v1", model_name="DNN", n_check_jets=256, tolerance=-1.0,
                          executor="iterative")
    assert not build(rejected)
    assert not rejected.complete()
    assert not rejected.local_path("model.onnx").exists() and not rejected.local_path("onnx_check.json").exists()
    assert rejected.local_path("model.rejected.onnx").exists()
    assert not json.loads(rejected.local_path("onnx_check.rejected.json").read_text())["passed"]

    export = ExportTask(config="unit", version="v1", model_name="DNN", n_check_jets=256, executor="iterative")
    assert build(export)
    check = json.loads(export.local_path("onnx_check.json").read_text())
    assert check["passed"] and check["n_jets_checked"] == 256 and check["max_abs_difference"] < 1e-4
    assert set(check["max_abs_difference_by_batch_size"]) == {"1", "7", "256"}
    assert check["model"] == "DNN"
    assert check["inputs"] == ["global"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export.local_path("model.onnx")))
    out = session.run(None, {"global": np.zeros((7, 4), np.float32)})[0]
    assert out.shape == (7, 3)  # dynamic batch size


def test_two_training_processes_through_the_task(tmp_path, monkeypatch, store):
    """--devices 2 (torchrun, gloo between CPU processes) gives the one-process result to float
    precision, and names the same output: the number of processes is not part of the identity."""
    configure(tmp_path, monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = {"config": "unit", "version": "v1", "model_name": "DNN", "executor": "iterative", "device": "cpu"}
    one = TrainingTask(**common)
    assert build(one)
    assert TrainingTask(**common, devices=2).task_id == one.task_id
    assert TrainingTask(**common, devices=2).complete()
    two = TrainingTask(**common, training_version="v2", devices=2)
    assert build(two)
    histories = [json.loads(task.local_path("history.json").read_text()) for task in (one, two)]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in histories[1]], [h[key] for h in histories[0]], rtol=1e-6)
    expected, obtained = (load_tensors(task.local_path("model", "weights.pt"), "cpu") for task in (one, two))
    for key, value in expected.items():
        torch.testing.assert_close(obtained[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert (two.local_path("plots") / "loss.png").exists()
