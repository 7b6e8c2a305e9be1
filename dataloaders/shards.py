"""ShardDataLoader: memory-mapped shards, shuffled per epoch, streamed in blocks.

Shards are already shuffled at construction, so an epoch reads contiguous blocks of rows
(cheap on memory-mapped files), visits the blocks in a new random order each epoch and
shuffles rows within each block. Stochastic sampling keeps each jet with probability equal
to its reweighting weight; in ``loss_weight`` mode every jet is kept and the weight goes to
the loss. Memory is bounded by one block per worker.

The validation split takes whole shards when there are enough of them (the last
``validation_fraction`` of the shards) and otherwise the last ``validation_fraction`` of the
rows of every shard; either way no jet is in both splits.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bhive import dataset
from dataloaders.base import Batch, DataLoaderPlugin

BLOCK_BATCHES = 8  # rows read and shuffled together: BLOCK_BATCHES x batch_size


class ShardDataLoader(DataLoaderPlugin):
    """The default loader: streams the dataset's shards (see module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._arrays = [name for g in self.groups for name in ((g,) if g == "global" else (g, f"mask_{g}"))]
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

    def _blocks(self, ranges) -> list[tuple]:
        size = BLOCK_BATCHES * self.settings.batch_size
        return [(directory, name, begin, min(begin + size, stop))
                for directory, name, start, stop in ranges for begin in range(start, stop, size)]

    def _views(self, directory, name, start, stop) -> Batch:
        """Memory-mapped rows of one block (no copy yet), with labels and weights."""
        shard = self._shard(directory, name)
        batch = {key: shard[key][start:stop] for key in self._arrays}
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

    def _read(self, directory, name, start, stop, order: np.ndarray | None = None) -> Batch:
        """The rows of one block in ``order`` (default: stored order), jets outside every class
        dropped; one gather per array straight from the memory map."""
        views = self._views(directory, name, start, stop)
        order = np.arange(stop - start) if order is None else order
        order = order[views["label"][order] >= 0]
        return {key: np.asarray(values[order]) for key, values in views.items()}

    def _batches(self, rows: Iterator[Batch], drop_last: bool) -> Iterator[Batch]:
        """Re-cut a stream of row blocks into batches of exactly batch_size (the last may be short)."""
        size = self.settings.batch_size
        pending: list[Batch] = []
        n_pending = 0
        for block in rows:
            pending.append(block)
            n_pending += len(block["label"])
            if n_pending < size:
                continue
            merged = {k: np.concatenate([b[k] for b in pending]) for k in block}
            n_full = n_pending // size * size
            for begin in range(0, n_full, size):
                yield {k: v[begin:begin + size] for k, v in merged.items()}
            pending = [{k: v[n_full:] for k, v in merged.items()}]
            n_pending -= n_full
        if n_pending and not drop_last:
            yield {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}

    # -- the three streams -------------------------------------------------------------

    def train_batches(self, epoch: int, worker: int = 0, n_workers: int = 1) -> Iterator[Batch]:
        seed = self.settings.seed
        blocks = self._blocks(self._train_ranges)
        order = np.random.default_rng([seed, epoch]).permutation(len(blocks))

        def rows():
            for position in order[worker::n_workers]:
                rng = np.random.default_rng([seed, epoch, int(position)])
                directory, name, start, stop = blocks[position]
                shuffled = rng.permutation(stop - start)
                if self.settings.sampling == "stochastic":
                    weight = self._views(directory, name, start, stop)["weight"]
                    shuffled = shuffled[rng.random(len(shuffled)) < weight[shuffled]]
                yield self._read(directory, name, start, stop, shuffled)

        yield from self._batches(rows(), drop_last=False)

    def validation_batches(self) -> Iterator[Batch]:
        yield from self._batches((self._read(*b) for b in self._blocks(self._validation_ranges)), drop_last=False)

    def inference_batches(self) -> Iterator[Batch]:
        ranges = [(self.directory, *r) for r in self._shard_ranges(self.meta)]
        size = self.settings.batch_size
        for directory, name, start, stop in ranges:
            for begin in range(start, stop, size):
                end = min(begin + size, stop)
                # every jet, also those of no class (label -1): scores must align with the dataset
                yield {key: np.array(values) for key, values in self._views(directory, name, begin, end).items()}
