"""Dataset construction tasks: ROOT ntuples -> reweighted .npy shards + meta.json.

``DatasetPiecesTask`` runs the config's coffea processor over the input files as a law
workflow (branches = groups of ``--files-per-job`` files, all files in one branch by
default), so ``--DatasetPiecesTask-workflow htcondor`` spreads it over batch jobs.
``DatasetConstructionTask`` merges the pieces into shards, computes the reweighting and
writes ``meta.json``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import law
import luigi

from bhive import construction, inputs
from bhive.simulation import sample
from bhive.simulation.production import plan_files
from bhive.store import read_json, stable_hash, store_root, write_identity
from processors.base import processor_class
from tasks.base import DatasetVersionTask, IdentityCheckedTask
from tasks.simulation import SimulatedSamplesTask

law.contrib.load("htcondor")

PIECES_DIRECTORY = "pieces"


class DatasetTask(DatasetVersionTask):
    """Parameters shared by the dataset tasks: split, executor and chunking."""

    split = luigi.ChoiceParameter(choices=sample.SPLITS, default="train", description="train or test")
    chunk_size = luigi.IntParameter(default=100_000, description="entries per coffea chunk; default: 100000")
    executor = luigi.ChoiceParameter(choices=construction.EXECUTORS, default="futures", significant=False,
                                     description="coffea executor: iterative, futures or dask; default: futures")
    processes = luigi.IntParameter(default=os.cpu_count() or 1, significant=False,
                                   description="parallel processes of the futures/dask executor; default: all cores")
    scheduler_address = luigi.Parameter(default="", significant=False,
                                        description="dask scheduler to use (default: start a local cluster)")

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), f"seed_{self.seed}", self.split)

    def simulation(self) -> SimulatedSamplesTask | None:
        if self.cfg.simulate is None:
            return None
        return SimulatedSamplesTask.req(self, split=self.split)

    def input_files(self) -> list[str]:
        cfg = self.cfg
        simulation = self.simulation()
        if simulation is not None:
            # known before the sample exists, so that the workflow can be planned upfront
            return [str(simulation.local_path(p.filename)) for p in plan_files(cfg.simulate, self.split, self.seed)]
        patterns = getattr(cfg.samples, self.split)
        return inputs.resolve_files(patterns, f"samples.{self.split} of {cfg.path}")

    def inputs_identity(self):
        simulation = self.simulation()
        if simulation is not None:
            return simulation.identity()
        return inputs.file_list_hash(self.input_files())

    def dataset_identity(self) -> dict:
        return construction.identity(self.cfg, self.split, self.seed, self.inputs_identity(), self.chunk_size)

    def executor_settings(self) -> construction.ExecutorSettings:
        return construction.ExecutorSettings(executor=self.executor, processes=self.processes,
                                             chunk_size=self.chunk_size,
                                             scheduler_address=self.scheduler_address or None)


class DatasetPiecesTask(DatasetTask, law.LocalWorkflow, law.htcondor.HTCondorWorkflow):
    """Processor output (one piece per chunk) for a group of input files."""

    files_per_job = luigi.IntParameter(default=0, description="input files per branch; 0: all in one")

    def pieces_directory(self) -> Path:
        # keyed by the dataset identity, so pieces made with other settings are never reused
        return Path(self.local_path(stable_hash(self.dataset_identity())[:16]))

    def create_branch_map(self):
        files = self.input_files()
        size = self.files_per_job if self.files_per_job > 0 else len(files)
        return {i: files[start:start + size] for i, start in enumerate(range(0, len(files), size))}

    def workflow_requires(self):
        requirements = super().workflow_requires()
        if self.simulation() is not None:
            requirements["simulation"] = self.simulation()
        return requirements

    def requires(self):
        simulation = self.simulation()
        return {"simulation": simulation} if simulation is not None else {}

    def output(self):
        return law.LocalFileTarget(str(self.pieces_directory() / f"branch_{self.branch}.json"))

    def htcondor_output_directory(self):
        return law.LocalDirectoryTarget(str(self.local_path("htcondor")))

    def htcondor_bootstrap_file(self):
        return law.JobInputFile(str(Path(__file__).with_name("htcondor_bootstrap.sh")), share=True)

    def htcondor_job_config(self, config, job_num, branches):
        config.render_variables["bhive_repo"] = os.environ.get("BHIVE_REPO", str(Path(__file__).resolve().parents[1]))
        config.render_variables["bhive_store"] = str(store_root())
        return config

    def run(self):
        directory = self.pieces_directory()
        write_identity(directory, self.dataset_identity())
        piece_dirs = construction.process_files(self.cfg, self.branch_data, directory / PIECES_DIRECTORY,
                                                self.executor_settings(), processor_class(self.cfg.processor))
        self.output().dump({"files": list(self.branch_data), "pieces": [p.name for p in piece_dirs]},
                           formatter="json", indent=2)


class DatasetConstructionTask(DatasetTask, IdentityCheckedTask):
    """Shards, meta.json, weights and spectra plots of one split of a config's dataset."""

    shard_size = luigi.IntParameter(default=50_000, description="jets per shard; default: 50000")
    histograms_from_train = luigi.BoolParameter(
        default=False, description="for a test dataset: reweight with the training dataset's histograms")
    keep_pieces = luigi.BoolParameter(default=False, significant=False,
                                      description="keep the per-chunk pieces after the shards are written")

    version_parameter = "--dataset-version"

    def requires(self):
        requirements = {"pieces": DatasetPiecesTask.req(self)}
        if self.histograms_from_train and self.split != "train":
            requirements["train"] = DatasetConstructionTask.req(self, split="train", histograms_from_train=False)
        return requirements

    def output_directory(self) -> Path:
        return self.local_path()

    def identity(self) -> dict:
        histograms_from = None
        if "train" in self.requires():
            histograms_from = str(self.requires()["train"].output_directory())
        return {**self.dataset_identity(), "shard_size": self.shard_size, "histograms_from": histograms_from}

    def output(self):
        return {"meta": self.local_target("meta.json"), "directory": self.local_target(directory=True)}

    def run(self):
        pieces_task = self.requires()["pieces"]
        pieces_directory = pieces_task.pieces_directory()
        names = [name for target in pieces_task.output()["collection"].targets.values()
                 for name in read_json(Path(target.path))["pieces"]]
        histograms_from = self.requires()["train"].output_directory() if "train" in self.requires() else None
        directory = self.output_directory()
        directory.mkdir(parents=True, exist_ok=True)
        identity = self.identity()
        write_identity(directory, identity)
        construction.build_dataset(
            self.cfg, [pieces_directory / PIECES_DIRECTORY / n for n in sorted(names)], directory,
            split=self.split, seed=self.seed, shard_size=self.shard_size, dataset_identity=identity,
            histograms_from=histograms_from)
        if not self.keep_pieces:
            # with its branch outputs, so that a later rebuild makes the pieces again
            shutil.rmtree(pieces_directory, ignore_errors=True)
