"""TorchModel: the base of every PyTorch tagger. Subclasses write ``__init__`` and ``embed``.

``__init__(self, spec, **hyperparameters)`` builds the layers, sized from the
:class:`~models.base.InputSpec`, and ends with ``self.build_heads(width, hidden, dropout)``;
``embed(self, batch)`` maps a dict of standardised tensors (``global``, ``cpf``, ``mask_cpf``,
...) to the jet's representation, shape (batch, width). The base class puts the heads on it:
dense layers of sizes ``hidden`` to the class logits, and, when the spec has regression
targets, dense layers of the same sizes to the regression outputs (one per target, or one per
quantile). ``forward(batch)`` gives the logits, ``forward(batch, regression=True)`` the logits
and the regression outputs. Standardisation (of inputs and targets), the training loop,
prediction, saving, loading and ONNX export are inherited.

A model that overrides ``forward`` to return logits instead of writing ``embed`` still works
for classification; regression targets need ``embed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bhive import onnx_check, training
from bhive.attacks import Attacker
from bhive.dataset import TARGET
from bhive.standardisation import feature_statistics
from bhive.store import atomic_path
from models.base import RETRAIN, InputSpec, Model, ModelError, read_description, write_description
from models.layers import dense_head

WEIGHTS_FILE = "weights.pt"


class TorchModel(nn.Module, Model):
    """Base of PyTorch models (see module docstring)."""

    registered = False

    def __init__(self, spec: InputSpec) -> None:
        nn.Module.__init__(self)
        self._spec = spec
        self.hyperparameters: dict[str, Any] = {}
        self.groups = type(self).used_groups(spec)
        for group in self.groups:
            size = spec.n_features(group)
            self.register_buffer(f"mean_{group}", torch.zeros(size))
            self.register_buffer(f"std_{group}", torch.ones(size))
        if spec.targets:
            self.register_buffer(f"mean_{TARGET}", torch.zeros(len(spec.targets)))
            self.register_buffer(f"std_{TARGET}", torch.ones(len(spec.targets)))

    @classmethod
    def create(cls, spec: InputSpec, **hyperparameters: Any) -> TorchModel:
        model = cls(spec, **hyperparameters)
        model.hyperparameters = dict(hyperparameters)
        if spec.targets and not hasattr(model, "regression_head"):
            raise ModelError(f"model {cls.__name__} cannot predict the regression targets "
                             f"{', '.join(t.name for t in spec.targets)}: it defines forward instead of embed and "
                             f"build_heads (see models/torch_model.py); remove regression_targets from the config "
                             f"or give the model embed")
        return model

    # -- what subclasses provide ---------------------------------------------------------

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The jet representation the heads sit on, shape (batch, width): every architecture's
        last layer before its dense head (pooled candidates, LSTM states, class token, with the
        global features)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither embed nor forward")

    def build_heads(self, width: int, hidden: Sequence[int], dropout: float) -> None:
        """Put the heads on a representation of ``width``: ``head``, dense layers of sizes
        ``hidden`` (ReLU, dropout) to the class logits, and with regression targets
        ``regression_head``, the same layers to the regression outputs."""
        self.head = dense_head(width, hidden, self.spec.n_classes, dropout)
        if self.spec.targets:
            self.regression_head = dense_head(width, hidden, self.spec.n_regression_outputs, dropout)

    def forward(self, batch: dict[str, torch.Tensor], regression: bool = False):
        """The class logits; with ``regression``, (logits, regression outputs) with the outputs
        standardised (``regression_values`` turns them into the targets' units)."""
        embedding = self.embed(batch)
        logits = self.head(embedding)
        return (logits, self.regression_head(embedding)) if regression else logits

    def regression_values(self, outputs: torch.Tensor) -> torch.Tensor:
        """Standardised regression outputs in the targets' own units."""
        # each output column belongs to one target: its standardisation, column by column
        target_of = [i for i, t in enumerate(self.spec.targets) for _ in range(t.n_outputs)]
        return outputs * getattr(self, f"std_{TARGET}")[target_of] + getattr(self, f"mean_{TARGET}")[target_of]

    @property
    def spec(self) -> InputSpec:
        return self._spec

    # -- standardisation -----------------------------------------------------------------

    def set_standardisation(self, statistics: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """(mean, width) per used group and, where given, of the regression targets."""
        for group in self.standardised_groups():
            if group == TARGET and group not in statistics:
                continue
            mean, std = statistics[group]
            getattr(self, f"mean_{group}").copy_(torch.as_tensor(mean))
            getattr(self, f"std_{group}").copy_(torch.as_tensor(std))

    def standardised_groups(self) -> tuple[str, ...]:
        """The used groups and, with regression targets, ``target``."""
        return (*self.groups, *((TARGET,) if self.spec.targets else ()))

    def standardise(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with every used group (and the targets, where it has them) standardised;
        padded candidates stay exactly zero, missing targets NaN."""
        out = dict(batch)
        for group in self.standardised_groups():
            if group not in batch:  # the targets, in batches without them
                continue
            values = (batch[group] - getattr(self, f"mean_{group}")) / getattr(self, f"std_{group}")
            if group not in ("global", TARGET):
                values = values * batch[f"mask_{group}"].unsqueeze(-1).to(values.dtype)
            out[group] = values
        return out

    def raw_column(self, batch: Mapping[str, torch.Tensor], group: str, name: str) -> torch.Tensor:
        """Feature ``name`` of ``group`` in its original units, from a standardised batch."""
        index = self.spec.column(group, name)
        return batch[group][..., index] * getattr(self, f"std_{group}")[index] + getattr(self, f"mean_{group}")[index]

    # -- Model interface -----------------------------------------------------------------

    def fit(self, data, settings, workdir: Path, resume: bool = False) -> list[dict]:
        # with several training processes rank 0 alone computes the statistics; the loop
        # hands its state to the others before the first step
        if not resume and training.distributed.world().rank == 0:
            self.set_standardisation(feature_statistics(data.train_batches(0), self.standardised_groups()))
        return training.fit(self, data, settings, Path(workdir), resume=resume)

    def predict(self, batches: Iterable[Mapping[str, np.ndarray]], attacker: Attacker | None = None) -> np.ndarray:
        """Class probabilities; with ``attacker``, of each batch's adversarial version (against
        the batch's ``label``; jets of no class are left as they are)."""
        return self.predict_outputs(batches, attacker)["scores"]

    def predict_outputs(self, batches: Iterable[Mapping[str, np.ndarray]],
                        attacker: Attacker | None = None) -> dict[str, np.ndarray]:
        """``scores``, the class probabilities (float64: discriminators are ratios of them, and
        float32 ones tie), and with regression targets ``regression``, the outputs in the
        targets' units (``spec.regression_columns()`` says which column is which)."""
        self.eval()
        device = next(self.parameters()).device
        regression = bool(self.spec.targets)
        scores, values = [], []
        for batch in batches:
            inputs = self.standardise(training.to_device({k: v for k, v in batch.items() if k in self.input_keys()},
                                                         device))
            if attacker is not None:
                labels = torch.as_tensor(np.asarray(batch["label"]), dtype=torch.long, device=device)
                # cross_entropy leaves out label -100: no gradient, so no shift, for those jets
                inputs = attacker(inputs, torch.where(labels >= 0, labels, -100))
            with torch.no_grad():
                outputs = self(inputs, regression=True) if regression else (self(inputs), None)
            scores.append(torch.softmax(outputs[0].double(), dim=1).cpu().numpy())
            if regression:
                values.append(self.regression_values(outputs[1].double()).cpu().numpy())
        out = {"scores": np.concatenate(scores) if scores else np.zeros((0, self.spec.n_classes))}
        if regression:
            out["regression"] = np.concatenate(values) if values else np.zeros((0, self.spec.n_regression_outputs))
        return out

    def export_onnx(self, path: Path, batch: Mapping[str, np.ndarray], tolerance: float) -> dict:
        return export_onnx(self, path, batch, tolerance)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
        write_description(directory, self, {"hyperparameters": self.hyperparameters,
                                            "groups": list(self.groups)})

    #: parameter-name prefixes of earlier versions of a model -> today's, so that their saved
    #: weights still load
    renamed_parameters: dict[str, str] = {}

    @classmethod
    def load(cls, directory: Path) -> TorchModel:
        description = read_description(directory)
        model = cls.create(InputSpec.from_json(description["spec"]), **description["hyperparameters"])
        state = training.load_tensors(Path(directory) / WEIGHTS_FILE, "cpu", fix=RETRAIN, error=ModelError)
        for old, new in cls.renamed_parameters.items():
            state = {new + key[len(old):] if key.startswith(old) else key: value for key, value in state.items()}
        model.load_state_dict(state)
        model.eval()
        return model


class _ProbabilitiesModule(nn.Module):
    """What gets exported: raw inputs in, standardised inside, class probabilities out and,
    with regression targets, the regression outputs in the targets' units."""

    def __init__(self, model: TorchModel, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys
        self.regression = bool(model.spec.targets)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = self.model.standardise(dict(zip(self.keys, inputs)))
        if not self.regression:
            return torch.softmax(self.model(batch), dim=1)
        logits, outputs = self.model(batch, regression=True)
        return torch.softmax(logits, dim=1), self.model.regression_values(outputs)


#: jets the export traces; the check (bhive.onnx_check) runs at other batch sizes, so a batch
#: size frozen into the graph (e.g. LSTM initial states) cannot go unnoticed
EXPORT_BATCH_SIZE = 8


def export_onnx(model: TorchModel, path: Path, batch: Mapping[str, np.ndarray], tolerance: float = 1e-4) -> dict:
    """Write ``model`` as ONNX (one named input per array, dynamic batch size) and check that
    onnxruntime reproduces the PyTorch probabilities on ``batch`` within ``tolerance``, run
    whole and as its first 1 and 7 jets."""
    import warnings

    name = type(model).__name__
    model = model.to("cpu").eval()
    keys = model.input_keys()
    example = tuple(torch.from_numpy(np.ascontiguousarray(batch[k][:EXPORT_BATCH_SIZE])) for k in keys)
    checked = tuple(torch.from_numpy(np.ascontiguousarray(batch[k])) for k in keys)
    wrapper = _ProbabilitiesModule(model, keys).eval()
    output_names = ["probabilities", *(["regression"] if wrapper.regression else [])]
    with atomic_path(Path(path)) as temporary:
        try:
            with warnings.catch_warnings():
                # the torch.export-based exporter would need the onnxscript package; the TorchScript
                # one covers every b-hive model
                warnings.simplefilter("ignore", DeprecationWarning)
                # the tracer's notes on values frozen into the graph (LSTM batch sizes and input
                # widths) are answered by the check below, at other batch sizes
                warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM")
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(wrapper, example, str(temporary), input_names=list(keys),
                                  output_names=output_names,
                                  dynamic_axes={k: {0: "jets"} for k in (*keys, *output_names)},
                                  opset_version=17, dynamo=False)
        except Exception as error:
            raise ModelError(f"model {name} cannot be exported to ONNX: {type(error).__name__}: {error}") from error
        with torch.no_grad():
            expected = wrapper(*checked)
        expected = [e.numpy() for e in (expected if wrapper.regression else (expected,))]
        by_batch_size = onnx_check.differences(temporary, batch, keys, output_names, expected)
    return onnx_check.record(name, keys, output_names, model.classes, len(expected[0]), by_batch_size, tolerance,
                             **({"regression": model.spec.regression_columns()} if wrapper.regression else {}))
