"""TorchModel: the base of every PyTorch tagger. Subclasses write ``__init__`` and ``forward``.

``__init__(self, spec, **hyperparameters)`` builds the layers, sized from the
:class:`~models.base.InputSpec`; ``forward(self, batch)`` maps a dict of standardised tensors
(``global``, ``cpf``, ``mask_cpf``, ...) to logits of shape (batch, n_classes). Standardisation,
the training loop, prediction, saving and loading are inherited.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bhive import training
from bhive.attacks import Attacker
from bhive.standardisation import feature_statistics
from bhive.store import atomic_path
from models.base import RETRAIN, InputSpec, Model, ModelError, read_description, write_description

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

    @classmethod
    def create(cls, spec: InputSpec, **hyperparameters: Any) -> TorchModel:
        model = cls(spec, **hyperparameters)
        model.hyperparameters = dict(hyperparameters)
        return model

    @property
    def spec(self) -> InputSpec:
        return self._spec

    # -- standardisation -----------------------------------------------------------------

    def set_standardisation(self, statistics: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        for group in self.groups:
            mean, std = statistics[group]
            getattr(self, f"mean_{group}").copy_(torch.as_tensor(mean))
            getattr(self, f"std_{group}").copy_(torch.as_tensor(std))

    def standardise(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with every used group standardised; padded candidates stay exactly zero."""
        out = dict(batch)
        for group in self.groups:
            values = (batch[group] - getattr(self, f"mean_{group}")) / getattr(self, f"std_{group}")
            if group != "global":
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
            self.set_standardisation(feature_statistics(data.train_batches(0), self.groups))
        return training.fit(self, data, settings, Path(workdir), resume=resume)

    def predict(self, batches: Iterable[Mapping[str, np.ndarray]], attacker: Attacker | None = None) -> np.ndarray:
        """Class probabilities; with ``attacker``, of each batch's adversarial version (against
        the batch's ``label``; jets of no class are left as they are)."""
        self.eval()
        device = next(self.parameters()).device
        outputs = []
        for batch in batches:
            inputs = self.standardise(training.to_device({k: v for k, v in batch.items() if k in self.input_keys()},
                                                         device))
            if attacker is not None:
                labels = torch.as_tensor(np.asarray(batch["label"]), dtype=torch.long, device=device)
                # cross_entropy leaves out label -100: no gradient, so no shift, for those jets
                inputs = attacker(inputs, torch.where(labels >= 0, labels, -100))
            with torch.no_grad():
                logits = self(inputs)
            # float64 probabilities: discriminators are ratios of them, and float32 ones tie
            outputs.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, self.spec.n_classes))

    def export_onnx(self, path: Path, batch: Mapping[str, np.ndarray], tolerance: float) -> dict:
        return export_onnx(self, path, batch, tolerance)

    def input_keys(self) -> tuple[str, ...]:
        return tuple(k for g in self.groups for k in ((g,) if g == "global" else (g, f"mask_{g}")))

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
        write_description(directory, self, {"hyperparameters": self.hyperparameters,
                                            "groups": list(self.groups)})

    @classmethod
    def load(cls, directory: Path) -> TorchModel:
        description = read_description(directory)
        model = cls.create(InputSpec.from_json(description["spec"]), **description["hyperparameters"])
        model.load_state_dict(training.load_tensors(Path(directory) / WEIGHTS_FILE, "cpu", fix=RETRAIN,
                                                    error=ModelError))
        model.eval()
        return model


class _ProbabilitiesModule(nn.Module):
    """What gets exported: raw inputs in, standardised inside, class probabilities out."""

    def __init__(self, model: TorchModel, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.keys, inputs))
        return torch.softmax(self.model(self.model.standardise(batch)), dim=1)


#: batch sizes the ONNX check runs at besides the whole check batch; the export itself traces
#: 8 jets, so a batch size frozen into the graph (e.g. LSTM initial states) cannot go unnoticed
CHECK_BATCH_SIZES = (1, 7)
EXPORT_BATCH_SIZE = 8


def export_onnx(model: TorchModel, path: Path, batch: Mapping[str, np.ndarray], tolerance: float = 1e-4) -> dict:
    """Write ``model`` as ONNX (one named input per array, dynamic batch size) and check that
    onnxruntime reproduces the PyTorch probabilities on ``batch`` within ``tolerance``, run
    whole and as its first 1 and 7 jets."""
    import warnings

    import onnxruntime

    name = type(model).__name__
    model = model.to("cpu").eval()
    keys = model.input_keys()
    example = tuple(torch.from_numpy(np.ascontiguousarray(batch[k][:EXPORT_BATCH_SIZE])) for k in keys)
    checked = tuple(torch.from_numpy(np.ascontiguousarray(batch[k])) for k in keys)
    wrapper = _ProbabilitiesModule(model, keys).eval()
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
                                  output_names=["probabilities"],
                                  dynamic_axes={k: {0: "jets"} for k in (*keys, "probabilities")},
                                  opset_version=17, dynamo=False)
        except Exception as error:
            raise ModelError(f"model {name} cannot be exported to ONNX: {type(error).__name__}: {error}") from error
        with torch.no_grad():
            expected = wrapper(*checked).numpy()
        session = onnxruntime.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
        differences = {}
        for size in sorted({*(s for s in CHECK_BATCH_SIZES if s < len(expected)), len(expected)}):
            feeds = {k: np.ascontiguousarray(batch[k][:size]) for k in keys}
            obtained = session.run(["probabilities"], feeds)[0]
            differences[str(size)] = float(np.max(np.abs(obtained - expected[:size]))) if size else 0.0
    difference = max(differences.values())
    return {"model": name, "inputs": list(keys), "outputs": ["probabilities"], "classes": list(model.classes),
            "n_jets_checked": int(len(expected)), "max_abs_difference": difference,
            "max_abs_difference_by_batch_size": differences, "tolerance": tolerance,
            "passed": difference <= tolerance}
