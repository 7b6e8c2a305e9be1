"""Regression targets next to the flavour: config, dataset arrays, losses, models, inference,
ONNX and the refusals, each checked against a computation by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dataloaders  # noqa: F401  (registers the loaders)
import models  # noqa: F401  (registers the models)
from bhive import dataset, inference, training
from bhive.config import ConfigError, load_config
from bhive.evaluation import regression as regression_evaluation
from bhive.plugins.dataloader import LoaderSettings, dataloader_class
from bhive.plugins.model import InputSpec, ModelError, RegressionTarget, load_model
from bhive.training.regression import per_jet_loss
from models.torch_model import TorchModel
from tests.deepntuple_files import unit_config, write_config
from tests.training_data import tiny_dataset

# an exact function of an input (jet_pt), missing (NaN) for about a third of the jets, and
# as three quantiles a spread quantity the DNN does not see (the summed candidate pt)
TARGETS = {
    "scaled_pt": {"expression": "np.where(npv > 31, np.nan, 0.5 * jet_pt + 3)", "baseline": "jet_pt"},
    "score": {"expression": "ak.sum(pfcand_pt, axis=1)", "loss": "quantile", "quantiles": [0.16, 0.5, 0.84], "weight": 0.5},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, dataset, trained DNN directory) for TARGETS, trained for a few epochs."""
    root = tmp_path_factory.mktemp("regression")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cfg, directory = tiny_dataset(root, monkeypatch, n_jets=3000, regression_targets=TARGETS)
        settings = training.training_settings(cfg, epochs=25, batch_size=128, learning_rate=3e-3, seed=3)
        training.train_here(cfg, "DNN", directory, root / "out", settings)
        yield cfg, directory, root / "out" / training.ARTIFACT


def _config(tmp_path: Path, monkeypatch, **overrides):
    write_config(tmp_path / "configs", "unit", unit_config(tmp_path / "samples", **overrides))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))
    return load_config("unit")


