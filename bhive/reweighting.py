"""Reference-class pt x eta reweighting (as in b-hive and DeepJetCore), with the checks a
reviewer asks for: sparse bins, non-positive sums of event weights, a weight cap, and how much
each label weighs after weighting.

For every truth label c, with H_c its pt x eta histogram (summed event weights; jet counts
where the dataset has no event weight):

    w_c = (H_ref / max H_ref) / (H_c / max H_c),  then scaled so that max w_c = 1.

After weighting, every label has the reference label's spectrum. The weights are used as
acceptance probabilities (stochastic sampling) or as loss weights, and both need max 1.
Bins are half-open, [low, high), like the preselection on bins_pt/bins_eta. Bins where a
label has no jets get weight 0; bins where a label has jets but the reference has none get
weight 0 too, and those jets are reported, since they are lost to training. A bin whose summed
event weight is not positive counts as empty, and its jets are reported the same way.

A bin is *sparse* when some label has jets there but fewer than ``min_count`` effective jets,
n_eff = (sum w)^2 / sum w^2 (the jet count where every weight is 1): its weight would be a
ratio of a few jets. Sparse bins are an error that names them, unless ``merge_sparse`` merges
each with its neighbours into a region whose weight is derived from the region's summed
histograms (closure then holds per region, which the finer-binned closure plot shows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

#: closure plots split every pt and eta bin of the weights into this many bins
CLOSURE_SUBDIVISION = 4


class EmptyClassError(ValueError):
    """A truth label without jets (or only in bins the reference does not populate)."""


class SparseBinsError(ValueError):
    """pt x eta bins with too few jets of some label to derive a weight from."""


@dataclass(frozen=True)
class ReweightingSettings:
    """The config's ``reweighting`` section.

    min_count: effective jets a label needs in a bin where it has jets (0 turns the check off);
    merge_sparse: merge sparse bins with neighbours instead of failing;
    max_weight: cap on a jet's weight relative to the mean weight of its label (None: no cap);
    share_warning: warn when a label carries more than this multiple of 1/n_labels of the
    summed weight.
    """

    min_count: float = 10
    merge_sparse: bool = False
    max_weight: float | None = None
    share_warning: float = 2.0


@dataclass(frozen=True)
class BinSums:
    """Per (label, pt bin, eta bin): jets, summed event weight, summed |weight|, summed weight^2.

    Without event weights the four are the same jet counts.
    """

    jets: np.ndarray
    sum_w: np.ndarray
    sum_abs: np.ndarray
    sum_w2: np.ndarray

    @classmethod
    def of_counts(cls, counts: ArrayLike) -> BinSums:
        counts = np.asarray(counts, dtype=np.float64)
        return cls(counts, counts, counts, counts)

    def __add__(self, other: BinSums) -> BinSums:
        return BinSums(self.jets + other.jets, self.sum_w + other.sum_w, self.sum_abs + other.sum_abs,
                       self.sum_w2 + other.sum_w2)

    def to_json(self) -> dict[str, list]:
        return {"histograms": self.sum_w.tolist(), "histograms_abs": self.sum_abs.tolist(),
                "histograms_sumw2": self.sum_w2.tolist(), "jet_counts": self.jets.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> BinSums:
        """From :meth:`to_json`'s keys; a record with ``histograms`` alone holds jet counts."""
        if "jet_counts" not in data:
            return cls.of_counts(data["histograms"])
        return cls(*(np.asarray(data[key], dtype=np.float64) for key in (
            "jet_counts", "histograms", "histograms_abs", "histograms_sumw2")))


@dataclass(frozen=True)
class LabelSummary:
    """A label after weighting: its jets, their effective number and its share of the summed weight."""

    jets: int
    effective_jets: float
    weight_share: float


