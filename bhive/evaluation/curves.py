"""ROC curves per discriminator and selection, with their AUCs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bhive import plotting
from bhive.evaluation.scores import discriminator_values, discriminators_for, event_weights, selections, taken
from bhive.roc import CurveError, RocCurve, roc_curve
from bhive.store import atomic_write_json

AUCS = "aucs.json"


def roc_curves(arrays, info, discriminators, masks) -> tuple[dict, list[str]]:
    """{discriminator: {selection: RocCurve}} and notes on curves that are undefined."""
    curves, notes = {}, []
    weights = event_weights(arrays, info)
    for name, (signal, background) in discriminators.items():
        values, is_signal, used = discriminator_values(arrays, info, signal, background)
        curves[name] = {}
        for selection, mask in masks.items():
            chosen = mask & used
            try:
                curves[name][selection] = roc_curve(values[chosen], is_signal[chosen], taken(weights, chosen),
                                                    what=f"{name} ({selection})")
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



def write_roc_curves(predictions: Mapping, configured: Mapping, processes: Sequence, directory: Path) -> dict:
    """``aucs.json`` and ``roc/<discriminator>.*`` for every discriminator and selection."""
    arrays, info = predictions["arrays"], predictions["info"]
    discriminators = discriminators_for(configured, info["classes"])
    curves, notes = roc_curves(arrays, info, discriminators, selections(arrays, info, processes))
    for name, per_selection in curves.items():
        signal, background = discriminators[name]
        if per_selection:
            plot_rocs(per_selection, name, signal, background, directory / "roc" / name)
    aucs = {"auc": {name: {selection: curve.auc() for selection, curve in per.items()} for name, per in curves.items()},
            "notes": notes}
    atomic_write_json(directory / AUCS, aucs)
    return aucs
