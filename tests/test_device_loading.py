"""Batches on the training device: the device-resident loader gives ShardDataLoader's batches,
the prefetching transfer gives the batches it is handed, and a training is the same with
either loader. The CUDA side-stream path is checked where a GPU is present."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import models  # noqa: F401  (registers the shipped models)
from bhive import training as fitting
from bhive.training.transfer import prefetched, to_device
from dataloaders.base import LoaderSettings
from dataloaders.resident import DeviceResidentLoader
from dataloaders.shards import ShardDataLoader
from tests.training_data import tiny_dataset


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return tiny_dataset(tmp_path, monkeypatch, model_settings={"DNN": {"hidden": [16]}})


def loaders(cfg, directory, **settings):
    settings = LoaderSettings(batch_size=128, seed=3, validation_fraction=0.2, **settings)
    return (ShardDataLoader(directory, ("global", "cpf"), cfg.classes, settings),
            DeviceResidentLoader(directory, ("global", "cpf"), cfg.classes, settings))


def assert_same_batches(expected, resident) -> None:
    expected, resident = list(expected), list(resident)
    assert len(expected) == len(resident) > 1
    for want, got in zip(expected, resident):
        assert set(want) == set(got)
        for key in want:
            assert isinstance(got[key], torch.Tensor)
            np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=key)


@pytest.mark.parametrize("sampling", ["stochastic", "loss_weight"])
@pytest.mark.parametrize("class_weights", ["none", "balanced"])
def test_resident_batches_are_the_shard_loaders(tiny, sampling, class_weights):
    cfg, directory = tiny
    shards, resident = loaders(cfg, directory, sampling=sampling, class_weights=class_weights)
    resident.to("cpu")
    for epoch in (0, 1):
        assert_same_batches(shards.train_batches(epoch), resident.train_batches(epoch))
    assert_same_batches(shards.validation_batches(), resident.validation_batches())
    for rank in range(2):
        want = list(shards.rank_train_batches(1, rank, 2))
        got = list(resident.rank_train_batches(1, rank, 2))
        assert [(w.size, w.weight) for w in want] == [(g.size, g.weight) for g in got]
        assert_same_batches([w.batch for w in want], [g.batch for g in got])
    assert resident.mean_acceptance() == shards.mean_acceptance()


def test_resident_loader_refuses_worker_processes(tiny):
    cfg, directory = tiny
    _, resident = loaders(cfg, directory)
    with pytest.raises(TypeError, match="--loader-workers 0"):
        resident.__getstate__()


def test_a_training_is_the_same_with_either_loader(tiny, tmp_path):
    cfg, directory = tiny
    settings = fitting.training_settings(cfg, epochs=2, batch_size=128, learning_rate=3e-3, warmup_epochs=0,
                                         patience=0, seed=7)
    results = {}
    for name in ("ShardDataLoader", "DeviceResidentLoader"):
        variant = replace(cfg, dataloader=name)
        model = fitting.build(variant, "DNN", directory, settings.seed)
        history = model.fit(fitting.loader(variant, model, directory, settings), settings, tmp_path / name)
        results[name] = (history, {k: v.clone() for k, v in model.state_dict().items()})
    (history, weights), (resident_history, resident_weights) = results.values()
    assert [h["val_loss"] for h in history] == pytest.approx([h["val_loss"] for h in resident_history], rel=1e-6)
    for key, value in weights.items():
        torch.testing.assert_close(resident_weights[key], value, rtol=1e-6, atol=1e-7)


def test_prefetched_hands_over_every_batch_on_the_device():
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(5, 3)).astype(np.float32), "label": np.arange(5)} for _ in range(4)]
    out = list(prefetched(iter(batches), torch.device("cpu")))
    assert [item for item, _ in out] == batches
    for batch, (_, moved) in zip(batches, out):
        np.testing.assert_array_equal(moved["x"].numpy(), batch["x"])
    # an item that is not itself a batch (one process's share) is unwrapped by batch_of
    shares = [("share", batch) for batch in batches]
    assert [moved["label"].tolist() for _, moved in prefetched(iter(shares), torch.device("cpu"), lambda s: s[1])] \
        == [list(range(5))] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_side_stream_copies_equal_plain_copies():
    device = torch.device("cuda")
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(size=(4096, 16)).astype(np.float32)} for _ in range(6)]
    for batch, (_, moved) in zip(batches, prefetched(iter(batches), device)):
        assert moved["x"].is_cuda
        torch.testing.assert_close(moved["x"], to_device(batch, device)["x"], rtol=0, atol=0)