@dataclass(frozen=True)
class ReweightingReport:
    """What the weights did: jets lost to empty reference bins or non-positive bins, sparse
    bins merged, jets whose weight was capped, and each label's summary after weighting."""

    empty_reference_bins: dict[str, int] = field(default_factory=dict)
    nonpositive_bins: dict[str, int] = field(default_factory=dict)
    merged_bins: int = 0
    regions: int = 0
    capped_jets: dict[str, int] = field(default_factory=dict)
    labels: dict[str, LabelSummary] = field(default_factory=dict)
    share_warning: float = 2.0

    def dominant_labels(self) -> list[str]:
        """Labels whose share of the summed weight exceeds share_warning / n_labels."""
        limit = self.share_warning / max(len(self.labels), 1)
        return [label for label, summary in self.labels.items() if summary.weight_share > limit]

    def warnings(self) -> list[str]:
        limit = self.share_warning / max(len(self.labels), 1)
        return [f"reweighting: label '{label}' carries {self.labels[label].weight_share:.0%} of the summed weight "
                f"(more than {self.share_warning:g} x 1/{len(self.labels)} = {limit:.0%}): a model trained on it "
                f"will favour '{label}'; use coarser bins_pt/bins_eta or reweighting.merge_sparse, cap the "
                f"weights with reweighting.max_weight, or balance the classes with training.class_weights"
                for label in self.dominant_labels()]

    def lines(self) -> list[str]:
        """Human-readable summary: losses, merges and caps, then one line per label."""
        lines = []
        if not self.empty_reference_bins:
            lines.append("reweighting: every jet lies in a pt/eta bin populated by the reference label")
        lines += [f"reweighting: {n} jet(s) of label '{label}' lie in pt/eta bins without reference jets "
                  f"and get weight 0" for label, n in self.empty_reference_bins.items()]
        lines += [f"reweighting: {n} jet(s) of label '{label}' lie in pt/eta bins whose summed event weight is "
                  f"not positive; those bins count as empty and the jets get weight 0"
                  for label, n in self.nonpositive_bins.items()]
        if self.merged_bins:
            lines.append(f"reweighting: {self.merged_bins} sparse pt/eta bin(s) merged with neighbours; the "
                         f"weights are derived on {self.regions} regions")
        lines += [f"reweighting: {n} jet(s) of label '{label}' capped at max_weight x the label's mean weight"
                  for label, n in self.capped_jets.items()]
        lines += [f"reweighting: label '{label}': {s.jets} jets, {s.effective_jets:.1f} effective after weighting, "
                  f"{s.weight_share:.1%} of the summed weight" for label, s in self.labels.items()]
        return lines + self.warnings()

    def label_table(self) -> dict[str, dict]:
        return {label: {"jets": s.jets, "effective_jets": s.effective_jets, "weight_share": s.weight_share}
                for label, s in self.labels.items()}


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
               n_labels: int, weights: ArrayLike | None = None) -> np.ndarray:
    """float64 counts (summed ``weights`` where given) of shape (n_labels, n_pt_bins, n_eta_bins).

    Jets outside the bins, or with a truth index outside [0, n_labels), are not counted.
    """
    pt, eta, truth = np.ravel(pt), np.ravel(eta), np.ravel(truth)
    _check_lengths(pt=pt, eta=eta, truth=truth)
    i_pt, in_pt = _bin_index(pt, bins_pt)
    i_eta, in_eta = _bin_index(eta, bins_eta)
    keep = in_pt & in_eta & (truth >= 0) & (truth < n_labels)
    n_pt, n_eta = len(bins_pt) - 1, len(bins_eta) - 1
    flat = (truth[keep].astype(np.int64) * n_pt + i_pt[keep]) * n_eta + i_eta[keep]
    if weights is not None:
        weights = np.ravel(weights).astype(np.float64)
        _check_lengths(pt=pt, weights=weights)
        weights = weights[keep]
    counts = np.bincount(flat, weights=weights, minlength=n_labels * n_pt * n_eta)
    return counts.reshape(n_labels, n_pt, n_eta).astype(np.float64)


