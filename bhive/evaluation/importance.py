"""Permutation importance of a trained tagger's inputs: how much AUC each discriminator loses
when one input no longer carries information about the jet it belongs to.

For every input feature (each global feature, each feature of a candidate group) and every
whole group, the feature's values are shuffled across the test jets and the jets scored
again with the model's own ``predict``, so any model is measured the same way (PyTorch or
not, whatever it computes from its inputs). The loss is the nominal AUC of a discriminator
minus its AUC on the shuffled jets, both on the same jets, with the evaluation's discriminator
and AUC code (weighted by event weights where the dataset has them).

What a shuffle does, so that the shuffled jets stay physical:

- a global feature: its column is permuted across the jets;
- a candidate feature: per candidate slot, its values are permuted among the jets that have a
  real candidate in that slot. Masks and padding are untouched (padded entries stay zero, no
  real candidate receives a padding zero), each slot keeps the distribution of its real
  values (the leading candidate's is not the fourth's), and the number of candidates, which
  is information of its own, stays with its jet;
- a whole group: each jet receives another jet's whole group, values and mask together (for
  the global group: all global features of another jet), so that multiplicity goes too.

Each shuffle is repeated with different seeds; the mean loss ranks the inputs and the
standard deviation of the repeats is its uncertainty. A loss within a few standard
deviations of zero means the model does not need the input (or finds the same information
in correlated inputs: permutation importance shares credit between correlated features).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bhive import dataset, plotting
from bhive.config import Config
from bhive.evaluation.curves import roc_curves
from bhive.evaluation.reduced_features import reduced_yaml
from bhive.evaluation.scores import discriminators_for
from bhive.inference import scoring_loader
from bhive.plugins.dataloader import Batch, DataLoaderPlugin
from bhive.plugins.model import InputSpec, Model, load_model
from bhive.store import atomic_write, atomic_write_json

IMPORTANCE = "importance.json"
TABLE = "importance.csv"
REDUCED = "reduced_features.yml"
#: streams of the seeded generators: which jets are used, and each shuffle
_SUBSET, _SHUFFLE = 0, 1
CSV_COLUMNS = ("discriminator", "kind", "group", "feature", "auc_loss", "std", "rank", "nominal_auc")


class ImportanceError(ValueError):
    """Importance that cannot be measured as asked."""


class Target(NamedTuple):
    """What one shuffle permutes: ``feature`` of ``group``, or with ``feature`` None the whole group."""

    group: str
    feature: str | None = None

    def label(self) -> str:
        return f"{self.group}: {self.feature}" if self.feature is not None else f"{self.group} (whole group)"


@dataclass(frozen=True)
class Jets:
    """The test jets importance is measured on: the model's input arrays as a dataloader
    batches them (groups and ``mask_<group>``), each jet's output-class index, and the event
    weights (None where the dataset has none: every jet counts once)."""

    inputs: dict[str, np.ndarray]
    label: np.ndarray
    event_weight: np.ndarray | None = None

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(key for key in self.inputs if not key.startswith("mask_"))

    def __len__(self) -> int:
        return len(self.label)


def select_jets(loader: DataLoaderPlugin, max_jets: int, seed: int) -> Jets:
    """At most ``max_jets`` jets of an output class, drawn from the loader's dataset with
    ``seed`` (the same jets for the same seed), read through the loader's
    ``inference_batches`` as inference reads them."""
    if max_jets < 1:
        raise ImportanceError(f"--max-jets {max_jets}: importance needs at least one jet; give a positive number")
    meta = loader.meta
    shards = [dataset.open_shard(loader.directory, shard["name"]) for shard in meta["shards"]]
    label = loader.class_of_label[np.concatenate([np.asarray(shard["truth"]) for shard in shards])]
    eligible = np.flatnonzero(label >= 0)
    if not len(eligible):
        raise ImportanceError(f"{loader.directory} has no jet of the output classes; score a test dataset with jets "
                              f"of them")
    rng = np.random.default_rng([seed, _SUBSET])
    chosen = np.sort(rng.choice(eligible, size=min(max_jets, len(eligible)), replace=False))
    parts, offset = [], 0
    for batch in loader.inference_batches():
        size = len(batch["label"])
        rows = chosen[np.searchsorted(chosen, offset):np.searchsorted(chosen, offset + size)] - offset
        if len(rows):
            parts.append({key: np.asarray(batch[key])[rows] for key in loader.batch_arrays})
        offset += size
        if offset > chosen[-1]:
            break
    inputs = {key: np.concatenate([part[key] for part in parts]) for key in loader.batch_arrays}
    if len(inputs[loader.groups[0]]) != len(chosen):
        raise ImportanceError(f"the dataloader {type(loader).__name__} yielded {offset} jets of {loader.directory}, "
                              f"whose meta.json lists {len(label)}; the dataset is damaged: build it again (a new "
                              f"--test-dataset-version)")
    weight = None
    if meta.get("event_weight"):
        weight = np.concatenate([np.asarray(shard[dataset.EVENT_WEIGHT]) for shard in shards])[chosen]
    return Jets(inputs, label[chosen], weight)


def batches(inputs: Mapping[str, np.ndarray], label: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """``inputs`` cut into batches as a dataloader's ``inference_batches`` yields them."""
    for begin in range(0, len(label), batch_size):
        yield {**{key: values[begin:begin + batch_size] for key, values in inputs.items()},
               "label": label[begin:begin + batch_size]}


