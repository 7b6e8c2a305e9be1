"""The dataset format: shards of ``.npy`` arrays plus ``meta.json`` (the contract between
dataset construction and training).

Each shard directory holds one ``.npy`` per array, all with the same first dimension:
``global`` (n, n_global), ``cpf``/``npf``/``vtx`` (n, n_candidates, n_features) with masks
``mask_cpf``/... (n, n_candidates), ``truth`` (n,) int16 index into the truth labels,
``kinematics`` (n, 2) pt and eta, ``process`` (n,) int16, ``extras`` (n, n_extras)
reference-tagger scores, ``weight`` (n,) the reweighting weight (>= 0, each label's maximum 1)
and, where the config names an ``event_weight`` branch, ``mc_weight`` (n,) float32 that
branch's value for the jet (a generator weight, possibly negative) and, where the config has
``regression_targets``, ``target`` (n, n_targets) float32, the true values in the order of
``meta["targets"]`` (NaN where a jet has no valid value: such jets are kept), and
``target_baseline`` (n, n_targets), each target's estimate without regression (NaN where the
config gives none). Shards are
memory-mappable, so a reader never needs a whole dataset in memory.

The candidate arrays are stored packed (format 2, :mod:`bhive.packed`): ``cpf.npy`` holds the
(entries, n_features) rows that ``mask_cpf`` keeps, jet by jet, instead of the zero-padded
(n, n_candidates, n_features) array, which is about half the bytes to write, hash and read.
:func:`open_shard` gives them as :class:`~bhive.packed.PackedArray`, which reads as the padded
array (rows sliced or gathered, ``np.asarray``). Datasets of format 1, padded on disk, are read
as they are.

Shards are built from pieces in one streaming pass, so memory is bounded by two shards (one
merged, the next one's blocks being read) and no piece is ever held whole. Each jet's shard is
drawn when its piece is written: a seeded key in [0, 1) per jet, a function of the seed, the
piece's name (input file, tree and entry range) and the jet's row, sends it to shard
``floor(key * n_shards)``, and the piece stores its jets in key order (:mod:`bhive.pieces`). A shard then reads one contiguous block of rows from every piece,
in the order of the piece names, and shuffles them with a generator seeded by the seed and the
shard's index. Every shard therefore mixes all files and processes, and the same inputs and
seed give byte-identical shards whatever the executor and whatever order the pieces were
produced or listed in. Pieces and shards are written, and pieces read, past the page cache
(:mod:`bhive.direct_io`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from bhive import direct_io, heap, packed, pieces, reweighting
from bhive.store import atomic_directory, atomic_write_json, file_problem, read_json

META_FILE = "meta.json"
#: written by this code: candidate arrays packed; datasets of format 1 (padded) are still read
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
WEIGHT = "weight"
EVENT_WEIGHT = "mc_weight"
TARGET = "target"
TARGET_BASELINE = "target_baseline"
_REBUILD = "remove the dataset with --remove-output and build it again, or use a new --dataset-version"
# stream of the seeded random generator of the order within a shard (pieces draw the shard keys)
_SHARD_ORDER = 1
# reads of piece blocks in flight at once: four keep the device busy (on one core 2, 4 and 8
# merge 2M jets equally fast), and every reader is a thread to wake and a staging buffer of new
# memory (two merging threads: 2.8-3.0 s with 4, 3.0-3.5 s with 8)
_READERS = 4


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


def check_pieces(piece_dirs: Sequence[Path], infos: Sequence[dict | None], seed: int) -> None:
    """Raise :class:`DatasetError` naming the first piece a dataset for ``seed`` cannot be built
    from: unfinished, ordered for another seed, in another layout, or with a file of another
    shape or cut short. Reads only the files' headers and sizes."""
    for piece_dir, info in zip(piece_dirs, infos):
        if info is not None and info.get(pieces.SHARD_SEED) != seed:
            raise DatasetError(f"piece {piece_dir} was ordered for seed {info.get(pieces.SHARD_SEED)}, not {seed}; "
                               f"remove the pieces and make them again with seed {seed}")
        try:
            pieces.check(piece_dir, info)
        except pieces.PieceError as error:
            raise DatasetError(f"{error}; remove the pieces and make them again") from None