def bin_sums(pt: ArrayLike, eta: ArrayLike, truth: ArrayLike, bins_pt: ArrayLike, bins_eta: ArrayLike,
             n_labels: int, event_weight: ArrayLike | None = None) -> BinSums:
    """:class:`BinSums` of the jets; ``event_weight`` None: every jet weighs 1."""
    counts = histograms(pt, eta, truth, bins_pt, bins_eta, n_labels)
    if event_weight is None:
        return BinSums.of_counts(counts)
    w = np.ravel(event_weight).astype(np.float64)
    return BinSums(counts, *(histograms(pt, eta, truth, bins_pt, bins_eta, n_labels, values)
                             for values in (w, np.abs(w), w * w)))


def _effective(sum_w: np.ndarray, sum_w2: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sum_w2 > 0, sum_w * sum_w / sum_w2, 0.0)


def _bin_name(i_pt: int, i_eta: int, bins_pt: Sequence[float], bins_eta: Sequence[float]) -> str:
    return f"pt [{bins_pt[i_pt]:g}, {bins_pt[i_pt + 1]:g}) x eta [{bins_eta[i_eta]:g}, {bins_eta[i_eta + 1]:g})"


def _region_sums(values: np.ndarray, regions: np.ndarray, n_regions: int) -> np.ndarray:
    """(n_labels, n_regions) sums of ``values`` (n_labels, n_pt, n_eta) over each region."""
    flat = regions.ravel()
    return np.stack([np.bincount(flat, weights=label_values.ravel(), minlength=n_regions)
                     for label_values in values])


def _sparse(sum_w: np.ndarray, sum_w2: np.ndarray, min_count: float) -> np.ndarray:
    """Where some label has jets (a positive summed weight) but fewer than ``min_count`` effective."""
    effective = _effective(sum_w, sum_w2)
    return ((sum_w > 0) & (effective < min_count)).any(axis=0)


def merged_regions(sums: BinSums, min_count: float, labels: Sequence[str] | None = None) -> np.ndarray:
    """Region index per (pt bin, eta bin): sparse regions merged with neighbours until none is sparse.

    Deterministic: the sparsest region goes first and joins the neighbour it shares the most pt
    edges with (neighbours in pt first, as spectra fall steeply in pt), then eta edges, then the
    lower index. Raises :class:`SparseBinsError` when even all bins together are sparse.
    """
    n_pt, n_eta = sums.sum_w.shape[1:]
    labels = list(labels) if labels is not None else [str(index) for index in range(len(sums.sum_w))]
    regions = np.arange(n_pt * n_eta).reshape(n_pt, n_eta)
    while True:
        ids, compact = np.unique(regions, return_inverse=True)
        regions = compact.reshape(n_pt, n_eta)
        sum_w = _region_sums(sums.sum_w, regions, len(ids))
        sum_w2 = _region_sums(sums.sum_w2, regions, len(ids))
        sparse = np.flatnonzero(_sparse(sum_w, sum_w2, min_count))
        if len(sparse) == 0:
            return regions
        effective = np.where(sum_w > 0, _effective(sum_w, sum_w2), np.inf).min(axis=0)
        region = int(sparse[np.argmin(effective[sparse])])
        neighbour = _best_neighbour(regions, region)
        if neighbour is None:
            short = {labels[c]: effective for c, effective in enumerate(_effective(sum_w[:, 0], sum_w2[:, 0]))
                     if sum_w[c, 0] > 0 and effective < min_count}
            raise SparseBinsError(
                f"truth label(s) {', '.join(f'{label} ({n:.1f})' for label, n in short.items())} have fewer than "
                f"reweighting.min_count = {min_count:g} effective jets in all pt/eta bins together; add inputs, "
                f"or lower reweighting.min_count")
        regions = np.where(regions == region, neighbour, regions)


def _best_neighbour(regions: np.ndarray, region: int) -> int | None:
    inside = regions == region
    shared: dict[int, list[int]] = {}
    for axis, kind in ((0, 0), (1, 1)):  # axis 0: pt edges, axis 1: eta edges
        here, there = (inside[:-1], regions[1:]) if axis == 0 else (inside[:, :-1], regions[:, 1:])
        back_here, back_there = (inside[1:], regions[:-1]) if axis == 0 else (inside[:, 1:], regions[:, :-1])
        for other in np.concatenate([there[here], back_there[back_here]]):
            if other != region:
                counts = shared.setdefault(int(other), [0, 0])
                counts[kind] += 1
    if not shared:
        return None
    return min(shared, key=lambda other: (-shared[other][0], -shared[other][1], other))


def _check_sparse(sums: BinSums, labels: Sequence[str], min_count: float, bins_pt, bins_eta) -> None:
    effective = _effective(sums.sum_w, sums.sum_w2)
    sparse = (sums.sum_w > 0) & (effective < min_count)
    if not sparse.any():
        return
    found = np.argwhere(sparse)
    shown = [f"{labels[c]} in {_bin_name(p, e, bins_pt, bins_eta)}: {effective[c, p, e]:.1f}" for c, p, e in found[:8]]
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    raise SparseBinsError(
        f"{len(found)} (label, pt/eta bin) pair(s) have jets but fewer than reweighting.min_count = {min_count:g} "
        f"effective jets, too few to derive a weight from ({'; '.join(shown)}{more}); use coarser bins_pt/bins_eta, "
        f"set reweighting.merge_sparse: true to merge them with neighbouring bins, or lower reweighting.min_count")


def reference_weights(sums: BinSums | ArrayLike, labels: Sequence[str], reference: str,
                      settings: ReweightingSettings | None = None, bins_pt: Sequence[float] | None = None,
                      bins_eta: Sequence[float] | None = None) -> tuple[np.ndarray, ReweightingReport]:
    """Weights per (label, pt bin, eta bin), each label's maximum being 1, and the report.

    ``sums``: :class:`BinSums`, or plain jet counts. ``settings`` None: no sparse-bin check, no
    cap. Raises EmptyClassError for a label without jets, or whose jets all lie in bins without
    reference jets, since its weights would be undefined; SparseBinsError for sparse bins that
    are not to be merged.
    """
    sums = sums if isinstance(sums, BinSums) else BinSums.of_counts(sums)
    settings = settings or ReweightingSettings(min_count=0)
    counts = sums.sum_w
    labels = list(labels)
    if counts.ndim != 3 or counts.shape[0] != len(labels):
        raise ValueError(f"histograms of shape {counts.shape} do not match {len(labels)} truth labels "
                         f"({', '.join(labels)}); expected (n_labels, n_pt_bins, n_eta_bins)")
    if reference not in labels:
        raise ValueError(f"reference_flavour '{reference}' is not a truth label; choose one of {', '.join(labels)}")
    for label, histogram in zip(labels, counts):
        if not (histogram > 0).any():
            raise EmptyClassError(f"weights undefined: no jets with truth label '{label}' passed the selection "
                                  f"(or their summed event weight is not positive in any bin); remove the label "
                                  f"or add inputs that contain it")
    bins_pt = bins_pt if bins_pt is not None else np.arange(counts.shape[1] + 1)
    bins_eta = bins_eta if bins_eta is not None else np.arange(counts.shape[2] + 1)
    merged = 0
    if settings.min_count > 0 and settings.merge_sparse:
        regions = merged_regions(sums, settings.min_count, labels)
        n_regions = int(regions.max()) + 1
        merged = counts.shape[1] * counts.shape[2] - n_regions
        counts = _region_sums(counts, regions, n_regions)[:, regions]
    elif settings.min_count > 0:
        _check_sparse(sums, labels, settings.min_count, bins_pt, bins_eta)
    weights = _ratio_weights(counts, labels, reference)
    capped = {}
    if settings.max_weight is not None:
        weights, capped = _capped(weights, sums.sum_w, labels, settings.max_weight)
    report = ReweightingReport(
        empty_reference_bins=_jets_where(sums.jets, (sums.sum_w > 0) & (counts[labels.index(reference)] <= 0), labels),
        nonpositive_bins=_jets_where(sums.jets, (sums.jets > 0) & (sums.sum_w <= 0), labels),
        merged_bins=merged, regions=counts.shape[1] * counts.shape[2] - merged, capped_jets=capped,
        labels=summaries(sums, weights, labels), share_warning=settings.share_warning)
    return weights, report


