"""A simulated sample on disk: one split's ROOT files plus ``manifest.json``.

The directory also holds one small ``<file>.json`` record per finished file, so an
interrupted run resumes with the files it already has instead of starting over. The manifest
is written last: its presence is what makes the sample complete. What settings made the
sample (its identity) is recorded by the task before generation starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from bhive.simulation.production import SPLITS, FilePlan, generate_files, plan_files
from bhive.store import atomic_write_json, code_version, file_problem, read_json

if TYPE_CHECKING:
    from bhive.config import Config

__all__ = ["SPLITS", "MANIFEST", "plan_files", "produce", "discard_files", "check_files", "SampleError"]

MANIFEST = "manifest.json"
_RECORD_SUFFIX = ".json"
logger = logging.getLogger(__name__)


class SampleError(RuntimeError):
    """A finished simulated sample whose files are damaged."""


def _record_path(directory: Path, plan: FilePlan) -> Path:
    return directory / (plan.filename + _RECORD_SUFFIX)


def discard_files(directory: Path) -> None:
    """Remove what an unfinished run with other settings left: the ROOT files, their records
    and the manifest. Nothing else in the directory is touched."""
    logger.warning("discarding an unfinished sample in %s made with other settings", directory)
    for pattern in ("*.root", "*.root.json", MANIFEST):
        for stale in directory.glob(pattern):
            stale.unlink()


def check_files(directory: Path, verify: bool = False) -> None:
    """Raise :class:`SampleError` when a file of the finished sample is missing or has another
    size than recorded (with ``verify``: another sha256)."""
    for entry in read_json(directory / MANIFEST)["files"]:
        path = directory / entry["file"]
        problem = file_problem(path, entry["record"], verify)
        if problem:
            raise SampleError(f"simulated file {path} is damaged ({problem}); remove the sample with "
                              f"--remove-output and generate it again, or use a new --dataset-version")


def produce(cfg: Config, split: str, seed: int, directory: Path, workers: int = 1, show_progress: bool = True) -> dict:
    """Generate one split into ``directory`` and write its manifest; returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    plans = plan_files(cfg.simulate, split, seed)
    done = {p.filename: read_json(_record_path(directory, p)) for p in plans
            if _record_path(directory, p).exists() and (directory / p.filename).exists()}
    todo = [p for p in plans if p.filename not in done]
    bar = tqdm(total=sum(p.n_jets for p in plans), initial=sum(p.n_jets for p in plans if p.filename in done),
               unit=" jets", desc=f"simulating {cfg.name} {split}", disable=not show_progress,
               mininterval=1.0)

    def record(entry: dict) -> None:
        atomic_write_json(directory / (entry["file"] + _RECORD_SUFFIX), entry)

    with bar:
        generate_files(todo, cfg.simulate, cfg.treename, directory, workers=workers,
                       progress=bar.update, on_file=record)
    entries = [read_json(_record_path(directory, p)) for p in plans]
    manifest = {
        "config": cfg.name,
        "split": split,
        "seed": seed,
        "treename": cfg.treename,
        "branch_style": cfg.simulate.branch_style,
        "code_version": code_version(),
        "n_jets": sum(e["n_jets"] for e in entries),
        "files": entries,
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest
