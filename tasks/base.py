"""Parameters, store paths and identities shared by every b-hive task.

Every task takes ``--config`` (a name, ``configs/<name>.yml``, or a path to a YAML file) and
``--version V``. The finer versions (``--dataset-version``, ``--training-version``,
``--test-dataset-version``) default to ``--version``. Outputs live at
``$BHIVE_STORE/<Task>/<config>/<versions...>/...``; every name that becomes a path part is
checked (:func:`bhive.store.check_name`), so nothing is written outside the store.

Every task records what produced its output (:mod:`bhive.identity`) and checks it in
``complete()``, upstream outputs first: asking for an existing version with anything changed
is a :class:`~bhive.identity.VersionConflictError` naming the key and the version to bump. A
task declares what its output depends on: ``config_keys`` (dotted config keys it reads),
``identity_settings()`` (its own parameters that change the output) and, through
``requires()``, the outputs it consumes. ``run()`` is wrapped so that it holds a lock on the
output directory, returns at once when a concurrent run finished the same output, and records
the identity before writing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import law
import luigi

import dataloaders  # noqa: F401  (importing the plugin packages registers the shipped plugins)
import models  # noqa: F401
import processors  # noqa: F401
from bhive import identity
from bhive.config import Config, ConfigError, load_config
from bhive.identity import VersionConflictError
from bhive.plugins.registry import load_plugins
from bhive.store import LOCK_FILE, check_name, output_lock, stable_hash, store_path

logger = logging.getLogger(__name__)

# Finer version parameters and the parameter they default to.
_VERSION_DEFAULTS = ("dataset_version", "training_version", "test_dataset_version")
_YAML_SUFFIXES = (".yml", ".yaml")


class NameParameter(luigi.Parameter):
    """A name that becomes a store path part: letters, digits, '.', '_' and '-', no leading dot.

    The empty string and law's "not set" marker pass (optional names that default elsewhere).
    """

    def __init__(self, *args: Any, flag: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flag = flag

    def normalize(self, x: Any) -> Any:
        x = super().normalize(x)
        return x if x in ("", None, law.NO_STR) else self.checked(x)

    def checked(self, value: str) -> str:
        return check_name(value, self.flag)


class ConfigParameter(NameParameter):
    """A config: a name in the config directory, or a path to a YAML file anywhere.

    A path is made absolute, so batch jobs find it; its store name is the file's stem.
    """

    def __init__(self, *args: Any, flag: str = "--config", **kwargs: Any) -> None:
        super().__init__(*args, flag=flag, **kwargs)

    def checked(self, value: str) -> str:
        if not is_config_path(value):
            return super().checked(value)
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{self.flag} {value}: no such file; give a config name (configs/<name>.yml) or the "
                              f"path of a YAML file")
        check_name(path.stem, f"{self.flag} file name")
        return str(path)


def is_config_path(value: str) -> bool:
    return "/" in value or value.endswith(_YAML_SUFFIXES)


def config_name(value: str) -> str:
    """The store name of a ``--config`` value: the name itself, or a file's stem."""
    return Path(value).stem if is_config_path(value) else value


@contextlib.contextmanager
def _guard(task: BaseTask) -> Iterator[bool]:
    """Hold the output lock; yields whether to run: False when a concurrent run finished
    meanwhile, else True after the identity is recorded (nothing is written before)."""
    directory = task.output_directory()
    with output_lock(directory, task.lock_name()):
        if task.complete():
            logger.info("%s was finished by another run meanwhile", task.describe())
            yield False
            return
        expected = task.identity()
        previous = identity.recorded(directory)
        if previous is not None:
            changed = identity.differences(previous, expected, task.identity_default)
            if changed:
                task.discard_leftovers(changed)
        identity.record(directory, expected)
        yield True


def _guarded_run(run):
    """``run`` holding the output lock, skipped when a concurrent run finished meanwhile, and
    recording the identity before anything is written. A ``run`` that yields tasks (luigi's
    dynamic dependencies) holds the lock until it yields tasks that are not complete yet: luigi
    then drops it, runs them, and calls ``run`` again from the start."""

    if inspect.isgeneratorfunction(run):
        @functools.wraps(run)
        def guarded_generator(self):
            with _guard(self) as proceed:
                if proceed:
                    return (yield from run(self))
            return None

        return guarded_generator

    @functools.wraps(run)
    def guarded(self):
        with _guard(self) as proceed:
            return run(self) if proceed else None

    return guarded


