"""Tests for loading and validating configs (bhive.config)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from bhive.config import (
    CONFIG_DIR,
    SCHEMA_COMMAND,
    CandidateGroup,
    Config,
    ConfigError,
    ConfigFile,
    Discriminator,
    ProcessConfig,
    SamplesConfig,
    SimulateConfig,
    SimulatedProcess,
    TrainingConfig,
    TruthCondition,
    TruthRule,
    available_configs,
    load_config,
    schema_json,
)
from bhive.config.schema import SimulateSection, overlay
from tests.test_expressions import REFUSED

SHIPPED_DEFAULT = CONFIG_DIR / "default.yml"

# A small valid config reading recorded ntuples; tests change one thing at a time.
BASE: dict[str, Any] = {
    "samples": {"train": ["ntuples/train_*.root"], "test": ["ntuples/test_*.root"]},
    "processes": [
        {"name": "ttbar", "match": ["*ttbar*"], "cuts": {"pt": [30, 1000], "abs_eta": [0, 2.5]}},
        {"name": "qcd", "match": ["*qcd*"]},
    ],
    "global_features": ["jet_pt", "jet_eta", "nsv"],
    "global_custom_features": {"log_pt": "np.log(jet_pt)"},
    "cpf_candidates": ["cpf_pt", "cpf_sip"],
    "n_cpf_candidates": 5,
    "cpf_custom_features": {"cpf_pt_frac": "cpf_pt / jet_pt"},
    "truths": ["isB", "isC", "isL"],
    "reference_flavour": "isB",
    "discriminators": {"BvsL": {"signal": ["isB"], "background": ["isL"]}},
}

SIMULATE: dict[str, Any] = {
    "branch_style": "hlt",
    "ecm_gev": 13600.0,
    "jets_per_file": 1000,
    "jet_pt_min": 20.0,
    "jet_abs_eta_max": 2.5,
    "npv_mean": 40.0,
    "processes": {
        "ttbar": {"kind": "ttbar", "train_jets": 3000, "test_jets": 1000},
        "qcd": {"kind": "qcd", "train_jets": 3000, "test_jets": 1000, "pthat_min": 30.0},
    },
}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config directory holding a copy of the shipped default.yml."""
    directory = tmp_path / "configs"
    directory.mkdir()
    shutil.copy(SHIPPED_DEFAULT, directory / "default.yml")
    return directory


def write(config_dir: Path, content: dict | str, name: str = "user") -> Path:
    path = config_dir / f"{name}.yml"
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def load(config_dir: Path, content: dict | str, name: str = "user") -> Config:
    write(config_dir, content, name)
    return load_config(name, config_dir=config_dir)


def simulated_base() -> dict[str, Any]:
    content = copy.deepcopy(BASE)
    del content["samples"], content["processes"]
    content["simulate"] = copy.deepcopy(SIMULATE)
    # expressions are checked against the branches the simulation writes (hlt style)
    content.update(cpf_candidates=["pfcand_pt", "pfcand_deltaR"],
                   cpf_custom_features={"cpf_pt_frac": "pfcand_pt / jet_pt"})
    return content


def expect_error(config_dir: Path, content: dict | str, key: str, *fragments: str, file: str = "user.yml") -> str:
    """Load ``content`` and check the error names ``file`` and ``key`` and contains ``fragments``."""
    with pytest.raises(ConfigError) as info:
        load(config_dir, content)
    message = str(info.value)
    assert file in message, message
    assert key in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def changed(change: Callable[[dict], None], base: dict | None = None) -> dict:
    content = copy.deepcopy(BASE if base is None else base)
    change(content)
    return content


# --------------------------------------------------------------------------------------
# The shipped configs
# --------------------------------------------------------------------------------------


def test_available_configs_lists_shipped_configs_without_default() -> None:
    names = available_configs()
    assert {"hlt_ak4", "offline_ak4"} <= set(names)
    assert "default" not in names
    assert names == sorted(names)


