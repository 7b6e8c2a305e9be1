"""The layers rewritten for speed against straightforward implementations written here: the
same weights (loaded from the straightforward layer's state dict, as an older checkpoint
would be), random inputs with padded candidates, in training and evaluation mode. Outputs,
BatchNorm running statistics and gradients agree within 1e-5 of their scale in float32."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models.deepjet
from models.deepjet import _CandidateBranch
from models.particle_transformer import Attention, PairEmbedding
from models.particlenet import FAR_AWAY, CandidateEmbedding, EdgeConvBlock, nearest_neighbours

TOLERANCE = 1e-5
MODES = ["train", "eval"]


def assert_agree(obtained: torch.Tensor, expected: torch.Tensor, what: str, scale: float | None = None) -> None:
    """Largest difference within TOLERANCE of ``scale`` (default: the largest expected value)."""
    obtained, expected = obtained.detach(), expected.detach()
    scale = float(expected.abs().max()) if scale is None else scale
    difference = float((obtained - expected).abs().max())
    assert difference <= TOLERANCE * scale, f"{what}: differs by {difference:.3g}, scale {scale:.3g}"


def assert_same_gradients(fast: nn.Module, reference: nn.Module, inputs: dict[str, tuple],
                          zero: tuple[str, ...] = ()) -> None:
    """Gradients of every parameter and of the named (fast, reference) input pairs agree.

    The parameters named in ``zero`` have a gradient of zero in exact arithmetic (a key bias,
    which softmax ignores; a bias before a BatchNorm in training), rounding noise of terms as
    large as the layer's other gradients: they are compared on the scale of the largest."""
    expected = dict(reference.named_parameters())
    largest = max(float(p.grad.abs().max()) for p in expected.values() if p.grad is not None)
    for name, parameter in fast.named_parameters():
        scale = largest if name in zero else None
        assert_agree(parameter.grad, expected[name].grad, f"gradient of {name}", scale)
    for name, (mine, theirs) in inputs.items():
        assert_agree(mine.grad, theirs.grad, f"gradient of the {name}")


def assert_same_running_statistics(fast: nn.Module, reference: nn.Module) -> None:
    expected = dict(reference.named_buffers())
    for name, buffer in fast.named_buffers():
        if buffer.is_floating_point():
            assert_agree(buffer, expected[name], name)
        else:
            assert torch.equal(buffer, expected[name]), name


def twins(fast_class, reference_class, *args, **kwargs) -> tuple[nn.Module, nn.Module]:
    """The fast layer with the reference layer's (randomised) state."""
    torch.manual_seed(0)
    reference = reference_class(*args, **kwargs)
    for module in reference.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):  # non-trivial running statistics
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    fast = fast_class(*args, **kwargs)
    fast.load_state_dict(reference.state_dict())
    return fast, reference


