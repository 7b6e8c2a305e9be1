"""Permutation importance (bhive.evaluation.importance), the reduced feature snippet and
FeatureImportanceTask, on small generated inputs."""

import csv
import json
from types import SimpleNamespace

import luigi
import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from bhive import dataset
from bhive.config import load_config
from bhive.evaluation import importance
from bhive.evaluation.reduced_features import (
    ReducedFeaturesError,
    reduced_features,
    reduced_yaml,
)
from bhive.inference import scoring_loader
from bhive.plugins.model import InputSpec, TrainingSettings, load_model
from models.gradient_boosting import GradientBoosting
from tests.deepntuple_files import unit_config, write_config

SPEC = InputSpec(features={"global": ("x", "noise_1", "noise_2"), "cpf": ("a", "b")}, n_candidates={"cpf": 4},
                 classes=("b", "l"))
BVSL = {"BvsL": SimpleNamespace(signal=["b"], background=["l"])}


def toy_jets(n: int, seed: int, weighted: bool = False) -> importance.Jets:
    """b (label 0) and light (label 1) jets: only the global feature x tells them apart;
    the other globals and the candidates (a random number per jet, zero-padded) are noise."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    x = 1.5 * (label == 0) + rng.normal(size=n)
    mask = np.arange(4) < rng.integers(0, 5, n)[:, None]
    cpf = rng.normal(size=(n, 4, 2)) * mask[..., None]
    inputs = {"global": np.stack([x, rng.normal(size=n), rng.normal(size=n)], axis=1).astype(np.float32),
              "cpf": cpf.astype(np.float32), "mask_cpf": mask}
    return importance.Jets(inputs, label, rng.uniform(0.2, 2.0, n) if weighted else None)


class ToyData:
    """The two methods of a dataloader GradientBoosting.fit calls, over toy jets."""

    def __init__(self, jets: importance.Jets) -> None:
        self.batch = {**jets.inputs, "label": jets.label, "weight": np.ones(len(jets), np.float32)}

    def train_batches(self, epoch):
        yield self.batch

    def validation_batches(self):
        return iter(())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = GradientBoosting(SPEC, max_iter=30)
    model.fit(ToyData(toy_jets(4000, seed=1)), TrainingSettings(seed=0), tmp_path_factory.mktemp("fit"))
    return model


def test_the_informative_feature_ranks_first_and_noise_near_zero(trained):
    jets = toy_jets(3000, seed=2)
    result = importance.measure_importance(trained, jets, BVSL, repeats=3, seed=7)

    # the nominal AUC is scikit-learn's on the model's scores of the same jets
    scores = trained.predict(importance.batches(jets.inputs, jets.label, 1000))
    assert result.nominal["BvsL"] == pytest.approx(roc_auc_score(jets.label == 0, scores[:, 0]), abs=1e-12)

    features = importance.ranking(result, "BvsL", whole_groups=False)
    assert (features[0]["group"], features[0]["feature"], features[0]["rank"]) == ("global", "x", 1)
    assert features[0]["auc_loss"] > 0.2 and features[0]["auc_loss"] > 10 * features[0]["std"]
    for row in features[1:]:
        assert abs(row["auc_loss"]) < 0.02, row
    assert [row["rank"] for row in features] == list(range(1, 6))
    groups = importance.ranking(result, "BvsL", whole_groups=True)
    assert groups[0]["group"] == "global" and abs(groups[1]["auc_loss"]) < 0.02

    # one repeat by hand: the same shuffle, scored and measured with scikit-learn
    index = importance.targets(SPEC, ("global", "cpf")).index(importance.Target("global", "x"))
    shuffled = jets.inputs["global"].copy()
    order = np.random.default_rng([7, 1, 2, index]).permutation(len(jets))
    shuffled[:, 0] = shuffled[order, 0]
    permuted_scores = trained.predict([{**jets.inputs, "global": shuffled}])
    by_hand = result.nominal["BvsL"] - roc_auc_score(jets.label == 0, permuted_scores[:, 0])
    x_row = next(row for row in features if row["feature"] == "x")
    assert x_row["losses"][2] == pytest.approx(by_hand, abs=1e-12)


def test_a_torch_model_scoring_with_one_feature_loses_nothing_to_the_others():
    """A PyTorch model, through its own predict, whose b logit is 2 x and whose other inputs
    have zero weight: shuffling them cannot change a score."""
    import torch

    from bhive.plugins.model import model_class

    spec = InputSpec(features={"global": SPEC.features["global"]}, n_candidates={}, classes=("b", "l"))
    model = model_class("DNN").create(spec, hidden=[], dropout=0.0)
    (linear,) = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[0, 0] = 2.0
    toy = toy_jets(2000, seed=8)
    jets = importance.Jets({"global": toy.inputs["global"]}, toy.label)
    result = importance.measure_importance(model, jets, BVSL, repeats=3, seed=0)
    x = jets.inputs["global"][:, 0]
    assert result.nominal["BvsL"] == pytest.approx(roc_auc_score(jets.label == 0, x), abs=1e-12)
    features = importance.ranking(result, "BvsL", whole_groups=False)
    assert features[0]["feature"] == "x" and features[0]["auc_loss"] > 0.2
    assert [(row["auc_loss"], row["std"]) for row in features[1:]] == [(0.0, 0.0), (0.0, 0.0)]


def test_repeats_give_a_spread_and_a_seed_gives_one_result(trained):
    jets = toy_jets(1500, seed=3)
    first = importance.measure_importance(trained, jets, BVSL, repeats=4, seed=11)
    again = importance.measure_importance(trained, jets, BVSL, repeats=4, seed=11)
    other = importance.measure_importance(trained, jets, BVSL, repeats=4, seed=12)
    x = importance.Target("global", "x")
    assert first.losses[x].shape == (4, 1)
    for target in first.losses:
        np.testing.assert_array_equal(first.losses[target], again.losses[target])
    assert not np.array_equal(first.losses[x], other.losses[x])
    row = next(r for r in importance.ranking(first, "BvsL", False) if r["feature"] == "x")
    assert row["std"] == pytest.approx(np.std(first.losses[x][:, 0], ddof=1)) and row["std"] > 0
    with pytest.raises(importance.ImportanceError, match="--repeats 1.*at least 2"):
        importance.measure_importance(trained, jets, BVSL, repeats=1, seed=11)


def test_event_weights_enter_the_auc(trained):
    jets = toy_jets(1500, seed=4, weighted=True)
    result = importance.measure_importance(trained, jets, BVSL, repeats=2, seed=1)
    scores = trained.predict(importance.batches(jets.inputs, jets.label, 512))
    expected = roc_auc_score(jets.label == 0, scores[:, 0], sample_weight=jets.event_weight)
    assert result.nominal["BvsL"] == pytest.approx(expected, abs=1e-12) and result.event_weighted


def test_a_candidate_feature_is_shuffled_among_real_candidates_per_slot():
    jets = toy_jets(500, seed=5)
    shuffled = importance.permuted(jets.inputs, SPEC, importance.Target("cpf", "b"), np.random.default_rng(0))
    before, after, mask = jets.inputs["cpf"], shuffled["cpf"], jets.inputs["mask_cpf"]
    assert shuffled["mask_cpf"] is mask and shuffled["global"] is jets.inputs["global"]
    assert (after[~mask] == 0).all()                                     # padding stays padding
    np.testing.assert_array_equal(after[..., 0], before[..., 0])         # the other feature is untouched
    for slot in range(4):                                                # each slot keeps its real values
        real = mask[:, slot]
        np.testing.assert_array_equal(np.sort(after[real, slot, 1]), np.sort(before[real, slot, 1]))
    assert not np.array_equal(after[..., 1], before[..., 1])
    assert np.array_equal(jets.inputs["cpf"], before)                    # the input is not changed


def test_a_whole_group_moves_with_its_mask():
    jets = toy_jets(300, seed=6)
    shuffled = importance.permuted(jets.inputs, SPEC, importance.Target("cpf"), np.random.default_rng(3))
    order = np.random.default_rng(3).permutation(300)
    np.testing.assert_array_equal(shuffled["cpf"], jets.inputs["cpf"][order])
    np.testing.assert_array_equal(shuffled["mask_cpf"], jets.inputs["mask_cpf"][order])
    assert (shuffled["cpf"][~shuffled["mask_cpf"]] == 0).all()
    assert shuffled["global"] is jets.inputs["global"]


def test_the_reduced_snippet_keeps_the_top_features_in_config_order(tmp_path):
    config = unit_config(tmp_path, global_features=["jet_pt", "jet_eta", "npv", "jet_mass"],
                         cpf_custom_features={"log_cand_pt": "np.log(pfcand_pt)"})
    write_config(tmp_path, "unit", config)
    cfg = load_config("unit", config_dir=tmp_path)
    scores = {("global", "jet_pt"): 0.01, ("global", "jet_eta"): 0.0, ("global", "npv"): 0.2,
              ("global", "jet_mass"): 0.3, ("global", "log_pt"): 0.1, ("cpf", "pfcand_pt"): 0.0,
              ("cpf", "pfcand_sip"): 0.4, ("cpf", "log_cand_pt"): 0.3}
    keys, kept = reduced_features(scores, cfg, top=2)
    # the top two of each group, in the config's order, under the config's keys; pt and eta stay
    assert keys == {"global_features": ["jet_pt", "jet_eta", "npv", "jet_mass"], "global_custom_features": {},
                    "cpf_candidates": ["pfcand_sip"], "cpf_custom_features": {"log_cand_pt": "np.log(pfcand_pt)"}}
    assert kept == ["jet_pt", "jet_eta"]
    keys, _ = reduced_features(scores, cfg, top=3)
    assert keys["global_features"] == ["jet_pt", "jet_eta", "npv", "jet_mass"]
    assert keys["global_custom_features"] == {"log_pt": "np.log(jet_pt)"}
    text = reduced_yaml(scores, cfg, 2, "a test", skipped_groups=["vtx"])
    assert yaml.safe_load(text) == reduced_features(scores, cfg, 2)[0]
    assert list(yaml.safe_load(text)) == ["global_features", "global_custom_features", "cpf_candidates",
                                          "cpf_custom_features"]
    assert "pt_key and eta_key): jet_pt, jet_eta" in text and "left out: vtx" in text
    # pasted over the config's keys, the snippet gives a valid config
    write_config(tmp_path, "reduced", {**config, **yaml.safe_load(text)})
    reduced = load_config("reduced", config_dir=tmp_path)
    assert reduced.global_custom_features == {} and reduced.candidate_groups["cpf"].features == ("pfcand_sip",)
    with pytest.raises(ReducedFeaturesError, match="--top 0"):
        reduced_features(scores, cfg, top=0)
    with pytest.raises(ReducedFeaturesError, match="sv_energy.*not in the config"):
        reduced_features({**scores, ("vtx", "sv_energy"): 1.0}, cfg, top=2)


@pytest.mark.slow
def test_feature_importance_task_through_law(tmp_path, monkeypatch, store):
    from tasks.importance import FeatureImportanceTask
    from tasks.training import TrainingTask
    from tests.test_training_tasks import configure

    configure(tmp_path, monkeypatch)
    task = FeatureImportanceTask(config="unit", version="v1", model_name="GradientBoosting", repeats=2,
                                 max_jets=400, top=2, executor="iterative")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    directory = task.local_path()
    result = json.loads((directory / importance.IMPORTANCE).read_text())
    assert (result["repeats"], result["max_jets"], result["top"], result["n_jets"]) == (2, 400, 2, 400)
    ranked = result["discriminators"]["BvsL"]
    names = [(row["group"], row["feature"]) for row in ranked["features"]]
    assert sorted(names) == sorted([("global", f) for f in ("jet_pt", "jet_eta", "npv", "log_pt")]
                                   + [("cpf", f) for f in ("pfcand_pt", "pfcand_sip")]
                                   + [("vtx", f) for f in ("sv_mass", "sv_dxysig")])
    losses = [row["auc_loss"] for row in ranked["features"]]
    assert losses == sorted(losses, reverse=True) and [r["rank"] for r in ranked["features"]] == list(range(1, 9))
    assert {row["group"] for row in ranked["groups"]} == {"global", "cpf", "vtx"}

    # the nominal AUC is scikit-learn's on the same seeded subset of the test jets
    model = load_model(TrainingTask.req(task).local_path("model"))
    test_dir = task.requires()["test"].output_directory()
    loader = scoring_loader(task.cfg, model, test_dir)
    jets = importance.select_jets(loader, 400, task.seed)
    # a seeded subset of the dataset's rows, as stored, padding and masks included
    stored = [dataset.open_shard(test_dir, shard["name"]) for shard in dataset.load_meta(test_dir)["shards"]]
    stored_rows = {row.tobytes() for shard in stored for row in np.asarray(shard["global"])}
    assert len(jets) == 400 and all(row.tobytes() in stored_rows for row in jets.inputs["global"])
    assert (jets.inputs["cpf"][~jets.inputs["mask_cpf"]] == 0).all()
    np.testing.assert_array_equal(importance.select_jets(loader, 400, task.seed).inputs["cpf"], jets.inputs["cpf"])
    assert len(importance.select_jets(loader, 10**9, task.seed)) == len(stored_rows)
    scores = model.predict(importance.batches(jets.inputs, jets.label, 4096))
    used = jets.label != 1
    bvsl = scores[used, 0] / (scores[used, 0] + scores[used, 2])
    assert ranked["nominal_auc"] == pytest.approx(roc_auc_score(jets.label[used] == 0, bvsl), abs=1e-12)

    with open(directory / importance.TABLE, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 8 + 3 and rows[0]["rank"] == "1" and rows[0]["feature"] == ranked["features"][0]["feature"]
    reduced = yaml.safe_load((directory / importance.REDUCED).read_text())
    assert list(reduced) == ["global_features", "global_custom_features", "cpf_candidates", "vtx_features"]
    assert reduced["cpf_candidates"] == [f for f in ("pfcand_pt", "pfcand_sip")
                                         if f in [n for g, n in names if g == "cpf"][:2]]
    assert {"jet_pt", "jet_eta"} <= set(reduced["global_features"])
    assert (directory / "plots" / "BvsL.png").exists() and (directory / "plots" / "BvsL.pdf").exists()

    from bhive.config import ConfigError
    from bhive.identity import VersionConflictError

    with pytest.raises(ConfigError, match="drop --test-attack"):
        FeatureImportanceTask(config="unit", version="v1", model_name="GradientBoosting", test_attack="fgsm").requires()
    # a version names one result: other repeats need another version

    with pytest.raises(VersionConflictError, match="settings.repeats: 2 -> 3"):
        FeatureImportanceTask(config="unit", version="v1", model_name="GradientBoosting", repeats=3,
                              max_jets=400, top=2, executor="iterative").complete()