def test_hlt_ak4_shape() -> None:
    config = load_config("hlt_ak4")
    assert config.name == "hlt_ak4"
    assert config.path == CONFIG_DIR / "hlt_ak4.yml"
    assert config.treename == "producer/custom_tree"
    assert config.samples is None
    assert isinstance(config.simulate, SimulateConfig)
    assert config.simulate.branch_style == "hlt"
    assert config.simulate.jets("train") == {"ttbar": 60000, "qcd": 60000}
    assert config.simulate.jets("test") == {"ttbar": 20000, "qcd": 20000}
    qcd = config.simulate.processes["qcd"]
    assert qcd.kind == "qcd" and qcd.pthat_min == 30.0 and qcd.mpi is False
    assert [p.name for p in config.processes] == ["ttbar", "qcd"]
    assert config.global_features == ("jet_pt", "jet_eta", "n_Cpfcand", "n_Npfcand", "nsv", "npv")
    assert list(config.candidate_groups) == ["cpf", "vtx"]
    assert len(config.candidate_groups["cpf"].features) == 22
    assert config.candidate_groups["cpf"].n_candidates == 25
    assert len(config.candidate_groups["vtx"].features) == 12
    assert config.candidate_groups["vtx"].n_candidates == 4
    assert config.truth_labels == ("isB", "isC", "isUDS", "isG")
    assert config.reference_flavour == "isB"
    assert config.classes == {"b": ("isB",), "c": ("isC",), "uds": ("isUDS",), "g": ("isG",)}
    assert config.discriminators["BvsL"] == Discriminator(signal=("b",), background=("uds", "g"))
    assert set(config.discriminators) == {"BvsL", "BvsC", "CvsL", "CvsB", "BvsAll", "QvsG"}
    assert config.bins_pt[0] == 30.0 and config.bins_pt[-1] == 2000.0
    assert config.bins_eta == (-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    assert config.pt_key == "jet_pt" and config.eta_key == "jet_eta"
    # hlt_ak4 overrides two training defaults (epochs, class_weights) and keeps the others
    assert config.training == TrainingConfig(
        epochs=6, batch_size=1024, learning_rate=1e-3, weight_decay=1e-2, optimizer="adamw",
        scheduler="cosine", warmup_epochs=1, gradient_clip=5.0, patience=5, sampling="stochastic",
        validation_fraction=0.1, class_weights="balanced", negative_weights="abs",
    )
    assert {"pfcand_trackSip3dSig", "sv_enratio", "isB", "npv"} <= config.branches()
    # the jet-relative coordinates are custom features that read pfcand_phi and jet_phi
    assert list(config.candidate_groups["cpf"].custom_features) == ["pfcand_etarel", "pfcand_phirel"]
    assert {"pfcand_phi", "jet_phi"} <= config.branches()


def test_offline_ak4_shape() -> None:
    config = load_config("offline_ak4")
    assert config.simulate is not None and config.simulate.branch_style == "deepjet"
    assert len(config.global_features) == 15
    assert list(config.candidate_groups) == ["cpf", "npf", "vtx"]
    assert [len(g.features) for g in config.candidate_groups.values()] == [16, 6, 12]
    assert config.truth_labels == ("b", "bb", "lepb", "c", "uds", "g")
    assert config.truths[0] == TruthRule(
        label="b",
        conditions=(
            TruthCondition("isB", (("==", 1.0),)),
            TruthCondition("isBB", (("==", 0.0),)),
            TruthCondition("isLeptonicB", (("==", 0.0),)),
        ),
    )
    assert config.classes["b"] == ("b", "bb", "lepb")
    assert config.reference_flavour == "b"
    assert config.model == "DeepJet"
    assert {"isBB", "isLeptonicB", "Npfcan_HadFrac"} <= config.branches()


def test_shipped_configs_raw_is_json_and_frozen() -> None:
    for name in available_configs():
        config = load_config(name)
        json.dumps(config.raw)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.model = "Other"  # type: ignore[misc]
        assert len({config, load_config(name)}) == 1


# --------------------------------------------------------------------------------------
# Loading, layering, hashing
# --------------------------------------------------------------------------------------


def test_minimal_config_types(config_dir: Path) -> None:
    config = load(config_dir, BASE)
    assert config.samples == SamplesConfig(train=("ntuples/train_*.root",), test=("ntuples/test_*.root",))
    assert config.simulate is None
    assert config.processes[0] == ProcessConfig(
        name="ttbar", match=("*ttbar*",), cuts={"pt": (30.0, 1000.0), "abs_eta": (0.0, 2.5)}
    )
    assert config.processes[1].cuts == {}
    assert config.candidate_groups == {
        "cpf": CandidateGroup(
            name="cpf", features=("cpf_pt", "cpf_sip"), n_candidates=5,
            custom_features={"cpf_pt_frac": "cpf_pt / jet_pt"},
        )
    }
    # One class per truth label when `classes` is omitted.
    assert config.classes == {"isB": ("isB",), "isC": ("isC",), "isL": ("isL",)}
    assert config.process_overlap == "error"


def test_branches_cover_features_truths_and_expressions(config_dir: Path) -> None:
    content = changed(lambda c: c.update(global_custom_features={"ratio": "np.abs(jet_eta) / ak.num(jet_pt, axis=0)"}))
    branches = load(config_dir, content).branches()
    assert branches == {"jet_pt", "jet_eta", "nsv", "cpf_pt", "cpf_sip", "isB", "isC", "isL"}
    assert "ratio" not in branches and "np" not in branches


def test_user_value_overrides_default_and_training_merges(config_dir: Path) -> None:
    content = changed(lambda c: c.update(treename="tree", training={"epochs": 3, "learning_rate": 5e-4}))
    config = load(config_dir, content)
    assert config.treename == "tree"
    assert config.training.epochs == 3
    assert config.training.learning_rate == 5e-4
    assert config.training.batch_size == 1024  # kept from default.yml
    assert config.raw["training"]["optimizer"] == "adamw"


def test_lists_replace_instead_of_merging(config_dir: Path) -> None:
    config = load(config_dir, changed(lambda c: c.update(bins_eta=[-1.0, 0.0, 1.0])))
    assert config.bins_eta == (-1.0, 0.0, 1.0)


def test_exponent_numbers_are_accepted_for_integers(config_dir: Path) -> None:
    text = yaml.safe_dump(simulated_base(), sort_keys=False)
    text = text.replace("train_jets: 3000", "train_jets: 6e4").replace("jets_per_file: 1000", "jets_per_file: 2.0e+4")
    text += "training:\n  learning_rate: 1e-3\n  batch_size: 5e2\n"
    config = load(config_dir, text)
    assert config.simulate.jets("train") == {"ttbar": 60000, "qcd": 60000}
    assert isinstance(config.simulate.processes["qcd"].train_jets, int)
    assert config.simulate.jets_per_file == 20000
    assert config.training.learning_rate == 1e-3 and config.training.batch_size == 500
    assert config.raw["simulate"]["processes"]["qcd"]["train_jets"] == 60000
    # The config loader's number rules must not leak into yaml.safe_load used elsewhere.
    assert yaml.safe_load("n: 6e4") == {"n": "6e4"}


def test_simulate_derives_processes_and_fills_defaults(config_dir: Path) -> None:
    config = load(config_dir, simulated_base())
    assert [(p.name, p.match) for p in config.processes] == [("ttbar", ("*ttbar_*",)), ("qcd", ("*qcd_*",))]
    ttbar = config.simulate.processes["ttbar"]
    assert ttbar == SimulatedProcess(
        name="ttbar", kind="ttbar", train_jets=3000, test_jets=1000, mpi=True,
        pthat_min=None, pthat_bias_power=None, pythia_settings=(),
    )
    assert config.simulate.jets("test") == {"ttbar": 1000, "qcd": 1000}
    with pytest.raises(ValueError, match="unknown split"):
        config.simulate.jets("validation")


def test_section_hash_ignores_key_order_and_follows_values(config_dir: Path) -> None:
    first = load(config_dir, BASE, name="first")
    reordered = dict(reversed(list(copy.deepcopy(BASE).items())))
    reordered["samples"] = {"test": BASE["samples"]["test"], "train": BASE["samples"]["train"]}
    second = load(config_dir, reordered, name="second")
    assert first.hash == second.hash
    assert first.section_hash("samples", "bins_pt") == second.section_hash("bins_pt", "samples")
    assert len(first.hash) == 64

    other = load(config_dir, changed(lambda c: c.update(n_cpf_candidates=6)), name="third")
    assert other.hash != first.hash
    assert other.section_hash("n_cpf_candidates") != first.section_hash("n_cpf_candidates")
    assert other.section_hash("samples", "truths") == first.section_hash("samples", "truths")
    # Integral numbers hash like their float spelling once validated.
    floats = load(config_dir, changed(lambda c: c.update(bins_pt=[30.0, 40.0, 50.0])), name="fourth")
    ints = load(config_dir, changed(lambda c: c.update(bins_pt=[30, 40, 50])), name="fifth")
    assert floats.section_hash("bins_pt") == ints.section_hash("bins_pt")
    with pytest.raises(ValueError, match="unknown config section"):
        first.section_hash("bins_ptt")


# Every key set, with the spellings the loader normalises (6e4, ints for floats, .inf, true
# as a truth value); the hash is the one the loader before the pydantic models gave.
EVERY_KEY = """\
treename: tree/jets
simulate:
  branch_style: hlt
  ecm_gev: 13600
  jets_per_file: 2.0e+4
  jet_pt_min: 20
  jet_abs_eta_max: 2.5
  npv_mean: 40
  processes:
    ttbar: {kind: ttbar, train_jets: 6e4, test_jets: 20000}
    qcd: {kind: qcd, train_jets: 60000, test_jets: 0, mpi: false, pthat_min: 30, pthat_bias_power: 4, pythia_settings: ["PartonLevel:ISR = off"]}
processes:
  - {name: ttbar, match: ["*ttbar_*"], cuts: {pt: [30, .inf], abs_eta: [0, 2.5]}}
  - {name: qcd, match: ["*qcd_*"]}
process_overlap: warn
bins_pt: [30, 50, 100, 1000]
bins_eta: [-2.5, 0, 2.5]
pt_key: jet_pt
eta_key: jet_eta
global_features: [jet_pt, jet_eta, nsv]
global_custom_features: {log_pt: "np.log(jet_pt)"}
cpf_candidates: [pfcand_pt, pfcand_deltaR]
n_cpf_candidates: 2.5e+1
vtx_features: [sv_pt]
n_vtx_candidates: 4
vtx_custom_features: {sv_ptrel: "sv_pt / jet_pt"}
truths:
  b: [{isB: [1]}, {isBB: [false]}]
  c: [{isC: [true, {">=": 1}]}]
  l: [{isUDS: [1]}]
reference_flavour: b
classes: {heavy: [b, c], light: [l]}
discriminators: {HvsL: {signal: [heavy], background: [light]}}
reference_taggers: {Old: {HvsL: jet_old_score}}
working_points: {HvsL: {medium: 0.01, loose: 1.0e-1}}
model_settings: {DeepJet: {dropout: 0.1, sizes: [64, 32]}}
processor: DeepNtupleProcessor
dataloader: ShardDataLoader
model: DeepJet
training: {epochs: 3, batch_size: 5e2, learning_rate: 1e-3, weight_decay: 0, optimizer: adam, scheduler: none, warmup_epochs: 0, gradient_clip: 1, patience: 2, sampling: loss_weight, validation_fraction: 0.2}
"""


def test_raw_and_hashes_are_those_of_before(config_dir: Path) -> None:
    config = load(config_dir, EVERY_KEY)
    assert config.raw["simulate"]["processes"]["ttbar"] == {
        "kind": "ttbar", "train_jets": 60000, "test_jets": 20000, "mpi": True, "pthat_min": None,
        "pthat_bias_power": None, "pythia_settings": []}
    assert config.raw["processes"][0]["cuts"] == {"pt": [30.0, float("inf")], "abs_eta": [0.0, 2.5]}
    assert config.raw["truths"]["c"] == [{"isC": [True, {">=": 1}]}]
    # keys added after this hash was pinned, each at its default
    sections = set(config.raw) - {"plugins", "working_points_on", "charm_working_points", "optional_groups",
                                  "reweighting", "attack", "regression_targets", "search"}
    assert sections == set(yaml.safe_load(EVERY_KEY)) | {"cpf_custom_features"}
    # and training keys added since, at their defaults
    assert {config.raw["training"].pop(key) for key in ("class_weights", "negative_weights")} == {"none", "abs"}
    assert config.section_hash(*sections) == "e76389f96ea8bdf117fb7f30c3488b2c94144c8a90a8ac30d766070e570ded40"


def test_list_and_rule_truths_give_the_same_rules(config_dir: Path) -> None:
    as_list = load(config_dir, BASE, name="as_list")
    rules = {"isB": [{"isB": [1]}], "isC": [{"isC": [True]}], "isL": [{"isL": [{"==": 1}]}]}
    as_rules = load(config_dir, changed(lambda c: c.update(truths=rules)), name="as_rules")
    assert as_list.truths == as_rules.truths
    assert as_list.truths[1] == TruthRule("isC", (TruthCondition("isC", (("==", 1.0),)),))


def test_rule_truths_with_operators_and_alternatives(config_dir: Path) -> None:
    rules = {
        "b": [{"hadronFlavour": [5]}],
        "light": [{"hadronFlavour": [0]}, {"partonFlavour": [1, 2, -3, {"!=": 21}]}],
        "hard": [{"jet_pt": [{">": 100}], "jet_eta": [{"<=": 1.5}]}],
    }
    content = changed(lambda c: c.update(truths=rules, reference_flavour="b", discriminators={}))
    config = load(config_dir, content)
    assert config.truths[1].conditions[1] == TruthCondition(
        "partonFlavour", (("==", 1.0), ("==", 2.0), ("==", -3.0), ("!=", 21.0))
    )
    assert config.truths[2].conditions == (
        TruthCondition("jet_pt", ((">", 100.0),)),
        TruthCondition("jet_eta", (("<=", 1.5),)),
    )
    assert {"hadronFlavour", "partonFlavour"} <= config.branches()


def test_load_by_path_takes_default_from_config_dir(config_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(elsewhere, BASE, name="mine")
    config = load_config(path, config_dir=config_dir)
    assert config.name == "mine" and config.path == path
    assert load_config(str(path), config_dir=config_dir).hash == config.hash
    assert config.training.epochs == 10


def test_config_dir_from_environment(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config_dir, BASE, name="from_env")
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(config_dir))
    assert available_configs() == ["from_env"]
    assert load_config("from_env").path == config_dir / "from_env.yml"


# --------------------------------------------------------------------------------------
# Errors: finding and parsing files
# --------------------------------------------------------------------------------------


def test_unknown_config_name_lists_available(config_dir: Path) -> None:
    write(config_dir, BASE, name="alpha")
    write(config_dir, BASE, name="beta")
    with pytest.raises(ConfigError) as info:
        load_config("gamma", config_dir=config_dir)
    message = str(info.value)
    assert "gamma" in message and "alpha, beta" in message
    assert "default" not in message.split("available configs:")[1].split("(")[0]


def test_default_is_not_a_config(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match="shared defaults"):
        load_config("default", config_dir=config_dir)


def test_missing_file_path(config_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "nowhere.yml", config_dir=config_dir)
    assert "nowhere.yml" in str(info.value)


def test_missing_default_file(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="default.yml"):
        load_config("user", config_dir=tmp_path)


def test_yaml_syntax_error_names_file_and_line(config_dir: Path) -> None:
    text = "treename: tree\nglobal_features: [jet_pt, jet_eta\nreference_flavour: isB\n"
    message = expect_error(config_dir, text, "YAML syntax error", "line ")
    assert "line 3" in message or "line 2" in message


def test_yaml_duplicate_key_names_file_key_and_lines(config_dir: Path) -> None:
    text = yaml.safe_dump(changed(lambda c: c.pop("truths")), sort_keys=False)
    text += "truths:\n  isB: [{isB: [1]}]\n  isC: [{isC: [1]}]\n  isB: [{isL: [1]}]\n"
    expect_error(config_dir, text, "truths.isB", "duplicate key", "each key may appear once")


def test_top_level_must_be_mapping(config_dir: Path) -> None:
    expect_error(config_dir, "- a\n- b\n", "user.yml", "must be a mapping")


# --------------------------------------------------------------------------------------
# Errors: keys and types
# --------------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests(config_dir: Path) -> None:
    content = changed(lambda c: c.update(bins_ptt=[30, 40]))
    expect_error(config_dir, content, "bins_ptt", "unknown key", "did you mean 'bins_pt'?", "Allowed keys", "treename")


def test_unknown_nested_keys(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(training={"epoch": 3})), "training.epoch",
                 "did you mean 'epochs'?", "batch_size")
    simulated = simulated_base()
    simulated["simulate"]["processes"]["qcd"]["pthat_mn"] = 20.0
    expect_error(config_dir, simulated, "simulate.processes.qcd.pthat_mn", "did you mean 'pthat_min'?")
    expect_error(config_dir, changed(lambda c: c["samples"].update(valid=["x"])), "samples.valid", "train, test")
    expect_error(config_dir, changed(lambda c: c["processes"][0].update(cut={})), "processes[0].cut",
                 "did you mean 'cuts'?")


