"""Packed candidate arrays: a zero-padded (jets, slots, features) array stored as only the
entries its (jets, slots) mask keeps.

The entries are the rows of the padded array's (jets * slots, features) view that the mask
keeps, in that order: jet by jet, slot by slot. With the mask beside them they give the padded
array back exactly, at the size of the candidates a jet has rather than the slots it could
have (about half for the candidate groups of the shipped configs). Pieces and shards store
candidate arrays this way; :class:`PackedArray` reads them as the padded arrays they stand for.
"""

from __future__ import annotations

import operator

import numpy as np


class PackedArrayError(ValueError):
    """Entries and mask that do not describe one padded array."""


def entry_offsets(mask: np.ndarray) -> np.ndarray:
    """The (jets + 1,) offsets of each jet's entries: jet ``i`` owns ``offsets[i]:offsets[i + 1]``."""
    offsets = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(np.count_nonzero(mask, axis=1), out=offsets[1:])
    return offsets


def entry_rows(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The entries of jets ``rows``, jet after jet in the order of ``rows``."""
    starts, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
    firsts = np.cumsum(counts) - counts  # where each jet's entries begin in the result
    return np.repeat(starts - firsts, counts) + np.arange(int(counts.sum()))


def rows_all(entry_flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per jet: whether ``entry_flags`` holds for every one of its entries (a jet without
    entries: True)."""
    jets = np.ones(len(offsets) - 1, dtype=bool)
    jets[np.repeat(np.arange(len(jets)), np.diff(offsets))[~entry_flags]] = False
    return jets


def unpack(entries: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The zero-padded array of ``entries`` under ``mask``."""
    entries = np.asarray(entries)
    return _scatter(row_items(entries), mask, entries.shape[1:], entries.dtype)


def row_items(values: np.ndarray) -> np.ndarray:
    """``values`` seen as one opaque item per row (no copy where it is C-contiguous): numpy
    gathers and scatters such items with one memory copy each, where it would copy rows of a
    few features value by value (three times slower for the candidate groups)."""
    values = np.ascontiguousarray(values)
    row_size = int(np.prod(values.shape[1:], dtype=np.int64))
    if row_size == 0:  # rows without values: nothing to copy
        return values.reshape(len(values), 0)
    row_bytes = values.dtype.itemsize * row_size
    return values.reshape(len(values), row_size).view(np.dtype((np.void, row_bytes))).reshape(len(values))


def take_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, one memory copy per row."""
    values = np.ascontiguousarray(values)
    return np.take(row_items(values), rows, axis=0).view(values.dtype).reshape(len(rows), *values.shape[1:])


def put_rows(values: np.ndarray, rows: np.ndarray, block: np.ndarray) -> None:
    """``values[rows] = block`` for a C-contiguous ``values``, one memory copy per row."""
    if len(rows) and 0 not in values.shape[1:]:  # rows without values have nothing to copy
        np.put(row_items(values), rows, row_items(block))


def _scatter(items: np.ndarray, mask: np.ndarray, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The zero-padded array with the rows ``items`` (of ``row_shape`` and ``dtype``) where
    ``mask`` is set, in order."""
    padded = np.zeros((*mask.shape, *row_shape), dtype=dtype)
    if len(items) and padded.size:
        # a view of the new, contiguous array: put writes into it
        np.put(row_items(padded.reshape(mask.size, *row_shape)), np.flatnonzero(mask), items)
    return padded


class PackedArray:
    """A packed array read as the padded one it stands for.

    ``len``, ``shape``, ``ndim``, ``dtype`` and ``nbytes`` are the padded array's; slicing rows
    (``a[start:stop]``) gives another packed array without reading entries; indexing by row
    numbers, a boolean row mask or a single row gives padded numpy arrays, reading only those
    jets' entries; ``np.asarray(a)`` gives the whole padded array. Any other index applies to
    that whole array. ``entries`` and ``mask`` may be memory maps.
    """

    def __init__(self, entries: np.ndarray, mask: np.ndarray, offsets: np.ndarray | None = None,
                 name: str = "packed array") -> None:
        if mask.ndim != 2 or mask.dtype != bool or entries.ndim < 1:
            raise PackedArrayError(f"{name}: a packed array needs (entries, ...) values and a (jets, slots) boolean "
                                   f"mask, not {entries.shape} and {mask.dtype} {mask.shape}")
        # memory maps as plain arrays over the same mapped memory: slicing a np.memmap costs
        # more than the copy of a batch's mask
        self.entries, self.mask = (values.view(np.ndarray) if isinstance(values, np.memmap) else values
                                   for values in (entries, mask))
        self.offsets = entry_offsets(mask) if offsets is None else offsets
        if int(self.offsets[-1]) != len(entries):
            raise PackedArrayError(f"{name}: its mask keeps {int(self.offsets[-1])} entries but it holds "
                                   f"{len(entries)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.mask.shape, *self.entries.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.entries.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.mask)

    def __repr__(self) -> str:
        return f"PackedArray(shape={self.shape}, dtype={self.dtype}, entries={len(self.entries)})"

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                first, last = int(self.offsets[start]), int(self.offsets[stop])
                return PackedArray(self.entries[first:last], self.mask[start:stop],
                                   self.offsets[start:stop + 1] - first)
            return self.take(np.arange(start, stop, step))
        if isinstance(key, (int, np.integer)):
            row = operator.index(key)
            if not -len(self) <= row < len(self):
                raise IndexError(f"row {row} is out of bounds for {len(self)} jets")
            return self.take(np.array([row % len(self)]))[0]
        if isinstance(key, (list, np.ndarray)):
            rows = np.asarray(key)
            if rows.ndim == 1 and rows.dtype == bool and len(rows) == len(self):
                return self.take(np.flatnonzero(rows))
            if rows.ndim == 1 and (rows.dtype.kind in "iu" or len(rows) == 0):
                return self.take(rows.astype(np.int64))
        return np.asarray(self)[key]

    def select(self, rows: np.ndarray) -> PackedArray:
        """Jets ``rows`` (numbers, or a boolean per jet) as a packed array."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return PackedArray(take_rows(self.entries, entry_rows(self.offsets, rows)), np.asarray(self.mask[rows]))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The padded rows ``rows`` (numbers of jets, negative ones from the end)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows out of bounds for {len(self)} jets")
        rows = np.where(rows < 0, rows + len(self), rows)
        items = np.take(row_items(self.entries), entry_rows(self.offsets, rows), axis=0)
        return _scatter(items, np.asarray(self.mask[rows]), self.entries.shape[1:], self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        padded = unpack(np.asarray(self.entries), np.asarray(self.mask))
        return padded if dtype is None else padded.astype(dtype, copy=False)
