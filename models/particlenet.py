"""ParticleNet (Qu & Gouskos, Phys. Rev. D 101 (2020) 056019): the jet as an unordered
point cloud, EdgeConv blocks on k-nearest-neighbour graphs, global average pooling.

As published: k = 16; three EdgeConv blocks of (64, 64, 64), (128, 128, 128) and
(256, 256, 256) channels, each with a shortcut; the first graph is built in the (eta, phi)
plane of the candidates, later graphs from the learned features; a dense layer of 256 with
dropout 0.1 on the average over real candidates. The coordinates are two columns of the
charged candidates named in the config (``model_settings: {ParticleNet: {coordinates:
[pfcand_etarel, pfcand_phirel]}}``) and are read in their original units, so that every
group shares one (eta, phi) plane whatever its standardisation.

Secondary vertices and neutral candidates join the graph as extra points when their own
coordinates are given (``coordinates_vtx``, ``coordinates_npf``); each group then gets its
own 1x1-convolution embedding to a common width first, as in the CMS ParticleNet tagger. A
group without coordinates is embedded, averaged over its real entries and fed to the head,
next to the global features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.base import InputSpec, ModelError
from models.layers import apply_pointwise, pointwise, pointwise_weights, uses_running_statistics
from models.torch_model import TorchModel

CANDIDATE_GROUPS = ("cpf", "npf", "vtx")
PUBLISHED_CHANNELS = ((64, 64, 64), (128, 128, 128), (256, 256, 256))

# Padded points are moved this far away in every coordinate, so they are never the nearest
# neighbours of a real point while real neighbours exist (their features are zero anyway).
FAR_AWAY = 1e9


def nearest_neighbours(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, P, k) of the k nearest other points for points of shape (B, D, P)."""
    # Always in float32: padded points sit at FAR_AWAY, beyond the range of float16, and
    # half-precision distances would blur which real neighbours are nearest.
    with torch.autocast(device_type=points.device.type, enabled=False):
        points = points.float()
        inner = torch.matmul(points.transpose(1, 2), points)
    squared = points.pow(2).sum(dim=1, keepdim=True)
    closeness = 2 * inner - squared - squared.transpose(1, 2)  # minus the squared distance
    # Built from arange rather than eye: ONNX Runtime has no boolean EyeLike.
    position = torch.arange(points.shape[-1], device=points.device)
    itself = position.unsqueeze(0) == position.unsqueeze(1)
    closeness = closeness.masked_fill(itself, float("-inf"))
    return closeness.topk(k, dim=-1).indices


