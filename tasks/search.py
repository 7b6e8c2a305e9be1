"""HyperparameterSearchTask: an Optuna search over the settings of the config's ``search.space``,
each trial an ordinary TrainingTask (training version ``<training_version>_trial_NNN``) whose
settings are layered over the config with ``--overrides``."""

from __future__ import annotations

import luigi

from bhive import search, search_results, search_trial, training
from bhive.config import OVERRIDES, ConfigError
from bhive.store import read_json
from tasks.base import DatasetVersionTask
from tasks.parameters import DatasetParameters, TrainingParameters
from tasks.training import TrainingTask


class HyperparameterSearchTask(TrainingParameters, DatasetParameters, DatasetVersionTask):
    """The study, ``best.yml``, ``trials.json``/``.csv`` and plots of a search; its trials are
    trainings of their own (``--TrainingTask-workflow slurm`` or ``htcondor``: batch jobs)."""

    trials = luigi.IntParameter(default=20, description="trials in the study, ended in any way (complete, pruned, "
                                "failed); the same search run with more continues it; default: 20")
    parallel_trials = luigi.IntParameter(
        default=1, significant=False, description="trials trained at a time, in rounds: run with luigi's --workers "
        "of at least this to train them in parallel (not reproducible); default: 1")

    version_parameter = "--training-version"

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.training_version, self.model())

    def template(self) -> TrainingTask:
        """The training every trial varies: this search's parameters and the config's settings."""
        return TrainingTask.req(self)

    def trial(self, study: search.Search, number: int) -> TrainingTask:
        """Trial ``number``'s training; one that was interrupted continues from its checkpoint."""
        settings = {"training_version": search.trial_version(self.training_version, number),
                    "overrides": study.settings_of(number), "search_trial": study.link(number)}
        interrupted = TrainingTask.req(self, **settings).local_path("work", training.CHECKPOINT).exists()
        return TrainingTask.req(self, **settings, resume=interrupted)

    def requires(self):
        return self.template().requires()

    def identity_config_keys(self) -> tuple[str, ...]:
        return ("search", *self.template().identity_config_keys())

    def config_overrides(self) -> dict:
        return self.template().config_overrides()

    def identity_settings(self) -> dict:
        return self.template().identity_settings()

    def output(self):
        return {name: self.local_target(name) for name in (search_results.BEST, search_results.TRIALS_CSV,
                                                            search_results.TRIALS_JSON)}

    def outputs_exist(self) -> bool:
        return super().outputs_exist() and search_results.finished_trials(
            self.local_path(search_results.TRIALS_JSON)) >= self.trials

    def run(self):
        if self.overrides:
            raise ConfigError("a search sets each trial's settings itself; put fixed settings into the config",
                              file=OVERRIDES)
        if min(self.trials, self.parallel_trials) < 1:
            raise search_trial.SearchError(f"--trials {self.trials} --parallel-trials {self.parallel_trials}: give "
                                           f"1 or more of each")
        cfg = self.cfg
        search.check_space(cfg, self.model(), self.config_overrides(), bool(self.validation_dataset_version))
        study = search.Search(self.local_path(), cfg.search, batch=self.template().workflow != "local")
        while numbers := study.next_trials(self.trials, self.parallel_trials):
            trainings = [self.trial(study, number) for number in numbers]
            yield trainings
            for number, task in zip(numbers, trainings):
                study.tell(number, read_json(task.local_path(training.HISTORY)))
        search_results.write(self.local_path(), study, self.training_version)


@TrainingTask.event_handler(luigi.Event.FAILURE)
def _trial_failed(task: TrainingTask, error: BaseException) -> None:
    """A trial whose training raised ends failed in its study, so that the search, run again,
    goes on without it; one stopped by a signal stays running and continues from its checkpoint."""
    if task.search_trial and not isinstance(error, training.TrainingStopped):
        search_trial.fail_trial(task.search_trial)
