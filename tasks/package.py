"""Deployment: what an exported model costs (ProfileTask) and the package a deployment takes
(PackageTask): ExportTask -> ProfileTask -> PackageTask, with the evaluation's AUCs and working
points."""

from __future__ import annotations

import luigi

from bhive import dataset, export, inference, package, profiling, training, triton
from bhive.config import ConfigError
from bhive.evaluation import curves, working_points
from bhive.evaluation.scores import discriminators_for
from bhive.store import read_json
from tasks.base import DatasetVersionTask
from tasks.evaluation import InferenceTask, ROCCurveTask, WorkingPointTask
from tasks.export import ExportTask
from tasks.parameters import (DatasetParameters, ExportParameters, ProfileParameters, TestParameters,
                              TrainingParameters)
from tasks.training import TrainingTask


def _sizes(value: str, flag: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{flag} {value!r}: give positive batch sizes separated by commas, e.g. 1,16,64")
    return sizes


class ProfileTask(ProfileParameters, ExportParameters, TestParameters, TrainingParameters, DatasetParameters,
                  DatasetVersionTask):
    """``profile.json``, ``profile.csv`` and ``plots/profile``: onnxruntime latency, throughput
    and memory of the exported graph on test jets, per batch size, on one thread and on all cores."""

    config_keys = ("classes", "dataloader")
    version_parameter = "--training-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.training_version, self.model())

    def requires(self):
        return {"export": ExportTask.req(self)}

    def identity_settings(self) -> dict:
        return {"batch_sizes": list(_sizes(self.batch_sizes, "--batch-sizes")), "threads": list(profiling.THREADS),
                "profile_seconds": self.profile_seconds}

    def output(self):
        return {"json": self.local_target(profiling.PROFILE_JSON), "csv": self.local_target(profiling.PROFILE_CSV)}

    def run(self):
        sizes = _sizes(self.batch_sizes, "--batch-sizes")
        exported = self.requires()["export"]
        onnx_path = exported.local_path(export.ONNX_FILE)
        jets = profiling.test_jets(self.cfg.dataloader, exported.requires()["test"].output_directory(),
                                   self.cfg.classes, onnx_path, max(sizes))
        profiling.write_profile(onnx_path, jets, self.local_path(), sizes, profiling.THREADS, self.profile_seconds)


class PackageTask(ProfileParameters, ExportParameters, TestParameters, TrainingParameters, DatasetParameters,
                  DatasetVersionTask):
    """``package/``: model.onnx with metadata, model_card.md, a Triton model repository and
    package.json, from the export, its profile and the evaluation on the test dataset."""

    max_batch_size = luigi.IntParameter(default=1024, description="Triton max_batch_size; default: 1024")
    preferred_batch_sizes = luigi.Parameter(default="64,256,1024", description="Triton dynamic batching's "
                                            "preferred batch sizes; default: 64,256,1024")
    max_queue_delay_us = luigi.IntParameter(default=100, description="Triton dynamic batching's longest wait for "
                                            "a preferred batch, in microseconds; default: 100")

    config_keys = ("discriminators", "processes")
    version_parameter = "--training-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.test_dataset_part(), self.training_version, self.model())

    def requires(self):
        return {"export": ExportTask.req(self), "profile": ProfileTask.req(self), "training": TrainingTask.req(self),
                "inference": InferenceTask.req(self), "roc": ROCCurveTask.req(self),
                "working_points": WorkingPointTask.req(self)}

    def batching(self) -> triton.Batching:
        return triton.Batching(self.max_batch_size, _sizes(self.preferred_batch_sizes, "--preferred-batch-sizes"),
                               self.max_queue_delay_us)

    def identity_settings(self) -> dict:
        batching = self.batching()
        return {"max_batch_size": batching.max_batch_size,
                "preferred_batch_sizes": list(batching.preferred_batch_sizes),
                "max_queue_delay_us": batching.max_queue_delay_microseconds}

    def output(self):
        return self.local_target(package.DIRECTORY, package.PACKAGE_FILE)

    def check_intact(self) -> None:
        package.check_package(self.local_path(package.DIRECTORY), verify=self.verify)

    def run(self):
        batching = self.batching()
        inputs = self.requires()
        cfg = self.cfg
        points = inputs["working_points"]
        predictions = inference.read_predictions(inputs["inference"].local_path())
        single = read_json(points.local_path("working_points.json"))
        sources = package.Sources(
            config=self.config_name, model=self.model(), onnx=inputs["export"].local_path(export.ONNX_FILE),
            check=read_json(inputs["export"].local_path(export.CHECK_FILE)),
            description=read_json(inputs["training"].local_path(training.ARTIFACT, "model.json")),
            profile=read_json(inputs["profile"].local_path(profiling.PROFILE_JSON)),
            aucs=read_json(inputs["roc"].local_path(curves.AUCS)), working_points=single,
            charm_working_points=read_json(points.local_path("charm_working_points.json")),
            rates=working_points.rates_by_selection(predictions, cfg.discriminators, single, cfg.processes),
            discriminators=discriminators_for(cfg.discriminators, predictions["info"]["classes"]),
            training_data=dataset.load_meta(inputs["training"].requires()["dataset"].output_directory()),
            test_data=dataset.load_meta(inputs["inference"].requires()["test"].output_directory()),
            versions={"dataset": self.dataset_version, "training": self.training_version,
                      "test_dataset": self.test_dataset_part()},
            simulated=cfg.simulate is not None)
        package.write_package(self.local_path(package.DIRECTORY), sources, batching)
