"""Inference and evaluation tasks: scores on a test dataset, ROC curves, working points,
distributions, comparisons, and EvaluationTask, which runs them all and writes the summary."""

from __future__ import annotations

import luigi

from bhive import export, inference, tracking, training
from bhive.config import ConfigError
from bhive.evaluation import comparison, curves, distributions, regression, robustness, summary, working_points
from bhive.store import atomic_write_json, check_name, read_json
from tasks.base import DatasetVersionTask
from tasks.dataset import DatasetConstructionTask
from tasks.export import ExportTask
from tasks.parameters import (DatasetParameters, TestAttackParameters, TestParameters, TrainingParameters,
                              attack_of)
from tasks.training import TrainingTask


BIASED = ("the test dataset also selected the best epoch of this training (--validation-dataset-version): "
          "these figures are biased towards the model")
ATTACKED = ("every figure below is of the test jets under the attack {attack} (--test-attack); the robustness "
            "table compares them with the nominal jets")
EVENT_WEIGHTED = ("efficiencies, mis-identification rates, ROC curves, AUCs and working points are weighted by the "
                  "jets' signed event weights ({branch}); the confusion matrix counts jets")


class ScoringTask(TestAttackParameters, TestParameters, TrainingParameters, DatasetParameters, DatasetVersionTask):
    """What InferenceTask and the tasks reading its scores share: parameters and store layout
    ``<dataset_version>/<test_dataset_version>/<training_version>/<model>``, the model part
    followed by the test attack where there is one (``DeepJet-fgsm_eps0.1``), so that nominal
    and attacked results never share a directory."""

    version_parameter = "--training-version"

    def training(self) -> TrainingTask:
        return TrainingTask.req(self)

    def store_parts(self) -> tuple[str, ...]:
        attack = attack_of(self, "test_attack")
        scored = self.model() if not attack.active else f"{self.model()}-{attack.label()}"
        return (*super().store_parts(), self.test_dataset_part(), self.training_version, scored)

    def scored_inputs(self) -> dict:
        """The training and the test dataset its model is applied to."""
        return {"training": self.training(),
                "test": DatasetConstructionTask.req(self, config=self.test_config or self.config, split="test",
                                                    dataset_version=self.test_dataset_version)}

    def validation_on_test(self) -> bool:
        """Whether the test dataset is the one that selected the training's best epoch."""
        validation = self.training().requires().get("validation")
        return (validation is not None
                and validation.output_directory() == self.scored_inputs()["test"].output_directory())

    def check_test_dataset(self) -> bool:
        """Whether the test dataset also selected the training's best epoch; refused (its
        figures would be biased towards the model) unless --allow-validation-on-test."""
        overlap = self.validation_on_test()
        if overlap and not self.allow_validation_on_test:
            raise ConfigError(f"the test dataset {self.scored_inputs()['test'].output_directory()} also selected the "
                              f"best epoch of this training (--validation-dataset-version "
                              f"{self.validation_dataset_version}), so its scores would be biased: evaluate on "
                              f"another --test-dataset-version, or pass --allow-validation-on-test to accept a "
                              f"result the summary marks as biased")
        return overlap

    def nominal(self) -> InferenceTask:
        """The inference of the same training on the same jets without a test attack."""
        return InferenceTask.req(self, test_attack="none")


class InferenceTask(ScoringTask):
    """Per-jet class probabilities of a trained model on a test dataset (npy + ROOT)."""

    config_keys = ("classes", "dataloader")
    identity_defaults = {"allow_validation_on_test": False}

    def requires(self):
        return self.scored_inputs()

    def identity_settings(self) -> dict:
        attack = attack_of(self, "test_attack")
        return {"allow_validation_on_test": self.allow_validation_on_test,
                **({"test_attack": attack.identity(with_fraction=False)} if attack.active else {})}

    def output(self):
        return {"info": self.local_target(inference.INFO), "root": self.local_target(inference.ROOT_FILE)}

    def check_intact(self) -> None:
        inference.check_predictions(self.local_path(), verify=self.verify)

    def run(self):
        overlap = self.check_test_dataset()
        predictions = inference.predict_dataset(self.cfg, self.training().local_path(training.ARTIFACT),
                                                self.requires()["test"].output_directory(),
                                                attack=attack_of(self, "test_attack"), device=self.device)
        predictions["info"]["validation_on_test"] = overlap
        inference.write_predictions(self.local_path(), predictions)