def permuted(inputs: Mapping[str, np.ndarray], spec: InputSpec, target: Target, rng: np.random.Generator) -> dict:
    """``inputs`` with ``target`` shuffled across the jets (module docstring); the arrays not
    shuffled are shared, the shuffled ones are copies."""
    group = target.group
    mask_key = f"mask_{group}"
    if target.feature is None:
        order = rng.permutation(len(inputs[group]))
        return {**inputs, **{key: inputs[key][order] for key in (group, mask_key) if key in inputs}}
    column = spec.column(group, target.feature)
    values = inputs[group].copy()
    if group == "global":
        values[:, column] = values[rng.permutation(len(values)), column]
    else:
        mask = np.asarray(inputs[mask_key], dtype=bool)
        for slot in range(values.shape[1]):
            real = np.flatnonzero(mask[:, slot])
            values[real, slot, column] = values[rng.permutation(real), slot, column]
    return {**inputs, group: values}


def aucs(model: Model, inputs: Mapping[str, np.ndarray], jets: Jets, discriminators: Mapping,
         batch_size: int) -> tuple[dict[str, float], list[str]]:
    """AUC per discriminator of the model's scores of ``inputs`` (the jets of ``jets``, maybe
    shuffled), computed as ROCCurveTask computes it, and notes on undefined curves."""
    scores = np.asarray(model.predict(batches(inputs, jets.label, batch_size)), dtype=np.float64)
    arrays = {"scores": scores, "label": jets.label,
              "mc_weight": jets.event_weight if jets.event_weight is not None else np.ones(len(jets))}
    info = {"classes": list(model.classes), "event_weight": jets.event_weight is not None}
    curves, notes = roc_curves(arrays, info, discriminators, {"all": np.ones(len(jets), dtype=bool)})
    return {name: per["all"].auc() for name, per in curves.items() if "all" in per}, notes


def targets(spec: InputSpec, groups: Sequence[str]) -> list[Target]:
    """Every feature of every group (in the dataset's order), then every whole group."""
    return [*(Target(group, name) for group in groups for name in spec.features[group]),
            *(Target(group) for group in groups)]


@dataclass(frozen=True)
class Importance:
    """Per discriminator, the nominal AUC; per target, the AUC losses, (repeats, discriminators)."""

    nominal: dict[str, float]
    losses: dict[Target, np.ndarray]
    n_jets: int
    event_weighted: bool
    notes: tuple[str, ...] = ()


def measure_importance(model: Model, jets: Jets, configured_discriminators: Mapping, repeats: int, seed: int,
                       batch_size: int = 4096) -> Importance:
    """The AUC loss of every target of :func:`targets`, ``repeats`` shuffles each; shuffle
    ``repeat`` of target ``i`` is drawn from ``(seed, repeat, i)`` alone, so the result does
    not depend on what else is measured."""
    if repeats < 2:
        raise ImportanceError(f"--repeats {repeats}: the uncertainty is the spread of the repeats, which needs at "
                              f"least 2; give --repeats 2 or more (default 5)")
    discriminators = discriminators_for(configured_discriminators, model.classes)
    nominal, notes = aucs(model, jets.inputs, jets, discriminators, batch_size)
    if not nominal:
        raise ImportanceError(f"no discriminator has signal and background jets among the {len(jets)} jets "
                              f"({'; '.join(notes)}); raise --max-jets or check the config's discriminators")
    kept = {name: discriminators[name] for name in nominal}
    losses = {}
    for index, target in enumerate(targets(model.spec, jets.groups)):
        rows = []
        for repeat in range(repeats):
            shuffled = permuted(jets.inputs, model.spec, target, np.random.default_rng([seed, _SHUFFLE, repeat, index]))
            values, _ = aucs(model, shuffled, jets, kept, batch_size)
            rows.append([nominal[name] - values[name] for name in nominal])
        losses[target] = np.asarray(rows)
    return Importance(nominal, losses, len(jets), jets.event_weight is not None, tuple(notes))


