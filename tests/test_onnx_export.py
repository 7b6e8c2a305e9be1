"""Every registered PyTorch model exports to ONNX, and onnxruntime reproduces PyTorch.

Each model is built at the sizes and with the settings the shipped configs give it (every
shipped config that can build it), with its default initialisation and the standardisation
training would fit, and checked on jets from a small test dataset that the real chain makes
for that config: the simulated sample for configs with ``simulate:``, generated NanoAOD files
for the NanoAOD config. Padding patterns a deployment sees are added from the same jets:
one real candidate per group, every slot real, and none. The comparison is onnxruntime on
the written file against the PyTorch inference path (``TorchModel.predict``), at batch sizes
other than the export's.
"""

from __future__ import annotations

import os

import luigi
import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from torch import nn

from bhive.config import CONFIG_DIR, available_configs, load_config
from bhive.standardisation import feature_statistics
from dataloaders.base import LoaderSettings, dataloader_class
from bhive import training as fitting
from models.base import MODELS, InputSpec, ModelError, model_class
from models.torch_model import EXPORT_BATCH_SIZE, TorchModel, export_onnx
from tasks.dataset import DatasetConstructionTask
from tests.nanoaod_files import write_nanoaod

TOLERANCE = 1e-4
CHECK_JETS = 2048
SHIPPED = available_configs(CONFIG_DIR)
TORCH_MODELS = [name for name in MODELS.names() if issubclass(model_class(name), TorchModel)]
SIMULATED_JETS = 400  # per process of a simulated config's test split
PATTERN_JETS = 16  # jets per padding pattern and candidate group
SMALL_BATCHES = (1, 7)  # checked jet by jet on the first jets, which hold the padding patterns
SMALL_BATCH_JETS = 448


def small_variant(name: str, samples_dir) -> dict:
    """The shipped config ``name`` with a small sample and otherwise unchanged."""
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yml").read_text())
    # a few hundred jets hold only a handful of the rarer labels (offline_ak4's bb, lepb)
    raw["reweighting"] = {**raw.get("reweighting", {}), "min_count": 0}
    if "simulate" in raw:
        raw["simulate"]["jets_per_file"] = SIMULATED_JETS
        for process in raw["simulate"]["processes"].values():
            process["train_jets"] = process["test_jets"] = SIMULATED_JETS
    else:
        samples_dir.mkdir(parents=True)
        for index, process in enumerate(p["name"] for p in raw["processes"]):
            write_nanoaod(samples_dir / f"{process}_test_{index}.root", 150, seed=20 + index)
        pattern = str(samples_dir / "*.root")
        raw["samples"] = {"train": [pattern], "test": [pattern]}
    return raw


@pytest.fixture(scope="module")
def test_datasets(tmp_path_factory):
    """config name -> (config, directory of its small test dataset), built by the tasks."""
    root = tmp_path_factory.mktemp("onnx")
    config_dir = root / "configs"
    config_dir.mkdir()
    (config_dir / "default.yml").write_text((CONFIG_DIR / "default.yml").read_text())
    for name in SHIPPED:
        (config_dir / f"{name}.yml").write_text(yaml.safe_dump(small_variant(name, root / "samples" / name)))
    datasets = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BHIVE_CONFIG_DIR", str(config_dir))
        patch.setenv("BHIVE_STORE", str(root / "store"))
        tasks = {name: DatasetConstructionTask(config=name, version="onnx", split="test", executor="iterative",
                                               processes=1) for name in SHIPPED}
        assert luigi.build(list(tasks.values()), local_scheduler=True, workers=1, log_level="WARNING")
        for name, task in tasks.items():
            datasets[name] = (load_config(name), task.output_directory())
        yield datasets


