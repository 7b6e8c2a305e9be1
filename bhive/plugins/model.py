"""The model contract: the framework-agnostic :class:`Model` base, the input description
(:class:`InputSpec`) models are sized from, the training settings, and the artifact
description (``model.json``) every saved model carries.

A PyTorch model subclasses ``models.torch_model.TorchModel`` (which implements everything
here but ``__init__`` and ``forward``); any other library subclasses :class:`Model` and
writes ``fit``, ``predict``, ``save`` and ``load`` (see ``models/gradient_boosting.py``).
Subclasses register by class name: ``model: DeepJet`` in a config, or ``--model-name``.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bhive.plugins.registry import Registry
from bhive.store import atomic_write_json, file_problem, file_record

GROUPS = ("global", "cpf", "npf", "vtx")
MODEL_FILE = "model.json"
#: the way out of an artifact that cannot be loaded
RETRAIN = "train the model again (a new training version)"



class ModelError(ValueError):
    """A model that cannot be built, trained or loaded as asked."""


MODELS = Registry("model", "Set `model:` in the config or pass --model-name", error=ModelError)


@dataclass(frozen=True)
class RegressionTarget:
    """A continuous target a model predicts next to the classes (config ``regression_targets``):
    its name, its loss and how many outputs the loss needs."""

    name: str
    loss: str = "mse"                      # mse | huber | quantile
    quantiles: tuple[float, ...] = ()      # with quantile: one output per quantile
    huber_delta: float = 1.0               # with huber, in standard deviations of the target
    weight: float = 1.0                    # beside the classification loss (weight 1)

    @property
    def n_outputs(self) -> int:
        return len(self.quantiles) if self.loss == "quantile" else 1

    def to_json(self) -> dict:
        return {**asdict(self), "quantiles": list(self.quantiles)}

    @classmethod
    def from_json(cls, data: Mapping) -> RegressionTarget:
        return cls(**{**data, "quantiles": tuple(data.get("quantiles", ()))})


@dataclass(frozen=True)
class InputSpec:
    """What a model sees of a dataset: feature names per group, candidates per group, the
    output classes (by name, in output order) and the regression targets (in the order of the
    dataset's ``target`` columns)."""

    features: dict[str, tuple[str, ...]]
    n_candidates: dict[str, int]
    classes: tuple[str, ...]
    targets: tuple[RegressionTarget, ...] = ()

    @classmethod
    def from_meta(cls, meta: Mapping, classes: Iterable[str],
                  targets: Mapping[str, Any] | None = None) -> InputSpec:
        """The spec of a dataset (its ``meta.json``) for ``classes`` and the config's
        ``regression_targets`` (name -> settings with loss, quantiles, huber_delta, weight),
        which must be the dataset's targets."""
        targets = dict(targets or {})
        if list(targets) != list(meta.get("targets", [])):
            raise ModelError(f"the config's regression_targets ({', '.join(targets) or 'none'}) are not the "
                             f"dataset's ({', '.join(meta.get('targets', [])) or 'none'}); build the dataset with "
                             f"this config (a new --dataset-version)")
        return cls(features={g: tuple(f) for g, f in meta["features"].items()},
                   n_candidates=dict(meta.get("n_candidates", {})), classes=tuple(classes),
                   targets=tuple(RegressionTarget(name, t.loss, tuple(t.quantiles), t.huber_delta, t.weight)
                                 for name, t in targets.items()))

    @property
    def n_regression_outputs(self) -> int:
        return sum(target.n_outputs for target in self.targets)

    def regression_columns(self) -> list[dict]:
        """Per target: name, loss, quantiles and its columns of the regression output."""
        out, start = [], 0
        for target in self.targets:
            out.append({"name": target.name, "loss": target.loss, "quantiles": list(target.quantiles),
                        "columns": list(range(start, start + target.n_outputs))})
            start += target.n_outputs
        return out

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def has(self, group: str) -> bool:
        return group in self.features

    def n_features(self, group: str) -> int:
        return len(self.features[group])

    def column(self, group: str, name: str) -> int:
        """Index of feature ``name`` in ``group``; a clear error when the dataset lacks it."""
        if group not in self.features:
            raise ModelError(f"the dataset has no '{group}' group; groups: {', '.join(self.features)}")
        try:
            return self.features[group].index(name)
        except ValueError:
            raise ModelError(f"feature '{name}' is not in the dataset's '{group}' group; add it to the "
                             f"config's features or choose one of: {', '.join(self.features[group])}") from None

    def to_json(self) -> dict:
        return {"features": {g: list(f) for g, f in self.features.items()},
                "n_candidates": self.n_candidates, "classes": list(self.classes),
                **({"targets": [t.to_json() for t in self.targets]} if self.targets else {})}

    @classmethod
    def from_json(cls, data: Mapping) -> InputSpec:
        return cls(features={g: tuple(f) for g, f in data["features"].items()},
                   n_candidates=dict(data["n_candidates"]), classes=tuple(data["classes"]),
                   targets=tuple(RegressionTarget.from_json(t) for t in data.get("targets", ())))


@dataclass(frozen=True)
class TrainingSettings:
    """Everything the training loop needs besides data; defaults come from the config."""

    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: int = 1
    gradient_clip: float = 5.0
    patience: int = 5
    sampling: str = "stochastic"
    class_weights: str | dict[str, float] = "none"
    negative_weights: str = "abs"
    # adversarial training (bhive.attacks): the attack, and the config's per-feature rules
    attack: str = "none"
    attack_epsilon: float = 0.1
    attack_iterations: int = 10
    attack_step: float = 0.0
    attack_random_start: bool = False
    attack_fraction: float = 0.5
    attack_factors: dict[str, float] = field(default_factory=dict)
    attack_non_negative: tuple[str, ...] = ()
    device: str = "auto"
    precision: str = "fp32"          # fp32 | bf16 | fp16 (mixed precision)
    compile: bool = False
    seed: int = 42
    stop_after_epoch: int = 0        # > 0: stop (resumably) after this epoch
    loader_workers: int = 0
    # experiment tracking (bhive.tracking): the MLflow run as JSON, empty for none; it says
    # where the training is recorded, and changes nothing in it
    mlflow: dict[str, Any] = field(default_factory=dict)
    # a trial of a hyperparameter search reports to its study (bhive.search_trial): "<storage
    # file below the store>#<trial number>"; empty: not a trial
    search_trial: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class Model(ABC):
    """A jet tagger: trained on dataset shards, predicting one probability per output class.

    Class attributes a subclass may set:
        ``input_groups``: the dataset groups it consumes (subset of global, cpf, npf, vtx);
        groups a model can use but does not need go in ``optional_groups``.
    """

    input_groups: tuple[str, ...] = ()
    optional_groups: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # bases that are complete classes but not models of their own say `registered = False`
        if not inspect.isabstract(cls) and cls.__dict__.get("registered", True):
            MODELS.add(cls)

    @classmethod
    def used_groups(cls, spec: InputSpec) -> tuple[str, ...]:
        """Groups fed to the model: the required ones (which must exist) and optional ones present."""
        missing = [g for g in cls.input_groups if not spec.has(g)]
        if missing:
            raise ModelError(f"model {cls.__name__} needs the group(s) {', '.join(missing)}, which the dataset "
                             f"does not have (it has {', '.join(spec.features)}); configure them or pick "
                             f"another model")
        return tuple(g for g in GROUPS if g in cls.input_groups or (g in cls.optional_groups and spec.has(g)))

    @property
    @abstractmethod
    def spec(self) -> InputSpec:
        """The input description the model was built for (given to its constructor)."""

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @abstractmethod
    def fit(self, data, settings: TrainingSettings, workdir: Path, resume: bool = False) -> list[dict]:
        """Train on ``data`` (a dataloader plugin); returns the history, one dict per epoch
        (``epoch``, ``loss``, ``accuracy`` and, with validation jets, ``val_loss`` and
        ``val_accuracy``). Called once by the training stage; ``workdir`` is private to the
        training (checkpoints); ``resume`` continues from the last checkpoint there."""

    @abstractmethod
    def predict(self, batches: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Class probabilities, shape (n_jets, n_classes), for batches as the dataloader's
        ``inference_batches`` yields them; called by inference on test datasets."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything inference needs into ``directory``, then ``model.json`` through
        :func:`write_description` (which records the files); called after :meth:`fit`."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Model:
        """Rebuild a saved model (from the directory :meth:`save` wrote); called by inference,
        export and evaluation in processes that never saw the training."""

    def input_keys(self) -> tuple[str, ...]:
        """The batch arrays the model reads, in the order of its ONNX graph's inputs: each used
        group, a candidate group followed by its mask (``mask_<group>``). One order for every
        model, so that a deployment feeds any b-hive graph the same named arrays."""
        groups = type(self).used_groups(self.spec)
        return tuple(k for g in groups for k in ((g,) if g == "global" else (g, f"mask_{g}")))

    def export_onnx(self, path: Path, batch: Mapping[str, np.ndarray], tolerance: float) -> dict:
        """Write the model as ONNX to ``path`` (inputs by array name, class probabilities out)
        and compare onnxruntime with the model on ``batch``, a batch of held-out jets as the
        dataloader's ``inference_batches`` yields them. Returns the check: ``model``,
        ``max_abs_difference`` (and ``_by_batch_size``), ``passed`` (:mod:`bhive.onnx_check`
        makes both). The graph's inputs are :meth:`input_keys`, raw as the loader gives them: any
        standardisation or feature building happens inside. Called by ``ExportTask``; a model
        without an ONNX export keeps this refusal."""
        raise ModelError(f"model {type(self).__name__} has no ONNX export")


def model_class(name: str) -> type[Model]:
    """The registered model called ``name``; an unknown name lists the known ones."""
    return MODELS.get(name)


def hyperparameter_names(cls: type[Model]) -> tuple[str, ...]:
    """What ``model_settings.<Model>`` may set: the arguments the constructor takes by name
    besides the input description."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(name for name, parameter in inspect.signature(cls.__init__).parameters.items()
                 if name not in ("self", "spec") and parameter.kind in named)


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of an artifact except ``model.json``, by name.

    Dot-files are the temporaries of atomic writes, not part of the artifact.
    """
    return {path.name: file_record(path) for path in sorted(Path(directory).iterdir())
            if path.is_file() and path.name != MODEL_FILE and not path.name.startswith(".")}


def write_description(directory: Path, model: Model, details: Mapping[str, Any]) -> None:
    """Write ``model.json``; call it after the model's own files are written, since it records them."""
    description = {"model": type(model).__name__, "spec": model.spec.to_json(), **details,
                   "files": file_records(directory)}
    atomic_write_json(directory / MODEL_FILE, description)


def check_files(directory: Path, description: Mapping[str, Any], verify: bool = False) -> None:
    """Refuse an artifact whose files differ in size (with ``verify``: in sha256) from what
    ``model.json`` records.

    Sizes cost a stat per file and catch truncated and half-copied artifacts; the sha256 is
    for checks that can afford reading everything.
    """
    for name, record in description.get("files", {}).items():
        path = Path(directory) / name
        problem = file_problem(path, record, verify)
        if problem:
            raise ModelError(f"model file {path} is damaged ({problem}; {MODEL_FILE} records its size and "
                             f"sha256); {RETRAIN} or restore it")


def read_description(directory: Path) -> dict:
    """``model.json`` of an artifact whose files are all there with their recorded sizes.

    Artifacts from before the file list was recorded carry none and are not checked.
    """
    path = Path(directory) / MODEL_FILE
    if not path.exists():
        raise ModelError(f"{directory} holds no trained model ({MODEL_FILE} is missing)")
    description = json.loads(path.read_text())
    check_files(directory, description)
    return description


def load_model(directory: Path) -> Model:
    """Load any saved model, whatever its class."""
    return model_class(read_description(directory)["model"]).load(Path(directory))
