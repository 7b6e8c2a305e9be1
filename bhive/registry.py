"""Plugin registries: processors, dataloaders and models register by class name, and configs
pick them by that name."""

from __future__ import annotations

import importlib


class Registry:
    """Classes of one plugin kind by name; the plugin package is imported on the first lookup,
    so that its shipped plugins register themselves."""

    def __init__(self, kind: str, package: str, how_to_choose: str, error: type[Exception] = ValueError) -> None:
        self.kind, self.package, self.how_to_choose, self.error = kind, package, how_to_choose, error
        self._classes: dict[str, type] = {}

    def add(self, cls: type) -> None:
        self._classes[cls.__name__] = cls

    def names(self) -> tuple[str, ...]:
        """Every registered name, the shipped plugins included."""
        importlib.import_module(self.package)
        return tuple(sorted(self._classes))

    def get(self, name: str) -> type:
        importlib.import_module(self.package)
        try:
            return self._classes[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} '{name}'; known {self.kind}s: "
                             f"{', '.join(sorted(self._classes))}. {self.how_to_choose}") from None
