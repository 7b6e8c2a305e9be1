"""Parameter groups shared along the chain, so that a downstream task takes the parameters of
the tasks it runs: ``law run EvaluationTask --config hlt_ak4 --version v2 --epochs 2`` trains
for two epochs. ``Task.req(self)`` hands every parameter of the same name upstream; dataset
parameters on a training or evaluation task apply to its training and test datasets alike.
"""

from __future__ import annotations

import os
from typing import Any

import law
import luigi
from luigi.freezing import recursively_unfreeze

from bhive import construction, tracking
from bhive.attacks import ATTACKS, Attack
from tasks.base import ConfigParameter, NameParameter, config_name


class DatasetParameters:
    """How datasets are built: chunking, sharding and the coffea executor."""

    chunk_size = luigi.IntParameter(default=100_000, description="entries per coffea chunk; default: 100000")
    shard_size = luigi.IntParameter(default=50_000, description="jets per shard; default: 50000")
    histograms_from_train = luigi.BoolParameter(
        default=False, description="for a test dataset: reweight with the training dataset's histograms")
    executor = luigi.ChoiceParameter(choices=construction.EXECUTORS, default="futures", significant=False,
                                     description="coffea executor: iterative, futures or dask; default: futures")
    processes = luigi.IntParameter(default=os.cpu_count() or 1, significant=False,
                                   description="parallel processes (coffea executor, simulation, the merge into shards "
                                               "and its plots); default: all cores")
    scheduler_address = luigi.Parameter(default="", significant=False,
                                        description="dask scheduler to use (default: start a local cluster)")
    keep_pieces = luigi.BoolParameter(default=False, significant=False,
                                      description="keep the per-chunk pieces after the shards are written")
    # dask workers started on a batch system (bhive.batch.dask_slurm_cluster)
    dask_slurm_workers = luigi.IntParameter(
        default=0, significant=False,
        description="with --executor dask: start this many dask workers as Slurm jobs (dask-jobqueue); default: 0")
    dask_worker_memory = luigi.Parameter(default="2GB", significant=False,
                                         description="memory of each dask worker job; default: 2GB")


def _attack_parameters(prefix: str, what: str) -> dict[str, luigi.Parameter]:
    """An attack's parameters (bhive.attacks), named ``prefix``, ``prefix_epsilon``, ..."""
    return {
        prefix: luigi.ChoiceParameter(choices=ATTACKS, default="none",
                                      description=f"adversarial attack on the {what}: none | fgsm | pgd"),
        f"{prefix}_epsilon": luigi.FloatParameter(
            default=0.1, description="largest shift of a feature, in units of its width (times its attack.factors); "
                                     "default: 0.1"),
        f"{prefix}_iterations": luigi.IntParameter(default=10, description="pgd steps; default: 10"),
        f"{prefix}_step": luigi.FloatParameter(default=0.0,
                                               description="pgd step size; default: 2.5 x epsilon / iterations"),
        f"{prefix}_random_start": luigi.BoolParameter(default=False,
                                                      description="pgd: start from a random point of the box"),
    }


def attack_of(task, prefix: str) -> Attack:
    """The :class:`Attack` a task's parameters named ``prefix...`` describe."""
    return Attack(kind=getattr(task, prefix), epsilon=getattr(task, f"{prefix}_epsilon"),
                  iterations=getattr(task, f"{prefix}_iterations"), step=getattr(task, f"{prefix}_step"),
                  random_start=getattr(task, f"{prefix}_random_start"),
                  fraction=getattr(task, f"{prefix}_fraction", 0.5))


AttackParameters = type("AttackParameters", (), {
    "__doc__": "Adversarial training: part of every training batch replaced by its attacked version.",
    **_attack_parameters("attack", "training batches"),
    "attack_fraction": luigi.FloatParameter(default=0.5, description="share of each training batch replaced by "
                                            "its attacked version; default: 0.5"),
})

TestAttackParameters = type("TestAttackParameters", (), {
    "__doc__": "An attack on the test inputs: every score and figure downstream is of the attacked jets.",
    **_attack_parameters("test_attack", "test inputs"),
})


class MlflowUriParameter(luigi.Parameter):
    """An MLflow tracking URI, checked as the task is made (:func:`bhive.tracking.check_uri`):
    a bad one, or a missing ``tracking`` extra, fails before anything runs."""

    def normalize(self, x):
        x = super().normalize(x)
        return tracking.check_uri(x) if x else x


