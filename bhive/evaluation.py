"""Performance of a tagger on scored jets: ROC curves per discriminator and selection, working
points with efficiencies versus pt and eta, and the plots and tables behind the summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import plotting
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
    """'all jets', each process, and each process with its configured evaluation cuts."""
    kinematics = arrays["kinematics"]
    masks = {"all": np.ones(len(arrays["label"]), dtype=bool)}
    for index, process in enumerate(processes):
        in_process = arrays["process"] == index
        if not in_process.any():
            continue
        masks[process.name] = in_process
        if process.cuts:
            cut = in_process.copy()
            for key, (low, high) in process.cuts.items():
                values = {"pt": kinematics[:, 0], "eta": kinematics[:, 1], "abs_eta": np.abs(kinematics[:, 1])}[key]
                cut &= (values >= low) & (values < high)
            masks[f"{process.name} ({', '.join(f'{k} {lo:g}-{hi:g}' for k, (lo, hi) in process.cuts.items())})"] = cut
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