@pytest.mark.parametrize("key", ["global_features", "truths", "reference_flavour"])
def test_missing_required_key(config_dir: Path, key: str) -> None:
    expect_error(config_dir, changed(lambda c: c.pop(key)), key, "missing", "default.yml")


def test_missing_nested_keys(config_dir: Path) -> None:
    simulated = simulated_base()
    del simulated["simulate"]["processes"]["qcd"]["kind"]
    expect_error(config_dir, simulated, "simulate.processes.qcd.kind", "missing")
    simulated = simulated_base()
    del simulated["simulate"]["npv_mean"]
    expect_error(config_dir, simulated, "simulate.npv_mean", "missing")
    expect_error(config_dir, changed(lambda c: c.pop("n_cpf_candidates")), "n_cpf_candidates", "missing")
    expect_error(config_dir, changed(lambda c: c["processes"][1].pop("match")), "processes[1].match", "missing")


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        (lambda c: c.update(bins_pt="30, 40, 50"), "bins_pt", "expected a list of bin edges, got a string"),
        (lambda c: c.update(bins_pt=[30, "40"]), "bins_pt[1]", "expected a number"),
        (lambda c: c.update(n_cpf_candidates=True), "n_cpf_candidates", "got a boolean"),
        (lambda c: c.update(n_cpf_candidates=2.5), "n_cpf_candidates", "not a whole number"),
        (lambda c: c.update(training={"batch_size": "large"}), "training.batch_size", "got a string"),
        (lambda c: c.update(training={"learning_rate": True}), "training.learning_rate", "got a boolean"),
        (lambda c: c.update(global_features="jet_pt"), "global_features", "expected a list"),
        (lambda c: c.update(global_features=["jet_pt", 3]), "global_features[1]", "non-empty string"),
        (lambda c: c.update(treename=["a"]), "treename", "got a list"),
        (lambda c: c.update(samples={"train": "a.root", "test": ["b.root"]}), "samples.train", "expected a list"),
        (lambda c: c.update(truths=5), "truths", "expected a list of boolean branches"),
        (lambda c: c.update(truths={"isB": [{"isB": ["yes"]}]}), "truths.isB[0].isB[0]", "got a string"),
        (lambda c: c.update(classes=["isB"]), "classes", "expected a mapping"),
    ],
)
def test_wrong_types(config_dir: Path, change: Callable[[dict], None], key: str, fragment: str) -> None:
    expect_error(config_dir, changed(change), key, fragment)


