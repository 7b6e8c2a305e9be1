"""Reference-class pt x eta reweighting (as in b-hive and DeepJetCore).

For every truth label c, with H_c its pt x eta histogram:

    w_c = (H_ref / max H_ref) / (H_c / max H_c),  then scaled so that max w_c = 1.

After weighting, every label has the reference label's spectrum. The weights are used as
acceptance probabilities (stochastic sampling) or as loss weights, and both need max 1.
Bins are half-open, [low, high), like the preselection on bins_pt/bins_eta. Bins where a
label has no jets get weight 0; bins where a label has jets but the reference has none get
weight 0 too, and those jets are reported, since they are lost to training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike


class EmptyClassError(ValueError):
    """A truth label without jets (or only in bins the reference does not populate)."""


@dataclass(frozen=True)
class ReweightingReport:
    """Jets per label that sit in bins where the reference label has no jets (weight 0).

    Only labels that lose jets that way are listed.
    """

    empty_reference_bins: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per affected label."""
        if not self.empty_reference_bins:
            return ["reweighting: every jet lies in a pt/eta bin populated by the reference label"]
        return [f"reweighting: {n} jet(s) of label '{label}' lie in pt/eta bins without reference jets "
                f"and get weight 0" for label, n in self.empty_reference_bins.items()]


def _bin_index(values: ArrayLike, edges: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each value in half-open bins [edge_i, edge_i+1) and whether it is inside."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must be a strictly increasing list of at least two numbers, got {edges}")
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right") - 1
    # NaN sorts past the last edge, so it lands outside as well
    inside = (index >= 0) & (index < len(edges) - 1)
    return index, inside


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-jet arrays differ in length: {lengths}")


def histograms(pt: ArrayLike, eta: ArrayLike, truth: ArrayLike, bins_pt: ArrayLike, bins_eta: ArrayLike,
               n_labels: int) -> np.ndarray:
    """float64 counts of shape (n_labels, n_pt_bins, n_eta_bins).

    Jets outside the bins, or with a truth index outside [0, n_labels), are not counted.
    """
    pt, eta, truth = np.ravel(pt), np.ravel(eta), np.ravel(truth)
    _check_lengths(pt=pt, eta=eta, truth=truth)
    i_pt, in_pt = _bin_index(pt, bins_pt)
    i_eta, in_eta = _bin_index(eta, bins_eta)
    keep = in_pt & in_eta & (truth >= 0) & (truth < n_labels)
    n_pt, n_eta = len(bins_pt) - 1, len(bins_eta) - 1
    flat = (truth[keep].astype(np.int64) * n_pt + i_pt[keep]) * n_eta + i_eta[keep]
    counts = np.bincount(flat, minlength=n_labels * n_pt * n_eta)
    return counts.reshape(n_labels, n_pt, n_eta).astype(np.float64)


def reference_weights(counts: np.ndarray, labels: Sequence[str],
                      reference: str) -> tuple[np.ndarray, ReweightingReport]:
    """Weights per (label, pt bin, eta bin), each label's maximum being 1.

    Raises EmptyClassError for a label without jets, or whose jets all lie in bins without
    reference jets, since its weights would be undefined.
    """
    counts = np.asarray(counts, dtype=np.float64)
    labels = list(labels)
    if counts.ndim != 3 or counts.shape[0] != len(labels):
        raise ValueError(f"histograms of shape {counts.shape} do not match {len(labels)} truth labels "
                         f"({', '.join(labels)}); expected (n_labels, n_pt_bins, n_eta_bins)")
    if reference not in labels:
        raise ValueError(f"reference_flavour '{reference}' is not a truth label; choose one of {', '.join(labels)}")
    for label, histogram in zip(labels, counts):
        if histogram.sum() <= 0:
            raise EmptyClassError(f"weights undefined: no jets with truth label '{label}' passed the selection; "
                                  f"remove the label or add inputs that contain it")
    ref = counts[labels.index(reference)]
    ref_shape = ref / ref.max()
    weights = np.zeros_like(counts)
    empty: dict[str, int] = {}
    for index, label in enumerate(labels):
        histogram = counts[index]
        populated = histogram > 0
        ratio = np.zeros_like(histogram)
        ratio[populated] = ref_shape[populated] / (histogram[populated] / histogram.max())
        if ratio.max() <= 0:
            raise EmptyClassError(f"weights undefined: every jet with truth label '{label}' lies in pt/eta bins "
                                  f"without '{reference}' jets; widen bins_pt/bins_eta or add inputs with "
                                  f"'{reference}' jets in that range")
        weights[index] = ratio / ratio.max()
        lost = populated & (ref <= 0)
        if lost.any():
            empty[label] = int(histogram[lost].sum())
    return weights, ReweightingReport(empty_reference_bins=empty)


def jet_weights(weights: np.ndarray, pt: ArrayLike, eta: ArrayLike, truth: ArrayLike, bins_pt: ArrayLike,
                bins_eta: ArrayLike) -> np.ndarray:
    """float32 weight of each jet's (label, pt bin, eta bin); jets outside the bins or unlabelled get 0."""
    weights = np.asarray(weights)
    pt, eta, truth = np.ravel(pt), np.ravel(eta), np.ravel(truth).astype(np.int64)
    _check_lengths(pt=pt, eta=eta, truth=truth)
    expected = (len(bins_pt) - 1, len(bins_eta) - 1)
    if weights.ndim != 3 or weights.shape[1:] != expected:
        raise ValueError(f"weights of shape {weights.shape} do not match the bins "
                         f"(expected (n_labels, {expected[0]}, {expected[1]}))")
    if truth.size and truth.max() >= weights.shape[0]:
        raise ValueError(f"truth index {truth.max()} has no weights: the weights cover {weights.shape[0]} labels")
    i_pt, in_pt = _bin_index(pt, bins_pt)
    i_eta, in_eta = _bin_index(eta, bins_eta)
    inside = in_pt & in_eta & (truth >= 0)
    out = np.zeros(len(truth), dtype=np.float32)
    out[inside] = weights[truth[inside], i_pt[inside], i_eta[inside]]
    return out


def reweighted_histograms(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Expected spectra after weighting: counts times weights, bin by bin."""
    counts, weights = np.asarray(counts, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if counts.shape != weights.shape:
        raise ValueError(f"histograms of shape {counts.shape} and weights of shape {weights.shape} differ")
    return counts * weights