def candidate_mask(n_jets: int, n_candidates: int, generator: torch.Generator, holes: bool = False) -> torch.Tensor:
    """Real candidates first, then padding; jets with none and jets with all of them."""
    counts = torch.randint(0, n_candidates + 1, (n_jets,), generator=generator)
    counts[:3] = torch.tensor([0, n_candidates, 1])
    mask = torch.arange(n_candidates) < counts[:, None]
    if holes:  # a padded entry between real ones
        mask[3, :] = True
        mask[3, n_candidates // 2] = False
    return mask


def inputs_like(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Leaf copies of ``tensors`` that collect gradients, one set per layer."""
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(3)


# -- ParticleNet --------------------------------------------------------------------------

class StraightEdgeConv(nn.Module):
    """EdgeConv as published: the edge tensor (x_i, x_j - x_i), 1x1 convolutions on it."""

    def __init__(self, k: int, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.k = k
        layers, width = [], 2 * in_channels
        for size in channels:
            layers += [nn.Conv2d(width, size, kernel_size=1, bias=False), nn.BatchNorm2d(size), nn.ReLU()]
            width = size
        self.edge_mlp = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if in_channels == width else nn.Sequential(
            nn.Conv1d(in_channels, width, kernel_size=1, bias=False), nn.BatchNorm1d(width))
        self.activation = nn.ReLU()

    def forward(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """points (B, D, P), features (B, C, P)."""
        neighbours = nearest_neighbours(points, self.k)  # (B, P, k)
        jets = torch.arange(len(features))[:, None, None]
        neighbour = features.transpose(1, 2)[jets, neighbours].permute(0, 3, 1, 2)  # (B, C, P, k)
        centre = features.unsqueeze(-1).expand_as(neighbour)
        edges = self.edge_mlp(torch.cat([centre, neighbour - centre], dim=1))
        return self.activation(self.shortcut(features) + edges.mean(dim=-1))


def point_cloud(n_jets: int, n_points: int, n_channels: int, generator: torch.Generator):
    """Points (B, 2, P) moved FAR_AWAY where padded, features (B, C, P) zero where padded."""
    mask = candidate_mask(n_jets, n_points, generator).unsqueeze(1).float()
    points = torch.randn(n_jets, 2, n_points, generator=generator) * mask + (1 - mask) * FAR_AWAY
    features = torch.randn(n_jets, n_channels, n_points, generator=generator) * mask
    return points, features


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_channels,channels", [(12, (16, 16, 16)), (16, (32, 24))])
def test_edge_conv_computes_the_published_block(mode, in_channels, channels, generator):
    fast, reference = twins(EdgeConvBlock, StraightEdgeConv, 7, in_channels, channels)
    fast.train(mode == "train"), reference.train(mode == "train")
    points, features = point_cloud(48, 20, in_channels, generator)
    mine, theirs = inputs_like(features), inputs_like(features)
    # the block works channels first: (C, B, P)
    obtained = fast(points.transpose(0, 1), mine[0].transpose(0, 1)).transpose(0, 1)
    expected = reference(points, theirs[0])
    assert_agree(obtained, expected, "output")
    assert_same_running_statistics(fast, reference)
    gradient = torch.randn(expected.shape, generator=generator)
    (obtained * gradient).sum().backward()
    (expected * gradient).sum().backward()
    assert_same_gradients(fast, reference, {"features": (mine[0], theirs[0])})


def test_edge_conv_loads_its_published_state_both_ways():
    fast, reference = twins(EdgeConvBlock, StraightEdgeConv, 4, 8, (16, 16))
    assert fast.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(fast.state_dict())


class StraightEmbedding(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(in_channels, width, kernel_size=1, bias=False),
                                    nn.BatchNorm1d(width), nn.ReLU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


@pytest.mark.parametrize("mode", MODES)
def test_candidate_embedding_computes_its_convolution(mode, generator):
    fast, reference = twins(CandidateEmbedding, StraightEmbedding, 6, 16)
    fast.train(mode == "train"), reference.train(mode == "train")
    _, features = point_cloud(32, 10, 6, generator)
    mine, theirs = inputs_like(features), inputs_like(features)
    obtained = fast(mine[0].transpose(0, 1)).transpose(0, 1)
    expected = reference(theirs[0])
    assert_agree(obtained, expected, "output")
    assert_same_running_statistics(fast, reference)
    obtained.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    assert_same_gradients(fast, reference, {"features": (mine[0], theirs[0])})


# -- DeepJet ------------------------------------------------------------------------------

class StraightBranch(nn.Module):
    """DeepJet's candidate branch as published: 1x1 convolutions, then an LSTM over every
    entry from the last to the first."""

    def __init__(self, n_features: int, filters: tuple[int, ...], lstm: int, dropout: float) -> None:
        super().__init__()
        layers, width = [], n_features
        for size in filters:
            layers += [nn.Conv1d(width, size, kernel_size=1), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.convolutions = nn.Sequential(*layers)
        self.lstm = nn.LSTM(width, lstm, batch_first=True)

    def forward(self, candidates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.convolutions(candidates.transpose(1, 2)).transpose(1, 2) * mask.unsqueeze(-1).float()
        _, (state, _) = self.lstm(torch.flip(features, dims=[1]))
        return state[-1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group_size", [8, 10_000], ids=["grouped by length", "one call"])
def test_deepjet_branch_computes_the_published_branch(mode, group_size, generator, monkeypatch):
    monkeypatch.setattr(models.deepjet, "MIN_GROUP_SIZE", group_size)
    # dropout 0: the layouts draw their masks in different orders
    fast, reference = twins(_CandidateBranch, StraightBranch, 10, (16, 8), 24, 0.0)
    fast.train(mode == "train"), reference.train(mode == "train")
    mask = candidate_mask(64, 15, generator, holes=True)
    candidates = torch.randn(64, 15, 10, generator=generator) * mask.unsqueeze(-1)
    mine, theirs = inputs_like(candidates), inputs_like(candidates)
    obtained, expected = fast(mine[0], mask), reference(theirs[0], mask)
    assert_agree(obtained, expected, "final state")
    gradient = torch.randn(expected.shape, generator=generator)
    (obtained * gradient).sum().backward()
    (expected * gradient).sum().backward()
    assert_same_gradients(fast, reference, {"candidates": (mine[0], theirs[0])})


# -- ParticleTransformer ------------------------------------------------------------------

class StraightPairEmbedding(nn.Module):
    def __init__(self, channels: tuple[int, ...], n_heads: int) -> None:
        super().__init__()
        layers, width = [nn.BatchNorm1d(4)], 4
        for size in channels:
            layers += [nn.Conv1d(width, size, kernel_size=1), nn.BatchNorm1d(size), nn.GELU()]
            width = size
        layers += [nn.Conv1d(width, n_heads, kernel_size=1), nn.BatchNorm1d(n_heads)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n = features.shape[-1]
        return self.layers(features.flatten(2)).view(len(features), -1, n, n)


@pytest.mark.parametrize("mode", MODES)
def test_pair_embedding_computes_its_convolutions(mode, generator):
    fast, reference = twins(PairEmbedding, StraightPairEmbedding, (16, 16), 4)
    fast.train(mode == "train"), reference.train(mode == "train")
    mask = candidate_mask(24, 9, generator)
    pairs = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).unsqueeze(1)
    features = torch.randn(24, 4, 9, 9, generator=generator) * pairs
    obtained, expected = fast(features), reference(features)
    assert_agree(obtained, expected, "bias")
    assert_same_running_statistics(fast, reference)
    gradient = torch.randn(expected.shape, generator=generator)
    (obtained * gradient).sum().backward()
    (expected * gradient).sum().backward()
    # in training, every bias but the BatchNorms' after a convolution is removed by a BatchNorm
    removed = [f"layers.{i}.bias" for i, layer in enumerate(fast.layers) if i == 0 or isinstance(layer, nn.Conv1d)]
    assert_same_gradients(fast, reference, {}, zero=tuple(removed) if mode == "train" else ())


class StraightAttention(nn.Module):
    """Multi-head attention written out: logits, bias, the most negative finite value on padded
    keys, softmax, dropout on the weights, a scale per head."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_width = n_heads, width // n_heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.output = nn.Linear(width, width)
        self.head_scale = nn.Parameter(torch.ones(n_heads))
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, context, key_mask, bias=None):
        def heads(x):
            return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_width).transpose(1, 2)

        q, k, v = heads(self.query(queries)), heads(self.key(context)), heads(self.value(context))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_width)
        if bias is not None:
            logits = logits + bias
        logits = logits.masked_fill(~key_mask[:, None, None, :], torch.finfo(logits.dtype).min)
        weighted = self.dropout(torch.softmax(logits, dim=-1)) @ v
        return self.output((weighted * self.head_scale.view(1, -1, 1, 1)).transpose(1, 2).flatten(2))


