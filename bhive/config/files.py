"""Reading and layering config files, and naming the file a mistake is in."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic_core import ErrorDetails

from bhive.config.values import describe, suggest


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the dotted key and the fix."""

    def __init__(self, problem: str, *, file: Path | str | None = None, key: str | None = None):
        self.problem = problem
        self.file = Path(file) if file is not None else None
        self.key = key
        super().__init__(": ".join([*([str(file)] if file is not None else []), *([key] if key else []), problem]))


def dotted(path: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" if index else str(part)
                   for index, part in enumerate(path))


def _sets(data: Any, path: tuple, null: bool) -> bool:
    """Whether ``data`` sets ``path`` (to null too, with ``null``); a list or scalar set higher up
    owns everything below it."""
    for part in path:
        if not isinstance(data, dict):
            break
        if part not in data:
            return False
        data = data[part]
    return null or data is not None


@dataclasses.dataclass(frozen=True)
class Sources:
    """The two layered files and their content, and settings layered over both for one run
    (``overrides``, named ``overrides_name``), to name where a value comes from."""

    user_file: Path
    default_file: Path
    user: dict
    default: dict
    overrides: dict = dataclasses.field(default_factory=dict)
    overrides_name: Path = Path("overrides")

    def merged(self) -> dict:
        return _merge(_merge(self.default, self.user), self.overrides)

    def origin(self, path: tuple) -> Path:
        """The overrides where they set ``path``; default.yml where the user file does not set
        it and default.yml sets it to more than a null placeholder (a missing value is the
        user's to add); else the user file."""
        if self.overrides and _sets(self.overrides, path, null=True):
            return self.overrides_name
        from_default = not _sets(self.user, path, null=True) and _sets(self.default, path, null=False)
        return self.default_file if from_default else self.user_file

    def error(self, error: ErrorDetails) -> ConfigError:
        """A pydantic error as one line: the file, the dotted key, what is wrong and what is allowed."""
        context = error.get("ctx") or {}
        path = tuple(part for part in error["loc"] if part != "[key]") + tuple(context.get("at", ()))
        kind, value, key = error["type"], error.get("input"), path[-1] if path else None
        if "[key]" in error["loc"] and kind != "config":  # a name that is not a string, such as null
            return ConfigError(f"names must be non-empty strings, got {describe(value)}", file=self.origin(path),
                               key=dotted(path))
        if kind == "missing" or (value is None and isinstance(key, str) and kind != "config"):
            return self._missing(path, null=context.get("null", kind != "missing"))
        if kind == "unknown_key":
            under = f" under {dotted(path[:-1])}" if len(path) > 1 else ""
            problem = (f"unknown key {key!r}{suggest(key, context['allowed'], f'Allowed keys{under}')}"
                       if isinstance(key, str) else f"keys must be strings, got {describe(key)}")
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            problem = f"expected a mapping (key: value entries), got {describe(value)}"
        else:  # the checks in bhive.config.values word their own problem
            problem = context.get("problem") or f"{error['msg']}, got {describe(value)}"
        return ConfigError(problem, file=self.origin(path), key=dotted(path) or None)

    def _missing(self, path: tuple, null: bool) -> ConfigError:
        key, parent = path[-1], path[:-1]
        if len(parent) <= 1:
            under = f" under '{parent[0]}:'" if parent else ""
            fix = f"add '{key}: ...'{under} to {self.user_file.name} (or to {self.default_file.name} to share it " \
                  f"between configs)"
        else:
            fix = f"add '{key}: ...' under {dotted(parent)}"
        return ConfigError(f"required key {key!r} {'is null' if null else 'is missing'}; {fix}",
                           file=self.origin(parent), key=dotted(path))


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 6e4 and 1e-3 as numbers (YAML 1.2), not strings."""


# add_implicit_resolver would append to lists shared with SafeLoader; copy them first.
_Loader.yaml_implicit_resolvers = {first: list(resolvers)
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _check_duplicate_keys(node: yaml.Node, path: Path, key_path: tuple, seen: set[int]) -> None:
    # PyYAML keeps the last of two equal keys silently; in a config that hides a mistake
    # (two truth labels "b", two simulated processes "qcd", ...). ``seen``: aliases may recurse.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, path, (*key_path, index), seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[tuple[str, str], yaml.Mark] = {}
    for key_node, value_node in node.value:
        scalar = isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<"
        identity = (key_node.tag, key_node.value) if scalar else None
        if identity in first:
            raise ConfigError(f"duplicate key {key_node.value!r} (line {first[identity].line + 1} and line "
                              f"{key_node.start_mark.line + 1}); each key may appear once in a mapping",
                              file=path, key=dotted((*key_path, key_node.value)))
        if scalar:
            first[identity] = key_node.start_mark
        _check_duplicate_keys(value_node, path, (*key_path, key_node.value) if scalar else key_path, seen)


def read_yaml(path: Path) -> dict:
    """The mapping in the YAML file ``path``; every problem is a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror or exc})", file=path) from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_duplicate_keys(node, path, (), set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{where}: YAML syntax error: {problem}", file=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=path) from exc
    finally:
        loader.dispose()
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"the file must be a mapping of config keys (key: value lines), got {describe(data)}",
                          file=path)
    return data or {}
