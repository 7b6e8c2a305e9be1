"""The dataset format: shards of ``.npy`` arrays plus ``meta.json`` (the contract between
dataset construction and training).

Each shard directory holds one ``.npy`` per array, all with the same first dimension:
``global`` (n, n_global), ``cpf``/``npf``/``vtx`` (n, n_candidates, n_features) with masks
``mask_cpf``/... (n, n_candidates), ``truth`` (n,) int16 index into the truth labels,
``kinematics`` (n, 2) pt and eta, ``process`` (n,) int16, ``extras`` (n, n_extras)
reference-tagger scores, ``weight`` (n,) the reweighting weight (>= 0, each label's maximum 1)
and, where the config names an ``event_weight`` branch, ``mc_weight`` (n,) float32 that
branch's value for the jet (a generator weight, possibly negative). Shards are
memory-mappable, so a reader never needs a whole dataset in memory.

Shards are built from pieces in two streaming passes, so memory is bounded by one piece plus
one shard: every jet of every piece is sent to a random shard (seeded), then each shard is
shuffled (seeded) and written. Every shard therefore mixes all files and processes, and the
same pieces and seed give byte-identical shards whatever order the pieces were produced in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bhive import pieces, reweighting
from bhive.store import atomic_directory, atomic_write_json, file_problem, file_record, private_directory, read_json

META_FILE = "meta.json"
FORMAT_VERSION = 1
WEIGHT = "weight"
EVENT_WEIGHT = "mc_weight"
_BUCKETS = "buckets"
# Streams of the seeded random generators: which shard a piece's jets go to, and the order
# within a shard.
_SHARD_ASSIGNMENT, _SHARD_ORDER = 0, 1


class DatasetError(ValueError):
    """A dataset that cannot be built or read as asked."""


def shard_name(index: int) -> str:
    return f"shard_{index:04d}"


def total_counts(infos: Sequence[dict]) -> dict[str, int]:
    keys = ("read", "out_of_range", "no_label", "non_finite", "kept")
    return {k: int(sum(info["counts"][k] for info in infos)) for k in keys}


def summed_bin_sums(infos: Sequence[dict], n_labels: int, n_pt: int, n_eta: int) -> reweighting.BinSums:
    """The pieces' per-bin jets and event-weight sums, added up."""
    total = reweighting.BinSums.of_counts(np.zeros((n_labels, n_pt, n_eta)))
    for info in infos:
        total = total + reweighting.BinSums.from_json(info)
    return total


def write_shards(piece_dirs: Sequence[Path], directory: Path, seed: int, shard_size: int,
                 weights: np.ndarray, bins_pt: Sequence[float], bins_eta: Sequence[float]) -> list[dict]:
    """Stream ``piece_dirs`` (in the given order) into shuffled shards under ``directory``.

    Returns ``[{"name", "n_jets", "files": {file: {"size", "sha256"}}}]`` per shard. The
    per-shard buckets live in a scratch directory private to this run and removed however it
    ends; each shard appears complete or not at all. Pieces are only read.
    """
    infos = [pieces.read_info(d) for d in piece_dirs]
    layout = {name: spec for info in infos for name, spec in info["arrays"].items()}
    total = sum(info["n_jets"] for info in infos)
    n_shards = max(1, math.ceil(total / shard_size))

    with private_directory(directory, _BUCKETS) as buckets:
        bucket_sizes = np.zeros(n_shards, dtype=np.int64)
        for index, (piece_dir, info) in enumerate(zip(piece_dirs, infos)):
            n = info["n_jets"]
            if n == 0:
                continue
            destination = np.random.default_rng([seed, _SHARD_ASSIGNMENT, index]).integers(n_shards, size=n)
            order = np.argsort(destination, kind="stable")
            bounds = np.searchsorted(destination[order], np.arange(n_shards + 1))
            bucket_sizes += np.diff(bounds)
            for name in layout:
                values = pieces.load_array(piece_dir, name)[order]
                for shard in range(n_shards):
                    if bounds[shard + 1] > bounds[shard]:
                        with open(buckets / f"{shard}.{name}.bin", "ab") as stream:
                            stream.write(np.ascontiguousarray(values[bounds[shard]:bounds[shard + 1]]).tobytes())

        shards = []
        for shard in range(n_shards):
            arrays = {}
            n = bucket_sizes[shard]
            for name, spec in layout.items():
                path = buckets / f"{shard}.{name}.bin"
                dtype = np.dtype(spec["dtype"])
                flat = np.fromfile(path, dtype=dtype) if path.exists() else np.zeros(0, dtype)
                arrays[name] = flat.reshape(n, *spec["shape"][1:])
            permutation = np.random.default_rng([seed, _SHARD_ORDER, shard]).permutation(n)
            arrays = {name: values[permutation] for name, values in arrays.items()}
            kinematics = arrays["kinematics"]
            arrays[WEIGHT] = reweighting.jet_weights(weights, kinematics[:, 0], kinematics[:, 1], arrays["truth"],
                                                     bins_pt, bins_eta).astype(np.float32)
            files = _write_shard(directory / shard_name(shard), arrays)
            for name in layout:
                (buckets / f"{shard}.{name}.bin").unlink(missing_ok=True)
            shards.append({"name": shard_name(shard), "n_jets": int(n), "files": files})
    return shards


def _write_shard(directory: Path, arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """Write one shard atomically; returns its files with size and sha256."""
    with atomic_directory(directory) as temporary:
        for name, values in arrays.items():
            np.save(temporary / f"{name}.npy", values, allow_pickle=False)
        return {path.name: file_record(path) for path in sorted(temporary.glob("*.npy"))}


def check_shards(directory: Path, verify: bool = False) -> None:
    """Raise :class:`DatasetError` naming the first shard file that is missing or has another
    size than ``meta.json`` records (with ``verify``: another sha256)."""
    meta = load_meta(directory)
    for shard in meta["shards"]:
        for name, recorded in shard.get("files", {}).items():
            path = Path(directory) / shard["name"] / name
            problem = file_problem(path, recorded, verify)
            if problem:
                raise DatasetError(f"dataset file {path} is damaged ({problem}); remove the dataset with "
                                   f"--remove-output and build it again, or use a new --dataset-version")


def write_meta(directory: Path, meta: dict) -> None:
    atomic_write_json(directory / META_FILE, {"format_version": FORMAT_VERSION, **meta})


def load_meta(directory: Path) -> dict:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise DatasetError(f"{directory} is not a finished dataset: {META_FILE} is missing")
    meta = read_json(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: dataset format {meta.get('format_version')} is not the supported "
                           f"{FORMAT_VERSION}; rebuild the dataset with a new --dataset-version")
    return meta


def open_shard(directory: Path, name: str, mmap: bool = True) -> dict[str, np.ndarray]:
    """All arrays of one shard, memory-mapped by default."""
    shard = Path(directory) / name
    if not shard.is_dir():
        raise DatasetError(f"shard {shard} is missing; the dataset is damaged: remove it with --remove-output "
                           f"and build it again, or use a new --dataset-version")
    arrays = {}
    for path in sorted(shard.glob("*.npy")):
        try:
            arrays[path.stem] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise DatasetError(f"dataset file {path} cannot be read ({error}); it is damaged: remove the dataset "
                               f"with --remove-output and build it again, or use a new --dataset-version") from None
    return arrays
