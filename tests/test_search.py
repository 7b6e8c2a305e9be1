"""The hyperparameter search: its config section, the settings a run layers over a config, and
HyperparameterSearchTask end to end (DNN, a tiny generated dataset, two epochs, a few trials)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import luigi
import optuna
import pytest
import yaml

import bhive.training
from bhive.config import ConfigError, load_config
from bhive.config.files import _merge
from bhive.identity import VersionConflictError
from bhive.plugins.model import TrainingSettings
from bhive.search import STORAGE_FILES, Search, check_space
from bhive.search_trial import PRUNED, PruningObserver, SearchError, TrialLink, observer
from bhive.store import StoreError, read_json, store_root
from tasks.search import HyperparameterSearchTask
from tasks.training import TrainingTask
from tests.deepntuple_files import unit_config, write_config, write_samples

SMALL = {"DNN": {"hidden": [16]}}
SPACE = {"training.learning_rate": {"log_uniform": [1.0e-3, 1.0e-1]},
         "model_settings.DNN.hidden": {"choice": [[16], [8, 8]]}}


def build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Input files and a store for the module: every search trains on one dataset (version d1)."""
    root = tmp_path_factory.mktemp("search")
    return {"samples": write_samples(root / "samples", 600), "store": root / "store"}


@pytest.fixture
def configure(shared, tmp_path, monkeypatch):
    """configure(**search) writes configs/unit.yml with that search section and returns its
    directory; the store is the module's."""
    monkeypatch.setenv("BHIVE_STORE", str(shared["store"]))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))

    def write(training: dict | None = None, **search) -> Path:
        # btag_score, a jet-level discriminant, lets the DNN learn in one epoch whatever order the
        # shards give the jets in; pt, eta and npv alone are flat after reweighting, and what a
        # few epochs make of them is noise that decides the pruner's comparisons
        config = unit_config(shared["samples"], model_settings=SMALL,
                             global_features=["jet_pt", "jet_eta", "npv", "btag_score"],
                             training={"epochs": 2, "batch_size": 128, **(training or {})},
                             search={"space": SPACE, "n_startup_trials": 1, "pruner": "none", **search})
        write_config(tmp_path / "configs", "unit", config)
        return tmp_path / "configs"

    return write


def searched(version: str, trials: int, **parameters) -> HyperparameterSearchTask:
    return HyperparameterSearchTask(config="unit", version=version, dataset_version="d1", model_name="DNN",
                                    trials=trials, executor="iterative", **parameters)


def states(storage: Path) -> list[str]:
    """The states of the trials of the study in ``storage`` (SQLite), by number."""
    return [trial.state.name for trial in optuna.load_study(study_name="search", storage=f"sqlite:///{storage}").trials]


def records(task: HyperparameterSearchTask) -> list[dict]:
    return read_json(task.local_path("trials.json"))


def trial_training(task: HyperparameterSearchTask, record: dict) -> TrainingTask:
    return TrainingTask.req(task, training_version=record["training_version"],
                            overrides=record["settings"])


@pytest.fixture
def counted(monkeypatch):
    """The training versions trained in this test, in order; ``fail`` maps a training version to
    the exception its training raises once."""
    trained, fail = [], {}
    train = bhive.training.train

    def counting(cfg, model_name, dataset_dir, output, *args, **kwargs):
        version = Path(output).parts[-2]
        trained.append(version)
        if version in fail:
            raise fail.pop(version)
        return train(cfg, model_name, dataset_dir, output, *args, **kwargs)

    monkeypatch.setattr(bhive.training, "train", counting)
    return trained, fail


# -- the search section ------------------------------------------------------------------------


