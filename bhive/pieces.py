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

The per-jet arrays (features, kinematics, truth, masks, ...) are stored together as the
fields of one record per jet, ``jets.npy``, so that a shard's rows of all of them are one
read: the merge reads every piece once per shard, and one small read per array made most of
its reads. Zero-padded (jets, slots, ...) arrays with a (jets, slots) mask, the candidate
groups, are stored packed in files of their own (``<name>.npy``): only the entries the mask
keeps, about half the padded bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import direct_io, packed
from bhive.store import atomic_directory

INFO_FILE = "info.json"
#: the per-jet arrays of a piece, one record per jet
JETS_FILE = "jets.npy"
#: info key: the seed whose shard keys order the piece's jets
SHARD_SEED = "shard_seed"
#: info key: the layout of the piece's files; pieces of another layout are made again
LAYOUT = "piece_layout"
#: per-jet arrays as the fields of ``jets.npy``, packed arrays in files of their own
CURRENT_LAYOUT = 2
# stream of the seeded generator that draws the shard keys (the dataset uses others)
_SHARD_KEYS = 2
# the dtype kinds a piece's arrays may have: booleans, integers, floats, complex numbers
_NUMERIC_KINDS = frozenset("biufc")
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


def is_current(info: Mapping | None) -> bool:
    """Whether ``info`` is that of a finished piece in the layout this code writes and reads."""
    return info is not None and info.get(LAYOUT) == CURRENT_LAYOUT


def jet_record(specs: Mapping[str, Mapping]) -> np.dtype:
    """The dtype of one record of ``jets.npy``: a field per array of ``specs`` (name -> info
    spec, ``shape`` and ``dtype``) that is not packed, each at an offset of a multiple of its
    item size. The fields go by item size, largest first (little padding), then by name: the
    order does not depend on the order of ``specs``, which ``info.json`` does not keep."""
    fields = sorted((-np.dtype(spec["dtype"]).itemsize, name, spec["dtype"], tuple(spec["shape"][1:]))
                    for name, spec in specs.items() if "packed_by" not in spec)
    return np.dtype([(name, dtype, shape) for _, name, dtype, shape in fields], align=True)


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
    specs = {name: {"shape": list(values.shape), "dtype": values.dtype.str} for name, values in arrays.items()}
    with atomic_directory(directory) as temporary:
        for name, mask_name in masks.items():
            values = arrays[name]
            if not isinstance(values, packed.PackedArray):
                values = packed.PackedArray(values[arrays[mask_name]], arrays[mask_name])
            stored = values.select(order).entries
            specs[name].update(packed_by=mask_name, entries=len(stored))
            direct_io.save_array(temporary / f"{name}.npy", stored)
        # zeros: the padding between fields is then the same in every run
        records = np.zeros(n_jets, jet_record(specs))
        for name in records.dtype.names:
            records[name] = packed.take_rows(arrays[name], order)
        direct_io.save_array(temporary / JETS_FILE, records)
        # dumps, not dump: only the one-shot encoder is the C one (the bin sums are thousands of numbers)
        (temporary / INFO_FILE).write_text(json.dumps({**info, "arrays": specs, SHARD_SEED: seed,
                                                       LAYOUT: CURRENT_LAYOUT}, sort_keys=True))


def load_jets(directory: Path) -> np.ndarray:
    """The per-jet arrays of a finished piece as stored: one record per jet, a field per array,
    the jets in the order of their shard keys, which is enough where the order of jets does not
    matter (sums, histograms). Checked against the piece's info and read past the page cache."""
    return _files(Path(directory), read_info(Path(directory)))[0].load()


