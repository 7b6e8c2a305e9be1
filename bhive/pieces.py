"""Pieces: the arrays one chunk of one input file contributes to a dataset.

A processor writes each chunk's arrays as a piece directory of ``.npy`` files plus
``info.json``, so that memory never holds more than a chunk and an interrupted run keeps
every finished chunk. Piece names are derived from a hash of (file, tree, entry range):
collision-free for any path, ``root://`` URLs included, and the same on every rerun.
A piece directory is renamed into place only when complete.
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


def piece_name(filename: str, treename: str, entry_start: int, entry_stop: int) -> str:
    digest = hashlib.sha256(f"{filename}\0{treename}\0{entry_start}\0{entry_stop}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(filename.split("?")[0]).stem)[-40:].strip("_") or "file"
    return f"{stem}-{entry_start}-{entry_stop}-{digest}"


def read_info(directory: Path) -> dict | None:
    """The info of a finished piece, or None if it does not exist."""
    path = directory / INFO_FILE
    if not path.exists():
        return None
    with open(path) as stream:
        return json.load(stream)


def write_piece(directory: Path, arrays: Mapping[str, np.ndarray], info: dict) -> None:
    """Write arrays and info to ``directory`` atomically (a temporary directory, then a rename).

    Two workers that process the same chunk write identical pieces; the later rename wins.
    """
    with atomic_directory(directory) as temporary:
        shapes = {}
        for name, values in arrays.items():
            np.save(temporary / f"{name}.npy", values, allow_pickle=False)
            shapes[name] = {"shape": list(values.shape), "dtype": values.dtype.str}
        with open(temporary / INFO_FILE, "w") as stream:
            json.dump({**info, "arrays": shapes}, stream, sort_keys=True)


def load_array(directory: Path, name: str, mmap: bool = True) -> np.ndarray:
    return np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