@pytest.mark.parametrize("search, key, fragments", [
    ({"space": {"training.learnig_rate": {"uniform": [0.1, 0.2]}}}, "search.space.training.learnig_rate",
     ("unknown training setting", "did you mean 'learning_rate'")),
    ({"smapler": "tpe"}, "search.smapler", ("did you mean 'sampler'",)),
    ({"space": {"training.learning_rate": {"lgo_uniform": [0.1, 0.2]}}},
     "search.space.training.learning_rate.lgo_uniform", ("did you mean 'log_uniform'",)),
    ({"space": {"training.learning_rate": {"uniform": [0.2, 0.1]}}}, "search.space.training.learning_rate.uniform",
     ("empty range",)),
    ({"space": {"training.learning_rate": {"log_uniform": [0, 0.1]}}},
     "search.space.training.learning_rate.log_uniform[0]", ("above 0",)),
    ({"space": {"training.learning_rate": {"uniform": [-1, 0.1]}}}, "search.space.training.learning_rate.uniform[0]",
     ("expected a number > 0",)),
    ({"space": {"training.learning_rate": [0.1, 0.2]}}, "search.space.training.learning_rate",
     ("expected a distribution",)),
    ({"space": {"training.learning_rate": {"uniform": [0.1, 0.2], "choice": [0.1, 0.2]}}},
     "search.space.training.learning_rate", ("exactly one distribution",)),
    ({"space": {"training.epochs": {"uniform": [1, 3]}}}, "search.space.training.epochs.uniform",
     ("whole numbers", "{int: [lo, hi]}")),
    ({"space": {"training.optimizer": {"choice": ["adam", "adamx"]}}}, "search.space.training.optimizer.choice[1]",
     ("unknown optimizer 'adamx'",)),
    ({"space": {"training.optimizer": {"choice": ["adam"]}}}, "search.space.training.optimizer.choice",
     ("list at least two",)),
    ({"space": {"training.learning_rate": {"uniform": [0.1, 0.2], "log": True}}},
     "search.space.training.learning_rate.log", ("int ranges only",)),
    ({"space": {"training.class_weights": {"choice": ["none", "balanced"]}}}, "search.space.training.class_weights",
     ("cannot be searched", "different objectives")),
    ({"space": {"training.validation_fraction": {"uniform": [0.1, 0.2]}}},
     "search.space.training.validation_fraction", ("cannot be searched",)),
    ({"metric": "val_accuracy"}, "search.metric", ("worst model", "use direction maximize")),
    ({"direction": "maximize"}, "search.direction", ("worst model", "use direction minimize")),
    ({"pruner": "hyperband"}, "search.pruner", ("median, successive_halving, none",)),
])
def test_search_section_mistakes_name_file_and_key(configure, search, key, fragments):
    configure(**search)
    with pytest.raises(ConfigError) as info:
        load_config("unit")
    message = str(info.value)
    assert "unit.yml" in message and f"{key}:" in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("key", ["__class__", "plugins", "samples", "model_settings", "training",
                                 "training.__class__", "model_settings.DNN.__init__", "model_settings.DNN.spec",
                                 "model_settings.__class__.x", "search.space", "training.learning_rate.real"])
def test_hostile_settings_are_refused_in_the_space_and_as_overrides(configure, key):
    configure(space={key: {"choice": [1, 2]}})
    with pytest.raises(ConfigError, match="cannot be searched|not a hyperparameter|not a model|unknown training"):
        load_config("unit")
    configure()
    with pytest.raises(ConfigError) as info:
        load_config("unit", overrides={key: 1})
    assert info.value.file == Path("--overrides") and info.value.key == key


