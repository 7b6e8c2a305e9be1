"""ROC curves, AUC and working points, vectorised (one sort, cumulative sums, no per-threshold loop).

Conventions as in CMS tagging plots: the signal efficiency is the fraction of signal jets
with a discriminator value at or above a threshold, the mis-identification rate the same
fraction of background jets. Jets with equal values enter or leave together, so ties are
one point of the curve (as in scikit-learn). Weights, when given, replace counts; they may be
negative (NLO event weights), so a curve need not be monotonic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class CurveError(ValueError):
    """A curve that is undefined for the given jets (no signal or no background)."""


@dataclass(frozen=True)
class RocCurve:
    """Points ordered by decreasing threshold, starting at (0, 0) with threshold +inf."""

    thresholds: np.ndarray
    efficiency: np.ndarray       # signal efficiency
    misid: np.ndarray            # background mis-identification rate
    n_signal: float
    n_background: float

    def auc(self) -> float:
        """Area under the mis-id (x) vs efficiency (y) curve: P(signal scores above background)."""
        return float(np.trapezoid(self.efficiency, self.misid))


def roc_curve(scores: np.ndarray, is_signal: np.ndarray, weights: np.ndarray | None = None,
              what: str = "discriminator") -> RocCurve:
    scores = np.asarray(scores, dtype=np.float64)
    is_signal = np.asarray(is_signal, dtype=bool)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    signal_weight = np.where(is_signal[order], weights[order], 0.0)
    background_weight = np.where(is_signal[order], 0.0, weights[order])
    true_positives = np.cumsum(signal_weight)
    false_positives = np.cumsum(background_weight)
    n_signal = true_positives[-1] if len(scores) else 0.0
    n_background = false_positives[-1] if len(scores) else 0.0
    if n_signal <= 0 or n_background <= 0:
        missing = "signal" if n_signal <= 0 else "background"
        raise CurveError(f"the ROC curve of {what} is undefined: there are no {missing} jets in the selection")
    # last position of every distinct value: ties form one point
    last = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(sorted_scores) - 1]
    return RocCurve(
        thresholds=np.r_[np.inf, sorted_scores[last]],
        efficiency=np.r_[0.0, true_positives[last] / n_signal],
        misid=np.r_[0.0, false_positives[last] / n_background],
        n_signal=float(n_signal), n_background=float(n_background),
    )


@dataclass(frozen=True)
class WorkingPoint:
    name: str
    target_misid: float
    threshold: float
    efficiency: float
    misid: float


def working_point(curve: RocCurve, target_misid: float, name: str = "") -> WorkingPoint:
    """The loosest threshold whose mis-identification rate does not exceed ``target_misid``,
    nor does that of any tighter threshold (with negative weights the mis-id rate can dip
    while the threshold loosens; such a dip past the target does not count)."""
    if not 0 < target_misid < 1:
        raise ValueError(f"working point {name or target_misid}: the target mis-id must lie in (0, 1)")
    index = int(np.searchsorted(np.maximum.accumulate(curve.misid), target_misid, side="right")) - 1
    return WorkingPoint(name=name, target_misid=target_misid, threshold=float(curve.thresholds[index]),
                        efficiency=float(curve.efficiency[index]), misid=float(curve.misid[index]))


#: coverage of the efficiency intervals: one standard deviation of a normal distribution
INTERVAL_COVERAGE = 0.682689492137086


def clopper_pearson(passing: np.ndarray, total: np.ndarray,
                    coverage: float = INTERVAL_COVERAGE) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson (exact binomial) interval of ``passing / total``, element-wise.

    Unlike the normal approximation it is never empty at an efficiency of 0 or 1. Counts may
    be effective (non-integer) counts of weighted jets; empty entries give NaN.
    """
    from scipy.stats import beta

    passing, total = np.asarray(passing, dtype=np.float64), np.asarray(total, dtype=np.float64)
    alpha = 1.0 - coverage
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(passing > 0, beta.ppf(alpha / 2, passing, total - passing + 1), 0.0)
        high = np.where(passing < total, beta.ppf(1 - alpha / 2, passing + 1, total - passing), 1.0)
    empty = ~(total > 0)
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def binned_efficiency(passed: np.ndarray, values: np.ndarray, edges, weights: np.ndarray | None = None):
    """Fraction passing per bin of ``values`` with its Clopper-Pearson interval: (efficiency,
    lower, upper). Weighted jets enter through their effective counts, n_eff = (sum w)^2 /
    sum w^2, with the weighted efficiency; bins without jets give NaN."""
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right") - 1
    inside = (index >= 0) & (index < len(edges) - 1)
    n_bins = len(edges) - 1
    total = np.bincount(index[inside], weights=weights[inside], minlength=n_bins)
    total_squares = np.bincount(index[inside], weights=weights[inside] ** 2, minlength=n_bins)
    passing = np.bincount(index[inside], weights=(weights * passed)[inside], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        efficiency = passing / total
        effective = np.where(total_squares > 0, total**2 / total_squares, 0.0)
    low, high = clopper_pearson(efficiency * effective, effective)
    return efficiency, low, high
