"""A fully connected network on the global features: the baseline every tagger must beat."""

from __future__ import annotations

import torch

from models.base import InputSpec
from models.torch_model import TorchModel


class DNN(TorchModel):
    """Dense layers with ReLU and dropout on the jet-level (global) features only."""

    input_groups = ("global",)
    # the dense layers were called `network` before the base class held the heads
    renamed_parameters = {"network.": "head."}

    def __init__(self, spec: InputSpec, hidden: tuple[int, ...] = (256, 128, 64), dropout: float = 0.1) -> None:
        super().__init__(spec)
        self.build_heads(spec.n_features("global"), hidden, dropout)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["global"]
