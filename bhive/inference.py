"""Applying a trained model to a dataset: per-jet class probabilities with the jets' truth,
kinematics, process, reference-tagger scores and weights, as .npy files and a ROOT tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bhive import dataset
from bhive.attacks import Attack, Attacker, feature_rules
from bhive.config import Config
from bhive.store import atomic_path, atomic_write_json, file_problem, file_record, read_json
from bhive.plugins.dataloader import DataLoaderPlugin, LoaderSettings, dataloader_class
from bhive.plugins.model import Model, ModelError, load_model
from bhive.training.distributed import resolve_device
from bhive.truth import label_map

ARRAYS = ("scores", "truth", "label", "kinematics", "process", "extras", "weight", "mc_weight")
REGRESSION = "regression"
#: written besides ARRAYS for a model with regression targets
REGRESSION_ARRAYS = (REGRESSION, dataset.TARGET, dataset.TARGET_BASELINE)
INFO = "info.json"
ROOT_FILE = "scores.root"


def predict_dataset(cfg: Config, model_dir: Path, dataset_dir: Path, batch_size: int = 4096,
                    attack: Attack | None = None, device: str = "auto") -> dict:
    """Scores of every jet of ``dataset_dir`` in stored order, with what evaluation needs;
    with an ``attack``, the scores of the attacked jets (the config's ``attack`` rules). A
    PyTorch model scores on ``device`` (auto: a CUDA GPU when PyTorch sees one)."""
    model = load_model(model_dir)
    if isinstance(model, torch.nn.Module):
        model.to(resolve_device(device))
    attacker = None
    if attack is not None and attack.active:
        if not hasattr(model, "standardise"):
            raise ModelError(f"{type(model).__name__} cannot be scored under --test-attack {attack.kind}: attacks "
                             f"follow the gradient of a PyTorch model's loss; score it without --test-attack")
        attacker = Attacker(model, attack, feature_rules(cfg.attack, cfg.path))
    loader = scoring_loader(cfg, model, dataset_dir, batch_size)
    meta = loader.meta
    targets = [t.name for t in model.spec.targets]
    names = ("truth", "kinematics", "process", "extras", "weight", dataset.EVENT_WEIGHT)
    regression = None
    if targets:
        if meta.get("targets") != targets:
            raise ModelError(f"the model predicts the regression targets {', '.join(targets)}, but {dataset_dir} has "
                             f"{', '.join(meta.get('targets', [])) or 'none'}; score a dataset built with the same "
                             f"regression_targets")
        names += (dataset.TARGET, dataset.TARGET_BASELINE)
        outputs = model.predict_outputs(loader.inference_batches(), attacker)
        scores, regression = outputs["scores"], outputs["regression"]
    else:
        batches = loader.inference_batches()
        scores = np.asarray(model.predict(batches, attacker) if attacker else model.predict(batches), dtype=np.float64)
    columns = {name: [] for name in names}
    for shard in meta["shards"]:
        arrays = dataset.open_shard(dataset_dir, shard["name"])
        # every jet counts once where the dataset has no event weights
        arrays.setdefault(dataset.EVENT_WEIGHT, np.ones(shard["n_jets"], np.float32))
        for name in columns:
            columns[name].append(np.asarray(arrays[name]))
    out = {name: np.concatenate(parts) for name, parts in columns.items()}
    out["scores"] = scores
    out["label"] = label_map(meta["truth_labels"], cfg.classes)[out["truth"]].astype(np.int16)
    info = {"classes": list(model.classes), "truth_labels": meta["truth_labels"], "processes": meta["processes"],
            "extras": meta["extras"], "kinematics": meta["kinematics"], "event_weight": meta.get("event_weight"),
            "model": str(model_dir), "attack": attack.label() if attack is not None else "nominal",
            "dataset": str(dataset_dir), "n_jets": int(len(scores))}
    if regression is not None:
        out[REGRESSION] = np.asarray(regression, dtype=np.float64)
        info["regression"] = model.spec.regression_columns()
    return {"arrays": out, "info": info}


def scoring_loader(cfg: Config, model: Model, dataset_dir: Path, batch_size: int = 4096) -> DataLoaderPlugin:
    """The config's dataloader over every jet of ``dataset_dir`` with the groups ``model``
    uses, refused unless the dataset has the features, in the order, the model was trained on
    (a model reads columns by position)."""
    meta = dataset.load_meta(dataset_dir)
    groups = type(model).used_groups(model.spec)
    for group in groups:
        expected, found = list(model.spec.features[group]), list(meta["features"].get(group, []))
        if expected != found:
            raise ModelError(f"the model was trained on {group} features {expected}, but {dataset_dir} has "
                             f"{found}; score a dataset built with the same features")
    return dataloader_class(cfg.dataloader)(dataset_dir, groups, cfg.classes,
                                            LoaderSettings(batch_size=batch_size, validation_fraction=0.0))


def write_predictions(directory: Path, predictions: dict) -> None:
    """``.npy`` per array, a flat ROOT tree ``scores`` for analyses, and ``info.json`` last,
    with the size and sha256 of every file."""
    import uproot

    arrays, info = predictions["arrays"], predictions["info"]
    written = (*ARRAYS, *(REGRESSION_ARRAYS if "regression" in info else ()))
    for name in written:
        with atomic_path(directory / f"{name}.npy") as temporary, open(temporary, "wb") as stream:
            np.save(stream, arrays[name], allow_pickle=False)
    branches = {f"prob_{c}": arrays["scores"][:, i] for i, c in enumerate(info["classes"])}
    branches.update(truth=arrays["truth"].astype(np.int32), label=arrays["label"].astype(np.int32),
                    process=arrays["process"].astype(np.int32), weight=arrays["weight"], mc_weight=arrays["mc_weight"])
    for i, name in enumerate(info["kinematics"]):
        branches[name] = arrays["kinematics"][:, i]
    for i, name in enumerate(info["extras"]):
        branches["ref_" + _branch_name(name)] = arrays["extras"][:, i]
    for index, entry in enumerate(info.get("regression", ())):
        name = _branch_name(entry["name"])
        branches[f"true_{name}"] = arrays[dataset.TARGET][:, index]
        branches[f"baseline_{name}"] = arrays[dataset.TARGET_BASELINE][:, index]
        for column, quantile in zip(entry["columns"], entry["quantiles"] or [None]):
            suffix = "" if quantile is None else f"_q{round(quantile * 1000):03d}"
            branches[f"pred_{name}{suffix}"] = arrays[REGRESSION][:, column]
    with atomic_path(directory / ROOT_FILE) as temporary, uproot.recreate(temporary) as file:
        file.mktree("scores", {k: v.dtype for k, v in branches.items()}).extend(branches)
    files = {path: file_record(directory / path) for path in (*(f"{n}.npy" for n in written), ROOT_FILE)}
    atomic_write_json(directory / INFO, {**info, "files": files})


def _branch_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def check_predictions(directory: Path, verify: bool = False) -> None:
    """Raise :class:`ModelError` naming the first written file that is missing or damaged."""
    for name, recorded in read_json(directory / INFO).get("files", {}).items():
        problem = file_problem(directory / name, recorded, verify)
        if problem:
            raise ModelError(f"scores file {directory / name} is damaged ({problem}); remove the scores with "
                             f"--remove-output and run the inference again")


def read_predictions(directory: Path) -> dict:
    check_predictions(directory)
    info = read_json(directory / INFO)
    arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in (*ARRAYS, *REGRESSION_ARRAYS)
              if f"{name}.npy" in info.get("files", {}) or (directory / f"{name}.npy").exists()}
    if "mc_weight" not in arrays:  # scores written before event weights existed
        arrays["mc_weight"] = np.ones(len(arrays["truth"]), np.float32)
    return {"arrays": arrays, "info": info}
