"""The loss of the regression targets, per jet, beside the classification loss.

The model predicts each target standardised (the training set's mean and width of its valid
values, kept in the artifact), so one learning rate and ``huber_delta`` suit targets of any
scale; for the pinball (quantile) loss the standardisation is a monotonic map and changes no
quantile. A jet without a valid value of a target (NaN: no generator match) contributes
nothing to that target's loss and no gradient: its value is replaced before the loss is
computed, not multiplied by zero afterwards, since 0 x NaN is NaN in the backward pass too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bhive.plugins.model import RegressionTarget


def pinball(predicted: torch.Tensor, true: torch.Tensor, quantile: float) -> torch.Tensor:
    """The quantile (pinball) loss, minimal in expectation at the ``quantile`` of ``true``."""
    difference = true - predicted
    return torch.maximum(quantile * difference, (quantile - 1) * difference)


def per_jet_loss(outputs: torch.Tensor, targets: torch.Tensor, specs: Sequence[RegressionTarget]) -> torch.Tensor:
    """Sum over targets of weight x loss for each jet, shape (n,).

    ``outputs`` (n, n_outputs): the model's regression outputs, standardised, each target's
    columns in order (one, or one per quantile); ``targets`` (n, n_targets): the standardised
    true values, NaN where a jet has none.
    """
    outputs = outputs.float()
    total = torch.zeros(len(targets), dtype=torch.float32, device=targets.device)
    column = 0
    for index, spec in enumerate(specs):
        true = targets[:, index].float()
        valid = torch.isfinite(true)
        true = torch.where(valid, true, torch.zeros_like(true))
        predicted = outputs[:, column:column + spec.n_outputs]
        column += spec.n_outputs
        if spec.loss == "mse":
            loss = (predicted[:, 0] - true) ** 2
        elif spec.loss == "huber":
            loss = nn.functional.huber_loss(predicted[:, 0], true, reduction="none", delta=spec.huber_delta)
        elif spec.loss == "quantile":
            loss = sum(pinball(predicted[:, i], true, q) for i, q in enumerate(spec.quantiles))
        else:
            raise ValueError(f"regression target {spec.name}: unknown loss {spec.loss!r}; use mse, huber or quantile")
        total = total + spec.weight * torch.where(valid, loss, torch.zeros_like(loss))
    return total
