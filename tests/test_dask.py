"""The dask executor on real clusters: ``--scheduler-address`` with a scheduler and workers
started as processes of their own, and workers started as Slurm jobs with dask-jobqueue. Both
give the shards of the iterative executor byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.dataset import DatasetConstructionTask
from tests.batch_helpers import REPO, build, shard_bytes, write_unit_inputs

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).with_name("dask")
DATASET = {"config": "unit", "chunk_size": 200, "shard_size": 300}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The ``unit`` dataset made by the iterative executor (version v1): its shard files.
    The inputs are plain files, so every dataset version reads the very same ones."""
    root = tmp_path_factory.mktemp("dask-store")
    config_dir = write_unit_inputs(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BHIVE_STORE", str(root / "store"))
        patch.setenv("BHIVE_CONFIG_DIR", str(config_dir))
        task = DatasetConstructionTask(version="v1", executor="iterative", **DATASET)
        assert build(task)
        yield shard_bytes(task.output_directory())


def stop(process: subprocess.Popen) -> None:
    """End a process this test started, by its pid: a polite signal first."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_scheduler_address_of_a_running_cluster(reference, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    # workers import b-hive's processor by name, as a worker started from setup.sh's environment would
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    logs = [open(tmp_path / name, "w") for name in ("scheduler.log", "workers.log")]
    scheduler = subprocess.Popen([str(DASK), "scheduler", "--scheduler-file", str(scheduler_file), "--host",
                                  "127.0.0.1", "--port", "0", "--no-dashboard"], stdout=logs[0],
                                 stderr=subprocess.STDOUT, env=environment)
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert scheduler.poll() is None and time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = subprocess.Popen([str(DASK), "worker", address, "--nworkers", "2", "--nthreads", "1",
                                    "--no-dashboard", "--host", "127.0.0.1"], stdout=logs[1],
                                   stderr=subprocess.STDOUT, env=environment)
        task = DatasetConstructionTask(version="v2", executor="dask", scheduler_address=address, **DATASET)
        assert build(task), (tmp_path / "workers.log").read_text()[-4000:]
        assert shard_bytes(task.output_directory()) == reference
        assert workers.poll() is None and scheduler.poll() is None, "the cluster outlives the task that used it"
    finally:
        for process in (workers, scheduler):
            if process is not None:
                stop(process)
        for log in logs:
            log.close()


def test_dask_workers_as_slurm_jobs(reference, slurm_cluster):
    pytest.importorskip("dask_jobqueue")
    task = DatasetConstructionTask(version="v3", executor="dask", dask_slurm_workers=1, dask_worker_memory="1GB",
                                   keep_pieces=True, **DATASET)
    assert build(task)
    assert shard_bytes(task.output_directory()) == reference
    # the worker ran as a Slurm job, started by the job bootstrap
    jobs = task.requires()["pieces"].pieces_directory() / "dask-jobs"
    outputs = list(jobs.glob("*.out")) + list(jobs.glob("*.err"))
    assert outputs and any("b-hive: using the environment" in p.read_text() for p in outputs), \
        [p.read_text()[-2000:] for p in outputs]
    assert subprocess.run(["squeue", "--noheader", "--states=RUNNING,PENDING", "--name", "dask-worker"],
                          capture_output=True, text=True).stdout.strip() == "", "the worker jobs are cancelled"
