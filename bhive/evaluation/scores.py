"""What is evaluated: the discriminators a model's classes allow, and the selections of jets
(all, each process, each process with its evaluation cuts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bhive.discriminators import discriminator

#: the CMS discriminators, used for every one whose classes the model has (unless the config
#: defines its own)
STANDARD_DISCRIMINATORS = {
    "BvsL": (("b",), ("uds", "g")), "BvsC": (("b",), ("c",)), "CvsL": (("c",), ("uds", "g")),
    "CvsB": (("c",), ("b",)), "BvsAll": (("b",), ("c", "uds", "g")), "QvsG": (("uds",), ("g",)),
}

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


def event_weights(arrays, info) -> np.ndarray | None:
    """The jets' signed event weights where the dataset has them (its config names an
    ``event_weight`` branch), else None: every jet counts once."""
    return np.asarray(arrays["mc_weight"], dtype=np.float64) if info.get("event_weight") else None


def taken(weights: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if weights is None else weights[mask]


def discriminator_values(arrays, info, signal, background):
    """(values, is_signal, in_either) for one discriminator; jets of other classes are left out."""
    classes = info["classes"]
    values = discriminator(arrays["scores"], classes, signal, background)
    label = arrays["label"]
    is_signal = np.isin(label, [classes.index(c) for c in signal])
    is_background = np.isin(label, [classes.index(c) for c in background])
    return values, is_signal, is_signal | is_background

