"""Training weights: class balancing and negative event weights, against numpy by hand, and
in the loader (acceptance and loss weights); signed-weight ROC curves and working points
against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve as sklearn_roc_curve

from bhive import dataset
from bhive.jet_weighting import WeightingError, class_shares, mean_acceptance, weighting
from bhive.plugins.dataloader import LoaderSettings
from bhive.reweighting import bin_sums, jet_weights, reference_weights
from bhive.roc import roc_curve, working_point
from bhive.training.loop import _loss, per_jet_losses
from dataloaders.shards import ShardDataLoader

BINS_PT = [30.0, 60.0, 120.0, 500.0]
BINS_ETA = [-2.5, 0.0, 2.5]
LABELS = ["b", "c", "uds", "g"]


def sample(n: int = 20000, seed: int = 5, negative_fraction: float = 0.0):
    rng = np.random.default_rng(seed)
    pt = 30 + rng.exponential(50, n)
    pt = np.minimum(pt, 499.0)
    eta = rng.uniform(-2.5, 2.5, n)
    truth = rng.choice(4, n, p=[0.45, 0.1, 0.3, 0.15])
    event = None
    if negative_fraction:
        event = rng.choice([-1.0, 1.0], n, p=[negative_fraction, 1 - negative_fraction]) * rng.uniform(200, 400, n)
    sums = bin_sums(pt, eta, truth, BINS_PT, BINS_ETA, 4, event)
    weights, _ = reference_weights(sums, LABELS, "b")
    meta = {"weights": weights.tolist(), **sums.to_json(), "event_weight": "genWeight" if negative_fraction else None,
            "max_abs_event_weight": float(np.abs(event).max()) if negative_fraction else 1.0}
    reweight = jet_weights(weights, pt, eta, truth, BINS_PT, BINS_ETA)
    return meta, truth, reweight, event, np.stack([pt, eta], axis=1).astype(np.float32)


CLASSES = ["b", "c", "light"]
CLASS_OF_LABEL = np.array([0, 1, 2, 2])  # uds and g in one class


def per_class_totals(totals: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.bincount(CLASS_OF_LABEL[truth], weights=totals, minlength=3)


def test_without_class_or_event_weights_the_total_is_the_reweighting_weight() -> None:
    meta, truth, reweight, *_ = sample()
    plan = weighting(meta, CLASS_OF_LABEL, CLASSES)
    np.testing.assert_array_equal(plan.totals(reweight, truth), reweight.astype(np.float64))
    assert mean_acceptance(meta, CLASS_OF_LABEL, plan) == pytest.approx(reweight.mean(), rel=1e-6)


def test_balanced_classes_carry_equal_summed_weight() -> None:
    meta, truth, reweight, *_ = sample()
    plan = weighting(meta, CLASS_OF_LABEL, CLASSES, "balanced")
    totals = plan.totals(reweight, truth)
    per_class = per_class_totals(totals, truth)
    np.testing.assert_allclose(per_class / per_class.sum(), 1 / 3, rtol=1e-5)
    assert totals.max() <= 1.0 and np.isclose(plan.class_factors.max(), 1.0)
    assert class_shares(meta, CLASS_OF_LABEL, CLASSES, plan) == pytest.approx(dict.fromkeys(CLASSES, 1 / 3), rel=1e-5)
    # stochastic sampling: kept with the reweighting weight, balanced through the loss weights
    np.testing.assert_array_equal(plan.acceptance(reweight), reweight.astype(np.float64))
    sampled = plan.totals(reweight, truth) / reweight.astype(np.float64)
    np.testing.assert_allclose(plan.sampled_loss_weights(reweight, truth)[reweight > 0], sampled[reweight > 0])
    # the acceptance the loop plans its epoch with is the mean acceptance over the jets in classes
    assert mean_acceptance(meta, CLASS_OF_LABEL, plan) == pytest.approx(reweight.mean(), rel=1e-5)


def test_class_factors_by_hand() -> None:
    meta, truth, reweight, *_ = sample()
    plan = weighting(meta, CLASS_OF_LABEL, CLASSES, {"c": 4.0})
    np.testing.assert_allclose(plan.class_factors, [0.25, 1.0, 0.25, 0.25])
    np.testing.assert_allclose(plan.totals(reweight, truth), reweight * plan.class_factors[truth], rtol=1e-7)
    with pytest.raises(WeightingError, match="unknown class.*bb"):
        weighting(meta, CLASS_OF_LABEL, CLASSES, {"bb": 2.0})


def test_labels_outside_every_class_weigh_nothing() -> None:
    meta, truth, reweight, *_ = sample()
    plan = weighting(meta, np.array([0, 1, 2, -1]), CLASSES, "balanced")
    assert plan.class_factors[3] == 0 and (plan.totals(reweight, truth)[truth == 3] == 0).all()


@pytest.mark.parametrize("mode", ["drop", "abs", "signed"])
def test_negative_event_weights_by_mode(mode: str) -> None:
    meta, truth, reweight, event, _ = sample(negative_fraction=0.2)
    plan = weighting(meta, CLASS_OF_LABEL, CLASSES, "balanced", negative_weights=mode)
    scaled = event / np.abs(event).max()
    expected_event = {"drop": np.clip(scaled, 0, None), "abs": np.abs(scaled), "signed": scaled}[mode]
    totals = plan.totals(reweight, truth, event)
    np.testing.assert_allclose(totals, reweight * plan.class_factors[truth] * expected_event, rtol=1e-6)
    assert np.abs(totals).max() <= 1.0
    assert ((totals < 0).any()) == (mode == "signed")
    # balance holds for the weights as the mode uses them
    per_class = per_class_totals(totals, truth)
    np.testing.assert_allclose(per_class / per_class.sum(), 1 / 3, rtol=1e-4)
    acceptance = plan.acceptance(reweight, event)
    np.testing.assert_allclose(acceptance * plan.sampled_loss_weights(reweight, truth, event), totals, rtol=1e-6)
    assert mean_acceptance(meta, CLASS_OF_LABEL, plan) == pytest.approx(acceptance.mean(), rel=1e-4)


def test_signed_training_warns_about_convergence(caplog) -> None:
    meta, *_ = sample(negative_fraction=0.2)
    with caplog.at_level("WARNING", logger="bhive.jet_weighting"):
        weighting(meta, CLASS_OF_LABEL, CLASSES, negative_weights="signed")
    assert "negative" in caplog.text and "slows convergence" in caplog.text


def test_balanced_needs_every_class() -> None:
    meta, *_ = sample()
    meta["jet_counts"] = meta["histograms"] = meta["histograms_abs"] = meta["histograms_sumw2"] = (
        np.asarray(meta["jet_counts"]) * np.array([1, 0, 1, 1])[:, None, None]).tolist()
    with pytest.raises(WeightingError, match="class.*c.*no training weight"):
        weighting(meta, CLASS_OF_LABEL, CLASSES, "balanced")


def test_signed_roc_curve_equals_scikit_learn() -> None:
    rng = np.random.default_rng(9)
    n = 4000
    is_signal = rng.random(n) < 0.4
    scores = np.where(is_signal, rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)).round(2)  # ties too
    weights = rng.choice([-1.0, 1.0], n, p=[0.15, 0.85]) * rng.uniform(0.5, 1.5, n)
    curve = roc_curve(scores, is_signal, weights)
    fpr, tpr, thresholds = sklearn_roc_curve(is_signal, scores, sample_weight=weights, drop_intermediate=False)
    np.testing.assert_allclose(curve.misid, fpr, atol=1e-12)
    np.testing.assert_allclose(curve.efficiency, tpr, atol=1e-12)
    np.testing.assert_array_equal(curve.thresholds[1:], thresholds[1:])
    assert curve.auc() == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)
    assert (np.diff(curve.misid) < 0).any()  # negative weights: the curve is not monotonic


def test_working_point_ignores_a_dip_below_the_target_after_crossing_it() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    is_signal = rng.random(n) < 0.5
    scores = np.where(is_signal, rng.normal(1.5, 1.0, n), rng.normal(0.0, 1.0, n))
    weights = rng.choice([-1.0, 1.0], n, p=[0.3, 0.7])
    curve = roc_curve(scores, is_signal, weights)
    for target in (0.01, 0.05, 0.1, 0.3):
        point = working_point(curve, target)
        # by hand: walk from the tightest threshold, stop before the mis-id first exceeds the target
        first_above = np.flatnonzero(curve.misid > target)[0]
        assert point.threshold == curve.thresholds[first_above - 1]
        assert point.misid <= target


# -- in the loader and the loss -----------------------------------------------------------------

def write_dataset(directory, negative_fraction: float):
    """A dataset with event weights, written through the dataset module; global feature 0 is
    each jet's row number, so that batches can be traced back to jets."""
    meta, truth, reweight, event, kinematics = sample(6000, seed=11, negative_fraction=negative_fraction)
    n = len(truth)
    arrays = {"global": np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32),
              "truth": truth.astype(np.int16), "kinematics": kinematics, "process": np.zeros(n, np.int16),
              "extras": np.zeros((n, 0), np.float32), "weight": reweight, "mc_weight": event.astype(np.float32)}
    shards = []
    for index, rows in enumerate(np.array_split(np.arange(n), 3)):
        files = dataset._write_shard(directory / dataset.shard_name(index), {k: v[rows] for k, v in arrays.items()})
        shards.append({"name": dataset.shard_name(index), "n_jets": len(rows), "files": files})
    dataset.write_meta(directory, {**meta, "truth_labels": LABELS, "n_jets": n, "shards": shards,
                                   "features": {"global": ["row", "zero"]}, "n_candidates": {}})
    return meta, arrays


