"""The store cannot be left, corrupted or half-written: names, paths, atomic writes, locks,
damaged outputs, concurrent runs and a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import luigi
import numpy as np
import pytest

from bhive import dataset, direct_io
from bhive.config import ConfigError
from bhive.store import (StoreError, atomic_directory, atomic_path, atomic_write, check_name, output_lock,
                         private_directory, store_path)
from tasks.dataset import DatasetConstructionTask
from tasks.evaluation import ComparisonTask
from tasks.simulation import SimulatedSamplesTask
from tasks.training import TrainingTask
from tests.test_tasks import config_dir  # noqa: F401  (fixture: tiny simulated config "tiny")

REPO = Path(__file__).resolve().parents[1]


def build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")


# -- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../../elsewhere/victim", "/abs", "..", ".", "a/b", ".hidden", "", "a b",
                                  "v1\n", "ü", "a\\b", "~", "$HOME"])
def test_names_that_could_leave_the_store_are_refused(name):
    with pytest.raises(StoreError, match="letters, digits"):
        check_name(name, "--version")


@pytest.mark.parametrize("name", ["v1", "v1.2", "2026-11-30_hlt", "A-b_c.d"])
def test_plain_names_pass(name):
    assert check_name(name, "--version") == name


@pytest.mark.parametrize("parameters", [
    {"version": "../../../../elsewhere/victim"}, {"version": "/abs"}, {"version": ".."}, {"version": "a/b"},
    {"version": "v1", "dataset_version": "../x"}, {"config": "../configs/hlt_ak4"},
    {"config": "hlt_ak4", "version": "v1", "model_name": "../DNN"}, {"version": "v1", "training_version": ".."},
])
def test_traversal_in_any_version_config_or_model_name_is_refused(parameters, store):
    parameters = {"config": "hlt_ak4", "version": "v1", **parameters}
    with pytest.raises((StoreError, ConfigError)):
        TrainingTask(**parameters).local_path()
    assert not store.exists(), "nothing may be created for a refused name"


def test_remove_output_cannot_reach_outside_the_store(tmp_path, store):
    victim = tmp_path / "elsewhere" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    env = {**os.environ, "LAW_CONFIG_FILE": str(REPO / "law.cfg"), "LAW_HOME": str(tmp_path / "law"),
           "PYTHONPATH": str(REPO)}
    law = shutil.which("law", path=str(Path(sys.executable).parent)) or "law"
    subprocess.run([law, "index"], cwd=REPO, env=env, capture_output=True, check=True)
    relative = os.path.relpath(victim, store / "SimulatedSamplesTask" / "hlt_ak4")
    result = subprocess.run([law, "run", "SimulatedSamplesTask", "--config", "hlt_ak4", "--version", relative,
                             "--remove-output", "0,a,y"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "letters, digits" in result.stdout + result.stderr
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_symbolic_link_inside_the_store_cannot_lead_out(tmp_path, store):
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / "SimulatedSamplesTask").mkdir(parents=True)
    (store / "SimulatedSamplesTask" / "hlt_ak4").symlink_to(outside)
    with pytest.raises(StoreError, match="outside the store"):
        store_path("SimulatedSamplesTask", "hlt_ak4", "v1")


def test_config_given_as_a_file_path_stays_in_the_store(config_dir, store, tmp_path):  # noqa: F811
    elsewhere = tmp_path / "my" / "dir"
    elsewhere.mkdir(parents=True)
    mine = elsewhere / "my_wg.yml"
    shutil.copy(config_dir / "tiny.yml", mine)
    task = SimulatedSamplesTask(config=str(mine), version="v1", split="test", processes=1)
    assert task.config_name == "my_wg"
    assert task.local_path() == store.resolve() / "SimulatedSamplesTask" / "my_wg" / "v1" / "seed_42" / "test"
    relative = SimulatedSamplesTask(config=os.path.relpath(mine), version="v1", split="test")
    assert relative.local_path() == task.local_path(), "the same file gives the same store path from anywhere"
    assert build(task)

    # another file with the same stem is told apart by the identity check
    other = tmp_path / "other" / "my_wg.yml"
    other.parent.mkdir()
    other.write_text(mine.read_text().replace("npv_mean: 40.0", "npv_mean: 20.0"))
    from bhive.identity import VersionConflictError

    with pytest.raises(VersionConflictError, match=r"simulate\.npv_mean: 40\.0 -> 20\.0"):
        SimulatedSamplesTask(config=str(other), version="v1", split="test").complete()


def test_config_path_that_is_no_file_and_bad_stems_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        SimulatedSamplesTask(config=str(tmp_path / "missing.yml"), version="v1")
    hidden = tmp_path / ".sneaky.yml"
    hidden.write_text("{}")
    with pytest.raises(StoreError):
        SimulatedSamplesTask(config=str(hidden), version="v1")


def test_compare_entries_are_names_too(store):
    task = ComparisonTask(config="hlt_ak4", version="v1", model_name="DNN", compare="../../x/DNN")
    with pytest.raises(StoreError):
        task.others()


# -- atomic writes -------------------------------------------------------------------------

def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out" / "file.json"
    with pytest.raises(RuntimeError), atomic_write(target) as stream:
        stream.write("half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []

    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and list(target.parent.iterdir()) == [target]


def test_an_atomic_directory_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "shard_0000"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as temporary:
        (temporary / "new.npy").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["old.npy"]
    with atomic_directory(target) as temporary:
        (temporary / "new.npy").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["shard_0000"]
    assert [p.name for p in target.iterdir()] == ["new.npy"]


def test_a_full_disk_names_the_store_path_and_leaves_nothing(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    target = tmp_path / "store" / "big.npy"
    with pytest.raises(StoreError, match=f"no space left while writing {target}"), atomic_path(target) as temporary:
        temporary.write_bytes(b"x" * 10)
        raise full
    assert list(target.parent.iterdir()) == []
    with pytest.raises(StoreError, match="no space left"), private_directory(tmp_path / "store", "buckets") as scratch:
        (scratch / "0.bin").write_bytes(b"x")
        raise full
    assert list((tmp_path / "store").iterdir()) == []


def test_the_output_lock_makes_a_second_run_wait(tmp_path):
    order = []

    def hold():
        with output_lock(tmp_path):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    first = threading.Thread(target=hold)
    first.start()
    time.sleep(0.1)
    with output_lock(tmp_path):
        order.append("second in")
    first.join()
    assert order == ["first in", "first out", "second in"]


# -- damaged outputs, concurrent runs, full disk: on a real dataset ------------------------

def dataset_task(**parameters) -> DatasetConstructionTask:
    return DatasetConstructionTask(config="tiny", version="v1", executor="iterative", chunk_size=150, shard_size=120,
                                   **parameters)


def test_a_truncated_shard_is_reported_by_name(config_dir, store):  # noqa: F811
    task = dataset_task()
    assert build(task)
    meta = dataset.load_meta(task.output_directory())
    assert len(meta["shards"]) >= 3
    victim = task.output_directory() / meta["shards"][1]["name"] / "cpf.npy"
    content = victim.read_bytes()
    victim.write_bytes(content[: len(content) // 2])
    with pytest.raises(dataset.DatasetError, match=f"dataset file {victim} is damaged.*--remove-output"):
        task.complete()
    with pytest.raises(dataset.DatasetError, match=f"dataset file {victim} cannot be read"):
        dataset.open_shard(task.output_directory(), meta["shards"][1]["name"])

    # same size, other content: only --verify (checksums) sees it
    victim.write_bytes(content[:-4] + b"\0\0\0\1")
    assert task.complete()
    with pytest.raises(dataset.DatasetError, match="sha256"):
        dataset_task(verify=True).complete()


CONCURRENT = textwrap.dedent("""
    import sys, luigi
    from tasks.dataset import DatasetConstructionTask
    task = DatasetConstructionTask(config="tiny", version=sys.argv[1], executor="iterative", chunk_size=150,
                                   shard_size=120)
    sys.exit(0 if luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING") else 1)
""")


def shard_records(task) -> dict:
    meta = dataset.load_meta(task.output_directory())
    return {shard["name"]: shard["files"] for shard in meta["shards"]}


def test_two_identical_runs_at_once_give_identical_shards(config_dir, store, tmp_path):  # noqa: F811
    assert build(SimulatedSamplesTask(config="tiny", version="v1", processes=1))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, "v1"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    together = shard_records(dataset_task())
    assert len(together) >= 3
    leftovers = [p.name for p in dataset_task().output_directory().iterdir() if p.name.startswith(".")]
    assert set(leftovers) <= {".lock"}, leftovers

    # built again by one run alone: the same bytes
    shutil.rmtree(dataset_task().output_directory())
    assert build(dataset_task())
    assert together == shard_records(dataset_task())


def take(budget: list[int], data) -> None:
    """Count ``data`` against the bytes the "disk" has left; fail as a full disk does when it has not."""
    size = memoryview(data).nbytes
    if budget[0] < size:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    budget[0] -= size


class _FillingUp:
    """A file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, stream, budget: list[int]) -> None:
        self.stream, self.budget = stream, budget

    def write(self, data) -> int:
        take(self.budget, data)
        return self.stream.write(data)

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


