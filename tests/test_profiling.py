"""The cost table of an exported graph: every batch size at every thread setting, each
measured in a fresh process, with sane fields. The figures themselves are the machine's and
are never compared with a target."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bhive import profiling
from tests.onnx_models import exported, raw_batch


@pytest.mark.slow
def test_profile_has_every_batch_size_and_thread_setting(tmp_path):
    path, check = exported("GradientBoosting", tmp_path / "export")
    batch = raw_batch(n_jets=100)  # fewer jets than the largest batch: repeated
    inputs = {k: batch[k] for k in check["inputs"]}
    profile = profiling.write_profile(path, inputs, tmp_path / "profile", seconds=0.01)

    rows = profile["rows"]
    assert [(r["threads"], r["batch_size"]) for r in rows] == [
        (threads, size) for threads in ("1", "all") for size in (1, 16, 64, 256, 1024)]
    for row in rows:
        assert row["intra_op_num_threads"] == (1 if row["threads"] == "1" else profiling.cores())
        assert row["calls"] >= profiling.MIN_CALLS
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert np.isfinite(row["jets_per_second"]) and row["jets_per_second"] > 0
        assert row["peak_rss_increase_mb"] >= 0
    assert profile["onnx"]["size"] == path.stat().st_size and profile["inputs"] == check["inputs"]
    assert profile["machine"]["cores"] == profiling.cores() and profile["machine"]["onnxruntime"]
    assert "fresh process" in profile["method"]["setting"] and "read as" in profile["method"]["memory"]

    directory = tmp_path / "profile"
    assert json.loads((directory / "profile.json").read_text()) == profile
    with open(directory / "profile.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert tuple(table[0]) == profiling.COLUMNS
    assert [(r["threads"], int(r["batch_size"])) for r in table] == [(r["threads"], r["batch_size"]) for r in rows]
    for suffix in (".png", ".pdf", ".npz"):
        assert (directory / "plots" / f"profile{suffix}").exists()
    with np.load(directory / "plots" / "profile.npz", allow_pickle=False) as plotted:
        np.testing.assert_array_equal(plotted["batch_size_0"], [1, 16, 64, 256, 1024])


def test_settings_that_cannot_be_measured_are_refused(tmp_path):
    with pytest.raises(profiling.ProfileError, match="thread setting 'some'"):
        profiling.thread_count("some")
    with pytest.raises(profiling.ProfileError, match=r"batch sizes \[0, 16\]"):
        profiling.measure(tmp_path / "model.onnx", {"global": np.zeros((4, 3), np.float32)}, batch_sizes=(0, 16))
    with pytest.raises(profiling.ProfileError, match="the test dataset is empty"):
        profiling.repeated({"global": np.zeros((0, 3), np.float32)}, 16)
    # a graph onnxruntime cannot load: the fresh process's error comes back
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(profiling.ProfileError, match="profiling 1 jets on 1 thread"):
        profiling.measure(tmp_path / "model.onnx", {"global": np.zeros((4, 3), np.float32)}, batch_sizes=(1,),
                          threads=("1",))
