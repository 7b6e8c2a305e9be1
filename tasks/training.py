"""TrainingTask: trains the config's model (or --model-name) on the config's training dataset."""

from __future__ import annotations

import luigi

from bhive import tracking, training
from bhive.config import ConfigError
from bhive.store import stable_hash
from tasks.base import DatasetVersionTask
from tasks.batch import SingleJobWorkflow
from tasks.dataset import DatasetConstructionTask
from tasks.parameters import DatasetParameters, TrainingParameters, attack_of

#: command-line parameters that replace a key of the config's `training:` section when set
TRAINING_OVERRIDES = ("epochs", "batch_size", "learning_rate", "sampling")


class TrainingTask(TrainingParameters, DatasetParameters, DatasetVersionTask, SingleJobWorkflow):
    """Model artifact, history and loss/accuracy plots of one training (``--workflow slurm`` or
    ``htcondor``: as one batch job)."""

    search_trial = luigi.Parameter(
        default="", significant=False, description="set by HyperparameterSearchTask: the study and trial this "
        "training reports its epochs to (and is pruned by); not part of the identity")

    version_parameter = "--training-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.training_version, self.model())

    def requires(self):
        requirements = {"dataset": DatasetConstructionTask.req(self, split="train")}
        if self.validation_dataset_version:
            requirements["validation"] = DatasetConstructionTask.req(
                self, split="test", dataset_version=self.validation_dataset_version)
        return requirements

    def identity_config_keys(self) -> tuple[str, ...]:
        return ("training", "classes", "dataloader", "regression_targets", f"model_settings.{self.model()}")

    def config_overrides(self) -> dict:
        return {f"training.{name}": getattr(self, name) for name in TRAINING_OVERRIDES if getattr(self, name)}

    def identity_settings(self) -> dict:
        attack = attack_of(self, "attack")
        return {"model": self.model(), **({"attack": attack.identity(with_fraction=True)} if attack.active else {})}

    def output(self):
        return {"model": self.local_target(training.ARTIFACT, "model.json"),
                "history": self.local_target(training.HISTORY)}

    def discard_leftovers(self, changed) -> None:
        if self.resume:
            raise training.TrainingError(
                f"--resume: the checkpoint in {self.local_path('work')} belongs to a training with other settings "
                f"({'; '.join(d.describe() for d in changed[:4])}); resume with those settings, or start this one "
                f"without --resume (or under a new --training-version)")

    def check_intact(self) -> None:
        training.check_artifact(self.local_path(training.ARTIFACT), verify=self.verify)

    def settings(self):
        if self.sampling and self.sampling not in ("stochastic", "loss_weight"):
            raise ConfigError(f"--sampling {self.sampling}: choose stochastic or loss_weight")
        run = self.mlflow_run()
        return training.training_settings(
            self.cfg, epochs=self.epochs or None, batch_size=self.batch_size or None,
            learning_rate=self.learning_rate or None, sampling=self.sampling or None, seed=self.seed,
            device=self.device, precision=self.precision, compile=self.compile,
            loader_workers=self.loader_workers, stop_after_epoch=self.stop_after_epoch, attack=self.attack,
            attack_epsilon=self.attack_epsilon, attack_iterations=self.attack_iterations,
            attack_step=self.attack_step, attack_random_start=self.attack_random_start,
            attack_fraction=self.attack_fraction, mlflow=run.to_json() if run else None,
            search_trial=self.search_trial or None)

    def mlflow_run(self) -> tracking.MlflowRun | None:
        """The MLflow run that records this training (None without --mlflow-uri), named
        ``<config>/<training_version>/<model>`` and found again by the training's identity hash,
        which also tells apart trainings of the same name on other datasets."""
        if not self.mlflow_uri:
            return None
        identity = self.identity()
        return tracking.MlflowRun(
            uri=self.mlflow_uri, experiment=self.mlflow_experiment or self.config_name,
            name=f"{self.config_name}/{self.training_version}/{self.model()}", key=stable_hash(identity),
            parameters={"dataset_identity": identity["input.dataset"], "dataset_version": self.dataset_version})

    def run(self):
        inputs = self.requires()
        validation = inputs["validation"].output_directory() if "validation" in inputs else None
        training.train(self.cfg, self.model(), inputs["dataset"].output_directory(), self.local_path(),
                      self.settings(), resume=self.resume, validation_dir=validation, devices=self.devices)
