"""ROC curves, AUC and working points against scikit-learn and hand counts."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from bhive.discriminators import discriminator
from bhive.roc import CurveError, binned_efficiency, roc_curve, working_point


@pytest.fixture
def sample():
    rng = np.random.default_rng(4)
    is_signal = rng.random(20_000) < 0.3
    scores = np.where(is_signal, rng.beta(5, 2, len(is_signal)), rng.beta(2, 5, len(is_signal)))
    return scores, is_signal


def test_auc_equals_scikit_learn(sample):
    scores, is_signal = sample
    assert roc_curve(scores, is_signal).auc() == pytest.approx(roc_auc_score(is_signal, scores), abs=1e-12)


def test_weighted_auc_equals_scikit_learn(sample):
    scores, is_signal = sample
    weights = np.random.default_rng(1).uniform(0.1, 2.0, len(scores))
    expected = roc_auc_score(is_signal, scores, sample_weight=weights)
    assert roc_curve(scores, is_signal, weights).auc() == pytest.approx(expected, abs=1e-12)


def test_ties_form_one_point_as_in_scikit_learn():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    is_signal = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    curve = roc_curve(scores, is_signal)
    fpr, tpr, thresholds = sklearn_roc_curve(is_signal, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve.misid, fpr)
    np.testing.assert_allclose(curve.efficiency, tpr)
    assert curve.auc() == pytest.approx(roc_auc_score(is_signal, scores))


def test_single_class_is_a_clear_error():
    with pytest.raises(CurveError, match="no background jets"):
        roc_curve(np.array([0.1, 0.2]), np.array([True, True]), what="BvsL")
    with pytest.raises(CurveError, match="no signal jets"):
        roc_curve(np.array([0.1, 0.2]), np.array([False, False]))


def test_working_point_reaches_its_target_on_an_independent_sample():
    rng = np.random.default_rng(7)

    def draw(n):
        is_signal = rng.random(n) < 0.5
        return np.where(is_signal, rng.normal(1.5, 1, n), rng.normal(0, 1, n)), is_signal

    scores, is_signal = draw(400_000)
    for target in (0.1, 0.01, 0.001):
        point = working_point(roc_curve(scores, is_signal), target)
        assert point.misid <= target
        # hand count on a fresh sample: binomial precision of the measured mis-id
        fresh, fresh_signal = draw(400_000)
        measured = np.mean(fresh[~fresh_signal] >= point.threshold)
        n_background = np.sum(~fresh_signal)
        assert abs(measured - target) < 5 * np.sqrt(target * (1 - target) / n_background) + 2 / n_background
        assert point.efficiency == pytest.approx(np.mean(scores[is_signal] >= point.threshold))


def test_binned_efficiency_with_clopper_pearson_intervals():
    from scipy.stats import binomtest

    values = np.array([5, 15, 15, 15, 25, 25])
    passed = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    efficiency, low, high = binned_efficiency(passed, values, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(efficiency[:3], [1.0, 2 / 3, 0.0])
    for index, (k, n) in enumerate([(1, 1), (2, 3), (0, 2)]):
        expected = binomtest(k, n).proportion_ci(confidence_level=0.682689492137086, method="exact")
        np.testing.assert_allclose([low[index], high[index]], [expected.low, expected.high], rtol=1e-9)
    # never a zero-width interval at an efficiency of 1 or 0
    assert low[0] < 1 and high[2] > 0
    assert np.isnan(efficiency[3]) and np.isnan(low[3]) and np.isnan(high[3])


def test_weighted_efficiency_uses_effective_counts():
    from scipy.stats import beta

    values = np.full(4, 5.0)
    passed = np.array([1, 1, 0, 0], dtype=bool)
    weights = np.array([2.0, 2.0, 1.0, 1.0])
    efficiency, low, high = binned_efficiency(passed, values, [0, 10], weights)
    n_eff = weights.sum() ** 2 / (weights**2).sum()
    k_eff = 4 / 6 * n_eff
    assert efficiency[0] == pytest.approx(4 / 6)
    assert low[0] == pytest.approx(beta.ppf(0.158655253931457, k_eff, n_eff - k_eff + 1))
    assert high[0] == pytest.approx(beta.ppf(0.841344746068543, k_eff + 1, n_eff - k_eff))


def test_discriminators_are_float64_and_the_auc_matches_scikit_learn_to_1e_9():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50_000, 4)) + np.repeat(np.eye(4), 12_500, axis=0) * 1.5
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    label = np.repeat(np.arange(4), 12_500)
    values = discriminator(probabilities, ["b", "c", "uds", "g"], ["b"], ["uds", "g"])
    assert values.dtype == np.float64
    used = label != 1
    reference = probabilities.astype(np.float64)
    by_hand = reference[:, 0] / (reference[:, 0] + reference[:, 2] + reference[:, 3])
    expected = roc_auc_score(label[used] == 0, by_hand[used])
    assert abs(roc_curve(values[used], label[used] == 0).auc() - expected) < 1e-9


def test_discriminator_by_class_name():
    probabilities = np.array([[0.6, 0.1, 0.2, 0.1], [0.1, 0.1, 0.4, 0.4]])
    classes = ["b", "c", "uds", "g"]
    np.testing.assert_allclose(discriminator(probabilities, classes, ["b"], ["uds", "g"]), [0.6 / 0.9, 0.1 / 0.9])
    reordered = probabilities[:, [3, 2, 1, 0]]
    np.testing.assert_allclose(discriminator(reordered, classes[::-1], ["b"], ["uds", "g"]),
                               [0.6 / 0.9, 0.1 / 0.9])
    with pytest.raises(ValueError, match="bb"):
        discriminator(probabilities, classes, ["bb"], ["uds"])