def padding_patterns(batch: dict[str, np.ndarray], groups: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """For every candidate group, ``PATTERN_JETS`` jets of ``batch`` with exactly one real entry,
    as many with every slot real (empty slots filled with the jet's own entries), and as many
    with none."""
    parts = []
    for group in (g for g in groups if g != "global"):
        mask = batch[f"mask_{group}"]
        chosen = np.flatnonzero(mask.any(axis=1))[:PATTERN_JETS]
        one, full, none = ({k: v[chosen].copy() for k, v in batch.items()} for _ in range(3))
        one[f"mask_{group}"][:, 1:] = False
        one[group][:, 1:] = 0
        # slot i takes the jet's real entry number i modulo its number of real entries
        n_real = mask[chosen].sum(axis=1)
        source = np.arange(mask.shape[1])[None, :] % n_real[:, None]
        full[group] = np.take_along_axis(batch[group][chosen], source[..., None], axis=1)
        full[f"mask_{group}"][:] = True
        none[group][:] = 0
        none[f"mask_{group}"][:] = False
        parts += [one, full, none]
    return parts


def check_batch(batch: dict[str, np.ndarray], model: TorchModel) -> dict[str, np.ndarray]:
    """``CHECK_JETS`` jets: the padding patterns first, then the dataset's jets, repeated where
    the small dataset has fewer."""
    batch = {k: batch[k] for k in model.input_keys()}
    parts = [*padding_patterns(batch, model.groups), batch]
    batch = {k: np.concatenate([part[k] for part in parts]) for k in batch}
    repeats = -(-CHECK_JETS // len(next(iter(batch.values()))))
    return {k: np.concatenate([v] * repeats)[:CHECK_JETS] for k, v in batch.items()}


def test_every_registered_torch_model_is_checked():
    assert {"DNN", "DeepJet", "ParticleNet", "ParticleTransformer"} <= set(TORCH_MODELS)


class _Unexportable(TorchModel):
    """sinh has no ONNX translation in the TorchScript exporter."""

    registered = False
    input_groups = ("global",)

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        self.linear = nn.Linear(spec.n_features("global"), spec.n_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(torch.sinh(batch["global"]))


def test_a_model_that_cannot_export_says_so_by_name(tmp_path):
    spec = InputSpec(features={"global": ("jet_pt", "jet_eta")}, n_candidates={}, classes=("b", "light"))
    with pytest.raises(ModelError, match="model _Unexportable cannot be exported to ONNX: .*sinh"):
        export_onnx(_Unexportable.create(spec), tmp_path / "model.onnx", {"global": np.ones((16, 2), np.float32)})
    assert not list(tmp_path.iterdir())


@pytest.fixture
def all_threads():
    """Published-size models on 2048 jets: the one exception to the suite's single thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", TORCH_MODELS)
def test_onnx_export_reproduces_pytorch(model_name, test_datasets, tmp_path, all_threads):
    exported = []
    for config_name, (cfg, directory) in test_datasets.items():
        try:
            model = fitting.build(cfg, model_name, directory, seed=1)
        except ModelError as error:
            # the config lacks a group or a setting the model needs (e.g. ParticleNet's coordinates)
            print(f"{model_name} is not built by {config_name}: {error}")
            continue
        assert isinstance(model, TorchModel)
        loader = dataloader_class(cfg.dataloader)(directory, model.groups, cfg.classes,
                                                  LoaderSettings(batch_size=CHECK_JETS))
        model.set_standardisation(feature_statistics(loader.inference_batches(), model.groups))
        model.eval()
        batch = check_batch(next(iter(loader.inference_batches())), model)

        path = tmp_path / config_name / "model.onnx"
        check = export_onnx(model, path, batch, TOLERANCE)
        assert check["passed"], f"{model_name} ({config_name}): {check['max_abs_difference_by_batch_size']}"

        # independently of export_onnx, which compared all jets at once: onnxruntime on the
        # written file against PyTorch's inference path, jet by jet, in small batches
        head = {k: v[:SMALL_BATCH_JETS] for k, v in batch.items()}
        expected = model.predict([head])
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for size in SMALL_BATCHES:
            assert size != EXPORT_BATCH_SIZE
            obtained = np.concatenate([session.run(["probabilities"], {k: v[start:start + size] for k, v in head.items()})[0]
                                       for start in range(0, SMALL_BATCH_JETS, size)])
            difference = np.abs(obtained - expected).max(axis=1)
            worst = int(difference.argmax())
            assert difference[worst] <= TOLERANCE, (
                f"{model_name} ({config_name}), batch size {size}: onnxruntime differs from PyTorch by "
                f"{difference[worst]:.2e} on jet {worst}")
        exported.append(config_name)
    assert exported, f"no shipped config ({', '.join(SHIPPED)}) builds {model_name}, so its export is unchecked"
