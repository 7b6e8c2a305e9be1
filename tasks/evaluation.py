"""Inference and evaluation tasks: scores on a test dataset, ROC curves, working points, and
EvaluationTask, which runs the whole chain and writes summary.json and summary.md."""

from __future__ import annotations

import csv

import luigi
import numpy as np

from bhive import evaluation
from bhive.roc import roc_curve
from bhive.config import ConfigError
from bhive.store import atomic_write, atomic_write_json, check_name, read_json
from models import inference
from models.fitting import ARTIFACT, plot_history
from tasks.base import DatasetVersionTask, config_name
from tasks.dataset import DatasetConstructionTask
from tasks.parameters import DatasetParameters, TestParameters, TrainingParameters
from tasks.training import TrainingTask


class ScoringTask(TestParameters, TrainingParameters, DatasetParameters, DatasetVersionTask):
    """What InferenceTask and the tasks reading its scores share: parameters and store layout
    ``<dataset_version>/<test_dataset_version>/<training_version>/<model>``."""

    version_parameter = "--training-version"

    def training(self) -> TrainingTask:
        return TrainingTask.req(self)

    def store_parts(self) -> tuple[str, ...]:
        test = self.test_dataset_version
        if self.test_config and config_name(self.test_config) != self.config_name:
            test = f"{config_name(self.test_config)}-{test}"
        return (*super().store_parts(), test, self.training_version, self.model())


class InferenceTask(ScoringTask):
    """Per-jet class probabilities of a trained model on a test dataset (npy + ROOT)."""

    config_keys = ("classes", "dataloader")

    def requires(self):
        return {"training": self.training(),
                "test": DatasetConstructionTask.req(self, config=self.test_config or self.config, split="test",
                                                    dataset_version=self.test_dataset_version)}

    def output(self):
        return {"info": self.local_target(inference.INFO), "root": self.local_target(inference.ROOT_FILE)}

    def check_intact(self) -> None:
        inference.check_predictions(self.local_path(), verify=self.verify)

    def run(self):
        predictions = inference.predict_dataset(self.cfg, self.training().local_path(ARTIFACT),
                                                self.requires()["test"].output_directory())
        inference.write_predictions(self.local_path(), predictions)


class _EvaluationTask(ScoringTask):
    """Shared by the evaluation tasks: they read the inference output."""

    def requires(self):
        return {"inference": InferenceTask.req(self)}

    def predictions(self) -> dict:
        return inference.read_predictions(InferenceTask.req(self).local_path())

    def discriminators(self, info) -> dict:
        return evaluation.discriminators_for(self.cfg.discriminators, info["classes"])


class ROCCurveTask(_EvaluationTask):
    """ROC curves per discriminator, for all jets, per process and per configured cut."""

    config_keys = ("discriminators", "processes")

    def output(self):
        return self.local_target("aucs.json")

    def run(self):
        predictions = self.predictions()
        arrays, info = predictions["arrays"], predictions["info"]
        masks = evaluation.selections(arrays, info, self.cfg.processes)
        discriminators = self.discriminators(info)
        curves, notes = evaluation.roc_curves(arrays, info, discriminators, masks)
        aucs = {name: {selection: curve.auc() for selection, curve in per.items()} for name, per in curves.items()}
        for name, per_selection in curves.items():
            signal, background = discriminators[name]
            if per_selection:
                evaluation.plot_rocs(per_selection, name, signal, background, self.local_path("roc", name))
        atomic_write_json(self.local_path("aucs.json"), {"auc": aucs, "notes": notes})


