"""Applying a trained model to a dataset: per-jet class probabilities with the jets' truth,
kinematics, process, reference-tagger scores and weights, as .npy files and a ROOT tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bhive import dataset
from bhive.config import Config
from bhive.store import atomic_write_json
from dataloaders.base import LoaderSettings, dataloader_class, label_map
from models.base import ModelError, load_model

ARRAYS = ("scores", "truth", "label", "kinematics", "process", "extras", "weight")
INFO = "info.json"
ROOT_FILE = "scores.root"


def predict_dataset(cfg: Config, model_dir: Path, dataset_dir: Path, batch_size: int = 4096) -> dict:
    """Scores of every jet of ``dataset_dir`` in stored order, with what evaluation needs."""
    model = load_model(model_dir)
    meta = dataset.load_meta(dataset_dir)
    for group in type(model).used_groups(model.spec):
        expected, found = list(model.spec.features[group]), list(meta["features"].get(group, []))
        if expected != found:
            raise ModelError(f"the model was trained on {group} features {expected}, but {dataset_dir} has "
                             f"{found}; score a dataset built with the same features")
    loader = dataloader_class(cfg.dataloader)(dataset_dir, type(model).used_groups(model.spec), cfg.classes,
                                              LoaderSettings(batch_size=batch_size, validation_fraction=0.0))
    scores = model.predict(loader.inference_batches()).astype(np.float32)
    columns = {name: [] for name in ("truth", "kinematics", "process", "extras", "weight")}
    for shard in meta["shards"]:
        arrays = dataset.open_shard(dataset_dir, shard["name"])
        for name in columns:
            columns[name].append(np.asarray(arrays[name]))
    out = {name: np.concatenate(parts) for name, parts in columns.items()}
    out["scores"] = scores
    out["label"] = label_map(meta["truth_labels"], cfg.classes)[out["truth"]].astype(np.int16)
    info = {"classes": list(model.classes), "truth_labels": meta["truth_labels"], "processes": meta["processes"],
            "extras": meta["extras"], "kinematics": meta["kinematics"], "model": str(model_dir),
            "dataset": str(dataset_dir), "n_jets": int(len(scores))}
    return {"arrays": out, "info": info}


def write_predictions(directory: Path, predictions: dict) -> None:
    """``.npy`` per array, ``info.json``, and a flat ROOT tree ``scores`` for analyses."""
    import uproot

    directory.mkdir(parents=True, exist_ok=True)
    arrays, info = predictions["arrays"], predictions["info"]
    for name in ARRAYS:
        np.save(directory / f"{name}.npy", arrays[name], allow_pickle=False)
    branches = {f"prob_{c}": arrays["scores"][:, i] for i, c in enumerate(info["classes"])}
    branches.update(truth=arrays["truth"].astype(np.int32), label=arrays["label"].astype(np.int32),
                    process=arrays["process"].astype(np.int32), weight=arrays["weight"])
    for i, name in enumerate(info["kinematics"]):
        branches[name] = arrays["kinematics"][:, i]
    for i, name in enumerate(info["extras"]):
        branches["ref_" + "".join(ch if ch.isalnum() else "_" for ch in name)] = arrays["extras"][:, i]
    temporary = directory / f".{ROOT_FILE}.tmp"
    with uproot.recreate(temporary) as file:
        file.mktree("scores", {k: v.dtype for k, v in branches.items()}).extend(branches)
    temporary.replace(directory / ROOT_FILE)
    atomic_write_json(directory / INFO, info)


def read_predictions(directory: Path) -> dict:
    from bhive.store import read_json

    return {"arrays": {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in ARRAYS},
            "info": read_json(directory / INFO)}
