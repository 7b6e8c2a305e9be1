"""Truth labels: evaluating the config's truth rules on per-jet columns.

A rule matches a jet when every condition holds (AND); a condition holds when any of its
alternatives does (OR). Rules are meant to be mutually exclusive: a jet matching two labels
is an error, never a silent first-match.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np

from bhive.config import TruthRule

_OPERATORS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
              "<": operator.lt, "<=": operator.le}


class TruthOverlapError(ValueError):
    """A jet matches more than one truth rule."""


def rule_matches(columns: Mapping[str, np.ndarray], rule: TruthRule, source: str = "") -> np.ndarray:
    """Boolean mask of the jets matching one rule."""
    matched = None
    for condition in rule.conditions:
        try:
            values = np.asarray(columns[condition.branch])
        except KeyError:
            raise ValueError(f"{source}: branch '{condition.branch}' needed by truth label '{rule.label}' "
                             f"is missing") from None
        holds = np.zeros(values.shape, dtype=bool)
        for op, value in condition.alternatives:
            holds |= _OPERATORS[op](values, value)
        matched = holds if matched is None else matched & holds
    return matched


def truth_index(columns: Mapping[str, np.ndarray], rules: Sequence[TruthRule], source: str = "") -> np.ndarray:
    """int16 index of the rule each jet matches, -1 where none does."""
    masks = np.stack([rule_matches(columns, rule, source) for rule in rules])
    n_matches = masks.sum(axis=0)
    if np.any(n_matches > 1):
        jets = np.flatnonzero(n_matches > 1)
        first, second = np.flatnonzero(masks[:, jets[0]])[:2]
        raise TruthOverlapError(
            f"{source}: {len(jets)} jet(s) match both truth labels '{rules[first].label}' and "
            f"'{rules[second].label}'; the truth rules must be mutually exclusive "
            f"(e.g. add {{isBB: [0]}} to b when bb is a label of its own)")
    return np.where(n_matches == 1, masks.argmax(axis=0), -1).astype(np.int16)