def test_space_checks_that_need_the_model(configure):
    configure(space={"model_settings.DNN.hiden": {"choice": [[8], [16]]}})
    with pytest.raises(ConfigError, match=r"unit.yml: search.space.model_settings.DNN.hiden: DNN takes no "
                                          r"hyperparameter 'hiden'; did you mean 'hidden'\?"):
        check_space(load_config("unit"), "DNN", {}, validation_dataset=False)
    configure(space={"model_settings.DeepJet.dropout": {"uniform": [0.0, 0.2]}})
    with pytest.raises(ConfigError, match="the search trains DNN .* search model_settings.DNN"):
        check_space(load_config("unit"), "DNN", {}, validation_dataset=False)
    configure(space={"training.epochs": {"int": [1, 3]}})
    with pytest.raises(ConfigError, match="search.space.training.epochs: is searched and also set by --epochs"):
        check_space(load_config("unit"), "DNN", {"training.epochs": 2}, validation_dataset=False)
    configure(space={})
    with pytest.raises(ConfigError, match="search.space: nothing to search"):
        check_space(load_config("unit"), "DNN", {}, validation_dataset=False)
    configure(training={"validation_fraction": 0.0})
    with pytest.raises(ConfigError, match="training.validation_fraction: is 0"):
        check_space(load_config("unit"), "DNN", {}, validation_dataset=False)
    check_space(load_config("unit"), "DNN", {}, validation_dataset=True)


def test_overrides_are_config_values_and_checked_like_them(configure):
    configure()
    cfg = load_config("unit", overrides={"training.learning_rate": 0.003, "model_settings.DNN.dropout": 0.2})
    assert cfg.training.learning_rate == 0.003 and cfg.raw["training"]["learning_rate"] == 0.003
    # merged into the model's settings from the file, key by key
    assert cfg.model_settings["DNN"] == {"hidden": [16], "dropout": 0.2}
    assert cfg.overrides == {"training.learning_rate": 0.003, "model_settings.DNN.dropout": 0.2}
    with pytest.raises(ConfigError, match=r"^--overrides: training.learning_rate: expected a number > 0, got -1$"):
        load_config("unit", overrides={"training.learning_rate": -1})


# -- the search, end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_a_sequential_search_is_reproducible_and_resumes_where_it_stopped(configure, counted, capsys):
    trained, fail = counted
    configure()
    straight = searched("a", trials=3)
    assert build(straight)
    assert trained == ["a_trial_000", "a_trial_001", "a_trial_002"]
    expected = records(straight)
    assert [record["state"] for record in expected] == ["COMPLETE"] * 3
    assert len({json.dumps(record["settings"], sort_keys=True) for record in expected}) == 3

    # the same search, stopped after the first epoch of its first trial (a time limit, say) ...
    trained.clear()
    assert not build(searched("b", trials=3, stop_after_epoch=1))
    storage = searched("b", trials=3).local_path(STORAGE_FILES["sqlite"])
    assert states(storage) == ["RUNNING"]
    # ... then killed in its second trial (a SIGTERM: the trial stays running)
    capsys.readouterr()
    fail["b_trial_001"] = bhive.training.TrainingInterrupted("stopped on SIGTERM", "SIGTERM")
    assert not build(searched("b", trials=3))
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert states(storage) == ["COMPLETE", "RUNNING"]
    # run again: the running trial is trained again with its settings, a finished one is not
    assert build(searched("b", trials=3))
    assert trained == ["b_trial_000", "b_trial_000", "b_trial_001", "b_trial_001", "b_trial_002"]
    resumed = records(searched("b", trials=3))
    # the same trials and values: the first trial continued from its checkpoint exactly
    for mine, theirs in zip(resumed, expected):
        assert mine["settings"] == theirs["settings"] and mine["value"] == theirs["value"]
        assert mine["training_version"] == theirs["training_version"].replace("a_", "b_")

    # more trials continue the study; its trainings are reused
    trained.clear()
    assert searched("b", trials=3).complete() and not searched("b", trials=4).complete()
    assert build(searched("b", trials=4))
    assert trained == ["b_trial_003"]
    assert [record["number"] for record in records(searched("b", trials=4))] == [0, 1, 2, 3]


def test_trials_asked_together_train_on_luigi_workers_at_once(configure, monkeypatch):
    configure()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    task = searched("w", trials=2, parallel_trials=2)
    assert luigi.build([task], local_scheduler=True, workers=2, log_level="WARNING")
    assert [record["state"] for record in records(task)] == ["COMPLETE", "COMPLETE"]
    first, second = optuna.load_study(study_name="search", storage=f"sqlite:///{task.local_path('study.db')}").trials
    # one round: the second trial was drawn before the first was told
    assert second.datetime_start < first.datetime_complete