class WorkingPointTask(_EvaluationTask):
    """Thresholds at the config's `working_points` targets (default: loose/medium/tight at
    10%/1%/0.1% mis-id for BvsL, BvsAll, CvsL) with efficiency and mis-id vs pt and eta."""

    config_keys = ("discriminators", "working_points", "bins_pt", "bins_eta")

    def output(self):
        return {"json": self.local_target("working_points.json"), "csv": self.local_target("working_points.csv")}

    def run(self):
        predictions = self.predictions()
        arrays, info = predictions["arrays"], predictions["info"]
        rows = []
        discriminators = self.discriminators(info)
        configured = self.cfg.working_points or {name: evaluation.WORKING_POINTS for name in ("BvsL", "BvsAll", "CvsL")}
        for name, targets in configured.items():
            if name in discriminators:
                signal, background = discriminators[name]
                rows += evaluation.working_point_table(arrays, info, name, signal, background, self.cfg.bins_pt,
                                                       self.cfg.bins_eta, self.local_path("plots"), targets)
        with atomic_write(self.local_path("working_points.csv"), newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["discriminator", "working_point", "target_misid", "threshold", "efficiency", "misid"])
            for row in rows:
                writer.writerow([row[k] for k in ("discriminator", "working_point", "target_misid", "threshold",
                                                  "efficiency", "misid")])
        atomic_write_json(self.local_path("working_points.json"), rows)


class ScoreDistributionTask(_EvaluationTask):
    """Output scores per true class and the confusion matrix."""

    def output(self):
        return self.local_target("confusion.json")

    def run(self):
        predictions = self.predictions()
        arrays, classes = predictions["arrays"], predictions["info"]["classes"]
        evaluation.plot_score_distributions(arrays, classes, self.local_path("plots"))
        matrix = evaluation.confusion_matrix(arrays, len(classes))
        evaluation.plot_confusion(matrix, classes, self.local_path("plots", "confusion"))
        atomic_write_json(self.local_path("confusion.json"), {"classes": classes, "matrix": matrix.tolist()})


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
        from bhive import dataset
        from dataloaders.base import label_map

        directory = self.requires().output_directory()
        meta = dataset.load_meta(directory)
        shards, n = [], 0
        for shard in meta["shards"]:
            shards.append(dataset.open_shard(directory, shard["name"]))
            n += shard["n_jets"]
            if n >= self.max_jets:
                break
        labels = label_map(meta["truth_labels"], self.cfg.classes)[
            np.concatenate([s["truth"] for s in shards])[:self.max_jets]]
        weights = np.concatenate([s["weight"] for s in shards])[:self.max_jets]
        classes = list(self.cfg.classes)
        written = []
        for group, names in meta["features"].items():
            values = np.concatenate([np.asarray(s[group][:self.max_jets]) for s in shards])[:self.max_jets]
            if values.ndim == 3:  # the leading candidate; jets without one are left out per feature
                present = np.concatenate([s[f"mask_{group}"][:, 0] for s in shards])[:self.max_jets]
                values = np.where(present[:, None], values[:, 0, :], np.nan)
            columns = {name: values[:, i] for i, name in enumerate(names)}
            for weighted in (False, True):
                kind = "weighted" if weighted else "unweighted"
                written += evaluation.plot_feature_distributions(
                    columns, labels, weights, classes, f"{group} ({kind})", self.local_path(f"{group}_{kind}"),
                    weighted)
        atomic_write_json(self.local_path("features.json"),
                          {"plots": sorted(p.name for p in written), "n_jets": int(len(labels))})


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
            config, _, training = spec.rpartition(":")
            version, _, model = training.partition("/")
            if not model:
                raise ConfigError(f"--compare {spec}: write [config:]training_version/Model, e.g. v1/DNN or "
                                  f"offline_ak4:v3/DeepJet")
            for part, what in ((version, "training version"), (model, "model"), *(((config, "config"),) if config
                                                                                   else ())):
                check_name(part, f"--compare {spec}: {what}")
            tasks.append(InferenceTask.req(self, config=config or self.config, training_version=version,
                                           model_name=model, test_config=self.test_config or self.config))
        return tasks

    def requires(self):
        return {"inference": InferenceTask.req(self), "others": self.others()}

    def output(self):
        return self.local_target("comparison.json")

    def run(self):
        own = self.predictions()
        entries = {f"{self.training().model()} ({self.training().training_version})": own}
        for task in self.requires()["others"]:
            prefix = f"{task.config}: " if task.config != self.config else ""
            entries[f"{prefix}{task.training().model()} ({task.training().training_version})"] = \
                inference.read_predictions(task.local_path())
        arrays, info = own["arrays"], own["info"]
        results = {}
        for name, (signal, background) in self.discriminators(info).items():
            curves = {}
            for label, predictions in entries.items():
                values, is_signal, used = evaluation.discriminator_values(
                    predictions["arrays"], predictions["info"], signal, background)
                curves[label] = roc_curve(values[used], is_signal[used], what=f"{name} of {label}")
            for column, reference in enumerate(info["extras"]):
                tagger, _, reference_name = reference.partition("/")
                if reference_name == name:
                    _, is_signal, used = evaluation.discriminator_values(arrays, info, signal, background)
                    curves[f"{tagger} (reference)"] = roc_curve(arrays["extras"][used, column], is_signal[used],
                                                                what=f"{name} of {tagger}")
            if len(curves) > 1:
                evaluation.plot_comparison(curves, name, signal, background, self.local_path("roc", name))
            results[name] = {label: curve.auc() for label, curve in curves.items()}
        atomic_write_json(self.local_path("comparison.json"), results)


