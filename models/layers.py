"""Building blocks shared by the PyTorch models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def dense_head(width: int, sizes: Sequence[int], n_outputs: int, dropout: float) -> nn.Sequential:
    """Linear + ReLU + dropout for each of ``sizes``, then a linear layer to ``n_outputs``."""
    layers = []
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
