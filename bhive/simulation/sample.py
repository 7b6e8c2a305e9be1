"""A simulated sample on disk: one split's ROOT files plus ``manifest.json``.

The directory also holds ``identity.json`` (what settings made it, written first) and one
small ``<file>.json`` record per finished file, so an interrupted run resumes with the files
it already has instead of starting over. The manifest is written last: its presence is
what makes the sample complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from bhive.simulation.production import SPLITS, FilePlan, generate_files, plan_files
from bhive.store import (IDENTITY_FILE, atomic_write_json, code_version, differing_keys, read_json,
                         write_identity)

if TYPE_CHECKING:
    from bhive.config import Config

__all__ = ["SPLITS", "MANIFEST", "identity", "produce"]

MANIFEST = "manifest.json"
_RECORD_SUFFIX = ".json"
logger = logging.getLogger(__name__)


def identity(cfg: Config, split: str, seed: int) -> dict:
    """Everything that changes the content of a simulated split."""
    return {
        "kind": "simulated-sample",
        "simulate": cfg.section_hash("simulate"),
        "treename": cfg.treename,
        "split": split,
        "seed": seed,
    }


def _record_path(directory: Path, plan: FilePlan) -> Path:
    return directory / (plan.filename + _RECORD_SUFFIX)


def _discard_stale(directory: Path, expected: dict) -> None:
    """Remove files left by an interrupted run that used different settings.

    Only files this module writes are touched (the planned ROOT files, their records and
    temporary files); anything else in the directory is left alone.
    """
    path = directory / IDENTITY_FILE
    if not path.exists():
        return
    recorded = read_json(path)
    if not differing_keys(recorded, expected):
        return
    logger.warning("discarding an unfinished sample in %s made with other settings", directory)
    for pattern in ("*.root", "*.root.json", "*.root.tmp"):
        for stale in directory.glob(pattern):
            stale.unlink()
    path.unlink()


def produce(cfg: Config, split: str, seed: int, directory: Path, expected_identity: dict,
            workers: int = 1, show_progress: bool = True) -> dict:
    """Generate one split into ``directory`` and write its manifest; returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    _discard_stale(directory, expected_identity)
    write_identity(directory, expected_identity)

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
        "identity": expected_identity,
        "config": cfg.name,
        "treename": cfg.treename,
        "branch_style": cfg.simulate.branch_style,
        "code_version": code_version(),
        "n_jets": sum(e["n_jets"] for e in entries),
        "files": entries,
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest
