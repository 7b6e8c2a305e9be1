"""Working points as CMS defines them.

- **Single discriminators** (BvsL, BvsAll, CvsL, ...): the loosest threshold whose
  mis-identification rate does not exceed a target, derived on each selection the config asks
  for (``working_points_on``: all jets and/or one process, e.g. ttbar as BTV does), with the
  efficiency and mis-id versus pt and eta on that selection.
- **Charm working points**: a pair of thresholds on two discriminators with the same signal
  (CvsL and CvsB): of the pairs whose mis-identification rates meet both targets, the one with
  the highest signal efficiency, found by a scan on a 2-D grid of thresholds.

Efficiencies carry 68% Clopper-Pearson intervals (:func:`bhive.roc.binned_efficiency`). Where
the dataset has event weights, every rate is a ratio of summed signed weights and the
intervals use the effective counts.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import plotting
from bhive.evaluation.scores import discriminator_values, discriminators_for, event_weights, selections, taken
from bhive.roc import binned_efficiency, roc_curve, working_point
from bhive.store import atomic_write, atomic_write_json

#: light mis-identification targets of the loose, medium and tight working points
WORKING_POINTS = {"loose": 0.1, "medium": 0.01, "tight": 0.001}
#: discriminators that get the standard working points when the config names none
DEFAULT_DISCRIMINATORS = ("BvsL", "BvsAll", "CvsL")
#: charm working points when the config names none: mis-id targets of CvsL (light) and CvsB (b)
CHARM_WORKING_POINTS = {"loose": {"CvsL": 0.9, "CvsB": 0.35}, "medium": {"CvsL": 0.25, "CvsB": 0.25},
                        "tight": {"CvsL": 0.03, "CvsB": 0.2}}
#: thresholds per axis of the charm scan: quantiles of the signal jets' values
GRID_POINTS = 200
TABLE_COLUMNS = ("discriminator", "derived_on", "working_point", "target_misid", "threshold", "efficiency", "misid")


def _plot_efficiency_maps(kinematics: np.ndarray, passed: np.ndarray, groups: Mapping[str, np.ndarray],
                          bins_pt, bins_eta, title: str, stem: Path, weights: np.ndarray | None = None) -> dict:
    """Fraction passing vs pt and eta for each group of jets (label -> mask), with intervals;
    returns the values for the tables."""
    values = {}
    for axis, column, edges in (("pt", 0, bins_pt), ("eta", 1, bins_eta)):
        fig, ax = plotting.figure()
        centres = 0.5 * (np.asarray(edges[1:]) + np.asarray(edges[:-1]))
        half = 0.5 * np.diff(np.asarray(edges, dtype=float))
        data = {"edges": np.asarray(edges)}
        for index, (label, mask) in enumerate(groups.items()):
            fraction, low, high = binned_efficiency(passed[mask], kinematics[mask, column], edges,
                                                    taken(weights, mask))
            ax.errorbar(centres, fraction, xerr=half, yerr=np.array([fraction - low, high - fraction]),
                        fmt="os^v"[index % 4], label=label)
            data[f"{index}_fraction"], data[f"{index}_low"], data[f"{index}_high"] = fraction, low, high
            values[f"{label}_vs_{axis}"] = fraction.tolist()
            values[f"{label}_vs_{axis}_interval"] = [low.tolist(), high.tolist()]
        data["labels"] = np.asarray(list(groups))
        if any(np.any(np.nan_to_num(data[f"{i}_fraction"]) > 0) for i in range(len(groups))):
            ax.set_yscale("log")
        ax.set_xlabel("jet $p_T$ [GeV]" if axis == "pt" else r"jet $\eta$")
        ax.set_ylabel("fraction tagged")
        ax.legend(title=title, fontsize="small")
        plotting.save(fig, stem.with_name(f"{stem.name}_vs_{axis}"), data)
    return values


def working_point_table(arrays, info, name, signal, background, bins_pt, bins_eta, directory: Path,
                        targets: Mapping[str, float] = WORKING_POINTS, selection: str = "all",
                        mask: np.ndarray | None = None) -> list[dict]:
    """Thresholds at the target mis-ids, derived on the jets of ``mask`` (the selection
    ``selection``), with efficiency and mis-id vs pt and eta on them (plots + arrays)."""
    values, is_signal, used = discriminator_values(arrays, info, signal, background)
    used = used if mask is None else used & mask
    weights = event_weights(arrays, info)
    curve = roc_curve(values[used], is_signal[used], taken(weights, used), what=f"{name} ({selection})")
    rows = []
    for wp_name, target in targets.items():
        point = working_point(curve, target, wp_name)
        row = {"discriminator": name, "derived_on": selection, "working_point": wp_name, "target_misid": target,
               "threshold": point.threshold, "efficiency": point.efficiency, "misid": point.misid}
        maps = _plot_efficiency_maps(
            arrays["kinematics"], values >= point.threshold,
            {"efficiency": used & is_signal, "misid": used & ~is_signal}, bins_pt, bins_eta,
            f"{name} {wp_name} on {selection} (threshold {point.threshold:.3f})",
            directory / f"{name}_{selection}_{wp_name}", weights)
        rows.append({**row, **maps})
    return rows


def pair_working_point(values: Sequence[np.ndarray], is_signal: np.ndarray, is_background: Sequence[np.ndarray],
                       targets: Sequence[float], grid_points: int = GRID_POINTS,
                       weights: np.ndarray | None = None) -> dict:
    """Thresholds (t_0, t_1) on two discriminators: a jet passes when both values reach their
    threshold; of the pairs on the grid whose mis-identification rates (background ``i`` of
    discriminator ``i``) do not exceed ``targets[i]``, the one with the highest signal
    efficiency. The grid holds, per axis, the quantiles of the signal jets' values. ``weights``:
    the jets' (signed) event weights, which then replace counts."""
    weights = np.ones(len(is_signal)) if weights is None else np.asarray(weights, dtype=np.float64)
    grids = []
    for axis in values:
        quantiles = np.quantile(axis[is_signal], np.linspace(0.0, 1.0, grid_points)) if is_signal.any() else []
        grids.append(np.unique(np.r_[-np.inf, quantiles]))
    # per jet, the index of the highest grid threshold it reaches on each axis
    ranks = [np.searchsorted(grid, axis, side="right") - 1 for grid, axis in zip(grids, values)]
    shape = (len(grids[0]), len(grids[1]))

    def passing(mask: np.ndarray) -> np.ndarray:
        """Jets of ``mask`` passing each threshold pair: counts at or above (i, j) on the grid."""
        counts = np.zeros(shape)
        np.add.at(counts, (ranks[0][mask], ranks[1][mask]), weights[mask])
        return counts[::-1, ::-1].cumsum(axis=0).cumsum(axis=1)[::-1, ::-1]

    def total(mask: np.ndarray) -> float:
        summed = float(weights[mask].sum())
        return summed if summed > 0 else 1.0

    efficiency = passing(is_signal) / total(is_signal)
    misids = [passing(mask) / total(mask) for mask in is_background]
    allowed = np.logical_and.reduce([misid <= target for misid, target in zip(misids, targets)])
    if not allowed.any():
        raise ValueError("no pair of thresholds meets both mis-identification targets")
    best = np.unravel_index(np.argmax(np.where(allowed, efficiency, -1.0)), shape)
    return {"thresholds": [float(grids[0][best[0]]), float(grids[1][best[1]])],
            "efficiency": float(efficiency[best]), "misids": [float(m[best]) for m in misids]}


