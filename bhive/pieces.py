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
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

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


def write_piece(directory: Path, arrays: Mapping[str, np.ndarray], info: dict, seed: int) -> None:
    """Write arrays, in the order of their shard keys for ``seed``, and info to ``directory``
    atomically (a temporary directory, then a rename).

    Two workers that process the same chunk write identical pieces; the later rename wins.
    """
    n_jets = len(next(iter(arrays.values()))) if arrays else 0
    order = np.argsort(shard_keys(seed, Path(directory).name, n_jets), kind="stable")
    with atomic_directory(directory) as temporary:
        shapes = {}
        for name, values in arrays.items():
            np.save(temporary / f"{name}.npy", values[order], allow_pickle=False)
            shapes[name] = {"shape": list(values.shape), "dtype": values.dtype.str}
        with open(temporary / INFO_FILE, "w") as stream:
            json.dump({**info, "arrays": shapes, SHARD_SEED: seed}, stream, sort_keys=True)


def load_array(directory: Path, name: str) -> np.ndarray:
    """One array of a finished piece, its jets in the order the processor made them (the file
    holds them in shard-key order)."""
    info = read_info(directory)
    stored = np.load(directory / f"{name}.npy", allow_pickle=False)
    order = np.argsort(shard_keys(info[SHARD_SEED], Path(directory).name, len(stored)), kind="stable")
    made = np.empty_like(stored)
    made[order] = stored
    return made


class RowReader:
    """Reads blocks of rows of one array of a piece straight into a caller's buffer, checking
    the file against the piece's info first (shape and dtype)."""

    def __init__(self, directory: Path, name: str, spec: Mapping) -> None:
        self.path = Path(directory) / f"{name}.npy"
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        try:
            with open(self.path, "rb") as stream:
                version = np.lib.format.read_magic(stream)
                found = _HEADER_READERS[version](stream)  # (shape, fortran order, dtype)
                self.offset = stream.tell()
        except (OSError, ValueError, KeyError) as error:
            raise PieceError(f"piece file {self.path} cannot be read ({error})") from None
        if found != (shape, False, dtype):
            raise PieceError(f"piece file {self.path} holds {found[2]} {found[0]}, its info says {dtype} {shape}")
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``start:stop`` into ``out`` (C-contiguous, of their shape and dtype)."""
        wanted = (stop - start) * self.row_bytes
        if wanted == 0:
            return
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as stream:
            stream.seek(self.offset + start * self.row_bytes)
            done = 0
            while done < wanted:
                got = stream.readinto(buffer[done:])
                if not got:
                    raise PieceError(f"piece file {self.path} ends {wanted - done} bytes early")
                done += got
