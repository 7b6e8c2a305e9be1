"""A reduced feature list from an input ranking, written as the config keys it replaces.

The ``top`` most important features of each input group are kept, in the config's own order
and under the config's own keys (``global_features``, ``global_custom_features``,
``cpf_candidates``, ``cpf_custom_features``, ...), so the snippet can be pasted over those
keys in a copy of the config. A config needs its ``pt_key`` and ``eta_key`` among the global
features (binning and reweighting read them), so they stay even when they are not among the
most important; a comment in the snippet says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml

from bhive.config import GROUP_KEYS, Config


class ReducedFeaturesError(ValueError):
    """A ranking that does not fit the config it is to reduce."""


def _config_keys(cfg: Config, group: str) -> list[tuple[str, Sequence[str] | Mapping[str, str]]]:
    """(config key, its features) for the keys that list ``group``'s features, in config order:
    branch features, then custom features (the dataset's order of the group's columns)."""
    if group == "global":
        return [("global_features", cfg.global_features), ("global_custom_features", cfg.global_custom_features)]
    if group not in cfg.candidate_groups:
        raise ReducedFeaturesError(f"the ranking has the group '{group}', which the config {cfg.name} does not "
                                   f"configure; reduce the config the model was trained with")
    features_key, _, custom_key = GROUP_KEYS[group]
    candidates = cfg.candidate_groups[group]
    return [(features_key, candidates.features), (custom_key, candidates.custom_features)]


def reduced_features(scores: Mapping[tuple[str, str], float], cfg: Config, top: int) -> tuple[dict, list[str]]:
    """The config keys of every ranked group with its ``top`` highest-scoring features (ties
    keep the ranking's order), in config order, and the required features kept beyond them.

    ``scores`` maps (group, feature) to the feature's importance. Custom-feature keys appear
    only where the config has custom features for the group (maps, name -> expression)."""
    if top < 1:
        raise ReducedFeaturesError(f"--top {top}: keep at least one feature per group; give a positive number")
    ranked: dict[str, list[str]] = {}
    for group, feature in sorted(scores, key=lambda key: -scores[key]):
        ranked.setdefault(group, []).append(feature)
    keys: dict = {}
    kept_beyond: list[str] = []
    order = ["global", *GROUP_KEYS]
    for group in sorted(ranked, key=order.index):
        chosen = set(ranked[group][:top])
        if group == "global":
            required = [name for name in dict.fromkeys((cfg.pt_key, cfg.eta_key)) if name not in chosen]
            kept_beyond += required
            chosen.update(required)
        known = set()
        for key, features in _config_keys(cfg, group):
            known.update(features)
            if isinstance(features, Mapping):
                if features:
                    keys[key] = {name: expression for name, expression in features.items() if name in chosen}
            else:
                keys[key] = [name for name in features if name in chosen]
        unknown = sorted(set(ranked[group]) - known)
        if unknown:
            raise ReducedFeaturesError(f"the ranked {group} feature(s) {', '.join(unknown)} are not in the config "
                                       f"{cfg.name}; reduce the config the model was trained with")
    return keys, kept_beyond


def reduced_yaml(scores: Mapping[tuple[str, str], float], cfg: Config, top: int, title: str,
                 skipped_groups: Sequence[str] = ()) -> str:
    """:func:`reduced_features` as a commented YAML snippet; ``title`` says what ranked them,
    ``skipped_groups`` are configured groups the model does not read (left as they are)."""
    keys, kept_beyond = reduced_features(scores, cfg, top)
    lines = [f"# The {top} most important features of each input group of {title},",
             "# in the config's order: paste these keys over the same keys in a copy of the config."]
    if kept_beyond:
        lines.append(f"# Kept although not among them (the config's pt_key and eta_key): {', '.join(kept_beyond)}.")
    if skipped_groups:
        lines.append(f"# Not read by the model, so not ranked and left out: {', '.join(skipped_groups)}.")
    return "\n".join(lines) + "\n" + yaml.safe_dump(keys, sort_keys=False, default_flow_style=False)