def test_a_failed_trial_is_marked_failed_and_the_search_goes_on_without_it(configure, counted):
    trained, fail = counted
    configure()
    fail["f_trial_000"] = RuntimeError("out of memory, say")
    task = searched("f", trials=2)
    assert not build(task)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{task.local_path('study.db')}")
    assert states(task.local_path("study.db")) == ["FAIL"]
    failed = TrainingTask.req(task, training_version="f_trial_000", overrides=study.trials[0].params)
    assert not failed.complete() and not failed.local_path("model").exists()
    assert not task.local_path("trials.json").exists()

    assert build(searched("f", trials=2))
    assert trained == ["f_trial_000", "f_trial_001"]
    found = records(searched("f", trials=2))
    assert [record["state"] for record in found] == ["FAIL", "COMPLETE"]
    assert "f_trial_001" in searched("f", trials=2).local_path("best.yml").read_text()


def test_pruning_stops_a_trial_whose_training_ends_complete(configure):
    # the random sampler with seed 3 draws 0.05, then 1e-6 twice: a learning rate that learns nothing
    configure(training={"epochs": 3}, space={"training.learning_rate": {"choice": [0.05, 1.0e-6]}}, sampler="random",
              seed=3, pruner="median", pruner_startup_trials=1, pruner_warmup_epochs=1)
    task = searched("p", trials=3)
    assert build(task)
    found = records(task)
    assert [record["state"] for record in found] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert [record["settings"]["training.learning_rate"] for record in found] == [0.05, 1e-6, 1e-6]
    for record in found:
        training = trial_training(task, record)
        assert training.complete()
        history = read_json(training.local_path("history.json"))
        if record["state"] == "PRUNED":
            assert len(history) == 1 and history[-1]["stopped"].startswith(PRUNED)
        else:
            assert len(history) == 3 and "stopped" not in history[-1]


