"""Fixtures shared by b-hive's tests."""

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
