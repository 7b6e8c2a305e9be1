"""Jobs on a real Slurm cluster (tests/cluster/slurm.sh), submitted by ``law run`` as a user
would: a simulated sample converted through ``--workflow slurm`` gives the shards of a local
run byte for byte, and a training sent to Slurm as one job gives the weights of a local
training bit for bit. law polls every second."""

from __future__ import annotations

import shutil

import pytest

from bhive import dataset, training
from tasks.dataset import DatasetConstructionTask
from tasks.training import TrainingTask
from tests.batch_helpers import (build, law_environment, law_run, shard_bytes, weights,
                                 write_tiny_simulated_config)

pytestmark = pytest.mark.slow

DATASET = ("--config", "tiny", "--version", "v1", "--chunk-size", "200", "--shard-size", "300")


@pytest.fixture(scope="module")
def cluster_store(tmp_path_factory, slurm_cluster):
    """A store and the tiny simulated config, for this process and for ``law run``."""
    root = tmp_path_factory.mktemp("slurm-store")
    write_tiny_simulated_config(root / "configs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BHIVE_STORE", str(root / "store"))
        patch.setenv("BHIVE_CONFIG_DIR", str(root / "configs"))
        yield law_environment(LAW_HOME=str(root / "law"))


def test_dataset_made_on_slurm_matches_a_local_run_byte_for_byte(cluster_store):
    # the simulated sample is made locally first, its files in two jobs of two files each
    result = law_run(
        "tasks.dataset.DatasetConstructionTask", *DATASET, "--executor", "iterative",
        "--DatasetPiecesTask-workflow", "slurm", "--DatasetPiecesTask-files-per-job", "2",
        "--DatasetPiecesTask-poll-interval", "1s", "--DatasetPiecesTask-retries", "1", env=cluster_store)
    assert "submitted 2 slurm job(s)" in result.stdout

    # the same dataset made locally from the same simulated files
    construction = DatasetConstructionTask(config="tiny", version="v1", chunk_size=200, shard_size=300)
    on_slurm = shard_bytes(construction.output_directory())
    assert dataset.load_meta(construction.output_directory())["n_jets"] > 300
    shutil.rmtree(construction.output_directory())
    assert build(DatasetConstructionTask(config="tiny", version="v1", chunk_size=200, shard_size=300,
                                         executor="futures", processes=2))
    assert shard_bytes(construction.output_directory()) == on_slurm


def test_training_job_on_slurm_gives_the_weights_of_a_local_training(cluster_store):
    local = TrainingTask(config="tiny", version="v1", chunk_size=200, shard_size=300, model_name="DNN",
                         training_version="local")
    # the thread count is part of what makes CPU training reproducible: one thread here (the
    # session's setting) and in the job (its --cpus 1)
    assert build(local)

    result = law_run("tasks.training.TrainingTask", *DATASET, "--model-name", "DNN", "--training-version", "slurm",
                     "--workflow", "slurm", "--cpus", "1", "--poll-interval", "1s", "--retries", "0",
                     env=cluster_store)
    assert "submitted 1 slurm job(s)" in result.stdout
    on_slurm = TrainingTask(config="tiny", version="v1", chunk_size=200, shard_size=300, model_name="DNN",
                            training_version="slurm", workflow="slurm")
    assert on_slurm.complete() and on_slurm.identity() == local.identity()
    local_weights = weights(local.local_path(training.ARTIFACT))
    slurm_weights = weights(on_slurm.local_path(training.ARTIFACT))
    assert local_weights.keys() == slurm_weights.keys()
    for name, tensor in local_weights.items():
        assert tensor.dtype == slurm_weights[name].dtype and tensor.equal(slurm_weights[name]), name
