"""Loading and validating b-hive configs.

``configs/NAME.yml`` is layered over ``configs/default.yml`` (mappings merge key by key, lists
and scalars replace) and the result is validated once, at load time, into a frozen
:class:`Config` that everything downstream trusts.

- The schema of these files is declared once, as the pydantic models of
  :mod:`bhive.config.schema`: each key's type, allowed values and, in its field description,
  its meaning. :mod:`bhive.config.values` holds the value types and their messages.
- Defaults live in one place, ``configs/default.yml``. The models declare none, so after
  layering every key must be present; default.yml sets every key a config may leave out (null
  where the default is "none": no ``simulate`` block, no npf group, one class per truth label).
  Only the optional settings of an entry the user names (a process's ``cuts``, a simulated
  process's ``mpi``, ...) cannot be layered and have their default on their model.
- Every mistake is one :class:`ConfigError` naming the file the value came from, the dotted key,
  what is wrong and what is allowed (:mod:`bhive.config.files`).
- ``configs/schema.json`` describes a config as written (an overlay on default.yml: nothing in
  it is required) for editors; regenerate it with
  ``python -m bhive.config --schema > configs/schema.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bhive import expressions
from bhive.config.files import ConfigError, Sources, read_yaml
from bhive.config.schema import (CANDIDATE_GROUPS, GROUP_KEYS, SCHEMA_COMMAND, ConfigFile, Discriminator, ProcessConfig,
                                 ReweightingConfig, SamplesConfig, TrainingConfig, schema_json)
from bhive.config.schema import AttackConfig, RegressionTargetConfig, SearchConfig
from bhive.config.search import nested, setting_problem
from bhive.config.values import CUT_KEYS, TRUTH_OPERATORS, TruthCondition, TruthRule, truth_rules

__all__ = [
    "CANDIDATE_GROUPS", "CONFIG_DIR", "CUT_KEYS", "SCHEMA_COMMAND", "TRUTH_OPERATORS", "AttackConfig", "CandidateGroup",
    "Config",
    "ConfigError", "ConfigFile", "Discriminator", "ProcessConfig", "RegressionTargetConfig", "ReweightingConfig",
    "SamplesConfig", "SearchConfig",
    "SimulateConfig", "SimulatedProcess", "TrainingConfig", "TruthCondition", "TruthRule", "available_configs", "load_config",
    "schema_json",
]

CONFIG_DIR: Path = Path(__file__).resolve().parents[2] / "configs"
CONFIG_DIR_ENV = "BHIVE_CONFIG_DIR"
DEFAULT_CONFIG_NAME = "default"
#: where a value set by load_config's overrides is said to come from (the tasks' parameter)
OVERRIDES = "--overrides"
SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")


@dataclasses.dataclass(frozen=True)
class SimulatedProcess:
    """A ``simulate.processes`` entry (SimulatedProcessSection documents the fields) and its name."""

    name: str
    kind: str
    train_jets: int
    test_jets: int
    mpi: bool
    pthat_min: float | None
    pthat_bias_power: float | None  # None: no pT-hat bias
    pythia_settings: tuple[str, ...]

    def jets(self, split: str) -> int:
        """Number of jets requested for ``split`` ("train" or "test")."""
        _check_split(split)
        return self.train_jets if split == "train" else self.test_jets


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """The ``simulate`` section (SimulateSection documents the fields)."""

    branch_style: str
    ecm_gev: float
    jets_per_file: int
    jet_pt_min: float
    jet_abs_eta_max: float
    npv_mean: float
    processes: dict[str, SimulatedProcess]

    def jets(self, split: str) -> dict[str, int]:
        """Jets requested per process for ``split`` ("train" or "test")."""
        _check_split(split)
        return {name: process.jets(split) for name, process in self.processes.items()}


@dataclasses.dataclass(frozen=True)
class CandidateGroup:
    """A per-jet collection of candidates (charged PF, neutral PF or secondary vertices)."""

    name: str
    features: tuple[str, ...]
    n_candidates: int
    custom_features: dict[str, str]  # name -> expression


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated working-group config; :class:`ConfigFile` documents each key."""

    name: str
    path: Path
    treename: str
    samples: SamplesConfig | None
    simulate: SimulateConfig | None
    processes: tuple[ProcessConfig, ...]
    process_overlap: str
    bins_pt: tuple[float, ...]
    bins_eta: tuple[float, ...]
    pt_key: str
    eta_key: str
    global_features: tuple[str, ...]
    global_custom_features: dict[str, str]
    candidate_groups: dict[str, CandidateGroup]
    optional_groups: tuple[str, ...]
    event_weight: str | None
    reweighting: ReweightingConfig
    attack: AttackConfig
    regression_targets: dict[str, RegressionTargetConfig]
    truths: tuple[TruthRule, ...]
    reference_flavour: str
    classes: dict[str, tuple[str, ...]]
    discriminators: dict[str, Discriminator]
    reference_taggers: dict[str, dict[str, str]]
    working_points: dict[str, dict[str, float]]
    working_points_on: tuple[str, ...]
    charm_working_points: dict[str, dict[str, float]]
    model_settings: dict[str, dict[str, Any]]
    processor: str
    dataloader: str
    model: str
    training: TrainingConfig
    search: SearchConfig
    plugins: tuple[str, ...]
    # settings set on top of the file for this run ({dotted key: value}, load_config's overrides)
    overrides: dict[str, Any]
    # The layered YAML with numbers as validated (60000 for 6e4, floats for float keys) and what is
    # derived filled in (classes, processes, empty custom features); an absent group or input is left out.
    raw: dict

    @property
    def truth_labels(self) -> tuple[str, ...]:
        return tuple(rule.label for rule in self.truths)

    def section_hash(self, *keys: str) -> str:
        """sha256 of the canonical JSON of the given top-level sections of ``raw``.

        Absent sections hash as null, so e.g. ``section_hash("samples", "simulate")`` is
        well defined for either kind of input.
        """
        unknown = [key for key in keys if key not in ConfigFile.model_fields]
        if unknown:
            raise ValueError(f"section_hash: unknown config section(s) {', '.join(map(repr, unknown))}; "
                             f"sections are: {', '.join(ConfigFile.model_fields)}")
        canonical = json.dumps({key: self.raw.get(key) for key in keys}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def reference_branches(self) -> tuple[str, ...]:
        """Input branches holding reference-tagger scores, in config order."""
        return tuple(branch for tagger in self.reference_taggers.values() for branch in tagger.values())

    def reference_columns(self) -> tuple[str, ...]:
        """Names ``tagger/discriminator`` of the reference scores, aligned with reference_branches()."""
        return tuple(f"{name}/{disc}" for name, tagger in self.reference_taggers.items() for disc in tagger)

    @property
    def hash(self) -> str:
        return self.section_hash(*self.raw)

    def __hash__(self) -> int:
        # the generated hash would fail on the dict fields; the content hash identifies a config anyway
        return int(self.hash[:16], 16)

    def without_groups(self, names: Iterable[str]) -> Config:
        """This config with the candidate groups ``names`` left out, as for inputs that lack them.

        ``raw`` (what the config says, hence its identity) is unchanged; what reads the groups
        (the processor, the dataset's feature lists) sees them gone.
        """
        names = set(names)
        return dataclasses.replace(self, candidate_groups={name: group for name, group in
                                                           self.candidate_groups.items() if name not in names})

    def branches(self) -> set[str]:
        """Every input branch the features, custom feature expressions and truth rules read."""
        names = set(self.global_features)
        custom = list(self.global_custom_features.values())
        for group in self.candidate_groups.values():
            names.update(group.features)
            custom.extend(group.custom_features.values())
        for expression in custom:
            names.update(expressions.branches(expression))
        for rule in self.truths:
            names.update(condition.branch for condition in rule.conditions)
        if self.event_weight:
            names.add(self.event_weight)
        for target in self.regression_targets.values():
            for expression in (target.source, target.baseline):
                if expression is not None:
                    names.update(expressions.branches(expression))
        return names


def _build(path: Path, file: ConfigFile, overrides: dict[str, Any]) -> Config:
    processes, classes = file.process_list, file.class_members
    raw = file.model_dump()
    raw.update(processes=[process.model_dump() for process in processes],
               classes={name: list(members) for name, members in classes.items()})
    groups = {}
    for group, (features_key, count_key, custom_key) in GROUP_KEYS.items():
        if raw[features_key] is not None:
            raw[custom_key] = raw[custom_key] or {}
            groups[group] = CandidateGroup(group, getattr(file, features_key), getattr(file, count_key),
                                           dict(raw[custom_key]))
    simulate = None if file.simulate is None else SimulateConfig(**{**dict(file.simulate), "processes": {
        name: SimulatedProcess(name=name, **dict(spec)) for name, spec in file.simulate.processes.items()}})
    # keys of the same name and meaning are taken as validated
    same = {field.name: getattr(file, field.name) for field in dataclasses.fields(Config)
            if field.name in ConfigFile.model_fields}
    return Config(**{**same, "name": path.stem, "path": path, "simulate": simulate, "processes": processes,
                     "candidate_groups": groups, "truths": truth_rules(file.truths), "classes": classes,
                     "overrides": overrides,
                     "raw": {key: value for key, value in raw.items() if value is not None}})


def _config_dir(config_dir: Path | str | None) -> Path:
    return Path(config_dir if config_dir is not None else os.environ.get(CONFIG_DIR_ENV) or CONFIG_DIR)


def available_configs(config_dir: Path | str | None = None) -> list[str]:
    """Names of the configs in ``config_dir`` (default: $BHIVE_CONFIG_DIR or CONFIG_DIR)."""
    directory = _config_dir(config_dir)
    return sorted(path.stem for path in directory.glob("*.yml")
                  if path.is_file() and path.stem != DEFAULT_CONFIG_NAME) if directory.is_dir() else []


def _not_a_config(path: Path, directory: Path) -> ConfigError:
    return ConfigError(f"{DEFAULT_CONFIG_NAME}.yml only holds the shared defaults and is not a config by itself; "
                       f"available configs: {', '.join(available_configs(directory)) or 'none'}", file=path)


def _resolve_config_file(name_or_path: str | Path, directory: Path) -> Path:
    text, available = str(name_or_path), ", ".join(available_configs(directory)) or "none"
    if isinstance(name_or_path, Path) or text.endswith((".yml", ".yaml")):
        if not Path(text).is_file():
            raise ConfigError(f"config file not found; give an existing .yml file or one of the configs in "
                              f"{directory}: {available}", file=text)
        return Path(name_or_path)
    path = directory / f"{text}.yml"
    if text == DEFAULT_CONFIG_NAME:
        raise _not_a_config(path, directory)
    if not path.is_file():
        raise ConfigError(f"unknown config {text!r}; available configs: {available} "
                          f"(a config NAME is the file {directory}/NAME.yml)", file=path)
    return path


def load_config(name_or_path: str | Path, config_dir: Path | str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load configs/NAME.yml (or a .yml/.yaml path) over default.yml and validate it.

    ``config_dir`` defaults to $BHIVE_CONFIG_DIR, else CONFIG_DIR; default.yml is always
    taken from there, also when a path elsewhere is given. ``overrides`` ({dotted key: value},
    the settings a search may vary: :func:`~bhive.config.search.setting_problem`) are layered
    over the file, so that the config (and every identity made from it) holds them as if the
    file said so; a mistake in one is named as coming from ``--overrides``.
    """
    overrides = dict(overrides or {})
    for key in overrides:
        problem = setting_problem(key)
        if problem:
            raise ConfigError(problem, file=OVERRIDES, key=str(key))
    directory = _config_dir(config_dir)
    path = _resolve_config_file(name_or_path, directory)
    default_path = directory / f"{DEFAULT_CONFIG_NAME}.yml"
    if not default_path.is_file():
        raise ConfigError(f"the shared defaults file is missing; every config is layered over "
                          f"{DEFAULT_CONFIG_NAME}.yml in the config directory ({directory})", file=default_path)
    if path.resolve() == default_path.resolve():
        raise _not_a_config(path, directory)
    sources = Sources(path, default_path, read_yaml(path), read_yaml(default_path), nested(overrides),
                      Path(OVERRIDES))
    try:
        file = ConfigFile.model_validate(sources.merged(), context=sources)
    except ValidationError as error:
        raise sources.error(error.errors()[0]) from None  # the first mistake, in one line
    return _build(path, file, overrides)
