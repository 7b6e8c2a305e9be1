"""The dataloader contract.

A dataloader turns a dataset directory (shards + ``meta.json``) into the batches a model
consumes: dicts of numpy arrays with one entry per used group (``global``, ``cpf``, ...),
``mask_<group>`` for candidate groups, ``label`` (output-class index) and ``weight``.
Subclasses register by class name; ``dataloader:`` in the config picks one.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bhive import dataset
from bhive.plugins.registry import Registry
from bhive.truth import label_map

LOADERS = Registry("dataloader", "Set `dataloader:` in the config")

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class LoaderSettings:
    """How a dataloader batches a dataset."""

    batch_size: int = 1024
    seed: int = 42
    validation_fraction: float = 0.1
    sampling: str = "stochastic"     # stochastic: keep a jet with probability = weight; loss_weight: keep all


class DataLoaderPlugin(ABC):
    """Builds train, validation and inference batches from a dataset for the given groups.

    Parameters
    ----------
    directory:
        the dataset (``meta.json`` + shards).
    groups:
        the groups the model consumes; masks of candidate groups come along.
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
        self.settings = settings
        self.class_of_label = label_map(self.meta["truth_labels"], classes)
        self.validation_directory = Path(validation_directory) if validation_directory else None
        if self.meta["n_jets"] == 0:
            raise ValueError(f"the dataset {self.directory} is empty: there is nothing to train on")

    @abstractmethod
    def train_batches(self, epoch: int, worker: int = 0, n_workers: int = 1) -> Iterator[Batch]:
        """One epoch of training batches, called by the training loop once per epoch (in each
        of ``n_workers`` loader processes with ``--loader-workers``; this one is number
        ``worker`` and yields its share, the shares together making the epoch). The batches
        and their order depend only on the seed and ``epoch``; each batch holds the model's
        groups, their masks, ``label`` and ``weight``."""

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

    def mean_acceptance(self) -> float:
        """Average reweighting weight of the jets in output classes (the stochastic acceptance);
        the loop scales the steps per epoch by it."""
        counts = np.asarray(self.meta["histograms"])
        weights = np.asarray(self.meta["weights"])
        used = self.class_of_label >= 0
        total = counts[used].sum()
        return float((counts[used] * weights[used]).sum() / total) if total > 0 else 1.0


def dataloader_class(name: str) -> type[DataLoaderPlugin]:
    """The registered dataloader called ``name``; an unknown name lists the known ones."""
    return LOADERS.get(name)