def charm_working_points(arrays, info, discriminators: Mapping, configured: Mapping, bins_pt, bins_eta,
                         directory: Path, selection: str = "all", mask: np.ndarray | None = None) -> list[dict]:
    """The pair working points of ``configured`` ({name: {discriminator: target}}) on a selection."""
    rows = []
    for wp_name, targets in configured.items():
        names = list(targets)
        sides = [discriminator_values(arrays, info, *discriminators[n]) for n in names]
        is_signal = sides[0][1] & sides[1][1]
        is_background = [used & ~signal for _, signal, used in sides]
        chosen = np.ones(len(is_signal), bool) if mask is None else mask
        weights = event_weights(arrays, info)
        point = pair_working_point([v for v, _, _ in sides], is_signal & chosen,
                                   [b & chosen for b in is_background], [targets[n] for n in names], weights=weights)
        passed = (sides[0][0] >= point["thresholds"][0]) & (sides[1][0] >= point["thresholds"][1])
        groups = {"efficiency": is_signal & chosen,
                  **{f"misid_{n}": b & chosen for n, b in zip(names, is_background)}}
        maps = _plot_efficiency_maps(arrays["kinematics"], passed, groups, bins_pt, bins_eta,
                                     f"{'+'.join(names)} {wp_name} on {selection}",
                                     directory / f"{'_'.join(names)}_{selection}_{wp_name}", weights)
        rows.append({"discriminators": names, "derived_on": selection, "working_point": wp_name,
                     "target_misids": [targets[n] for n in names], "thresholds": point["thresholds"],
                     "efficiency": point["efficiency"], "misids": point["misids"], **maps})
    return rows