@pytest.mark.parametrize("direct", [False, True], ids=["page cache", "direct I/O"])
def test_a_full_disk_while_writing_shards_leaves_nothing_behind(config_dir, store, monkeypatch, direct):  # noqa: F811
    assert build(dataset_task(keep_pieces=True))  # the pieces, to build the shards from
    task = dataset_task(keep_pieces=True)
    output = task.output_directory()
    pieces_task = task.requires()["pieces"]
    pieces_dir = pieces_task.pieces_directory() / "pieces"
    piece_dirs = sorted(pieces_dir.iterdir())
    meta = dataset.load_meta(output)
    budget = [50_000]  # bytes the "disk" takes: less than the first shard
    if direct:  # every shard file past the page cache, where the file system allows it
        monkeypatch.setattr(direct_io, "DIRECT_MIN_BYTES", 0)
    else:
        monkeypatch.setenv(direct_io.SWITCH, "off")
    real_write = os.write

    def filling_write(fd, data):
        """As a full disk answers a direct write: the whole blocks that fit, then ENOSPC."""
        fits = budget[0] - budget[0] % direct_io.BLOCK
        if 0 < fits < memoryview(data).nbytes:
            data = memoryview(data)[:fits]
        take(budget, data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", filling_write)
    monkeypatch.setattr(direct_io, "open", lambda path, mode="r", **options: (
        _FillingUp(open(path, mode, **options), budget) if "w" in mode else open(path, mode, **options)), raising=False)
    target = output.parent / "again"
    with pytest.raises(StoreError, match=f"no space left while writing {target}"):
        dataset.write_shards(piece_dirs, target, seed=task.seed, shard_size=120, weights=np.asarray(meta["weights"]),
                             bins_pt=meta["bins_pt"], bins_eta=meta["bins_eta"])
    assert budget[0] < 50_000, "the first shard was being written when the disk filled up"
    assert list(target.iterdir()) == [], "no half-written shard is left"


FULL_DISK = textwrap.dedent("""
    import luigi
    from tasks.dataset import DatasetConstructionTask
    task = DatasetConstructionTask(config="tiny", version="v1", executor="iterative", chunk_size=150, shard_size=120)
    luigi.build([task], local_scheduler=True, workers=1, log_level="ERROR")
    print("COMPLETE" if task.output()["meta"].exists() else "INCOMPLETE")
""")


def can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def disk_usage(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def test_a_store_on_a_full_file_system(config_dir, store, tmp_path):  # noqa: F811
    """The store on a small tmpfs (private mount namespace) with room for the inputs and the
    pieces but not for the shards as well."""
    if not can_mount_tmpfs():
        pytest.skip("needs root and unshare to mount a small tmpfs; the injected full disk above covers the logic")
    assert build(dataset_task(keep_pieces=True))
    simulation = dataset_task().requires()["pieces"].requires()["simulation"].output_directory()
    pieces = dataset_task().requires()["pieces"].pieces_directory()
    shards = dataset_task().output_directory()
    room = disk_usage(simulation) + disk_usage(pieces) + disk_usage(shards) // 3
    saved = tmp_path / "saved"
    shutil.copytree(store, saved, symlinks=True)
    shutil.rmtree(saved / "DatasetConstructionTask" / "tiny" / "v1" / "seed_42" / "train")
    shutil.rmtree(saved / "DatasetPiecesTask")
    script = (f"mount -t tmpfs -o size={room // 1024 + 64}k tmpfs {store} && cp -a {saved}/. {store}/ && "
              f"{sys.executable} -c '{FULL_DISK}' 2>&1; echo LEFT: $(find {store} -name '*.tmp' -o -name "
              f"'.buckets*' | wc -l)")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "BHIVE_STORE": str(store)}, timeout=600)
    output = result.stdout + result.stderr
    assert "INCOMPLETE" in output, output
    assert "no space left while writing" in output and str(store) in output, output
    assert "LEFT: 0" in output, output
