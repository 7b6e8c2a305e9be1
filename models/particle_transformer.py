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
mass: ...}}}``) and read in their original units. ``mass`` (or, failing that, ``energy``) is
optional: without either the candidates are taken as massless, the right choice when eta and
phi are relative to the jet axis (pair masses then only depend on differences in eta and
phi). A mass column is preferred over energy: a mass derived from float32 energy and momentum
is rounding noise for light, energetic candidates, so such pair masses are floored at their
resolution.

The pair features are computed without cancellations (see :func:`pair_features`), so that
they, and with them the exported ONNX graph, agree between PyTorch and other runtimes.

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
from models.layers import apply_pointwise
from models.torch_model import TorchModel

FOUR_VECTOR_KEYS = ("pt", "eta", "phi", "energy", "mass")
N_PAIR_FEATURES = 4
# Floor inside the logarithms of the pair features: keeps coincident or padded candidates finite.
EPSILON = 1e-8
# A candidate mass derived from float32 energy and momentum is uncertain by up to about 7e-7 E^2
# (E^2 - p^2 rounds), so pair masses below this fraction of (E_a + E_b)^2 (m < 1% of the pair's
# energy) are floored there: the logarithm of rounding noise would differ between runtimes.
ENERGY_MASS_RESOLUTION = 1e-4


def _sinh_over_x(x: torch.Tensor) -> torch.Tensor:
    """sinh(x) / x to float precision for every x, small ones included.

    ONNX export has no sinh, and (exp(x) - exp(-x)) / 2 loses all precision for small x,
    which is exactly where nearly collinear candidates are: a Taylor series takes over there.
    """
    small = x.abs() < 0.5
    x2 = x * x
    series = 1 + x2 / 6 * (1 + x2 / 20 * (1 + x2 / 42 * (1 + x2 / 72)))
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, series, (torch.exp(safe) - torch.exp(-safe)) / (2 * safe))


