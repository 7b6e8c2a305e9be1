"""The base of training observers (:mod:`~bhive.training.observers`).

It lives apart from the list of observer factories: a module that defines observers imports
this base, and the list imports that module, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from bhive.plugins.model import TrainingSettings


class EpochObserver:
    """Base of observers; every method does nothing unless overridden."""

    def started(self, model, settings: TrainingSettings) -> None:
        """Before the first epoch (of this run: after a resume, before the next epoch)."""

    def epoch(self, record: dict) -> str | None:
        """After each epoch; a returned text stops the training after this epoch, as its reason."""
        return None

    def finished(self, history: Sequence[dict], model) -> None:
        """After the last epoch, with the best weights restored."""
