"""SimulatedSamplesTask: the built-in Pythia 8 + detector-response sample for configs with
``simulate:``; dataset construction reads its ROOT files like any other ntuples."""

from __future__ import annotations

import os
from pathlib import Path

import luigi

from bhive.config import ConfigError
from bhive.simulation import sample
from tasks.base import DatasetVersionTask, IdentityCheckedTask


class SimulatedSamplesTask(DatasetVersionTask, IdentityCheckedTask):
    """Generate the train or test split of a config's simulated sample."""

    split = luigi.ChoiceParameter(choices=sample.SPLITS, default="train", description="train or test")
    # not "--workers": that is luigi's own option for parallel tasks
    processes = luigi.IntParameter(default=os.cpu_count() or 1, significant=False,
                                   description="parallel generator processes; default: all cores")

    version_parameter = "--dataset-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), f"seed_{self.seed}", self.split)

    def output_directory(self) -> Path:
        return self.local_path()

    def identity(self) -> dict:
        if self.cfg.simulate is None:
            raise ConfigError(f"{self.cfg.path}: config '{self.config}' has no 'simulate:' section, "
                              "so there is no simulated sample to generate")
        return sample.identity(self.cfg, self.split, self.seed)

    def output(self):
        return {
            "manifest": self.local_target(sample.MANIFEST),
            "files": self.local_target(directory=True),
        }

    def run(self):
        sample.produce(self.cfg, self.split, self.seed, self.output_directory(), self.identity(),
                       workers=self.processes)
