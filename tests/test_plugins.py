"""Plugins as a user writes them: the README's own example package (a model, a dataloader and a
processor) registered through a config's ``plugins:`` and run through the tasks; and the
rules of the registry."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import luigi
import pytest

from bhive.plugins.registry import PluginError, Registry, load_plugins
from tasks.evaluation import ROCCurveTask
from tests.deepntuple_files import unit_config, write_config, write_samples

REPO = Path(__file__).resolve().parents[1]


def readme_code(first_line: str) -> str:
    """The README's python block that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    matching = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(matching) == 1, f"the README should have one python block starting with {first_line!r}"
    return matching[0]


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """The README's ``my_group`` package in a directory of its own, on BHIVE_PLUGIN_PATH."""
    root = tmp_path / "btv"
    (root / "my_group").mkdir(parents=True)
    (root / "my_group" / "__init__.py").write_text("")
    (root / "my_group" / "plugins.py").write_text(readme_code("# my_group/plugins.py"))
    monkeypatch.setenv("BHIVE_PLUGIN_PATH", str(root))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield root
    for name in ("my_group.plugins", "my_group"):
        sys.modules.pop(name, None)


def test_the_readme_plugins_run_through_the_tasks(plugin_package, tmp_path, monkeypatch, store):
    samples = write_samples(tmp_path / "samples", 600)
    write_config(tmp_path / "configs", "unit", unit_config(
        samples, plugins=["my_group.plugins"], processor="MyNtupleProcessor", dataloader="InMemoryLoader",
        model="MyTagger", model_settings={"MyTagger": {"hidden": 16}},
        training={"epochs": 8, "batch_size": 128, "learning_rate": 0.005, "warmup_epochs": 0}))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))

    task = ROCCurveTask(config="unit", version="v1", executor="iterative")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    assert "my_group.plugins" in sys.modules
    training = task.requires()["inference"].requires()["training"]
    artifact = json.loads(training.local_path("model", "model.json").read_text())
    assert artifact["model"] == "MyTagger" and artifact["hyperparameters"] == {"hidden": 16}
    history = json.loads(training.local_path("history.json").read_text())
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"]
    auc = json.loads(task.local_path("aucs.json").read_text())["auc"]["BvsL"]["all"]
    assert auc > 0.7, "the example model learns the generated b-tagging features"


def test_plugins_outside_bhive_and_the_plugin_path_are_not_imported(plugin_package, monkeypatch):
    monkeypatch.delenv("BHIVE_PLUGIN_PATH")
    with pytest.raises(PluginError, match="my_group.plugins' is not inside b-hive or a directory of"):
        load_plugins(["my_group.plugins"])
    assert "my_group.plugins" not in sys.modules
    with pytest.raises(PluginError, match="'json.tool' is not inside"):
        load_plugins(["json.tool"])
    assert "json.tool" not in sys.modules


def test_a_second_class_under_a_taken_name_names_both_modules():
    registry = Registry("model", "Set `model:`")
    first = types.new_class("Tagger")
    first.__module__ = "group_a.models"
    second = types.new_class("Tagger")
    second.__module__ = "group_b.models"
    registry.add(first)
    registry.add(first)  # the same class again (a module imported twice) is no conflict
    with pytest.raises(PluginError, match="two models are called Tagger: group_a.models.Tagger and group_b.models.Tagger"):
        registry.add(second)
    assert registry.get("Tagger") is first