def _standard_charm_points(discriminators: Mapping) -> dict:
    return CHARM_WORKING_POINTS if {"CvsL", "CvsB"} <= set(discriminators) else {}


def write_working_points(predictions: Mapping, configured_discriminators: Mapping, configured: Mapping,
                         bins_pt, bins_eta, directory: Path, derived_on: Sequence[str] = ("all",),
                         processes: Sequence = (), charm: Mapping | None = None) -> dict:
    """``working_points.json``/``.csv`` and ``charm_working_points.json``/``.csv`` for every
    selection of ``derived_on``, and their efficiency plots in ``plots/``."""
    arrays, info = predictions["arrays"], predictions["info"]
    discriminators = discriminators_for(configured_discriminators, info["classes"])
    targets = configured or {name: WORKING_POINTS for name in DEFAULT_DISCRIMINATORS}
    charm = charm or _standard_charm_points(discriminators)
    masks = selections(arrays, info, processes)
    rows, charm_rows = [], []
    for selection in derived_on:
        if selection not in masks:  # a process without jets in this test dataset
            continue
        for name, per_point in targets.items():
            if name in discriminators:
                rows += working_point_table(arrays, info, name, *discriminators[name], bins_pt, bins_eta,
                                            directory / "plots", per_point, selection, masks[selection])
        charm_rows += charm_working_points(arrays, info, discriminators, charm, bins_pt, bins_eta,
                                           directory / "plots", selection, masks[selection])
    with atomic_write(directory / "working_points.csv", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(TABLE_COLUMNS)
        for row in rows:
            writer.writerow([row[k] for k in TABLE_COLUMNS])
    with atomic_write(directory / "charm_working_points.csv", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["discriminators", "derived_on", "working_point", "target_misids", "thresholds",
                         "efficiency", "misids"])
        for row in charm_rows:
            writer.writerow(["+".join(row["discriminators"]), row["derived_on"], row["working_point"],
                             ";".join(map(str, row["target_misids"])), ";".join(map(str, row["thresholds"])),
                             row["efficiency"], ";".join(map(str, row["misids"]))])
    atomic_write_json(directory / "charm_working_points.json", charm_rows)
    atomic_write_json(directory / "working_points.json", rows)
    return {"single": rows, "charm": charm_rows}


def rates_by_selection(predictions: Mapping, configured_discriminators: Mapping, points: Sequence[Mapping],
                       processes: Sequence = ()) -> list[dict]:
    """Efficiency and mis-identification of each working point of ``points`` (rows of
    ``working_points.json``: a threshold on a discriminator, derived on one selection) on every
    selection of the scored jets: all jets, each process, each process with its cuts. A
    threshold derived on all jets passes a different share of ttbar's b jets than of QCD's,
    which is what a deployment in one of them needs to know. NaN where a selection has no
    signal (or background) jet."""
    arrays, info = predictions["arrays"], predictions["info"]
    discriminators = discriminators_for(configured_discriminators, info["classes"])
    masks = selections(arrays, info, processes)
    weights = event_weights(arrays, info)
    weights = np.ones(len(arrays["label"])) if weights is None else weights

    def share(passed: np.ndarray, chosen: np.ndarray) -> float:
        total = float(weights[chosen].sum())
        return float(weights[chosen & passed].sum()) / total if chosen.any() and total != 0 else float("nan")

    rows = []
    for point in points:
        values, is_signal, used = discriminator_values(arrays, info, *discriminators[point["discriminator"]])
        passed = values >= point["threshold"]
        for selection, mask in masks.items():
            rows.append({"discriminator": point["discriminator"], "working_point": point["working_point"],
                         "derived_on": point["derived_on"], "threshold": point["threshold"], "selection": selection,
                         "efficiency": share(passed, used & is_signal & mask),
                         "misid": share(passed, used & ~is_signal & mask)})
    return rows
