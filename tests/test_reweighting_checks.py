"""The reweighting checks a reviewer asks for: sparse bins (an error, or merged), event weights
in the histograms, non-positive bins, the weight cap, effective jets and weight shares, and
the closure spectra in finer bins; each against numpy by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bhive.reweighting import (
    BinSums,
    ReweightingSettings,
    SparseBinsError,
    bin_sums,
    closure_edges,
    closure_histograms,
    jet_weights,
    merged_regions,
    reference_weights,
)

BINS_PT = [30.0, 50.0, 100.0, 200.0, 500.0]
BINS_ETA = [-2.5, 0.0, 2.5]
LABELS = ["b", "c", "l"]


def jets(n: int, seed: int, event_weights: bool = False):
    rng = np.random.default_rng(seed)
    pt = 30 + rng.exponential(60, n)
    pt = pt[pt < 500]
    n = len(pt)
    eta = rng.uniform(-2.5, 2.5, n)
    truth = rng.choice(3, n, p=[0.5, 0.2, 0.3])
    weight = rng.choice([-1.0, 1.0], n, p=[0.2, 0.8]) * rng.normal(1.0, 0.1, n) if event_weights else None
    return pt, eta, truth, weight


def test_bin_sums_match_numpy_by_hand() -> None:
    pt, eta, truth, w = jets(3000, 1, event_weights=True)
    sums = bin_sums(pt, eta, truth, BINS_PT, BINS_ETA, 3, w)
    for label in range(3):
        chosen = truth == label
        for values, expected in ((None, sums.jets), (w, sums.sum_w), (np.abs(w), sums.sum_abs), (w * w, sums.sum_w2)):
            by_hand, _, _ = np.histogram2d(pt[chosen], eta[chosen], bins=[BINS_PT, BINS_ETA],
                                           weights=None if values is None else values[chosen])
            np.testing.assert_allclose(expected[label], by_hand, rtol=1e-12)


def test_sparse_bins_are_an_error_that_names_them() -> None:
    counts = np.full((3, 4, 2), 100.0)
    counts[1, 3, 1] = 4  # c in the last pt bin, positive eta
    with pytest.raises(SparseBinsError) as error:
        reference_weights(counts, LABELS, "b", ReweightingSettings(min_count=10), BINS_PT, BINS_ETA)
    message = str(error.value)
    assert "c in pt [200, 500) x eta [0, 2.5): 4.0" in message
    assert "coarser bins_pt/bins_eta" in message and "reweighting.merge_sparse: true" in message
    # empty bins are not sparse: a label without jets there needs no weight
    counts[1, 3, 1] = 0
    reference_weights(counts, LABELS, "b", ReweightingSettings(min_count=10), BINS_PT, BINS_ETA)


def test_sparseness_is_judged_on_effective_counts() -> None:
    """Ten jets whose weights nearly cancel are worth fewer than ten."""
    w = np.array([1.0] * 6 + [-1.0] * 4)
    sums = bin_sums(np.full(10, 40.0), np.full(10, 1.0), np.zeros(10, int), [30, 50], [0, 2], 1, w)
    assert sums.jets.sum() == 10
    assert sums.sum_w.sum() ** 2 / sums.sum_w2.sum() == pytest.approx(0.4)
    with pytest.raises(SparseBinsError, match="0.4"):
        reference_weights(sums, ["b"], "b", ReweightingSettings(min_count=1), [30, 50], [0, 2])


def test_merged_regions_leave_no_sparse_region_and_prefer_pt_neighbours() -> None:
    counts = np.full((3, 4, 2), 100.0)
    counts[1, 3, 1] = 4
    regions = merged_regions(BinSums.of_counts(counts), 10)
    # the sparse bin joins its pt neighbour in the same eta column; nothing else moves
    assert regions[3, 1] == regions[2, 1]
    assert len(np.unique(regions)) == 7
    for region in np.unique(regions):
        inside = regions == region
        assert all(counts[label][inside].sum() >= 10 for label in range(3))


def test_merged_weights_close_on_the_regions() -> None:
    """Weights constant on each region and, per region, the label's weighted sum proportional
    to the reference's: computed by hand on the merged region."""
    counts = np.full((3, 4, 2), 100.0)
    counts[0] *= np.array([[4.0], [3.0], [2.0], [1.0]])
    counts[1, 3, 1] = 4
    counts[2, 3, :] = [6, 7]
    weights, report = reference_weights(counts, LABELS, "b", ReweightingSettings(min_count=10, merge_sparse=True),
                                        BINS_PT, BINS_ETA)
    regions = merged_regions(BinSums.of_counts(counts), 10)
    assert report.merged_bins == 8 - len(np.unique(regions)) > 0
    for label in range(3):
        region_totals = [(counts[label][regions == r] * weights[label][regions == r]).sum() for r in np.unique(regions)]
        reference_totals = [counts[0][regions == r].sum() for r in np.unique(regions)]
        np.testing.assert_allclose(np.array(region_totals) / np.array(reference_totals),
                                   region_totals[0] / reference_totals[0], rtol=1e-12)
        for r in np.unique(regions):
            populated = (regions == r) & (counts[label] > 0)
            assert np.ptp(weights[label][populated]) == 0
        assert weights[label].max() == 1.0