class _EvaluationTask(ScoringTask):
    """Shared by the evaluation tasks: they read the inference output."""

    def requires(self):
        return {"inference": InferenceTask.req(self)}

    def predictions(self) -> dict:
        return inference.read_predictions(InferenceTask.req(self).local_path())


class ROCCurveTask(_EvaluationTask):
    """ROC curves per discriminator, for all jets, per process and per configured cut."""

    config_keys = ("discriminators", "processes")

    def output(self):
        return self.local_target(curves.AUCS)

    def run(self):
        curves.write_roc_curves(self.predictions(), self.cfg.discriminators, self.cfg.processes, self.local_path())


class WorkingPointTask(_EvaluationTask):
    """Thresholds at the config's `working_points` targets (default: loose/medium/tight at
    10%/1%/0.1% mis-id for BvsL, BvsAll, CvsL) with efficiency and mis-id vs pt and eta."""

    config_keys = ("discriminators", "working_points", "working_points_on", "charm_working_points", "processes",
                   "bins_pt", "bins_eta")

    def output(self):
        return {"json": self.local_target("working_points.json"), "csv": self.local_target("working_points.csv"),
                "charm": self.local_target("charm_working_points.json")}

    def run(self):
        cfg = self.cfg
        working_points.write_working_points(self.predictions(), cfg.discriminators, cfg.working_points,
                                            cfg.bins_pt, cfg.bins_eta, self.local_path(), cfg.working_points_on,
                                            cfg.processes, cfg.charm_working_points)


class RegressionTask(_EvaluationTask):
    """Response and resolution of each regression target vs reco pt and eta, per flavour,
    before (the config's baseline) and after the regression."""

    config_keys = ("regression_targets", "bins_pt", "bins_eta")

    def output(self):
        return self.local_target(regression.REGRESSION_FILE)

    def run(self):
        regression.write_regression(self.predictions(), self.cfg.bins_pt, self.cfg.bins_eta, self.local_path())


class ScoreDistributionTask(_EvaluationTask):
    """Output scores per true class and the confusion matrix."""

    def output(self):
        return self.local_target("confusion.json")

    def run(self):
        distributions.write_score_distributions(self.predictions(), self.local_path())


class FeatureDistributionTask(TestParameters, DatasetParameters, DatasetVersionTask):
    """Input features per true class in the test dataset, weighted and unweighted (the leading
    candidate of each candidate group), from at most --max-jets jets."""

    max_jets = luigi.IntParameter(default=200_000, description="jets read; default: 200000")

    config_keys = ("classes",)
    version_parameter = "--test-dataset-version"

    def identity_settings(self) -> dict:
        return {"max_jets": self.max_jets}

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.test_dataset_version)

    def requires(self):
        return DatasetConstructionTask.req(self, split="test", dataset_version=self.test_dataset_version)

    def output(self):
        return self.local_target("features.json")

    def run(self):
        distributions.write_feature_distributions(self.requires().output_directory(), self.cfg.classes,
                                                  self.max_jets, self.local_path())


