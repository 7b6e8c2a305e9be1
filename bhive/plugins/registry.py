"""Plugin registries: processors, dataloaders and models register by class name, and configs
pick them by that name.

The registries are filled by importing plugin modules: the shipped packages (``models``,
``dataloaders``, ``processors``, imported by the tasks) and the modules a config lists under
``plugins:`` (:func:`load_plugins`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

#: directories (separated by ':') whose modules a config's ``plugins:`` may import
PLUGIN_PATH = "BHIVE_PLUGIN_PATH"
_REPOSITORY = Path(__file__).resolve().parents[2]


class PluginError(ValueError):
    """A plugin that cannot be registered or loaded."""


class Registry:
    """Classes of one plugin kind, by class name."""

    def __init__(self, kind: str, how_to_choose: str, error: type[Exception] = PluginError) -> None:
        self.kind, self.how_to_choose, self.error = kind, how_to_choose, error
        self._classes: dict[str, type] = {}

    def add(self, cls: type) -> None:
        """Register ``cls`` under its class name; a second class of the same name is an error."""
        known = self._classes.get(cls.__name__)
        if known is not None and _where(known) != _where(cls):
            raise PluginError(f"two {self.kind}s are called {cls.__name__}: {_where(known)} and {_where(cls)}; "
                              f"rename one of them")
        self._classes[cls.__name__] = cls

    def names(self) -> tuple[str, ...]:
        """Every registered name."""
        return tuple(sorted(self._classes))

    def get(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} '{name}'; known {self.kind}s: {', '.join(self.names())}. "
                             f"{self.how_to_choose}, or list the module that defines it under `plugins:` in "
                             f"the config") from None


def _where(cls: type) -> str:
    # a module run twice (e.g. reloaded) defines the "same" class again: that is no conflict
    return f"{cls.__module__}.{cls.__qualname__}"


def plugin_roots() -> list[Path]:
    """Where plugin modules named in a config may live: b-hive's own directory and the
    directories in ``$BHIVE_PLUGIN_PATH``."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(PLUGIN_PATH, "").split(os.pathsep) if p]
    return [_REPOSITORY, *extra]


def load_plugins(modules: Iterable[str]) -> None:
    """Import the plugin modules a config names, so that their classes register.

    A config may be written by someone else, and importing runs a module's code, so only
    modules inside :func:`plugin_roots` are imported: b-hive's own directory and the
    directories the person running b-hive lists in ``$BHIVE_PLUGIN_PATH`` (exported to batch
    jobs and worker processes with the rest of the environment).
    """
    roots = plugin_roots()
    for root in roots[1:]:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    if len(roots) > 1:
        # worker processes started afresh (dask, spawn) import the plugins by name as well
        paths = [str(r) for r in roots[1:]] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    for name in modules:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name.partition(".")[0])
        places = [] if spec is None else [Path(p).resolve() for p in (
            spec.submodule_search_locations or ([spec.origin] if spec.origin else []))]
        if not places or not all(any(place.is_relative_to(root) for root in roots) for place in places):
            raise PluginError(f"plugins: module '{name}' is not inside b-hive or a directory of ${PLUGIN_PATH} "
                              f"({os.pathsep.join(str(r) for r in roots[1:]) or 'not set'}); add the directory "
                              f"that holds it to ${PLUGIN_PATH}")
        importlib.import_module(name)
