"""Fixtures shared by b-hive's tests."""

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``BHIVE_STORE`` at a fresh store root for one test and return that path.

    The directory itself is not created: whatever writes to the store must create it.
    """
    path = tmp_path / "store"
    monkeypatch.setenv("BHIVE_STORE", str(path))
    return path


def _forget_tasks() -> None:
    import law.util
    import luigi

    luigi.task_register.Register.clear_instance_cache()
    # law remembers, per process, which local workflows already started their branches
    law.util.mp_manager.get("local_workflow_tasks_yielded", "dict").clear()


@pytest.fixture(autouse=True)
def fresh_task_instances():
    """luigi and law keep per-process state keyed by task parameters; tests change the store
    and configs between runs with the same parameters, so every test starts without it."""
    _forget_tasks()
    yield
    _forget_tasks()


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Tiny test models run far faster on one thread than with two threads fighting over two
    cores; the suite's numbers do not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SLURM_SCRIPT = Path(__file__).with_name("cluster") / "slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A single-node Slurm cluster for the whole session (tests/cluster/slurm.sh), taken down
    afterwards (one per worker process that runs a test needing it: clusters share no port or
    file); returns the environment that points Slurm's commands and law at it, which is
    also set in this process. Skips, with the reason, where Slurm cannot run here (not root,
    slurm-wlm or munge not installed; .ci/run installs them on a fresh CI machine).

    Jobs get only PATH and HOME from the submitting environment (SBATCH_EXPORT), as on a batch
    node, so they depend on what the job bootstrap passes them. There is no accounting database
    for sacct, so law asks squeue for finished jobs as well (they stay listed for an hour)."""
    if os.geteuid() != 0:
        pytest.skip("a private Slurm cluster needs root (slurmd)")
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SLURM_SCRIPT), "start", str(directory)], capture_output=True, text=True,
                             timeout=120)
    if started.returncode == 2:
        pytest.skip(f"no Slurm cluster: {started.stderr.strip()}")
    try:
        assert started.returncode == 0, f"tests/cluster/slurm.sh start failed:\n{started.stdout}{started.stderr}"
        environment = {"SLURM_CONF": str(directory / "slurm.conf"), "SBATCH_EXPORT": "PATH,HOME",
                       "LAW__job__slurm_cmd_squeue": "squeue --states=all"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            yield environment
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(directory)], capture_output=True, timeout=60)
