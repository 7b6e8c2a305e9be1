"""Particle Transformer (Qu, Li & Qian, ICML 2022, arXiv:2202.03772): self-attention over
the jet's candidates, biased by features of every candidate pair, then class attention.

As published: each candidate is embedded by an MLP (128, 512, 128, LayerNorm and GELU);
for each pair of charged candidates a, b the interaction features ln Delta, ln k_T, ln z and
ln m^2 (Delta = sqrt(dy^2 + dphi^2), k_T = min(pT_a, pT_b) Delta, z = min(pT_a, pT_b) /
(pT_a + pT_b), m^2 of the pair's four-momentum) are embedded by 1x1 convolutions (64, 64, 64)
into one attention bias per head; eight NormFormer-style particle attention blocks (8 heads,
dropout 0.1), two class-attention blocks with a class token, LayerNorm and a linear head.

The four-vector columns of the charged candidates are named in the config
(``model_settings: {ParticleTransformer: {four_vector: {pt: ..., eta: ..., phi: ...,
energy: ...}}}``) and read in their original units. Without ``energy`` the candidates are
taken as massless, the right choice when eta and phi are relative to the jet axis (pair
masses then only depend on differences in eta and phi).

Secondary vertices and neutral candidates, when the dataset has them, are extra tokens with
their own embedding; their pairs get no bias. Global features join the class token's output
before the head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.base import InputSpec, ModelError
from models.layers import dense_head
from models.torch_model import TorchModel

FOUR_VECTOR_KEYS = ("pt", "eta", "phi", "energy")
N_PAIR_FEATURES = 4
# Floor inside the logarithms of the pair features: keeps coincident or padded candidates finite.
EPSILON = 1e-8


def pair_features(pt: torch.Tensor, eta: torch.Tensor, phi: torch.Tensor, energy: torch.Tensor | None,
                  mask: torch.Tensor) -> torch.Tensor:
    """ln Delta, ln k_T, ln z, ln m^2 of every candidate pair: (B, 4, P, P) from (B, P) inputs.

    Pairs with a padded candidate are zero. ``energy=None`` means massless candidates.
    """
    # sinh and cosh spelled out: the ONNX exporter has no translation for them.
    exp_eta, exp_minus_eta = torch.exp(eta), torch.exp(-eta)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * (exp_eta - exp_minus_eta) / 2
    if energy is None:
        energy = pt * (exp_eta + exp_minus_eta) / 2
        rapidity = eta
    else:
        rapidity = 0.5 * torch.log(((energy + pz) / (energy - pz).clamp(min=EPSILON)).clamp(min=EPSILON))

    def pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.unsqueeze(-1), x.unsqueeze(-2)

    def pair_sum(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) + x.unsqueeze(-2)

    (pt_a, pt_b), (y_a, y_b), (phi_a, phi_b) = pairs(pt), pairs(rapidity), pairs(phi)
    dphi = torch.remainder(phi_a - phi_b + math.pi, 2 * math.pi) - math.pi
    delta = torch.sqrt((y_a - y_b).pow(2) + dphi.pow(2))
    pt_min = torch.minimum(pt_a, pt_b)
    ln_delta = torch.log(delta.clamp(min=EPSILON))
    ln_kt = torch.log((pt_min * delta).clamp(min=EPSILON))
    ln_z = torch.log((pt_min / (pt_a + pt_b).clamp(min=EPSILON)).clamp(min=EPSILON))
    e, x, y, z = (pair_sum(v) for v in (energy, px, py, pz))
    ln_m2 = torch.log((e.pow(2) - x.pow(2) - y.pow(2) - z.pow(2)).clamp(min=EPSILON))

    valid = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).unsqueeze(1)
    return torch.stack([ln_delta, ln_kt, ln_z, ln_m2], dim=1).masked_fill(~valid, 0.0)


class PairEmbedding(nn.Module):
    """1x1 convolutions on the pair features: (B, 4, P, P) -> one attention bias per head (B, H, P, P)."""

    def __init__(self, channels: Sequence[int], n_heads: int) -> None:
        super().__init__()
        layers, width = [nn.BatchNorm1d(N_PAIR_FEATURES)], N_PAIR_FEATURES
        for size in channels:
            layers += [nn.Conv1d(width, size, kernel_size=1), nn.BatchNorm1d(size), nn.GELU()]
            width = size
        # The bias enters the attention logits before any activation, as in the paper.
        layers += [nn.Conv1d(width, n_heads, kernel_size=1), nn.BatchNorm1d(n_heads)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n_points = features.shape[-1]
        bias = self.layers(features.flatten(2))
        return bias.view(-1, bias.shape[1], n_points, n_points)


class ParticleEmbedding(nn.Module):
    """Per-candidate MLP (LayerNorm, Linear, GELU per layer): (B, P, F) -> (B, P, width)."""

    def __init__(self, n_features: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers, width = [], n_features
        for size in widths:
            layers += [nn.LayerNorm(width), nn.Linear(width, size), nn.GELU()]
            width = size
        self.layers = nn.Sequential(*layers)

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.layers(candidates)


class Attention(nn.Module):
    """Multi-head attention with a key padding mask, an optional additive bias per head, and a
    learned scale per head (NormFormer)."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if width % n_heads:
            raise ModelError(f"the embedding width {width} must be divisible by the number of heads {n_heads}")
        self.n_heads, self.head_width = n_heads, width // n_heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.output = nn.Linear(width, width)
        self.head_scale = nn.Parameter(torch.ones(n_heads))
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_width).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(context)), self._heads(self.value(context))
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_width)
        if bias is not None:
            logits = logits + bias
        # The most negative finite value, not -inf: a jet without any real key gets uniform
        # weights instead of NaN.
        logits = logits.masked_fill(~key_mask[:, None, None, :], torch.finfo(logits.dtype).min)
        weights = self.dropout(torch.softmax(logits, dim=-1))
        heads = torch.matmul(weights, v) * self.head_scale.view(1, -1, 1, 1)
        return self.output(heads.transpose(1, 2).flatten(2))