class ComparisonTask(_EvaluationTask):
    """This training beside other trainings (--compare "training_version/Model,...") and the
    reference taggers stored in the inputs, per discriminator, with a ratio panel."""

    compare = luigi.Parameter(default="", description="other trainings scored on the same test dataset, "
                              "comma-separated [config:]training_version/Model, e.g. v1/DNN,other_wg:v2/ParticleNet")

    config_keys = ("discriminators",)

    def identity_settings(self) -> dict:
        return {"compare": self.compare}

    def others(self) -> list[InferenceTask]:
        """The compared trainings, each scoring this task's test dataset."""
        tasks = []
        for spec in filter(None, (s.strip() for s in self.compare.split(","))):
            config, _, trained = spec.rpartition(":")
            version, _, model = trained.partition("/")
            if not model:
                raise ConfigError(f"--compare {spec}: write [config:]training_version/Model, e.g. v1/DNN or "
                                  f"offline_ak4:v3/DeepJet")
            for part, what in ((version, "training version"), (model, "model"), (config or self.config, "config")):
                check_name(part, f"--compare {spec}: {what}")
            tasks.append(InferenceTask.req(self, config=config or self.config, training_version=version,
                                           model_name=model, test_config=self.test_config or self.config))
        return tasks

    def requires(self):
        return {"inference": InferenceTask.req(self), "others": self.others()}

    def output(self):
        return self.local_target("comparison.json")

    def label(self, task: InferenceTask) -> str:
        prefix = f"{task.config_name}: " if task.config_name != self.config_name else ""
        return f"{prefix}{task.model()} ({task.training_version})"

    def run(self):
        entries = {self.label(InferenceTask.req(self)): self.predictions()}
        for task in self.requires()["others"]:
            entries[self.label(task)] = inference.read_predictions(task.local_path())
        comparison.write_comparison(entries, self.cfg.discriminators, self.local_path())


class EvaluationTask(_EvaluationTask):
    """The whole chain for one config: every evaluation output plus summary.json and summary.md."""

    def track(self, aucs_file) -> None:
        """With --mlflow-uri: the AUCs into the training's MLflow run, with aucs.json and, where
        ExportTask wrote it, the ONNX model and its check. Before the summary, whose writing
        completes this task: a failure here leaves it to be run again."""
        run = self.training().mlflow_run()
        if run is None:
            return
        onnx = ExportTask.req(self).local_path()
        tracking.log_evaluation(run, read_json(aucs_file), [("evaluation", aucs_file),
                                                            ("onnx", onnx / export.ONNX_FILE),
                                                            ("onnx", onnx / export.CHECK_FILE)])

    compare = ComparisonTask.compare

    def requires(self):
        requirements = {"inference": InferenceTask.req(self), "roc": ROCCurveTask.req(self),
                        "working_points": WorkingPointTask.req(self), "training": self.training(),
                        "scores": ScoreDistributionTask.req(self), "features": FeatureDistributionTask.req(self),
                        "comparison": ComparisonTask.req(self)}
        if attack_of(self, "test_attack").active:
            requirements["nominal"] = self.nominal()
        if self.cfg.regression_targets:
            requirements["regression"] = RegressionTask.req(self)
        return requirements

    def output(self):
        return {"json": self.local_target("summary.json"), "md": self.local_target("summary.md")}

    def run(self):
        inputs = self.requires()
        history = read_json(inputs["training"].local_path(training.HISTORY))
        training.plot_history(history, self.local_path("plots"))
        scored = read_json(inputs["inference"].local_path(inference.INFO))
        notes = [BIASED] if scored.get("validation_on_test") else []
        if scored.get("event_weight"):
            notes.append(EVENT_WEIGHTED.format(branch=scored["event_weight"]))
        table = []
        if "nominal" in inputs:
            notes.append(ATTACKED.format(attack=scored["attack"]))
            table = robustness.robustness_table(inference.read_predictions(inputs["nominal"].local_path()),
                                                self.predictions(), self.cfg.discriminators, scored["attack"])
            atomic_write_json(self.local_path("robustness.json"), table)
        self.track(inputs["roc"].local_path(curves.AUCS))
        summary.write_summary(
            f"{self.model()} on {self.config_name} (version {self.version})", self.config_name, self.model(),
            read_json(inputs["roc"].local_path(curves.AUCS)),
            read_json(inputs["working_points"].local_path("working_points.json")),
            read_json(inputs["working_points"].local_path("charm_working_points.json")),
            read_json(inputs["comparison"].local_path("comparison.json")),
            read_json(inputs["scores"].local_path("confusion.json")), history, self.local_path(),
            notes=notes, robustness=table,
            regression=read_json(inputs["regression"].local_path(regression.REGRESSION_FILE))
            if "regression" in inputs else None)
