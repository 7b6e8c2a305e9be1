"""Loading and validating b-hive configs.

``configs/NAME.yml`` is layered over ``configs/default.yml`` (mappings merge key by key,
lists and scalars replace) and checked once, here, into frozen dataclasses. Everything
downstream trusts these objects, so every mistake a user can make in the YAML is caught
at load time as a :class:`ConfigError` whose message names the file, the dotted key,
what is wrong and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from bhive import expressions

__all__ = [
    "CONFIG_DIR",
    "CandidateGroup",
    "Config",
    "ConfigError",
    "Discriminator",
    "ProcessConfig",
    "SamplesConfig",
    "SimulateConfig",
    "SimulatedProcess",
    "TrainingConfig",
    "TruthCondition",
    "TruthRule",
    "available_configs",
    "load_config",
]

CONFIG_DIR: Path = Path(__file__).resolve().parents[1] / "configs"
CONFIG_DIR_ENV = "BHIVE_CONFIG_DIR"
DEFAULT_CONFIG_NAME = "default"

CANDIDATE_GROUPS = ("cpf", "npf", "vtx")
TRUTH_OPERATORS = ("==", "!=", ">", ">=", "<", "<=")
CUT_KEYS = ("pt", "eta", "abs_eta")
PROCESS_OVERLAP_MODES = ("error", "warn")
BRANCH_STYLES = ("hlt", "deepjet")
PROCESS_KINDS = ("ttbar", "qcd")
SPLITS = ("train", "test")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "linear", "cosine")
SAMPLING_MODES = ("stochastic", "loss_weight")

_GROUP_LIST_KEYS = {"cpf": "cpf_candidates", "npf": "npf_candidates", "vtx": "vtx_features"}

_TOP_LEVEL_KEYS = (
    "treename",
    "samples",
    "simulate",
    "processes",
    "process_overlap",
    "bins_pt",
    "bins_eta",
    "pt_key",
    "eta_key",
    "global_features",
    "global_custom_features",
    *(
        key
        for group in CANDIDATE_GROUPS
        for key in (_GROUP_LIST_KEYS[group], f"n_{group}_candidates", f"{group}_custom_features")
    ),
    "truths",
    "reference_flavour",
    "classes",
    "discriminators",
    "reference_taggers",
    "working_points",
    "model_settings",
    "processor",
    "dataloader",
    "model",
    "training",
)
_SIMULATE_KEYS = (
    "branch_style",
    "ecm_gev",
    "jets_per_file",
    "jet_pt_min",
    "jet_abs_eta_max",
    "npv_mean",
    "processes",
)
_SIMULATED_PROCESS_KEYS = (
    "kind",
    "train_jets",
    "test_jets",
    "mpi",
    "pthat_min",
    "pthat_bias_power",
    "pythia_settings",
)
_TRAINING_KEYS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "optimizer",
    "scheduler",
    "warmup_epochs",
    "gradient_clip",
    "patience",
    "sampling",
    "validation_fraction",
)
# Simulated files are named <process>_<split>_<index>.root, so a process name must not
# contain the underscore that separates those fields.
_SIMULATED_PROCESS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the dotted key and the fix."""

    def __init__(self, problem: str, *, file: Path | str | None = None, key: str | None = None):
        self.problem = problem
        self.file = Path(file) if file is not None else None
        self.key = key
        parts = [str(file)] if file is not None else []
        if key:
            parts.append(key)
        parts.append(problem)
        super().__init__(": ".join(parts))


# --------------------------------------------------------------------------------------
# The typed config
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplesConfig:
    """Input ntuples: file paths, globs or root:// URLs for the train and test splits."""

    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class SimulatedProcess:
    """One generated process of the built-in simulation (Pythia 8)."""

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


@dataclass(frozen=True)
class SimulateConfig:
    """Generator settings for configs that train on simulated instead of recorded ntuples."""

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


@dataclass(frozen=True)
class ProcessConfig:
    """A physics process: which input files belong to it and its evaluation cuts."""

    name: str
    match: tuple[str, ...]  # fnmatch patterns on the file path; first matching process wins
    cuts: dict[str, tuple[float, float]]  # key in CUT_KEYS -> [lo, hi)


@dataclass(frozen=True)
class CandidateGroup:
    """A per-jet collection of candidates (charged PF, neutral PF or secondary vertices)."""

    name: str
    features: tuple[str, ...]
    n_candidates: int
    custom_features: dict[str, str]  # name -> expression


@dataclass(frozen=True)
class TruthCondition:
    """``branch`` satisfies at least one of the (operator, value) alternatives."""

    branch: str
    alternatives: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class TruthRule:
    """A truth label and the conditions a jet must all satisfy to carry it."""

    label: str
    conditions: tuple[TruthCondition, ...]


@dataclass(frozen=True)
class Discriminator:
    """Signal and background output classes of a score like BvsL = b / (b + uds + g)."""

    signal: tuple[str, ...]
    background: tuple[str, ...]


