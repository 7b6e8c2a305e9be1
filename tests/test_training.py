"""Models, dataloader and training loop on a tiny generated dataset (CPU only)."""

import hashlib
import json
import pickle
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import skops.io
import torch

from bhive import dataset
from bhive.training import loop as training
from bhive.standardisation import feature_statistics
from bhive.training import TrainingError, TrainingStopped, learning_rate_factor
from dataloaders.base import LoaderSettings, label_map, rank_rows
from dataloaders.shards import ShardDataLoader
from bhive import training as fitting
from models.base import MODEL_FILE, ModelError, file_records, load_model, model_class
from models.gradient_boosting import ESTIMATOR_FILE, PICKLED_ESTIMATOR_FILE, load_estimator
from models.torch_model import WEIGHTS_FILE
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


@pytest.mark.parametrize("sampling", ["stochastic", "loss_weight"])
def test_rank_shares_make_up_the_global_batches(tiny, sampling):
    """Each of n processes reads its own rows of every batch; together they are the batches of
    one process, the last short one included, and every process has every step."""
    cfg, directory = tiny
    loader = make_loader(cfg, directory, ("global", "cpf"), sampling=sampling)
    batches = list(loader.train_batches(1))
    # every training jet is read with loss weights, a number of jets that leaves a short last
    # batch; the jets stochastic sampling keeps depend on the shards, which depend on the input
    # files' paths, so their last batch is full now and then
    assert len(batches[-1]["label"]) < 128 if sampling == "loss_weight" else len(batches[-1]["label"]) <= 128
    for n_ranks in (1, 2, 3):
        shares = [list(loader.rank_train_batches(1, rank, n_ranks)) for rank in range(n_ranks)]
        assert all(len(own) == len(batches) for own in shares)
        for index, batch in enumerate(batches):
            parts = [own[index] for own in shares]
            assert {part.size for part in parts} == {len(batch["label"])}
            assert parts[0].weight == pytest.approx(float(batch["weight"].sum(dtype=np.float64)))
            counted = [part.batch for rank, part in enumerate(parts) if rank_rows(part.size, rank, n_ranks)[1]]
            for key, values in batch.items():
                np.testing.assert_array_equal(np.concatenate([part[key] for part in counted]), values)
        validation = [list(loader.rank_validation_batches(rank, n_ranks)) for rank in range(n_ranks)]
        everything = list(loader.validation_batches())
        assert [len(own) for own in validation] == [len(everything[rank::n_ranks]) for rank in range(n_ranks)]
        np.testing.assert_array_equal(validation[-1][0]["global"], everything[n_ranks - 1]["global"])


def test_a_rank_without_jets_takes_a_stand_in():
    assert rank_rows(10, 0, 3) == (slice(0, 3), 3) and rank_rows(10, 2, 3) == (slice(6, 10), 4)
    # one jet, two ranks: rank 1 has it, rank 0 runs on a copy of it that counts for nothing
    assert rank_rows(1, 0, 2) == (slice(0, 1), 0) and rank_rows(1, 1, 2) == (slice(0, 1), 1)


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
    if name != "GradientBoosting":
        # the validation loss of the untrained model, standardised as fit() will standardise it:
        # a training loss per epoch is too noisy for a few dozen steps (which jets make up an
        # epoch depends on the shards, and so on the store's path)
        model.set_standardisation(feature_statistics(data.train_batches(0), model.standardised_groups()))
        untrained = training.evaluate(model, data, torch.device("cpu"), settings_for(cfg))["val_loss"]
    history = model.fit(data, settings_for(cfg), tmp_path / name)
    if name == "GradientBoosting":
        assert history[0]["val_accuracy"] > 0.5
    else:
        assert history[-1]["val_loss"] < untrained
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


# -- files read back from the store ----------------------------------------------------------
# Whoever can write to the shared store can replace any file in it, model.json included: none
# of these files may run code when it is read.

