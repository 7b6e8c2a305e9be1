"""Truth labels: evaluating the config's truth rules on per-jet columns.

A rule matches a jet when every condition holds (AND); a condition holds when any of its
alternatives does (OR). Rules are meant to be mutually exclusive: a jet matching two labels
is an error, never a silent first-match, because which label wins would otherwise depend on
the order of the YAML file.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bhive.config import TruthRule

_OPERATORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


class TruthOverlapError(ValueError):
    """A jet matches more than one truth rule."""


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def _column(columns: Mapping[str, np.ndarray], branch: str, label: str, source: str) -> np.ndarray:
    if branch not in columns:
        raise ValueError(f"{_prefix(source)}branch '{branch}' needed by truth label '{label}' is missing; "
                         f"add it to the input ntuples or change the truth rule of '{label}'")
    values = np.asarray(columns[branch])
    if values.ndim != 1:
        raise ValueError(f"{_prefix(source)}branch '{branch}' needed by truth label '{label}' has shape "
                         f"{values.shape}; truth rules need one value per jet")
    return values


def rule_matches(columns: Mapping[str, np.ndarray], rule: TruthRule, source: str = "") -> np.ndarray:
    """Boolean mask of the jets that satisfy every condition of ``rule``."""
    matched: np.ndarray | None = None
    for condition in rule.conditions:
        values = _column(columns, condition.branch, rule.label, source)
        holds = np.zeros(values.shape, dtype=bool)
        for op, value in condition.alternatives:
            if op not in _OPERATORS:
                raise ValueError(f"truth label '{rule.label}', branch '{condition.branch}': unknown operator "
                                 f"{op!r}; use one of {', '.join(_OPERATORS)}")
            holds |= _OPERATORS[op](values, value)
        if matched is not None and matched.shape != holds.shape:
            raise ValueError(f"{_prefix(source)}branches of truth label '{rule.label}' have different lengths "
                             f"({matched.shape[0]} and {holds.shape[0]} jets at '{condition.branch}')")
        matched = holds if matched is None else matched & holds
    if matched is None:
        raise ValueError(f"truth label '{rule.label}' has no conditions; give it at least one "
                         f"{{branch: [values]}} item")
    return matched


def truth_index(columns: Mapping[str, np.ndarray], rules: Sequence[TruthRule], source: str = "") -> np.ndarray:
    """int16 index into ``rules`` of the rule each jet matches, -1 where none does.

    Raises TruthOverlapError when any jet matches two or more rules.
    """
    if not rules:
        raise ValueError("no truth rules given; the config's 'truths' must name at least one label")
    masks = [rule_matches(columns, rule, source) for rule in rules]
    lengths = {mask.shape[0] for mask in masks}
    if len(lengths) > 1:
        raise ValueError(f"{_prefix(source)}truth branches have different lengths ({sorted(lengths)} jets); "
                         f"every truth branch must hold one value per jet")
    matches = np.stack(masks)
    n_matches = matches.sum(axis=0)
    overlapping = n_matches > 1
    if overlapping.any():
        first_jet = int(np.argmax(overlapping))
        first, second = np.flatnonzero(matches[:, first_jet])[:2]
        n_overlap = int(overlapping.sum())
        raise TruthOverlapError(
            f"{_prefix(source)}{n_overlap} jet(s) match both truth labels '{rules[first].label}' and "
            f"'{rules[second].label}'; the truth rules must be mutually exclusive: add a condition that "
            f"excludes one label from the other (e.g. add {{isBB: [0]}} to b when bb is a label of its own)")
    return np.where(n_matches == 1, matches.argmax(axis=0), -1).astype(np.int16)


def label_map(truth_labels: Sequence[str], classes: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Output-class index for every truth-label index (-1: the label belongs to no class)."""
    mapping = np.full(len(truth_labels), -1, dtype=np.int64)
    for class_index, members in enumerate(classes.values()):
        for label in members:
            if label not in truth_labels:
                raise ValueError(f"class member '{label}' is not a truth label of the dataset "
                                 f"({', '.join(truth_labels)}); the config and the dataset disagree, "
                                 f"rebuild the dataset or fix `classes`")
            mapping[list(truth_labels).index(label)] = class_index
    return mapping
