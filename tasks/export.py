"""ExportTask: a trained model as ONNX for deployment, checked against onnxruntime."""

from __future__ import annotations

from bhive import export, training
from tasks.base import DatasetVersionTask
from tasks.dataset import DatasetConstructionTask
from tasks.parameters import DatasetParameters, ExportParameters, TestParameters, TrainingParameters
from tasks.training import TrainingTask


class ExportTask(ExportParameters, TestParameters, TrainingParameters, DatasetParameters, DatasetVersionTask):
    """``model.onnx`` and ``onnx_check.json`` (onnxruntime vs the model on held-out jets)."""

    config_keys = ("classes", "dataloader")
    version_parameter = "--training-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.training_version, self.model())

    def requires(self):
        return {"training": TrainingTask.req(self),
                "test": DatasetConstructionTask.req(self, config=self.test_config or self.config, split="test",
                                                    dataset_version=self.test_dataset_version)}

    def identity_settings(self) -> dict:
        return {"n_check_jets": self.n_check_jets, "tolerance": self.tolerance}

    def output(self):
        return {"onnx": self.local_target(export.ONNX_FILE), "check": self.local_target(export.CHECK_FILE)}

    def check_intact(self) -> None:
        export.check_onnx(self.local_path(), verify=self.verify)

    def run(self):
        inputs = self.requires()
        export.write_onnx(self.cfg, inputs["training"].local_path(training.ARTIFACT),
                          inputs["test"].output_directory(), self.n_check_jets, self.tolerance, self.local_path())
