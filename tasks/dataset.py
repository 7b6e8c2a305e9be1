"""Dataset construction tasks: ROOT ntuples -> reweighted .npy shards + meta.json.

``DatasetPiecesTask`` runs the config's coffea processor over the input files as a law
workflow (branches = groups of ``--files-per-job`` files, all files in one branch by
default), so ``--DatasetPiecesTask-workflow slurm`` (or ``htcondor``) spreads it over batch
jobs (:mod:`tasks.batch`).
``DatasetConstructionTask`` merges the pieces into shards, computes the reweighting and
writes ``meta.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import law
import luigi

from bhive import construction, dataset, inputs
from bhive.simulation import sample
from bhive.store import atomic_write_json, read_json, stable_hash
from processors.base import processor_class
from tasks.base import DatasetVersionTask
from tasks.batch import BatchWorkflow
from tasks.parameters import DatasetParameters
from tasks.simulation import SimulatedSamplesTask

PIECES_DIRECTORY = "pieces"


class DatasetTask(DatasetParameters, DatasetVersionTask):
    """What the dataset tasks share: the split, its input files and the settings of the pieces."""

    split = luigi.ChoiceParameter(choices=sample.SPLITS, default="train", description="train or test")

    config_keys = construction.DATASET_SECTIONS
    version_parameter = "--dataset-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), f"seed_{self.seed}", self.split)

    def simulation(self) -> SimulatedSamplesTask | None:
        if self.cfg.simulate is None:
            return None
        return SimulatedSamplesTask.req(self, split=self.split)

    def input_files(self) -> list[str]:
        simulation = self.simulation()
        if simulation is not None:
            # known before the sample exists, so that the workflow can be planned upfront
            return [str(path) for path in simulation.file_paths()]
        patterns = getattr(self.cfg.samples, self.split)
        return inputs.resolve_files(patterns, f"samples.{self.split} of {self.cfg.path}")

    def identity_settings(self) -> dict:
        return {"split": self.split, "chunk_size": self.chunk_size}

    def identity_inputs(self) -> dict:
        simulation = self.simulation()
        return {"files": simulation if simulation is not None else inputs.file_list_hash(self.input_files())}

    def executor_settings(self) -> construction.ExecutorSettings:
        return construction.ExecutorSettings(executor=self.executor, processes=self.processes,
                                             chunk_size=self.chunk_size,
                                             scheduler_address=self.scheduler_address or None,
                                             slurm_workers=self.dask_slurm_workers,
                                             worker_memory=self.dask_worker_memory)


class DatasetPiecesTask(DatasetTask, BatchWorkflow):
    """Processor output (one piece per chunk) for a group of input files."""

    files_per_job = luigi.IntParameter(default=0, description="input files per branch; 0: all in one")

    def pieces_directory(self) -> Path:
        # named by the identity, so pieces made with other settings are never reused
        return self.local_path(stable_hash(self.identity())[:16])

    def output_directory(self) -> Path:
        return self.pieces_directory()

    def lock_name(self) -> str:
        return f".lock-branch-{self.branch}"

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

    def run(self):
        piece_dirs = construction.process_files(self.cfg, self.branch_data, self.pieces_directory() / PIECES_DIRECTORY,
                                                self.executor_settings(), processor_class(self.cfg.processor),
                                                seed=self.seed)
        atomic_write_json(Path(self.output().path), {"files": list(self.branch_data),
                                                     "pieces": [p.name for p in piece_dirs]})


class DatasetConstructionTask(DatasetTask):
    """Shards, meta.json, weights and spectra plots of one split of a config's dataset."""

    def requires(self):
        requirements = {"pieces": DatasetPiecesTask.req(self)}
        if self.histograms_from_train and self.split != "train":
            requirements["train"] = DatasetConstructionTask.req(self, split="train", histograms_from_train=False)
        return requirements

    def identity_settings(self) -> dict:
        return {**super().identity_settings(), "shard_size": self.shard_size,
                "histograms_from_train": bool(self.histograms_from_train and self.split != "train")}

    def identity_inputs(self) -> dict:
        # the pieces are an intermediate step named by this same identity; what counts is their source
        requirements = self.requires()
        return {**super().identity_inputs(), **({"train": requirements["train"]} if "train" in requirements else {})}

    def output(self):
        return {"meta": self.local_target(dataset.META_FILE), "directory": self.local_target(directory=True)}

    def check_intact(self) -> None:
        dataset.check_shards(self.output_directory(), verify=self.verify)

    def run(self):
        requirements = self.requires()
        pieces_task = requirements["pieces"]
        pieces_directory = pieces_task.pieces_directory()
        names = [name for target in pieces_task.output()["collection"].targets.values()
                 for name in read_json(Path(target.path))["pieces"]]
        histograms_from = requirements["train"].output_directory() if "train" in requirements else None
        construction.build_dataset(
            self.cfg, [pieces_directory / PIECES_DIRECTORY / n for n in sorted(names)], self.output_directory(),
            split=self.split, seed=self.seed, shard_size=self.shard_size, dataset_identity=self.identity(),
            histograms_from=histograms_from, processes=self.processes)
        if not self.keep_pieces:
            # with its branch outputs, so that a later rebuild makes the pieces again
            shutil.rmtree(pieces_directory, ignore_errors=True)