@dataclass(frozen=True)
class TrainingConfig:
    """Training defaults; task parameters may override them per run."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    optimizer: str
    scheduler: str
    warmup_epochs: int
    gradient_clip: float  # 0 disables clipping
    patience: int
    sampling: str
    validation_fraction: float


@dataclass(frozen=True)
class Config:
    """A validated working-group config: configs/NAME.yml layered over configs/default.yml."""

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
    truths: tuple[TruthRule, ...]
    reference_flavour: str
    classes: dict[str, tuple[str, ...]]
    discriminators: dict[str, Discriminator]
    reference_taggers: dict[str, dict[str, str]]
    working_points: dict[str, dict[str, float]]
    model_settings: dict[str, dict[str, Any]]
    processor: str
    dataloader: str
    model: str
    training: TrainingConfig
    raw: dict

    @property
    def truth_labels(self) -> tuple[str, ...]:
        return tuple(rule.label for rule in self.truths)

    def section_hash(self, *keys: str) -> str:
        """sha256 of the canonical JSON of the given top-level sections of ``raw``.

        Absent sections hash as null, so e.g. ``section_hash("samples", "simulate")`` is
        well defined for either kind of input.
        """
        unknown = [key for key in keys if key not in _TOP_LEVEL_KEYS]
        if unknown:
            raise ValueError(
                f"section_hash: unknown config section(s) {', '.join(map(repr, unknown))}; "
                f"sections are: {', '.join(_TOP_LEVEL_KEYS)}"
            )
        sections = {key: self.raw.get(key) for key in keys}
        canonical = json.dumps(sections, sort_keys=True, separators=(",", ":"))
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
        # The generated hash would fail on the dict fields; the content hash is what
        # identifies a config anyway.
        return int(self.hash[:16], 16)

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
        return names


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------------------


def _config_dir(config_dir: Path | str | None) -> Path:
    if config_dir is not None:
        return Path(config_dir)
    from_env = os.environ.get(CONFIG_DIR_ENV)
    return Path(from_env) if from_env else CONFIG_DIR


def available_configs(config_dir: Path | str | None = None) -> list[str]:
    """Names of the configs in ``config_dir`` (default: $BHIVE_CONFIG_DIR or CONFIG_DIR)."""
    directory = _config_dir(config_dir)
    if not directory.is_dir():
        return []
    return sorted(
        path.stem
        for path in directory.glob("*.yml")
        if path.is_file() and path.stem != DEFAULT_CONFIG_NAME
    )


def _resolve_config_file(name_or_path: str | Path, directory: Path) -> Path:
    available = ", ".join(available_configs(directory)) or "none"
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yml", ".yaml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"config file not found; give an existing .yml file or one of the configs "
                f"in {directory}: {available}",
                file=path,
            )
        return path
    if text == DEFAULT_CONFIG_NAME:
        raise ConfigError(
            f"{DEFAULT_CONFIG_NAME}.yml only holds the shared defaults and is not a config "
            f"by itself; available configs: {available}",
            file=directory / f"{DEFAULT_CONFIG_NAME}.yml",
        )
    path = directory / f"{text}.yml"
    if not path.is_file():
        raise ConfigError(
            f"unknown config {text!r}; available configs: {available} "
            f"(a config NAME is the file {directory}/NAME.yml)",
            file=path,
        )
    return path


def _yaml_loader_class() -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        """SafeLoader that also reads 6e4 and 1e-3 as numbers (YAML 1.2), not strings."""

    # add_implicit_resolver would append to lists shared with SafeLoader; copy them first.
    Loader.yaml_implicit_resolvers = {
        first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


_Loader = _yaml_loader_class()


def _line_of(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}" if mark is not None else "unknown line"


def _check_duplicate_keys(node: yaml.Node, path: Path, key_path: tuple, seen: set[int]) -> None:
    # PyYAML keeps the last of two equal keys silently; in a config that hides a mistake
    # (two truth labels "b", two simulated processes "qcd", ...).
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], yaml.Mark] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                identity = (key_node.tag, key_node.value)
                if identity in first_line:
                    raise ConfigError(
                        f"duplicate key {key_node.value!r} ({_line_of(first_line[identity])} and "
                        f"{_line_of(key_node.start_mark)}); each key may appear once in a mapping",
                        file=path,
                        key=_dotted(key_path + (key_node.value,)),
                    )
                first_line[identity] = key_node.start_mark
                child_path = key_path + (key_node.value,)
            else:
                child_path = key_path
            _check_duplicate_keys(value_node, path, child_path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, path, key_path + (index,), seen)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror or exc})", file=path) from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_duplicate_keys(node, path, (), set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{where}: YAML syntax error: {problem}", file=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=path) from exc
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the file must be a mapping of config keys (key: value lines), got {_describe(data)}",
            file=path,
        )
    return data


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


_REQUIRED = object()


def _has_path(data: Any, path: tuple) -> bool:
    """Whether ``data`` sets ``path``; a list or scalar owns everything below it."""
    for part in path:
        if not isinstance(data, dict):
            return True
        if part not in data:
            return False
        data = data[part]
    return True


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value!r})"


def _suggest(word: str, choices: tuple[str, ...] | list[str], label: str = "Allowed") -> str:
    """"; did you mean 'x'? Allowed: a, b" (or ". Allowed: a, b" when nothing is close)."""
    listing = f"{label}: {', '.join(choices)}"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}? {listing}" if close else f". {listing}"


def _fmt(number: float) -> str:
    return repr(int(number)) if float(number).is_integer() else repr(number)


def _at_least(low: int) -> dict[str, Any]:
    """Checks for an integer getter: at least ``low``."""
    return {"allowed": f"an integer >= {low}", "valid": lambda n: n >= low}


class _Reader:
    """Typed access to the merged mapping; every error names the file the value came from.

    Getters take (mapping, key, parent_path), check the value, write the normalised value
    back (so ``raw`` holds e.g. 60000 for ``6e4``) and return it.
    """

    def __init__(self, user_file: Path, default_file: Path, user_data: dict, default_data: dict):
        self.user_file = user_file
        self.default_file = default_file
        self.user_data = user_data
        self.default_data = default_data

    def origin(self, path: tuple) -> Path:
        """The file a value comes from: the default file only if the user file does not set it."""
        node: Any = self.user_data
        for part in path:
            if not isinstance(node, dict):
                # The user replaced a list or scalar wholesale above this point.
                return self.user_file
            if part not in node:
                return self.default_file if _has_path(self.default_data, path) else self.user_file
            node = node[part]
        return self.user_file

    def error(self, path: tuple, problem: str) -> ConfigError:
        return ConfigError(problem, file=self.origin(path), key=_dotted(path))

    def type_error(self, path: tuple, expected: str, value: Any) -> ConfigError:
        return self.error(path, f"expected {expected}, got {_describe(value)}")

    # -- mappings -----------------------------------------------------------------------

    def check_keys(
        self,
        mapping: dict,
        parent: tuple,
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
    ) -> None:
        for key in mapping:
            if not isinstance(key, str):
                raise self.error(parent + (key,), f"keys must be strings, got {_describe(key)}")
            if key not in allowed:
                where = f" under {_dotted(parent)}" if parent else ""
                raise self.error(
                    parent + (key,),
                    f"unknown key {key!r}{_suggest(key, allowed, f'Allowed keys{where}')}",
                )
        for key in required:
            if mapping.get(key) is None:
                raise self.missing(mapping, parent, key)

    def check_names(self, mapping: dict, parent: tuple, what: str) -> None:
        for key in mapping:
            if not isinstance(key, str) or not key:
                raise self.error(parent + (key,), f"{what} must be non-empty strings, got {_describe(key)}")

    def missing(self, mapping: dict, parent: tuple, key: str) -> ConfigError:
        state = "is null" if key in mapping else "is missing"
        if len(parent) <= 1:
            under = f" under '{parent[0]}:'" if parent else ""
            fix = (
                f"add '{key}: ...'{under} to {self.user_file.name} "
                f"(or to {self.default_file.name} to share it between configs)"
            )
        else:
            fix = f"add '{key}: ...' under {_dotted(parent)}"
        return ConfigError(
            f"required key {key!r} {state}; {fix}",
            file=self.origin(parent),
            key=_dotted(parent + (key,)),
        )

    def take(self, mapping: dict, key: str, parent: tuple, default: Any) -> tuple[bool, Any]:
        """(True, value) for a set key; (False, default) when it is unset and optional."""
        value = mapping.get(key)
        if value is not None:
            return True, value
        if default is _REQUIRED:
            raise self.missing(mapping, parent, key)
        mapping[key] = default
        return False, default

    def mapping(self, mapping: dict, key: str, parent: tuple, *, default: Any = _REQUIRED) -> dict:
        present, value = self.take(mapping, key, parent, default)
        if present and not isinstance(value, dict):
            raise self.type_error(parent + (key,), "a mapping (key: value entries)", value)
        return value

    # -- plain values -------------------------------------------------------------------

    def as_number(
        self,
        value: Any,
        path: tuple,
        *,
        allowed: str = "a number",
        valid: Callable[[float], bool] | None = None,
        allow_bool: bool = False,
        allow_inf: bool = False,
    ) -> float:
        if isinstance(value, bool):
            if not allow_bool:
                raise self.type_error(path, allowed, value)
            return 1.0 if value else 0.0
        if not isinstance(value, (int, float)):
            raise self.type_error(path, allowed, value)
        number = float(value)
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            raise self.error(path, f"expected {allowed}, got {value!r}")
        if valid is not None and not valid(number):
            raise self.error(path, f"expected {allowed}, got {_fmt(number)}")
        return number

    def as_int(
        self, value: Any, path: tuple, *, allowed: str = "an integer", valid: Callable[[int], bool] | None = None
    ) -> int:
        # YAML writes 6e4 as a float; accept it where it is integral.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.type_error(path, allowed, value)
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise self.error(path, f"expected {allowed}, got {value!r} (not a whole number)")
        number = int(value)
        if valid is not None and not valid(number):
            raise self.error(path, f"expected {allowed}, got {number}")
        return number

    def as_string(self, value: Any, path: tuple, *, choices: tuple[str, ...] | None = None, what: str = "") -> str:
        expected = f"one of: {', '.join(choices)}" if choices else "a non-empty string"
        if not isinstance(value, str) or not value:
            raise self.type_error(path, expected, value)
        if choices is not None and value not in choices:
            label = f"unknown {what} " if what else ""
            raise self.error(path, f"{label}{value!r}{_suggest(value, choices)}")
        return value

    # -- getters with write-back ---------------------------------------------------------

    def number(
        self, mapping: dict, key: str, parent: tuple, *, default: Any = _REQUIRED, **checks: Any
    ) -> float | None:
        present, value = self.take(mapping, key, parent, default)
        if not present:
            return value
        mapping[key] = self.as_number(value, parent + (key,), **checks)
        return mapping[key]

    def integer(self, mapping: dict, key: str, parent: tuple, *, default: Any = _REQUIRED, **checks: Any) -> int:
        present, value = self.take(mapping, key, parent, default)
        if not present:
            return value
        mapping[key] = self.as_int(value, parent + (key,), **checks)
        return mapping[key]

    def boolean(self, mapping: dict, key: str, parent: tuple, *, default: Any = _REQUIRED) -> bool:
        present, value = self.take(mapping, key, parent, default)
        if present and not isinstance(value, bool):
            raise self.type_error(parent + (key,), "true or false", value)
        return value

    def string(
        self, mapping: dict, key: str, parent: tuple, *, choices: tuple[str, ...] | None = None,
        what: str = "", default: Any = _REQUIRED,
    ) -> str:
        present, value = self.take(mapping, key, parent, default)
        if not present:
            return value
        return self.as_string(value, parent + (key,), choices=choices, what=what)

    def string_list(
        self, mapping: dict, key: str, parent: tuple, *, what: str = "names", allow_empty: bool = False,
        default: Any = _REQUIRED,
    ) -> tuple[str, ...]:
        present, value = self.take(mapping, key, parent, default)
        if not present:
            return tuple(value)
        path = parent + (key,)
        if not isinstance(value, list):
            raise self.type_error(path, f"a list of {what}", value)
        if not value and not allow_empty:
            raise self.error(path, f"the list is empty; list at least one of the {what}")
        seen: set[str] = set()
        for index, item in enumerate(value):
            self.as_string(item, path + (index,))
            if item in seen:
                raise self.error(path + (index,), f"{item!r} is listed twice; each of the {what} may appear once")
            seen.add(item)
        return tuple(value)

    def number_list(self, mapping: dict, key: str, parent: tuple, *, what: str = "numbers") -> tuple[float, ...]:
        _, value = self.take(mapping, key, parent, _REQUIRED)
        path = parent + (key,)
        if not isinstance(value, list):
            raise self.type_error(path, f"a list of {what}", value)
        numbers = [self.as_number(item, path + (index,)) for index, item in enumerate(value)]
        mapping[key] = numbers
        return tuple(numbers)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def _read_input_choice(r: _Reader, raw: dict) -> tuple[SamplesConfig | None, SimulateConfig | None]:
    has_samples = raw.get("samples") is not None
    has_simulate = raw.get("simulate") is not None
    if has_samples == has_simulate:
        problem = (
            "both 'samples' and 'simulate' are set; keep exactly one"
            if has_samples
            else "neither 'samples' nor 'simulate' is set; set exactly one"
        )
        raise ConfigError(
            f"{problem} ('samples: {{train: [...], test: [...]}}' for recorded ntuples, "
            f"'simulate: {{...}}' for the built-in simulation)",
            file=r.user_file,
            key="samples/simulate",
        )
    if has_samples:
        raw.pop("simulate", None)
        return _read_samples(r, raw), None
    raw.pop("samples", None)
    return None, _read_simulate(r, raw)


def _read_samples(r: _Reader, raw: dict) -> SamplesConfig:
    section = r.mapping(raw, "samples", ())
    path = ("samples",)
    r.check_keys(section, path, allowed=SPLITS, required=SPLITS)
    return SamplesConfig(
        train=r.string_list(section, "train", path, what="file paths, globs or root:// URLs"),
        test=r.string_list(section, "test", path, what="file paths, globs or root:// URLs"),
    )


def _read_simulate(r: _Reader, raw: dict) -> SimulateConfig:
    section = r.mapping(raw, "simulate", ())
    path = ("simulate",)
    r.check_keys(section, path, allowed=_SIMULATE_KEYS, required=_SIMULATE_KEYS)
    branch_style = r.string(section, "branch_style", path, choices=BRANCH_STYLES, what="branch_style")
    ecm_gev = r.number(section, "ecm_gev", path, allowed="an energy in GeV > 0", valid=lambda x: x > 0)
    jets_per_file = r.integer(section, "jets_per_file", path, **_at_least(1))
    jet_pt_min = r.number(section, "jet_pt_min", path, allowed="a pT in GeV >= 0", valid=lambda x: x >= 0)
    jet_abs_eta_max = r.number(section, "jet_abs_eta_max", path, allowed="a number > 0", valid=lambda x: x > 0)
    npv_mean = r.number(section, "npv_mean", path, allowed="a number >= 0", valid=lambda x: x >= 0)

    processes_raw = r.mapping(section, "processes", path)
    processes_path = path + ("processes",)
    if not processes_raw:
        raise r.error(
            processes_path, "no processes; add e.g. 'ttbar: {kind: ttbar, train_jets: 60000, test_jets: 20000}'"
        )
    r.check_names(processes_raw, processes_path, "process names")
    processes = {}
    for name in processes_raw:
        process_path = processes_path + (name,)
        if not _SIMULATED_PROCESS_NAME.match(name):
            raise r.error(
                process_path,
                "a simulated process name must be letters and digits starting with a letter "
                "(files are named <process>_<split>_<index>.root)",
            )
        processes[name] = _read_simulated_process(r, processes_raw, name, process_path)
    return SimulateConfig(
        branch_style=branch_style,
        ecm_gev=ecm_gev,
        jets_per_file=jets_per_file,
        jet_pt_min=jet_pt_min,
        jet_abs_eta_max=jet_abs_eta_max,
        npv_mean=npv_mean,
        processes=processes,
    )


def _read_simulated_process(r: _Reader, parent_mapping: dict, name: str, path: tuple) -> SimulatedProcess:
    spec = r.mapping(parent_mapping, name, path[:-1])
    r.check_keys(spec, path, allowed=_SIMULATED_PROCESS_KEYS, required=("kind", "train_jets", "test_jets"))
    kind = r.string(spec, "kind", path, choices=PROCESS_KINDS, what="process kind")
    counts = {
        key: r.integer(spec, key, path, allowed="a number of jets >= 0", valid=lambda n: n >= 0)
        for key in ("train_jets", "test_jets")
    }
    if counts["train_jets"] == 0 and counts["test_jets"] == 0:
        raise r.error(
            path, "train_jets and test_jets are both 0; request jets for at least one split or remove the process"
        )
    mpi = r.boolean(spec, "mpi", path, default=True)
    pthat_min = r.number(spec, "pthat_min", path, allowed="a pT-hat threshold in GeV > 0", valid=lambda x: x > 0,
                         default=None)
    if kind == "qcd" and pthat_min is None:
        raise r.error(
            path + ("pthat_min",),
            "a qcd process needs a positive pthat_min (GeV), e.g. 'pthat_min: 30.0'",
        )
    bias = r.number(spec, "pthat_bias_power", path, allowed="a bias power > 0 (omit for no bias)",
                    valid=lambda x: x > 0, default=None)
    settings = r.string_list(spec, "pythia_settings", path, what="Pythia settings ('Key = value')",
                             allow_empty=True, default=[])
    return SimulatedProcess(
        name=name,
        kind=kind,
        train_jets=counts["train_jets"],
        test_jets=counts["test_jets"],
        mpi=mpi,
        pthat_min=pthat_min,
        pthat_bias_power=bias,
        pythia_settings=settings,
    )


def _read_processes(r: _Reader, raw: dict, simulate: SimulateConfig | None) -> tuple[ProcessConfig, ...]:
    if raw.get("processes") is None:
        if simulate is None:
            raise ConfigError(
                "required key 'processes' is missing; with 'samples' list the processes and the "
                "file patterns that belong to them, e.g. "
                "'processes: [{name: ttbar, match: [\"*TTto*\"]}, {name: qcd, match: [\"*QCD*\"]}]'",
                file=r.origin(("processes",)),
                key="processes",
            )
        raw["processes"] = [{"name": name, "match": [f"*{name}_*"], "cuts": {}} for name in simulate.processes]
    items = raw["processes"]
    path = ("processes",)
    if not isinstance(items, list):
        raise r.type_error(path, "a list of {name, match, cuts} entries", items)
    if not items:
        raise r.error(path, "the list is empty; list at least one process")
    processes = []
    names: set[str] = set()
    for index, item in enumerate(items):
        item_path = path + (index,)
        if not isinstance(item, dict):
            raise r.type_error(item_path, "a mapping {name: ..., match: [...], cuts: {...}}", item)
        r.check_keys(item, item_path, allowed=("name", "match", "cuts"), required=("name", "match"))
        name = r.string(item, "name", item_path)
        if name in names:
            raise r.error(item_path + ("name",), f"process name {name!r} is used twice; process names must be unique")
        names.add(name)
        match = r.string_list(item, "match", item_path, what="file path patterns (fnmatch)")
        processes.append(ProcessConfig(name=name, match=match, cuts=_read_cuts(r, item, item_path)))
    return tuple(processes)


def _read_cuts(r: _Reader, item: dict, parent: tuple) -> dict[str, tuple[float, float]]:
    cuts_raw = r.mapping(item, "cuts", parent, default={})
    path = parent + ("cuts",)
    r.check_keys(cuts_raw, path, allowed=CUT_KEYS)
    cuts = {}
    for key, value in cuts_raw.items():
        cut_path = path + (key,)
        if not isinstance(value, list) or len(value) != 2:
            raise r.type_error(cut_path, "a range [lo, hi] of two numbers", value)
        lo, hi = (r.as_number(bound, cut_path + (i,), allow_inf=True) for i, bound in enumerate(value))
        if lo >= hi:
            raise r.error(
                cut_path, f"empty range [{_fmt(lo)}, {_fmt(hi)}]; the lower edge must be below the upper edge"
            )
        cuts_raw[key] = [lo, hi]
        cuts[key] = (lo, hi)
    return cuts


def _read_bins(r: _Reader, raw: dict, key: str, *, positive: bool) -> tuple[float, ...]:
    edges = r.number_list(raw, key, (), what="bin edges")
    if len(edges) < 2:
        raise r.error((key,), f"{len(edges)} edge(s) given; a binning needs at least 2 edges")
    for index in range(1, len(edges)):
        if edges[index] <= edges[index - 1]:
            raise r.error(
                (key, index),
                f"edges must be strictly increasing, but {_fmt(edges[index])} follows {_fmt(edges[index - 1])}",
            )
    if positive and edges[0] <= 0:
        raise r.error((key, 0), f"pT bin edges must be > 0, got {_fmt(edges[0])}")
    return edges


def _simulated_branches(simulate: SimulateConfig | None) -> tuple[frozenset[str] | None, str]:
    """Branches an expression may read when they are known at load time, and what they are.

    Recorded ntuples are only opened later (their branches are checked against
    Config.branches() before any processing), so for them every name passes here.
    """
    if simulate is None:
        return None, ""
    # imported here: it pulls in awkward, which loading a config of recorded ntuples does not need
    from bhive.simulation.ntuple import branch_names

    style = simulate.branch_style
    return branch_names(style), f"not written by the simulation with branch_style {style}"


def _read_custom_features(
    r: _Reader, raw: dict, key: str, branch_features: tuple[str, ...], simulate: SimulateConfig | None
) -> dict[str, str]:
    custom = r.mapping(raw, key, (), default={})
    r.check_names(custom, (key,), "custom feature names")
    known, unknown_means = _simulated_branches(simulate)
    for name, expression in custom.items():
        path = (key, name)
        if name in branch_features:
            raise r.error(path, f"custom feature {name!r} has the name of a branch feature; rename it")
        if not isinstance(expression, str) or not expression.strip():
            raise r.type_error(path, "an expression string (e.g. 'np.log(jet_pt)')", expression)
        try:
            expressions.validate(expression, known, unknown_means=unknown_means)
        except expressions.ExpressionError as error:
            raise r.error(path, str(error)) from None
    return dict(custom)


def _read_candidate_groups(r: _Reader, raw: dict, simulate: SimulateConfig | None) -> dict[str, CandidateGroup]:
    groups = {}
    for group in CANDIDATE_GROUPS:
        list_key = _GROUP_LIST_KEYS[group]
        n_key = f"n_{group}_candidates"
        custom_key = f"{group}_custom_features"
        if raw.get(list_key) is None:
            for dependent in (n_key, custom_key):
                if raw.get(dependent) is not None:
                    raise r.error(
                        (dependent,),
                        f"is set but the {group} group is absent; add '{list_key}: [...]' or remove '{dependent}'",
                    )
            for key in (list_key, n_key, custom_key):
                raw.pop(key, None)
            continue
        features = r.string_list(raw, list_key, (), what=f"{group} feature branches")
        n_candidates = r.integer(raw, n_key, (), allowed="a number of candidates >= 1", valid=lambda n: n >= 1)
        custom = _read_custom_features(r, raw, custom_key, features, simulate)
        groups[group] = CandidateGroup(name=group, features=features, n_candidates=n_candidates, custom_features=custom)
    return groups


def _read_truths(r: _Reader, raw: dict) -> tuple[TruthRule, ...]:
    _, value = r.take(raw, "truths", (), _REQUIRED)
    path = ("truths",)
    if isinstance(value, list):
        if not value:
            raise r.error(path, "the list is empty; list the boolean truth branches, e.g. [isB, isC, isUDS, isG]")
        labels = r.string_list(raw, "truths", (), what="boolean truth branches")
        return tuple(
            TruthRule(label=label, conditions=(TruthCondition(branch=label, alternatives=(("==", 1.0),)),))
            for label in labels
        )
    if not isinstance(value, dict):
        raise r.type_error(
            path, "a list of boolean branches, or a mapping label -> [{branch: [values]}, ...]", value
        )
    if not value:
        raise r.error(path, "no truth labels; give e.g. 'b: [{hadronFlavour: [5]}]'")
    r.check_names(value, path, "truth labels")
    rules = []
    for label, conditions_raw in value.items():
        label_path = path + (label,)
        if not isinstance(conditions_raw, list) or not conditions_raw:
            raise r.type_error(label_path, "a non-empty list of conditions like [{hadronFlavour: [5]}]", conditions_raw)
        conditions = []
        for index, item in enumerate(conditions_raw):
            item_path = label_path + (index,)
            if not isinstance(item, dict) or not item:
                raise r.type_error(item_path, "a mapping {branch: [values]}", item)
            r.check_names(item, item_path, "branch names")
            for branch, alternatives_raw in item.items():
                conditions.append(_read_truth_condition(r, branch, alternatives_raw, item_path + (branch,)))
        rules.append(TruthRule(label=label, conditions=tuple(conditions)))
    return tuple(rules)


def _read_truth_condition(r: _Reader, branch: str, alternatives_raw: Any, path: tuple) -> TruthCondition:
    if not isinstance(alternatives_raw, list) or not alternatives_raw:
        raise r.type_error(path, "a non-empty list of values or {operator: value} entries, e.g. [5] or [{'>': 100}]",
                           alternatives_raw)
    alternatives = []
    for index, alternative in enumerate(alternatives_raw):
        alt_path = path + (index,)
        if isinstance(alternative, dict):
            if len(alternative) != 1:
                raise r.error(alt_path, "an operator entry has exactly one operator, e.g. {'>': 100}")
            ((operator, operand),) = alternative.items()
            if operator not in TRUTH_OPERATORS:
                raise r.error(
                    alt_path,
                    f"unknown comparison operator {operator!r}; allowed: {', '.join(TRUTH_OPERATORS)}",
                )
            value = r.as_number(operand, alt_path + (operator,), allow_bool=True)
        else:
            operator = "=="
            value = r.as_number(alternative, alt_path, allowed="a number, true/false or {operator: value}",
                                allow_bool=True)
        alternatives.append((operator, value))
    return TruthCondition(branch=branch, alternatives=tuple(alternatives))


def _read_classes(r: _Reader, raw: dict, labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    if raw.get("classes") is None:
        raw["classes"] = {label: [label] for label in labels}
    classes_raw = r.mapping(raw, "classes", ())
    path = ("classes",)
    r.check_names(classes_raw, path, "class names")
    if len(classes_raw) < 2:
        raise r.error(path, f"{len(classes_raw)} output class(es); a tagger needs at least 2 classes")
    owner: dict[str, str] = {}
    classes = {}
    for name in classes_raw:
        members = r.string_list(classes_raw, name, path, what="truth labels")
        for index, label in enumerate(members):
            if label not in labels:
                raise r.error(
                    path + (name, index),
                    f"unknown truth label {label!r}{_suggest(label, labels, 'Truth labels')}",
                )
            if label in owner:
                raise r.error(
                    path + (name, index),
                    f"truth label {label!r} is already in class {owner[label]!r}; a label belongs to one class",
                )
            owner[label] = name
        classes[name] = members
    return classes


def _read_discriminators(r: _Reader, raw: dict, class_names: tuple[str, ...]) -> dict[str, Discriminator]:
    discriminators_raw = r.mapping(raw, "discriminators", (), default={})
    path = ("discriminators",)
    r.check_names(discriminators_raw, path, "discriminator names")
    discriminators = {}
    for name in discriminators_raw:
        spec = r.mapping(discriminators_raw, name, path)
        spec_path = path + (name,)
        r.check_keys(spec, spec_path, allowed=("signal", "background"), required=("signal", "background"))
        sides = {}
        for side in ("signal", "background"):
            members = r.string_list(spec, side, spec_path, what="output classes")
            for index, class_name in enumerate(members):
                if class_name not in class_names:
                    raise r.error(
                        spec_path + (side, index),
                        f"unknown class {class_name!r}{_suggest(class_name, class_names, 'Classes')}",
                    )
            sides[side] = members
        both = [class_name for class_name in sides["signal"] if class_name in sides["background"]]
        if both:
            raise r.error(
                spec_path,
                f"class(es) {', '.join(map(repr, both))} are on both the signal and the background side",
            )
        discriminators[name] = Discriminator(signal=sides["signal"], background=sides["background"])
    return discriminators


def _read_reference_taggers(r: _Reader, raw: dict, discriminator_names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``tagger: {discriminator: branch}``: scores of existing taggers stored in the inputs."""
    taggers_raw = r.mapping(raw, "reference_taggers", (), default={})
    path = ("reference_taggers",)
    r.check_names(taggers_raw, path, "reference tagger names")
    taggers = {}
    for name in taggers_raw:
        spec = r.mapping(taggers_raw, name, path)
        if not spec:
            raise r.error(path + (name,), "empty mapping; give at least one discriminator: branch pair")
        for discriminator in spec:
            if discriminator not in discriminator_names:
                raise r.error(
                    path + (name, discriminator),
                    f"unknown discriminator {discriminator!r}"
                    f"{_suggest(discriminator, discriminator_names, 'Discriminators')}",
                )
        taggers[name] = {disc: r.string(spec, disc, path + (name,)) for disc in spec}
    return taggers


