"""The dataloader contract.

A dataloader turns a dataset directory (shards + ``meta.json``) into the batches a model
consumes: dicts of numpy arrays with one entry per used group (``global``, ``cpf``, ...),
``mask_<group>`` for candidate groups, ``label`` (output-class index) and ``weight``, the
jet's loss weight (:mod:`bhive.jet_weighting` says how it follows from the reweighting, the
event weight and the class weights; ``self.weighting`` computes it).
Subclasses register by class name; ``dataloader:`` in the config picks one.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bhive import dataset, jet_weighting
from bhive.plugins.registry import Registry
from bhive.truth import label_map

LOADERS = Registry("dataloader", "Set `dataloader:` in the config")

Batch = dict[str, np.ndarray]


class RankShare(NamedTuple):
    """One process's part of a global training batch when training runs on several processes
    (``--devices``): its rows, and what the loss needs to know about the whole batch."""

    batch: Batch
    size: int        # jets in the whole global batch
    weight: float    # their summed weight: the loss_weight mode's normaliser


def rank_rows(size: int, rank: int, n_ranks: int) -> tuple[slice, int]:
    """The rows of a global batch of ``size`` jets that process ``rank`` of ``n_ranks`` trains
    on, and how many of them count. Ranks take contiguous, nearly equal slices in rank order,
    so together they take the batch once. A rank left without a jet (a last batch with fewer
    jets than ranks) takes the batch's last jet as a stand-in that counts for nothing: every
    rank has to run every step, or the others wait forever for its gradients."""
    start, stop = size * rank // n_ranks, size * (rank + 1) // n_ranks
    if start == stop:
        return slice(size - 1, size), 0
    return slice(start, stop), stop - start


@dataclass(frozen=True)
class LoaderSettings:
    """How a dataloader batches a dataset."""

    batch_size: int = 1024
    seed: int = 42
    validation_fraction: float = 0.1
    sampling: str = "stochastic"     # stochastic: keep a jet with probability = weight; loss_weight: keep all
    class_weights: str | Mapping[str, float] = "none"   # none | balanced | {class: factor}
    negative_weights: str = "abs"    # drop | abs | signed: jets with a negative event weight


class DataLoaderPlugin(ABC):
    """Builds train, validation and inference batches from a dataset for the given groups.

    Parameters
    ----------
    directory:
        the dataset (``meta.json`` + shards).
    groups:
        the groups the model consumes; masks of candidate groups come along. ``target`` among
        them asks for the regression targets, (n, n_targets) with NaN where a jet has none.
    classes:
        output class -> truth labels, as in the config; jets of other labels are skipped.
    settings:
        batch size, seed, validation split, sampling mode.
    validation_directory:
        a separate validation dataset; otherwise ``validation_fraction`` of this one.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls):
            LOADERS.add(cls)

    def __init__(self, directory: Path, groups: Sequence[str], classes: Mapping[str, Sequence[str]],
                 settings: LoaderSettings, validation_directory: Path | None = None) -> None:
        self.directory = Path(directory)
        self.meta = dataset.load_meta(self.directory)
        self.groups = tuple(groups)
        if dataset.TARGET in self.groups and not self.meta.get("targets"):
            raise ValueError(f"the dataset {self.directory} has no regression targets; build it from a config with "
                             f"regression_targets (a new --dataset-version)")
        #: the dataset's arrays a batch carries: the groups, their masks and the targets asked for
        self.batch_arrays = tuple(name for g in self.groups
                            for name in ((g,) if g in ("global", dataset.TARGET) else (g, f"mask_{g}")))
        self.settings = settings
        self.class_of_label = label_map(self.meta["truth_labels"], classes)
        self.validation_directory = Path(validation_directory) if validation_directory else None
        if self.meta["n_jets"] == 0:
            raise ValueError(f"the dataset {self.directory} is empty: there is nothing to train on")
        self.weighting = jet_weighting.weighting(self.meta, self.class_of_label, list(classes),
                                                 settings.class_weights, settings.negative_weights)

    @abstractmethod
    def train_batches(self, epoch: int, worker: int = 0, n_workers: int = 1) -> Iterator[Batch]:
        """One epoch of training batches, called by the training loop once per epoch (in each
        of ``n_workers`` loader processes with ``--loader-workers``; this one is number
        ``worker`` and yields its share, the shares together making the epoch). The batches
        and their order depend only on the seed and ``epoch``; each batch holds the model's
        groups, their masks, ``label`` and ``weight``."""

    def rank_train_batches(self, epoch: int, rank: int, n_ranks: int, worker: int = 0,
                           n_workers: int = 1) -> Iterator[RankShare]:
        """Process ``rank``'s share of every batch of ``train_batches(epoch, worker, n_workers)``;
        called instead of it, in each of ``n_ranks`` processes, when training runs on several
        (``--devices``). The global batches are those of ``train_batches`` whatever
        ``n_ranks`` is, so the jets seen and their order do not depend on it; each process
        takes :func:`rank_rows` of each. This default reads every batch whole; a loader may
        read only the process's rows."""
        for batch in self.train_batches(epoch, worker, n_workers):
            size = len(batch["label"])
            rows, _ = rank_rows(size, rank, n_ranks)
            yield RankShare({key: values[rows] for key, values in batch.items()}, size,
                            float(np.abs(batch["weight"]).sum(dtype=np.float64)))

    def rank_validation_batches(self, rank: int, n_ranks: int) -> Iterator[Batch]:
        """Batches ``rank``, ``rank + n_ranks``, ... of ``validation_batches()``: process
        ``rank``'s share of the validation when training runs on ``n_ranks`` processes. The
        loop sums the shares, so the validation loss is that of one process."""
        for index, batch in enumerate(self.validation_batches()):
            if index % n_ranks == rank:
                yield batch

    @abstractmethod
    def validation_batches(self) -> Iterator[Batch]:
        """All validation jets, in a fixed order, with their weights; called after every
        training epoch."""

    @abstractmethod
    def inference_batches(self) -> Iterator[Batch]:
        """Every jet of the dataset in stored order (no sampling, no split); called to compute
        the standardisation, to score a test dataset and to check an ONNX export."""

    @abstractmethod
    def n_train_jets(self) -> int:
        """Jets one training epoch passes over before sampling; the loop uses it for the
        learning-rate schedule and the ETA."""

    def to(self, device) -> None:
        """Called by the training loop with the training device (a ``torch.device``) before the
        first batch. Batches may then hold tensors already on that device; a loader that keeps
        its data there (``DeviceResidentLoader``) moves it now. The default does nothing: the
        loop copies each batch, the next while the current one trains."""

    def mean_acceptance(self) -> float:
        """Average stochastic acceptance of the jets in output classes (the magnitude of their
        training weight); the loop scales the steps per epoch by it."""
        return jet_weighting.mean_acceptance(self.meta, self.class_of_label, self.weighting)


def dataloader_class(name: str) -> type[DataLoaderPlugin]:
    """The registered dataloader called ``name``; an unknown name lists the known ones."""
    return LOADERS.get(name)
