"""InferenceTask, ROCCurveTask, WorkingPointTask and EvaluationTask on a small generated config."""

import json

import luigi
import pytest
import numpy as np
import uproot
from sklearn.metrics import roc_auc_score

from bhive.discriminators import discriminator
from bhive import inference
from tasks.evaluation import (ComparisonTask, EvaluationTask, FeatureDistributionTask, InferenceTask,
                              ROCCurveTask, ScoreDistributionTask, WorkingPointTask)
from tests.test_training_tasks import configure


@pytest.mark.slow
def test_evaluation_chain(tmp_path, monkeypatch, store):
    configure(tmp_path, monkeypatch)
    task = EvaluationTask(config="unit", version="v1", model_name="DNN", compare="v1/GradientBoosting",
                          executor="iterative")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")

    scored = InferenceTask.req(task).local_path()
    predictions = inference.read_predictions(scored)
    arrays, info = predictions["arrays"], predictions["info"]
    assert info["classes"] == ["isB", "isC", "isL"] and arrays["scores"].shape == (info["n_jets"], 3)
    tree = uproot.open(scored / "scores.root")["scores"]
    assert tree.num_entries == info["n_jets"]
    np.testing.assert_allclose(tree["prob_isB"].array(library="np"), arrays["scores"][:, 0])
    assert "ref_OldTagger_BvsL" in tree.keys()

    # the AUC in the outputs equals scikit-learn's on the same arrays
    aucs = json.loads(ROCCurveTask.req(task).local_path("aucs.json").read_text())["auc"]
    values = discriminator(arrays["scores"], info["classes"], ["isB"], ["isL"])
    used = arrays["label"] != 1
    # equal up to the order of floating-point sums (trapezoids here, scikit-learn's own there)
    assert aucs["BvsL"]["all"] == pytest.approx(roc_auc_score(arrays["label"][used] == 0, values[used]), rel=1e-12)
    assert set(aucs["BvsL"]) >= {"all", "ttbar", "qcd"}
    assert (ROCCurveTask.req(task).local_path("roc") / "BvsL.pdf").exists()

    # each working point's mis-id on the evaluated jets is at most its target
    points = json.loads(WorkingPointTask.req(task).local_path("working_points.json").read_text())
    for point in points:
        background = used & (arrays["label"] == 2)
        measured = np.mean(values[background] >= point["threshold"])
        assert measured == point["misid"] <= point["target_misid"]
        assert len(point["efficiency_vs_pt"]) == 4

    summary = json.loads(task.local_path("summary.json").read_text())
    assert summary["auc"]["BvsL"]["all"] == aucs["BvsL"]["all"]
    assert "| BvsL | all | loose |" in task.local_path("summary.md").read_text()

    # comparison: this training, the other training and the reference tagger of the inputs
    comparison = json.loads(ComparisonTask.req(task).local_path("comparison.json").read_text())
    assert set(comparison["BvsL"]) == {"DNN (v1)", "GradientBoosting (v1)", "OldTagger (reference)"}
    reference_auc = roc_auc_score(arrays["label"][used] == 0, arrays["extras"][used, 0])
    assert comparison["BvsL"]["OldTagger (reference)"] == pytest.approx(reference_auc, rel=1e-12)
    assert (ComparisonTask.req(task).local_path("roc") / "BvsL.png").exists()

    # confusion matrix rows are fractions of each true class, equal to a hand count
    confusion = json.loads(ScoreDistributionTask.req(task).local_path("confusion.json").read_text())
    predicted = arrays["scores"].argmax(axis=1)
    for true_class in range(3):
        chosen = arrays["label"] == true_class
        expected = np.bincount(predicted[chosen], minlength=3) / chosen.sum()
        np.testing.assert_allclose(confusion["matrix"][true_class], expected)
    features = FeatureDistributionTask.req(task).local_path()
    assert (features / "cpf_weighted.png").exists() and (features / "global_unweighted.npz").exists()
    assert "## Comparison" in task.local_path("summary.md").read_text()
    assert (task.local_path("plots") / "loss.pdf").exists()


def test_working_points_from_the_config(tmp_path):
    import pytest

    from bhive.config import ConfigError, load_config
    from tests.deepntuple_files import unit_config, write_config

    write_config(tmp_path, "wp", unit_config(tmp_path, working_points={"BvsL": {"medium": 0.01, "tight": 0.001}}))
    assert load_config("wp", config_dir=tmp_path).working_points == {"BvsL": {"medium": 0.01, "tight": 0.001}}
    write_config(tmp_path, "wp", unit_config(tmp_path, working_points={"BvsL": {"medium": 1.5}}))
    with pytest.raises(ConfigError, match="working_points.BvsL.medium"):
        load_config("wp", config_dir=tmp_path)
    write_config(tmp_path, "wp", unit_config(tmp_path, working_points={"BvsX": {"medium": 0.01}}))
    with pytest.raises(ConfigError, match="working_points.BvsX"):
        load_config("wp", config_dir=tmp_path)


@pytest.mark.slow
def test_scoring_another_configs_dataset(tmp_path, monkeypatch, store, caplog):
    import logging

    from tests.deepntuple_files import unit_config, write_config

    configure(tmp_path, monkeypatch)
    samples = tmp_path / "samples"
    write_config(tmp_path / "configs", "other", unit_config(samples, bins_pt=[30.0, 100.0, 1000.0]))
    task = InferenceTask(config="unit", version="v1", model_name="DNN", test_config="other", executor="iterative")
    assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
    assert task.local_path().parts[-3] == "other-v1"
    assert inference.read_predictions(task.local_path())["info"]["dataset"].count("/other/") == 1

    # a training of the other config, compared on this config's test jets
    comparison = ComparisonTask(config="unit", version="v1", model_name="DNN", compare="other:v1/DNN",
                                executor="iterative")
    assert luigi.build([comparison], local_scheduler=True, workers=1, log_level="WARNING")
    result = json.loads(comparison.local_path("comparison.json").read_text())
    assert set(result["BvsL"]) == {"DNN (v1)", "other: DNN (v1)", "OldTagger (reference)"}

    write_config(tmp_path / "configs", "fewer", unit_config(samples, global_features=["jet_pt", "jet_eta"]))
    mismatch = InferenceTask(config="unit", version="v1", model_name="DNN", test_config="fewer", executor="iterative")
    with caplog.at_level(logging.WARNING):
        assert not luigi.build([mismatch], local_scheduler=True, workers=1, log_level="WARNING")
    assert "trained on global features" in caplog.text and not mismatch.complete()


@pytest.mark.slow
def test_a_test_dataset_that_selected_the_epoch_is_refused_unless_allowed(tmp_path, monkeypatch, store):
    configure(tmp_path, monkeypatch)
    common = dict(config="unit", version="v1", model_name="DNN", executor="iterative", validation_dataset_version="v1")
    refused = InferenceTask(**common)
    assert refused.validation_on_test()
    assert not luigi.build([refused], local_scheduler=True, workers=1, log_level="WARNING")
    assert not refused.complete()

    evaluation = EvaluationTask(**common, allow_validation_on_test=True)
    assert luigi.build([evaluation], local_scheduler=True, workers=1, log_level="WARNING")
    assert "biased" in json.loads(evaluation.local_path("summary.json").read_text())["notes"][0]
    assert "> **Note:** the test dataset also selected" in evaluation.local_path("summary.md").read_text()
    # another test dataset version is no overlap
    assert not InferenceTask(**{**common, "test_dataset_version": "v2"}).validation_on_test()