def ranking(importance: Importance, discriminator: str, whole_groups: bool) -> list[dict]:
    """Features (or whole groups) of one discriminator, most important first: mean AUC loss,
    standard deviation of the repeats, rank (1 = largest loss) and the repeats' losses."""
    column = list(importance.nominal).index(discriminator)
    rows = []
    for target, losses in importance.losses.items():
        if (target.feature is None) != whole_groups:
            continue
        values = losses[:, column]
        rows.append({"group": target.group, **({} if whole_groups else {"feature": target.feature}),
                     "auc_loss": float(values.mean()), "std": float(values.std(ddof=1)),
                     "losses": values.tolist()})
    rows.sort(key=lambda row: -row["auc_loss"])  # stable: ties keep the dataset's order
    return [{**row, "rank": rank} for rank, row in enumerate(rows, start=1)]


def feature_scores(importance: Importance) -> dict[Target, float]:
    """Per feature, its largest mean AUC loss over the discriminators: a feature one
    discriminator needs is kept even if another does not."""
    return {target: float(losses.mean(axis=0).max()) for target, losses in importance.losses.items()
            if target.feature is not None}


def plot_ranking(rows: Sequence[dict], discriminator: str, top: int, stem: Path) -> list[Path]:
    """Horizontal bars of the ``top`` largest mean AUC losses, most important at the top, with
    the repeats' standard deviation as error bars."""
    shown = list(rows[:top])
    labels = [Target(row["group"], row.get("feature")).label() for row in shown]
    means = np.asarray([row["auc_loss"] for row in shown])
    stds = np.asarray([row["std"] for row in shown])
    # the margins are fixed before the CMS label is placed: a layout change afterwards would
    # move the axes under it; the left one holds "group: feature" labels
    height = 2.4 + 0.5 * max(len(shown), 1)
    fig, ax = plotting.figure(figsize=(13, height), gridspec_kw={"left": 0.38, "right": 0.96,
                                                                "bottom": 1.4 / height, "top": 1 - 0.8 / height})
    positions = np.arange(len(shown))[::-1]
    ax.barh(positions, means, xerr=stds, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_yticks(positions, labels, fontsize="x-small")
    ax.tick_params(axis="y", which="minor", left=False, right=False)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_xlabel(f"{discriminator} AUC loss")
    return plotting.save(fig, stem, {"labels": np.asarray(labels, dtype=str), "auc_loss": means, "std": stds})


def write_importance(importance: Importance, reduced_yaml: str, top: int, directory: Path,
                     settings: Mapping) -> dict:
    """``importance.json``, ``importance.csv``, ``plots/<discriminator>.*`` (the ``top``
    features) and ``reduced_features.yml`` (``reduced_yaml``)."""
    result = {**settings, "n_jets": importance.n_jets, "event_weighted": importance.event_weighted,
              "notes": list(importance.notes), "discriminators": {}}
    table = []
    for name, nominal in importance.nominal.items():
        features, groups = ranking(importance, name, False), ranking(importance, name, True)
        result["discriminators"][name] = {"nominal_auc": nominal, "features": features, "groups": groups}
        for kind, rows in (("feature", features), ("group", groups)):
            table += [{"discriminator": name, "kind": kind, "feature": "", **row, "nominal_auc": nominal}
                      for row in rows]
        plot_ranking(features, name, top, directory / "plots" / name)
    with atomic_write(directory / TABLE, newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([row[column] for column in CSV_COLUMNS] for row in table)
    with atomic_write(directory / REDUCED) as stream:
        stream.write(reduced_yaml)
    atomic_write_json(directory / IMPORTANCE, result)
    return result


def write_feature_importance(cfg: Config, model_dir: Path, dataset_dir: Path, directory: Path, repeats: int = 5,
                             max_jets: int = 50_000, top: int = 10, seed: int = 42) -> dict:
    """The input ranking of the model saved in ``model_dir`` on at most ``max_jets`` jets of
    the test dataset ``dataset_dir``: every output of :func:`write_importance` in ``directory``."""
    model = load_model(model_dir)
    loader = scoring_loader(cfg, model, dataset_dir)
    importance = measure_importance(model, select_jets(loader, max_jets, seed), cfg.discriminators, repeats, seed)
    used = type(model).used_groups(model.spec)
    skipped = [group for group in ("global", *cfg.candidate_groups) if group not in used]
    title = f"{type(model).__name__} (largest mean AUC loss over {', '.join(importance.nominal)})"
    snippet = reduced_yaml(feature_scores(importance), cfg, top, title, skipped)
    settings = {"model": type(model).__name__, "repeats": repeats, "max_jets": max_jets, "seed": seed, "top": top}
    return write_importance(importance, snippet, top, directory, settings)
