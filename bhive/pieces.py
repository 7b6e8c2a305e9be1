"""Pieces: the arrays one chunk of one input file contributes to a dataset.

A processor writes each chunk's arrays as a piece directory of ``.npy`` files plus
``info.json``, so that memory never holds more than a chunk and an interrupted run keeps
every finished chunk. Piece names are derived from a hash of (file, tree, entry range):
collision-free for any path, ``root://`` URLs included, and the same on every rerun.
A piece directory is renamed into place only when complete.

A piece's jets are stored in the order of their shard keys: numbers drawn uniformly from
[0, 1) by a generator seeded with the dataset's seed and the piece's name, one per jet in the
order the processor made them. A dataset of ``n`` shards sends the jets with keys in
[s/n, (s+1)/n) to shard ``s``; as the number of shards is known only once every piece exists,
this is what lets each shard read one contiguous block of rows of every piece, whatever the
executor, the order the pieces were made in and the number of shards.

Zero-padded (jets, slots, ...) arrays with a (jets, slots) mask, the candidate groups, are
stored packed: only the entries the mask keeps, about half the padded bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import direct_io, packed
from bhive.store import atomic_directory

INFO_FILE = "info.json"
#: info key: the seed whose shard keys order the piece's jets
SHARD_SEED = "shard_seed"
# stream of the seeded generator that draws the shard keys (the dataset uses others)
_SHARD_KEYS = 2
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class PieceError(ValueError):
    """A piece that cannot be read as its info describes it."""


def piece_name(filename: str, treename: str, entry_start: int, entry_stop: int) -> str:
    digest = hashlib.sha256(f"{filename}\0{treename}\0{entry_start}\0{entry_stop}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(filename.split("?")[0]).stem)[-40:].strip("_") or "file"
    return f"{stem}-{entry_start}-{entry_stop}-{digest}"


def shard_keys(seed: int, name: str, n_jets: int) -> np.ndarray:
    """The shard key of each of the ``n_jets`` jets of piece ``name``, in the processor's order."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "little")
    return np.random.default_rng([seed, _SHARD_KEYS, digest]).random(n_jets)


def shard_bounds(seed: int, name: str, n_jets: int, n_shards: int) -> np.ndarray:
    """Row boundaries of the shards in piece ``name`` as stored: shard ``s`` takes the rows
    ``bounds[s]:bounds[s + 1]``."""
    edges = np.arange(n_shards + 1) / n_shards
    return np.searchsorted(np.sort(shard_keys(seed, name, n_jets)), edges)


def read_info(directory: Path) -> dict | None:
    """The info of a finished piece, or None if it does not exist."""
    path = directory / INFO_FILE
    if not path.exists():
        return None
    with open(path) as stream:
        return json.load(stream)


def write_piece(directory: Path, arrays: Mapping[str, np.ndarray | packed.PackedArray], info: dict, seed: int,
                masks: Mapping[str, str] | None = None) -> None:
    """Write arrays, their jets in the order of their shard keys for ``seed``, and info to
    ``directory`` atomically (a temporary directory, then a rename).

    ``masks`` names, for (jets, slots, ...) arrays, packed or padded with zeros, their
    (jets, slots) mask: such an array is stored packed, only the entries its mask keeps, which
    for candidate arrays is about half of the padded size. Two workers that process the same
    chunk write identical pieces; the later rename wins.
    """
    masks = dict(masks or {})
    n_jets = len(next(iter(arrays.values()))) if arrays else 0
    order = np.argsort(shard_keys(seed, Path(directory).name, n_jets), kind="stable")
    with atomic_directory(directory) as temporary:
        specs = {}
        for name, values in arrays.items():
            spec = {"shape": list(values.shape), "dtype": values.dtype.str}
            if name in masks:
                if not isinstance(values, packed.PackedArray):
                    values = packed.PackedArray(values[arrays[masks[name]]], arrays[masks[name]])
                stored = values.select(order).entries
                spec.update(packed_by=masks[name], entries=len(stored))
            else:
                stored = packed.take_rows(values, order)
            direct_io.save_array(temporary / f"{name}.npy", stored)
            specs[name] = spec
        # dumps, not dump: only the one-shot encoder is the C one (the bin sums are thousands of numbers)
        (temporary / INFO_FILE).write_text(json.dumps({**info, "arrays": specs, SHARD_SEED: seed}, sort_keys=True))


