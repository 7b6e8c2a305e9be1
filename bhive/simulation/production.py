"""Producing simulated ntuple files: planning, per-file generation, parallel execution.

A sample is split into files of at most ``jets_per_file`` jets per process. Every file has
its own seeds derived from (seed, split, process, file index), so the content of a file
does not depend on how many workers produced the sample or in which order.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bhive.simulation import ntuple
from bhive.simulation.detector import Detector, DetectorModel
from bhive.simulation.generator import MAX_PYTHIA_SEED, EventSource
from bhive.simulation.jets import cluster_jets
from bhive.store import atomic_path, file_record

if TYPE_CHECKING:
    from bhive.config import SimulateConfig

SPLITS = ("train", "test")
# Events per Pythia batch: large enough to amortise the per-batch overhead of the
# columnar steps, small enough to overshoot a file's jet count by little.
EVENTS_PER_BATCH = {"ttbar": 100, "qcd": 250}


@dataclass(frozen=True)
class FilePlan:
    """One simulated file: which process, how many jets, and its seeds."""

    process: str
    split: str
    index: int
    n_jets: int
    pythia_seed: int
    detector_seed: int

    @property
    def filename(self) -> str:
        return f"{self.process}_{self.split}_{self.index:03d}.root"


def _stable_id(text: str) -> int:
    return zlib.crc32(text.encode())


def plan_files(simulate: SimulateConfig, split: str, seed: int) -> list[FilePlan]:
    """The files making up one split of a simulated sample, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    plans = []
    for name, n_total in simulate.jets(split).items():
        n_files = -(-n_total // simulate.jets_per_file)
        for index in range(n_files):
            n_jets = min(simulate.jets_per_file, n_total - index * simulate.jets_per_file)
            sequence = np.random.SeedSequence([seed, _stable_id(split), _stable_id(name), index])
            pythia_state, detector_state = sequence.generate_state(2)
            plans.append(FilePlan(name, split, index, int(n_jets),
                                  int(pythia_state % MAX_PYTHIA_SEED) + 1, int(detector_state)))
    return plans


def generate_file(
    plan: FilePlan,
    simulate: SimulateConfig,
    treename: str,
    path: Path,
    report: Callable[[int], None] | None = None,
    detector_model: DetectorModel | None = None,
) -> dict:
    """Generate, reconstruct and write one file; returns its manifest entry.

    The file is written under a temporary name and renamed when complete, so a file that
    exists is always whole.
    """
    started = time.perf_counter()
    process = simulate.processes[plan.process]
    source = EventSource(process, simulate.ecm_gev, plan.pythia_seed)
    detector = Detector(detector_model or DetectorModel(), np.random.default_rng(plan.detector_seed),
                        simulate.npv_mean)
    chunks, n_jets, n_events = [], 0, 0
    for events in source.batches(EVENTS_PER_BATCH[process.kind]):
        table = cluster_jets(events, source.charges, simulate.jet_pt_min, simulate.jet_abs_eta_max)
        table.jets["event_no"] = table.jets["event"] + n_events
        table.jets["jet_no"] = _rank_within(table.jets["event"])
        n_events += len(events)
        take = min(len(table), plan.n_jets - n_jets)
        if take < len(table):
            table = _first_jets(table, take)
        chunks.append(ntuple.jet_arrays(detector.reconstruct(table), simulate.branch_style))
        n_jets += take
        if report is not None:
            report(take)
        if n_jets >= plan.n_jets:
            break
    arrays = ntuple.concatenate(chunks)
    with atomic_path(path) as temporary:
        ntuple.write_tree(temporary, treename, arrays)
    return {
        "file": path.name,
        **asdict(plan),
        "n_events": n_events,
        "content_sha256": ntuple.content_hash(arrays),
        "record": file_record(path),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _rank_within(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal, sorted group values."""
    if len(group) == 0:
        return group
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def _first_jets(table, n):
    """The first ``n`` jets of a batch with their constituents."""
    from bhive.simulation.jets import JetTable

    keep = table.constituents["jet"] < n
    return JetTable(jets={k: v[:n] for k, v in table.jets.items()},
                    constituents={k: v[keep] for k, v in table.constituents.items()})


def _worker(plan, simulate, treename, directory, queue):
    return generate_file(plan, simulate, treename, Path(directory) / plan.filename, queue.put)


def generate_files(
    plans: list[FilePlan],
    simulate: SimulateConfig,
    treename: str,
    directory: Path,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    on_file: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Generate the planned files, ``workers`` at a time; returns entries in plan order.

    ``progress`` is called in this process with the number of newly generated jets, and
    ``on_file`` with each file's manifest entry as soon as that file is written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    on_file = on_file or (lambda entry: None)
    if workers <= 1 or len(plans) <= 1:
        entries = []
        for plan in plans:
            entries.append(generate_file(plan, simulate, treename, directory / plan.filename, progress))
            on_file(entries[-1])
        return entries
    context = get_context("fork")
    entries: dict[str, dict] = {}
    with context.Manager() as manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(max_workers=min(workers, len(plans)), mp_context=context) as pool:
            futures = [pool.submit(_worker, p, simulate, treename, str(directory), queue) for p in plans]
            pending = set(futures)
            while pending:
                _drain(queue, progress)
                done = {f for f in pending if f.done()}
                for future in done:
                    entry = future.result()
                    entries[entry["file"]] = entry
                    on_file(entry)
                pending -= done
                if pending:
                    time.sleep(0.2)
            _drain(queue, progress)
    return [entries[p.filename] for p in plans]


def _drain(queue, progress) -> None:
    while not queue.empty():
        n = queue.get()
        if progress is not None:
            progress(n)
