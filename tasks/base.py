"""Parameters and store paths shared by every b-hive task.

Every task takes ``--config NAME`` and ``--version V``. The finer versions
(``--dataset-version``, ``--training-version``, ``--test-dataset-version``) default to
``--version``, so ``--version v1`` is the whole story for a first run and a new training on
an old dataset is ``--training-version v2 --dataset-version v1``. Outputs live at
``$BHIVE_STORE/<Task>/<config>/<versions...>/...``; parameters that do not change an output
(workers, devices, verbosity) are insignificant and appear in no path.
"""

from __future__ import annotations

from pathlib import Path

import law
import luigi

from bhive.config import Config, load_config
from bhive.store import check_identity, store_root

# Finer version parameters and the parameter they default to.
_VERSION_DEFAULTS = ("dataset_version", "training_version", "test_dataset_version")


class BaseTask(law.Task):
    """Base of all b-hive tasks: config, version, seed and the store layout."""

    config = luigi.Parameter(description="config name: configs/<name>.yml layered over configs/default.yml")
    version = luigi.Parameter(description="version of every output; finer versions default to it")
    seed = luigi.IntParameter(default=42, description="random seed; default: 42")

    @classmethod
    def modify_param_values(cls, params):
        params = super().modify_param_values(params)
        for name in _VERSION_DEFAULTS:
            if name in params and params[name] in (None, "", law.NO_STR):
                params[name] = params["version"]
        return params

    @property
    def cfg(self) -> Config:
        # Not cached: luigi reuses task instances, and an edited config must be seen.
        return load_config(self.config)

    def store_parts(self) -> tuple[str, ...]:
        """Directory names below the store root; subclasses append their versions."""
        return (self.task_family, self.config)

    def local_path(self, *parts: str) -> Path:
        return store_root().joinpath(*self.store_parts(), *parts)

    def local_target(self, *parts: str, directory: bool = False) -> law.LocalFileTarget:
        path = str(self.local_path(*parts))
        return law.LocalDirectoryTarget(path) if directory else law.LocalFileTarget(path)


class DatasetVersionTask(BaseTask):
    dataset_version = luigi.Parameter(default=law.NO_STR,
                                      description="version of the dataset; default: --version")

    def store_parts(self) -> tuple[str, ...]:
        return (*super().store_parts(), self.dataset_version)


class IdentityCheckedTask(BaseTask):
    """A task whose output directory records the settings that produced it.

    ``complete()`` raises when an existing output of the same version was made with other
    settings, instead of reusing it silently.
    """

    #: which parameter to bump when the identity changes (shown in the error)
    version_parameter = "--version"

    def identity(self) -> dict:
        raise NotImplementedError

    def output_directory(self) -> Path:
        raise NotImplementedError

    def complete(self) -> bool:
        if not super().complete():
            return False
        return check_identity(self.output_directory(), self.identity(), self.version_parameter)
