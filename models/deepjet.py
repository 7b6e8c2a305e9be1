"""DeepJet (Bols et al., JINST 15 (2020) P12012): per-candidate 1x1 convolutions, one LSTM
per candidate group, and a dense head on the LSTM states and the global features.

As published: charged candidates 64-32-32-8 filters and an LSTM of 150, neutral candidates
32-16-4 and 50, secondary vertices 64-32-32-8 and 50, then one dense layer of 200 and seven
of 100 units, ReLU and dropout 0.1 throughout. Groups the dataset does not have (e.g. the
neutral candidates of HLT ntuples, where one collection holds all candidates) are skipped.
The LSTMs read each sequence from its last entry to its first, as the original does, so
that the leading candidates (stored first) shape the final state most.

On CPUs the LSTM, most of the time, skips what every jet computes alike: a jet's padded
entries after its last real one are zeros, read first, and take every such jet from the
same initial state through the same states. Jets are read in a few groups of similar
length, each starting from the state its common zero entries lead to (computed once, for one
jet), so the LSTM reads about as many entries as the jets have instead of the padded length;
the final states are the full sequence's up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import InputSpec
from models.torch_model import TorchModel

PUBLISHED = {
    "cpf": {"filters": (64, 32, 32, 8), "lstm": 150},
    "npf": {"filters": (32, 16, 4), "lstm": 50},
    "vtx": {"filters": (64, 32, 32, 8), "lstm": 50},
}


#: jets per LSTM call at least, and calls at most, when the LSTM reads jets grouped by length
MIN_GROUP_SIZE = 256
MAX_GROUPS = 4


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
        # The 1x1 convolutions are matrix products on the candidates as they are stored,
        # (B, P, F): no transposes to (B, F, P) and back, and jets stay first for dropout
        # (data-parallel training on CPUs replaces it by one that slices the batch dimension).
        features = candidates
        for layer in self.convolutions:
            features = F.linear(features, layer.weight.flatten(1), layer.bias) if isinstance(layer, nn.Conv1d) \
                else layer(features)
        features = features * mask.unsqueeze(-1).to(features.dtype)
        n_groups = min(MAX_GROUPS, len(features) // MIN_GROUP_SIZE)
        # grouping depends on the values, which a traced or compiled graph would freeze; on
        # GPUs an LSTM step costs the same for fewer jets, so one call is quickest
        if features.device.type != "cpu" or n_groups < 2 or torch.jit.is_tracing() or torch.compiler.is_compiling():
            _, (state, _) = self.lstm(torch.flip(features, dims=[1]))
            return state[-1]
        return self._final_states_by_length(features, mask, n_groups)

    def _state_after_zeros(self, n_steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The LSTM's state (h, c) after ``n_steps`` zero inputs from the zero state, for one jet."""
        if n_steps == 0:
            return None
        _, state = self.lstm(like.new_zeros(1, n_steps, like.shape[-1]))
        return state

    def _final_states_by_length(self, features: torch.Tensor, mask: torch.Tensor, n_groups: int) -> torch.Tensor:
        """The LSTM's final hidden state of every jet reading ``features`` (zero where padded)
        from its last entry to its first, in ``n_groups`` LSTM calls over jets of similar length."""
        n_entries = features.shape[1]
        # entries up to the last real one; those after it are zeros, read first
        positions = torch.arange(1, n_entries + 1, device=mask.device)
        lengths = (mask * positions).amax(dim=1)
        order = lengths.argsort(descending=True)
        states = []
        for group in order.chunk(n_groups):
            longest = max(1, int(lengths[group[0]]))
            initial = self._state_after_zeros(n_entries - longest, features)
            if initial is not None:
                initial = tuple(s.expand(-1, len(group), -1).contiguous() for s in initial)
            _, (state, _) = self.lstm(features[group, :longest].flip(1), initial)
            states.append(state[-1])
        return torch.cat(states)[order.argsort()]


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
        self.build_heads(width, [max(1, round(size * width_scale)) for size in dense], dropout)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [batch["global"]]
        for group in self.candidate_groups:
            parts.append(self.branches[group](batch[group], batch[f"mask_{group}"]))
        return torch.cat(parts, dim=1)