class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class CreatesFileWhenBuilt:
    """An object that creates ``marker`` when a loader builds it from its saved state."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).touch()


def test_the_payloads_run_when_trusted(tmp_path):
    """Proof that the payloads below would do harm, were they loaded the unsafe way."""
    unpickled, built = tmp_path / "unpickled", tmp_path / "built"
    pickle.loads(pickle.dumps(CreatesFileWhenUnpickled(unpickled)))
    assert unpickled.exists()
    skops.io.dump({"payload": CreatesFileWhenBuilt(built)}, tmp_path / "payload.skops")
    skops.io.load(tmp_path / "payload.skops", trusted=skops.io.get_untrusted_types(file=tmp_path / "payload.skops"))
    assert built.exists()


def record_files_again(artifact: Path) -> None:
    """What a writer who replaced files can also do: make model.json agree with them."""
    description = json.loads((artifact / MODEL_FILE).read_text())
    description["files"] = file_records(artifact)
    (artifact / MODEL_FILE).write_text(json.dumps(description))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """A DNN and a GradientBoosting artifact, trained once; tests tamper with copies of them."""
    root = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cfg, directory = tiny_dataset(root, monkeypatch, model_settings=SMALL)
    settings = settings_for(cfg, epochs=1)
    for name in ("DNN", "GradientBoosting"):
        model = fitting.build(cfg, name, directory)
        model.fit(fitting.loader(cfg, model, directory, settings), settings, root / name / "work")
        model.save(root / name / "artifact")
    return {name: root / name / "artifact" for name in ("DNN", "GradientBoosting")}


def artifact_copy(artifacts: dict[str, Path], tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(artifacts[name], tmp_path / "artifact"))


def interrupted_training(tiny, workdir: Path):
    """DNN settings for two epochs, and ``workdir`` holding the checkpoint after the first."""
    cfg, directory = tiny
    settings = settings_for(cfg, epochs=2)
    model = fitting.build(cfg, "DNN", directory)
    first = replace(settings, stop_after_epoch=1)
    with pytest.raises(TrainingStopped):
        model.fit(fitting.loader(cfg, model, directory, first), first, workdir)
    return settings


def resume(tiny, workdir: Path, settings):
    cfg, directory = tiny
    model = fitting.build(cfg, "DNN", directory)
    return model.fit(fitting.loader(cfg, model, directory, settings), settings, workdir, resume=True)


def test_checkpoint_holds_tensors_and_plain_data_only(tiny, tmp_path):
    interrupted_training(tiny, tmp_path / "work")
    state = torch.load(tmp_path / "work" / training.CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    training.seed_everything(11)
    # leave a cached Gaussian in numpy and in Python: their states carry it
    np.random.standard_normal()
    random.gauss(0.0, 1.0)
    torch.save(training.rng_state(), tmp_path / "rng.pt")
    expected = (np.random.standard_normal(5).tolist(), np.random.randint(0, 2**31, 5).tolist(),
                [random.gauss(0.0, 1.0) for _ in range(5)], random.random(), torch.rand(5).tolist())
    training.seed_everything(12)
    training.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (np.random.standard_normal(5).tolist(), np.random.randint(0, 2**31, 5).tolist(),
            [random.gauss(0.0, 1.0) for _ in range(5)], random.random(), torch.rand(5).tolist()) == expected


# torch notes that a plain pickle uses a protocol it does not write itself
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("tampering", ["torch.save of a payload", "plain pickle", "truncated"])
def test_resume_refuses_a_tampered_checkpoint(tiny, tmp_path, tampering):
    workdir, marker = tmp_path / "work", tmp_path / "payload-ran"
    settings = interrupted_training(tiny, workdir)
    checkpoint = workdir / training.CHECKPOINT
    if tampering == "torch.save of a payload":
        torch.save({"model": CreatesFileWhenUnpickled(marker), "epoch": 1}, checkpoint)
    elif tampering == "plain pickle":
        checkpoint.write_bytes(pickle.dumps(CreatesFileWhenUnpickled(marker)))
    else:
        truncate(checkpoint)
    with pytest.raises(TrainingError, match=rf"{re.escape(str(checkpoint))}.*without --resume.*remove") as error:
        resume(tiny, workdir, settings)
    assert "weights_only=False" not in str(error.value)
    assert not marker.exists()


def test_resume_refuses_a_tampered_best_weights_file(tiny, tmp_path):
    workdir, marker = tmp_path / "work", tmp_path / "payload-ran"
    settings = interrupted_training(tiny, workdir)
    torch.save(CreatesFileWhenUnpickled(marker), workdir / training.BEST)
    # no epoch left to train: the best weights are read back at once
    with pytest.raises(TrainingError, match=re.escape(str(workdir / training.BEST))):
        resume(tiny, workdir, replace(settings, epochs=1))
    assert not marker.exists()


@pytest.mark.parametrize("name, files", [("DNN", [WEIGHTS_FILE]), ("GradientBoosting", [ESTIMATOR_FILE])])
def test_description_records_size_and_sha256_of_every_file(artifacts, tmp_path, name, files):
    artifact = artifact_copy(artifacts, tmp_path, name)
    recorded = json.loads((artifact / MODEL_FILE).read_text())["files"]
    assert sorted(recorded) == files
    for file, record in recorded.items():
        content = (artifact / file).read_bytes()
        assert record == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}


@pytest.mark.parametrize("name, file", [("DNN", WEIGHTS_FILE), ("GradientBoosting", ESTIMATOR_FILE)])
def test_truncated_artifact_file_is_refused_by_its_size(artifacts, tmp_path, name, file):
    artifact = artifact_copy(artifacts, tmp_path, name)
    truncate(artifact / file)
    expected = rf"model file {re.escape(str(artifact / file))} is damaged \(\d+ bytes, \d+ recorded"
    with pytest.raises(ModelError, match=expected):
        load_model(artifact)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name, file, refusal", [("DNN", WEIGHTS_FILE, "cannot be used and is not unpickled"),
                                                 ("GradientBoosting", ESTIMATOR_FILE, "is not a skops file")])
@pytest.mark.parametrize("tampering", ["payload", "truncated"])
def test_replaced_artifact_file_is_refused_without_unpickling(artifacts, tmp_path, name, file, refusal, tampering):
    artifact, marker = artifact_copy(artifacts, tmp_path, name), tmp_path / "payload-ran"
    if tampering == "payload":
        (artifact / file).write_bytes(pickle.dumps(CreatesFileWhenUnpickled(marker)))
    else:
        truncate(artifact / file)
    record_files_again(artifact)
    with pytest.raises(ModelError, match=rf"{re.escape(str(artifact / file))} {refusal}.*train the model again"):
        load_model(artifact)
    assert not marker.exists()


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("early_stopping", [True, False])
def test_every_estimator_variant_is_made_of_trusted_types(tmp_path, n_classes, early_stopping):
    from sklearn.ensemble import HistGradientBoostingClassifier

    generator = np.random.default_rng(1)
    x = generator.normal(size=(400, 3)).astype(np.float32)
    x[::5, 1] = np.nan
    y = generator.integers(0, n_classes, 400)
    estimator = HistGradientBoostingClassifier(max_iter=5, early_stopping=early_stopping, validation_fraction=0.2,
                                               random_state=0).fit(x, y)
    skops.io.dump(estimator, tmp_path / ESTIMATOR_FILE)
    np.testing.assert_array_equal(load_estimator(tmp_path / ESTIMATOR_FILE).predict_proba(x),
                                  estimator.predict_proba(x))


@pytest.mark.parametrize("intruder", ["payload", "default-trusted estimator"])
def test_untrusted_type_in_the_estimator_is_refused(artifacts, tmp_path, intruder):
    from sklearn.linear_model import LogisticRegression

    artifact, marker = artifact_copy(artifacts, tmp_path, "GradientBoosting"), tmp_path / "payload-ran"
    model = load_model(artifact)
    # skops itself trusts every scikit-learn estimator; b-hive trusts only what its estimator is made of
    model.estimator.intruder = CreatesFileWhenBuilt(marker) if intruder == "payload" else LogisticRegression()
    skops.io.dump(model.estimator, artifact / ESTIMATOR_FILE)
    record_files_again(artifact)
    expected = "tests.test_training.CreatesFileWhenBuilt" if intruder == "payload" else "LogisticRegression"
    with pytest.raises(ModelError, match=rf"{re.escape(str(artifact / ESTIMATOR_FILE))} holds types .*{expected}"):
        load_model(artifact)
    assert not marker.exists()


def test_pickled_estimator_of_an_older_version_is_not_unpickled(artifacts, tmp_path):
    artifact, marker = artifact_copy(artifacts, tmp_path, "GradientBoosting"), tmp_path / "payload-ran"
    (artifact / ESTIMATOR_FILE).unlink()
    (artifact / PICKLED_ESTIMATOR_FILE).write_bytes(pickle.dumps(CreatesFileWhenUnpickled(marker)))
    # as an older b-hive wrote it: no file list in model.json
    description = json.loads((artifact / MODEL_FILE).read_text())
    del description["files"]
    (artifact / MODEL_FILE).write_text(json.dumps(description))
    expected = rf"{re.escape(str(artifact / PICKLED_ESTIMATOR_FILE))}.*older.*train the model again"
    with pytest.raises(ModelError, match=expected):
        load_model(artifact)
    assert not marker.exists()


def test_gradient_boosting_fits_with_the_weights_in_loss_weight_mode(tiny, tmp_path):
    """The same jets, weights and seed given to scikit-learn by hand give the same trees."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from models.gradient_boosting import summaries

    cfg, directory = tiny
    settings = settings_for(cfg, sampling="loss_weight")
    model = fitting.build(cfg, "GradientBoosting", directory, settings.seed)
    data = fitting.loader(cfg, model, directory, settings)
    model.fit(data, settings, tmp_path / "work")
    batches = list(data.train_batches(0))
    x = np.concatenate([summaries(b, model.groups) for b in batches])
    y = np.concatenate([b["label"] for b in batches])
    w = np.concatenate([b["weight"] for b in batches])
    assert len(np.unique(w)) > 2, "the test needs jets of different weights"
    hp = model.hyperparameters
    by_hand = HistGradientBoostingClassifier(
        max_iter=hp["max_iter"], learning_rate=hp["learning_rate"], max_leaf_nodes=hp["max_leaf_nodes"],
        early_stopping=True, validation_fraction=0.1, n_iter_no_change=10, random_state=settings.seed)
    unweighted = HistGradientBoostingClassifier(**by_hand.get_params()).fit(x, y)
    by_hand.fit(x, y, sample_weight=w)
    np.testing.assert_array_equal(model.estimator.predict_proba(x), by_hand.predict_proba(x))
    assert not np.array_equal(model.estimator.predict_proba(x), unweighted.predict_proba(x))
