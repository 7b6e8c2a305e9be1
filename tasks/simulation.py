"""SimulatedSamplesTask: the built-in Pythia 8 + detector-response sample for configs with
``simulate:``; dataset construction reads its ROOT files like any other ntuples."""

from __future__ import annotations

import os
from pathlib import Path

import luigi

from bhive.config import ConfigError
from bhive.simulation import sample
from tasks.base import DatasetVersionTask
from tasks.batch import SingleJobWorkflow


class SimulatedSamplesTask(DatasetVersionTask, SingleJobWorkflow):
    """Generate the train or test split of a config's simulated sample (``--workflow slurm``
    or ``htcondor``: as one batch job)."""

    split = luigi.ChoiceParameter(choices=sample.SPLITS, default="train", description="train or test")
    # not "--workers": that is luigi's own option for parallel tasks
    processes = luigi.IntParameter(default=os.cpu_count() or 1, significant=False,
                                   description="parallel generator processes; default: all cores")

    config_keys = ("treename", "simulate")
    version_parameter = "--dataset-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), f"seed_{self.seed}", self.split)

    def identity_settings(self) -> dict:
        if self.cfg.simulate is None:
            raise ConfigError(f"{self.cfg.path}: config '{self.config_name}' has no 'simulate:' section, "
                              "so there is no simulated sample to generate")
        return {"split": self.split}

    def output(self):
        return {
            "manifest": self.local_target(sample.MANIFEST),
            "files": self.local_target(directory=True),
        }

    def file_paths(self) -> list[Path]:
        """The ROOT files the sample will hold, known before it is generated."""
        return [self.local_path(plan.filename) for plan in sample.plan_files(self.cfg.simulate, self.split, self.seed)]

    def discard_leftovers(self, changed) -> None:
        sample.discard_files(self.output_directory())

    def check_intact(self) -> None:
        sample.check_files(self.output_directory(), verify=self.verify)

    def run(self):
        sample.produce(self.cfg, self.split, self.seed, self.output_directory(), workers=self.processes)
