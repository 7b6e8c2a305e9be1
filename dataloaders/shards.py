"""ShardDataLoader: memory-mapped shards, shuffled per epoch, streamed in blocks.

Shards are already shuffled at construction, so an epoch reads contiguous blocks of rows
(cheap on memory-mapped files), visits the blocks in a new random order each epoch and
shuffles rows within each block. Stochastic sampling keeps each jet with probability equal
to its reweighting weight times its event weight and gives it its class weight, signed, as
loss weight (:mod:`bhive.jet_weighting`); in ``loss_weight`` mode every jet is kept and its
training weight (all three) goes to the loss. Validation batches carry the training weight.
Memory is bounded by one block per worker.

The shuffle and the acceptance are drawn per block from the seed, the epoch and the block, and
the epoch is cut into batches before anything but labels and weights is read: in a training on
several processes each reads only its own rows of every batch, and the batches are the same
whatever their number.

The validation split takes whole shards when there are enough of them (the last
``validation_fraction`` of the shards) and otherwise the last ``validation_fraction`` of the
rows of every shard; either way no jet is in both splits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bhive import dataset
from bhive.dataset import EVENT_WEIGHT
from dataloaders.base import Batch, DataLoaderPlugin, RankShare, rank_rows

BLOCK_BATCHES = 8  # rows read and shuffled together: BLOCK_BATCHES x batch_size

Block = tuple[Path, str, int, int]      # dataset directory, shard, first row, end row
Piece = tuple[Block, np.ndarray]        # rows of a block (from its first row), in the order used


class ShardDataLoader(DataLoaderPlugin):
    """The default loader: streams the dataset's shards (see module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._train_ranges, self._validation_ranges = self._split()
        self._open_shards: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    # -- splitting ---------------------------------------------------------------------

    def _shard_ranges(self, meta) -> list[tuple[str, int, int]]:
        return [(s["name"], 0, s["n_jets"]) for s in meta["shards"] if s["n_jets"] > 0]

    def _split(self):
        ranges = self._shard_ranges(self.meta)
        if self.validation_directory is not None:
            validation = [(self.validation_directory, *r) for r in self._shard_ranges(dataset.load_meta(
                self.validation_directory))]
            return [(self.directory, *r) for r in ranges], validation
        fraction = self.settings.validation_fraction
        n_validation_shards = round(fraction * len(ranges))
        if fraction == 0:
            return [(self.directory, *r) for r in ranges], []
        if n_validation_shards >= 1 and len(ranges) - n_validation_shards >= 1:
            train, validation = ranges[:-n_validation_shards], ranges[-n_validation_shards:]
        else:
            train, validation = [], []
            for name, start, stop in ranges:
                cut = stop - max(1, round(fraction * (stop - start)))
                train.append((name, start, cut))
                validation.append((name, cut, stop))
        return [(self.directory, *r) for r in train], [(self.directory, *r) for r in validation]

    def n_train_jets(self) -> int:
        return sum(stop - start for _, _, start, stop in self._train_ranges)

    # -- reading -----------------------------------------------------------------------
    # An epoch is planned as pieces, (block, rows of it in the order they are used), and cut
    # into batches before any feature is read: a process of a multi-process training then
    # reads only its own rows of each batch.

    def _blocks(self, ranges) -> list[Block]:
        size = BLOCK_BATCHES * self.settings.batch_size
        return [(directory, name, begin, min(begin + size, stop))
                for directory, name, start, stop in ranges for begin in range(start, stop, size)]

    def _views(self, directory, name, start, stop) -> Batch:
        """Memory-mapped rows of one block (no copy yet), with labels and reweighting weights."""
        shard = self._shard(directory, name)
        batch = {key: shard[key][start:stop] for key in self.batch_arrays}
        batch["label"] = self.class_of_label[shard["truth"][start:stop]]
        batch["weight"] = shard["weight"][start:stop]
        return batch

    def __getstate__(self):
        # worker processes open their own memory maps instead of receiving copies of them
        return {**self.__dict__, "_open_shards": {}}

    def _shard(self, directory, name) -> dict[str, np.ndarray]:
        key = (str(directory), name)
        if key not in self._open_shards:
            self._open_shards[key] = dataset.open_shard(directory, name)
        return self._open_shards[key]

    def _column(self, block: Block, key: str) -> np.ndarray:
        directory, name, start, stop = block
        return self._shard(directory, name)[key][start:stop]

    def _in_classes(self, block: Block, rows: np.ndarray) -> Piece:
        """``rows`` of ``block`` without the jets outside every class."""
        return block, rows[self.class_of_label[self._column(block, "truth")[rows]] >= 0]

    def _jet_weights(self, block: Block, rows: np.ndarray, kind: str) -> np.ndarray:
        """``rows`` of ``block``: their stochastic ``acceptance``, their loss weights once
        ``sampled``, or their ``training`` weights (:mod:`bhive.jet_weighting`)."""
        shard = self._shard(*block[:2])
        weight = self._column(block, "weight")[rows]
        event_weight = self._column(block, EVENT_WEIGHT)[rows] if EVENT_WEIGHT in shard else None
        if kind == "acceptance":
            return self.weighting.acceptance(weight, event_weight)
        truth = self._column(block, "truth")[rows]
        if kind == "sampled":
            return self.weighting.sampled_loss_weights(weight, truth, event_weight)
        return self.weighting.totals(weight, truth, event_weight)

    def _loss_weights(self, block: Block, rows: np.ndarray, sampled: bool) -> np.ndarray:
        """The loss weight of each jet: its training weight, or for a jet kept by stochastic
        sampling (``sampled``) its signed class weight."""
        return self._jet_weights(block, rows, "sampled" if sampled else "training").astype(np.float32)

    def _read(self, piece: Piece, sampled: bool = False) -> Batch:
        """The rows of one piece, one gather per array straight from the memory map."""
        block, rows = piece
        batch = {key: np.asarray(self._column(block, key)[rows]) for key in self.batch_arrays}
        batch["label"] = self.class_of_label[self._column(block, "truth")[rows]]
        batch["weight"] = self._loss_weights(block, rows, sampled)
        return batch

    def _sampled(self) -> bool:
        return self.settings.sampling == "stochastic"

    def _gather(self, pieces: list[Piece], sampled: bool = False) -> Batch:
        parts = [self._read(piece, sampled) for piece in pieces]
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _cut(self, pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
        """Re-cut a stream of pieces into batches of exactly batch_size jets (the last may be short)."""
        size = self.settings.batch_size
        pending: list[Piece] = []
        n_pending = 0
        for block, rows in pieces:
            begin = 0
            while begin < len(rows):
                taken = rows[begin:begin + size - n_pending]
                pending.append((block, taken))
                n_pending += len(taken)
                begin += len(taken)
                if n_pending == size:
                    yield pending
                    pending, n_pending = [], 0
        if n_pending:
            yield pending

    # -- the three streams -------------------------------------------------------------

    def _train_pieces(self, epoch: int, worker: int, n_workers: int) -> Iterator[Piece]:
        seed = self.settings.seed
        blocks = self._blocks(self._train_ranges)
        order = np.random.default_rng([seed, epoch]).permutation(len(blocks))
        for position in order[worker::n_workers]:
            # drawn per block from the seed, the epoch and the block alone: the jets kept and
            # their order are those of the epoch, however it is split over processes
            rng = np.random.default_rng([seed, epoch, int(position)])
            block = blocks[position]
            rows = rng.permutation(block[3] - block[2])
            if self.settings.sampling == "stochastic":
                rows = rows[rng.random(len(rows)) < self._jet_weights(block, rows, "acceptance")]
            yield self._in_classes(block, rows)

    def _validation_pieces(self) -> Iterator[Piece]:
        for block in self._blocks(self._validation_ranges):
            yield self._in_classes(block, np.arange(block[3] - block[2]))

    def train_batches(self, epoch: int, worker: int = 0, n_workers: int = 1) -> Iterator[Batch]:
        for pieces in self._cut(self._train_pieces(epoch, worker, n_workers)):
            yield self._gather(pieces, self._sampled())

    def rank_train_batches(self, epoch: int, rank: int, n_ranks: int, worker: int = 0,
                           n_workers: int = 1) -> Iterator[RankShare]:
        for pieces in self._cut(self._train_pieces(epoch, worker, n_workers)):
            size = sum(len(rows) for _, rows in pieces)
            # the whole batch's summed |loss weight| (a few bytes a jet): the loss normaliser
            weight = sum(float(np.abs(self._loss_weights(block, rows, self._sampled())).sum(dtype=np.float64))
                         for block, rows in pieces)
            rows, _ = rank_rows(size, rank, n_ranks)
            yield RankShare(self._gather(_take(pieces, rows), self._sampled()), size, weight)

    def validation_batches(self) -> Iterator[Batch]:
        for pieces in self._cut(self._validation_pieces()):
            yield self._gather(pieces)

    def rank_validation_batches(self, rank: int, n_ranks: int) -> Iterator[Batch]:
        for index, pieces in enumerate(self._cut(self._validation_pieces())):
            if index % n_ranks == rank:
                yield self._gather(pieces)

    def inference_batches(self) -> Iterator[Batch]:
        ranges = [(self.directory, *r) for r in self._shard_ranges(self.meta)]
        size = self.settings.batch_size
        for directory, name, start, stop in ranges:
            for begin in range(start, stop, size):
                end = min(begin + size, stop)
                # every jet, also those of no class (label -1): scores must align with the dataset
                yield {key: np.array(values) for key, values in self._views(directory, name, begin, end).items()}


def _take(pieces: list[Piece], rows: slice) -> list[Piece]:
    """The pieces of a batch cut down to its rows ``rows``."""
    taken, offset = [], 0
    for block, piece_rows in pieces:
        begin, end = max(rows.start - offset, 0), min(rows.stop - offset, len(piece_rows))
        if begin < end:
            taken.append((block, piece_rows[begin:end]))
        offset += len(piece_rows)
    return taken