def _read_working_points(r: _Reader, raw: dict, discriminator_names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``discriminator: {working point: target mis-identification rate}``."""
    points_raw = r.mapping(raw, "working_points", (), default={})
    path = ("working_points",)
    points = {}
    for name in points_raw:
        if discriminator_names and name not in discriminator_names:
            raise r.error(path + (name,), f"unknown discriminator {name!r}"
                                          f"{_suggest(name, discriminator_names, 'Discriminators')}")
        targets = r.mapping(points_raw, name, path)
        points[name] = {wp: r.number(targets, wp, path + (name,), allowed="a mis-identification rate 0 < x < 1",
                                     valid=lambda x: 0 < x < 1) for wp in targets}
        if not points[name]:
            raise r.error(path + (name,), "empty mapping; give at least one name: target pair, e.g. medium: 0.01")
    return points


def _read_model_settings(r: _Reader, raw: dict) -> dict[str, dict[str, Any]]:
    """``ModelName: {hyperparameter: value}``, handed to the model's constructor."""
    settings_raw = r.mapping(raw, "model_settings", (), default={})
    path = ("model_settings",)
    return {name: dict(r.mapping(settings_raw, name, path)) for name in settings_raw}


def _read_training(r: _Reader, raw: dict) -> TrainingConfig:
    section = r.mapping(raw, "training", ())
    path = ("training",)
    r.check_keys(section, path, allowed=_TRAINING_KEYS, required=_TRAINING_KEYS)
    return TrainingConfig(
        epochs=r.integer(section, "epochs", path, **_at_least(1)),
        batch_size=r.integer(section, "batch_size", path, **_at_least(1)),
        learning_rate=r.number(section, "learning_rate", path, allowed="a number > 0", valid=lambda x: x > 0),
        weight_decay=r.number(section, "weight_decay", path, allowed="a number >= 0", valid=lambda x: x >= 0),
        optimizer=r.string(section, "optimizer", path, choices=OPTIMIZERS, what="optimizer"),
        scheduler=r.string(section, "scheduler", path, choices=SCHEDULERS, what="scheduler"),
        warmup_epochs=r.integer(section, "warmup_epochs", path, **_at_least(0)),
        gradient_clip=r.number(section, "gradient_clip", path, allowed="a number >= 0 (0 = off)",
                               valid=lambda x: x >= 0),
        patience=r.integer(section, "patience", path, **_at_least(0)),
        sampling=r.string(section, "sampling", path, choices=SAMPLING_MODES, what="sampling mode"),
        validation_fraction=r.number(section, "validation_fraction", path, allowed="a fraction 0 <= f < 1",
                                     valid=lambda x: 0 <= x < 1),
    )


def _validate(r: _Reader, name: str, path: Path, raw: dict) -> Config:
    r.check_keys(raw, (), allowed=_TOP_LEVEL_KEYS)
    samples, simulate = _read_input_choice(r, raw)
    processes = _read_processes(r, raw, simulate)
    process_overlap = r.string(raw, "process_overlap", (), choices=PROCESS_OVERLAP_MODES, what="process_overlap")
    treename = r.string(raw, "treename", ())
    bins_pt = _read_bins(r, raw, "bins_pt", positive=True)
    bins_eta = _read_bins(r, raw, "bins_eta", positive=False)

    global_features = r.string_list(raw, "global_features", (), what="global feature branches")
    global_custom = _read_custom_features(r, raw, "global_custom_features", global_features, simulate)
    for key in ("pt_key", "eta_key"):
        value = r.string(raw, key, ())
        if value not in global_features:
            features_file = r.origin(("global_features",))
            where = f" (global_features is set in {features_file.name})" if features_file != r.origin((key,)) else ""
            raise r.error(
                (key,),
                f"{value!r} is not among global_features{where}{_suggest(value, global_features)}",
            )
    candidate_groups = _read_candidate_groups(r, raw, simulate)

    truths = _read_truths(r, raw)
    labels = tuple(rule.label for rule in truths)
    reference = r.string(raw, "reference_flavour", ())
    if reference not in labels:
        raise r.error(
            ("reference_flavour",),
            f"{reference!r} is not a truth label{_suggest(reference, labels, 'Truth labels')}",
        )
    classes = _read_classes(r, raw, labels)
    discriminators = _read_discriminators(r, raw, tuple(classes))
    reference_taggers = _read_reference_taggers(r, raw, tuple(discriminators))

    return Config(
        name=name,
        path=path,
        treename=treename,
        samples=samples,
        simulate=simulate,
        processes=processes,
        process_overlap=process_overlap,
        bins_pt=bins_pt,
        bins_eta=bins_eta,
        pt_key=raw["pt_key"],
        eta_key=raw["eta_key"],
        global_features=global_features,
        global_custom_features=global_custom,
        candidate_groups=candidate_groups,
        truths=truths,
        reference_flavour=reference,
        classes=classes,
        discriminators=discriminators,
        reference_taggers=reference_taggers,
        working_points=_read_working_points(r, raw, tuple(discriminators)),
        model_settings=_read_model_settings(r, raw),
        processor=r.string(raw, "processor", ()),
        dataloader=r.string(raw, "dataloader", ()),
        model=r.string(raw, "model", ()),
        training=_read_training(r, raw),
        raw=raw,
    )


def load_config(name_or_path: str | Path, config_dir: Path | str | None = None) -> Config:
    """Load configs/NAME.yml (or a .yml/.yaml path) over default.yml and validate it.

    ``config_dir`` defaults to $BHIVE_CONFIG_DIR, else CONFIG_DIR; default.yml is always
    taken from there, also when a path elsewhere is given.
    """
    directory = _config_dir(config_dir)
    path = _resolve_config_file(name_or_path, directory)
    default_path = directory / f"{DEFAULT_CONFIG_NAME}.yml"
    if not default_path.is_file():
        raise ConfigError(
            f"the shared defaults file is missing; every config is layered over "
            f"{DEFAULT_CONFIG_NAME}.yml in the config directory ({directory})",
            file=default_path,
        )
    if path.resolve() == default_path.resolve():
        raise ConfigError(
            f"{DEFAULT_CONFIG_NAME}.yml only holds the shared defaults and is not a config by itself; "
            f"available configs: {', '.join(available_configs(directory)) or 'none'}",
            file=path,
        )
    defaults = _read_yaml(default_path)
    user = _read_yaml(path)
    reader = _Reader(user_file=path, default_file=default_path, user_data=user, default_data=defaults)
    return _validate(reader, path.stem, path, _merge(defaults, user))

