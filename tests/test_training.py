"""Models, dataloader and training loop on a tiny generated dataset (CPU only)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from bhive import dataset
from bhive.standardisation import feature_statistics
from bhive.training import TrainingStopped, learning_rate_factor
from dataloaders.base import LoaderSettings, label_map
from dataloaders.shards import ShardDataLoader
from models import fitting
from models.base import ModelError, load_model, model_class
from tests.training_data import tiny_dataset

SMALL = {"DNN": {"hidden": [32, 16]}, "DeepJet": {"width_scale": 0.1, "dense": [64, 32]},
         "GradientBoosting": {"max_iter": 30},
         # the test files have no eta/phi columns; any two named columns exercise the lookup
         "ParticleNet": {"coordinates": ["pfcand_pt", "pfcand_sip"], "k": 3, "conv_channels": [[8, 8]], "fc": [16]},
         "ParticleTransformer": {"four_vector": {"pt": "pfcand_pt", "eta": "pfcand_sip", "phi": "pfcand_sip"},
                                 "embed_dims": [16, 16], "pair_embed_dims": [8], "num_heads": 2, "num_blocks": 1,
                                 "num_class_blocks": 1}}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return tiny_dataset(tmp_path, monkeypatch, model_settings=SMALL)


def settings_for(cfg, **overrides):
    base = dict(epochs=3, batch_size=128, learning_rate=3e-3, warmup_epochs=0, patience=0, seed=7)
    base.update(overrides)
    return fitting.training_settings(cfg, **base)


def make_loader(cfg, directory, groups, **overrides):
    settings = LoaderSettings(batch_size=128, seed=3, validation_fraction=0.2, **overrides)
    return ShardDataLoader(directory, groups, cfg.classes, settings)


# -- dataloader ----------------------------------------------------------------------------

def test_split_is_disjoint_and_covers_the_dataset(tiny):
    cfg, directory = tiny
    loader = make_loader(cfg, directory, ("global",), sampling="loss_weight")
    train = np.concatenate([b["global"] for b in loader.train_batches(0)])
    validation = np.concatenate([b["global"] for b in loader.validation_batches()])
    meta = dataset.load_meta(directory)
    assert len(train) + len(validation) == meta["n_jets"]
    assert not set(map(tuple, train)) & set(map(tuple, validation))
    assert 0.1 < len(validation) / meta["n_jets"] < 0.35


def test_epochs_are_reproducible_and_differ(tiny):
    cfg, directory = tiny
    loader = make_loader(cfg, directory, ("global", "cpf"))
    first = [b["global"] for b in loader.train_batches(0)]
    again = [b["global"] for b in loader.train_batches(0)]
    other = [b["global"] for b in loader.train_batches(1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(np.concatenate(first)[:50], np.concatenate(other)[:50])
    assert all(len(b) == 128 for b in first[:-1])


def test_stochastic_sampling_accepts_jets_with_their_weight(tiny):
    cfg, directory = tiny
    everything = make_loader(cfg, directory, ("global",), sampling="loss_weight")
    sampled = make_loader(cfg, directory, ("global",), sampling="stochastic")
    n_all = sum(len(b["label"]) for b in everything.train_batches(0))
    expected = sum(float(b["weight"].sum()) for b in everything.train_batches(0))
    n_sampled = np.mean([sum(len(b["label"]) for b in sampled.train_batches(e)) for e in range(5)])
    assert n_sampled < n_all
    assert abs(n_sampled - expected) < 4 * np.sqrt(expected)


def test_workers_deliver_the_same_jets(tiny):
    cfg, directory = tiny
    loader = make_loader(cfg, directory, ("global",), sampling="loss_weight")
    single = np.concatenate([b["global"] for b in loader.train_batches(2)])
    parts = [np.concatenate([b["global"] for b in loader.train_batches(2, worker=w, n_workers=3)]) for w in range(3)]
    combined = np.concatenate(parts)
    assert sorted(map(tuple, single)) == sorted(map(tuple, combined))


def test_label_map_and_unknown_class_member():
    assert label_map(["b", "bb", "c", "l"], {"B": ["b", "bb"], "L": ["l"]}).tolist() == [0, 0, -1, 1]
    with pytest.raises(ValueError, match="'x' is not a truth label"):
        label_map(["b", "c"], {"B": ["x"]})


def test_standardisation_uses_real_candidates_only(tiny):
    cfg, directory = tiny
    loader = make_loader(cfg, directory, ("global", "cpf"), sampling="loss_weight")
    batches = list(loader.train_batches(0))
    stats = feature_statistics(batches, ("global", "cpf"))
    cpf = np.concatenate([b["cpf"] for b in batches])[np.concatenate([b["mask_cpf"] for b in batches])]
    np.testing.assert_allclose(stats["cpf"][0], cpf.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(stats["cpf"][1], cpf.std(axis=0), rtol=1e-4)
    glob = np.concatenate([b["global"] for b in batches])
    np.testing.assert_allclose(stats["global"][0], glob.mean(axis=0), rtol=1e-4)


# -- models --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DNN", "DeepJet", "ParticleNet", "ParticleTransformer", "GradientBoosting"])
def test_every_model_learns(tiny, tmp_path, name):
    cfg, directory = tiny
    model = fitting.build(cfg, name, directory)
    data = fitting.loader(cfg, model, directory, settings_for(cfg))
    history = model.fit(data, settings_for(cfg), tmp_path / name)
    if name == "GradientBoosting":
        assert history[0]["val_accuracy"] > 0.5
    else:
        assert history[-1]["loss"] < history[0]["loss"]
    probabilities = model.predict(data.inference_batches())
    assert probabilities.shape == (dataset.load_meta(directory)["n_jets"], 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / f"{name}-saved")
    again = load_model(tmp_path / f"{name}-saved")
    np.testing.assert_allclose(again.predict(data.inference_batches()), probabilities, rtol=1e-5, atol=1e-6)


def test_two_epochs_equal_one_plus_resume(tiny, tmp_path):
    cfg, directory = tiny
    settings = settings_for(cfg, epochs=2, warmup_epochs=1)
    straight = fitting.build(cfg, "DeepJet", directory, seed=settings.seed)
    history = straight.fit(fitting.loader(cfg, straight, directory, settings), settings, tmp_path / "straight")

    interrupted = fitting.build(cfg, "DeepJet", directory, seed=settings.seed)
    first = replace(settings, stop_after_epoch=1)
    with pytest.raises(TrainingStopped, match="--resume"):
        interrupted.fit(fitting.loader(cfg, interrupted, directory, first), first, tmp_path / "split")
    resumed = fitting.build(cfg, "DeepJet", directory)
    resumed_history = resumed.fit(fitting.loader(cfg, resumed, directory, settings), settings,
                                  tmp_path / "split", resume=True)
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_learning_rate_schedule():
    assert learning_rate_factor(0, 10, 100, "cosine") == pytest.approx(0.1)
    assert learning_rate_factor(10, 10, 100, "cosine") == pytest.approx(1.0)
    assert learning_rate_factor(55, 10, 100, "cosine") == pytest.approx(0.5)
    assert learning_rate_factor(100, 10, 100, "linear") == pytest.approx(0.0)
    assert learning_rate_factor(70, 10, 100, "none") == 1.0


def test_non_finite_loss_names_epoch_and_batch(tiny, tmp_path):
    cfg, directory = tiny
    model = fitting.build(cfg, "DNN", directory)
    settings = settings_for(cfg, learning_rate=1e30, optimizer="sgd", gradient_clip=0.0)
    from bhive.training import TrainingError

    with pytest.raises(TrainingError, match=r"epoch 1, batch \d+"):
        model.fit(fitting.loader(cfg, model, directory, settings), settings, tmp_path / "nan")


# -- bad inputs ----------------------------------------------------------------------------

def test_unknown_hyperparameter_names_the_config_key(tiny):
    cfg, directory = tiny
    broken = replace(cfg, model_settings={"DNN": {"hiden": [8]}})
    with pytest.raises(ModelError, match=r"model_settings.DNN.*hidden"):
        fitting.build(broken, "DNN", directory)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelError, match="DeepJet.*DNN|DNN.*DeepJet"):
        model_class("DeepJt")


def test_model_needing_a_group_the_dataset_lacks(tmp_path, monkeypatch):
    cfg, directory = tiny_dataset(tmp_path, monkeypatch, vtx_features=None, n_vtx_candidates=None,
                                  cpf_candidates=None, n_cpf_candidates=None)
    from models.base import InputSpec, Model

    class NeedsVertices(Model):
        registered = False
        input_groups = ("vtx",)

    with pytest.raises(ModelError, match="vtx"):
        NeedsVertices.used_groups(InputSpec.from_meta(dataset.load_meta(directory), cfg.classes))


def test_classes_that_the_dataset_does_not_have(tiny):
    cfg, directory = tiny
    broken = replace(cfg, classes={"b": ("isB",), "x": ("isX",)})
    with pytest.raises(ModelError, match="isX"):
        fitting.build(broken, "DNN", directory)


def test_empty_dataset_is_refused(tiny, tmp_path):
    cfg, directory = tiny
    meta = dataset.load_meta(directory)
    meta.update(n_jets=0, shards=[])
    empty = tmp_path / "empty"
    empty.mkdir()
    dataset.write_meta(empty, {k: v for k, v in meta.items() if k != "format_version"})
    with pytest.raises(ValueError, match="empty"):
        make_loader(cfg, empty, ("global",))


def test_bf16_mixed_precision_on_cpu(tiny, tmp_path):
    cfg, directory = tiny
    settings = settings_for(cfg, epochs=2, precision="bf16")
    model = fitting.build(cfg, "DeepJet", directory, seed=settings.seed)
    history = model.fit(fitting.loader(cfg, model, directory, settings), settings, tmp_path / "bf16")
    assert np.isfinite(history[-1]["loss"]) and history[-1]["loss"] < history[0]["loss"] * 1.05


def test_fp16_needs_cuda(tiny, tmp_path):
    cfg, directory = tiny
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from bhive.training import TrainingError

    settings = settings_for(cfg, epochs=1, precision="fp16")
    model = fitting.build(cfg, "DNN", directory)
    with pytest.raises(TrainingError, match="fp16.*CUDA"):
        model.fit(fitting.loader(cfg, model, directory, settings), settings, tmp_path / "fp16")
