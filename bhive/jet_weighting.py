"""The weight a training jet carries: its pt x eta reweighting weight, times its event weight
(negative ones handled as ``training.negative_weights`` says), times its output class's
balancing factor (``training.class_weights``).

- ``negative_weights``: ``drop`` gives jets with a negative event weight weight 0, ``abs``
  takes |w|, ``signed`` keeps the sign: such jets pull the loss the other way, which is the
  unbiased use of NLO samples but adds variance, so training converges slower.
- ``class_weights``: ``none`` keeps the reweighted class fractions, ``balanced`` gives every
  output class the same summed weight, ``{class: factor}`` scales classes by hand.

Event weights are divided by the dataset's largest |event weight| and class factors by their
maximum, so every jet's total lies in [-1, 1]. In stochastic sampling a jet is kept with
probability |reweighting weight x event weight| and its loss weight is its class factor with
the sign of its event weight: balancing classes through the acceptance instead would throw
away most jets of the abundant classes every epoch (on the default sample the mean
acceptance falls from 0.64 to 0.26, and a six-epoch DeepJet training is left short). In
``loss_weight`` mode every jet is kept and the total is its loss weight. Without event weights
and class weights the total is the reweighting weight, as it always was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bhive.reweighting import BinSums

logger = logging.getLogger(__name__)

NEGATIVE_WEIGHT_MODES = ("drop", "abs", "signed")
CLASS_WEIGHT_MODES = ("none", "balanced")


class WeightingError(ValueError):
    """Class or event weights that cannot be applied to a dataset."""


@dataclass(frozen=True)
class JetWeighting:
    """How to turn a jet's stored weights into its training weight (see module docstring)."""

    class_factors: np.ndarray     # per truth label of the dataset; 0 for labels outside every class
    event_scale: float            # 1 / the largest |event weight| of the dataset
    negative_weights: str = "abs"

    def totals(self, weight: np.ndarray, truth: np.ndarray, event_weight: np.ndarray | None = None) -> np.ndarray:
        """float64 training weight per jet, in [-1, 1]: the loss weight in ``loss_weight`` mode
        and of validation jets."""
        return self.acceptance_weights(weight, event_weight) * self.class_factors[np.asarray(truth, dtype=np.int64)]

    def acceptance(self, weight: np.ndarray, event_weight: np.ndarray | None = None) -> np.ndarray:
        """Stochastic sampling: the probability of keeping each jet."""
        return np.abs(self.acceptance_weights(weight, event_weight))

    def sampled_loss_weights(self, weight: np.ndarray, truth: np.ndarray,
                             event_weight: np.ndarray | None = None) -> np.ndarray:
        """The loss weight of a jet kept by stochastic sampling: its class factor, with the sign
        of its event weight."""
        return np.sign(self.acceptance_weights(weight, event_weight)) \
            * self.class_factors[np.asarray(truth, dtype=np.int64)]

    def acceptance_weights(self, weight: np.ndarray, event_weight: np.ndarray | None = None) -> np.ndarray:
        """Reweighting weight times scaled event weight (as ``negative_weights`` says), per jet."""
        total = np.asarray(weight, dtype=np.float64).copy()
        if event_weight is not None:
            scaled = np.asarray(event_weight, dtype=np.float64) * self.event_scale
            if self.negative_weights == "drop":
                scaled = np.clip(scaled, 0.0, None)
            elif self.negative_weights == "abs":
                scaled = np.abs(scaled)
            total *= scaled
        return total


def _per_label(meta: Mapping, negative_weights: str, magnitude: bool) -> np.ndarray:
    """Summed reweighting weight times event weight per truth label, with the event weights as
    the training uses them (``magnitude``: their absolute values), before any scaling."""
    sums = BinSums.from_json(meta)
    if not meta.get("event_weight"):
        in_use = sums.jets
    elif negative_weights == "drop":
        in_use = (sums.sum_abs + sums.sum_w) / 2  # the sum over jets with w > 0
    elif negative_weights == "abs" or magnitude:
        in_use = sums.sum_abs
    else:
        in_use = sums.sum_w
    return (np.asarray(meta["weights"], dtype=np.float64) * in_use).sum(axis=(1, 2))


