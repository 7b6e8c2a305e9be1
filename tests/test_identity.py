"""A version names exactly one result: every task records its identity, and asking for an
existing version with anything changed is an error naming the key and the version to bump.

One small training (DNN on generated DeepNtuple files) is built once; each test changes one
thing and checks the conflict, then restores the config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import luigi
import pytest
import yaml

from bhive import identity
from bhive.identity import VersionConflictError
from bhive.store import read_json
from tasks.evaluation import EvaluationTask, InferenceTask, ROCCurveTask
from tasks.training import TrainingTask
from tests.deepntuple_files import unit_config, write_config, write_samples

REPO = Path(__file__).resolve().parents[1]
SMALL = {"DNN": {"hidden": [16]}, "GradientBoosting": {"max_iter": 20}}


def build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, config file) with a finished DNN training and its ROC curves, version v1."""
    root = tmp_path_factory.mktemp("identity")
    samples = write_samples(root / "samples", 400)
    write_config(root / "configs", "unit", unit_config(
        samples, model_settings=SMALL, training={"epochs": 1, "batch_size": 128}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BHIVE_CONFIG_DIR", str(root / "configs"))
        patch.setenv("BHIVE_STORE", str(root / "store"))
        assert build(ROCCurveTask(config="unit", version="v1", model_name="DNN", executor="iterative"))
        yield root, root / "configs" / "unit.yml"


@contextlib.contextmanager
def edited(path: Path, change):
    """The config at ``path`` changed by ``change(dict)`` for the duration of the block."""
    original = path.read_text()
    data = yaml.safe_load(original)
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def training(**parameters) -> TrainingTask:
    return TrainingTask(config="unit", version="v1", model_name="DNN", executor="iterative", **parameters)


def test_the_same_settings_are_complete(trained):
    assert training().complete()
    assert training(epochs=1).complete(), "an explicit --epochs equal to the config's is the same training"
    assert ROCCurveTask(config="unit", version="v1", model_name="DNN").complete()


@pytest.mark.parametrize("parameters,key,old,new", [
    ({"epochs": 3}, "config.training.epochs", "1", "3"),
    ({"learning_rate": 0.01}, "config.training.learning_rate", "0.001", "0.01"),
    ({"batch_size": 64}, "config.training.batch_size", "128", "64"),
])
def test_changed_parameter_under_an_existing_training_is_a_conflict(trained, parameters, key, old, new):
    with pytest.raises(VersionConflictError) as raised:
        training(**parameters).complete()
    message = str(raised.value)
    assert f"{key}: {old} -> {new}" in message and "--training-version" in message
    assert "\n" not in message


def test_changed_config_sections_are_conflicts_naming_the_key(trained):
    _, config = trained

    def hidden(data):
        data["model_settings"]["DNN"]["hidden"] = [32]

    with edited(config, hidden), pytest.raises(VersionConflictError, match=r"model_settings\.DNN\.hidden: \[16\] -> \[32\]"):
        training().complete()

    def patience(data):
        data["training"]["patience"] = 9

    with edited(config, patience), pytest.raises(VersionConflictError, match=r"config\.training\.patience: 5 -> 9"):
        training().complete()

    # a key another model reads does not touch this training
    def other_model(data):
        data["model_settings"]["GradientBoosting"]["max_iter"] = 99

    with edited(config, other_model):
        assert training().complete()


def test_another_seed_is_a_conflict_for_the_training(trained):
    with pytest.raises(VersionConflictError, match=r"seed: 42 -> 7.*--training-version"):
        TrainingTask(config="unit", version="v1", model_name="DNN", seed=7, dataset_version="v1").complete()


def test_a_changed_dataset_config_under_an_existing_training_is_reported(trained):
    """luigi checks only the top task when its output exists, so the check walks upstream."""
    _, config = trained

    def bins(data):
        data["bins_pt"] = [30.0, 60.0, 1000.0]

    with edited(config, bins):
        for task in (training(), ROCCurveTask(config="unit", version="v1", model_name="DNN")):
            with pytest.raises(VersionConflictError, match=r"config\.bins_pt: .*--dataset-version"):
                task.complete()
        # and the run refuses instead of rebuilding anything
        assert not build(ROCCurveTask(config="unit", version="v1", model_name="DNN"))


def test_changed_discriminators_conflict_in_the_evaluation_task_only(trained):
    _, config = trained

    def discriminators(data):
        data["discriminators"]["BvsL"]["background"] = ["isC", "isL"]

    with edited(config, discriminators):
        assert InferenceTask(config="unit", version="v1", model_name="DNN").complete()
        with pytest.raises(VersionConflictError, match=r"discriminators\.BvsL\.background"):
            ROCCurveTask(config="unit", version="v1", model_name="DNN").complete()


def test_a_key_added_later_is_compared_with_its_declared_default(trained):
    """An identity recorded by older code lacks keys that newer code reads: they stand for
    their default in the shipped default.yml, so the old output stays valid while the config
    keeps that default, and conflicts once it does not."""
    _, config = trained
    directory = training().output_directory()
    path = directory / identity.IDENTITY_FILE
    original = path.read_text()
    content = json.loads(original)
    assert content["identity"].pop("config.training.weight_decay") == 0.01
    path.write_text(json.dumps(content))
    try:
        assert training().complete()

        def decay(data):
            data["training"]["weight_decay"] = 0.1

        with edited(config, decay), pytest.raises(VersionConflictError, match=r"weight_decay: 0\.01 -> 0\.1"):
            training().complete()
    finally:
        path.write_text(original)


def test_an_identity_of_an_earlier_format_gives_the_way_out(trained):
    directory = training().output_directory()
    path = directory / identity.IDENTITY_FILE
    original = path.read_text()
    path.write_text(json.dumps({"kind": "training", "config": "0123abcd"}))
    try:
        with pytest.raises(VersionConflictError, match="earlier b-hive.*--remove-output"):
            training().complete()
    finally:
        path.write_text(original)
    path.unlink()
    try:
        with pytest.raises(VersionConflictError, match="recorded no identity"):
            training().complete()
    finally:
        path.write_text(original)


def test_downstream_tasks_take_the_upstream_parameters(trained):
    evaluation = EvaluationTask(config="unit", version="v2", epochs=2, model_name="DNN", learning_rate=0.003,
                                shard_size=500, chunk_size=300)
    upstream = evaluation.requires()["inference"].requires()["training"]
    assert (upstream.epochs, upstream.learning_rate, upstream.model()) == (2, 0.003, "DNN")
    datasets = [upstream.requires()["dataset"], evaluation.requires()["inference"].requires()["test"]]
    assert [(d.shard_size, d.chunk_size) for d in datasets] == [(500, 300), (500, 300)]


def test_law_run_takes_epochs_and_reports_a_conflict_in_one_line(trained, tmp_path):
    root, _ = trained
    env = {**os.environ, "LAW_CONFIG_FILE": str(REPO / "law.cfg"), "LAW_HOME": str(tmp_path / "law"),
           "PYTHONPATH": str(REPO), "BHIVE_CONFIG_DIR": str(root / "configs"), "BHIVE_STORE": str(root / "store")}
    law = shutil.which("law", path=str(Path(sys.executable).parent)) or "law"

    def law_run(*args):
        return subprocess.run([law, "run", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert subprocess.run([law, "index"], cwd=REPO, env=env, capture_output=True).returncode == 0
    status = law_run("EvaluationTask", "--config", "unit", "--version", "v2", "--epochs", "2", "--model-name", "DNN",
                     "--print-status", "-1")
    assert status.returncode == 0, status.stderr
    assert "TrainingTask" in status.stdout and "epochs=2" in status.stdout

    conflict = law_run("TrainingTask", "--config", "unit", "--version", "v1", "--model-name", "DNN", "--epochs", "4",
                       "--executor", "iterative")
    output = conflict.stdout + conflict.stderr
    assert conflict.returncode != 0
    assert "VersionConflictError: " in output and "config.training.epochs: 1 -> 4" in output
    assert "Traceback" not in output
    assert read_json(training().local_path("history.json"))[-1]["epoch"] == 1, "the old training is untouched"