class TrackingParameters:
    """Where a training and its evaluation are recorded for comparison (bhive.tracking); not
    part of any identity: tracking changes no result."""

    mlflow_uri = MlflowUriParameter(
        default="", significant=False,
        description="track the training (parameters, metrics per epoch, artifact) and the evaluation's AUCs in "
        "MLflow: sqlite:///PATH/mlflow.db (no server) or http(s)://HOST:PORT; needs the tracking extra; "
        "default: none")
    mlflow_experiment = luigi.Parameter(default="", significant=False,
                                        description="MLflow experiment; default: the config's name")


class TrainingParameters(TrackingParameters, AttackParameters):
    """Which model is trained on which dataset, and how."""

    training_version = NameParameter(flag="--training-version", default=law.NO_STR,
                                     description="version of the training; default: --version")
    model_name = NameParameter(flag="--model-name", default="", description="model class; default: the config's `model`")
    epochs = luigi.IntParameter(default=0, description="default: the config's training.epochs")
    batch_size = luigi.IntParameter(default=0, description="default: the config's training.batch_size")
    learning_rate = luigi.FloatParameter(default=0.0, description="default: the config's training.learning_rate")
    sampling = luigi.Parameter(default="", description="stochastic | loss_weight; default: the config's")
    overrides = luigi.DictParameter(
        default={}, description="config settings layered over the config for this run, as JSON {dotted key: value}, "
        "e.g. '{\"training.learning_rate\": 0.003}' (training.<key> or model_settings.<Model>.<hyperparameter>; a "
        "hyperparameter-search trial's settings); part of the identity as the config values they set")
    validation_dataset_version = NameParameter(
        flag="--validation-dataset-version", default="",
        description="validate on this dataset version's test split instead of a fraction of the training set")
    device = luigi.Parameter(default="auto", significant=False, description="auto | cpu | cuda[:N]")
    precision = luigi.ChoiceParameter(choices=("fp32", "bf16", "fp16"), default="fp32", significant=False,
                                      description="mixed precision; fp16 needs CUDA")
    compile = luigi.BoolParameter(default=False, significant=False, description="use torch.compile")
    loader_workers = luigi.IntParameter(default=0, significant=False, description="dataloader worker processes")
    devices = luigi.IntParameter(
        default=1, significant=False,
        description="training processes (data-parallel, torchrun + DistributedDataParallel): one GPU each, or CPU "
        "processes with --device cpu; default: 1. Not part of the output's identity: the global batch, the jets "
        "and their order are the same for any number, and so is the result (to float precision; approximately "
        "for models with BatchNorm on CPUs)")
    resume = luigi.BoolParameter(default=False, significant=False, description="continue from the last checkpoint")
    stop_after_epoch = luigi.IntParameter(default=0, significant=False,
                                          description="stop after this epoch (resumable), e.g. for time-limited jobs")

    def model(self) -> str:
        return self.model_name or self.cfg.model

    def layered_settings(self) -> dict[str, Any]:
        return recursively_unfreeze(self.overrides)


class TestParameters:
    """Which test dataset a training is scored on."""

    test_dataset_version = NameParameter(flag="--test-dataset-version", default=law.NO_STR,
                                         description="test dataset version; default: --version")
    test_config = ConfigParameter(flag="--test-config", default="",
                                  description="score the test dataset of this config instead (it must have the "
                                  "same features); default: --config")
    allow_validation_on_test = luigi.BoolParameter(
        default=False, description="score a test dataset that also selected the training's best epoch "
        "(--validation-dataset-version); the summary marks such a result as biased")

    def test_dataset_part(self) -> str:
        """The store path part naming the scored test dataset: its version, after the other
        config's name when --test-config names another config (``other_wg-v1``)."""
        test = self.test_dataset_version
        if self.test_config and config_name(self.test_config) != self.config_name:
            test = f"{config_name(self.test_config)}-{test}"
        return test


class ExportParameters:
    """How an export is checked against the model."""

    n_check_jets = luigi.IntParameter(default=2048, description="held-out jets compared; default: 2048")
    tolerance = luigi.FloatParameter(default=1e-4, description="maximum |onnx - model| probability difference")


class ProfileParameters:
    """What an export's cost is measured at."""

    batch_sizes = luigi.Parameter(default="1,16,64,256,1024",
                                  description="batch sizes profiled; default: 1,16,64,256,1024")
    profile_seconds = luigi.FloatParameter(default=1.0, description="least time each setting is timed; default: 1")