def _log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + x); by its series, plain arithmetic, for |x| < 0.1.

    Runtimes round +, *, / and sqrt alike but not log, and the rapidity offsets of two nearly
    collinear candidates are subtracted from each other: computed by arithmetic they agree
    between PyTorch and ONNX runtimes bit for bit.
    """
    small = x.abs() < 0.1
    series = x * (1 - x * (1 / 2 - x * (1 / 3 - x * (1 / 4 - x * (1 / 5 - x * (1 / 6 - x * (1 / 7 - x / 8)))))))
    safe = torch.where(small, torch.zeros_like(x), x)
    return torch.where(small, series, torch.log((1 + safe).clamp(min=EPSILON)))


def _rapidity_offset(pt: torch.Tensor, pz: torch.Tensor, mass2: torch.Tensor,
                     transverse_mass: torch.Tensor) -> torch.Tensor:
    """y - eta, the rapidity minus the pseudorapidity, without cancellation: zero for massless
    candidates and small for light ones, so that rapidity differences keep the precision of the
    eta differences they are mostly made of.

    With p = |p|, E^2 = mT^2 + pz^2: y - eta = sign(pz) log1p(r),
    r = -m^2 (|pz| / (pt + mT) + pz^2 / (E pt + p mT)) / ((|pz| + p) mT).
    """
    momentum = torch.sqrt(pt * pt + pz * pz)
    energy = torch.sqrt(transverse_mass * transverse_mass + pz * pz)
    spread = pz.abs() / (pt + transverse_mass).clamp(min=EPSILON) + \
        pz * pz / (energy * pt + momentum * transverse_mass).clamp(min=EPSILON)
    r = -mass2 * spread / ((pz.abs() + momentum) * transverse_mass).clamp(min=EPSILON)
    return torch.sign(pz) * _log1p(r.clamp(min=-1 + EPSILON))


def pair_features(pt: torch.Tensor, eta: torch.Tensor, phi: torch.Tensor, mask: torch.Tensor,
                  energy: torch.Tensor | None = None, mass: torch.Tensor | None = None) -> torch.Tensor:
    """ln Delta, ln k_T, ln z, ln m^2 of every candidate pair: (B, 4, P, P) from (B, P) inputs.

    Pairs with a padded candidate are zero. Candidates are massless unless ``mass`` or
    ``energy`` is given. The pair mass is never formed as (E_a + E_b)^2 - |p_a + p_b|^2,
    whose cancellation turns nearly collinear pairs (and every candidate paired with itself)
    into rounding noise that differs between PyTorch and ONNX runtimes; it is the sum of
    non-negative terms m_a^2 + m_b^2 + 2 (mT_a mT_b - pt_a pt_b) + 4 mT_a mT_b sinh^2(dy/2)
    + 4 pt_a pt_b sin^2(dphi/2).
    """
    def pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.unsqueeze(-1), x.unsqueeze(-2)

    mass_from_energy = energy is not None and mass is None
    (eta_a, eta_b) = pair(eta)
    dy = eta_a - eta_b
    if energy is None and mass is None:
        mass2, transverse_mass = torch.zeros_like(pt), pt
    else:
        pz = pt * eta * _sinh_over_x(eta)
        if mass is not None:
            mass2 = mass * mass
        else:
            momentum = torch.sqrt(pt * pt + pz * pz)
            mass2 = ((energy - momentum) * (energy + momentum)).clamp(min=0.0)
        transverse_mass = torch.sqrt(pt * pt + mass2)
        energy = torch.sqrt(transverse_mass * transverse_mass + pz * pz)
        offset_a, offset_b = pair(_rapidity_offset(pt, pz, mass2, transverse_mass))
        dy = dy + (offset_a - offset_b)

    (pt_a, pt_b), (mt_a, mt_b), (m2_a, m2_b) = pair(pt), pair(transverse_mass), pair(mass2)
    dphi_raw = phi.unsqueeze(-1) - phi.unsqueeze(-2)
    # exact for |dphi| < pi, where rounding to the nearest multiple of 2 pi gives zero
    dphi = dphi_raw - 2 * math.pi * torch.round(dphi_raw / (2 * math.pi))
    delta = torch.sqrt(dy * dy + dphi * dphi)
    pt_min = torch.minimum(pt_a, pt_b)
    ln_delta = torch.log(delta.clamp(min=EPSILON))
    ln_kt = torch.log((pt_min * delta).clamp(min=EPSILON))
    ln_z = torch.log((pt_min / (pt_a + pt_b).clamp(min=EPSILON)).clamp(min=EPSILON))

    # mT_a mT_b - pt_a pt_b without cancellation: (mT_a^2 mT_b^2 - pt_a^2 pt_b^2) / (mT_a mT_b + pt_a pt_b)
    transverse_excess = (m2_a * pt_b * pt_b + m2_b * pt_a * pt_a + m2_a * m2_b) / \
        (mt_a * mt_b + pt_a * pt_b).clamp(min=EPSILON)
    sinh_half_dy = 0.5 * dy * _sinh_over_x(0.5 * dy)
    sin_half_dphi = torch.sin(0.5 * dphi_raw)
    m2 = (m2_a + m2_b + 2 * transverse_excess + 4 * mt_a * mt_b * sinh_half_dy * sinh_half_dy
          + 4 * pt_a * pt_b * sin_half_dphi * sin_half_dphi)
    if mass_from_energy:
        e_a, e_b = pair(energy)
        m2 = torch.maximum(m2, ENERGY_MASS_RESOLUTION * (e_a + e_b) * (e_a + e_b))
    ln_m2 = torch.log(m2.clamp(min=EPSILON))

    valid = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).unsqueeze(1)
    return torch.stack([ln_delta, ln_kt, ln_z, ln_m2], dim=1).masked_fill(~valid, 0.0)


class PairEmbedding(nn.Module):
    """1x1 convolutions on the pair features: (B, 4, P, P) -> one attention bias per head (B, H, P, P).

    Run as matrix products on channels-first pairs (see :mod:`models.layers`)."""

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
        return apply_pointwise(self.layers, features.transpose(0, 1)).transpose(0, 1)


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
    learned scale per head (NormFormer).

    The query, key and value projections of the same tokens are one matrix product. Without
    dropout on the attention weights (evaluation, class attention) the attention itself is
    PyTorch's fused ``scaled_dot_product_attention``; with it, the weights go through the
    dropout module as published, which the training loop can replace (data-parallel training
    on CPUs draws each whole batch's masks in every process)."""

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

    def _projections(self, queries: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        """Queries, keys and values (B, H, T, head width each)."""
        layers = [self.query, self.key, self.value]
        if queries is not context:
            layers = layers[1:]
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        projected = F.linear(context, weight, bias).chunk(len(layers), dim=-1)
        if queries is not context:
            projected = (self.query(queries), *projected)
        return [self._heads(x) for x in projected]

    def forward(self, queries: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._projections(queries, context)
        padded = ~key_mask[:, None, None, :]
        # The most negative finite value, not -inf: a jet without any real key gets uniform
        # weights instead of NaN.
        if self.training and self.dropout.p > 0:
            logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_width)
            if bias is not None:
                logits = logits + bias
            logits = logits.masked_fill(padded, torch.finfo(logits.dtype).min)
            heads = torch.matmul(self.dropout(torch.softmax(logits, dim=-1)), v)
        else:
            # PyTorch's kernels add the mask to the logits in float32 for half-precision inputs
            # too (tests/test_fast_layers.py checks it on CPUs), so the sum does not overflow
            if bias is None:
                bias = torch.zeros(padded.shape, dtype=q.dtype, device=q.device)
            logit_bias = bias.to(q.dtype).masked_fill(padded, torch.finfo(q.dtype).min)
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=logit_bias)
        heads = heads * self.head_scale.view(1, -1, 1, 1)
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
        ``four_vector``: ``{pt, eta, phi[, mass | energy]}`` -> charged-candidate column names (required);
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
        example = "{pt: pfcand_pt, eta: pfcand_eta, phi: pfcand_phi, mass: pfcand_mass}"
        if not four_vector:
            raise ModelError(f"ParticleTransformer needs the hyperparameter 'four_vector': the charged-candidate "
                             f"columns of the pair features, e.g. `model_settings: {{ParticleTransformer: "
                             f"{{four_vector: {example}}}}}` in the config (mass may be left out: massless)")
        unknown = sorted(set(four_vector) - set(FOUR_VECTOR_KEYS))
        missing = [key for key in FOUR_VECTOR_KEYS[:3] if key not in four_vector]
        if unknown or missing:
            raise ModelError(f"ParticleTransformer's 'four_vector' needs the keys pt, eta, phi (and optionally "
                             f"mass or energy); missing: {', '.join(missing) or 'none'}, "
                             f"unknown: {', '.join(unknown) or 'none'}")
        if {"mass", "energy"} <= set(four_vector):
            raise ModelError("ParticleTransformer's 'four_vector' takes mass or energy, not both; keep mass")
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
        self.build_heads(width, fc, dropout)

    def _attention_bias(self, batch: dict[str, torch.Tensor], n_tokens: int) -> torch.Tensor:
        """Per-head bias (B, H, T, T): from the charged-candidate pairs, zero for other tokens."""
        with torch.no_grad():
            kinematics = {key: self.raw_column(batch, "cpf", name).float() for key, name in self.four_vector.items()}
            features = pair_features(kinematics["pt"], kinematics["eta"], kinematics["phi"], batch["mask_cpf"].bool(),
                                     energy=kinematics.get("energy"), mass=kinematics.get("mass"))
        bias = self.pair_embedding(features)
        extra = n_tokens - features.shape[-1]
        return F.pad(bias, (0, extra, 0, extra))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
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
        return torch.cat(head_input, dim=1)