class BaseTask(law.Task):
    """Base of all b-hive tasks: config, version, seed, the store layout and the identity."""

    config = ConfigParameter(description="config name (configs/<name>.yml, layered over configs/default.yml) "
                             "or the path of a YAML file")
    version = NameParameter(flag="--version", description="version of every output; finer versions default to it")
    seed = luigi.IntParameter(default=42, description="random seed; default: 42")
    verify = luigi.BoolParameter(default=False, significant=False,
                                 description="also compare the checksums of existing outputs (slow for large ones)")

    #: dotted config keys whose values change this task's output (resolved to leaves)
    config_keys: ClassVar[tuple[str, ...]] = ()
    #: for settings added after outputs were recorded: the value that reproduces the old behaviour
    identity_defaults: ClassVar[dict[str, Any]] = {}
    #: which parameter to bump when the identity changes (shown in the error)
    version_parameter: ClassVar[str] = "--version"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:
            cls.run = _guarded_run(cls.__dict__["run"])

    @classmethod
    def modify_param_values(cls, params):
        params = super().modify_param_values(params)
        for name in _VERSION_DEFAULTS:
            if name in params and params[name] in (None, "", law.NO_STR):
                params[name] = params["version"]
        return params

    @property
    def config_name(self) -> str:
        return config_name(self.config)

    def layered_settings(self) -> dict[str, Any]:
        """Config settings this run layers over the config file ({dotted key: value}); the
        config holds them, and so does every identity made from it, as if the file said so."""
        return {}

    @property
    def cfg(self) -> Config:
        # Not cached: luigi reuses task instances, and an edited config must be seen.
        cfg = load_config(self.config, overrides=self.layered_settings())
        load_plugins(cfg.plugins)
        return cfg

    # -- store layout ---------------------------------------------------------------------

    def store_parts(self) -> tuple[str, ...]:
        """Directory names below the store root; subclasses append their versions."""
        return (self.task_family, self.config_name)

    def local_path(self, *parts: str) -> Path:
        return store_path(*self.store_parts()).joinpath(*parts)

    def local_target(self, *parts: str, directory: bool = False) -> law.LocalFileTarget:
        path = str(self.local_path(*parts))
        return law.LocalDirectoryTarget(path) if directory else law.LocalFileTarget(path)

    def output_directory(self) -> Path:
        """Where the output and its ``identity.json`` live."""
        return self.local_path()

    def lock_name(self) -> str:
        return LOCK_FILE

    def describe(self) -> str:
        return f"{self.task_family} {'/'.join(self.store_parts()[1:])}"

    # -- identity --------------------------------------------------------------------------

    def identity_config_keys(self) -> tuple[str, ...]:
        return self.config_keys

    def config_overrides(self) -> dict[str, Any]:
        """Config keys replaced by command-line parameters in this run: dotted key -> value."""
        return {}

    def identity_settings(self) -> dict[str, Any]:
        """This task's own parameters that change its output, resolved."""
        return {}

    def identity_inputs(self) -> dict[str, Any]:
        """What the output is made from: name -> task (its identity is hashed) or identity hash."""
        found: dict[str, Any] = {}

        def add(name: str, value: Any) -> None:
            if isinstance(value, BaseTask):
                found[name or "input"] = value
            elif isinstance(value, Mapping):
                for key, item in value.items():
                    add(f"{name}.{key}" if name else str(key), item)
            elif isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    add(f"{name}.{index}", item)

        add("", self.requires())
        return found

    def identity(self) -> dict[str, Any]:
        """The recorded identity: task, seed, config values, settings and inputs (flat map)."""
        entries: dict[str, Any] = {"task": self.task_family, "seed": self.seed}
        entries.update(identity.config_entries(self.cfg.raw, self.identity_config_keys()))
        for key, value in self.config_overrides().items():
            entries.update(identity.flatten(f"config.{key}", value))
        for key, value in self.identity_settings().items():
            entries.update(identity.flatten(f"settings.{key}", value))
        for name, source in self.identity_inputs().items():
            entries[f"input.{name}"] = source if isinstance(source, str) else stable_hash(source.identity())
        return entries

    def identity_default(self, key: str) -> Any:
        if key.startswith("config."):
            return identity.config_default(key)
        if key.startswith("settings."):
            return self.identity_defaults.get(key.removeprefix("settings."), identity.NO_DEFAULT)
        return identity.NO_DEFAULT

    def outputs_exist(self) -> bool:
        return super().complete()

    def verify_identity(self) -> None:
        """Raise if this output, or an output it was made from, exists with other settings."""
        for source in self.identity_inputs().values():
            if isinstance(source, BaseTask):
                source.verify_identity()
        if not self.outputs_exist():
            return
        directory = self.output_directory()
        recorded = identity.recorded(directory)
        if recorded is None:
            raise VersionConflictError(
                f"{self.describe()} was written by an earlier b-hive that recorded no identity, so it cannot be "
                f"checked against today's settings; use a new version ({self.version_parameter}) for new results, "
                f"or remove it with --remove-output ({directory})")
        changed = identity.differences(recorded, self.identity(), self.identity_default)
        if changed:
            raise identity.conflict(changed, self.describe(), directory, self.version_parameter)

    def discard_leftovers(self, changed: list[identity.Difference]) -> None:
        """Called before a run when an unfinished output of other settings is in the way."""

    def check_intact(self) -> None:
        """Raise when an existing output is damaged (sizes; checksums with ``--verify``)."""

    def complete(self) -> bool:
        if not self.outputs_exist():
            return False
        self.verify_identity()
        self.check_intact()
        return True


class DatasetVersionTask(BaseTask):
    dataset_version = NameParameter(flag="--dataset-version", default=law.NO_STR,
                                    description="version of the dataset; default: --version")

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.dataset_version)


_LUIGI_ERROR = re.compile(r"^(?:bhive|tasks|models|dataloaders|processors)\.[\w.]*?(\w+): (.*)$", re.DOTALL)


class _OneLineErrors(logging.Filter):
    """b-hive's own errors are written for the user: shown as their message, not buried in a
    traceback that luigi logs when ``complete()`` or ``run()`` raises one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if type(error).__module__.split(".")[0] in ("bhive", "tasks", "models", "dataloaders", "processors"):
                record.msg = f"{record.getMessage()}\n{type(error).__name__}: {error}"
                record.args, record.exc_info, record.exc_text = None, None, None
            return True
        message = record.getMessage()
        if message.startswith("Will not run") and "Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            match = _LUIGI_ERROR.match(last)
            if match:
                record.msg = f"{message.splitlines()[0].rstrip(':')}\n{match.group(1)}: {match.group(2)}"
                record.args = None
        return True


logging.getLogger("luigi-interface").addFilter(_OneLineErrors())
