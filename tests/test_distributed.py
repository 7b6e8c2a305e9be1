"""Training on several processes (torchrun, gloo between CPU processes), and stopping on a
signal: the same result whatever the number of processes, and the same weights after a stop and
--resume as without the stop. Real runs on a tiny generated dataset; no GPU needed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bhive import training as fitting
from bhive.plugins.model import MODELS
from bhive.store import atomic_write_json
from bhive.training import TrainingError, TrainingInterrupted, launcher, load_tensors
from bhive.training import loop as training
from bhive.training.stopping import SIGNAL_AT_STEP
from tests.test_training import SMALL, settings_for
from tests.training_data import tiny_dataset

DEVICES = 2


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cfg, directory = tiny_dataset(root, monkeypatch, model_settings=SMALL)
        # the processes' thread count, explicit: resumed and uninterrupted runs use the same
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        yield root, cfg, directory


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_tensors(output / fitting.ARTIFACT / "weights.pt", "cpu")


def losses(history: list[dict], key: str) -> np.ndarray:
    return np.array([record[key] for record in history])


def deepjet_settings(cfg):
    # epochs enough for a signal sent after the first to land inside the training
    return settings_for(cfg, epochs=4, device="cpu")


@pytest.fixture(scope="module")
def deepjet(tiny_module):
    """DeepJet trained on one process and on two, with the same settings."""
    root, cfg, directory = tiny_module
    settings = deepjet_settings(cfg)
    one = fitting.train(cfg, "DeepJet", directory, root / "deepjet-1", settings)
    two = fitting.train(cfg, "DeepJet", directory, root / "deepjet-2", settings, devices=DEVICES)
    return {"settings": settings, "history": {1: one, 2: two},
            "output": {1: root / "deepjet-1", 2: root / "deepjet-2"}}


def test_two_processes_train_deepjet_as_one_does(deepjet):
    """Dropout included: every process draws the whole batch's masks and applies its rows."""
    one, two = deepjet["history"][1], deepjet["history"][2]
    assert len(one) == len(two) == deepjet["settings"].epochs
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(losses(two, key), losses(one, key), rtol=1e-6)
    first, second = weights(deepjet["output"][1]), weights(deepjet["output"][2])
    assert first.keys() == second.keys()
    for key, value in first.items():
        # float precision: each process sums the gradient over half the batch
        torch.testing.assert_close(second[key], value, rtol=1e-5, atol=1e-6, msg=key)
    report = json.loads((deepjet["output"][2] / "work" / launcher.PROCESSES / "rank_1.json").read_text())
    assert report["status"] == "done"


def test_particlenet_on_two_processes_within_the_batchnorm_tolerance(tiny_module):
    """BatchNorm on CPUs normalises each process's half batch with its own statistics, so the
    runs differ beyond float precision: within 2% in loss (measured: 0.1-0.2%)."""
    root, cfg, directory = tiny_module
    settings = settings_for(cfg, epochs=2, device="cpu")
    one = fitting.train(cfg, "ParticleNet", directory, root / "particlenet-1", settings)
    two = fitting.train(cfg, "ParticleNet", directory, root / "particlenet-2", settings, devices=DEVICES)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(losses(two, key), losses(one, key), rtol=0.02)
    np.testing.assert_allclose(losses(two, "val_accuracy"), losses(one, "val_accuracy"), atol=0.03)


def test_one_process_stops_on_sigterm_and_resumes_to_the_same_weights(tiny_module, monkeypatch):
    root, cfg, directory = tiny_module
    settings = settings_for(cfg, epochs=2, device="cpu", loader_workers=1)
    straight = fitting.train(cfg, "DeepJet", directory, root / "straight", settings)

    handler = signal.getsignal(signal.SIGTERM)
    model = fitting.build(cfg, "DeepJet", directory)
    first_epoch = len(list(fitting.loader(cfg, model, directory, settings).train_batches(0)))
    # in epoch 2: the epoch's metrics so far go into the checkpoint
    monkeypatch.setenv(SIGNAL_AT_STEP, str(first_epoch + 3))
    with pytest.raises(TrainingInterrupted, match=r"epoch 2 after batch 3 of 2 on SIGTERM.*--resume"):
        fitting.train(cfg, "DeepJet", directory, root / "stopped", settings)
    assert signal.getsignal(signal.SIGTERM) is handler
    state = torch.load(root / "stopped" / "work" / training.CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["position"]) == (1, 3) and state["partial"]["n_jets"] == 3 * 128
    assert not (root / "stopped" / fitting.ARTIFACT).exists()

    monkeypatch.delenv(SIGNAL_AT_STEP)
    resumed = fitting.train(cfg, "DeepJet", directory, root / "stopped", settings, resume=True)
    assert losses(resumed, "loss").tolist() == losses(straight, "loss").tolist()
    expected = weights(root / "straight")
    for key, value in weights(root / "stopped").items():
        assert torch.equal(value, expected[key]), key