def test_outputs_and_best_yml_reproduce_the_best_trial(configure, tmp_path):
    config_dir = configure()
    task = searched("o", trials=3)
    assert build(task)
    found = records(task)
    best = min((record for record in found if record["state"] == "COMPLETE"), key=lambda record: record["value"])
    table = task.local_path("trials.csv").read_text().splitlines()
    assert table[0] == "number,state,value,training_version,training.learning_rate,model_settings.DNN.hidden"
    assert len(table) == 4 and table[best["number"] + 1].startswith(f"{best['number']},COMPLETE,")
    for name in ("optimization_history", "parallel_coordinate", "param_importances"):
        for suffix in (".png", ".pdf", ".npz"):
            assert task.local_path("plots", name + suffix).stat().st_size > 0

    snippet = yaml.safe_load(task.local_path("best.yml").read_text())
    assert snippet["training"]["learning_rate"] == best["settings"]["training.learning_rate"]
    assert snippet["model_settings"]["DNN"]["hidden"] == best["settings"]["model_settings.DNN.hidden"]
    # the config with best.yml merged in trains what the best trial trained: its training is
    # complete under that version without --overrides, its identity the same
    merged_dir = tmp_path / "merged"
    shutil.copytree(config_dir, merged_dir)
    content = _merge(yaml.safe_load((config_dir / "unit.yml").read_text()), snippet)
    (merged_dir / "unit.yml").write_text(yaml.safe_dump(content, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BHIVE_CONFIG_DIR", str(merged_dir))
        plain = TrainingTask(config="unit", version="o", dataset_version="d1", model_name="DNN",
                             training_version=best["training_version"], executor="iterative")
        assert plain.complete()
        other = next(record for record in found if record["number"] != best["number"])
        with pytest.raises(VersionConflictError, match="config.training.learning_rate"):
            TrainingTask(config="unit", version="o", dataset_version="d1", model_name="DNN",
                         training_version=other["training_version"], executor="iterative").complete()
    # a search is one study: another space is another search version
    configure(space={**SPACE, "training.learning_rate": {"log_uniform": [1.0e-4, 1.0e-1]}})
    with pytest.raises(VersionConflictError, match="config.search.space.training.learning_rate.log_uniform"):
        searched("o", trials=3).complete()


def test_trials_of_batch_jobs_report_through_a_journal_file(configure):
    configure()
    settings = load_config("unit").search
    directory = store_root() / "HyperparameterSearchTask" / "unit" / "j"
    journal = Search(directory, settings, batch=True)
    assert journal.storage_path == directory / "study.journal"
    (number,) = journal.next_trials(1, 1)
    link = journal.link(number)
    assert link == "HyperparameterSearchTask/unit/j/study.journal#0"
    reporter = observer(TrainingSettings(search_trial=link), directory / "work")
    assert isinstance(reporter, PruningObserver)
    assert reporter.epoch({"epoch": 1, "val_loss": 0.9}) is None
    assert journal.study.trials[0].intermediate_values == {1: 0.9}
    journal.tell(number, [{"epoch": 1, "val_loss": 0.9}, {"epoch": 2, "val_loss": 0.8}])
    # the search continues in the storage it started in, also when its trials now run here
    assert Search(directory, settings, batch=False).storage_path == directory / "study.journal"
    assert Search(directory, settings, batch=False).study.best_value == 0.8
    assert observer(TrainingSettings(), directory) is None


def test_a_search_whose_trials_are_batch_jobs_keeps_its_study_in_a_journal_file(configure):
    configure()
    command = ["HyperparameterSearchTask", "--config", "unit", "--version", "s", "--dataset-version", "d1",
               "--model-name", "DNN", "--trials", "2", "--TrainingTask-workflow", "slurm"]
    with luigi.cmdline_parser.CmdlineParser.global_instance(command) as parser:
        task = parser.get_task_obj()
        rounds = task.run()
        (trial,) = next(rounds)  # the first round: one trial, to be submitted as a job
        rounds.close()
    assert trial.workflow == "slurm" and trial.training_version == "s_trial_000"
    assert trial.search_trial == "HyperparameterSearchTask/unit/d1/s/DNN/study.journal#0"
    assert task.local_path("study.journal").is_file() and not task.local_path("study.db").exists()


@pytest.mark.parametrize("link, error", [
    ("../elsewhere/study.db#1", StoreError), ("/tmp/study.db#1", StoreError),
    ("HyperparameterSearchTask/unit/study.sqlite#1", SearchError),
    ("HyperparameterSearchTask/unit/study.db", SearchError), ("HyperparameterSearchTask/unit/study.db#x", SearchError),
])
def test_a_trial_link_names_a_study_file_in_the_store(store, link, error):
    with pytest.raises(error):
        TrialLink.parse(link)


def test_a_trial_runs_as_a_batch_job_with_its_settings_and_study(configure):
    from tests.test_batch import job_arguments, render_jobs

    configure()
    task = TrainingTask(config="unit", version="v1", model_name="DNN", training_version="v1_trial_004",
                        overrides={"training.learning_rate": 0.003, "model_settings.DNN.hidden": [8, 8]},
                        search_trial="HyperparameterSearchTask/unit/d1/v1/DNN/study.journal#4", workflow="slurm")
    (job,) = render_jobs(task, {1: [0]})
    arguments = shlex.split(job_arguments(Path(job["job"]).read_text().strip().splitlines()[-1].split()[3]))
    values = dict(argument.split("=", 1) for argument in arguments)
    assert values["--search-trial"] == "HyperparameterSearchTask/unit/d1/v1/DNN/study.journal#4"
    assert json.loads(values["--overrides"]) == {"training.learning_rate": 0.003, "model_settings.DNN.hidden": [8, 8]}


def test_a_search_refuses_overrides_of_its_own(configure):
    configure()
    task = searched("r", trials=1, overrides={"training.epochs": 3})
    assert task.cfg.training.epochs == 3
    assert not build(task)
    assert not task.local_path("study.db").exists()