class AttentionBlock(nn.Module):
    """A NormFormer transformer block: attention and feed-forward, each with a LayerNorm before
    and after, and a learned scale on the feed-forward residual.

    With ``class_attention`` the queries are the class token only and the keys are the class
    token followed by the particles (CaiT)."""

    def __init__(self, width: int, n_heads: int, ffn_ratio: int, dropout: float, class_attention: bool) -> None:
        super().__init__()
        self.class_attention = class_attention
        self.pre_attention_norm = nn.LayerNorm(width)
        self.attention = Attention(width, n_heads, dropout)
        self.post_attention_norm = nn.LayerNorm(width)
        self.pre_ffn_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, width * ffn_ratio), nn.GELU(), nn.Dropout(dropout),
                                 nn.LayerNorm(width * ffn_ratio), nn.Linear(width * ffn_ratio, width))
        self.dropout = nn.Dropout(dropout)
        self.residual_scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, bias: torch.Tensor | None = None,
                particles: torch.Tensor | None = None) -> torch.Tensor:
        if self.class_attention:
            context = self.pre_attention_norm(torch.cat([x, particles], dim=1))
            queries = context[:, :1]
        else:
            context = queries = self.pre_attention_norm(x)
        x = x + self.dropout(self.post_attention_norm(self.attention(queries, context, key_mask, bias)))
        return self.residual_scale * x + self.dropout(self.ffn(self.pre_ffn_norm(x)))


