"""A hyperparameter search: an Optuna study over the settings a config's ``search.space`` lists.

Each trial is an ordinary training whose settings, drawn by the study, are layered over the
config for that run (``--overrides``, :func:`bhive.config.load_config`): the trained model and
its identity are those of a training whose config said so, and the trial can be trained,
evaluated or compared by hand with the usual tasks. :class:`Search` asks the study for trials,
the task trains them, and the search tells the study each outcome from the training's history:
the metric of the epoch whose weights the training kept, or pruned (:mod:`bhive.search_trial`).

A trial's sampler is seeded from the search's seed and the trial's number, and a sequential
search tells each trial before it asks the next: it draws the same trials again for a seed,
also when it was stopped and resumed. Trials asked together (trained in parallel) see each
other only as running, and a pruner compares whatever epochs the others reported by then, so a
parallel search is not reproducible.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from bhive.config import Config, ConfigError, SearchConfig
from bhive.config.values import suggest
from bhive.plugins.model import hyperparameter_names, model_class
from bhive.search_trial import (PRUNED, SETTINGS_ATTRIBUTE, STORAGE_KINDS, STUDY, SearchError, TrialLink,
                                open_storage)

#: the storage file of a search, by kind (bhive.search_trial)
STORAGE_FILES = {kind: f"study{suffix}" for suffix, kind in STORAGE_KINDS.items()}
#: what counts toward ``--trials``: every trial that ended, whichever way
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_SCALARS = (type(None), bool, int, float, str)

# b-hive says what each trial did (Search.tell); Optuna's own notes ("Using an existing study")
# would repeat at every round
optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_version(training_version: str, number: int) -> str:
    """The training version of trial ``number`` of a search of ``training_version``."""
    return f"{training_version}_trial_{number:03d}"


def check_space(cfg: Config, model_name: str, fixed: Mapping[str, Any], validation_dataset: bool) -> None:
    """One clear error, naming the config key, for a search that cannot run as configured: an
    empty space, a setting that is also fixed on the command line (``fixed``: dotted key ->
    value), a model hyperparameter the trained model does not take, or no validation jets to
    rank the trials by. Needs the config's plugins loaded (the model registry)."""
    where = {"file": cfg.path}
    space = cfg.search.space
    if not space:
        raise ConfigError("nothing to search; list settings and their distributions, e.g. "
                          "'training.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}'", key="search.space", **where)
    for key in space:
        at = {**where, "key": f"search.space.{key}"}
        if key in fixed:
            flag = key.removeprefix("training.").replace("_", "-")
            raise ConfigError(f"is searched and also set by --{flag} on the command line; drop one of them", **at)
        section, _, rest = key.partition(".")
        if section != "model_settings":
            continue
        model, _, name = rest.partition(".")
        if model != model_name:
            raise ConfigError(f"the search trains {model_name} (the config's model or --model-name), which "
                              f"{model} settings do not change; search model_settings.{model_name}.<hyperparameter>",
                              **at)
        names = hyperparameter_names(model_class(model_name))
        if name not in names:
            raise ConfigError(f"{model_name} takes no hyperparameter {name!r}"
                              f"{suggest(name, names, f'{model_name} takes')}", **at)
    if not validation_dataset and cfg.training.validation_fraction <= 0:
        raise ConfigError("is 0, so the trials have no validation jets to be ranked by; set it above 0 or give "
                          "--validation-dataset-version", key="training.validation_fraction", **where)


def distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched setting. Optuna chooses among scalars only; a
    choice with a list or mapping among its values chooses among their JSON texts instead."""
    found: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        if "choice" in spec:
            choices = spec["choice"]
            scalars = all(isinstance(choice, _SCALARS) for choice in choices)
            found[key] = CategoricalDistribution(choices if scalars else [_text(choice) for choice in choices])
        elif "int" in spec:
            found[key] = IntDistribution(*spec["int"], log=spec.get("log", False))
        else:
            kind = "uniform" if "uniform" in spec else "log_uniform"
            found[key] = FloatDistribution(*spec[kind], log=kind == "log_uniform")
    return found


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def trial_settings(space: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's settings ({dotted key: value}, its ``--overrides``) from its Optuna parameters."""
    settings = {}
    for key, value in params.items():
        choices = space[key].get("choice", ())
        encoded = not all(isinstance(choice, _SCALARS) for choice in choices)
        settings[key] = next(choice for choice in choices if _text(choice) == value) if encoded else value
    return settings