def test_training_value_ranges(config_dir: Path) -> None:
    cases = {
        "epochs": (0, "integer >= 1"),
        "learning_rate": (0, "> 0"),
        "weight_decay": (-0.1, ">= 0"),
        "optimizer": ("adagrad", "adamw, adam, sgd"),
        "scheduler": ("step", "none, linear, cosine"),
        "sampling": ("oversample", "stochastic, loss_weight"),
        "validation_fraction": (1.0, "0 <= f < 1"),
        "patience": (-1, "integer >= 0"),
        "gradient_clip": (-1.0, ">= 0"),
    }
    for key, (value, allowed) in cases.items():
        expect_error(config_dir, changed(lambda c: c.update(training={key: value})), f"training.{key}", allowed)


# --------------------------------------------------------------------------------------
# Errors: meaning
# --------------------------------------------------------------------------------------


def test_pt_and_eta_key_must_be_global_features(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(pt_key="jet_ptt")), "pt_key",
                 "not among global_features", "did you mean 'jet_pt'?", "jet_pt, jet_eta, nsv")
    # eta_key comes from default.yml, the global features from the user file: both are named.
    expect_error(config_dir, changed(lambda c: c.update(global_features=["jet_pt", "nsv"])), "eta_key",
                 "'jet_eta' is not among global_features (global_features is set in user.yml)", file="default.yml")