class ParticleTransformer(TorchModel):
    """Particle Transformer as published (see module docstring); depth and widths are hyperparameters.

    Hyperparameters:
        ``four_vector``: ``{pt, eta, phi[, energy]}`` -> charged-candidate column names (required);
        ``embed_dims``: widths of the particle embedding MLP (the last is the token width);
        ``pair_embed_dims``: widths of the pair embedding before the per-head output;
        ``num_heads``, ``num_blocks``, ``num_class_blocks``: attention heads and blocks;
        ``ffn_ratio``: feed-forward width over token width; ``dropout``: in particle blocks
        (class blocks use none, as published); ``fc``: optional dense layers before the output.
    """

    input_groups = ("cpf",)
    optional_groups = ("npf", "vtx", "global")

    def __init__(self, spec: InputSpec, four_vector: Mapping[str, str] | None = None,
                 embed_dims: Sequence[int] = (128, 512, 128), pair_embed_dims: Sequence[int] = (64, 64, 64),
                 num_heads: int = 8, num_blocks: int = 8, num_class_blocks: int = 2, ffn_ratio: int = 4,
                 dropout: float = 0.1, fc: Sequence[int] = ()) -> None:
        super().__init__(spec)
        example = "{pt: pfcand_pt, eta: pfcand_eta, phi: pfcand_phi, energy: pfcand_energy}"
        if not four_vector:
            raise ModelError(f"ParticleTransformer needs the hyperparameter 'four_vector': the charged-candidate "
                             f"columns of the pair features, e.g. `model_settings: {{ParticleTransformer: "
                             f"{{four_vector: {example}}}}}` in the config (energy may be left out: massless)")
        unknown = sorted(set(four_vector) - set(FOUR_VECTOR_KEYS))
        missing = [key for key in FOUR_VECTOR_KEYS[:3] if key not in four_vector]
        if unknown or missing:
            raise ModelError(f"ParticleTransformer's 'four_vector' needs the keys pt, eta, phi (and optionally "
                             f"energy); missing: {', '.join(missing) or 'none'}, "
                             f"unknown: {', '.join(unknown) or 'none'}")
        for name in four_vector.values():
            spec.column("cpf", name)  # a clear error naming the column when the dataset lacks it
        self.four_vector = dict(four_vector)
        if not embed_dims:
            raise ModelError("ParticleTransformer's 'embed_dims' must list at least one width")

        self.token_groups = [g for g in ("cpf", "npf", "vtx") if g in self.groups]
        width = embed_dims[-1]
        self.embeddings = nn.ModuleDict(
            {g: ParticleEmbedding(spec.n_features(g), tuple(embed_dims)) for g in self.token_groups})
        self.pair_embedding = PairEmbedding(tuple(pair_embed_dims), num_heads)
        self.blocks = nn.ModuleList(
            [AttentionBlock(width, num_heads, ffn_ratio, dropout, class_attention=False) for _ in range(num_blocks)])
        self.class_blocks = nn.ModuleList(
            [AttentionBlock(width, num_heads, ffn_ratio, 0.0, class_attention=True) for _ in range(num_class_blocks)])
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.class_token, std=0.02)
        self.norm = nn.LayerNorm(width)
        if "global" in self.groups:
            width += spec.n_features("global")
        self.head = dense_head(width, fc, spec.n_classes, dropout)

    def _attention_bias(self, batch: dict[str, torch.Tensor], n_tokens: int) -> torch.Tensor:
        """Per-head bias (B, H, T, T): from the charged-candidate pairs, zero for other tokens."""
        with torch.no_grad():
            kinematics = {key: self.raw_column(batch, "cpf", name).float() for key, name in self.four_vector.items()}
            features = pair_features(kinematics["pt"], kinematics["eta"], kinematics["phi"],
                                     kinematics.get("energy"), batch["mask_cpf"].bool())
        bias = self.pair_embedding(features)
        extra = n_tokens - features.shape[-1]
        return F.pad(bias, (0, extra, 0, extra)) if extra else bias

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = torch.cat([self.embeddings[g](batch[g]) for g in self.token_groups], dim=1)
        mask = torch.cat([batch[f"mask_{g}"].bool() for g in self.token_groups], dim=1)
        keep = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * keep
        bias = self._attention_bias(batch, tokens.shape[1])
        for block in self.blocks:
            # Padded tokens are zeroed after every block so that nothing they compute can leak.
            tokens = block(tokens, mask, bias) * keep

        class_token = self.class_token.expand(tokens.shape[0], -1, -1)
        class_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for block in self.class_blocks:
            class_token = block(class_token, class_mask, particles=tokens)
        head_input = [self.norm(class_token).squeeze(1)]
        if "global" in self.groups:
            head_input.append(batch["global"])
        return self.head(torch.cat(head_input, dim=1))