def test_a_label_too_small_overall_cannot_be_merged_away() -> None:
    counts = np.full((2, 2, 1), 50.0)
    counts[1] = [[2.0], [3.0]]
    with pytest.raises(SparseBinsError, match=r"label\(s\) c \(5.0\) have fewer .* in all pt/eta bins together"):
        reference_weights(counts, ["b", "c"], "b", ReweightingSettings(min_count=10, merge_sparse=True))


def test_nonpositive_bins_count_as_empty_and_are_reported() -> None:
    pt = np.array([40.0, 40.0, 40.0, 80.0, 80.0, 40.0, 80.0])
    eta = np.ones(7)
    truth = np.array([0, 0, 0, 0, 0, 1, 1])
    w = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -2.0, 1.0])  # c's summed weight in the first pt bin is -2
    sums = bin_sums(pt, eta, truth, [30, 50, 100], [0, 2], 2, w)
    weights, report = reference_weights(sums, ["b", "c"], "b")
    assert weights[1, 0, 0] == 0 and weights[1, 1, 0] == 1
    assert report.nonpositive_bins == {"c": 1}
    assert any("not positive" in line and "'c'" in line for line in report.lines())


def test_weight_cap_bounds_each_jet_relative_to_its_label_mean() -> None:
    pt, eta, truth, _ = jets(20000, 2)
    counts = bin_sums(pt, eta, truth, BINS_PT, BINS_ETA, 3).sum_w
    counts[2, 3, 0] = 1  # one light jet where the reference has many: a huge ratio
    uncapped, _ = reference_weights(counts, LABELS, "b")
    capped, report = reference_weights(counts, LABELS, "b", ReweightingSettings(min_count=0, max_weight=5))
    for label in range(3):
        mean = (capped[label] * counts[label]).sum() / counts[label].sum()
        assert capped[label].max() <= 5 * mean * (1 + 1e-9) and capped[label].max() == 1.0
    assert (uncapped[2] * counts[2]).sum() / counts[2].sum() < 1 / 5  # the cap had work to do
    assert report.capped_jets == {"l": 1}
    # a cap that binds nothing changes nothing
    loose, report = reference_weights(counts[:2], LABELS[:2], "b", ReweightingSettings(min_count=0, max_weight=1e6))
    np.testing.assert_array_equal(loose, reference_weights(counts[:2], LABELS[:2], "b")[0])
    assert report.capped_jets == {}


def test_effective_jets_and_shares_match_a_jet_by_jet_computation() -> None:
    pt, eta, truth, w = jets(5000, 3, event_weights=True)
    sums = bin_sums(pt, eta, truth, BINS_PT, BINS_ETA, 3, w)
    weights, report = reference_weights(sums, LABELS, "b")
    per_jet = jet_weights(weights, pt, eta, truth, BINS_PT, BINS_ETA).astype(np.float64) * w
    total = per_jet.sum()
    for index, label in enumerate(LABELS):
        mine = per_jet[truth == index]
        summary = report.labels[label]
        assert summary.jets == (truth == index).sum()
        assert summary.effective_jets == pytest.approx(mine.sum() ** 2 / (mine**2).sum(), rel=1e-5)
        assert summary.weight_share == pytest.approx(mine.sum() / total, rel=1e-5)


def test_a_dominant_label_is_warned_about() -> None:
    """Few jets in fine bins: a label normalised to a huge single-bin ratio weighs almost
    nothing, so the others dominate the summed weight, and the report says so."""
    counts = np.full((4, 4, 2), 50.0)
    for label in (1, 2, 3):
        counts[label, 3, 1] = 1  # a lone jet where the reference has 50
    _, report = reference_weights(counts, ["b", "c", "uds", "g"], "b")
    assert report.labels["b"].weight_share > 0.5 and report.dominant_labels() == ["b"]
    (warning,) = report.warnings()
    assert "label 'b' carries" in warning and "training.class_weights" in warning and "merge_sparse" in warning
    assert warning in report.lines()
    _, quiet = reference_weights(counts, ["b", "c", "uds", "g"], "b", ReweightingSettings(min_count=0,
                                                                                          share_warning=4))
    assert not quiet.warnings()


def test_closure_spectra_in_finer_bins_match_numpy() -> None:
    pt, eta, truth, w = jets(4000, 4, event_weights=True)
    edges = closure_edges(BINS_PT)
    assert len(edges) == 4 * (len(BINS_PT) - 1) + 1 and set(BINS_PT) <= set(edges)
    pt_spectra, eta_spectra = closure_histograms(pt, eta, truth, w, BINS_PT, BINS_ETA, 3)
    for label in range(3):
        chosen = truth == label
        np.testing.assert_allclose(pt_spectra[label], np.histogram(pt[chosen], edges, weights=w[chosen])[0],
                                   rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(eta_spectra[label], np.histogram(eta[chosen], closure_edges(BINS_ETA),
                                                                    weights=w[chosen])[0], rtol=1e-10, atol=1e-10)
