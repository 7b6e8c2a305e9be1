"""Task parameters, store paths, and the simulated-sample task end to end on a tiny config."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import luigi
import pytest
import yaml

from bhive.config import CONFIG_DIR, ConfigError
from bhive.identity import VersionConflictError
from bhive.store import read_json
from tasks.simulation import SimulatedSamplesTask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A config directory with the shipped default.yml and a tiny simulated config."""
    directory = tmp_path / "configs"
    directory.mkdir()
    shutil.copy(CONFIG_DIR / "default.yml", directory / "default.yml")
    tiny = yaml.safe_load((CONFIG_DIR / "hlt_ak4.yml").read_text())
    tiny["simulate"]["jets_per_file"] = 150
    for process in tiny["simulate"]["processes"].values():
        process["train_jets"], process["test_jets"] = 250, 100
    (directory / "tiny.yml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(directory))
    return directory


def build(task) -> bool:
    return luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")


def test_finer_versions_default_to_version():
    task = SimulatedSamplesTask(config="hlt_ak4", version="v1")
    assert task.dataset_version == "v1"
    assert SimulatedSamplesTask(config="hlt_ak4", version="v1", dataset_version="v0").dataset_version == "v0"


def test_store_path_has_config_versions_seed_and_split(store):
    task = SimulatedSamplesTask(config="hlt_ak4", version="v1", split="test", seed=7)
    assert task.local_path() == store.resolve() / "SimulatedSamplesTask" / "hlt_ak4" / "v1" / "seed_7" / "test"
    assert Path(task.output()["manifest"].path).parent == task.local_path()


def test_processes_is_insignificant():
    one = SimulatedSamplesTask(config="hlt_ak4", version="v1", processes=1)
    two = SimulatedSamplesTask(config="hlt_ak4", version="v1", processes=2)
    assert one.task_id == two.task_id
    assert SimulatedSamplesTask(config="hlt_ak4", version="v1", seed=1).task_id != one.task_id


def test_unknown_config_lists_the_available_ones():
    with pytest.raises(ConfigError, match="hlt_ak4"):
        SimulatedSamplesTask(config="hlt_ak5", version="v1").cfg


def test_config_without_simulation_is_refused(config_dir):
    real = yaml.safe_load((config_dir / "tiny.yml").read_text())
    del real["simulate"]
    real["samples"] = {"train": ["/data/train/*.root"], "test": ["/data/test/*.root"]}
    (config_dir / "real.yml").write_text(yaml.safe_dump(real, sort_keys=False))
    with pytest.raises(ConfigError, match="simulate"):
        SimulatedSamplesTask(config="real", version="v1").identity()


def test_generates_resumes_and_refuses_changed_settings(config_dir, store):
    task = SimulatedSamplesTask(config="tiny", version="v1", processes=2)
    assert build(task)
    directory = task.local_path()
    manifest = read_json(directory / "manifest.json")
    assert manifest["n_jets"] == 500
    assert [f["file"] for f in manifest["files"]] == [
        "ttbar_train_000.root", "ttbar_train_001.root", "qcd_train_000.root", "qcd_train_001.root"]
    assert task.complete()

    # an interrupted run: the manifest and one file are missing; the rest is reused
    kept = directory / "ttbar_train_000.root"
    kept_mtime = kept.stat().st_mtime_ns
    lost = manifest["files"][3]
    (directory / "manifest.json").unlink()
    (directory / lost["file"]).unlink()
    (directory / (lost["file"] + ".json")).unlink()
    assert not task.complete()
    assert build(SimulatedSamplesTask(config="tiny", version="v1", processes=1))
    assert kept.stat().st_mtime_ns == kept_mtime
    again = read_json(directory / "manifest.json")
    assert again["files"][3]["content_sha256"] == lost["content_sha256"]

    # same version, different settings: an error naming the version to bump
    changed = yaml.safe_load((config_dir / "tiny.yml").read_text())
    changed["simulate"]["npv_mean"] = 20.0
    (config_dir / "tiny.yml").write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(VersionConflictError, match="--dataset-version"):
        SimulatedSamplesTask(config="tiny", version="v1").complete()
    assert not build(SimulatedSamplesTask(config="tiny", version="v1"))
    assert read_json(directory / "manifest.json") == again, "the old output must be left untouched"


def test_law_run_prints_the_output_location(config_dir, store, tmp_path):
    env = {**os.environ, "LAW_CONFIG_FILE": str(REPO / "law.cfg"), "LAW_HOME": str(tmp_path / "law"),
           "PYTHONPATH": str(REPO)}
    law = shutil.which("law", path=str(Path(sys.executable).parent)) or "law"

    def law_command(*args):
        return subprocess.run([law, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert law_command("index").returncode == 0
    result = law_command("run", "SimulatedSamplesTask", "--config", "tiny", "--version", "v3",
                         "--split", "test", "--print-output", "0")
    assert result.returncode == 0, result.stderr
    expected = store.resolve() / "SimulatedSamplesTask" / "tiny" / "v3" / "seed_42" / "test" / "manifest.json"
    assert str(expected) in result.stdout
