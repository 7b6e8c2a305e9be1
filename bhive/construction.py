"""Dataset construction: input files -> processor pieces -> reweighted shards + meta.json.

Two steps, each usable on its own so that the first can be spread over batch jobs:

1. :func:`process_files` runs the config's processor over files with coffea's
   ``processor.Runner`` (iterative, futures or dask executor) and leaves one piece per
   chunk in a piece directory;
2. :func:`build_dataset` sums the pieces' histograms, computes the reference-class weights,
   streams the pieces into shuffled shards, plots the spectra and writes ``meta.json`` last.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bhive import collector, dataset, dataset_plots, heap, inputs, optional_groups, reweighting
from bhive.config import CandidateGroup, Config
from bhive.store import code_version, stable_hash

if TYPE_CHECKING:  # importing it at run time would load coffea with this module
    from bhive.plugins.processor import JetProcessor

logger = logging.getLogger(__name__)

EXECUTORS = ("iterative", "futures", "dask")
_DATASET = "inputs"  # coffea's name for the one dataset of a run

#: config sections that change a dataset's content (classes, models and training do not)
DATASET_SECTIONS = (
    "treename", "processes", "process_overlap", "bins_pt", "bins_eta", "pt_key", "eta_key",
    "global_features", "global_custom_features", "cpf_candidates", "n_cpf_candidates",
    "cpf_custom_features", "npf_candidates", "n_npf_candidates", "npf_custom_features",
    "vtx_features", "n_vtx_candidates", "vtx_custom_features", "optional_groups", "truths", "reference_flavour",
    "reference_taggers", "processor", "event_weight", "reweighting", "regression_targets",
)


@dataclass(frozen=True)
class ExecutorSettings:
    """How coffea runs the processor: executor kind, parallel processes, chunk size, and for
    dask the cluster: an existing scheduler, workers started as Slurm jobs, or a local one."""

    executor: str = "futures"
    processes: int = 1
    chunk_size: int = 100_000
    scheduler_address: str | None = None
    slurm_workers: int = 0
    worker_memory: str = "2GB"

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor '{self.executor}'; choose one of {', '.join(EXECUTORS)}")
        if self.chunk_size < 1 or self.processes < 1 or self.slurm_workers < 0:
            raise ValueError("chunk size and number of processes must be at least 1, Slurm workers at least 0")
        if self.slurm_workers and (self.executor != "dask" or self.scheduler_address):
            raise ValueError("dask workers on Slurm need --executor dask and no --scheduler-address")


def check_inputs(cfg: Config, files: Sequence[str], processor: JetProcessor,
                 pool: concurrent.futures.Executor | None = None) -> tuple[dict[str, int], dict[str, inputs.Tree]]:
    """Check every file (tree, the branches ``processor`` needs from it) and assign processes;
    returns file -> process index, and file -> what opening its tree told. ``pool``: an
    executor whose workers open the files side by side (the first file in the order given
    that fails is the one reported)."""
    truth_branches = {c.branch for rule in cfg.truths for c in rule.conditions}
    opened = (pool.map(inputs.tree_branches, files, itertools.repeat(cfg.treename)) if pool is not None
              else (inputs.tree_branches(path, cfg.treename) for path in files))
    trees = {}
    for path, tree in zip(files, opened):
        trees[path] = tree
        inputs.check_branches(path, cfg.treename, tree.branches, processor.required_branches(tree.branches),
                              truth_branches, set(cfg.reference_branches()))
    return inputs.assign_processes(files, cfg.processes, cfg.process_overlap), trees


def _known_entries(trees: dict[str, inputs.Tree], treename: str) -> dict:
    """coffea's metadata of the files the checks opened, so that coffea does not open each of
    them once more to count its entries."""
    from coffea.processor.executor import FileMeta

    return {FileMeta(_DATASET, path, treename): {"numentries": tree.entries, "uuid": tree.file_uuid}
            for path, tree in trees.items()}


def no_branch(name: str) -> bool:
    """uproot's ``filter_name`` that shows coffea's events no branch. coffea lays out the events
    of every chunk from the branches it is shown (5-6 ms a chunk for the few dozen of
    ``hlt_ak4``, 0.2 s for all 1,500 of a NanoAOD tree), but the processor reads its branches
    itself, in one read of the tree (:meth:`JetProcessor._read`). A module function, so that it
    pickles to the workers of every executor."""
    return False


def _executor(settings: ExecutorSettings, retries: int, jobs_directory: Path, resources: contextlib.ExitStack,
              pool: concurrent.futures.Executor | None):
    """The coffea executor; a dask client and cluster it starts are closed with ``resources``.
    ``pool``: the process pool of the futures executor (None for the others)."""
    from coffea import processor

    if settings.executor == "iterative":
        return processor.IterativeExecutor(retries=retries)
    if settings.executor == "futures":
        return processor.FuturesExecutor(workers=settings.processes, retries=retries, pool=pool)
    from distributed import Client, LocalCluster

    if settings.scheduler_address:
        cluster = settings.scheduler_address
    elif settings.slurm_workers:
        from bhive import batch

        cluster = resources.enter_context(batch.dask_slurm_cluster(settings.slurm_workers, settings.worker_memory,
                                                                   jobs_directory))
    else:
        cluster = resources.enter_context(LocalCluster(n_workers=settings.processes, threads_per_worker=1,
                                                       processes=True, dashboard_address=None))
    client = resources.enter_context(Client(cluster))
    return processor.DaskExecutor(client=client, status=True, retries=retries)


@collector.long_lived_objects_frozen()  # also in the workers it forks
def process_files(cfg: Config, files: Sequence[str], piece_directory: Path, settings: ExecutorSettings,
                  processor_cls: type, file_processes: dict[str, int] | None = None, *, seed: int) -> list[Path]:
    """Run ``processor_cls`` (the config's processor plugin) over ``files``; returns the piece
    directories, sorted by name. Pieces that already exist (from an interrupted run) are reused.
    Each piece holds its jets in the order of their shard keys for the dataset's ``seed``
    (:mod:`bhive.pieces`), so pieces made for one seed build only that seed's dataset.
    Logs of dask workers started as Slurm jobs go beside ``piece_directory``, to ``dask-jobs/``.

    The config's optional groups that the inputs of either split lack are left out
    (:func:`bhive.optional_groups.dataset_config`), and the files are checked, unless
    ``file_processes`` (the process of each file) is given: then the caller has done both and
    ``cfg`` is used as it is.
    """
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    with contextlib.ExitStack() as resources:
        # the futures executor's workers, made first: they open the files for the checks too.
        # Checks still waiting when one fails are dropped rather than waited for. The standard
        # pool, not coffea's default (loky), which restarts a worker whose memory grew by 300 MB
        # since its first chunk, as a worker's heap does over its first chunks, and each new
        # worker imports everything again: two workers were slower than one
        pool = None
        if settings.executor == "futures":
            pool = concurrent.futures.ProcessPoolExecutor(settings.processes)
            resources.callback(pool.shutdown, cancel_futures=True)
        trees = {}
        if file_processes is None:
            cfg = optional_groups.dataset_config(cfg, processor_cls)
            checker = processor_cls(cfg, piece_directory, {})
            file_processes, trees = check_inputs(cfg, files, checker, pool)
        instance = processor_cls(cfg, piece_directory, file_processes, seed)
        piece_directory.mkdir(parents=True, exist_ok=True)
        # retrying only helps against transient network errors; a local file fails the same way again
        retries = 3 if any(inputs.is_remote(f) for f in files) else 0
        executor = _executor(settings, retries, piece_directory.parent / "dask-jobs", resources, pool)
        try:
            runner = processor.Runner(executor=executor, schema=BaseSchema, chunksize=settings.chunk_size,
                                      metadata_cache=_known_entries(trees, cfg.treename))
            output = runner({_DATASET: list(files)}, instance, treename=cfg.treename,
                            iteritems_options={"filter_name": no_branch})
        except Exception as error:
            # coffea wraps the processor's errors with the whole work item; a damaged file is
            # reported by itself, in one line that names it, caused by uproot's error where that
            # is still attached (not when the error was pickled by a worker process)
            reported = inputs.input_error_in(error)
            if reported is None:
                raise
            raise reported from reported.__cause__ or error
    names = sorted(output["pieces"]) if output else []
    return [piece_directory / name for name in names]


@collector.long_lived_objects_frozen()
def build_dataset(cfg: Config, piece_dirs: Sequence[Path], directory: Path, *, split: str, seed: int,
                  shard_size: int, dataset_identity: dict, histograms_from: Path | None = None,
                  processes: int = 1) -> dict:
    """Merge pieces into shards with weights, plot spectra, and write ``meta.json`` (last).

    ``processes``: the cores to use. With more than one, the shards are merged by a process of
    their own, ``processes - 1`` at a time, while this one draws the plots."""
    from bhive import pieces

    infos = [pieces.read_info(d) for d in piece_dirs]
    # before anything is drawn or merged: drawing reads the pieces too, and would fail on a
    # damaged one with an error that does not say what to do
    dataset.check_pieces(piece_dirs, infos, seed)
    groups = _piece_groups(cfg, infos)
    labels = cfg.truth_labels
    counts = dataset.total_counts(infos)
    if counts["kept"] == 0:
        raise dataset.DatasetError(
            f"the selection left zero jets out of {counts['read']} read ({counts['out_of_range']} outside "
            f"bins_pt/bins_eta of {cfg.path.name}, {counts['no_label']} without a truth label, "
            f"{counts['non_finite']} with NaN/inf); check the bins, the truth rules and the inputs")
    sums = dataset.summed_bin_sums(infos, len(labels), len(cfg.bins_pt) - 1, len(cfg.bins_eta) - 1)
    histograms = sums.sum_w
    settings = reweighting.ReweightingSettings(**dict(cfg.reweighting))
    if histograms_from is not None:
        reference_meta = dataset.load_meta(histograms_from)
        weights = np.asarray(reference_meta["weights"])
        report = reweighting.ReweightingReport(labels=reweighting.summaries(sums, weights, labels),
                                               share_warning=settings.share_warning)
        report_lines = [f"weights taken from {histograms_from}", *report.lines()[1:]]
    else:
        weights, report = reweighting.reference_weights(sums, labels, cfg.reference_flavour, settings,
                                                        cfg.bins_pt, cfg.bins_eta)
        report_lines = report.lines()
    warnings = set(report.warnings())
    for line in report_lines:
        (logger.warning if line in warnings else logger.info)(line)

    plot_settings = dataset_plots.PlotSettings(
        labels=tuple(labels), reference=cfg.reference_flavour, bins_pt=tuple(cfg.bins_pt),
        bins_eta=tuple(cfg.bins_eta), event_weight=bool(cfg.event_weight))
    plot_arguments = (plot_settings, list(piece_dirs), histograms, weights, directory / "plots")
    shard_arguments = (list(piece_dirs), directory, seed, shard_size, weights, cfg.bins_pt, cfg.bins_eta)
    if processes > 1:
        # the merge runs in a process of its own while this one draws the plots, which need the
        # weights, not the shards: drawing holds the interpreter that merging threads take
        # between their reads, copies and hashing. This process has imported what drawing
        # needs; the merge's process imports only the dataset format and numpy (0.1 s, against
        # 0.5 s for a process that draws). A fresh interpreter ("spawn"), not a fork of this
        # process, whose other threads (a scheduler's keep-alive, a progress bar's) could hold
        # a lock at the moment of the fork that the child then waits for. Drawing takes a core:
        # the merge takes the others (on two cores, one merging thread beside the plots merged
        # 2M jets in 3.5-3.8 s, two in 4.0-4.2 s: each reads ahead into memory of its own, new
        # memory costs a fault per page, and one thread alone kept the disk nearly busy)
        heap.release_freed_memory()  # what the processing freed here, while another process merges
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as side:
            merged = side.submit(dataset.write_shards, *shard_arguments, processes=processes - 1)
            try:
                plot_paths = dataset_plots.draw(*plot_arguments)
            except BaseException:
                # where the merge failed too (pieces changed since they were checked), its error
                # names the piece and says what to do
                merge_error = merged.exception()
                if isinstance(merge_error, dataset.DatasetError):
                    raise merge_error from None
                raise
            shards = merged.result()
    else:
        shards = dataset.write_shards(*shard_arguments)
        plot_paths = dataset_plots.draw(*plot_arguments)

    per_file: dict[str, dict] = {}
    for info in infos:
        entry = per_file.setdefault(info["file"], {"file": info["file"], "process": info["process"], "n_jets": 0})
        entry["n_jets"] += info["n_jets"]
    label_counts = sums.jets.sum(axis=(1, 2))
    meta = {
        "config": cfg.name,
        "split": split,
        "seed": seed,
        "identity": dataset_identity,
        "identity_hash": stable_hash(dataset_identity),
        "code_version": code_version(),
        "features": {
            "global": [*cfg.global_features, *cfg.global_custom_features],
            **{g.name: [*g.features, *g.custom_features] for g in groups},
        },
        "n_candidates": {g.name: g.n_candidates for g in groups},
        # optional groups the inputs lack (absent from features above)
        "dropped_groups": [name for name in cfg.candidate_groups if name not in {g.name for g in groups}],
        "kinematics": [cfg.pt_key, cfg.eta_key],
        "truth_labels": list(labels),
        "reference_flavour": cfg.reference_flavour,
        "processes": [p.name for p in cfg.processes],
        "extras": list(cfg.reference_columns()),
        "targets": list(cfg.regression_targets),
        "valid_targets": {name: int(sum(info.get("valid_targets", {}).get(name, 0) for info in infos))
                          for name in cfg.regression_targets},
        "bins_pt": list(cfg.bins_pt),
        "bins_eta": list(cfg.bins_eta),
        **sums.to_json(),
        "weights": np.asarray(weights).tolist(),
        "event_weight": cfg.event_weight,
        "max_abs_event_weight": max((info.get("max_abs_event_weight", 1.0) for info in infos), default=1.0),
        "reweighting": {"settings": dict(cfg.reweighting), "labels": report.label_table(),
                        "merged_bins": report.merged_bins, "warnings": sorted(warnings)},
        "weights_from": str(histograms_from) if histograms_from else None,
        "reweighting_report": report_lines,
        "jets_per_label": {label: int(n) for label, n in zip(labels, label_counts)},
        "counts": counts,
        "n_jets": int(sum(s["n_jets"] for s in shards)),
        "shards": shards,
        "files": list(per_file.values()),
        "plots": sorted(str(p.relative_to(directory)) for p in plot_paths),
    }
    dataset.write_meta(directory, meta)
    return meta


def _piece_groups(cfg: Config, infos: Sequence[dict]) -> list[CandidateGroup]:
    """The config's candidate groups the pieces hold: all of them but the optional groups the
    inputs lack, the same in every piece."""
    held = {tuple(name for name in cfg.candidate_groups if name in info["arrays"]) for info in infos}
    if len(held) > 1:
        raise dataset.DatasetError(
            f"the pieces hold different candidate groups ({' / '.join(', '.join(h) or 'none' for h in sorted(held))}): "
            f"the input files changed while the dataset was being built; remove the output with --remove-output "
            f"and build it again")
    names = held.pop() if held else tuple(cfg.candidate_groups)
    absent = [name for name in cfg.candidate_groups if name not in names and name not in cfg.optional_groups]
    if absent:
        raise dataset.DatasetError(f"the pieces lack the candidate group(s) {', '.join(absent)}, which are not in "
                                   f"optional_groups; remove the output with --remove-output and build it again")
    return [cfg.candidate_groups[name] for name in names]
