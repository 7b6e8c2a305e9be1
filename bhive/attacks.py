"""Adversarial inputs: small, bounded shifts of a jet's inputs along the gradient of the loss.

Trained on, they make a tagger's response flat against input mismodelling (adversarial
training); applied at test time, they measure how much a tagger's performance rests on
details of the inputs a data/simulation difference could move.

- ``fgsm`` (fast gradient sign): one step of size epsilon along the sign of the gradient;
- ``pgd`` (projected gradient descent): ``iterations`` steps of size ``step``, each projected
  back onto the box |shift| <= epsilon, optionally from a random start inside the box.

Attacks act on standardised inputs, so epsilon is in units of each feature's width. Each
feature's box is epsilon times its factor (config ``attack.factors``, optionally read from a
data/simulation comparison file); features in ``attack.never`` (integer values, flags) have
factor 0; features in ``attack.non_negative`` are clamped at zero in their own units after the
shift; padded candidates are never touched. The gradient is taken with the model in eval mode
(no BatchNorm statistics move, no dropout), whatever mode it trains in.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ATTACKS = ("none", "fgsm", "pgd")
#: the format of a file of per-feature factors (config ``attack.factors_file``)
FACTORS_FORMAT = "bhive-attack-factors/1"


class AttackError(ValueError):
    """An attack that cannot be run as asked."""


@dataclass(frozen=True)
class Attack:
    """One attack's settings; ``fraction`` is the share of each training batch it replaces."""

    kind: str = "none"
    epsilon: float = 0.1
    iterations: int = 10
    step: float = 0.0            # 0: 2.5 epsilon / iterations (pgd)
    random_start: bool = False
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise AttackError(f"unknown attack {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if self.kind != "none" and not self.epsilon > 0:
            raise AttackError(f"attack {self.kind}: epsilon must be > 0, got {self.epsilon}")
        if self.iterations < 1 or self.step < 0 or not 0 < self.fraction <= 1:
            raise AttackError("attack: iterations must be >= 1, step >= 0 and fraction in (0, 1]")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def step_size(self) -> float:
        if self.kind == "fgsm":
            return self.epsilon
        return self.step or 2.5 * self.epsilon / self.iterations

    @property
    def steps(self) -> int:
        return 1 if self.kind == "fgsm" else self.iterations

    def label(self) -> str:
        """A short name for paths and tables, e.g. ``fgsm_eps0.05`` or ``pgd_eps0.1_it10``."""
        if not self.active:
            return "nominal"
        text = f"{self.kind}_eps{self.epsilon:g}"
        if self.kind == "pgd":
            text += f"_it{self.iterations}" + (f"_step{self.step:g}" if self.step else "") \
                + ("_rs" if self.random_start else "")
        return text

    def identity(self, with_fraction: bool) -> dict[str, Any]:
        """The settings that change an output; nothing for no attack (outputs of before stay valid)."""
        if not self.active:
            return {}
        settings = asdict(self)
        if not with_fraction:
            settings.pop("fraction")
        return settings


@dataclass(frozen=True)
class FeatureRules:
    """Per-feature attack factors (1 unless given; 0: never attacked) and the non-negative features."""

    factors: Mapping[str, float] = field(default_factory=dict)
    non_negative: Sequence[str] = ()

    def factor(self, name: str) -> float:
        return float(self.factors.get(name, 1.0))


def training_attack(settings: Any) -> tuple[Attack, FeatureRules]:
    """The attack and feature rules of a ``TrainingSettings``."""
    attack = Attack(kind=settings.attack, epsilon=settings.attack_epsilon, iterations=settings.attack_iterations,
                    step=settings.attack_step, random_start=settings.attack_random_start,
                    fraction=settings.attack_fraction)
    return attack, FeatureRules(dict(settings.attack_factors), tuple(settings.attack_non_negative))


def read_factors_file(path: Path) -> dict[str, float]:
    """``{feature: factor}`` from a JSON file ``{"format": FACTORS_FORMAT, "factors": {...}}``,
    e.g. the ratio of the data and simulation widths of each feature."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise AttackError(f"attack factors file {path} cannot be read: {error}") from None
    if not isinstance(content, dict) or content.get("format") != FACTORS_FORMAT:
        raise AttackError(f"attack factors file {path}: expected a JSON object with \"format\": \"{FACTORS_FORMAT}\" "
                          f"and \"factors\": {{feature: factor}}")
    factors = content.get("factors")
    if not isinstance(factors, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                and not isinstance(v, bool) and v >= 0 for k, v in factors.items()):
        raise AttackError(f"attack factors file {path}: \"factors\" must map feature names to numbers >= 0")
    return {name: float(value) for name, value in factors.items()}


def feature_rules(attack_config: Any, config_path: Path | None = None) -> FeatureRules:
    """The rules of a config's ``attack`` section: its factors file (relative to the config's
    directory) first, then ``factors`` over it, then 0 for ``never``."""
    factors: dict[str, float] = {}
    if attack_config.factors_file:
        path = Path(attack_config.factors_file)
        if not path.is_absolute() and config_path is not None:
            path = Path(config_path).parent / path
        factors.update(read_factors_file(path))
    factors.update(attack_config.factors)
    factors.update(dict.fromkeys(attack_config.never, 0.0))
    return FeatureRules(factors=factors, non_negative=tuple(attack_config.non_negative))


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


class Attacker:
    """Generates adversarial versions of standardised batches for one model (a TorchModel)."""

    def __init__(self, model: nn.Module, attack: Attack, rules: FeatureRules) -> None:
        if not attack.active:
            raise AttackError("Attacker needs an attack other than none")
        self.model, self.attack = model, attack
        spec = model.spec
        self.groups = tuple(model.groups)
        self._scale, self._floor = {}, {}
        for group in self.groups:
            names = spec.features[group]
            self._scale[group] = torch.tensor([rules.factor(name) for name in names])
            mean, std = getattr(model, f"mean_{group}"), getattr(model, f"std_{group}")
            # the standardised value of a raw 0, below which a non-negative feature may not go
            floor = torch.where(torch.tensor([name in rules.non_negative for name in names]),
                                (0.0 - mean.cpu()) / std.cpu(), torch.tensor(float("-inf")))
            self._floor[group] = floor

    def _allowed(self, batch: Mapping[str, torch.Tensor], group: str) -> torch.Tensor:
        """epsilon x factor per entry, 0 on padded candidates."""
        values = batch[group]
        scale = self._scale[group].to(values.device, values.dtype) * self.attack.epsilon
        if group == "global":
            return scale.expand_as(values)
        return scale * batch[f"mask_{group}"].unsqueeze(-1).to(values.dtype)

    def __call__(self, batch: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``batch`` (standardised) with every used group shifted to raise the loss of ``labels``."""
        attack = self.attack
        start = {group: batch[group].detach() for group in self.groups}
        radius = {group: self._allowed(batch, group) for group in self.groups}
        shift = {group: torch.zeros_like(start[group]) for group in self.groups}
        if attack.kind == "pgd" and attack.random_start:
            shift = {group: (torch.rand_like(start[group]) * 2 - 1) * radius[group] for group in self.groups}
        with _evaluating(self.model), torch.enable_grad():
            for _ in range(attack.steps):
                shifted = {group: (start[group] + shift[group]).requires_grad_(True) for group in self.groups}
                logits = self.model({**batch, **shifted})
                loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                gradients = torch.autograd.grad(loss, [shifted[group] for group in self.groups])
                for group, gradient in zip(self.groups, gradients):
                    # every step scales with the feature's box: epsilon x factor for fgsm
                    moved = shift[group] + attack.step_size / attack.epsilon * radius[group] * torch.sign(gradient)
                    shift[group] = self._bounded(group, start[group], moved, radius[group])
        return {**batch, **{group: (start[group] + shift[group]).detach() for group in self.groups}}

    def _bounded(self, group: str, start: torch.Tensor, shift: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """The shift projected onto the box of ``radius`` and kept above the non-negative floors."""
        shift = torch.maximum(torch.minimum(shift, radius), -radius)
        # a value already below its floor in the inputs (a -1 default) may not be pushed lower
        floor = torch.minimum(self._floor[group].to(start.device, start.dtype), start)
        shifted = torch.maximum(start + shift, floor)
        # a floor never lifts a value the attack did not move (a padded entry, a value below 0 in
        # the inputs already)
        return torch.where(radius > 0, shifted - start, torch.zeros_like(shift))


def attacked_rows(n: int, fraction: float) -> int:
    """How many of a batch's ``n`` jets an attack with ``fraction`` replaces (the first ones: the
    batches are shuffled)."""
    return min(n, max(1, round(fraction * n))) if n else 0


def partly_attacked(attacker: Attacker, batch: Mapping[str, torch.Tensor], labels: torch.Tensor,
                    fraction: float) -> dict[str, torch.Tensor]:
    """``batch`` (standardised) with its first ``fraction`` of jets replaced by their adversarial
    versions, for adversarial training."""
    n = attacked_rows(len(labels), fraction)
    head = attacker({key: values[:n] for key, values in batch.items()}, labels[:n])
    return {key: torch.cat([head[key], values[n:]]) if key in attacker.groups else values
            for key, values in batch.items()}