def write_shards(piece_dirs: Sequence[Path], directory: Path, seed: int, shard_size: int,
                 weights: np.ndarray, bins_pt: Sequence[float], bins_eta: Sequence[float],
                 processes: int = 1) -> list[dict]:
    """Merge ``piece_dirs`` (written for ``seed``) into shuffled shards under ``directory``,
    ``processes`` shards at a time.

    Returns ``[{"name", "n_jets", "files": {file: {"size", "sha256"}}}]`` per shard. Each shard
    appears complete or not at all; pieces are only read. Memory holds one shard per merging
    thread (with one thread, also the next shard's blocks as they are read) and no piece.
    """
    piece_dirs = sorted(piece_dirs, key=lambda d: Path(d).name)  # the given order does not matter
    infos = [pieces.read_info(d) for d in piece_dirs]
    check_pieces(piece_dirs, infos, seed)
    layout = {name: spec for info in infos for name, spec in info["arrays"].items()}
    total = sum(info["n_jets"] for info in infos)
    n_shards = max(1, math.ceil(total / shard_size))
    sources = [_reader(d, info, layout, seed, n_shards) for d, info in zip(piece_dirs, infos) if info["n_jets"]]
    heap.release_freed_memory()  # what the processing freed, before the merge takes its buffers
    with ThreadPoolExecutor(_READERS, thread_name_prefix="piece-reader") as readers:
        return _merge(sources, directory, seed, n_shards, layout, readers, weights, bins_pt, bins_eta, processes)


