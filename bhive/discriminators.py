"""Discriminators from class probabilities, by class name (never by column position).

For signal classes S and background classes B, the discriminator is
    sum_{s in S} p_s / (sum_{s in S} p_s + sum_{b in B} p_b),
e.g. BvsL = p_b / (p_b + p_uds + p_g), the CMS convention for DeepJet-style taggers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def discriminator(probabilities: np.ndarray, classes: Sequence[str], signal: Sequence[str],
                  background: Sequence[str]) -> np.ndarray:
    """Per-jet discriminator value in [0, 1] (float64); 0 where signal and background sum to zero."""
    missing = [c for c in (*signal, *background) if c not in classes]
    if missing:
        raise ValueError(f"class(es) {', '.join(missing)} are not outputs of the model ({', '.join(classes)})")
    columns = {name: i for i, name in enumerate(classes)}
    # in float64: a float32 ratio turns distinct jets into ties, which moves the AUC at 1e-6
    probabilities = np.asarray(probabilities, dtype=np.float64)
    p_signal = probabilities[:, [columns[c] for c in signal]].sum(axis=1)
    p_background = probabilities[:, [columns[c] for c in background]].sum(axis=1)
    total = p_signal + p_background
    return np.divide(p_signal, total, out=np.zeros_like(p_signal, dtype=np.float64), where=total > 0)
