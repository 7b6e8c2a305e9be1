"""Input standardisation: per-feature mean and width from the training set.

Candidate features are averaged over real candidates only (the mask), so zero padding does
not pull the statistics. The result travels inside the model artifact, so inference applies
exactly what training used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

MIN_WIDTH = 1e-6  # constant features are left unscaled instead of divided by zero


def feature_statistics(batches: Iterable[Mapping[str, np.ndarray]], groups: Iterable[str],
                       max_jets: int = 200_000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mean, std) per feature of each group over at most ``max_jets`` jets; the group
    ``target`` (regression targets) over each target's valid (finite) values."""
    groups = tuple(groups)
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, float] = {}
    seen = 0
    for batch in batches:
        for group in groups:
            values = np.asarray(batch[group], dtype=np.float64)
            if group == "target":  # each target over the jets with a valid value
                valid = np.isfinite(values)
                rows, count = np.where(valid, values, 0.0), valid.sum(axis=0)
            elif group == "global":
                rows, count = values, len(values)
            else:
                rows = values[np.asarray(batch[f"mask_{group}"], dtype=bool)]
                count = len(rows)
            sums[group] = sums.get(group, 0) + rows.sum(axis=0)
            squares[group] = squares.get(group, 0) + (rows**2).sum(axis=0)
            counts[group] = counts.get(group, 0) + count
        seen += len(batch["label"])
        if seen >= max_jets:
            break
    statistics = {}
    for group in groups:
        n = np.maximum(counts.get(group, 0), 1)
        mean = sums[group] / n if group in sums else 0.0
        variance = np.maximum(squares[group] / n - mean**2, 0.0) if group in squares else 1.0
        width = np.sqrt(variance)
        width = np.where(width < MIN_WIDTH, 1.0, width)
        statistics[group] = (np.asarray(mean, dtype=np.float32), np.asarray(width, dtype=np.float32))
    return statistics