def attention_inputs(generator: torch.Generator, class_attention: bool):
    """Tokens (B, T, 16), the key mask (a jet without any real token included), the bias, and
    the upstream gradient, zero on padded queries as the model's masking makes it."""
    n_jets, n_tokens = 20, 11
    mask = candidate_mask(n_jets, n_tokens, generator)
    tokens = torch.randn(n_jets, n_tokens, 16, generator=generator) * mask.unsqueeze(-1)
    if class_attention:  # the keys are the class token and the particles
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        tokens = torch.cat([torch.randn(n_jets, 1, 16, generator=generator), tokens], dim=1)
        return tokens, mask, None, torch.randn(n_jets, 1, 16, generator=generator)
    bias = torch.randn(n_jets, 4, n_tokens, n_tokens, generator=generator)
    return tokens, mask, bias, torch.randn(n_jets, n_tokens, 16, generator=generator) * mask.unsqueeze(-1)


@pytest.mark.parametrize("mode,dropout", [("train", 0.0), ("train", 0.3), ("eval", 0.3)],
                         ids=["train, fused", "train, dropout on the weights", "eval, fused"])
@pytest.mark.parametrize("class_attention", [False, True], ids=["particles", "class token"])
def test_attention_computes_the_written_out_attention(mode, dropout, class_attention, generator):
    fast, reference = twins(Attention, StraightAttention, 16, 4, dropout)
    with torch.no_grad():
        reference.head_scale.uniform_(0.5, 1.5)
        fast.head_scale.copy_(reference.head_scale)
    fast.train(mode == "train"), reference.train(mode == "train")
    tokens, mask, bias, gradient = attention_inputs(generator, class_attention)
    results, leaves = [], []
    for layer in (fast, reference):
        context, bias_leaf = inputs_like(tokens)[0], None if bias is None else inputs_like(bias)[0]
        queries = context[:, :1] if class_attention else context
        torch.manual_seed(5)  # the same dropout masks: both layers draw them on the weights
        results.append(layer(queries, context, mask, bias_leaf))
        leaves.append((context, bias_leaf))
    obtained, expected = results
    assert torch.isfinite(obtained).all()
    assert_agree(obtained, expected, "output")
    for result in results:
        (result * gradient).sum().backward()
    inputs = {"tokens": (leaves[0][0], leaves[1][0])}
    if bias is not None:
        inputs["bias"] = (leaves[0][1], leaves[1][1])
    assert_same_gradients(fast, reference, inputs, zero=("key.bias",))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_attention_of_a_jet_without_real_tokens_is_finite_in_half_precision(dtype, generator):
    """Large logits plus the most negative value: the kernels must not overflow to -inf."""
    layer = Attention(16, 4, 0.0).eval().to(dtype)
    with torch.no_grad():
        layer.query.weight.mul_(50), layer.key.weight.mul_(-50)
    tokens = torch.randn(3, 6, 16, generator=generator).to(dtype)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1:, :2] = True
    with torch.no_grad():
        assert torch.isfinite(layer(tokens, tokens, mask)).all()


def test_batchnorm_statistics_of_channels_first_tensors_are_exact(generator):
    """Why the fast layers put channels first: BatchNorm of (1, C, entries) is as accurate as
    of the published (B, C, P, k) layout."""
    values = torch.randn(2000, 8, 5, 7, generator=generator) * 0.5 + 0.01
    channels_first = values.transpose(0, 1).reshape(1, 8, -1)
    exact = (values.double() - values.double().mean((0, 2, 3), keepdim=True)) / \
        (values.double().var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    obtained = nn.BatchNorm1d(8)(channels_first).view(8, 2000, 5, 7).transpose(0, 1)
    assert_agree(obtained.double(), exact, "normalised values")
    assert_agree(F.batch_norm(values, None, None, training=True).double(), exact, "published layout")
