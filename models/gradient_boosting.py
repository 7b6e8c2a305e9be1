"""A scikit-learn tagger through the same Model interface as the PyTorch ones.

Histogram gradient boosting on the global features plus fixed-size summaries of each
candidate group (number of real candidates, and the mean and maximum of every feature over
them, and the features of the leading candidate). It shows that nothing in b-hive's tasks
assumes PyTorch, and it is a strong, quick baseline.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import log_loss

from models.base import InputSpec, Model, read_description, write_description

ESTIMATOR_FILE = "estimator.pkl"


def summaries(batch: Mapping[str, np.ndarray], groups: Iterable[str]) -> np.ndarray:
    """Per-jet features: globals, and per candidate group count, mean, max and leading entry."""
    columns = []
    for group in groups:
        values = np.asarray(batch[group], dtype=np.float32)
        if group == "global":
            columns.append(values)
            continue
        mask = np.asarray(batch[f"mask_{group}"], dtype=bool)
        count = mask.sum(axis=1, keepdims=True)
        masked = np.where(mask[..., None], values, np.nan)
        # jets without candidates give NaN, which the trees treat as missing values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(masked, axis=1)
            maximum = np.nanmax(masked, axis=1)
        columns += [count.astype(np.float32), mean, maximum, values[:, 0, :]]
    return np.concatenate(columns, axis=1)


class GradientBoosting(Model):
    """scikit-learn HistGradientBoostingClassifier on jet summaries (see module docstring)."""

    input_groups = ("global",)
    optional_groups = ("cpf", "npf", "vtx")

    def __init__(self, spec: InputSpec, max_iter: int = 300, learning_rate: float = 0.1, max_leaf_nodes: int = 63,
                 max_jets: int = 500_000) -> None:
        self._spec = spec
        self.hyperparameters = {"max_iter": max_iter, "learning_rate": learning_rate,
                                "max_leaf_nodes": max_leaf_nodes, "max_jets": max_jets}
        self.groups = type(self).used_groups(spec)
        self.estimator: HistGradientBoostingClassifier | None = None

    @property
    def spec(self) -> InputSpec:
        return self._spec

    def _collect(self, batches, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features, labels, weights, n = [], [], [], 0
        for batch in batches:
            features.append(summaries(batch, self.groups))
            labels.append(batch["label"])
            weights.append(batch["weight"])
            n += len(batch["label"])
            if n >= limit:
                break
        return np.concatenate(features)[:limit], np.concatenate(labels)[:limit], np.concatenate(weights)[:limit]

    def fit(self, data, settings, workdir: Path, resume: bool = False) -> list[dict]:
        # The loader's stochastic sampling already reweights the training jets (epoch 0).
        x, y, _ = self._collect(data.train_batches(0), self.hyperparameters["max_jets"])
        hp = self.hyperparameters
        self.estimator = HistGradientBoostingClassifier(
            max_iter=hp["max_iter"], learning_rate=hp["learning_rate"], max_leaf_nodes=hp["max_leaf_nodes"],
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=10, random_state=settings.seed)
        self.estimator.fit(x, y)
        record = {"epoch": 1, **self._scores(x, y, np.ones(len(y)), "")}
        validation = list(data.validation_batches())
        if validation:
            vx, vy, vw = self._collect(validation, np.iinfo(np.int64).max)
            record.update(self._scores(vx, vy, vw, "val_"))
        return [record]

    def _scores(self, x, y, w, prefix: str) -> dict[str, float]:
        probabilities = self._full_probabilities(x)
        return {f"{prefix}loss": float(log_loss(y, probabilities, sample_weight=w, labels=range(self.spec.n_classes))),
                f"{prefix}accuracy": float(np.average(probabilities.argmax(axis=1) == y, weights=w))}

    def _full_probabilities(self, x: np.ndarray) -> np.ndarray:
        """predict_proba with a column for every output class, also those absent in training."""
        out = np.zeros((len(x), self.spec.n_classes))
        out[:, self.estimator.classes_] = self.estimator.predict_proba(x)
        return out

    def predict(self, batches: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
        parts = [self._full_probabilities(summaries(batch, self.groups)) for batch in batches]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.spec.n_classes), np.float32)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ESTIMATOR_FILE, "wb") as stream:
            pickle.dump(self.estimator, stream)
        write_description(directory, self, {"hyperparameters": self.hyperparameters, "groups": list(self.groups)})

    @classmethod
    def load(cls, directory: Path) -> GradientBoosting:
        description = read_description(directory)
        model = cls(InputSpec.from_json(description["spec"]), **description["hyperparameters"])
        with open(Path(directory) / ESTIMATOR_FILE, "rb") as stream:
            model.estimator = pickle.load(stream)
        return model
