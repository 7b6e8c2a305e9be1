"""What an output was made from: its identity, recorded beside it as ``identity.json``.

A version names one result, so asking for an existing version with anything changed must
be an error that says what changed, never a silent reuse. An identity is a flat map from
dotted keys to JSON values, so that a difference can be named key by key:

- ``task``: the task family, and ``seed``;
- ``config.<key>``: the resolved value of every config leaf the task reads (after command
  line overrides), e.g. ``config.training.epochs`` or ``config.model_settings.DeepJet.dropout``;
- ``settings.<name>``: the task's own parameters that change its output;
- ``input.<name>``: a hash of the identity of each output it consumes.

Identities stay valid as the code grows: a key on only one side of a comparison is compared
against its declared default (config keys: their value in the shipped ``configs/default.yml``;
settings: the task's declared defaults), so a new setting whose default reproduces the old
behaviour leaves existing outputs valid.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bhive.store import atomic_write_json, read_json, stable_hash

IDENTITY_FILE = "identity.json"
FORMAT = 2
#: a key that has no declared default
NO_DEFAULT = object()


class VersionConflictError(RuntimeError):
    """An existing output of this version was produced with different inputs or settings."""


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``value`` as ``{dotted key: leaf}``; mappings are descended, lists are leaves."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: _plain(value)}


def _plain(value: Any) -> Any:
    # tuples and lists compare equal after a JSON round trip only as lists
    return json.loads(json.dumps(value, default=str))


def lookup(data: Mapping, dotted: str) -> Any:
    """The value at ``dotted`` in nested mappings, or None where it is absent."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def config_entries(raw: Mapping, keys: Iterable[str]) -> dict[str, Any]:
    """``config.<key>`` entries, flattened to leaves, for the dotted config ``keys``."""
    entries: dict[str, Any] = {}
    for key in keys:
        entries.update(flatten(f"config.{key}", lookup(raw, key)))
    return entries


@functools.cache
def _shipped_defaults() -> dict:
    import yaml

    from bhive.config import CONFIG_DIR

    return yaml.safe_load((CONFIG_DIR / "default.yml").read_text()) or {}


def config_default(key: str) -> Any:
    """The declared default of a ``config.<dotted key>`` entry: its value in the shipped
    default.yml (None, like an absent key, where default.yml does not set it)."""
    return _plain(lookup(_shipped_defaults(), key.removeprefix("config.")))


@dataclass(frozen=True)
class Difference:
    key: str
    recorded: Any
    expected: Any

    def describe(self) -> str:
        return f"{self.key}: {_show(self.recorded)} -> {_show(self.expected)}"


def _show(value: Any) -> str:
    if value is NO_DEFAULT:
        return "(not recorded)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(recorded: Mapping[str, Any], expected: Mapping[str, Any],
                default: Callable[[str], Any]) -> list[Difference]:
    """Keys whose values differ; a key missing on one side stands for ``default(key)``."""
    found = []
    for key in sorted(set(recorded) | set(expected)):
        old = recorded[key] if key in recorded else default(key)
        new = expected[key] if key in expected else default(key)
        if old is NO_DEFAULT or new is NO_DEFAULT or old != new:
            found.append(Difference(key, old, new))
    return found


def record(directory: Path, identity: Mapping[str, Any]) -> None:
    atomic_write_json(directory / IDENTITY_FILE, {"format": FORMAT, "hash": stable_hash(identity),
                                                  "identity": dict(identity)})


def recorded(directory: Path) -> dict | None:
    """The identity recorded in ``directory``; None where there is none.

    An ``identity.json`` of an earlier format (one opaque hash per section) cannot be
    compared key by key: that is a :class:`VersionConflictError` with the way out.
    """
    path = directory / IDENTITY_FILE
    if not path.exists():
        return None
    content = read_json(path)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise VersionConflictError(
            f"{directory} was written by an earlier b-hive whose identity.json cannot be compared key by key "
            f"with today's settings; keep it by pointing to another version for new results, or remove it "
            f"with --remove-output and run again")
    return content["identity"]


def conflict(found: list[Difference], what: str, directory: Path, bump: str) -> VersionConflictError:
    """The error for an existing output of ``what`` made with other settings: what changed,
    old -> new, and the version parameter to bump."""
    changed = "; ".join(d.describe() for d in found[:8]) + ("; ..." if len(found) > 8 else "")
    return VersionConflictError(
        f"{what} exists with other settings ({changed}); a version names one result: choose a new one "
        f"with {bump} (or --version), or remove the old output with --remove-output ({directory})")
