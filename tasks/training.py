"""TrainingTask: trains the config's model (or --model-name) on the config's training dataset."""

from __future__ import annotations

import law
import luigi

from bhive.config import ConfigError
from models import fitting
from tasks.base import DatasetVersionTask
from tasks.dataset import DatasetConstructionTask


class TrainingTask(DatasetVersionTask):
    """Model artifact, history and loss/accuracy plots of one training."""

    training_version = luigi.Parameter(default=law.NO_STR, description="version of the training; default: --version")
    model_name = luigi.Parameter(default="", description="model class; default: the config's `model`")
    epochs = luigi.IntParameter(default=0, description="default: the config's training.epochs")
    batch_size = luigi.IntParameter(default=0, description="default: the config's training.batch_size")
    learning_rate = luigi.FloatParameter(default=0.0, description="default: the config's training.learning_rate")
    sampling = luigi.Parameter(default="", description="stochastic | loss_weight; default: the config's")
    validation_dataset_version = luigi.Parameter(
        default="", description="validate on this dataset version's test split instead of a fraction of the training set")
    device = luigi.Parameter(default="auto", significant=False, description="auto | cpu | cuda[:N]")
    precision = luigi.ChoiceParameter(choices=("fp32", "bf16", "fp16"), default="fp32", significant=False,
                                      description="mixed precision; fp16 needs CUDA")
    compile = luigi.BoolParameter(default=False, significant=False, description="use torch.compile")
    loader_workers = luigi.IntParameter(default=0, significant=False, description="dataloader worker processes")
    resume = luigi.BoolParameter(default=False, significant=False, description="continue from the last checkpoint")
    stop_after_epoch = luigi.IntParameter(default=0, significant=False,
                                          description="stop after this epoch (resumable), e.g. for time-limited jobs")

    def model(self) -> str:
        return self.model_name or self.cfg.model

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.training_version, self.model())

    def requires(self):
        requirements = {"dataset": DatasetConstructionTask.req(self, split="train")}
        if self.validation_dataset_version:
            requirements["validation"] = DatasetConstructionTask.req(
                self, split="test", dataset_version=self.validation_dataset_version)
        return requirements

    def output(self):
        return {"model": self.local_target(fitting.ARTIFACT, "model.json"),
                "history": self.local_target(fitting.HISTORY)}

    def settings(self):
        if self.sampling and self.sampling not in ("stochastic", "loss_weight"):
            raise ConfigError(f"--sampling {self.sampling}: choose stochastic or loss_weight")
        return fitting.training_settings(
            self.cfg, epochs=self.epochs or None, batch_size=self.batch_size or None,
            learning_rate=self.learning_rate or None, sampling=self.sampling or None, seed=self.seed,
            device=self.device, precision=self.precision, compile=self.compile,
            loader_workers=self.loader_workers, stop_after_epoch=self.stop_after_epoch)

    def run(self):
        inputs = self.requires()
        validation = inputs["validation"].output_directory() if "validation" in inputs else None
        fitting.train(self.cfg, self.model(), inputs["dataset"].output_directory(), self.local_path(),
                      self.settings(), resume=self.resume, validation_dir=validation)