# -- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("target, message", [
    ({"branch": "jet_pt", "expression": "jet_pt"}, "exactly one of 'branch'"),
    ({"loss": "mse"}, "exactly one of 'branch'"),
    ({"branch": "jet_pt", "loss": "quantile"}, "needs the quantiles"),
    ({"branch": "jet_pt", "loss": "quantile", "quantiles": [0.84, 0.16]}, "increasing"),
    ({"branch": "jet_pt", "loss": "quantile", "quantiles": [0.5, 1.0]}, "0 < q < 1"),
    ({"branch": "jet_pt", "quantiles": [0.5]}, "only used with 'loss: quantile'"),
    ({"branch": "jet_pt", "loss": "l1"}, "mse"),
    ({"branch": "jet_pt", "weight": 0}, "weight > 0"),
    ({"expression": "__import__('os').system('true')"}, "regression_targets"),
    ({"branch": "jet_pt", "baseline": "open('/etc/passwd')"}, "regression_targets"),
    ({"branch": "jet_pt", "factor": 2}, "factor"),
])
def test_a_wrong_target_is_one_error_naming_the_key(tmp_path, monkeypatch, target, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        _config(tmp_path, monkeypatch, regression_targets={"gen": target})
    assert "regression_targets" in str(error.value)


def test_target_branches_are_read_from_every_file(tmp_path, monkeypatch) -> None:
    cfg = _config(tmp_path, monkeypatch, regression_targets={
        "a": {"branch": "gen_pt"}, "b": {"expression": "gen_pt / jet_pt", "baseline": "raw_pt * 1.0"}})
    assert {"gen_pt", "jet_pt", "raw_pt"} <= cfg.branches()
    assert list(cfg.regression_targets) == ["a", "b"] and cfg.regression_targets["a"].loss == "mse"


def test_simulation_configs_check_target_branches_against_what_the_simulation_writes() -> None:
    import yaml

    cfg = load_config("hlt_ak4")
    assert cfg.regression_targets == {}
    path = Path(cfg.path).with_name("hlt_ak4.yml")
    raw = yaml.safe_load(path.read_text())
    raw["regression_targets"] = {"gen": {"branch": "gen_ptt"}}
    broken = path.with_name("broken_regression.yml")
    broken.write_text(yaml.safe_dump(raw))
    try:
        with pytest.raises(ConfigError, match="gen_ptt"):
            load_config(broken)
    finally:
        broken.unlink()


# -- dataset -------------------------------------------------------------------------------

def test_jets_without_a_valid_target_are_kept_and_marked_nan(tmp_path, monkeypatch) -> None:
    _, plain = tiny_dataset(tmp_path / "plain", monkeypatch, n_jets=600)
    cfg, directory = tiny_dataset(tmp_path / "targets", monkeypatch, n_jets=600, regression_targets=TARGETS)
    meta, plain_meta = dataset.load_meta(directory), dataset.load_meta(plain)
    assert meta["n_jets"] == plain_meta["n_jets"]  # nobody is dropped for a missing target
    assert meta["targets"] == ["scaled_pt", "score"]
    target, baseline, kinematics, npv = [], [], [], []
    for shard in meta["shards"]:
        arrays = dataset.open_shard(directory, shard["name"])
        target.append(arrays["target"])
        baseline.append(arrays["target_baseline"])
        kinematics.append(arrays["kinematics"])
        npv.append(arrays["global"][:, meta["features"]["global"].index("npv")])
    target, baseline = np.concatenate(target), np.concatenate(baseline)
    pt, npv = np.concatenate(kinematics)[:, 0], np.concatenate(npv)
    assert target.shape == (meta["n_jets"], 2) and target.dtype == np.float32
    missing = npv > 31
    assert 0 < missing.sum() < len(npv)
    assert np.isnan(target[missing, 0]).all()
    np.testing.assert_allclose(target[~missing, 0], 0.5 * pt[~missing] + 3, rtol=1e-6)
    # the summed pt of all candidates: that of the 5 kept ones where a jet has fewer
    cpf = [dataset.open_shard(directory, s["name"]) for s in meta["shards"]]
    kept = np.concatenate([(shard["cpf"][..., 0] * shard["mask_cpf"]).sum(axis=1) for shard in cpf])
    full = np.concatenate([shard["mask_cpf"].sum(axis=1) for shard in cpf]) == 5
    np.testing.assert_allclose(target[~full, 1], kept[~full], rtol=1e-5, atol=1e-4)
    assert np.all(target[full, 1] >= kept[full] - 1e-4)
    np.testing.assert_array_equal(baseline[:, 0], pt)
    assert np.isnan(baseline[:, 1]).all()  # no baseline configured
    assert meta["valid_targets"] == {"scaled_pt": int((~missing).sum()), "score": meta["n_jets"]}


def test_a_loader_asked_for_targets_of_a_dataset_without_them_says_so(tmp_path, monkeypatch) -> None:
    cfg, directory = tiny_dataset(tmp_path, monkeypatch, n_jets=300)
    with pytest.raises(ValueError, match="no regression targets"):
        dataloader_class(cfg.dataloader)(directory, ("global", "target"), cfg.classes, LoaderSettings())


# -- losses --------------------------------------------------------------------------------

def _specs() -> tuple[RegressionTarget, ...]:
    return (RegressionTarget("a", "mse", weight=2.0), RegressionTarget("b", "huber", huber_delta=0.5),
            RegressionTarget("c", "quantile", (0.25, 0.5, 0.9), weight=0.5))


def test_losses_equal_the_formulas_by_hand() -> None:
    rng = np.random.default_rng(1)
    outputs, true = rng.normal(size=(50, 5)), rng.normal(size=(50, 3))
    got = per_jet_loss(torch.tensor(outputs), torch.tensor(true), _specs()).numpy()
    mse = (outputs[:, 0] - true[:, 0]) ** 2
    d = np.abs(outputs[:, 1] - true[:, 1])
    huber = np.where(d < 0.5, 0.5 * d**2, 0.5 * (d - 0.25))
    pinball = sum(np.where(true[:, 2] >= outputs[:, 2 + i], q * (true[:, 2] - outputs[:, 2 + i]),
                           (1 - q) * (outputs[:, 2 + i] - true[:, 2])) for i, q in enumerate((0.25, 0.5, 0.9)))
    np.testing.assert_allclose(got, 2 * mse + huber + 0.5 * pinball, rtol=1e-5)


def test_masked_targets_contribute_nothing_to_the_loss_or_its_gradient() -> None:
    rng = np.random.default_rng(2)
    outputs = torch.tensor(rng.normal(size=(40, 5)), requires_grad=True)
    true = torch.tensor(rng.normal(size=(40, 3)))
    masked = torch.tensor(rng.random((40, 3)) < 0.4)
    with_nan = torch.where(masked, torch.tensor(float("nan"), dtype=true.dtype), true)
    loss = per_jet_loss(outputs, with_nan, _specs())
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    gradient = outputs.grad.clone()
    assert torch.isfinite(gradient).all()
    # the output columns of each target: 0 | 1 | 2-4
    columns = [[0], [1], [2, 3, 4]]
    for target, cols in enumerate(columns):
        for col in cols:
            assert (gradient[masked[:, target], col] == 0).all()
    # any other value in place of the masked ones gives the loss of the valid ones alone
    outputs.grad = None
    by_hand = per_jet_loss(outputs.detach(), true, _specs())
    for target, spec in enumerate(_specs()):
        alone = per_jet_loss(outputs.detach()[:, sum(len(c) for c in columns[:target]):][:, :spec.n_outputs],
                             true[:, target:target + 1], (spec,))
        by_hand = by_hand - torch.where(masked[:, target], alone, torch.zeros_like(alone))
    torch.testing.assert_close(loss.detach(), by_hand)


# -- training, inference, ONNX -------------------------------------------------------------

def test_an_exact_function_of_the_inputs_is_learnt(trained) -> None:
    cfg, directory, artifact = trained
    model = load_model(artifact)
    loader = dataloader_class(cfg.dataloader)(directory, ("global",), cfg.classes,
                                              LoaderSettings(batch_size=512, validation_fraction=0))
    outputs = model.predict_outputs(loader.inference_batches())
    true = np.concatenate([dataset.open_shard(directory, s["name"])["target"]
                           for s in dataset.load_meta(directory)["shards"]])
    valid = np.isfinite(true[:, 0])
    relative = np.abs(outputs["regression"][valid, 0] / true[valid, 0] - 1)
    # a few percent, against the ~50% of the best constant: the function is learnt
    constant = np.median(np.abs(np.median(true[valid, 0]) / true[valid, 0] - 1))
    assert np.median(relative) < min(0.06, 0.15 * constant), (np.median(relative), constant)
    # quantiles of a spread target: ordered, and covering their share of the true values
    quantiles = outputs["regression"][:, 1:4]
    assert np.mean(np.all(np.diff(quantiles, axis=1) > 0, axis=1)) > 0.95
    below = (true[:, 1:2] < quantiles).mean(axis=0)
    np.testing.assert_allclose(below, [0.16, 0.5, 0.84], atol=0.07)
    assert outputs["scores"].shape == (len(true), 3)
    np.testing.assert_allclose(outputs["scores"].sum(axis=1), 1, rtol=1e-9)


def test_scores_carry_the_regression_and_its_evaluation(trained, tmp_path) -> None:
    import uproot

    cfg, directory, artifact = trained
    predictions = inference.predict_dataset(cfg, artifact, directory)
    assert predictions["info"]["regression"] == [
        {"name": "scaled_pt", "loss": "mse", "quantiles": [], "columns": [0]},
        {"name": "score", "loss": "quantile", "quantiles": [0.16, 0.5, 0.84], "columns": [1, 2, 3]}]
    inference.write_predictions(tmp_path / "scores", predictions)
    back = inference.read_predictions(tmp_path / "scores")
    for name in ("regression", "target", "target_baseline"):
        np.testing.assert_array_equal(back["arrays"][name], predictions["arrays"][name])
    tree = uproot.open(tmp_path / "scores" / inference.ROOT_FILE)["scores"]
    np.testing.assert_allclose(tree["pred_score_q500"].array(library="np"), back["arrays"]["regression"][:, 2],
                               rtol=1e-6)
    np.testing.assert_array_equal(tree["true_scaled_pt"].array(library="np"), back["arrays"]["target"][:, 0])

    tables = regression_evaluation.write_regression(back, cfg.bins_pt, cfg.bins_eta, tmp_path / "evaluation")
    assert (tmp_path / "evaluation" / regression_evaluation.REGRESSION_FILE).exists()
    # the "all" median response by hand, over the jets with a true value
    arrays = back["arrays"]
    valid = np.isfinite(arrays["target"][:, 0]) & (arrays["label"] >= 0)
    response = arrays["regression"][valid, 0] / arrays["target"][valid, 0]
    expected = np.quantile(response, 0.5, method="inverted_cdf")
    assert tables["scaled_pt"]["classes"]["all"]["integrated"]["regressed"]["median"] == pytest.approx(expected)
    # the baseline (jet_pt for 0.5 jet_pt + 3) responds near 2 and is reported beside it
    assert tables["scaled_pt"]["classes"]["all"]["integrated"]["baseline"]["median"] > 1.5


def test_onnx_has_named_outputs_for_both_heads(trained, tmp_path) -> None:
    import onnxruntime

    cfg, directory, artifact = trained
    model = load_model(artifact)
    loader = dataloader_class(cfg.dataloader)(directory, ("global",), cfg.classes,
                                              LoaderSettings(batch_size=64, validation_fraction=0))
    batch = next(iter(loader.inference_batches()))
    report = model.export_onnx(tmp_path / "model.onnx", batch, 1e-4)
    assert report["passed"] and report["outputs"] == ["probabilities", "regression"]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    probabilities, values = session.run(["probabilities", "regression"], {"global": batch["global"]})
    expected = model.predict_outputs([batch])
    np.testing.assert_allclose(probabilities, expected["scores"], atol=1e-5)
    np.testing.assert_allclose(values, expected["regression"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["DeepJet", "ParticleNet", "ParticleTransformer"])
def test_every_architecture_puts_both_heads_on_its_embedding(name) -> None:
    from bhive.plugins.model import model_class

    features = {"global": ("jet_pt", "jet_eta", "npv"), "cpf": ("pt", "eta", "phi", "sip"), "vtx": ("mass", "sig")}
    spec = InputSpec(features, {"cpf": 6, "vtx": 2}, ("b", "c", "l"), _specs())
    settings = {"ParticleNet": {"coordinates": ["eta", "phi"], "k": 3, "conv_channels": [[8, 8]], "fc": [16]},
                "ParticleTransformer": {"four_vector": {"pt": "pt", "eta": "eta", "phi": "phi"},
                                        "embed_dims": [16], "pair_embed_dims": [8], "num_heads": 2, "num_blocks": 1,
                                        "num_class_blocks": 1}}.get(name, {})
    torch.manual_seed(0)
    model = model_class(name).create(spec, **settings).eval()
    rng = np.random.default_rng(0)
    batch = {"global": torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float32),
             "cpf": torch.tensor(rng.normal(size=(5, 6, 4)), dtype=torch.float32),
             "mask_cpf": torch.tensor(np.arange(6)[None] < np.array([6, 3, 1, 2, 5])[:, None]),
             "vtx": torch.tensor(rng.normal(size=(5, 2, 2)), dtype=torch.float32),
             "mask_vtx": torch.tensor(np.arange(2)[None] < np.array([0, 1, 2, 1, 0])[:, None])}
    with torch.no_grad():
        embedding = model.embed(batch)
        logits, outputs = model(batch, regression=True)
    assert embedding.shape[0] == 5 and embedding.ndim == 2
    torch.testing.assert_close(logits, model.head(embedding))
    torch.testing.assert_close(outputs, model.regression_head(embedding))
    assert outputs.shape == (5, 5)
    torch.testing.assert_close(model(batch), logits)


def test_gradient_boosting_refuses_regression_targets_by_name(trained) -> None:
    cfg, directory, _ = trained
    with pytest.raises(ModelError, match="GradientBoosting.*scaled_pt, score"):
        training.build(cfg, "GradientBoosting", directory)


def test_a_model_with_its_own_forward_refuses_targets_but_classifies() -> None:
    class OwnForward(TorchModel):
        registered = False
        input_groups = ("global",)

        def __init__(self, spec) -> None:
            super().__init__(spec)
            self.linear = torch.nn.Linear(spec.n_features("global"), spec.n_classes)

        def forward(self, batch):
            return self.linear(batch["global"])

    plain = InputSpec({"global": ("a", "b")}, {}, ("b", "l"))
    OwnForward.create(plain)
    with pytest.raises(ModelError, match="OwnForward.*gen_pt.*embed"):
        OwnForward.create(InputSpec({"global": ("a", "b")}, {}, ("b", "l"), (RegressionTarget("gen_pt"),)))


def test_the_config_must_name_the_dataset_targets(trained) -> None:
    cfg, directory, _ = trained
    meta = dataset.load_meta(directory)
    with pytest.raises(ModelError, match="regression_targets"):
        InputSpec.from_meta(meta, cfg.classes, {})


def test_dnn_weights_saved_before_the_heads_moved_to_the_base_class_still_load(tmp_path) -> None:
    from models.dnn import DNN

    spec = InputSpec({"global": ("a", "b")}, {}, ("b", "l"))
    torch.manual_seed(0)
    model = DNN.create(spec, hidden=(4,))
    model.save(tmp_path)
    state = torch.load(tmp_path / "weights.pt")
    torch.save({k.replace("head.", "network.", 1): v for k, v in state.items()}, tmp_path / "weights.pt")
    from bhive.plugins.model import file_records
    import json

    description = json.loads((tmp_path / "model.json").read_text())
    description["files"] = file_records(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(description))
    loaded = DNN.load(tmp_path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


@pytest.mark.slow
def test_two_processes_train_the_regression_as_one_does(trained, tmp_path, monkeypatch) -> None:
    """The regression loss is normalised by the whole global batch, as the classification's."""
    cfg, directory, _ = trained
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = training.training_settings(cfg, epochs=2, batch_size=256, device="cpu", seed=4)
    one = training.train(cfg, "DNN", directory, tmp_path / "one", settings)
    two = training.train(cfg, "DNN", directory, tmp_path / "two", settings, devices=2)
    for key in ("loss", "val_loss", "val_regression_loss"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-5)


@pytest.mark.slow
def test_the_tasks_evaluate_the_regression(tmp_path, monkeypatch, store) -> None:
    import json

    import luigi

    from tasks.evaluation import EvaluationTask, RegressionTask
    from tests.deepntuple_files import write_samples
    from tests.test_training_tasks import SMALL

    samples = write_samples(tmp_path / "samples", 600)
    write_config(tmp_path / "configs", "unit", unit_config(
        samples, model_settings=SMALL, training={"epochs": 2, "batch_size": 128}, regression_targets=TARGETS))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))
    task = EvaluationTask(config="unit", version="v1", model_name="DNN", executor="iterative")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    tables = json.loads(RegressionTask.req(task).local_path("regression.json").read_text())
    assert set(tables) == {"scaled_pt", "score"}
    assert (RegressionTask.req(task).local_path("plots") / "score_resolution_vs_pt.png").exists()
    summary = json.loads(task.local_path("summary.json").read_text())
    assert summary["regression"]["scaled_pt"]["all"] == tables["scaled_pt"]["classes"]["all"]["integrated"]
    text = task.local_path("summary.md").read_text()
    assert "## Regression of scaled_pt" in text and "## Regression of score" in text