def test_reference_flavour_must_be_truth_label(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(reference_flavour="b")), "reference_flavour",
                 "not a truth label", "isB, isC, isL")


def test_empty_feature_lists(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(global_features=[])), "global_features", "empty")
    expect_error(config_dir, changed(lambda c: c.update(cpf_candidates=[])), "cpf_candidates", "empty")
    expect_error(config_dir, changed(lambda c: c.update(global_features=["jet_pt", "jet_eta", "jet_pt"])),
                 "global_features[2]", "listed twice")


def test_group_settings_without_group(config_dir: Path) -> None:
    content = changed(lambda c: c.update(n_npf_candidates=10))
    expect_error(config_dir, content, "n_npf_candidates", "npf group is absent", "npf_candidates")
    content = changed(lambda c: c.update(cpf_candidates=None))
    expect_error(config_dir, content, "n_cpf_candidates", "cpf group is absent")


def test_null_group_is_absent(config_dir: Path) -> None:
    content = changed(lambda c: c.update(cpf_candidates=None, n_cpf_candidates=None, cpf_custom_features=None))
    config = load(config_dir, content)
    assert config.candidate_groups == {}
    assert "cpf_candidates" not in config.raw


def test_optional_groups_default_to_none_and_name_configured_groups(config_dir: Path) -> None:
    config = load(config_dir, BASE)
    assert config.optional_groups == () and config.raw["optional_groups"] == []
    assert load(config_dir, changed(lambda c: c.update(optional_groups=None))).optional_groups == ()
    config = load(config_dir, changed(lambda c: c.update(optional_groups=["cpf"])))
    assert config.optional_groups == ("cpf",) and config.raw["optional_groups"] == ["cpf"]
    expect_error(config_dir, changed(lambda c: c.update(optional_groups=["vtx"])), "optional_groups[0]",
                 "the vtx group is not configured ('vtx_features' is null)")
    expect_error(config_dir, changed(lambda c: c.update(optional_groups=["cpf", "svs"])), "optional_groups[1]",
                 "unknown candidate group 'svs'", "Allowed: cpf, npf, vtx")
    expect_error(config_dir, changed(lambda c: c.update(optional_groups=["cpf", "cpf"])), "optional_groups[1]",
                 "listed twice")
    expect_error(config_dir, changed(lambda c: c.update(optional_groups="cpf")), "optional_groups",
                 "expected a list of candidate groups, got a string")


def test_without_groups_leaves_what_the_config_says(config_dir: Path) -> None:
    config = load(config_dir, changed(lambda c: c.update(vtx_features=["sv_pt"], n_vtx_candidates=2,
                                                         optional_groups=["vtx"])))
    reduced = config.without_groups(["vtx"])
    assert list(reduced.candidate_groups) == ["cpf"] and list(config.candidate_groups) == ["cpf", "vtx"]
    assert "sv_pt" in config.branches() and "sv_pt" not in reduced.branches()
    assert reduced.raw == config.raw and reduced.hash == config.hash


def test_candidate_count_must_be_positive(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(n_cpf_candidates=0)), "n_cpf_candidates", ">= 1")


@pytest.mark.parametrize(
    ("edges", "key", "fragment"),
    [
        ([30, 20, 40], "bins_pt[1]", "strictly increasing"),
        ([30, 30, 40], "bins_pt[1]", "strictly increasing"),
        ([30], "bins_pt", "at least 2 edges"),
        ([], "bins_pt", "at least 2 edges"),
        ([0, 10, 20], "bins_pt[0]", "must be > 0"),
        ([-5, 10], "bins_pt[0]", "must be > 0"),
    ],
)
def test_bad_pt_bins(config_dir: Path, edges: list, key: str, fragment: str) -> None:
    expect_error(config_dir, changed(lambda c: c.update(bins_pt=edges)), key, fragment)


