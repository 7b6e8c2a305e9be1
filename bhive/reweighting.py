"""Reference-class pt x eta reweighting (as in b-hive and DeepJetCore).

For every truth label c, with H_c its pt x eta histogram:
    w_c = (H_ref / max H_ref) / (H_c / max H_c),  then scaled so that max w_c = 1.
After weighting, every label has the reference label's spectrum. The weights are used as
acceptance probabilities (stochastic sampling) or as loss weights, and both need max 1.
Bins where a label has jets but the reference has none get weight 0 and are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class EmptyClassError(ValueError):
    """A truth label without jets (or only in bins the reference does not populate)."""


@dataclass(frozen=True)
class ReweightingReport:
    """Jets per label that sit in bins where the reference label has no jets (weight 0)."""

    empty_reference_bins: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        if not self.empty_reference_bins:
            return ["reweighting: every jet lies in a bin populated by the reference label"]
        return [f"reweighting: {n} jet(s) of label '{label}' lie in pt/eta bins without reference jets "
                f"and get weight 0" for label, n in self.empty_reference_bins.items()]


def _bin_index(values, edges) -> tuple[np.ndarray, np.ndarray]:
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right") - 1
    inside = (index >= 0) & (index < len(edges) - 1)
    return index, inside


def histograms(pt, eta, truth, bins_pt, bins_eta, n_labels: int) -> np.ndarray:
    """Counts per (label, pt bin, eta bin); jets outside the bins are not counted."""
    i_pt, in_pt = _bin_index(pt, bins_pt)
    i_eta, in_eta = _bin_index(eta, bins_eta)
    truth = np.asarray(truth)
    keep = in_pt & in_eta & (truth >= 0) & (truth < n_labels)
    n_pt, n_eta = len(bins_pt) - 1, len(bins_eta) - 1
    flat = (truth[keep].astype(np.int64) * n_pt + i_pt[keep]) * n_eta + i_eta[keep]
    return np.bincount(flat, minlength=n_labels * n_pt * n_eta).reshape(n_labels, n_pt, n_eta).astype(np.float64)


def reference_weights(counts: np.ndarray, labels: Sequence[str], reference: str) -> tuple[np.ndarray, ReweightingReport]:
    """Weights per (label, pt bin, eta bin), each label's maximum being 1."""
    counts = np.asarray(counts, dtype=np.float64)
    ref = counts[list(labels).index(reference)]
    if ref.max() <= 0:
        raise EmptyClassError(f"weights undefined: no jets with the reference truth label '{reference}' passed "
                              f"the selection; remove the label or add inputs that contain it")
    ref_shape = ref / ref.max()
    weights = np.zeros_like(counts)
    empty = {}
    for index, label in enumerate(labels):
        h = counts[index]
        if h.max() <= 0:
            raise EmptyClassError(f"weights undefined: no jets with truth label '{label}' passed the selection; "
                                  f"remove the label or add inputs that contain it")
        populated = h > 0
        ratio = np.zeros_like(h)
        ratio[populated] = ref_shape[populated] / (h[populated] / h.max())
        if ratio.max() <= 0:
            raise EmptyClassError(f"weights undefined: every jet with truth label '{label}' lies in pt/eta bins "
                                  f"without '{reference}' jets; widen bins_pt/bins_eta or add inputs")
        weights[index] = ratio / ratio.max()
        lost = populated & (ref <= 0)
        if lost.any():
            empty[label] = int(h[lost].sum())
    return weights, ReweightingReport(empty_reference_bins=empty)


def jet_weights(weights: np.ndarray, pt, eta, truth, bins_pt, bins_eta) -> np.ndarray:
    """Each jet's weight; jets outside the bins get 0."""
    i_pt, in_pt = _bin_index(pt, bins_pt)
    i_eta, in_eta = _bin_index(eta, bins_eta)
    truth = np.asarray(truth, dtype=np.int64)
    inside = in_pt & in_eta & (truth >= 0)
    out = np.zeros(len(truth), dtype=np.float32)
    out[inside] = np.asarray(weights)[truth[inside], i_pt[inside], i_eta[inside]]
    return out


def reweighted_histograms(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The expected spectra after weighting: counts times weights, bin by bin."""
    return np.asarray(counts) * np.asarray(weights)