def _merge(sources: Sequence[pieces.PieceReader], directory: Path, seed: int, n_shards: int, layout: dict,
           readers: Executor, weights: np.ndarray, bins_pt: Sequence[float], bins_eta: Sequence[float],
           processes: int) -> list[dict]:
    def shard(index: int, blocks: tuple[dict, list[Future]], buffers: _Buffers, writer: Executor) -> dict:
        arrays = _shuffle(*blocks, sources, index, layout, np.random.default_rng([seed, _SHARD_ORDER, index]),
                          buffers)
        kinematics = arrays["kinematics"]
        arrays[WEIGHT] = reweighting.jet_weights(weights, kinematics[:, 0], kinematics[:, 1], arrays["truth"],
                                                 bins_pt, bins_eta).astype(np.float32)
        files = _write_shard(directory / shard_name(index), arrays, writer)
        return {"name": shard_name(index), "n_jets": len(kinematics), "files": files}

    failed = threading.Event()

    def lane(indices: range) -> list[dict]:
        # the next shard's blocks are read while one is shuffled, weighted and written, so two
        # sets of block buffers take turns: the device always has reads to serve
        block_buffers, buffers = (_Buffers(), _Buffers()), _Buffers()
        merged, pending = [], _read_blocks(sources, indices[0], layout, readers, block_buffers[0])
        with ThreadPoolExecutor(1, thread_name_prefix="shard-writer") as writer:
            for turn, index in enumerate(indices):
                if failed.is_set():  # another lane's error is the one raised
                    break
                blocks = pending
                if turn + 1 < len(indices):
                    pending = _read_blocks(sources, indices[turn + 1], layout, readers,
                                           block_buffers[(turn + 1) % 2])
                try:
                    merged.append(shard(index, blocks, buffers, writer))
                except BaseException:
                    failed.set()
                    raise
        return merged

    # shard i goes to lane i % lanes; shards are all about one size
    lanes = [range(first, n_shards, processes) for first in range(min(processes, n_shards))]
    if len(lanes) == 1:
        return lane(lanes[0])
    # the work is in file reads, numpy copies and hashing, which release the GIL
    with ThreadPoolExecutor(len(lanes), thread_name_prefix="shard-merger") as pool:
        merged = [future.result() for future in [pool.submit(lane, indices) for indices in lanes]]
    return [merged[index % len(lanes)][index // len(lanes)] for index in range(n_shards)]


def _reader(directory: Path, info: dict, layout: dict, seed: int, n_shards: int) -> pieces.PieceReader:
    missing = sorted(set(layout) - set(info["arrays"]))
    if missing:
        raise DatasetError(f"piece {directory} lacks the arrays {', '.join(missing)} that other pieces hold; "
                           f"remove the pieces and make them again")
    try:
        return pieces.PieceReader(directory, info, seed, n_shards, layout)
    except pieces.PieceError as error:
        raise DatasetError(f"{error}; remove the pieces and make them again") from None


class _Buffers:
    """The arrays of one merging thread, kept from shard to shard: shards are all about one
    size, so after the first one the merge writes into memory it has touched before. New memory
    costs a page fault per page touched (and a fault in the host on the virtual machines
    :mod:`bhive.direct_io` is written for), more than the copy into it."""

    def __init__(self) -> None:
        self._held: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` in the memory kept under ``name`` (its values are
        whatever was there); valid until the next call for ``name``."""
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        held = self._held.get(name)
        if held is None or held.size < size:
            held = self._held[name] = np.empty(size, np.uint8)
        return held[:size].view(dtype).reshape(shape)


def _read_blocks(sources: Sequence[pieces.PieceReader], index: int, layout: dict, readers: Executor,
                 buffers: _Buffers) -> tuple[dict[str, np.ndarray], list[Future]]:
    """Start reading the block of shard ``index`` from every piece: per array, one buffer that
    takes the pieces' blocks one after the other; per piece, one read of all its arrays' rows
    into those buffers, run by ``readers`` side by side (past the page cache a read waits for
    the device, and thousands of small waits in a row would take longer than the rest of the
    merge). ``buffers`` are the blocks' alone: the shard is made from them into other memory."""
    blocks, outs = {}, [{} for _ in sources]
    for name, spec in layout.items():
        row_shape = spec["shape"][2:] if "packed_by" in spec else spec["shape"][1:]
        bounds = np.cumsum([0, *(source.n_rows(name, index) for source in sources)])
        blocks[name] = block = buffers.array(name, (int(bounds[-1]), *row_shape), spec["dtype"])
        for k, out in enumerate(outs):
            out[name] = block[bounds[k]:bounds[k + 1]]
    return blocks, [readers.submit(source.read_all, index, out) for source, out in zip(sources, outs)]


def _shuffle(blocks: dict[str, np.ndarray], reads: Sequence[Future], sources: Sequence[pieces.PieceReader],
             index: int, layout: dict, rng: np.random.Generator, buffers: _Buffers) -> dict[str, np.ndarray]:
    """Shard ``index`` from its ``blocks`` once their ``reads`` are done (:func:`_read_blocks`),
    its jets in a seeded random order, in arrays of ``buffers``. Packed arrays stay packed:
    their entries follow their jets to the jets' new rows."""
    sizes = [source.n_jets(index) for source in sources]
    destination = rng.permutation(sum(sizes))
    rows_of = np.split(destination, np.cumsum(sizes)[:-1])  # each piece's jets' rows in the shard
    try:
        for read in reads:
            read.result()
    except pieces.PieceError as error:
        raise DatasetError(f"{error}; remove the pieces and make them again") from None
    arrays = {}
    # jet arrays first: a packed array's entries are placed by its mask's rows in the shard
    for name in sorted(layout, key=lambda name: "packed_by" in layout[name]):
        block = blocks[name]
        mask_name = layout[name].get("packed_by")
        if mask_name is None:
            places = destination
        else:
            offsets = packed.entry_offsets(arrays[mask_name])
            places = np.concatenate([packed.entry_rows(offsets, rows) for rows in rows_of] or [[]]).astype(np.int64)
        values = buffers.array(name, block.shape, block.dtype)
        packed.put_rows(values, places, block)  # the block holds the pieces' rows in the order of rows_of
        arrays[name] = values
    return arrays


def _write_shard(directory: Path, arrays: dict[str, np.ndarray], writer: Executor | None = None) -> dict[str, dict]:
    """Write one shard atomically; returns its files with size and sha256. The files are
    written by ``writer``'s thread (a new one when None) while this one hashes them: a direct
    write mostly waits for the device, which hashing does not need. A merging thread keeps
    one writer for all its shards, whose staging buffer (:mod:`bhive.direct_io`) is then made
    once: each new one is 8 MiB of new memory."""
    arrays = {name: np.ascontiguousarray(arrays[name]) for name in sorted(arrays)}
    with contextlib.ExitStack() as stack:
        if writer is None:
            writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="shard-writer"))
        temporary = stack.enter_context(atomic_directory(directory))
        writes = [writer.submit(direct_io.save_array, temporary / f"{name}.npy", values)
                  for name, values in arrays.items()]
        try:
            files = {f"{name}.npy": _file_record(values) for name, values in arrays.items()}
            for write in writes:
                write.result()
        except BaseException:
            # the writes still queued are dropped and the one under way is waited for: none
            # may outlive the temporary directory, which the error removes
            for write in writes:
                write.cancel()
            wait(writes)
            raise
    return files


def _file_record(values: np.ndarray) -> dict:
    """Size and sha256 of the ``.npy`` file of the C-contiguous array ``values``, as
    :func:`bhive.store.file_record` gives them for the file, from the array itself rather
    than reading the file back."""
    header = direct_io.array_header(values)
    digest = hashlib.sha256(header)
    digest.update(values.reshape(-1).view(np.uint8))
    return {"size": len(header) + values.nbytes, "sha256": digest.hexdigest()}


def check_shards(directory: Path, verify: bool = False) -> None:
    """Raise :class:`DatasetError` naming the first shard file that is missing or has another
    size than ``meta.json`` records (with ``verify``: another sha256)."""
    meta = load_meta(directory)
    for shard in meta["shards"]:
        for name, recorded in shard.get("files", {}).items():
            path = Path(directory) / shard["name"] / name
            problem = file_problem(path, recorded, verify)
            if problem:
                raise DatasetError(f"dataset file {path} is damaged ({problem}); {_REBUILD}")


def write_meta(directory: Path, meta: dict) -> None:
    atomic_write_json(directory / META_FILE, {"format_version": FORMAT_VERSION, **meta})


def load_meta(directory: Path) -> dict:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise DatasetError(f"{directory} is not a finished dataset: {META_FILE} is missing")
    meta = read_json(path)
    if meta.get("format_version") not in READABLE_FORMATS:
        raise DatasetError(f"{path}: dataset format {meta.get('format_version')} is not one this code reads "
                           f"({', '.join(map(str, READABLE_FORMATS))}); rebuild the dataset with a new "
                           f"--dataset-version")
    return meta


def open_shard(directory: Path, name: str, mmap: bool = True) -> dict[str, np.ndarray | packed.PackedArray]:
    """All arrays of one shard, memory-mapped by default. A candidate array stored packed
    (format 2) comes as a :class:`~bhive.packed.PackedArray`, read as the zero-padded array."""
    shard = Path(directory) / name
    if not shard.is_dir():
        raise DatasetError(f"shard {shard} is missing; the dataset is damaged: {_REBUILD}")
    arrays = {}
    for path in sorted(shard.glob("*.npy")):
        try:
            arrays[path.stem] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise DatasetError(f"dataset file {path} cannot be read ({error}); it is damaged: {_REBUILD}") from None
    for array_name, mask_name in packed_arrays(arrays).items():
        try:
            arrays[array_name] = packed.PackedArray(arrays[array_name], arrays[mask_name],
                                                    name=f"dataset file {shard / array_name}.npy")
        except packed.PackedArrayError as error:
            raise DatasetError(f"{error}: it is damaged; {_REBUILD}") from None
    return arrays


def packed_arrays(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Array name -> mask name of the packed arrays among a shard's ``arrays``: those with a
    ``mask_<name>`` beside them whose dimensions are the mask's (a padded array has one more)."""
    return {name: f"mask_{name}" for name, values in arrays.items()
            if f"mask_{name}" in arrays and values.ndim == arrays[f"mask_{name}"].ndim}