def test_bad_eta_bins(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(bins_eta=[1.0, 1.0])), "bins_eta[1]", "strictly increasing")
    expect_error(config_dir, changed(lambda c: c.update(bins_eta=[0.5])), "bins_eta", "at least 2 edges")
    assert load(config_dir, changed(lambda c: c.update(bins_eta=[-2.5, 0.0, 2.5]))).bins_eta[0] == -2.5


def test_error_in_default_names_default_file(config_dir: Path) -> None:
    defaults = yaml.safe_load(SHIPPED_DEFAULT.read_text())
    defaults["bins_pt"] = [30, 20]
    (config_dir / "default.yml").write_text(yaml.safe_dump(defaults))
    message = expect_error(config_dir, changed(lambda c: c.pop("bins_pt", None)), "bins_pt[1]",
                           "strictly increasing", file="default.yml")
    assert "user.yml" not in message
    # The same mistake in the user file names the user file.
    expect_error(config_dir, changed(lambda c: c.update(bins_pt=[50, 40])), "bins_pt[1]", file="user.yml")


def test_samples_and_simulate_exclusive(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.pop("samples")), "samples", "neither", "simulate")
    expect_error(config_dir, changed(lambda c: c.update(simulate=copy.deepcopy(SIMULATE))), "simulate", "both")


def test_samples_need_processes(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.pop("processes")), "processes", "missing", "match")


def test_classes_errors(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(classes={"b": ["isB"], "l": ["isLight"]})),
                 "classes.l[0]", "unknown truth label 'isLight'", "did you mean 'isL'?")
    expect_error(config_dir, changed(lambda c: c.update(classes={"b": ["isB", "isC"], "l": ["isL", "isC"]})),
                 "classes.l[1]", "already in class 'b'")
    expect_error(config_dir, changed(lambda c: c.update(classes={"all": ["isB", "isC", "isL"]})),
                 "classes", "at least 2 classes")
    expect_error(config_dir, changed(lambda c: c.update(classes={"b": [], "l": ["isL"]})), "classes.b", "empty")


def test_classes_merge_labels(config_dir: Path) -> None:
    content = changed(lambda c: c.update(
        classes={"heavy": ["isB", "isC"], "light": ["isL"]},
        discriminators={"HvsL": {"signal": ["heavy"], "background": ["light"]}},
    ))
    config = load(config_dir, content)
    assert config.classes == {"heavy": ("isB", "isC"), "light": ("isL",)}
    assert config.discriminators == {"HvsL": Discriminator(signal=("heavy",), background=("light",))}


def test_discriminator_errors(config_dir: Path) -> None:
    bad_class = {"BvsL": {"signal": ["isB"], "background": ["isLL"]}}
    expect_error(config_dir, changed(lambda c: c.update(discriminators=bad_class)),
                 "discriminators.BvsL.background[0]", "unknown class 'isLL'", "isB, isC, isL")
    both_sides = {"BvsX": {"signal": ["isB", "isC"], "background": ["isC", "isL"]}}
    expect_error(config_dir, changed(lambda c: c.update(discriminators=both_sides)),
                 "discriminators.BvsX", "'isC'", "both the signal and the background")
    no_background = {"BvsL": {"signal": ["isB"]}}
    expect_error(config_dir, changed(lambda c: c.update(discriminators=no_background)),
                 "discriminators.BvsL.background", "missing")


def test_truth_rule_errors(config_dir: Path) -> None:
    rules = {"isB": [{"isB": [{"=>": 1}]}], "isC": [{"isC": [1]}]}
    expect_error(config_dir, changed(lambda c: c.update(truths=rules)), "truths.isB[0].isB[0]",
                 "unknown comparison operator '=>'", "==, !=, >, >=, <, <=")
    rules = {"isB": [{"isB": [{">": 1, "<": 3}]}], "isC": [{"isC": [1]}]}
    expect_error(config_dir, changed(lambda c: c.update(truths=rules)), "truths.isB[0].isB[0]", "exactly one operator")
    rules = {"isB": [], "isC": [{"isC": [1]}]}
    expect_error(config_dir, changed(lambda c: c.update(truths=rules)), "truths.isB", "non-empty list")
    rules = {"isB": [{"isB": []}], "isC": [{"isC": [1]}]}
    expect_error(config_dir, changed(lambda c: c.update(truths=rules)), "truths.isB[0].isB", "non-empty list")


def test_duplicate_truth_labels_in_list_form(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(truths=["isB", "isC", "isB"])), "truths[2]", "listed twice")


def test_custom_feature_errors(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c.update(global_custom_features={"bad": "np.log(jet_pt"})),
                 "global_custom_features.bad", "not a valid Python expression")
    expect_error(config_dir, changed(lambda c: c.update(cpf_custom_features={"x": "cpf_pt = 1"})),
                 "cpf_custom_features.x", "not a valid Python expression")
    expect_error(config_dir, changed(lambda c: c.update(global_custom_features={"nsv": "nsv * 2"})),
                 "global_custom_features.nsv", "name of a branch feature")
    expect_error(config_dir, changed(lambda c: c.update(cpf_custom_features={"cpf_sip": "cpf_sip + 1"})),
                 "cpf_custom_features.cpf_sip", "name of a branch feature")
    expect_error(config_dir, changed(lambda c: c.update(global_custom_features={"y": 3})),
                 "global_custom_features.y", "expected an expression string")
    expect_error(config_dir, changed(lambda c: c.update(global_custom_features={"z": "jet_pt.__class__"})),
                 "global_custom_features.z", "'jet_pt.__class__' is not allowed")


@pytest.mark.parametrize("expression, fragment", REFUSED)
def test_refused_expressions_fail_at_load(config_dir: Path, expression: str, fragment: str) -> None:
    message = expect_error(config_dir, changed(lambda c: c.update(global_custom_features={"evil": expression})),
                           "global_custom_features.evil", fragment)
    assert message.startswith(str(config_dir / "user.yml") + ": global_custom_features.evil: ")
    assert "\n" not in message


