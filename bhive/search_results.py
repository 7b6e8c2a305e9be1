"""What a hyperparameter search leaves in its output directory, besides its study.

- ``trials.json`` and ``trials.csv``: every trial, with its number, state, value, settings (its
  ``--overrides``) and training version;
- ``best.yml``: the best trial's settings as a config snippet, to merge into the config;
- ``plots/``: Optuna's optimisation history, parameter importances (with two settings or more
  and :data:`MIN_IMPORTANCE_TRIALS` complete trials) and parallel coordinates, as PNG and PDF
  with the plotted arrays beside them (npz), written like every b-hive plot.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from bhive import plotting
from bhive.config.search import nested
from bhive.search import FINISHED, Search, trial_settings, trial_version
from bhive.search_trial import SearchError
from bhive.store import atomic_write, atomic_write_json, read_json

TRIALS_JSON, TRIALS_CSV, BEST = "trials.json", "trials.csv", "best.yml"
#: complete trials below which the parameter importances say nothing
MIN_IMPORTANCE_TRIALS = 3
_COLUMNS = ("number", "state", "value", "training_version")


def finished_trials(path: Path) -> int:
    """How many trials had ended when ``trials.json`` was written (0 without one)."""
    ended = {state.name for state in FINISHED}
    return sum(record["state"] in ended for record in read_json(path)) if path.exists() else 0


def trial_records(search: Search, training_version: str) -> list[dict[str, Any]]:
    """Every trial of the search as plain data, by number."""
    return [{"number": trial.number, "state": trial.state.name, "value": trial.value,
             "settings": trial_settings(search.space, trial.params),
             "training_version": trial_version(training_version, trial.number)} for trial in search.trials()]


def write(directory: Path, search: Search, training_version: str) -> None:
    """``trials.json``, ``trials.csv``, ``best.yml`` and the plots of ``search`` in ``directory``."""
    records = trial_records(search, training_version)
    complete = [record for record in records if record["state"] == TrialState.COMPLETE.name]
    if not complete:
        raise SearchError(f"no trial of the search in {directory} completed ({len(records)} ended pruned or "
                          f"failed); widen the space or relax the pruner, then run it again with more --trials")
    (best,) = (record for record in complete if record["number"] == search.study.best_trial.number)
    _write_table(directory / TRIALS_CSV, records, list(search.space))
    _write_best(directory / BEST, best, search.settings.metric, len(records))
    _plot(search, directory / "plots")
    atomic_write_json(directory / TRIALS_JSON, records)  # last: complete() reads it


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _write_table(path: Path, records: Sequence[dict], keys: Sequence[str]) -> None:
    with atomic_write(path, newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([*_COLUMNS, *keys])
        for record in records:
            writer.writerow([*(record[column] for column in _COLUMNS),
                             *(_cell(record["settings"].get(key)) for key in keys)])


def _write_best(path: Path, best: dict, metric: str, n_trials: int) -> None:
    header = (f"# The best of {n_trials} trials of a hyperparameter search: trial {best['number']} (training version "
              f"{best['training_version']}), {metric} {best['value']:.6g}.\n"
              f"# Merge into the config: these keys replace the same keys there.\n")
    with atomic_write(path) as stream:
        stream.write(header + yaml.safe_dump(nested(best["settings"]), sort_keys=False))


def _column(values: Sequence[Any]) -> np.ndarray:
    """A setting's values as numbers, or as their JSON texts where some are not numbers."""
    numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
    return np.asarray(values, dtype=float) if numeric else np.asarray([json.dumps(value) for value in values])


def _plot(search: Search, directory: Path) -> None:
    from optuna.visualization import matplotlib as optuna_plots

    complete = [trial for trial in search.trials() if trial.state == TrialState.COMPLETE]
    values = np.array([trial.value for trial in complete])
    best = (np.minimum if search.settings.direction == "minimize" else np.maximum).accumulate(values)
    settings = [trial_settings(search.space, trial.params) for trial in complete]
    columns = {f"setting:{key}": _column([setting[key] for setting in settings]) for key in search.space}
    numbers = np.array([trial.number for trial in complete])
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=search.settings.seed)
    figures = {"optimization_history": (lambda: optuna_plots.plot_optimization_history(search.study),
                                        {"number": numbers, "value": values, "best_value": best}),
               "parallel_coordinate": (lambda: optuna_plots.plot_parallel_coordinate(search.study),
                                       {"number": numbers, "value": values, **columns})}
    if len(search.space) >= 2 and len(complete) >= MIN_IMPORTANCE_TRIALS:
        importances = optuna.importance.get_param_importances(search.study, evaluator=evaluator)
        figures["param_importances"] = (
            lambda: optuna_plots.plot_param_importances(search.study, evaluator=evaluator),
            {"setting": np.asarray(list(importances)), "importance": np.asarray(list(importances.values()))})
    # Optuna's plots set their own style (ggplot); it stays inside this block
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # a setting or value that is the same in every trial leaves an axis without a range
        warnings.filterwarnings("ignore", "Attempting to set identical low and high", UserWarning)
        for name, (draw, data) in figures.items():
            plotting.save(draw().figure, directory / name, data)

