"""Training a config's model on a dataset: build model and loader, fit, write the artifact.

The artifact directory holds what inference needs (``model.json`` with the model class,
hyperparameters, input description, classes and their truth labels, standardisation inside
the weights, config name and hash, code version) plus ``history.json`` and loss/accuracy
plots with their data.

With ``devices`` > 1 the training runs in that many processes started by torchrun
(:mod:`~bhive.training.launcher`); each rebuilds model and loader from the same inputs and
rank 0 writes what one process would have written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bhive import attacks, dataset, tracking
from bhive.config import Config
from bhive.plugins.dataloader import LoaderSettings, dataloader_class
from bhive.plugins.model import (MODEL_FILE, InputSpec, Model, ModelError, TrainingSettings, check_files,
                                 hyperparameter_names, model_class)
from bhive.store import atomic_directory, atomic_write_json, code_version, read_json
from bhive.training import launcher, trackers
from bhive.training.distributed import World, training_device, world
from bhive.training.state import TrainingError, seed_everything

ARTIFACT = "model"
HISTORY = "history.json"


def training_settings(cfg: Config, **overrides) -> TrainingSettings:
    """The config's training block with per-run overrides (None means: keep the config's)."""
    from_config = {k: getattr(cfg.training, k) for k in (
        "epochs", "batch_size", "learning_rate", "weight_decay", "optimizer", "scheduler", "warmup_epochs",
        "gradient_clip", "patience", "sampling", "negative_weights")}
    class_weights = cfg.training.class_weights
    rules = attacks.feature_rules(cfg.attack, cfg.path)
    base = TrainingSettings(**from_config, class_weights=class_weights if isinstance(class_weights, str)
                            else dict(class_weights), attack_factors=dict(rules.factors),
                            attack_non_negative=tuple(rules.non_negative))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def build(cfg: Config, model_name: str, dataset_dir: Path, seed: int = 42) -> Model:
    """The model ``model_name`` sized for the dataset, with the config's hyperparameters;
    its initial weights depend only on ``seed``."""
    meta = dataset.load_meta(dataset_dir)
    labels = set(meta["truth_labels"])
    for name, members in cfg.classes.items():
        unknown = [m for m in members if m not in labels]
        if unknown:
            raise ModelError(f"class '{name}' of config {cfg.name} uses truth label(s) {', '.join(unknown)} "
                             f"that the dataset {dataset_dir} does not have ({', '.join(meta['truth_labels'])}); "
                             f"rebuild the dataset with this config or fix `classes`")
    spec = InputSpec.from_meta(meta, cfg.classes, cfg.regression_targets)
    cls = model_class(model_name)
    cls.used_groups(spec)  # a clear error if the dataset lacks a group the model needs
    hyperparameters = cfg.model_settings.get(model_name, {})
    seed_everything(seed)
    try:
        return cls.create(spec, **hyperparameters) if hasattr(cls, "create") else cls(spec, **hyperparameters)
    except TypeError as error:
        raise ModelError(f"{cfg.path}: model_settings.{model_name}: {error}; {model_name} takes "
                         f"{', '.join(hyperparameter_names(cls)) or 'no hyperparameters'}") from None


def loader(cfg: Config, model: Model, dataset_dir: Path, settings: TrainingSettings,
           validation_dir: Path | None = None):
    loader_settings = LoaderSettings(batch_size=settings.batch_size, seed=settings.seed,
                                     validation_fraction=cfg.training.validation_fraction,
                                     sampling=settings.sampling, class_weights=settings.class_weights,
                                     negative_weights=settings.negative_weights)
    groups = (*type(model).used_groups(model.spec), *((dataset.TARGET,) if model.spec.targets else ()))
    return dataloader_class(cfg.dataloader)(dataset_dir, groups, cfg.classes, loader_settings,
                                            validation_directory=validation_dir)


def train(cfg: Config, model_name: str, dataset_dir: Path, output: Path, settings: TrainingSettings,
          resume: bool = False, validation_dir: Path | None = None, devices: int = 1) -> list[dict]:
    """Train on ``devices`` processes and write the artifact, history and plots into ``output``;
    returns the history."""
    if devices < 1:
        raise TrainingError(f"--devices {devices}: give the number of training processes, 1 or more")
    tracking.MlflowRun.of(settings)  # a bad tracking URI or a missing extra: said before anything starts
    if devices == 1:
        return train_here(cfg, model_name, dataset_dir, output, settings, resume, validation_dir)
    cls = model_class(model_name)
    if not issubclass(cls, torch.nn.Module):
        raise TrainingError(f"--devices {devices}: {model_name} is not a PyTorch model and trains in one process; "
                            f"use --devices 1")
    # what the last process would find wrong with the device, said before any process starts
    training_device(settings.device, World(devices - 1, devices, devices - 1))
    modules = [cls.__module__, dataloader_class(cfg.dataloader).__module__, *getattr(cfg, "plugins", ())]
    job = {"config": str(cfg.path), "overrides": cfg.overrides, "config_hash": cfg.hash,
           "modules": list(dict.fromkeys(modules)), "model": model_name, "dataset": str(dataset_dir),
           "output": str(output), "validation": str(validation_dir) if validation_dir else None,
           "settings": settings.to_json(), "resume": resume}
    launcher.launch(job, devices, output / "work")
    return read_json(output / HISTORY)


def train_here(cfg: Config, model_name: str, dataset_dir: Path, output: Path, settings: TrainingSettings,
               resume: bool = False, validation_dir: Path | None = None) -> list[dict]:
    """Train in this process (one of several inside a torchrun launch: then rank 0 writes)."""
    model = build(cfg, model_name, dataset_dir, settings.seed)
    data = loader(cfg, model, dataset_dir, settings, validation_dir)
    writes = world().rank == 0
    identity = {"config": cfg.name, "config_hash": cfg.hash, "code_version": code_version()}
    tracked = {**tracking.parameters(settings, model_name, cfg.model_settings.get(model_name, {})), **identity}
    # the settings with the MLflow run this process started, if any: the observers log into it
    with trackers.mlflow_training(settings, tracked, resume, writes) as run_settings:
        history = model.fit(data, run_settings, output / "work", resume=resume)
        if not writes:
            return history
        with atomic_directory(output / ARTIFACT) as artifact:
            model.save(artifact)
            description_path = artifact / MODEL_FILE
            description = read_json(description_path)
            description.update(classes={name: list(members) for name, members in cfg.classes.items()},
                               truth_labels=dataset.load_meta(dataset_dir)["truth_labels"], dataset=str(dataset_dir),
                               settings=run_settings.to_json(), **identity)
            atomic_write_json(description_path, description)
        atomic_write_json(output / HISTORY, history)
        plot_history(history, output / "plots")
        trackers.log_training(run_settings, history, [("model", output / ARTIFACT), ("", output / HISTORY),
                                                  ("plots", output / "plots")])
    return history


def check_artifact(directory: Path, verify: bool = False) -> None:
    """Raise :class:`ModelError` naming the first artifact file that is missing or has another
    size than ``model.json`` records (with ``verify``: another sha256)."""
    check_files(directory, read_json(directory / MODEL_FILE), verify)


def plot_history(history: list[dict], directory: Path) -> list[Path]:
    """Loss and accuracy per epoch, training and validation."""
    from bhive import plotting  # matplotlib: only the process that writes needs it

    written = []
    epochs = np.array([h["epoch"] for h in history])
    for quantity in ("loss", "accuracy"):
        fig, ax = plotting.figure()
        data = {"epoch": epochs, quantity: np.array([h[quantity] for h in history])}
        ax.plot(epochs, data[quantity], marker="o", label="training")
        if all(f"val_{quantity}" in h for h in history):
            data[f"val_{quantity}"] = np.array([h[f"val_{quantity}"] for h in history])
            ax.plot(epochs, data[f"val_{quantity}"], marker="s", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(quantity)
        ax.legend()
        written += plotting.save(fig, directory / quantity, data)
    return written