def test_refused_candidate_expression_names_its_group_key(config_dir: Path) -> None:
    content = changed(lambda c: c["cpf_custom_features"].update(foo="np.load(cpf_pt)"))
    expect_error(config_dir, content, "cpf_custom_features.foo", "calling 'np.load' is not allowed", "np.{abs")


def test_a_refused_expression_never_runs_at_load(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for expression in ("np.savetxt(np.str_(1), jet_pt)", "np.load(np.str_(1), allow_pickle=True)"):
        expect_error(config_dir, changed(lambda c: c.update(global_custom_features={"evil": expression})),
                     "global_custom_features.evil", "is not allowed")
    assert not list(workdir.iterdir())


def test_simulated_config_expression_reads_a_branch_the_simulation_does_not_write(config_dir: Path) -> None:
    content = simulated_base()
    content["global_custom_features"] = {"log_pt": "np.log(jet_ptt)"}
    expect_error(config_dir, content, "global_custom_features.log_pt", "'np.log(jet_ptt)'",
                 "unknown branch 'jet_ptt'", "branch_style hlt", "did you mean 'jet_pt'?")
    # the deepjet style writes other candidate branches than hlt
    content = simulated_base()
    content["simulate"]["branch_style"] = "deepjet"
    expect_error(config_dir, content, "cpf_custom_features.cpf_pt_frac", "unknown branch 'pfcand_pt'",
                 "branch_style deepjet")
    content["cpf_custom_features"] = {"cpf_pt_frac": "Cpfcan_pt / jet_pt"}
    assert load(config_dir, content).candidate_groups["cpf"].custom_features == {"cpf_pt_frac": "Cpfcan_pt / jet_pt"}


def test_recorded_ntuple_expression_branches_are_required_branches(config_dir: Path) -> None:
    # their existence is checked when the first files are opened, against Config.branches()
    content = changed(lambda c: c.update(global_custom_features={"m": "np.log(jet_mass) + ak.num(sv_pt, axis=1)"}))
    assert {"jet_mass", "sv_pt"} <= load(config_dir, content).branches()


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        (lambda s: s["processes"]["qcd"].update(kind="wjets"), "simulate.processes.qcd.kind",
         "unknown process kind 'wjets'"),
        (lambda s: s["processes"]["qcd"].pop("pthat_min"), "simulate.processes.qcd.pthat_min", "positive pthat_min"),
        (lambda s: s["processes"]["qcd"].update(pthat_min=0.0), "simulate.processes.qcd.pthat_min", "> 0"),
        (lambda s: s["processes"]["ttbar"].update(train_jets=-5), "simulate.processes.ttbar.train_jets", ">= 0"),
        (lambda s: s["processes"]["ttbar"].update(train_jets=0, test_jets=0), "simulate.processes.ttbar",
         "both 0"),
        (lambda s: s.update(jets_per_file=0), "simulate.jets_per_file", ">= 1"),
        (lambda s: s.update(branch_style="nano"), "simulate.branch_style", "hlt, deepjet"),
        (lambda s: s["processes"]["ttbar"].update(mpi="yes please"), "simulate.processes.ttbar.mpi", "true or false"),
        (lambda s: s.update(processes={}), "simulate.processes", "no processes"),
        (lambda s: s["processes"].update(qcd_flat=dict(s["processes"]["qcd"])), "simulate.processes.qcd_flat",
         "letters and digits"),
        (lambda s: s["processes"]["qcd"].update(pthat_bias_power=-1.0), "simulate.processes.qcd.pthat_bias_power",
         "> 0"),
    ],
)
def test_simulate_errors(config_dir: Path, change: Callable[[dict], None], key: str, fragment: str) -> None:
    content = simulated_base()
    change(content["simulate"])
    expect_error(config_dir, content, key, fragment)


def test_simulate_optional_process_settings(config_dir: Path) -> None:
    content = simulated_base()
    content["simulate"]["processes"]["qcd"].update(
        mpi=False, pthat_bias_power=4.0, pythia_settings=["PartonLevel:ISR = off"], test_jets=0
    )
    qcd = load(config_dir, content).simulate.processes["qcd"]
    assert (qcd.mpi, qcd.pthat_bias_power, qcd.pythia_settings, qcd.test_jets) == (
        False, 4.0, ("PartonLevel:ISR = off",), 0
    )


def test_null_optional_entry_settings_take_their_default(config_dir: Path) -> None:
    content = simulated_base()
    content["simulate"]["processes"]["qcd"].update(mpi=None, pythia_settings=None, pthat_bias_power=None)
    content["processes"] = [{"name": "qcd", "match": ["*qcd_*"], "cuts": None}]
    config = load(config_dir, content)
    qcd = config.simulate.processes["qcd"]
    assert (qcd.mpi, qcd.pythia_settings, qcd.pthat_bias_power) == (True, (), None)
    assert config.processes[0].cuts == {} and config.raw["processes"][0]["cuts"] == {}


def test_process_errors(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c["processes"][1].update(name="ttbar")), "processes[1].name",
                 "used twice")
    expect_error(config_dir, changed(lambda c: c["processes"][1].update(match=[])), "processes[1].match", "empty")
    expect_error(config_dir, changed(lambda c: c.update(processes=[])), "processes", "empty")
    expect_error(config_dir, changed(lambda c: c.update(process_overlap="ignore")), "process_overlap",
                 "error, warn")
    assert load(config_dir, changed(lambda c: c.update(process_overlap="warn"))).process_overlap == "warn"