def gather_neighbours(values: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Each point's neighbours' entries (C, B, P, k) of channels-first ``values`` (C, B, P)."""
    n_jets, n_points, k = neighbours.shape
    # one index into the jets' points laid end to end: index_select, whose gradient is an
    # index_add, instead of a gather over an expanded index
    offsets = torch.arange(n_jets, device=neighbours.device).view(-1, 1, 1) * n_points
    rows = (neighbours + offsets).flatten()
    return values.reshape(len(values), -1).index_select(1, rows).view(len(values), n_jets, n_points, k)


class EdgeConvBlock(nn.Module):
    """One EdgeConv block: a kNN graph, a shared MLP on every edge, the mean over edges, and
    a shortcut from the block's input. Points and features are channels first: (D, B, P) and
    (C, B, P) (see :mod:`models.layers`).

    The MLP's first 1x1 convolution maps the edge (x_i, x_j - x_i) to W_c x_i + W_d (x_j - x_i)
    = (W_c - W_d) x_i + W_d x_j: both terms are computed once per point and only added per
    edge, instead of building and convolving the edge tensor, k times the points' size. The
    BatchNorm after it sees the same per-edge values. The layers keep the published modules
    (1x1 convolutions, BatchNorm, ReLU), so their parameters keep their names and shapes."""

    def __init__(self, k: int, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.k = k
        layers, width = [], 2 * in_channels
        for size in channels:
            # BatchNorm1d: it normalises (1, channels, edges); its parameters and buffers are BatchNorm2d's
            layers += [nn.Conv2d(width, size, kernel_size=1, bias=False), nn.BatchNorm1d(size), nn.ReLU()]
            width = size
        self.edge_mlp = nn.Sequential(*layers)
        if in_channels == width:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv1d(in_channels, width, kernel_size=1, bias=False),
                                          nn.BatchNorm1d(width))
        self.activation = nn.ReLU()

    def first_layer(self, features: torch.Tensor, neighbours: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The first convolution's output on every edge (C1, B, P, k), and whether the
        BatchNorm after it is folded in already (it is when it uses its running statistics)."""
        conv, norm = self.edge_mlp[0], self.edge_mlp[1]
        weight, shift = pointwise_weights(conv, norm)
        on_centre, on_difference = weight.split(len(features), dim=1)
        # both terms in one product: rows (W_c - W_d) x_i, then rows W_d x_j
        bias = None if shift is None else torch.cat([shift, torch.zeros_like(shift)])
        terms = pointwise(features, torch.cat([on_centre - on_difference, on_difference]), bias)
        centre, neighbour = terms.split(len(weight))
        edges = gather_neighbours(neighbour, neighbours) + centre.unsqueeze(-1)
        return edges, uses_running_statistics(norm)

    def forward(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        neighbours = nearest_neighbours(points.transpose(0, 1), self.k)
        edges, folded = self.first_layer(features, neighbours)
        edges = apply_pointwise(self.edge_mlp[2 if folded else 1:], edges)
        return self.activation(apply_pointwise(self.shortcut, features) + edges.mean(dim=-1))


class CandidateEmbedding(nn.Module):
    """Per-candidate 1x1 convolution of one group to a common width (C, B, P) -> (width, B, P)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(in_channels, width, kernel_size=1, bias=False),
                                    nn.BatchNorm1d(width), nn.ReLU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return apply_pointwise(self.layers, features)


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average (B, C) of (C, B, P) over the real points of mask (1, B, P); zero for a jet without any."""
    return ((features * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).t()


class ParticleNet(TorchModel):
    """ParticleNet as published (see module docstring); all sizes are hyperparameters.

    Hyperparameters:
        ``coordinates``: names of the charged-candidate columns spanning the first graph
        (required, e.g. ``[pfcand_etarel, pfcand_phirel]``);
        ``coordinates_vtx`` / ``coordinates_npf``: the same columns of that group, which then
        joins the graph (optional);
        ``k``: neighbours per point; ``conv_channels``: channels of each EdgeConv block;
        ``fc``: widths of the dense head; ``dropout``: after each dense layer;
        ``embed_channels``: common width of the groups sharing the graph.
    """

    input_groups = ("cpf",)
    optional_groups = ("npf", "vtx", "global")

    def __init__(self, spec: InputSpec, coordinates: Sequence[str] | None = None,
                 coordinates_vtx: Sequence[str] | None = None, coordinates_npf: Sequence[str] | None = None,
                 k: int = 16, conv_channels: Sequence[Sequence[int]] = PUBLISHED_CHANNELS,
                 fc: Sequence[int] = (256,), dropout: float = 0.1, embed_channels: int = 32) -> None:
        super().__init__(spec)
        if not coordinates:
            raise ModelError("ParticleNet needs the hyperparameter 'coordinates': the charged-candidate columns "
                             "that span the first neighbour graph, e.g. `model_settings: {ParticleNet: "
                             "{coordinates: [pfcand_etarel, pfcand_phirel]}}` in the config")
        if not conv_channels or any(not block for block in conv_channels):
            raise ModelError(f"ParticleNet's 'conv_channels' must list at least one EdgeConv block of at least "
                             f"one layer, got {conv_channels!r}")
        if k < 1:
            raise ModelError(f"ParticleNet's 'k' (neighbours per point) must be at least 1, got {k}")

        coordinates_of = {"cpf": coordinates, "vtx": coordinates_vtx, "npf": coordinates_npf}
        for group, names in coordinates_of.items():
            if isinstance(names, str):
                key = "coordinates" if group == "cpf" else f"coordinates_{group}"
                raise ModelError(f"ParticleNet's '{key}' must be a list of column names, got the single string "
                                 f"'{names}'; write it as [{names}, ...]")
        present = [g for g in CANDIDATE_GROUPS if g in self.groups]
        for group in ("vtx", "npf"):
            if coordinates_of[group] and group not in present:
                raise ModelError(f"ParticleNet got 'coordinates_{group}' but the dataset has no '{group}' group; "
                                 f"remove the hyperparameter or add the group to the config")
        self.graph_groups = [g for g in present if coordinates_of[g]]
        self.pooled_groups = [g for g in present if not coordinates_of[g]]
        self.coordinates = {g: tuple(coordinates_of[g]) for g in self.graph_groups}
        for group, names in self.coordinates.items():
            if len(names) != len(self.coordinates["cpf"]):
                raise ModelError(f"ParticleNet's 'coordinates_{group}' has {len(names)} column(s) but 'coordinates' "
                                 f"has {len(self.coordinates['cpf'])}; every group's points need the same dimensions")
            for name in names:
                spec.column(group, name)  # a clear error naming the column when the dataset lacks it

        n_points = sum(spec.n_candidates[g] for g in self.graph_groups)
        if n_points < 2:
            raise ModelError(f"ParticleNet needs at least two candidates per jet to build a graph, the dataset "
                             f"keeps {n_points}; raise n_cpf_candidates in the config")
        self.k = min(k, n_points - 1)

        # With one group the candidates enter the graph as they are (as published); several
        # groups have different features, so each is mapped to a common width first.
        if len(self.graph_groups) > 1:
            self.graph_embeddings = nn.ModuleDict(
                {g: CandidateEmbedding(spec.n_features(g), embed_channels) for g in self.graph_groups})
            width = embed_channels
        else:
            self.graph_embeddings = nn.ModuleDict()
            width = spec.n_features("cpf")
        blocks = []
        for channels in conv_channels:
            blocks.append(EdgeConvBlock(self.k, width, tuple(channels)))
            width = channels[-1]
        self.edge_convs = nn.ModuleList(blocks)

        self.pooled_embeddings = nn.ModuleDict(
            {g: CandidateEmbedding(spec.n_features(g), embed_channels) for g in self.pooled_groups})
        width += embed_channels * len(self.pooled_groups)
        if "global" in self.groups:
            width += spec.n_features("global")
        self.build_heads(width, fc, dropout)

    def _points(self, batch: dict[str, torch.Tensor], group: str) -> torch.Tensor:
        return torch.stack([self.raw_column(batch, group, name) for name in self.coordinates[group]])

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # channels first throughout, (C, B, P) (see models.layers)
        points, features, masks = [], [], []
        for group in self.graph_groups:
            mask = batch[f"mask_{group}"].unsqueeze(0).to(batch[group].dtype)  # (1, B, P)
            candidates = batch[group].permute(2, 0, 1).contiguous() * mask
            if group in self.graph_embeddings:
                candidates = self.graph_embeddings[group](candidates) * mask
            points.append(self._points(batch, group) * mask)
            features.append(candidates)
            masks.append(mask)
        points, features, mask = torch.cat(points, dim=2), torch.cat(features, dim=2), torch.cat(masks, dim=2)

        far_away = (1 - mask) * FAR_AWAY
        for index, block in enumerate(self.edge_convs):
            features = block((points if index == 0 else features) + far_away, features) * mask
        head_inputs = [masked_mean(features, mask)]

        for group in self.pooled_groups:
            group_mask = batch[f"mask_{group}"].unsqueeze(0).to(batch[group].dtype)
            embedded = self.pooled_embeddings[group](batch[group].permute(2, 0, 1).contiguous())
            head_inputs.append(masked_mean(embedded, group_mask))
        if "global" in self.groups:
            head_inputs.append(batch["global"])
        return torch.cat(head_inputs, dim=1)
