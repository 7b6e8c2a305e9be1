"""The dataloader plugin base class.

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
from bhive.registry import Registry

LOADERS = Registry("dataloader", "dataloaders", "Set `dataloader:` in the config")

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int = 1024
    seed: int = 42
    validation_fraction: float = 0.1
    sampling: str = "stochastic"     # stochastic: keep a jet with probability = weight; loss_weight: keep all
    workers: int = 0
    pin_memory: bool = False


def label_map(truth_labels: Sequence[str], classes: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Output-class index for every truth-label index (-1: the label belongs to no class)."""
    mapping = np.full(len(truth_labels), -1, dtype=np.int64)
    for class_index, members in enumerate(classes.values()):
        for label in members:
            if label not in truth_labels:
                raise ValueError(f"class member '{label}' is not a truth label of the dataset "
                                 f"({', '.join(truth_labels)}); the config and the dataset disagree, "
                                 f"rebuild the dataset or fix `classes`")
            mapping[list(truth_labels).index(label)] = class_index
    return mapping


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
        batch size, seed, validation split, sampling mode, workers.
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
    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """One epoch of training batches; the order depends only on the seed and the epoch."""

    @abstractmethod
    def validation_batches(self) -> Iterator[Batch]:
        """All validation jets, in a fixed order, with their weights."""

    @abstractmethod
    def inference_batches(self) -> Iterator[Batch]:
        """Every jet of the dataset in stored order (no sampling, no split)."""

    @abstractmethod
    def n_train_jets(self) -> int:
        """Jets one training epoch passes over before sampling."""

    def mean_acceptance(self) -> float:
        """Average reweighting weight of the jets in output classes (the stochastic acceptance)."""
        counts = np.asarray(self.meta["histograms"])
        weights = np.asarray(self.meta["weights"])
        used = self.class_of_label >= 0
        total = counts[used].sum()
        return float((counts[used] * weights[used]).sum() / total) if total > 0 else 1.0


def dataloader_class(name: str) -> type[DataLoaderPlugin]:
    """The registered dataloader called ``name``; an unknown name lists the known ones."""
    return LOADERS.get(name)
