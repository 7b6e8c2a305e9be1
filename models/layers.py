"""Building blocks shared by the PyTorch models.

Per-candidate (and per-edge, per-pair) layers are 1x1 convolutions in the published models,
and the models keep them as ``nn.Conv1d``/``nn.Conv2d`` modules so that their parameters,
and with them the checkpoints, keep their names and shapes. :func:`apply_pointwise` runs them
as one matrix product on channels-first tensors (channels, jets, ...): on CPUs a 1x1
convolution of a (jets, channels, ...) tensor takes about 2.5 times as long as the product.
Channels first rather than last because BatchNorm's CPU kernels sum the batch statistics of a
channels-last tensor in one float32 pass, 1e-4 off for a million entries, but those of each
channel's contiguous row pairwise, as accurately as the convolutions they replace.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


def dense_head(width: int, sizes: Sequence[int], n_outputs: int, dropout: float) -> nn.Sequential:
    """Linear + ReLU + dropout for each of ``sizes``, then a linear layer to ``n_outputs``."""
    layers = []
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def uses_running_statistics(norm: nn.Module) -> bool:
    """Whether ``norm`` is a BatchNorm that normalises with its running statistics (eval mode),
    so that it is an affine map which can be folded into the layer before it."""
    return isinstance(norm, _BatchNorm) and not norm.training and norm.running_mean is not None


def pointwise_weights(conv: nn.Module, norm: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in) matrix and the bias of a 1x1 convolution; when the BatchNorm ``norm`` that
    follows it uses its running statistics, with ``norm`` folded in (the caller then leaves
    ``norm`` out), otherwise without it.

    The weights are views or functions of the parameters, so gradients reach them."""
    weight, bias = conv.weight.flatten(1), conv.bias
    if norm is None or not uses_running_statistics(norm):
        return weight, bias
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale if bias is None else (bias - norm.running_mean) * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return weight * scale.unsqueeze(1), shift


def _product(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``weight`` (out, in) times ``flat`` (in, L), plus ``bias``: one matrix product (a 2D one:
    batched products of a transposed operand can miss the BLAS kernels), whose result is a
    tensor of its own, not a view, so that it can be changed in place."""
    return torch.mm(weight, flat) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat)


def pointwise(values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution with the (out, in) matrix ``weight`` of channels-first ``values`` (in, ...)."""
    out = _product(values.reshape(values.shape[0], -1), weight, bias)
    return out.view(weight.shape[0], *values.shape[1:])


def apply_pointwise(layers: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """``layers`` (a Sequential, or one module) of 1x1 convolutions, BatchNorms and elementwise
    layers (activations, Identity) on a channels-first tensor (channels, ...). Not dropout:
    data-parallel training on CPUs replaces it by one that slices the jets, which come first.

    A BatchNorm using its running statistics is folded into the convolution before it, and a
    ReLU right after a convolution or a BatchNorm works in place (neither needs its output
    for the gradient); the result is the layers' own up to float rounding. BatchNorms must
    accept (1, channels, entries): BatchNorm1d, or the SyncBatchNorm replacing it in
    data-parallel training on GPUs."""
    layers = list(layers) if isinstance(layers, nn.Sequential) else [layers]
    shape = values.shape
    # (channels, entries) for the products, (1, channels, entries) for BatchNorm1d, which then
    # sums each channel's contiguous row; the tensors made here are their own (views only go
    # in), so in-place ReLU costs autograd nothing
    values = values.reshape(shape[0], -1)
    position, owned = 0, False  # owned: ``values`` was made here, so it may be overwritten
    while position < len(layers):
        layer = layers[position]
        following = layers[position + 1] if position + 1 < len(layers) else None
        if isinstance(layer, _ConvNd):
            norm = following if following is not None and uses_running_statistics(following) else None
            values = _product(values.reshape(layer.in_channels, -1), *pointwise_weights(layer, norm))
            owned, position = True, position + (1 if norm is None else 2)
            continue
        if isinstance(layer, _BatchNorm):
            values, owned = layer(values.reshape(1, layer.num_features, -1)), True
        elif isinstance(layer, nn.ReLU) and owned:
            values = values.relu_()
        else:
            values, owned = layer(values), False
        position += 1
    return values.reshape(-1, *shape[1:])