def kept_value(history: Sequence[dict], metric: str, number: int) -> float:
    """The ``metric`` of the epoch whose weights a training kept: the lowest validation loss."""
    validated = [record for record in history if "val_loss" in record]
    if not validated:
        raise SearchError(f"the training of trial {number} has no validation loss; a search needs validation jets "
                          f"(training.validation_fraction > 0)")
    return float(min(validated, key=lambda record: record["val_loss"])[metric])


def _sampler(settings: SearchConfig, number: int) -> optuna.samplers.BaseSampler:
    """The sampler that draws trial ``number``: seeded from the search's seed and the number."""
    seed = int(np.random.SeedSequence([settings.seed, number]).generate_state(1)[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # trials asked while others run (a parallel search) take them as bad, not as absent
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials, constant_liar=True)


class Search:
    """The study of a search in ``directory``: created there or continued, and driven trial by
    trial. ``batch``: trials run as batch jobs (then a new study is kept in a journal file)."""

    def __init__(self, directory: Path, settings: SearchConfig, batch: bool) -> None:
        self.settings, self.space = settings, settings.space
        directory.mkdir(parents=True, exist_ok=True)
        self.storage_path = self._storage_path(directory, batch)
        self.study = optuna.create_study(study_name=STUDY, storage=open_storage(self.storage_path),
                                         direction=settings.direction, load_if_exists=True)
        # what a trial's training needs to report and be pruned (bhive.search_trial)
        self.study.set_user_attr(SETTINGS_ATTRIBUTE, settings.model_dump(exclude={"space"}))
        self.distributions = distributions(self.space)

    @staticmethod
    def _storage_path(directory: Path, batch: bool) -> Path:
        """The existing storage file (a search continues in the storage it started in), else
        SQLite for trials on this machine and a journal file for batch jobs."""
        existing = [directory / name for name in STORAGE_FILES.values() if (directory / name).exists()]
        if len(existing) > 1:
            raise SearchError(f"{directory} holds two studies ({', '.join(path.name for path in existing)}); remove "
                              f"the one that is not this search's")
        return existing[0] if existing else directory / STORAGE_FILES["journal" if batch else "sqlite"]

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def link(self, number: int) -> str:
        """What trial ``number``'s training reports to (``TrainingSettings.search_trial``)."""
        return str(TrialLink(self.storage_path, number))

    def settings_of(self, number: int) -> dict[str, Any]:
        """Trial ``number``'s settings, as ``--overrides``."""
        (trial,) = (trial for trial in self.trials() if trial.number == number)
        return trial_settings(self.space, trial.params)

    def next_trials(self, n_trials: int, at_once: int) -> list[int]:
        """Up to ``at_once`` trials to train now: those still running (their training was
        stopped before the search heard of its end), then new ones, until ``n_trials`` ended."""
        trials = self.trials()
        if sum(trial.state in FINISHED for trial in trials) >= n_trials:
            return []
        numbers = [trial.number for trial in trials if trial.state == TrialState.RUNNING][:at_once]
        for _ in range(min(at_once - len(numbers), n_trials - len(trials))):
            self.study.sampler = _sampler(self.settings, len(self.trials()))
            numbers.append(self.study.ask(self.distributions).number)
        return numbers

    def tell(self, number: int, history: Sequence[dict], log: Callable[[str], None] = print) -> None:
        """Tell the study how trial ``number``'s training ended: pruned, or its metric."""
        if str(history[-1].get("stopped", "")).startswith(PRUNED):
            self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            log(f"trial {number}: pruned after epoch {history[-1]['epoch']}")
            return
        value = kept_value(history, self.settings.metric, number)
        self.study.tell(number, value, skip_if_finished=True)
        log(f"trial {number}: {self.settings.metric} {value:.6g}; best so far: trial {self.study.best_trial.number}, "
            f"{self.study.best_value:.6g}")
