"""Bad inputs: one clear, early error each, naming the file/branch/key, and nothing marked complete."""

import logging

import luigi
import pytest

from bhive.config import load_config
from tasks.dataset import DatasetConstructionTask
from tests.deepntuple_files import unit_config, write_config, write_deepntuple


@pytest.fixture
def samples(tmp_path):
    directory = tmp_path / "samples"
    directory.mkdir()
    write_deepntuple(directory / "train_ttbar_0.root", 300, seed=1)
    write_deepntuple(directory / "train_qcd_0.root", 200, seed=2)
    return directory


@pytest.fixture
def configure(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(configs))

    def make(sample_dir, **overrides):
        write_config(configs, "bad", unit_config(sample_dir, **overrides))
        return load_config("bad")
    return make


@pytest.fixture
def run_and_fail(store, caplog):
    """Run the dataset task and return luigi's error log, after checking nothing is complete."""

    def run() -> str:
        # a version of its own per test: luigi keeps per-process state keyed by task id
        task = DatasetConstructionTask(config="bad", version=store.parent.name, executor="iterative",
                                       chunk_size=250)
        with caplog.at_level(logging.WARNING):
            assert not luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
        assert not task.complete()
        assert not list(store.rglob("meta.json"))
        assert caplog.text, "luigi logged no error"
        return caplog.text
    return run


def test_missing_file(samples, configure, run_and_fail):
    configure(samples, samples={"train": [str(samples / "train_ttbar_0.root"), str(samples / "nope.root")],
                                "test": [str(samples / "train_qcd_0.root")]})
    message = run_and_fail()
    assert "nope.root" in message and "does not exist" in message


def test_glob_matching_nothing(samples, configure, run_and_fail):
    configure(samples, samples={"train": [str(samples / "other_*.root")], "test": [str(samples / "*.root")]})
    message = run_and_fail()
    assert "other_*.root" in message and "matches no file" in message


def test_truncated_file(samples, configure, run_and_fail):
    broken = samples / "train_ttbar_0.root"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    configure(samples)
    message = run_and_fail()
    assert "train_ttbar_0.root" in message
    assert "truncated" in message or "cannot be processed" in message


def test_not_a_root_file(samples, configure, run_and_fail):
    (samples / "train_ttbar_0.root").write_text("this is not ROOT")
    configure(samples)
    message = run_and_fail()
    assert "train_ttbar_0.root" in message and "not a readable ROOT file" in message


def test_wrong_tree_name_lists_the_trees(samples, configure, run_and_fail):
    configure(samples, treename="deepntuplizer/tree")
    message = run_and_fail()
    assert "deepntuplizer/tree" in message and "producer/custom_tree" in message and "treename" in message


def test_missing_branches_are_listed(samples, configure, run_and_fail):
    configure(samples, global_features=["jet_pt", "jet_eta", "npv", "jet_mass", "nCpfcand"])
    message = run_and_fail()
    assert "jet_mass" in message and "nCpfcand" in message and "train_" in message


def test_branch_read_only_by_an_expression_is_checked_before_processing(samples, configure, run_and_fail):
    configure(samples, global_custom_features={"log_mass": "np.log(jet_mass)"})
    message = run_and_fail()
    assert "train_" in message and "jet_mass" in message and "missing" in message
    assert "evaluation failed" not in message


def test_missing_truth_branch(samples, configure, run_and_fail):
    configure(samples, truths=["isB", "isC", "isUDS"], discriminators={"BvsL": {"signal": ["isB"], "background": ["isUDS"]}})
    message = run_and_fail()
    assert "truth branch" in message and "isUDS" in message


def test_selection_leaving_zero_jets(samples, configure, run_and_fail):
    configure(samples, bins_pt=[5000.0, 6000.0])
    message = run_and_fail()
    assert "zero jets" in message and "bins_pt" in message


def test_label_with_zero_jets(samples, configure, run_and_fail):
    configure(samples, truths={"b": [{"isB": [1]}], "c": [{"isC": [1]}], "light": [{"isL": [1]}],
                               "busy": [{"npv": [{">": 1000}]}]},
              reference_flavour="b", discriminators={"BvsL": {"signal": ["b"], "background": ["light"]}})
    message = run_and_fail()
    assert "busy" in message


def test_overlapping_truth_rules(samples, configure, run_and_fail):
    configure(samples, truths={"b": [{"isB": [1]}], "heavy": [{"isB": [1]}], "light": [{"isL": [1]}]},
              reference_flavour="b", discriminators={"BvsL": {"signal": ["b"], "background": ["light"]}})
    message = run_and_fail()
    assert "b" in message and "heavy" in message and "exclusive" in message
