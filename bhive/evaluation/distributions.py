"""Distributions: each class's score per true class, the confusion matrix, and the input
features per true class (weighted and unweighted)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import plotting  # noqa: I001  (sets the non-interactive backend before pyplot)
import matplotlib.pyplot as plt
import mplhep
from bhive import dataset
from bhive.store import atomic_write_json
from bhive.truth import label_map


def confusion_matrix(arrays, n_classes: int) -> np.ndarray:
    """Fraction of jets of each true class (rows) assigned to each class by the highest score."""
    label = arrays["label"]
    used = label >= 0
    predicted = arrays["scores"][used].argmax(axis=1)
    counts = np.bincount(label[used] * n_classes + predicted, minlength=n_classes**2).reshape(n_classes, n_classes)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], stem: Path) -> list[Path]:
    fig, ax = plotting.figure()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    for (row, column), value in np.ndenumerate(matrix):
        ax.text(column, row, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class (highest score)")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return plotting.save(fig, stem, {"matrix": matrix, "classes": np.asarray(classes)})


def plot_score_distributions(arrays, classes: Sequence[str], directory: Path, bins: int = 50) -> list[Path]:
    """Each class's output score for jets of every true class, normalised to unit area."""
    written = []
    edges = np.linspace(0, 1, bins + 1)
    for index, output in enumerate(classes):
        fig, ax = plotting.figure()
        data = {"edges": edges}
        for true_index, true_class in enumerate(classes):
            values = arrays["scores"][arrays["label"] == true_index, index]
            counts, _ = np.histogram(values, bins=edges)
            data[f"true_{true_class}"] = counts
            if counts.sum():
                mplhep.histplot(counts / counts.sum(), edges, ax=ax, label=f"true {true_class}")
        ax.set_yscale("log")
        ax.set_xlabel(f"score of class {output}")
        ax.set_ylabel("fraction of jets")
        ax.legend(fontsize="small")
        written += plotting.save(fig, directory / f"score_{output}", data)
    return written



def write_score_distributions(predictions: Mapping, directory: Path) -> np.ndarray:
    """Score plots per class and the confusion matrix (``confusion.json``, ``plots/``)."""
    arrays, classes = predictions["arrays"], predictions["info"]["classes"]
    plot_score_distributions(arrays, classes, directory / "plots")
    matrix = confusion_matrix(arrays, len(classes))
    plot_confusion(matrix, classes, directory / "plots" / "confusion")
    atomic_write_json(directory / "confusion.json", {"classes": classes, "matrix": matrix.tolist()})
    return matrix


def plot_feature_distributions(values: Mapping[str, np.ndarray], labels: np.ndarray, weights: np.ndarray,
                               classes: Sequence[str], title: str, stem: Path, weighted: bool) -> list[Path]:
    """One panel per input feature, one line per true class (unit area), with or without the
    reweighting weights; ``values`` maps feature name to per-entry values."""
    names = list(values)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    plt.style.use(mplhep.style.CMS)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    data = {}
    for ax, name in zip(axes.flat, names):
        finite = values[name][np.isfinite(values[name])]
        low, high = (np.quantile(finite, [0.005, 0.995]) if len(finite) else (0.0, 1.0))
        edges = np.linspace(low, high if high > low else low + 1, 41)
        for index, cls in enumerate(classes):
            chosen = labels == index
            counts, _ = np.histogram(values[name][chosen], bins=edges, weights=weights[chosen] if weighted else None)
            data[f"{name}__{cls}"] = counts
            if counts.sum() > 0:
                ax.stairs(counts / counts.sum(), edges, label=cls)
        data[f"{name}__edges"] = edges
        ax.set_title(name, fontsize=11)
        ax.tick_params(labelsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=9, title="weighted" if weighted else "unweighted", title_fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return plotting.save(fig, stem, data)


def write_feature_distributions(dataset_dir: Path, classes: Mapping[str, Sequence[str]], max_jets: int,
                                directory: Path) -> dict:
    """Every input feature per true class (the leading candidate of each candidate group) from
    at most ``max_jets`` jets of a dataset, unweighted and weighted; ``features.json`` lists the plots."""
    meta = dataset.load_meta(dataset_dir)
    shards, n = [], 0
    for shard in meta["shards"]:
        shards.append(dataset.open_shard(dataset_dir, shard["name"]))
        n += shard["n_jets"]
        if n >= max_jets:
            break
    labels = label_map(meta["truth_labels"], classes)[np.concatenate([s["truth"] for s in shards])[:max_jets]]
    weights = np.concatenate([s["weight"] for s in shards])[:max_jets]
    written = []
    for group, names in meta["features"].items():
        values = np.concatenate([np.asarray(s[group][:max_jets]) for s in shards])[:max_jets]
        if values.ndim == 3:  # the leading candidate; jets without one are left out per feature
            present = np.concatenate([s[f"mask_{group}"][:, 0] for s in shards])[:max_jets]
            values = np.where(present[:, None], values[:, 0, :], np.nan)
        columns = {name: values[:, i] for i, name in enumerate(names)}
        for weighted in (False, True):
            kind = "weighted" if weighted else "unweighted"
            written += plot_feature_distributions(columns, labels, weights, list(classes), f"{group} ({kind})",
                                                  directory / f"{group}_{kind}", weighted)
    summary = {"plots": sorted(p.name for p in written), "n_jets": int(len(labels))}
    atomic_write_json(directory / "features.json", summary)
    return summary
