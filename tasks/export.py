"""ExportTask: a trained PyTorch model as ONNX for deployment, checked against onnxruntime."""

from __future__ import annotations

import luigi

from bhive.store import atomic_write_json, file_problem, file_record, read_json
from dataloaders.base import LoaderSettings, dataloader_class
from models.base import ModelError, load_model
from models.fitting import ARTIFACT
from models.torch_model import TorchModel, export_onnx
from tasks.base import DatasetVersionTask
from tasks.dataset import DatasetConstructionTask
from tasks.parameters import DatasetParameters, TestParameters, TrainingParameters
from tasks.training import TrainingTask


class ExportTask(TestParameters, TrainingParameters, DatasetParameters, DatasetVersionTask):
    """``model.onnx`` and ``onnx_check.json`` (onnxruntime vs PyTorch on held-out jets)."""

    n_check_jets = luigi.IntParameter(default=2048, description="held-out jets compared; default: 2048")
    tolerance = luigi.FloatParameter(default=1e-4, description="maximum |onnx - torch| probability difference")

    config_keys = ("classes", "dataloader")
    version_parameter = "--training-version"

    def training(self) -> TrainingTask:
        return TrainingTask.req(self)

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.training_version, self.model())

    def requires(self):
        return {"training": self.training(),
                "test": DatasetConstructionTask.req(self, config=self.test_config or self.config, split="test",
                                                    dataset_version=self.test_dataset_version)}

    def identity_settings(self) -> dict:
        return {"n_check_jets": self.n_check_jets, "tolerance": self.tolerance}

    def output(self):
        return {"onnx": self.local_target("model.onnx"), "check": self.local_target("onnx_check.json")}

    def run(self):
        model = load_model(self.training().local_path(ARTIFACT))
        if not isinstance(model, TorchModel):
            raise ModelError(f"{type(model).__name__} is not a PyTorch model; only those export to ONNX")
        test_dir = self.requires()["test"].output_directory()
        loader = dataloader_class(self.cfg.dataloader)(
            test_dir, model.groups, self.cfg.classes, LoaderSettings(batch_size=self.n_check_jets))
        batch = next(iter(loader.inference_batches()))
        # a model that fails the check is kept for inspection under names that never make the
        # task complete; the accepted one is renamed into place last
        candidate = self.local_path("model.rejected.onnx")
        check = export_onnx(model, candidate, batch, self.tolerance)
        if not check["passed"]:
            atomic_write_json(self.local_path("onnx_check.rejected.json"), check)
            raise ModelError(f"{check['model']}: onnxruntime differs from PyTorch by "
                             f"{check['max_abs_difference']:.2e} (> {self.tolerance:.0e}; by batch size: "
                             f"{check['max_abs_difference_by_batch_size']}); the ONNX file is kept for "
                             f"inspection as {candidate}")
        atomic_write_json(self.local_path("onnx_check.json"), {**check, "file": file_record(candidate)})
        candidate.replace(self.local_path("model.onnx"))

    def check_intact(self) -> None:
        path = self.local_path("model.onnx")
        problem = file_problem(path, read_json(self.local_path("onnx_check.json"))["file"], self.verify)
        if problem:
            raise ModelError(f"{path} is damaged ({problem}); remove it with --remove-output and export again")
