"""Inference and evaluation tasks: scores on a test dataset, ROC curves, working points, and
EvaluationTask, which runs the whole chain and writes summary.json and summary.md."""

from __future__ import annotations

import csv

import law
import luigi

from bhive import evaluation
from bhive.store import atomic_write_json, read_json
from models import inference
from models.fitting import ARTIFACT
from tasks.base import DatasetVersionTask
from tasks.dataset import DatasetConstructionTask
from tasks.training import TrainingTask


class InferenceTask(DatasetVersionTask):
    """Per-jet class probabilities of a trained model on a test dataset (npy + ROOT)."""

    training_version = TrainingTask.training_version
    test_dataset_version = luigi.Parameter(default=law.NO_STR, description="test dataset version; default: --version")
    model_name = TrainingTask.model_name

    def training(self) -> TrainingTask:
        return TrainingTask.req(self)

    def store_parts(self) -> tuple[str, ...]:
        training = self.training()
        return (*super().store_parts(), self.test_dataset_version, training.training_version, training.model())

    def requires(self):
        return {"training": self.training(),
                "test": DatasetConstructionTask.req(self, split="test", dataset_version=self.test_dataset_version)}

    def output(self):
        return {"info": self.local_target(inference.INFO), "root": self.local_target(inference.ROOT_FILE)}

    def run(self):
        predictions = inference.predict_dataset(self.cfg, self.training().local_path(ARTIFACT),
                                                self.requires()["test"].output_directory())
        inference.write_predictions(self.local_path(), predictions)


class _EvaluationTask(InferenceTask):
    """Shared by the evaluation tasks: they read the inference output."""

    def requires(self):
        return {"inference": InferenceTask.req(self)}

    def predictions(self) -> dict:
        return inference.read_predictions(self.requires()["inference"].local_path())

    def discriminators(self, info) -> dict:
        return evaluation.discriminators_for(self.cfg.discriminators, info["classes"])


class ROCCurveTask(_EvaluationTask):
    """ROC curves per discriminator, for all jets, per process and per configured cut."""

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
    """Loose/medium/tight thresholds of b-tagging discriminators with efficiency vs pt and eta."""

    def output(self):
        return {"json": self.local_target("working_points.json"), "csv": self.local_target("working_points.csv")}

    def run(self):
        predictions = self.predictions()
        arrays, info = predictions["arrays"], predictions["info"]
        rows = []
        for name, (signal, background) in self.discriminators(info).items():
            if name in ("BvsL", "BvsAll", "CvsL"):
                rows += evaluation.working_point_table(arrays, info, name, signal, background, self.cfg.bins_pt,
                                                       self.cfg.bins_eta, self.local_path("plots"))
        self.local_path().mkdir(parents=True, exist_ok=True)
        temporary = self.local_path(".working_points.csv.tmp")
        with open(temporary, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["discriminator", "working_point", "target_misid", "threshold", "efficiency", "misid"])
            for row in rows:
                writer.writerow([row[k] for k in ("discriminator", "working_point", "target_misid", "threshold",
                                                  "efficiency", "misid")])
        temporary.replace(self.local_path("working_points.csv"))
        atomic_write_json(self.local_path("working_points.json"), rows)


class EvaluationTask(_EvaluationTask):
    """The whole chain for one config: every evaluation output plus summary.json and summary.md."""

    def requires(self):
        return {"inference": InferenceTask.req(self), "roc": ROCCurveTask.req(self),
                "working_points": WorkingPointTask.req(self), "training": self.training()}

    def output(self):
        return {"json": self.local_target("summary.json"), "md": self.local_target("summary.md")}

    def run(self):
        inputs = self.requires()
        aucs = read_json(inputs["roc"].local_path("aucs.json"))
        points = read_json(inputs["working_points"].local_path("working_points.json"))
        history = read_json(self.training().local_path("history.json"))
        summary = {"config": self.config, "model": self.training().model(), "auc": aucs["auc"],
                   "notes": aucs["notes"],
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
        temporary = self.local_path(".summary.md.tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(self.local_path("summary.md"))
