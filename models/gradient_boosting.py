"""A scikit-learn tagger through the same Model interface as the PyTorch ones.

Histogram gradient boosting on the global features plus fixed-size summaries of each
candidate group (number of real candidates, and the mean and maximum of every feature over
them, and the features of the leading candidate). It shows that nothing in b-hive's tasks
assumes PyTorch, and it is a strong, quick baseline. Its ONNX export computes the summaries
inside the graph (``models/gradient_boosting_onnx.py``).

The fitted estimator is saved with skops, not pickle: artifacts live in a shared store, and a
pickle replaced there would run code when loaded. Loading reads the file's type list first and
refuses every type a HistGradientBoostingClassifier is not made of, before anything is built.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.base import RETRAIN, InputSpec, Model, ModelError, read_description, write_description

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

ESTIMATOR_FILE = "estimator.skops"
#: what b-hive wrote before it stopped using pickle; refused, never opened
PICKLED_ESTIMATOR_FILE = "estimator.pkl"

ESTIMATOR_TYPE = "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier"
#: every type a fitted HistGradientBoostingClassifier is stored as (two or more classes, with or
#: without early stopping); a file naming any other type is refused
TRUSTED_TYPES = (
    ESTIMATOR_TYPE,
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "numpy.ndarray",
    "numpy.uint64",
    "numpy.random._generator.Generator",
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
)
#: how skops stores those types; other kinds (functions, methods, partials, ...) name what they
#: would call in their content, beyond the type check, so they are refused as a whole
TRUSTED_NODES = frozenset({"ObjectNode", "DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode",
                           "NdArrayNode", "RandomGeneratorNode", "LossNode", "CachedNode"})


def summaries(batch: Mapping[str, np.ndarray], groups: Iterable[str]) -> np.ndarray:
    """Per-jet features: globals, and per candidate group count, mean, max and leading entry.

    The mean and maximum are over real candidates and skip NaN values; a jet without any gives
    NaN, which the trees treat as a missing value. The sum behind the mean adds the candidates
    one after the other, in float32: the ONNX graph (models/gradient_boosting_onnx.py) adds
    them in the same order, so that both give the same bits, which a tree threshold equal to a
    training value needs.
    """
    columns = []
    for group in groups:
        values = np.asarray(batch[group], dtype=np.float32)
        if group == "global":
            columns.append(values)
            continue
        mask = np.asarray(batch[f"mask_{group}"], dtype=bool)
        count = mask.sum(axis=1, keepdims=True)
        valid = mask[..., None] & ~np.isnan(values)
        kept = np.where(valid, values, np.float32(0.0))
        total = np.zeros(values.shape[::2], dtype=np.float32)
        for candidate in range(values.shape[1]):
            total += kept[:, candidate]
        with np.errstate(invalid="ignore"):
            mean = total / valid.sum(axis=1).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            maximum = np.nanmax(np.where(valid, values, np.nan), axis=1)
        columns += [count.astype(np.float32), mean, maximum, values[:, 0, :]]
    return np.concatenate(columns, axis=1)


class GradientBoosting(Model):
    """scikit-learn HistGradientBoostingClassifier on jet summaries (see module docstring)."""

    input_groups = ("global",)
    optional_groups = ("cpf", "npf", "vtx")

    def __init__(self, spec: InputSpec, max_iter: int = 300, learning_rate: float = 0.1, max_leaf_nodes: int = 63,
                 max_jets: int = 500_000) -> None:
        if spec.targets:
            raise ModelError(f"GradientBoosting predicts the flavour only and cannot learn the regression targets "
                             f"{', '.join(t.name for t in spec.targets)}; train a PyTorch model (DeepJet, ParticleNet, "
                             f"...) or remove regression_targets from the config")
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
        # stochastic sampling applies the training weights as acceptance in the loader (epoch 0)
        # and leaves their sign; in loss_weight mode every jet comes with its weight: either way
        # the trees take the loss weights as sample weights
        if settings.attack != "none":
            raise ModelError(f"GradientBoosting cannot be trained with --attack {settings.attack}: attacks follow the "
                             f"gradient of a PyTorch model's loss; train a PyTorch model or drop --attack")
        x, y, w = self._collect(data.train_batches(0), self.hyperparameters["max_jets"])
        if (w < 0).any():
            raise ModelError("GradientBoosting cannot fit negative sample weights (training.negative_weights: "
                             "signed); use abs or drop for it")
        hp = self.hyperparameters
        # scikit-learn is imported here, not with the module: every process that only registers
        # the shipped models (training workers, batch jobs) would pay seconds for it
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.estimator = HistGradientBoostingClassifier(
            max_iter=hp["max_iter"], learning_rate=hp["learning_rate"], max_leaf_nodes=hp["max_leaf_nodes"],
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=10, random_state=settings.seed)
        self.estimator.fit(x, y, sample_weight=w)
        record = {"epoch": 1, **self._scores(x, y, w, "")}
        validation = list(data.validation_batches())
        if validation:
            vx, vy, vw = self._collect(validation, np.iinfo(np.int64).max)
            record.update(self._scores(vx, vy, vw, "val_"))
        return [record]

    def _scores(self, x, y, w, prefix: str) -> dict[str, float]:
        probabilities = self._full_probabilities(x)
        from sklearn.metrics import log_loss

        return {f"{prefix}loss": float(log_loss(y, probabilities, sample_weight=w, labels=range(self.spec.n_classes))),
                f"{prefix}accuracy": float(np.average(probabilities.argmax(axis=1) == y, weights=w))}

    def _full_probabilities(self, x: np.ndarray) -> np.ndarray:
        """predict_proba with a column for every output class, also those absent in training."""
        out = np.zeros((len(x), self.spec.n_classes))
        out[:, self.estimator.classes_] = self.estimator.predict_proba(x)
        return out

    def predict(self, batches: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
        parts = [self._full_probabilities(summaries(batch, self.groups)) for batch in batches]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.n_classes))

    def export_onnx(self, path: Path, batch: Mapping[str, np.ndarray], tolerance: float) -> dict:
        """The summaries as ONNX operators in front of skl2onnx's trees
        (:mod:`models.gradient_boosting_onnx`): the same named raw inputs as the PyTorch models'
        graphs, ``probabilities`` out."""
        from models.gradient_boosting_onnx import export_onnx

        return export_onnx(self, path, batch, tolerance)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        import skops.io

        skops.io.dump(self.estimator, directory / ESTIMATOR_FILE)
        write_description(directory, self, {"hyperparameters": self.hyperparameters, "groups": list(self.groups)})

    @classmethod
    def load(cls, directory: Path) -> GradientBoosting:
        directory = Path(directory)
        description = read_description(directory)
        model = cls(InputSpec.from_json(description["spec"]), **description["hyperparameters"])
        path = directory / ESTIMATOR_FILE
        if not path.exists() and (directory / PICKLED_ESTIMATOR_FILE).exists():
            raise ModelError(f"{directory / PICKLED_ESTIMATOR_FILE} is a pickle written by an older b-hive; "
                             f"pickles are not loaded, since one replaced in the store would run code; {RETRAIN}")
        model.estimator = load_estimator(path)
        return model


def load_estimator(path: Path) -> HistGradientBoostingClassifier:
    """The estimator in the skops file ``path``, refused unless every type in it is trusted."""
    untrusted = _stored_types(path) - set(TRUSTED_TYPES)
    if untrusted:
        raise ModelError(f"{path} holds types that a HistGradientBoostingClassifier is not made of "
                         f"({', '.join(sorted(untrusted))}): it was not written by b-hive or was changed, and "
                         f"is not loaded; {RETRAIN}")
    try:
        import skops.io

        return skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as error:  # skops' own audit, or a file damaged past its type list
        raise ModelError(f"{path} cannot be loaded ({type(error).__name__}: {error}); {RETRAIN}") from None


def _stored_types(path: Path) -> set[str]:
    """The types named in a skops file, read from its JSON schema, so without building anything.

    A node of a kind outside TRUSTED_NODES, and a stored object that is not the estimator, are
    reported as types of their own, so that they never pass as trusted.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except Exception as error:  # whatever a damaged or foreign file makes zipfile or json raise
        raise ModelError(f"{path} is not a skops file ({type(error).__name__}: {error}), and is not "
                         f"loaded; {RETRAIN}") from None
    types: set[str] = set()
    if _type_of(schema) != ESTIMATOR_TYPE:
        types.add(f"{_type_of(schema)} as the stored object")
    pending = [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                types.add(_type_of(item))
                loader = item["__loader__"]
                if not isinstance(loader, str) or loader not in TRUSTED_NODES:
                    types.add(f"{loader} node")
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return types


def _type_of(node: object) -> str:
    if not isinstance(node, dict):
        return type(node).__name__
    return f"{node.get('__module__')}.{node.get('__class__')}"
