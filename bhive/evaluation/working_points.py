"""Working points: the discriminator thresholds at target mis-identification rates, with the
efficiency and mis-id versus pt and eta (binomial uncertainties)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bhive import plotting
from bhive.evaluation.scores import discriminator_values, discriminators_for
from bhive.roc import binned_efficiency, roc_curve, working_point
from bhive.store import atomic_write, atomic_write_json

#: light mis-identification targets of the loose, medium and tight working points
WORKING_POINTS = {"loose": 0.1, "medium": 0.01, "tight": 0.001}


#: discriminators that get the standard working points when the config names none
DEFAULT_DISCRIMINATORS = ("BvsL", "BvsAll", "CvsL")
TABLE_COLUMNS = ("discriminator", "working_point", "target_misid", "threshold", "efficiency", "misid")


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
            eff, eff_low, eff_high = binned_efficiency(passed[is_signal], x[is_signal], edges)
            mis, mis_low, mis_high = binned_efficiency(passed[used & ~is_signal], x[used & ~is_signal], edges)
            row[f"efficiency_vs_{axis}"], row[f"misid_vs_{axis}"] = eff.tolist(), mis.tolist()
            row[f"efficiency_vs_{axis}_interval"] = [eff_low.tolist(), eff_high.tolist()]
            row[f"misid_vs_{axis}_interval"] = [mis_low.tolist(), mis_high.tolist()]
            eff_err, mis_err = np.array([eff - eff_low, eff_high - eff]), np.array([mis - mis_low, mis_high - mis])
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
                          {"edges": np.asarray(edges), "efficiency": eff, "efficiency_low": eff_low,
                           "efficiency_high": eff_high, "misid": mis, "misid_low": mis_low, "misid_high": mis_high})
        rows.append(row)
    return rows



def write_working_points(predictions: Mapping, configured_discriminators: Mapping, configured: Mapping,
                         bins_pt, bins_eta, directory: Path) -> list[dict]:
    """``working_points.json`` and ``.csv``, and the efficiency plots in ``plots/``."""
    arrays, info = predictions["arrays"], predictions["info"]
    discriminators = discriminators_for(configured_discriminators, info["classes"])
    targets = configured or {name: WORKING_POINTS for name in DEFAULT_DISCRIMINATORS}
    rows = []
    for name, per_point in targets.items():
        if name in discriminators:
            signal, background = discriminators[name]
            rows += working_point_table(arrays, info, name, signal, background, bins_pt, bins_eta,
                                        directory / "plots", per_point)
    with atomic_write(directory / "working_points.csv", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(TABLE_COLUMNS)
        for row in rows:
            writer.writerow([row[k] for k in TABLE_COLUMNS])
    atomic_write_json(directory / "working_points.json", rows)
    return rows
