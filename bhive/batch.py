"""What a batch job asks for and the environment it runs in, for Slurm, HTCondor and dask.

b-hive assumes that the repository, the Python environment and the store are on a file system
that the batch nodes share with the submitting machine (AFS, EOS, NFS, ...). A job therefore
needs no sandbox: :data:`BOOTSTRAP` (sourced by law's job script, or by a dask worker job)
recreates the submitting process's environment from a few values, :func:`bootstrap_variables`,
and sources ``setup.sh`` there. The law side of the batch workflows is in ``tasks/batch.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bhive.store import store_root

REPOSITORY = Path(__file__).resolve().parents[1]
BOOTSTRAP = Path(__file__).with_name("job_bootstrap.sh")

#: lxplus job flavours (``+JobFlavour``) and their maximum run time in seconds
LXPLUS_FLAVOURS = {
    "espresso": 20 * 60, "microcentury": 3600, "longlunch": 2 * 3600, "workday": 8 * 3600,
    "tomorrow": 24 * 3600, "testmatch": 3 * 24 * 3600, "nextweek": 7 * 24 * 3600,
}

_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_MEMORY_FACTORS = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}
_RENDER_KEY = re.compile(r"\{\{(\w+)\}\}")


class BatchError(ValueError):
    """A job setting that cannot be requested as given."""


@dataclass(frozen=True)
class JobResources:
    """What one job asks the batch system for; ``None`` leaves the system's default."""

    cpus: int = 1
    memory_mb: int | None = None
    gpus: int = 0
    walltime_s: int | None = None
    flavour: str | None = None

    def __post_init__(self) -> None:
        if self.cpus < 1 or self.gpus < 0:
            raise BatchError(f"a job needs at least one core and no negative number of GPUs "
                             f"(--cpus {self.cpus}, --gpus {self.gpus})")
        if self.flavour is not None and self.flavour not in LXPLUS_FLAVOURS:
            raise BatchError(f"--htcondor-flavour {self.flavour}: choose one of {', '.join(LXPLUS_FLAVOURS)}")


def parse_memory(text: str) -> int | None:
    """Megabytes from ``4GB``, ``4G``, ``4000MB``, ``512M`` or a plain number of megabytes;
    ``None`` for an empty string."""
    if not text.strip():
        return None
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise BatchError(f"--memory {text}: write a size such as 4GB, 4000MB or 4000 (megabytes)")
    return max(1, math.ceil(float(match[1]) * _MEMORY_FACTORS[match[2].upper()]))


def walltime_seconds(hours: float | None) -> int | None:
    """law's ``--walltime`` (hours; unset: ``None`` or a negative marker) in whole seconds."""
    if hours is None or hours <= 0:
        return None
    return math.ceil(hours * 3600)


def slurm_directives(resources: JobResources) -> list[tuple[str, str]]:
    """``#SBATCH --key=value`` lines as law's Slurm job file factory takes them."""
    lines = [("cpus-per-task", str(resources.cpus))]
    if resources.memory_mb is not None:
        lines.append(("mem", f"{resources.memory_mb}M"))
    if resources.gpus:
        # --gres works on every Slurm with GPUs configured, --gpus only with select/cons_tres
        lines.append(("gres", f"gpu:{resources.gpus}"))
    if resources.walltime_s is not None:
        minutes = math.ceil(resources.walltime_s / 60)
        lines.append(("time", f"{minutes // (24 * 60)}-{minutes // 60 % 24:02d}:{minutes % 60:02d}:00"))
    return lines


def htcondor_directives(resources: JobResources) -> list[tuple[str, str]]:
    """Submit file lines (``key = value``) as law's HTCondor job file factory takes them."""
    lines = [("request_cpus", str(resources.cpus))]
    if resources.memory_mb is not None:
        lines.append(("request_memory", str(resources.memory_mb)))
    if resources.gpus:
        lines.append(("request_gpus", str(resources.gpus)))
    if resources.walltime_s is not None:
        # the run-time limit on lxplus and other pools that read it; others ignore the attribute
        lines.append(("+MaxRuntime", str(resources.walltime_s)))
    if resources.flavour is not None:
        lines.append(("+JobFlavour", f'"{resources.flavour}"'))
    return lines


def _absolute_paths(value: str) -> str:
    # a job starts in a scratch directory: relative paths would point elsewhere there
    return os.pathsep.join(str(Path(p).expanduser().resolve()) for p in value.split(os.pathsep) if p)


def bootstrap_variables(threads: int) -> dict[str, str]:
    """The values :data:`BOOTSTRAP` reads, shell-quoted: this checkout, its Python environment
    (the one running now), the store, the config and plugin directories when set, law's
    configuration file, and the number of threads (torch, numpy) the job uses."""
    law_config = os.environ.get("LAW_CONFIG_FILE") or str(REPOSITORY / "law.cfg")
    values = {
        "bhive_repo": str(REPOSITORY),
        "bhive_python_env": sys.prefix,
        "bhive_store": str(store_root()),
        "bhive_config_dir": _absolute_paths(os.environ.get("BHIVE_CONFIG_DIR", "")),
        "bhive_plugin_path": _absolute_paths(os.environ.get("BHIVE_PLUGIN_PATH", "")),
        "law_config_file": str(Path(law_config).expanduser().resolve()),
        "bhive_threads": str(threads),
    }
    return {key: shlex.quote(value) for key, value in values.items()}


def render_bootstrap(variables: dict[str, str]) -> str:
    """:data:`BOOTSTRAP` with its placeholders filled in, as law's job script does it."""
    return _RENDER_KEY.sub(lambda m: variables.get(m[1], ""), BOOTSTRAP.read_text())


@contextlib.contextmanager
def dask_slurm_cluster(workers: int, memory: str, directory: Path) -> Iterator[Any]:
    """``workers`` dask workers as Slurm jobs (dask-jobqueue's ``SLURMCluster``), one core each,
    started in b-hive's environment by :data:`BOOTSTRAP` like law's jobs; their scripts' output
    goes to ``directory``. The jobs are cancelled on leaving. dask-jobqueue's own configuration
    (``jobqueue.slurm`` in ``~/.config/dask/jobqueue.yaml``: queue, account, walltime,
    interface, ...) applies."""
    from dask_jobqueue import SLURMCluster

    directory.mkdir(parents=True, exist_ok=True)
    bootstrap = directory / BOOTSTRAP.name
    bootstrap.write_text(render_bootstrap(bootstrap_variables(threads=1)))
    cluster = SLURMCluster(cores=1, processes=1, memory=memory, log_directory=str(directory),
                           job_script_prologue=[f"source {shlex.quote(str(bootstrap))} || exit 1"],
                           # no dashboard; the scheduler's HTTP server on any free port
                           scheduler_options={"dashboard": False, "dashboard_address": ":0"})
    try:
        cluster.scale(jobs=workers)
        yield cluster
    finally:
        cluster.close()
