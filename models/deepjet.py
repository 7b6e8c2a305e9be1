"""DeepJet (Bols et al., JINST 15 (2020) P12012): per-candidate 1x1 convolutions, one LSTM
per candidate group, and a dense head on the LSTM states and the global features.

As published: charged candidates 64-32-32-8 filters and an LSTM of 150, neutral candidates
32-16-4 and 50, secondary vertices 64-32-32-8 and 50, then one dense layer of 200 and seven
of 100 units, ReLU and dropout 0.1 throughout. Groups the dataset does not have (e.g. the
neutral candidates of HLT ntuples, where one collection holds all candidates) are skipped.
The LSTMs read each sequence from its last entry to its first, as the original does, so
that the leading candidates (stored first) shape the final state most.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import InputSpec
from models.layers import dense_head
from models.torch_model import TorchModel

PUBLISHED = {
    "cpf": {"filters": (64, 32, 32, 8), "lstm": 150},
    "npf": {"filters": (32, 16, 4), "lstm": 50},
    "vtx": {"filters": (64, 32, 32, 8), "lstm": 50},
}


class _CandidateBranch(nn.Module):
    def __init__(self, n_features: int, filters: tuple[int, ...], lstm: int, dropout: float) -> None:
        super().__init__()
        layers, width = [], n_features
        for size in filters:
            layers += [nn.Conv1d(width, size, kernel_size=1), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.convolutions = nn.Sequential(*layers)
        self.lstm = nn.LSTM(width, lstm, batch_first=True)

    def forward(self, candidates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.convolutions(candidates.transpose(1, 2)).transpose(1, 2)
        features = features * mask.unsqueeze(-1).to(features.dtype)
        _, (state, _) = self.lstm(torch.flip(features, dims=[1]))
        return state[-1]


class DeepJet(TorchModel):
    """DeepJet as published (see module docstring); sizes adapt to the dataset's groups."""

    input_groups = ("global",)
    optional_groups = ("cpf", "npf", "vtx")

    def __init__(self, spec: InputSpec, dense: tuple[int, ...] = (200, 100, 100, 100, 100, 100, 100, 100),
                 dropout: float = 0.1, width_scale: float = 1.0) -> None:
        super().__init__(spec)
        self.candidate_groups = [g for g in ("cpf", "npf", "vtx") if g in self.groups]
        branches, width = {}, spec.n_features("global")
        for group in self.candidate_groups:
            filters = tuple(max(1, round(f * width_scale)) for f in PUBLISHED[group]["filters"])
            lstm = max(1, round(PUBLISHED[group]["lstm"] * width_scale))
            branches[group] = _CandidateBranch(spec.n_features(group), filters, lstm, dropout)
            width += lstm
        self.branches = nn.ModuleDict(branches)
        self.head = dense_head(width, [max(1, round(size * width_scale)) for size in dense], spec.n_classes, dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [batch["global"]]
        for group in self.candidate_groups:
            parts.append(self.branches[group](batch[group], batch[f"mask_{group}"]))
        return self.head(torch.cat(parts, dim=1))