def test_cut_errors(config_dir: Path) -> None:
    expect_error(config_dir, changed(lambda c: c["processes"][0].update(cuts={"mass": [0, 10]})),
                 "processes[0].cuts.mass", "unknown key", "pt, eta, abs_eta")
    expect_error(config_dir, changed(lambda c: c["processes"][0].update(cuts={"pt": [100, 50]})),
                 "processes[0].cuts.pt", "lower edge must be below")
    expect_error(config_dir, changed(lambda c: c["processes"][0].update(cuts={"eta": [1.0, 1.0]})),
                 "processes[0].cuts.eta", "lower edge must be below")
    expect_error(config_dir, changed(lambda c: c["processes"][0].update(cuts={"pt": [30]})),
                 "processes[0].cuts.pt", "range [lo, hi]")
    open_ended = load(config_dir, changed(lambda c: c["processes"][0].update(cuts={"pt": [30, float("inf")]})))
    assert open_ended.processes[0].cuts == {"pt": (30.0, float("inf"))}


def test_config_error_is_value_error_with_parts(config_dir: Path) -> None:
    with pytest.raises(ValueError) as info:
        load(config_dir, changed(lambda c: c.update(pt_key="nope")))
    error = info.value
    assert isinstance(error, ConfigError)
    assert error.file == config_dir / "user.yml"
    assert error.key == "pt_key"


# --------------------------------------------------------------------------------------
# Plugins
# --------------------------------------------------------------------------------------


def test_plugins_default_to_none_and_keep_their_order(config_dir: Path) -> None:
    assert load(config_dir, BASE).plugins == ()
    assert load(config_dir, changed(lambda c: c.update(plugins=None))).plugins == ()
    config = load(config_dir, changed(lambda c: c.update(plugins=["my_group.taggers", "other_group"])))
    assert config.plugins == ("my_group.taggers", "other_group")
    assert config.raw["plugins"] == ["my_group.taggers", "other_group"]


@pytest.mark.parametrize(
    ("plugins", "key", "fragment"),
    [
        (["my-group.taggers"], "plugins[0]", "'my-group.taggers' is not a Python module name"),
        ([".taggers"], "plugins[0]", "dotted identifiers like 'my_group.taggers'"),
        (["my_group..taggers"], "plugins[0]", "not a Python module name"),
        (["ok", "my_group.class"], "plugins[1]", "not a Python module name"),
        (["a.b", "a.b"], "plugins[1]", "listed twice"),
        ("my_group.taggers", "plugins", "expected a list of plugin modules, got a string"),
        ([3], "plugins[0]", "expected a non-empty string, got a number (3)"),
    ],
)
def test_plugin_names_must_be_module_names(config_dir: Path, plugins: Any, key: str, fragment: str) -> None:
    expect_error(config_dir, changed(lambda c: c.update(plugins=plugins)), key, fragment)


# --------------------------------------------------------------------------------------
# One source of defaults
# --------------------------------------------------------------------------------------

PER_CONFIG_KEYS = {"global_features", "truths", "reference_flavour"}


def test_default_yml_sets_every_key_but_those_each_config_sets() -> None:
    defaults = yaml.safe_load(SHIPPED_DEFAULT.read_text())
    assert set(defaults) == set(ConfigFile.model_fields) - PER_CONFIG_KEYS
    # the models declare no defaults of their own, apart from the optional settings of an
    # entry the user names (default.yml cannot reach those)
    for model in (ConfigFile, SamplesConfig, SimulateSection, TrainingConfig, Discriminator):
        assert all(field.is_required() for field in model.model_fields.values()), model


def test_error_in_a_key_default_yml_leaves_null_names_the_user_file(config_dir: Path) -> None:
    # default.yml's null placeholders are no one's mistake: what is missing is the user's to add
    expect_error(config_dir, changed(lambda c: c.pop("n_cpf_candidates")), "n_cpf_candidates",
                 "required key 'n_cpf_candidates' is missing", "to user.yml (or to default.yml")
    with pytest.raises(ConfigError) as info:
        load(config_dir, changed(lambda c: c.pop("processes")))
    assert info.value.file == config_dir / "user.yml"


# --------------------------------------------------------------------------------------
# configs/schema.json for editors
# --------------------------------------------------------------------------------------

SCHEMA_FILE = CONFIG_DIR / "schema.json"


def test_schema_json_is_current() -> None:
    assert SCHEMA_FILE.read_text() == schema_json(), f"configs/schema.json is stale; regenerate it: {SCHEMA_COMMAND}"


def test_schema_describes_a_config_as_written() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    text = json.dumps(schema)
    assert '"required"' not in text and '"default"' not in text
    assert set(schema["properties"]) == set(ConfigFile.model_fields)
    assert schema["additionalProperties"] is False
    assert all(spec.get("description") for spec in schema["properties"].values())
    for definition in schema["$defs"].values():
        assert definition["additionalProperties"] is False
        assert all(spec.get("description") for spec in definition["properties"].values()), definition


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yml")), ids=lambda path: path.name)
def test_shipped_config_file_validates_against_the_schema(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=schema.json\n")
    # schema.json is generated from this overlay model; jsonschema is not a dependency
    overlay(ConfigFile).model_validate(yaml.safe_load(text))


def test_overlay_takes_a_partial_file_and_refuses_mistakes() -> None:
    partial = overlay(ConfigFile).model_validate({"training": {"epochs": 3}, "simulate": {"npv_mean": 20}})
    assert partial.training.epochs == 3 and partial.treename is None
    for mistake in ({"trainig": {}}, {"training": {"epochs": 0}}, {"simulate": {"processes": {"q_cd": {}}}},
                    {"plugins": ["a-b"]}):
        with pytest.raises(ValueError):
            overlay(ConfigFile).model_validate(mistake)


def test_schema_command_prints_the_schema() -> None:
    result = subprocess.run([sys.executable, "-m", "bhive.config", "--schema"], capture_output=True, text=True,
                            cwd=CONFIG_DIR.parent, check=True)
    assert result.stdout == schema_json()
