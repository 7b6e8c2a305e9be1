"""Performance of a tagger on scored jets: ROC curves per discriminator and selection, working
points with efficiencies versus pt and eta, and the plots and tables behind the summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import plotting  # noqa: I001  (sets the non-interactive backend before pyplot)
import matplotlib.pyplot as plt
import mplhep
from bhive.discriminators import discriminator
from bhive.roc import CurveError, RocCurve, binned_efficiency, roc_curve, working_point

#: the CMS discriminators, used for every one whose classes the model has (unless the config
#: defines its own)
STANDARD_DISCRIMINATORS = {
    "BvsL": (("b",), ("uds", "g")), "BvsC": (("b",), ("c",)), "CvsL": (("c",), ("uds", "g")),
    "CvsB": (("c",), ("b",)), "BvsAll": (("b",), ("c", "uds", "g")), "QvsG": (("uds",), ("g",)),
}
#: light mis-identification targets of the loose, medium and tight working points
WORKING_POINTS = {"loose": 0.1, "medium": 0.01, "tight": 0.001}


def discriminators_for(configured: Mapping, classes: Sequence[str]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    if configured:
        return {name: (tuple(d.signal), tuple(d.background)) for name, d in configured.items()}
    return {name: (s, b) for name, (s, b) in STANDARD_DISCRIMINATORS.items() if set(s) | set(b) <= set(classes)}


def selections(arrays: Mapping[str, np.ndarray], info: Mapping, processes: Sequence) -> dict[str, np.ndarray]:
    """'all jets', each process of the scored dataset, and each process with the evaluation
    cuts the config gives it (matched by process name)."""
    kinematics = arrays["kinematics"]
    cuts_by_name = {p.name: p.cuts for p in processes}
    masks = {"all": np.ones(len(arrays["label"]), dtype=bool)}
    for index, name in enumerate(info["processes"]):
        in_process = arrays["process"] == index
        if not in_process.any():
            continue
        masks[name] = in_process
        cuts = cuts_by_name.get(name)
        if cuts:
            cut = in_process.copy()
            for key, (low, high) in cuts.items():
                values = {"pt": kinematics[:, 0], "eta": kinematics[:, 1], "abs_eta": np.abs(kinematics[:, 1])}[key]
                cut &= (values >= low) & (values < high)
            masks[f"{name} ({', '.join(f'{k} {lo:g}-{hi:g}' for k, (lo, hi) in cuts.items())})"] = cut
    return masks


def discriminator_values(arrays, info, signal, background):
    """(values, is_signal, in_either) for one discriminator; jets of other classes are left out."""
    classes = info["classes"]
    values = discriminator(arrays["scores"], classes, signal, background)
    label = arrays["label"]
    is_signal = np.isin(label, [classes.index(c) for c in signal])
    is_background = np.isin(label, [classes.index(c) for c in background])
    return values, is_signal, is_signal | is_background


def roc_curves(arrays, info, discriminators, masks) -> tuple[dict, list[str]]:
    """{discriminator: {selection: RocCurve}} and notes on curves that are undefined."""
    curves, notes = {}, []
    for name, (signal, background) in discriminators.items():
        values, is_signal, used = discriminator_values(arrays, info, signal, background)
        curves[name] = {}
        for selection, mask in masks.items():
            chosen = mask & used
            try:
                curves[name][selection] = roc_curve(values[chosen], is_signal[chosen], what=f"{name} ({selection})")
            except CurveError as error:
                notes.append(str(error))
    return curves, notes


def plot_rocs(curves: Mapping[str, RocCurve], name: str, signal, background, stem: Path) -> list[Path]:
    """CMS-style ROC: signal efficiency on x, mis-identification on a log y axis, AUC in the legend."""
    fig, ax = plotting.figure()
    data = {}
    for index, (label, curve) in enumerate(curves.items()):
        shown = curve.misid > 0
        ax.plot(curve.efficiency[shown], curve.misid[shown], label=f"{label} (AUC {curve.auc():.3f})")
        data[f"efficiency_{index}"], data[f"misid_{index}"] = curve.efficiency, curve.misid
        data[f"thresholds_{index}"] = curve.thresholds
    data["labels"] = np.asarray(list(curves))
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_ylim(5e-4, 1)
    ax.set_xlabel(f"{'+'.join(signal)} efficiency")
    ax.set_ylabel(f"{'+'.join(background)} mis-identification")
    ax.legend(title=name, loc="upper left", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return plotting.save(fig, stem, data)


def working_point_table(arrays, info, name, signal, background, bins_pt, bins_eta, directory: Path,
                        targets: Mapping[str, float] = WORKING_POINTS) -> list[dict]:
    """Thresholds at the target mis-ids, with efficiency and mis-id vs pt and eta (plots + arrays)."""
    values, is_signal, used = discriminator_values(arrays, info, signal, background)
    curve = roc_curve(values[used], is_signal[used], what=name)
    rows = []
    for wp_name, target in targets.items():
        point = working_point(curve, target, wp_name)
        passed = values >= point.threshold
        row = {"discriminator": name, "working_point": wp_name, "target_misid": target,
               "threshold": point.threshold, "efficiency": point.efficiency, "misid": point.misid}
        for axis, column, edges in (("pt", 0, bins_pt), ("eta", 1, bins_eta)):
            x = arrays["kinematics"][:, column]
            eff, eff_err = binned_efficiency(passed[is_signal], x[is_signal], edges)
            mis, mis_err = binned_efficiency(passed[used & ~is_signal], x[used & ~is_signal], edges)
            row[f"efficiency_vs_{axis}"], row[f"misid_vs_{axis}"] = eff.tolist(), mis.tolist()
            row[f"efficiency_vs_{axis}_error"], row[f"misid_vs_{axis}_error"] = eff_err.tolist(), mis_err.tolist()
            fig, ax = plotting.figure()
            centres = 0.5 * (np.asarray(edges[1:]) + np.asarray(edges[:-1]))
            half = 0.5 * np.diff(np.asarray(edges, dtype=float))
            ax.errorbar(centres, eff, xerr=half, yerr=eff_err, fmt="o", label=f"{'+'.join(signal)} efficiency")
            ax.errorbar(centres, mis, xerr=half, yerr=mis_err, fmt="s", label=f"{'+'.join(background)} mis-id")
            if np.any(np.nan_to_num(np.r_[eff, mis]) > 0):
                ax.set_yscale("log")
            ax.set_xlabel("jet $p_T$ [GeV]" if axis == "pt" else r"jet $\eta$")
            ax.set_ylabel("fraction tagged")
            ax.legend(title=f"{name} {wp_name} (threshold {point.threshold:.3f})", fontsize="small")
            plotting.save(fig, directory / f"{name}_{wp_name}_vs_{axis}",
                          {"edges": np.asarray(edges), "efficiency": eff, "efficiency_error": eff_err,
                           "misid": mis, "misid_error": mis_err})
        rows.append(row)
    return rows


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


def plot_comparison(curves: Mapping[str, RocCurve], name: str, signal, background, stem: Path) -> list[Path]:
    """Several taggers' ROC curves for one discriminator, with the ratio of each mis-id to the
    first curve's at the same signal efficiency in a lower panel."""
    plt.style.use(mplhep.style.CMS)
    fig, (ax, ratio_ax) = plt.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}, figsize=(10, 11))
    mplhep.cms.label(ax=ax, data=False, text="Preliminary", rlabel="")
    grid = np.linspace(0.05, 1.0, 96)
    reference_label, reference = next(iter(curves.items()))
    reference_misid = np.interp(grid, reference.efficiency, reference.misid)
    data = {"efficiency_grid": grid, "labels": np.asarray(list(curves))}
    for index, (label, curve) in enumerate(curves.items()):
        shown = curve.misid > 0
        ax.plot(curve.efficiency[shown], curve.misid[shown], label=f"{label} (AUC {curve.auc():.3f})")
        misid = np.interp(grid, curve.efficiency, curve.misid)
        ratio = np.divide(misid, reference_misid, out=np.full(len(grid), np.nan), where=reference_misid > 0)
        ratio_ax.plot(grid, ratio)
        data[f"misid_{index}"], data[f"ratio_{index}"] = misid, ratio
    ax.set_yscale("log")
    ax.set_ylim(5e-4, 1)
    ax.set_ylabel(f"{'+'.join(background)} mis-identification")
    ax.legend(title=name, loc="upper left", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    ratio_ax.axhline(1.0, color="grey", linewidth=1)
    ratio_ax.set_ylabel(f"ratio to {reference_label}", fontsize="small")
    ratio_ax.set_xlabel(f"{'+'.join(signal)} efficiency")
    ratio_ax.set_xlim(0, 1)
    return plotting.save(fig, stem, data)


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