class EvaluationTask(_EvaluationTask):
    """The whole chain for one config: every evaluation output plus summary.json and summary.md."""

    compare = ComparisonTask.compare

    def requires(self):
        return {"inference": InferenceTask.req(self), "roc": ROCCurveTask.req(self),
                "working_points": WorkingPointTask.req(self), "training": self.training(),
                "scores": ScoreDistributionTask.req(self), "features": FeatureDistributionTask.req(self),
                "comparison": ComparisonTask.req(self)}

    def output(self):
        return {"json": self.local_target("summary.json"), "md": self.local_target("summary.md")}

    def run(self):
        inputs = self.requires()
        aucs = read_json(inputs["roc"].local_path("aucs.json"))
        points = read_json(inputs["working_points"].local_path("working_points.json"))
        history = read_json(self.training().local_path("history.json"))
        comparison = read_json(inputs["comparison"].local_path("comparison.json"))
        confusion = read_json(inputs["scores"].local_path("confusion.json"))
        plot_history(history, self.local_path("plots"))
        summary = {"config": self.config, "model": self.training().model(), "auc": aucs["auc"],
                   "notes": aucs["notes"], "comparison_auc": comparison, "confusion": confusion,
                   "working_points": [{k: row[k] for k in ("discriminator", "working_point", "target_misid",
                                                           "threshold", "efficiency", "misid")} for row in points],
                   "epochs_trained": len(history), "final_val_loss": history[-1].get("val_loss")}
        atomic_write_json(self.local_path("summary.json"), summary)
        lines = [f"# {self.training().model()} on {self.config} (version {self.version})", "",
                 "## AUC", "", "| discriminator | " + " | ".join(next(iter(aucs["auc"].values()), {})) + " |",
                 "|---|" + "---|" * len(next(iter(aucs["auc"].values()), {}))]
        for name, per in aucs["auc"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in per.values()) + " |")
        lines += ["", "## Working points (all jets)", "", "| discriminator | WP | target mis-id | threshold | "
                  "efficiency | mis-id |", "|---|---|---|---|---|---|"]
        for row in summary["working_points"]:
            lines.append(f"| {row['discriminator']} | {row['working_point']} | {row['target_misid']:g} | "
                         f"{row['threshold']:.4f} | {row['efficiency']:.4f} | {row['misid']:.5f} |")
        if any(len(per) > 1 for per in comparison.values()):
            labels = list(next(per for per in comparison.values() if len(per) > 1))
            lines += ["", "## Comparison (AUC, all jets)", "", "| discriminator | " + " | ".join(labels) + " |",
                      "|---|" + "---|" * len(labels)]
            for name, per in comparison.items():
                lines.append(f"| {name} | " + " | ".join(f"{per[k]:.4f}" if k in per else "" for k in labels) + " |")
        lines += ["", "## Confusion (fraction of each true class, by highest score)", "",
                  "| true \\ predicted | " + " | ".join(confusion["classes"]) + " |",
                  "|---|" + "---|" * len(confusion["classes"])]
        for cls, row in zip(confusion["classes"], confusion["matrix"]):
            lines.append(f"| {cls} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        lines += ["", f"Training: {len(history)} epochs, final validation loss "
                  f"{history[-1].get('val_loss', float('nan')):.4f} (plots/loss.png)."]
        with atomic_write(self.local_path("summary.md")) as stream:
            stream.write("\n".join(lines) + "\n")
