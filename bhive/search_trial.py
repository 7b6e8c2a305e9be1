"""A trial of a hyperparameter search, seen from the training that runs it.

A search (:mod:`bhive.search`) keeps its Optuna study in a storage file in its output
directory: SQLite (``study.db``) where its trials train on the machine that runs the search, a
journal file (``study.journal``, which Optuna writes safely on the shared file systems batch
jobs use) where they run as batch jobs. A training finds its trial through one setting,
``TrainingSettings.search_trial``: ``<storage file below the store>#<trial number>``. The
path is checked like every store path, so nothing outside the store is opened, and only those
two kinds of file; neither holds pickles (Optuna keeps parameters, distributions and values as
JSON and numbers).

Through :func:`observer`, one of the factories of :mod:`bhive.training.observers`, a trial's
training reports its metric after every epoch and asks the study's pruner whether to go on. A
pruned training stops after that epoch, complete, with a reason that starts with
:data:`PRUNED` in its history; the search reads it back from there. Optuna is imported only
when a training is a trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bhive.plugins.model import TrainingSettings
from bhive.store import store_path, store_root

if TYPE_CHECKING:
    import optuna

#: the study's name in its storage file (one study per file)
STUDY = "search"
#: storage files by suffix: what Optuna keeps a study in
STORAGE_KINDS = {".db": "sqlite", ".journal": "journal"}
#: how the stop reason of a pruned trial's training starts
PRUNED = "pruned by the hyperparameter search"
#: the study's user attribute holding the search settings a trial's training needs (metric, pruner)
SETTINGS_ATTRIBUTE = "search"
# seconds SQLite waits for a lock held by another process (trials in parallel) before failing
_SQLITE_TIMEOUT = 60


class SearchError(RuntimeError):
    """A hyperparameter search that cannot go on as asked."""


@dataclass(frozen=True)
class TrialLink:
    """Where a trial reports: its study's storage file (in the store) and its number."""

    storage: Path
    number: int

    def __post_init__(self) -> None:
        if self.storage.suffix not in STORAGE_KINDS:
            raise SearchError(f"{self.storage.name}: a study is kept in a {' or '.join(STORAGE_KINDS)} file")

    def __str__(self) -> str:
        return f"{self.storage.relative_to(store_root()).as_posix()}#{self.number}"

    @classmethod
    def parse(cls, text: str) -> TrialLink:
        """The link a ``search_trial`` setting names; refused unless it is a storage file inside
        the store and a trial number."""
        path, separator, number = text.rpartition("#")
        if not separator or not number.isdigit() or not path:
            raise SearchError(f"search_trial {text!r}: expected '<storage file below the store>#<trial number>', "
                              f"as HyperparameterSearchTask sets it")
        return cls(store_path(*PurePosixPath(path).parts), int(number))


def open_storage(path: Path) -> optuna.storages.BaseStorage:
    """The Optuna storage kept in ``path`` (``.db``: SQLite, ``.journal``: a journal file)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if STORAGE_KINDS.get(path.suffix) == "sqlite":
        return optuna.storages.RDBStorage(f"sqlite:///{path}",
                                          engine_kwargs={"connect_args": {"timeout": _SQLITE_TIMEOUT}})
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def pruner(settings: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner the search settings (the config's ``search`` section) name."""
    import optuna

    name, warmup = settings["pruner"], settings["pruner_warmup_epochs"]
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings["pruner_startup_trials"], n_warmup_steps=warmup)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"unknown pruner {name!r}; choose median, successive_halving or none")


def existing_storage(storage_path: Path) -> optuna.storages.BaseStorage:
    """The storage of a study the search created already."""
    if not storage_path.is_file():
        raise SearchError(f"{storage_path}: no study here; a trial's training is started by its "
                          f"HyperparameterSearchTask, which creates the study first")
    return open_storage(storage_path)


def load_study(storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The search's study in ``storage``, with the pruner its settings name."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=storage)
    study.pruner = pruner(study.user_attrs[SETTINGS_ATTRIBUTE])
    return study


class PruningObserver:
    """Reports a trial's metric after every epoch and stops it when the pruner says so.

    An observer as :class:`bhive.training.observers.EpochObserver` describes one (by shape: it
    cannot subclass it, as that module lists this one's factory)."""

    def __init__(self, link: TrialLink) -> None:
        import optuna

        storage = existing_storage(link.storage)
        study = load_study(storage)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(STUDY), link.number)
        self.link, self.trial = link, optuna.trial.Trial(study, trial_id)
        self.metric = study.user_attrs[SETTINGS_ATTRIBUTE]["metric"]
        self.pruner_name = study.user_attrs[SETTINGS_ATTRIBUTE]["pruner"]
        # a trial trained again after a kill has reported its first epochs already
        self.reported = set(storage.get_trial(trial_id).intermediate_values)

    def started(self, model, settings: TrainingSettings) -> None:
        """Nothing to do before the first epoch."""

    def epoch(self, record: dict) -> str | None:
        if self.metric not in record:
            raise SearchError(f"trial {self.link.number}: the epoch record has no {self.metric}, which ranks the "
                              f"trials; a search needs validation jets (training.validation_fraction > 0)")
        step = int(record["epoch"])
        if step not in self.reported:
            self.trial.report(float(record[self.metric]), step)
            self.reported.add(step)
        if self.trial.should_prune():
            return f"{PRUNED} ({self.pruner_name} pruner, trial {self.link.number}, {self.metric} after epoch {step})"
        return None

    def finished(self, history: Sequence[dict], model) -> None:
        """The search tells the study the outcome, from the history."""


def observer(settings: TrainingSettings, workdir: Path) -> PruningObserver | None:
    """The pruning observer of a training that is a search trial; None for any other."""
    return PruningObserver(TrialLink.parse(settings.search_trial)) if settings.search_trial else None


def fail_trial(link_text: str) -> None:
    """Mark a trial whose training raised as failed: a search run again goes on without it."""
    import optuna

    link = TrialLink.parse(link_text)
    study = load_study(existing_storage(link.storage))
    study.tell(link.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
