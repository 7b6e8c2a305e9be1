"""How far a test attack moves a tagger: per discriminator, the AUC and the efficiency and
mis-identification rate at the medium working point (threshold derived on the nominal jets,
kept fixed) for the nominal and for the attacked test jets."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bhive.evaluation.scores import discriminator_values, discriminators_for, event_weights
from bhive.roc import roc_curve, working_point

#: the mis-identification rate of the working point the table reports
MEDIUM_MISID = 0.01


def _rates(values: np.ndarray, is_signal: np.ndarray, weights: np.ndarray, threshold: float) -> tuple[float, float]:
    passed = values >= threshold
    signal, background = weights * is_signal, weights * ~is_signal
    return float((signal * passed).sum() / signal.sum()), float((background * passed).sum() / background.sum())


def robustness_table(nominal: Mapping, attacked: Mapping, configured: Mapping, attack: str) -> list[dict]:
    """One row per discriminator: AUC, and efficiency and mis-id at the nominal medium threshold,
    nominal and attacked (all jets; weighted by event weights where the dataset has them)."""
    info = nominal["info"]
    rows = []
    for name, (signal, background) in discriminators_for(configured, info["classes"]).items():
        row: dict = {"discriminator": name, "attack": attack}
        threshold = None
        for kind, predictions in (("nominal", nominal), ("attacked", attacked)):
            values, is_signal, used = discriminator_values(predictions["arrays"], predictions["info"], signal,
                                                           background)
            weights = event_weights(predictions["arrays"], predictions["info"])
            weights = np.ones(int(used.sum())) if weights is None else weights[used]
            curve = roc_curve(values[used], is_signal[used], weights, what=f"{name} ({kind})")
            if threshold is None:
                threshold = working_point(curve, MEDIUM_MISID).threshold
            efficiency, misid = _rates(values[used], is_signal[used], weights, threshold)
            row.update({f"auc_{kind}": curve.auc(), f"efficiency_{kind}": efficiency, f"misid_{kind}": misid})
        row["medium_threshold"] = threshold
        rows.append(row)
    return rows