def load_stored(directory: Path, name: str) -> np.ndarray:
    """One array of a finished piece as stored, its jets in the order of their shard keys: the
    same order in every per-jet array of the piece, and enough where the order of jets does not
    matter (sums, histograms). Packed arrays come as their entries."""
    return np.load(Path(directory) / f"{name}.npy", allow_pickle=False)


def load_array(directory: Path, name: str) -> np.ndarray:
    """One array of a finished piece as the processor made it: padded, its jets in the
    processor's order."""
    info = read_info(directory)
    stored = load_stored(directory, name)
    mask_name = info["arrays"][name].get("packed_by")
    if mask_name is not None:
        stored = packed.unpack(stored, load_stored(directory, mask_name))
    order = np.argsort(shard_keys(info[SHARD_SEED], Path(directory).name, len(stored)), kind="stable")
    made = np.empty_like(stored)
    made[order] = stored
    return made


class PieceReader:
    """The block of rows each shard takes from one piece: its size, and its rows of any array
    read straight into a caller's buffer. The files are checked against the piece's info
    (shape and dtype) when the reader is made."""

    def __init__(self, directory: Path, info: Mapping, seed: int, n_shards: int, names: Iterable[str]) -> None:
        self.directory = Path(directory)
        self.bounds = shard_bounds(seed, self.directory.name, info["n_jets"], n_shards)
        self.specs = {name: info["arrays"][name] for name in names}
        self._files, self._entry_bounds = {}, {}
        for name, spec in self.specs.items():
            shape, mask_name = spec["shape"], spec.get("packed_by")
            if mask_name is not None:
                shape = [spec["entries"], *shape[2:]]
                mask = np.load(self.directory / f"{mask_name}.npy", allow_pickle=False)
                self._entry_bounds[name] = packed.entry_offsets(mask)[self.bounds]
            self._files[name] = _ArrayFile(self.directory / f"{name}.npy", shape, np.dtype(spec["dtype"]))

    def n_jets(self, shard: int) -> int:
        return int(self.bounds[shard + 1] - self.bounds[shard])

    def n_rows(self, name: str, shard: int) -> int:
        """Rows of ``name`` in the block of ``shard``: jets, or kept entries of a packed array."""
        bounds = self._entry_bounds.get(name, self.bounds)
        return int(bounds[shard + 1] - bounds[shard])

    def read(self, name: str, shard: int, out: np.ndarray) -> None:
        """The rows of ``name`` in the block of ``shard`` into ``out`` (C-contiguous, of their
        shape and dtype)."""
        bounds = self._entry_bounds.get(name, self.bounds)
        self._files[name].read(int(bounds[shard]), int(bounds[shard + 1]), out)

    def read_all(self, shard: int, outs: Mapping[str, np.ndarray]) -> None:
        """:meth:`read` of every array in ``outs`` (name -> buffer), one after the other."""
        for name, out in outs.items():
            self.read(name, shard, out)


class _ArrayFile:
    """The rows of one ``.npy`` file, read by offset without mapping or loading the file."""

    def __init__(self, path: Path, shape: Sequence[int], dtype: np.dtype) -> None:
        self.path = path
        try:
            with open(path, "rb") as stream:
                version = np.lib.format.read_magic(stream)
                found = _HEADER_READERS[version](stream)  # (shape, fortran order, dtype)
                self.offset = stream.tell()
        except (OSError, ValueError, KeyError) as error:
            raise PieceError(f"piece file {path} cannot be read ({error})") from None
        if found != (tuple(shape), False, dtype):
            raise PieceError(f"piece file {path} holds {found[2]} {found[0]}, its info says {dtype} {tuple(shape)}")
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        try:
            direct_io.read_into(self.path, self.offset + start * self.row_bytes, out)
        except direct_io.ShortFileError as error:
            raise PieceError(f"piece file {error}") from None