def _sigterm_after_first_epoch(processes: Path, rank: int) -> threading.Thread:
    """From outside, as a batch system would: SIGTERM to the process of ``rank`` once the
    first epoch is done (the others are not told: they have to agree to stop)."""
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            log, report = launcher.log_path(processes, 0), launcher.report_path(processes, rank)
            if log.exists() and "epoch 1/" in log.read_text() and report.exists():
                os.kill(json.loads(report.read_text())["pid"], signal.SIGTERM)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_two_processes_stop_on_sigterm_and_resume_to_the_same_weights(tiny_module, deepjet):
    root, cfg, directory = tiny_module
    settings, output = deepjet["settings"], root / "deepjet-2-stopped"
    watcher = _sigterm_after_first_epoch(output / "work" / launcher.PROCESSES, rank=1)
    with pytest.raises(TrainingInterrupted, match=r"stopped (in|after) epoch .* on SIGTERM to rank 1; .*--resume"):
        fitting.train(cfg, "DeepJet", directory, output, settings, devices=DEVICES)
    watcher.join()
    state = torch.load(output / "work" / training.CHECKPOINT, weights_only=True)
    assert 1 <= state["epoch"] < settings.epochs
    assert "SIGTERM" in (output / "work" / launcher.PROCESSES / "rank_1.log").read_text()

    resumed = fitting.train(cfg, "DeepJet", directory, output, settings, resume=True, devices=DEVICES)
    np.testing.assert_allclose(losses(resumed, "loss"), losses(deepjet["history"][2], "loss"), rtol=1e-12)
    expected = weights(deepjet["output"][2])
    for key, value in weights(output).items():
        assert torch.equal(value, expected[key]), key


@pytest.fixture
def failing_model():
    import tests.distributed_models  # noqa: F401  (registers FailsInRankOne)

    yield "FailsInRankOne"
    MODELS._classes.pop("FailsInRankOne")
    sys.modules.pop("tests.distributed_models")


def test_a_failing_process_is_named_with_its_log(tiny_module, failing_model):
    root, cfg, directory = tiny_module
    output = root / "failing"
    with pytest.raises(TrainingError, match=r"rank 1 raised ValueError: rank 1 cannot go on \(its log: .*rank_1\.log"):
        fitting.train(cfg, failing_model, directory, output, settings_for(cfg, epochs=1, device="cpu"),
                      devices=DEVICES)
    assert "rank 1 cannot go on" in (output / "work" / launcher.PROCESSES / "rank_1.log").read_text()
    assert not (output / fitting.ARTIFACT).exists()


def test_settings_that_cannot_work_on_several_processes_are_refused_before_any_starts(tiny_module):
    root, cfg, directory = tiny_module
    with pytest.raises(TrainingError, match="GradientBoosting is not a PyTorch model.*--devices 1"):
        fitting.train(cfg, "GradientBoosting", directory, root / "gb", settings_for(cfg), devices=2)
    with pytest.raises(TrainingError, match="--device cuda:1 names one device; with --devices 2"):
        fitting.train(cfg, "DNN", directory, root / "cuda1", settings_for(cfg, device="cuda:1"), devices=2)
    with pytest.raises(TrainingError, match="--devices 0"):
        fitting.train(cfg, "DNN", directory, root / "none", settings_for(cfg), devices=0)
    assert not (root / "cuda1").exists()


def test_signals_to_the_task_process_reach_the_training_processes(tmp_path):
    """The task process passes SIGTERM on to every training process (as SIGTERM), and so a
    first Ctrl-C too; torchrun is left alone while they are running."""
    torchrun = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(DEVICES)]
    try:
        for rank, worker in enumerate(workers):
            atomic_write_json(launcher.report_path(tmp_path, rank), {"rank": rank, "pid": worker.pid,
                                                                       "status": "running", "time": 0})
        with launcher._passing_signals_on(torchrun, tmp_path, DEVICES):
            os.kill(os.getpid(), signal.SIGINT)
        assert [worker.wait(10) for worker in workers] == [-signal.SIGTERM] * DEVICES
        assert torchrun.poll() is None
    finally:
        for process in (torchrun, *workers):
            process.kill()
            process.wait()