def loader(directory, sampling, negative_weights):
    settings = LoaderSettings(batch_size=256, seed=4, validation_fraction=0.0, sampling=sampling,
                              class_weights="balanced", negative_weights=negative_weights)
    return ShardDataLoader(directory, ("global",), {"b": ["b"], "c": ["c"], "light": ["uds", "g"]}, settings)


def test_loss_weight_batches_carry_the_training_weight_of_each_jet(tmp_path) -> None:
    meta, arrays = write_dataset(tmp_path, negative_fraction=0.2)
    data = loader(tmp_path, "loss_weight", "signed")
    plan = weighting(meta, CLASS_OF_LABEL, CLASSES, "balanced", "signed")
    expected = plan.totals(arrays["weight"], arrays["truth"], arrays["mc_weight"])
    for batch in data.train_batches(0):
        rows = batch["global"][:, 0].astype(int)
        np.testing.assert_allclose(batch["weight"], expected[rows], rtol=1e-6)
        np.testing.assert_array_equal(batch["label"], CLASS_OF_LABEL[arrays["truth"][rows]])


def test_stochastic_batches_sample_by_magnitude_and_keep_the_sign(tmp_path) -> None:
    meta, arrays = write_dataset(tmp_path, negative_fraction=0.2)
    data = loader(tmp_path, "stochastic", "signed")
    plan = weighting(meta, CLASS_OF_LABEL, CLASSES, "balanced", "signed")
    expected = plan.totals(arrays["weight"], arrays["truth"], arrays["mc_weight"])
    kept = np.zeros(3)
    epochs = 20
    for epoch in range(epochs):
        for batch in data.train_batches(epoch):
            rows = batch["global"][:, 0].astype(int)
            factors = plan.class_factors[arrays["truth"][rows]]
            np.testing.assert_allclose(batch["weight"], np.sign(arrays["mc_weight"][rows]) * factors, rtol=1e-6)
            kept += np.bincount(batch["label"], minlength=3, weights=batch["weight"])
    # kept with probability |reweighting x event weight|, weighted by the signed class factor:
    # on average each class carries its summed training weight, which balancing made equal
    acceptance = plan.acceptance(arrays["weight"], arrays["mc_weight"])
    summed = np.bincount(CLASS_OF_LABEL[arrays["truth"]], weights=expected, minlength=3) * epochs
    spread = np.bincount(CLASS_OF_LABEL[arrays["truth"]], weights=acceptance * plan.class_factors[arrays["truth"]] ** 2,
                         minlength=3) * epochs
    assert np.all(np.abs(kept - summed) < 4 * np.sqrt(spread))
    np.testing.assert_allclose(summed / summed.sum(), 1 / 3, rtol=1e-4)
    assert data.mean_acceptance() == pytest.approx(acceptance.mean(), rel=1e-4)


def test_the_loss_is_normalised_by_the_summed_magnitude() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
    labels = torch.tensor([0, 1, 0, 1])
    weights = torch.tensor([1.0, -1.0, 0.5, 1.0])
    per_jet = -torch.log_softmax(logits, dim=1)[torch.arange(4), labels]
    by_hand = (per_jet * weights).sum() / weights.abs().sum()
    batch = {"label": labels, "weight": weights}
    classification, _ = per_jet_losses(logits, None, None, batch)
    torch.testing.assert_close(classification, per_jet)
    assert float(_loss(classification, batch)) == pytest.approx(float(by_hand), rel=1e-6)
    ones = torch.ones(4)
    assert float(_loss(classification, {"label": labels, "weight": ones})) == pytest.approx(float(per_jet.mean()),
                                                                                          rel=1e-6)
