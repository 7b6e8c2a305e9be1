"""DeviceResidentLoader: the whole dataset on the training device, batches gathered there.

For datasets that fit in GPU memory (``dataloader: DeviceResidentLoader``): the arrays the
model uses, the labels and the training weights of every training and validation jet are
copied to the device once, when the training starts, and each batch is one index gather per
array on the device, with no host work, copy or loader worker in the step. The batches are
those of :class:`~dataloaders.shards.ShardDataLoader` (same seed: the same jets in the same
order, the same loss weights), only already on the device. Inference batches come from the
memory-mapped shards, as there.
"""

from __future__ import annotations

import numpy as np
import torch

from dataloaders.base import Batch
from dataloaders.shards import Block, Piece, ShardDataLoader

#: the share of the free device memory the dataset may take; the rest is the model's
MEMORY_SHARE = 0.7


class DeviceResidentLoader(ShardDataLoader):
    """:class:`ShardDataLoader`'s batches from arrays held on the device (see module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._device = torch.device("cpu")
        self._resident: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._weights_of: dict[tuple[str, str, str], np.ndarray] = {}

    def to(self, device: torch.device) -> None:
        """Copy the training and validation shards' arrays to ``device`` (once per device)."""
        device = torch.device(device)
        if self._resident and device == self._device:
            return
        shards = {(str(directory), name): (directory, name)
                  for directory, name, _, _ in [*self._train_ranges, *self._validation_ranges]}
        needed = sum(self._shard(*where)[key].nbytes for where in shards.values() for key in self.batch_arrays)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if needed > MEMORY_SHARE * free:
                raise MemoryError(
                    f"DeviceResidentLoader: the dataset {self.directory} needs {needed / 2**30:.1f} GiB on {device}, "
                    f"more than {MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free; use dataloader: "
                    f"ShardDataLoader (with --loader-workers) for it")
        self._device, self._resident = device, {}
        for key, (directory, name) in shards.items():
            shard = self._shard(directory, name)
            arrays = {array: torch.from_numpy(np.array(shard[array])) for array in self.batch_arrays}
            arrays["label"] = torch.from_numpy(self.class_of_label[np.asarray(shard["truth"])].astype(np.int64))
            for kind in ("sampled", "training"):
                arrays[kind] = torch.from_numpy(self._shard_weights(directory, name, kind).astype(np.float32))
            self._resident[key] = {array: values.to(device) for array, values in arrays.items()}

    def _shard_weights(self, directory, name, kind: str) -> np.ndarray:
        """One kind of :meth:`_jet_weights` for a whole shard, computed once."""
        key = (str(directory), name, kind)
        if key not in self._weights_of:
            n = len(self._shard(directory, name)["truth"])
            self._weights_of[key] = super()._jet_weights((directory, name, 0, n), np.arange(n), kind)
        return self._weights_of[key]

    def _jet_weights(self, block: Block, rows: np.ndarray, kind: str) -> np.ndarray:
        return self._shard_weights(block[0], block[1], kind)[block[2]:block[3]][rows]

    def _read(self, piece: Piece, sampled: bool = False) -> Batch:
        if not self._resident:
            self.to(self._device)
        (directory, name, start, _), rows = piece
        arrays = self._resident[(str(directory), name)]
        index = torch.from_numpy(start + np.asarray(rows, dtype=np.int64)).to(self._device)
        batch = {key: arrays[key][index] for key in self.batch_arrays}
        batch["label"] = arrays["label"][index]
        batch["weight"] = arrays["sampled" if sampled else "training"][index]
        return batch

    def _gather(self, pieces: list[Piece], sampled: bool = False) -> Batch:
        parts = [self._read(piece, sampled) for piece in pieces]
        if len(parts) == 1:
            return parts[0]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def __getstate__(self):
        raise TypeError("DeviceResidentLoader keeps the dataset on the training device and cannot be sent to loader "
                        "worker processes; train with --loader-workers 0 (the default)")
