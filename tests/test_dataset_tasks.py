"""DatasetConstructionTask end to end on a tiny simulated config, and its law workflow."""

import luigi
import numpy as np
import pytest
import yaml

from bhive import dataset, packed
from bhive.identity import VersionConflictError
from tasks.dataset import DatasetConstructionTask, DatasetPiecesTask
from tests.test_tasks import config_dir  # noqa: F401  (fixture: tiny simulated config "tiny")


def build(task) -> bool:
    return luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")


def test_simulated_dataset_train_and_test(config_dir, store):  # noqa: F811
    train = DatasetConstructionTask(config="tiny", version="v1", executor="iterative", chunk_size=200,
                                    shard_size=300)
    assert build(train)
    meta = dataset.load_meta(train.output_directory())
    assert meta["truth_labels"] == ["isB", "isC", "isUDS", "isG"]
    assert meta["processes"] == ["ttbar", "qcd"]
    assert meta["n_jets"] == sum(s["n_jets"] for s in meta["shards"]) > 300
    assert {f["process"] for f in meta["files"]} == {0, 1}
    assert len(meta["features"]["cpf"]) == 24 and meta["n_candidates"] == {"cpf": 25, "vtx": 4}
    shard = dataset.open_shard(train.output_directory(), meta["shards"][0]["name"])
    # memory-mapped: the packed candidates' entries and mask, and every other array
    assert isinstance(shard["cpf"], packed.PackedArray) and shard["cpf"].shape[1:] == (25, 24)
    assert isinstance(shard["cpf"].entries.base, np.memmap) and isinstance(shard["cpf"].mask.base, np.memmap)
    assert isinstance(shard["global"], np.memmap)
    # the pieces are gone once the shards exist, the simulated inputs are untouched
    assert not any(DatasetPiecesTask.req(train).pieces_directory().glob("pieces"))
    assert train.requires()["pieces"].requires()["simulation"].complete()

    test = DatasetConstructionTask(config="tiny", version="v1", split="test", executor="iterative",
                                   chunk_size=200, shard_size=300, histograms_from_train=True)
    assert build(test)
    test_meta = dataset.load_meta(test.output_directory())
    assert test_meta["weights"] == meta["weights"]
    assert test_meta["weights_from"] == str(train.output_directory())

    # re-running is a no-op; the same version with other settings is refused
    assert train.complete()
    changed = yaml.safe_load((config_dir / "tiny.yml").read_text())
    changed["bins_pt"] = [30.0, 100.0, 2000.0]
    (config_dir / "tiny.yml").write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(VersionConflictError, match="--dataset-version"):
        DatasetConstructionTask(config="tiny", version="v1", executor="iterative", chunk_size=200,
                                shard_size=300).complete()


def test_pieces_workflow_branches_and_htcondor(config_dir, store):  # noqa: F811
    task = DatasetPiecesTask(config="tiny", version="v1", files_per_job=1)
    assert len(task.branch_map) == 4
    assert [len(files) for files in task.branch_map.values()] == [1, 1, 1, 1]
    assert len(DatasetPiecesTask(config="tiny", version="v1").branch_map) == 1
    condor = DatasetPiecesTask(config="tiny", version="v1", files_per_job=2, workflow="htcondor")
    assert type(condor.workflow_proxy).__name__ == "HTCondorWorkflowProxy"
    assert condor.htcondor_bootstrap_file() is not None