def weighting(meta: Mapping, class_of_label: np.ndarray, classes: list[str],
              class_weights: str | Mapping[str, float] = "none", negative_weights: str = "abs") -> JetWeighting:
    """The :class:`JetWeighting` of a dataset (its ``meta.json``) for a model's classes
    (``class_of_label``: output class index per truth label, -1 for none)."""
    if negative_weights not in NEGATIVE_WEIGHT_MODES:
        raise WeightingError(f"negative_weights {negative_weights!r}: choose one of {', '.join(NEGATIVE_WEIGHT_MODES)}")
    has_event_weights = bool(meta.get("event_weight"))
    event_scale = 1.0 / meta["max_abs_event_weight"] if has_event_weights and meta["max_abs_event_weight"] > 0 else 1.0
    per_label = _per_label(meta, negative_weights, magnitude=False) * event_scale
    used = class_of_label >= 0
    per_class = np.bincount(class_of_label[used], weights=per_label[used], minlength=len(classes))
    factors = _class_factors(per_class, classes, class_weights)
    class_factors = np.where(used, factors[np.clip(class_of_label, 0, None)], 0.0)
    if has_event_weights and negative_weights == "signed":
        sums = BinSums.from_json(meta)
        negative = float((sums.sum_abs - sums.sum_w).sum() / 2 / max(sums.sum_abs.sum(), 1e-300))
        logger.warning(f"training with signed event weights: {negative:.1%} of the summed |weight| is negative; "
                       f"those jets enter the loss with a negative sign, which adds variance and slows convergence "
                       f"(training.negative_weights: abs or drop avoid it at the price of a bias)")
    return JetWeighting(class_factors=class_factors, event_scale=event_scale, negative_weights=negative_weights)


def _class_factors(per_class: np.ndarray, classes: list[str], class_weights: str | Mapping[str, float]) -> np.ndarray:
    if isinstance(class_weights, Mapping):
        unknown = [name for name in class_weights if name not in classes]
        if unknown:
            raise WeightingError(f"class_weights names unknown class(es) {', '.join(unknown)}; the classes are "
                                 f"{', '.join(classes)}")
        factors = np.array([float(class_weights.get(name, 1.0)) for name in classes])
    elif class_weights == "balanced":
        empty = [name for name, total in zip(classes, per_class) if total <= 0]
        if empty:
            raise WeightingError(f"class_weights: balanced: class(es) {', '.join(empty)} have no training weight in "
                                 f"the dataset; remove them from `classes` or add inputs with such jets")
        factors = per_class.mean() / per_class
    elif class_weights == "none":
        factors = np.ones(len(classes))
    else:
        raise WeightingError(f"class_weights {class_weights!r}: choose none, balanced or a mapping class -> factor")
    if not (factors > 0).all():
        raise WeightingError("class_weights: every class factor must be > 0")
    return factors / factors.max()


def mean_acceptance(meta: Mapping, class_of_label: np.ndarray, jet_weighting: JetWeighting) -> float:
    """Average stochastic acceptance of the dataset's jets in output classes."""
    accepted = _per_label(meta, jet_weighting.negative_weights, magnitude=True) * jet_weighting.event_scale
    used = class_of_label >= 0
    total = BinSums.from_json(meta).jets[used].sum()
    return float(accepted[used].sum() / total) if total > 0 else 1.0


def class_shares(meta: Mapping, class_of_label: np.ndarray, classes: list[str],
                 jet_weighting: JetWeighting) -> dict[str, float]:
    """Each output class's share of the summed training weight."""
    per_label = _per_label(meta, jet_weighting.negative_weights, magnitude=False) * jet_weighting.class_factors
    used = class_of_label >= 0
    per_class = np.bincount(class_of_label[used], weights=per_label[used], minlength=len(classes))
    total = per_class.sum()
    return {name: float(value / total) if total > 0 else 0.0 for name, value in zip(classes, per_class)}
