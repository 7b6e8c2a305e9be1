"""What a hyperparameter search may change: the allow-list of settings and their distributions.

``search.space`` maps a dotted setting to the distribution its trials draw it from, e.g.
``training.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}``. The same allow-list bounds the
``--overrides`` a run sets on top of its config (how a search hands a trial its settings), so
that nothing else of a config (its inputs, features, plugins) can be changed that way:

- ``training.<key>`` for the training settings that change the trained model while leaving
  what trials are ranked on (the validation jets and their weights) alone;
- ``model_settings.<Model>.<hyperparameter>``: a public name; that the model takes it is
  checked when a search starts (the model registry needs the config's plugins loaded).

Distributions: ``{uniform: [lo, hi]}``, ``{log_uniform: [lo, hi]}`` (lo > 0), ``{int: [lo, hi]}``
(optionally with ``log: true``) and ``{choice: [values]}``. The values a training key may take
are checked against that key's own type in the training section (:func:`check_training_values`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, TypeAdapter, ValidationError, WithJsonSchema

from bhive.config.values import describe, fail, number, suggest

#: training settings a search may vary
TRAINING_KEYS = ("epochs", "batch_size", "learning_rate", "weight_decay", "optimizer", "scheduler", "warmup_epochs",
                 "gradient_clip", "patience", "sampling")
_RANKS_ON = "so trials would be ranked on different objectives"
#: training settings that change the validation metric itself, and why they stay fixed
FIXED_TRAINING_KEYS = {
    "validation_fraction": f"it changes which jets validate, {_RANKS_ON}",
    "class_weights": f"it changes the weights of the validation loss, {_RANKS_ON}",
    "negative_weights": f"it changes the weights of the validation loss, {_RANKS_ON}",
}
DISTRIBUTIONS = ("uniform", "log_uniform", "int", "choice")
_RANGES = ("uniform", "log_uniform", "int")
# public names only, no '_' prefix: a model class, a constructor argument (never __class__ & co.)
_PUBLIC = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_RESERVED = ("self", "spec")  # the constructor's own arguments, never settings
_ALLOWED = (f"training.<key> ({', '.join(TRAINING_KEYS)}) or model_settings.<Model>.<hyperparameter>")
_FORMS = ("{log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]} (optionally with log: true) or "
          "{choice: [values]}")


def setting_problem(key: Any) -> str | None:
    """Why ``key`` may not be searched (or set with ``--overrides``); None when it may."""
    if not isinstance(key, str):
        return f"a setting is a dotted name like training.learning_rate, got {describe(key)}"
    parts = key.split(".")
    if parts[0] == "training" and len(parts) == 2:
        name = parts[1]
        if name in TRAINING_KEYS:
            return None
        if name in FIXED_TRAINING_KEYS:
            return f"training.{name} cannot be searched: {FIXED_TRAINING_KEYS[name]}"
        return f"unknown training setting {name!r}{suggest(name, TRAINING_KEYS, 'Searchable training settings')}"
    if parts[0] == "model_settings" and len(parts) == 3:
        model, name = parts[1:]
        if not _PUBLIC.fullmatch(model):
            return f"{model!r} is not a model class name"
        if not _PUBLIC.fullmatch(name) or name in _RESERVED:
            return f"{name!r} is not a hyperparameter name (a public constructor argument of {model})"
        return None
    return f"{key!r} cannot be searched or overridden; allowed: {_ALLOWED}"


def nested(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted settings as the nested mapping a config file writes, e.g. for best.yml."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _bounds(bounds: Any, kind: str, key: str) -> list:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        fail(f"expected a range [lo, hi] of two numbers, got {describe(bounds)}", key, kind)
    whole = kind == "int"
    allowed = "an integer" if whole else "a number"
    lo, hi = (number(bound, allowed, whole=whole, at=(key, kind, index)) for index, bound in enumerate(bounds))
    if lo >= hi:
        fail(f"empty range [{lo:g}, {hi:g}]; the lower end must be below the upper end", key, kind)
    if kind == "log_uniform" and lo <= 0:
        fail(f"a log-uniform range must start above 0, got {lo:g}", key, kind, 0)
    return [lo, hi]


def _choices(choices: Any, key: str) -> list:
    if not isinstance(choices, (list, tuple)):
        fail(f"expected a list of values to choose from, got {describe(choices)}", key, "choice")
    if len(choices) < 2:
        fail(f"{len(choices)} value(s) to choose from; list at least two, or set {key} in the config instead",
             key, "choice")
    seen: set[str] = set()
    for index, choice in enumerate(choices):
        text = json.dumps(choice, sort_keys=True)
        if text in seen:
            fail(f"{text} is listed twice; each value may appear once", key, "choice", index)
        seen.add(text)
    return list(choices)


def _distribution(spec: Any, key: str) -> dict[str, Any]:
    """``spec`` as a distribution, normalised: its bounds as numbers, ``log`` only with int."""
    if not isinstance(spec, dict):
        fail(f"expected a distribution, {_FORMS}; got {describe(spec)}", key)
    for name in spec:
        if name not in (*DISTRIBUTIONS, "log"):
            fail("", key, name, kind="unknown_key", allowed=(*DISTRIBUTIONS, "log"))
    kinds = [name for name in DISTRIBUTIONS if name in spec]
    if len(kinds) != 1:
        fail(f"give exactly one distribution: {_FORMS}", key)
    kind = kinds[0]
    if "log" in spec:
        if kind != "int":
            hint = " (a log-scaled range of numbers is {log_uniform: [lo, hi]})" if kind in _RANGES else ""
            fail(f"'log' goes with int ranges only{hint}", key, "log")
        if not isinstance(spec["log"], bool):
            fail(f"expected true or false, got {describe(spec['log'])}", key, "log")
    if kind == "choice":
        return {"choice": _choices(spec["choice"], key)}
    bounds = _bounds(spec[kind], kind, key)
    if spec.get("log") and bounds[0] < 1:
        fail(f"a log-scaled int range must start at 1 or above, got {bounds[0]}", key, "int", 0)
    return {kind: bounds, **({"log": True} if spec.get("log") else {})}


def _space(space: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(space, dict):
        fail(f"expected a mapping {{setting: distribution}}, e.g. {{training.learning_rate: "
             f"{{log_uniform: [1.0e-4, 1.0e-2]}}}}; got {describe(space)}")
    checked = {}
    for key, spec in space.items():
        problem = setting_problem(key)
        if problem:
            fail(problem, key)
        checked[key] = _distribution(spec, key)
    return checked


_SETTING_PATTERN = (rf"^(training\.({'|'.join(TRAINING_KEYS)})|model_settings\.[A-Za-z][A-Za-z0-9_]*"
                    rf"\.[A-Za-z][A-Za-z0-9_]*)$")
_RANGE_SCHEMA = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_DISTRIBUTION_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
    **{kind: _RANGE_SCHEMA for kind in _RANGES}, "choice": {"type": "array", "minItems": 2},
    "log": {"type": "boolean"}}}
#: ``search.space``: {dotted setting: distribution}, checked and normalised
Space = Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else _space(value)),
                  WithJsonSchema({"type": "object", "propertyNames": {"pattern": _SETTING_PATTERN},
                                  "additionalProperties": _DISTRIBUTION_SCHEMA})]


def _problem(error: ValidationError) -> str:
    detail = error.errors()[0]
    return (detail.get("ctx") or {}).get("problem") or f"{detail['msg']}, got {describe(detail.get('input'))}"


def check_training_values(space: Mapping[str, dict[str, Any]], training: type[BaseModel]) -> None:
    """Every value a distribution of a training key can draw is one that key takes: whole
    numbers for an integer key, listed words for a key like ``optimizer``, each end of a range
    (and so everything between) within the key's bounds."""
    for key, spec in space.items():
        section, _, name = key.partition(".")
        if section != "training":
            continue
        field = training.model_fields[name]
        adapter = TypeAdapter(Annotated[(field.annotation, *field.metadata)])
        (kind, values), = ((kind, value) for kind, value in spec.items() if kind != "log")
        if kind != "choice" and field.annotation not in (int, float):
            fail(f"training.{name} takes one of its listed values; search it with {{choice: [...]}}", "search",
                 "space", key, kind)
        if kind in ("uniform", "log_uniform") and field.annotation is int:
            fail(f"training.{name} takes whole numbers; search it with {{int: [lo, hi]}} or {{choice: [...]}}",
                 "search", "space", key, kind)
        for index, value in enumerate(values):
            try:
                adapter.validate_python(value)
            except ValidationError as error:
                fail(_problem(error), "search", "space", key, kind, index)

