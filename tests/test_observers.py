"""Training observers: told of every epoch, able to stop a training that still ends complete."""

from __future__ import annotations

import dataloaders  # noqa: F401  (registers the loaders)
import models  # noqa: F401  (registers the models)
from bhive import training
from bhive.plugins.model import load_model
from bhive.training import observers
from tests.training_data import tiny_dataset


class Recorder(observers.EpochObserver):
    def __init__(self, stop_after: int) -> None:
        self.stop_after, self.calls = stop_after, []

    def started(self, model, settings) -> None:
        self.calls.append(("started", settings.epochs))

    def epoch(self, record: dict) -> str | None:
        self.calls.append(("epoch", record["epoch"]))
        return "enough" if record["epoch"] >= self.stop_after else None

    def finished(self, history, model) -> None:
        self.calls.append(("finished", len(history)))


def test_an_observer_sees_every_epoch_and_can_stop_the_training(tmp_path, monkeypatch) -> None:
    cfg, directory = tiny_dataset(tmp_path, monkeypatch, n_jets=400)
    recorder = Recorder(stop_after=2)
    asked = []

    def factory(settings, workdir):
        asked.append(workdir)
        return recorder

    monkeypatch.setattr(observers, "FACTORIES", (factory, lambda settings, workdir: None))
    settings = training.training_settings(cfg, epochs=4, batch_size=128, patience=0)
    history = training.train_here(cfg, "DNN", directory, tmp_path / "out", settings)
    assert asked == [tmp_path / "out" / "work"]
    assert recorder.calls == [("started", 4), ("epoch", 1), ("epoch", 2), ("finished", 2)]
    assert len(history) == 2 and history[-1]["stopped"] == "enough" and "stopped" not in history[0]
    load_model(tmp_path / "out" / training.ARTIFACT)  # a stopped training is a complete one


def test_every_observer_hears_of_an_epoch_and_the_first_reason_wins(tmp_path) -> None:
    from bhive.plugins.model import TrainingSettings

    first, second, third = Recorder(stop_after=1), Recorder(stop_after=1), Recorder(stop_after=5)
    built = observers.training_observers(TrainingSettings(), tmp_path, factories=(
        lambda s, w: third, lambda s, w: None, lambda s, w: first, lambda s, w: second))
    assert built == [third, first, second]
    assert observers.stop_reason(built, {"epoch": 1}) == "enough"
    assert third.calls == first.calls == second.calls == [("epoch", 1)]
