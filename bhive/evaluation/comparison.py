"""Several trainings, and the reference taggers stored in the inputs, on one test dataset."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bhive import plotting
from bhive.evaluation.scores import discriminator_values, discriminators_for, event_weights, taken
from bhive.roc import RocCurve, roc_curve
from bhive.store import atomic_write_json


def plot_comparison(curves: Mapping[str, RocCurve], name: str, signal, background, stem: Path) -> list[Path]:
    """Several taggers' ROC curves for one discriminator, with the ratio of each mis-id to the
    first curve's at the same signal efficiency in a lower panel."""
    fig, (ax, ratio_ax) = plotting.figure(nrows=2, ncols=1, sharex=True, gridspec_kw={"height_ratios": [3, 1]},
                                          figsize=(10, 11))
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



def write_comparison(entries: Mapping[str, Mapping], configured: Mapping, directory: Path) -> dict:
    """Per discriminator, the ROC curves of every entry (label -> predictions; the first is the
    reference of the ratio panel) and of the reference taggers in the first entry's inputs;
    ``comparison.json`` holds their AUCs."""
    own = next(iter(entries.values()))
    arrays, info = own["arrays"], own["info"]
    results = {}
    for name, (signal, background) in discriminators_for(configured, info["classes"]).items():
        curves = {}
        for label, predictions in entries.items():
            values, is_signal, used = discriminator_values(predictions["arrays"], predictions["info"], signal,
                                                           background)
            weights = taken(event_weights(predictions["arrays"], predictions["info"]), used)
            curves[label] = roc_curve(values[used], is_signal[used], weights, what=f"{name} of {label}")
        for column, reference in enumerate(info["extras"]):
            tagger, _, reference_name = reference.partition("/")
            if reference_name == name:
                _, is_signal, used = discriminator_values(arrays, info, signal, background)
                curves[f"{tagger} (reference)"] = roc_curve(arrays["extras"][used, column], is_signal[used],
                                                            taken(event_weights(arrays, info), used),
                                                            what=f"{name} of {tagger}")
        if len(curves) > 1:
            plot_comparison(curves, name, signal, background, directory / "roc" / name)
        results[name] = {label: curve.auc() for label, curve in curves.items()}
    atomic_write_json(directory / "comparison.json", results)
    return results