def _ratio_weights(counts: np.ndarray, labels: list[str], reference: str) -> np.ndarray:
    ref = counts[labels.index(reference)]
    ref_shape = np.where(ref > 0, ref, 0.0) / ref.max()
    weights = np.zeros_like(counts)
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
    return weights


def _capped(weights: np.ndarray, sum_w: np.ndarray, labels: list[str],
            max_weight: float) -> tuple[np.ndarray, dict[str, int]]:
    """Weights no larger than ``max_weight`` x their label's mean weight, each label's maximum
    again 1. Capping lowers the mean, so it is repeated until it holds."""
    weights = weights.copy()
    capped: dict[str, int] = {}
    for index, label in enumerate(labels):
        w, n = weights[index], np.clip(sum_w[index], 0, None)
        hit = np.zeros(w.shape, dtype=bool)
        for _ in range(100):
            limit = max_weight * (w * n).sum() / n.sum()
            if w.max() <= limit * (1 + 1e-12):
                break
            hit |= w > limit
            w = np.minimum(w, limit)
            w = w / w.max()
        weights[index] = w
        if hit.any():
            capped[label] = int(np.round(n[hit].sum()))
    return weights, capped


def _jets_where(jets: np.ndarray, where: np.ndarray, labels: list[str]) -> dict[str, int]:
    lost = (jets * where).sum(axis=(1, 2))
    return {label: int(n) for label, n in zip(labels, lost) if n > 0}


def summaries(sums: BinSums, weights: np.ndarray, labels: Sequence[str]) -> dict[str, LabelSummary]:
    """Each label's jets, effective jets after weighting, (sum w)^2 / sum w^2 with w the jet's
    weight times its event weight, and its share of the summed weight of all labels."""
    weights = np.asarray(weights, dtype=np.float64)
    summed = (weights * sums.sum_w).sum(axis=(1, 2))
    squares = (weights * weights * sums.sum_w2).sum(axis=(1, 2))
    total = summed.sum()
    return {label: LabelSummary(jets=int(sums.jets[index].sum()),
                                effective_jets=float(summed[index] ** 2 / squares[index]) if squares[index] > 0 else 0.0,
                                weight_share=float(summed[index] / total) if total > 0 else 0.0)
            for index, label in enumerate(labels)}


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


def closure_edges(edges: Sequence[float], subdivision: int = CLOSURE_SUBDIVISION) -> np.ndarray:
    """``edges`` with every bin split into ``subdivision`` equal bins: finer than the weights'."""
    edges = np.asarray(edges, dtype=np.float64)
    steps = np.linspace(0, 1, subdivision + 1)[:-1]
    return np.r_[(edges[:-1, None] + np.diff(edges)[:, None] * steps).ravel(), edges[-1]]


def closure_histograms(pt: ArrayLike, eta: ArrayLike, truth: ArrayLike, weight: ArrayLike, bins_pt: Sequence[float],
                       bins_eta: Sequence[float], n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted pt and eta spectra per label in :func:`closure_edges` of the bins: (n_labels,
    fine pt bins) and (n_labels, fine eta bins), of the jets inside both ranges. Where the
    weights close only on their own bins (or merged regions), the finer bins show what is left."""
    pt, eta, truth, weight = (np.ravel(a) for a in (pt, eta, truth, weight))
    _check_lengths(pt=pt, eta=eta, truth=truth, weight=weight)
    truth = truth.astype(np.int64)
    i_pt, in_pt = _bin_index(pt, closure_edges(bins_pt))
    i_eta, in_eta = _bin_index(eta, closure_edges(bins_eta))
    keep = in_pt & in_eta & (truth >= 0) & (truth < n_labels)
    spectra = []
    for index, n_bins in ((i_pt, len(bins_pt) - 1), (i_eta, len(bins_eta) - 1)):
        n_fine = n_bins * CLOSURE_SUBDIVISION
        flat = truth[keep] * n_fine + index[keep]
        spectra.append(np.bincount(flat, weights=weight[keep].astype(np.float64),
                                   minlength=n_labels * n_fine).reshape(n_labels, n_fine))
    return spectra[0], spectra[1]
