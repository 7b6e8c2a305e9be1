"""What a model package is made from: the outputs of the tasks before it, read once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sources:
    """The export, its cost, the evaluation and the datasets behind one package.

    ``description`` is the training artifact's ``model.json`` (input description, classes and
    their truth labels, config hash, code version); ``rates`` are the working points'
    efficiencies on every selection (:func:`bhive.evaluation.working_points.rates_by_selection`);
    ``discriminators`` map a name to its (signal, background) classes; ``versions`` name the
    dataset, training and test dataset versions; ``simulated`` says whether the jets are
    b-hive's simulated sample.
    """

    config: str
    model: str
    onnx: Path
    check: Mapping[str, Any]
    description: Mapping[str, Any]
    profile: Mapping[str, Any]
    aucs: Mapping[str, Any]
    working_points: Sequence[Mapping[str, Any]]
    charm_working_points: Sequence[Mapping[str, Any]]
    rates: Sequence[Mapping[str, Any]]
    discriminators: Mapping[str, tuple[Sequence[str], Sequence[str]]]
    training_data: Mapping[str, Any]
    test_data: Mapping[str, Any]
    versions: Mapping[str, str]
    simulated: bool

    @property
    def spec(self) -> Mapping[str, Any]:
        """The model's input description: features and candidates per group, classes, targets."""
        return self.description["spec"]

    @property
    def groups(self) -> list[str]:
        """The groups the graph reads, in its input order."""
        return [name for name in self.check["inputs"] if not name.startswith("mask_")]
