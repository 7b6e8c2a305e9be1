"""Tests for the reference-class pt x eta reweighting (bhive.reweighting).

Every check compares against an independent computation: np.histogram2d, plain loops over
bins or jets, or a stochastic acceptance experiment.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bhive.reweighting import (
    EmptyClassError,
    ReweightingReport,
    histograms,
    jet_weights,
    reference_weights,
    reweighted_histograms,
)

LABELS = ["b", "c", "uds", "g"]
BINS_PT = np.array([20.0, 30.0, 40.0, 60.0, 80.0, 120.0, 200.0, 400.0, 1000.0])
BINS_ETA = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jets whose pt and eta spectra differ per label, some outside the bins or unlabelled."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(np.arange(-1, len(LABELS)), size=n, p=[0.05, 0.3, 0.15, 0.3, 0.2]).astype(np.int16)
    # the reference (b) is the softest and most central, so every label keeps many jets after weighting
    slope = np.array([50.0, 60.0, 70.0, 80.0])[np.maximum(truth, 0)]
    pt = 15.0 + rng.exponential(slope)
    width = np.array([1.2, 1.4, 1.6, 1.8])[np.maximum(truth, 0)]
    eta = rng.normal(0.0, width)
    return pt, eta, truth


def loop_histograms(pt, eta, truth) -> np.ndarray:
    counts = np.zeros((len(LABELS), len(BINS_PT) - 1, len(BINS_ETA) - 1))
    for label in range(len(LABELS)):
        selected = truth == label
        counts[label], _, _ = np.histogram2d(pt[selected], eta[selected], bins=[BINS_PT, BINS_ETA])
    return counts


@pytest.fixture(scope="module")
def jets():
    pt, eta, truth = sample(200_000, seed=11)
    counts = histograms(pt, eta, truth, BINS_PT, BINS_ETA, len(LABELS))
    weights, report = reference_weights(counts, LABELS, "b")
    return pt, eta, truth, counts, weights, report


def test_histograms_match_numpy_histogram2d(jets) -> None:
    pt, eta, truth, counts, _, _ = jets
    assert counts.dtype == np.float64 and counts.shape == (4, 8, 5)
    np.testing.assert_array_equal(counts, loop_histograms(pt, eta, truth))
    assert counts.sum() < len(pt)  # jets outside the bins and unlabelled ones are not counted


def test_bins_are_half_open_like_the_preselection() -> None:
    pt = np.array([20.0, 1000.0, 999.9, np.nan, 25.0, 25.0])
    eta = np.array([0.0, 0.0, 2.5 - 1e-9, 0.0, -2.5, np.inf])
    truth = np.array([0, 0, 1, 0, 2, 0])
    counts = histograms(pt, eta, truth, BINS_PT, BINS_ETA, 3)
    assert counts.sum() == 3
    assert counts[0, 0, 2] == 1  # pt at the lower edge counts
    assert counts[1, -1, -1] == 1
    assert counts[2, 0, 0] == 1  # eta at the lower edge counts
    # the upper edge, NaN and inf fall outside


def test_truth_outside_the_labels_is_not_counted() -> None:
    counts = histograms([25.0, 25.0, 25.0], [0.0, 0.0, 0.0], [-1, 5, 1], BINS_PT, BINS_ETA, 2)
    assert counts.sum() == 1 and counts[1, 0, 2] == 1


def test_weights_have_maximum_one_per_label(jets) -> None:
    _, _, _, counts, weights, _ = jets
    assert weights.shape == counts.shape
    np.testing.assert_allclose(weights.reshape(len(LABELS), -1).max(axis=1), 1.0)
    assert (weights >= 0).all()
    # the reference is never reweighted where it has jets
    assert (weights[0][counts[0] > 0] == 1.0).all()


def test_weights_follow_the_formula_bin_by_bin(jets) -> None:
    _, _, _, counts, weights, _ = jets
    ref = counts[0]
    for label in range(len(LABELS)):
        h = counts[label]
        expected = np.zeros_like(h)
        for i in range(h.shape[0]):
            for j in range(h.shape[1]):
                if h[i, j] > 0:
                    expected[i, j] = (ref[i, j] / ref.max()) / (h[i, j] / h.max())
        np.testing.assert_allclose(weights[label], expected / expected.max(), rtol=1e-12)


def test_weighted_spectra_are_proportional_to_the_reference(jets) -> None:
    pt, eta, truth, counts, weights, _ = jets
    per_jet = jet_weights(weights, pt, eta, truth, BINS_PT, BINS_ETA)
    ref = counts[0]
    for label in range(len(LABELS)):
        selected = truth == label
        weighted, _, _ = np.histogram2d(pt[selected], eta[selected], bins=[BINS_PT, BINS_ETA],
                                        weights=per_jet[selected].astype(np.float64))
        both = (weighted > 0) & (ref > 0)
        assert both.sum() >= 30
        ratio = weighted[both] / ref[both]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # float32 per-jet weights
        np.testing.assert_allclose(reweighted_histograms(counts, weights)[label], weighted, rtol=1e-5)


def test_weights_do_not_depend_on_sample_size(jets) -> None:
    _, _, _, counts, weights, _ = jets
    scaled, _ = reference_weights(counts * 7.0, LABELS, "b")
    np.testing.assert_allclose(scaled, weights, rtol=1e-12)


def test_another_reference_label(jets) -> None:
    _, _, _, counts, _, _ = jets
    weights, _ = reference_weights(counts, LABELS, "uds")
    assert (weights[2][counts[2] > 0] == 1.0).all()
    after = reweighted_histograms(counts, weights)
    both = (after[0] > 0) & (counts[2] > 0)
    ratio = after[0][both] / counts[2][both]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)


def test_empty_bin_rules_on_a_hand_made_histogram() -> None:
    ref = np.array([[4.0, 0.0], [2.0, 1.0]])
    other = np.array([[2.0, 3.0], [0.0, 1.0]])
    weights, report = reference_weights(np.stack([ref, other]), ["ref", "other"], "ref")
    np.testing.assert_array_equal(weights[0], [[1.0, 0.0], [1.0, 1.0]])
    # ratio = (ref/4)/(other/3) = 1.5 and 0.75 where both are populated, 0 where the reference is empty
    np.testing.assert_allclose(weights[1], [[1.0, 0.0], [0.0, 0.5]])
    assert report.empty_reference_bins == {"other": 3}
    assert report.lines()[0] == ("reweighting: 3 jet(s) of label 'other' lie in pt/eta bins without "
                                 "reference jets and get weight 0")


def test_report_without_losses() -> None:
    counts = np.ones((2, 3, 2))
    weights, report = reference_weights(counts, ["a", "b"], "a")
    np.testing.assert_array_equal(weights, 1.0)
    assert report.empty_reference_bins == {} and report.nonpositive_bins == {} and not report.warnings()
    assert "every jet" in report.lines()[0] and len(report.lines()) == 1 + len(report.labels)


def test_label_without_jets_is_an_error() -> None:
    counts = np.ones((3, 2, 2))
    counts[1] = 0
    with pytest.raises(EmptyClassError, match=r"weights undefined: no jets with truth label 'c' passed the "
                                               r"selection .*; remove the label or add inputs that contain it"):
        reference_weights(counts, ["b", "c", "l"], "b")


def test_reference_without_jets_is_an_error() -> None:
    counts = np.ones((2, 2, 2))
    counts[0] = 0
    with pytest.raises(EmptyClassError, match="no jets with truth label 'b'"):
        reference_weights(counts, ["b", "l"], "b")


def test_label_only_where_the_reference_is_empty_is_an_error() -> None:
    counts = np.zeros((2, 2, 2))
    counts[0, 0, 0] = 5
    counts[1, 1, 1] = 5
    with pytest.raises(EmptyClassError, match="every jet with truth label 'l' lies in pt/eta bins without 'b' jets"):
        reference_weights(counts, ["b", "l"], "b")


def test_unknown_reference_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="reference_flavour 'x' is not a truth label; choose one of b, l"):
        reference_weights(np.ones((2, 2, 2)), ["b", "l"], "x")
    with pytest.raises(ValueError, match="do not match 3 truth labels"):
        reference_weights(np.ones((2, 2, 2)), ["b", "c", "l"], "b")


def test_jet_weights_equal_a_per_jet_lookup(jets) -> None:
    pt, eta, truth, _, weights, _ = jets
    pt, eta, truth = pt[:5000].copy(), eta[:5000].copy(), truth[:5000].copy()
    # the lower pt edge is inside; the upper pt edge, NaN and the upper eta edge are outside
    pt[:4] = [BINS_PT[0], BINS_PT[-1], np.nan, 25.0]
    eta[:4] = [0.0, 0.0, 0.0, BINS_ETA[-1]]
    truth[:4] = 0
    got = jet_weights(weights, pt, eta, truth, BINS_PT, BINS_ETA)
    assert got.dtype == np.float32 and got.shape == pt.shape
    expected = np.zeros(len(pt), dtype=np.float32)
    for k in range(len(pt)):
        if truth[k] < 0 or not (BINS_PT[0] <= pt[k] < BINS_PT[-1]) or not (BINS_ETA[0] <= eta[k] < BINS_ETA[-1]):
            continue
        i = next(i for i in range(len(BINS_PT) - 1) if BINS_PT[i] <= pt[k] < BINS_PT[i + 1])
        j = next(j for j in range(len(BINS_ETA) - 1) if BINS_ETA[j] <= eta[k] < BINS_ETA[j + 1])
        expected[k] = weights[truth[k], i, j]
    np.testing.assert_array_equal(got, expected)
    assert got[0] > 0 and got[1] == 0 and got[2] == 0 and got[3] == 0
    assert (got[truth < 0] == 0).all()


def test_jet_weights_refuse_inconsistent_inputs(jets) -> None:
    _, _, _, _, weights, _ = jets
    with pytest.raises(ValueError, match="truth index 4 has no weights"):
        jet_weights(weights, [25.0], [0.0], [4], BINS_PT, BINS_ETA)
    with pytest.raises(ValueError, match="do not match the bins"):
        jet_weights(weights, [25.0], [0.0], [0], BINS_PT[:-1], BINS_ETA)
    with pytest.raises(ValueError, match="differ in length"):
        jet_weights(weights, [25.0, 30.0], [0.0], [0], BINS_PT, BINS_ETA)


def acceptance_chi2(kept: np.ndarray, counts: np.ndarray, weights: np.ndarray, reference: np.ndarray):
    """chi2 and dof of accepted counts against the reference shape, in bins the reference populates.

    The variance per bin is binomial, n w (1 - w), from the counts and weights that drove the
    acceptance; the overall scale is fitted, hence one degree of freedom less.
    """
    usable = reference > 0
    shape = reference[usable] / reference[usable].sum()
    expected = kept[usable].sum() * shape
    variance = counts[usable] * weights[usable] * (1 - weights[usable])
    tested = variance > 0
    chi2 = ((kept[usable] - expected)[tested] ** 2 / variance[tested]).sum()
    return chi2, int(tested.sum()) - 1


def test_stochastic_acceptance_reproduces_the_reference_shape(jets) -> None:
    pt, eta, truth, counts, weights, _ = jets
    rng = np.random.default_rng(2024)
    uniform = rng.random(len(pt))

    def accept(w: np.ndarray) -> np.ndarray:
        accepted = uniform < jet_weights(w, pt, eta, truth, BINS_PT, BINS_ETA)
        return histograms(pt[accepted], eta[accepted], truth[accepted], BINS_PT, BINS_ETA, len(LABELS))

    after = accept(weights)
    for label in range(1, len(LABELS)):
        assert after[label].sum() > 10_000
        chi2, dof = acceptance_chi2(after[label], counts[label], weights[label], counts[0])
        assert stats.chi2.sf(chi2, dof) > 1e-3, f"label {LABELS[label]}: chi2 {chi2:.1f} for {dof} dof"

    # the test has power: weights towards another reference give a different shape and fail it
    wrong, _ = reference_weights(counts, LABELS, "g")
    after_wrong = accept(wrong)
    for label in (1, 2):
        chi2, dof = acceptance_chi2(after_wrong[label], counts[label], wrong[label], counts[0])
        assert stats.chi2.sf(chi2, dof) < 1e-6, f"label {LABELS[label]}: chi2 {chi2:.1f} for {dof} dof"


def test_reweighted_histograms_multiply_bin_by_bin() -> None:
    counts = np.arange(12.0).reshape(2, 3, 2)
    weights = np.linspace(0, 1, 12).reshape(2, 3, 2)
    np.testing.assert_array_equal(reweighted_histograms(counts, weights), counts * weights)
    with pytest.raises(ValueError, match="differ"):
        reweighted_histograms(counts, weights[:, :2])