def load_stored(directory: Path, name: str) -> np.ndarray:
    """One array of a finished piece as stored (see :func:`load_jets`); packed arrays come as
    their entries."""
    if "packed_by" in read_info(Path(directory))["arrays"][name]:
        return np.load(Path(directory) / f"{name}.npy", allow_pickle=False)
    return np.ascontiguousarray(load_jets(directory)[name])


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
    """The block of rows each shard takes from one piece: its size, and its rows of any arrays
    read straight into a caller's buffers. The files are checked against the piece's info
    (layout, shapes and dtypes) when the reader is made."""

    def __init__(self, directory: Path, info: Mapping, seed: int, n_shards: int, names: Iterable[str]) -> None:
        self.directory = Path(directory)
        self.bounds = shard_bounds(seed, self.directory.name, info["n_jets"], n_shards)
        self.specs = {name: info["arrays"][name] for name in names}
        self._records, packed_files = _files(self.directory, info)
        self._files = {name: packed_files[name] for name in self.specs if name in packed_files}
        self._entry_bounds = {}
        if self._files:
            records = self._records.load()
            for name in self._files:
                offsets = packed.entry_offsets(records[self.specs[name]["packed_by"]])
                self._entry_bounds[name] = offsets[self.bounds]

    def n_jets(self, shard: int) -> int:
        return int(self.bounds[shard + 1] - self.bounds[shard])

    def n_rows(self, name: str, shard: int) -> int:
        """Rows of ``name`` in the block of ``shard``: jets, or kept entries of a packed array."""
        bounds = self._entry_bounds.get(name, self.bounds)
        return int(bounds[shard + 1] - bounds[shard])

    def read_all(self, shard: int, outs: Mapping[str, np.ndarray]) -> None:
        """The rows of the block of ``shard`` of every array in ``outs`` (name -> C-contiguous
        buffer of their shape and dtype): one read of the jets' records for all per-jet arrays,
        one read per packed array."""
        per_jet = [name for name in outs if name not in self._files]
        if per_jet:
            records = np.empty(self.n_jets(shard), self._records.dtype)
            self._records.read(int(self.bounds[shard]), int(self.bounds[shard + 1]), records)
            for name in per_jet:
                outs[name][...] = records[name]
        for name, file in self._files.items():
            if name in outs:
                bounds = self._entry_bounds[name]
                file.read(int(bounds[shard]), int(bounds[shard + 1]), outs[name])


def check(directory: Path, info: Mapping | None) -> None:
    """Raise :class:`PieceError` if ``directory`` is not a finished piece in the current
    layout whose files hold the shapes and dtypes its ``info`` gives, each whole."""
    _files(Path(directory), info)


def _files(directory: Path, info: Mapping | None) -> tuple[_ArrayFile, dict[str, _ArrayFile]]:
    """The records file of a piece and its packed arrays' files (name -> file), checked."""
    if info is None:
        raise PieceError(f"piece {directory} is not finished ({INFO_FILE} is missing)")
    if not is_current(info):
        raise PieceError(f"piece {directory} is in another layout ({LAYOUT} {info.get(LAYOUT)}, this code "
                         f"reads {CURRENT_LAYOUT})")
    for name, spec in info["arrays"].items():
        # an allow-list: bytes read into anything else (object references, above all) mean nothing
        try:
            kind = np.dtype(spec["dtype"]).kind
        except TypeError:
            kind = None
        if kind not in _NUMERIC_KINDS:
            raise PieceError(f"piece {directory}: its info gives array '{name}' the dtype {spec['dtype']!r}; "
                             f"pieces hold booleans and numbers only")
    records = _ArrayFile(directory / JETS_FILE, [info["n_jets"]], jet_record(info["arrays"]))
    packed_files = {name: _ArrayFile(directory / f"{name}.npy", [spec["entries"], *spec["shape"][2:]],
                                     np.dtype(spec["dtype"]))
                    for name, spec in info["arrays"].items() if "packed_by" in spec}
    return records, packed_files


class _ArrayFile:
    """The rows of one ``.npy`` file, read by offset without mapping or loading the file."""

    def __init__(self, path: Path, shape: Sequence[int], dtype: np.dtype) -> None:
        self.path = path
        try:
            with open(path, "rb") as stream:
                version = np.lib.format.read_magic(stream)
                found = _HEADER_READERS[version](stream)  # (shape, fortran order, dtype)
                self.offset = stream.tell()
                size = os.fstat(stream.fileno()).st_size
        except (OSError, ValueError, KeyError) as error:
            raise PieceError(f"piece file {path} cannot be read ({error})") from None
        if found != (tuple(shape), False, dtype):
            raise PieceError(f"piece file {path} holds {found[2]} {found[0]}, its info says {dtype} {tuple(shape)}")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        missing = self.offset + shape[0] * self.row_bytes - size
        if missing > 0:  # before any shard is merged; a file cut while the merge runs fails its read
            raise PieceError(f"piece file {path} ends {missing} bytes early")

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        try:
            direct_io.read_into(self.path, self.offset + start * self.row_bytes, out)
        except direct_io.ShortFileError as error:
            raise PieceError(f"piece file {error}") from None

    def load(self) -> np.ndarray:
        """The whole array, read past the page cache like the blocks (:mod:`bhive.direct_io`)."""
        values = np.empty(self.shape, self.dtype)
        self.read(0, self.shape[0], values)
        return values
