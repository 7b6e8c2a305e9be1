"""The deployable package: the metadata in model.onnx survives a round trip through the file,
the package's files, Triton repository and card for a PyTorch model and for GradientBoosting,
and the whole ExportTask -> ProfileTask -> PackageTask chain through law on a small config."""

from __future__ import annotations

import json

import luigi
import numpy as np
import onnx
import onnxruntime
import pytest

from bhive import package, profiling, triton
from bhive.onnx_io import json_value, read_metadata, tensors, write_metadata
from bhive.package.metadata import metadata
from bhive.plugins.model import RegressionTarget
from bhive.store import file_sha256, read_json
from models.base import InputSpec
from models.dnn import DNN
from tests.onnx_models import SPEC, exported, raw_batch

POINTS = [{"discriminator": "BvsL", "working_point": "medium", "derived_on": "all", "target_misid": 0.01,
           "threshold": 0.8125, "efficiency": 0.71, "misid": 0.0098, "efficiency_vs_pt": [0.7, 0.72]},
          {"discriminator": "BvsL", "working_point": "tight", "derived_on": "ttbar", "target_misid": 0.001,
           "threshold": 0.953, "efficiency": 0.52, "misid": float("nan")}]
DATA = {"n_jets": 1000, "counts": {"read": 1200, "kept": 1000, "out_of_range": 200, "no_label": 0, "non_finite": 0},
        "processes": ["ttbar", "qcd"], "files": [{"file": "a.root", "process": 0, "n_jets": 600},
                                                  {"file": "b.root", "process": 1, "n_jets": 400}],
        "jets_per_label": {"b": 300, "c": 200, "uds": 300, "g": 200}, "reference_flavour": "b",
        "bins_pt": [30.0, 1000.0], "bins_eta": [-2.5, 2.5], "event_weight": None,
        "reweighting": {"settings": {"min_count": 0.0}, "labels": {"b": {"jets": 300, "effective_jets": 300.0,
                                                                         "weight_share": 0.3}},
                        "merged_bins": 0, "warnings": []}}


def sources_for(path, check, spec: InputSpec, tmp_path, model: str) -> package.Sources:
    """A package's sources around an exported graph: a real (one-setting) profile, made-up
    evaluation figures and dataset descriptions."""
    batch = raw_batch(n_jets=8)
    profile = profiling.write_profile(path, {k: batch[k] for k in check["inputs"]}, tmp_path / "profile",
                                      batch_sizes=(4,), threads=("1",), seconds=0.0)
    rates = [{**{k: p[k] for k in ("discriminator", "working_point", "derived_on", "threshold")},
              "selection": selection, "efficiency": 0.5, "misid": 0.01} for p in POINTS for selection in ("all", "qcd")]
    return package.Sources(
        config="unit", model=model, onnx=path, check=check,
        description={"spec": spec.to_json(), "classes": {c: [c] for c in spec.classes}, "config_hash": "c0ffee" * 8,
                     "code_version": "0.1.0+abc1234"},
        profile=profile, aucs={"auc": {"BvsL": {"all": 0.93, "ttbar": 0.95, "qcd": 0.9}}, "notes": []},
        working_points=POINTS, charm_working_points=[], rates=rates,
        discriminators={"BvsL": (("b",), ("uds", "g")), "BvsAll": (("b",), ("c", "uds", "g"))},
        training_data=DATA, test_data=DATA, versions={"dataset": "v1", "training": "v2", "test_dataset": "v1"},
        simulated=True)


def test_metadata_round_trip(tmp_path):
    path, check = exported("GradientBoosting", tmp_path / "export")
    entries = metadata(sources_for(path, check, SPEC, tmp_path, "GradientBoosting"))
    written = write_metadata(path, tmp_path / "model.onnx", entries)

    stored = {prop.key: json.loads(prop.value) for prop in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert stored == written == read_metadata(tmp_path / "model.onnx")
    assert stored["features"] == {"global": ["jet_pt", "jet_eta", "npv"], "cpf": ["pfcand_pt", "pfcand_sip"],
                                  "vtx": ["sv_mass", "sv_dxysig", "sv_ntracks"]}
    assert stored["inputs"] == ["global", "cpf", "mask_cpf", "vtx", "mask_vtx"]
    assert stored["n_candidates"] == {"cpf": 6, "vtx": 3} and stored["classes"] == ["b", "c", "uds", "g"]
    assert stored["discriminators"]["BvsL"] == {"signal": ["b"], "background": ["uds", "g"],
                                                "formula": "b / (b + uds + g)"}
    assert [(p["working_point"], p["derived_on"], p["threshold"]) for p in stored["working_points"]] == [
        ("medium", "all", 0.8125), ("tight", "ttbar", 0.953)]
    assert stored["working_points"][1]["misid"] is None  # NaN is not JSON: null
    assert "efficiency_vs_pt" not in stored["working_points"][0]
    assert stored["config"] == "unit" and stored["config_hash"] == "c0ffee" * 8
    assert stored["code_version"] == "0.1.0+abc1234" and stored["packaged_with"].startswith("0.1.0")
    assert "regression" not in stored and stored["bhive_metadata"] == 1
    # what onnxruntime shows a deployment, and the graph itself unchanged
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()} == stored
    assert tensors(tmp_path / "model.onnx") == tensors(path)


def test_metadata_of_a_model_with_regression_targets(tmp_path):
    spec = InputSpec(features={"global": SPEC.features["global"]}, n_candidates={}, classes=SPEC.classes,
                     targets=(RegressionTarget("gen_pt", "quantile", (0.16, 0.5, 0.84)), RegressionTarget("mass")))
    model = DNN.create(spec, hidden=[8]).eval()
    path = tmp_path / "model.onnx"
    check = model.export_onnx(path, raw_batch(), 1e-4)
    assert check["outputs"] == ["probabilities", "regression"]
    sources = sources_for(path, check, spec, tmp_path, "DNN")
    package.write_package(tmp_path / "package", sources, triton.Batching())
    stored = read_metadata(tmp_path / "package" / "model.onnx")
    assert stored == json_value(metadata(sources))
    assert stored["regression"] == [
        {"name": "gen_pt", "loss": "quantile", "quantiles": [0.16, 0.5, 0.84], "columns": [0, 1, 2]},
        {"name": "mass", "loss": "mse", "quantiles": [], "columns": [3]}]
    assert stored["features"] == {"global": ["jet_pt", "jet_eta", "npv"]} and stored["n_candidates"] == {}
    card = (tmp_path / "package" / "model_card.md").read_text()
    assert ("| `regression` | jets x 4 | FLOAT | gen_pt (quantile, quantiles [0.16, 0.5, 0.84]): columns [0, 1, 2]; "
            "mass (mse): columns [3] |") in card
    config = triton.parse((tmp_path / "package" / "triton" / "unit_DNN" / "config.pbtxt").read_text())
    assert [(triton.first(e, "name"), e["dims"]) for e in config["output"]] == [("probabilities", [4]),
                                                                             ("regression", [4])]


@pytest.mark.parametrize("kind", ["DeepJet", "GradientBoosting"])
def test_package_files_triton_repository_and_card(kind, tmp_path):
    path, check = exported(kind, tmp_path / "export")
    sources = sources_for(path, check, SPEC, tmp_path, kind)
    directory = tmp_path / "package"
    described = package.write_package(directory, sources, triton.Batching(256, (16, 256), 50))

    name = f"unit_{kind}"
    assert set(described["files"]) == {"model.onnx", "model_card.md", f"triton/{name}/config.pbtxt",
                                       f"triton/{name}/1/model.onnx"}
    assert read_json(directory / "package.json") == described
    for relative, record in described["files"].items():
        assert record == {"size": (directory / relative).stat().st_size, "sha256": file_sha256(directory / relative)}
    assert described["exported"]["sha256"] == file_sha256(path)
    served = directory / "triton" / name / "1" / "model.onnx"
    assert served.read_bytes() == (directory / "model.onnx").read_bytes()
    assert triton.problems(directory / "triton" / name / "config.pbtxt", served) == []
    config = triton.parse((directory / "triton" / name / "config.pbtxt").read_text())
    assert [(triton.first(e, "name"), e["dims"]) for e in config["input"]] == [
        (t.name, list(t.shape[1:])) for t in tensors(path)["inputs"]]
    assert triton.first(config, "max_batch_size") == 256

    card = (directory / "model_card.md").read_text()
    assert "| BvsL | medium | all | 0.01 | 0.8125 | 0.500 / 0.0100 | 0.500 / 0.0100 |" in card
    assert "| BvsL | 0.9300 | 0.9500 | 0.9000 |" in card
    assert "| 1 | 4 |" in card and "peak RSS increase [MB]" in card
    assert "| ttbar | 600 |" in card and "| b | 300 | 300.0 | 0.300 |" in card
    assert "| `mask_cpf` | jets x 6 | BOOL |" in card and "b-hive's own simulation" in card
    assert ("ai.onnx.ml operators" in card) == (kind == "GradientBoosting")

    package.check_package(directory, verify=True)
    (directory / "model_card.md").write_text(card + "edited\n")
    with pytest.raises(package.PackageError, match="model_card.md is damaged"):
        package.check_package(directory)


@pytest.mark.slow
def test_export_profile_package_chain_through_law(tmp_path, monkeypatch, store):
    from tasks.evaluation import WorkingPointTask
    from tasks.export import ExportTask
    from tasks.package import PackageTask, ProfileTask
    from tests.test_training_tasks import configure

    configure(tmp_path, monkeypatch)
    # two batch sizes: test_profiling checks the whole default table
    common = {"config": "unit", "version": "v1", "executor": "iterative", "n_check_jets": 256,
              "batch_sizes": "1,64", "profile_seconds": 0.01}
    tasks = [PackageTask(**common, model_name=name) for name in ("DNN", "GradientBoosting")]
    assert luigi.build(tasks, local_scheduler=True, workers=1, log_level="WARNING")

    for task in tasks:
        model = task.model()
        directory = task.local_path("package")
        assert task.local_path().parts[-5:] == ("unit", "v1", "v1", "v1", model)
        check = read_json(ExportTask.req(task).local_path("onnx_check.json"))
        assert check["passed"] and check["max_abs_difference"] < 1e-4
        profile = read_json(ProfileTask.req(task).local_path("profile.json"))
        measured = [(r["threads"], r["batch_size"]) for r in profile["rows"]]
        assert measured == [(t, s) for t in ("1", "all") for s in (1, 64)]
        assert (ProfileTask.req(task).local_path("plots") / "profile.png").exists()

        stored = read_metadata(directory / "model.onnx")
        points = read_json(WorkingPointTask.req(task).local_path("working_points.json"))
        # a target no threshold meets (the untrained model's tight point) has threshold inf: null in JSON
        assert [p["threshold"] for p in stored["working_points"]] == [json_value(p["threshold"]) for p in points]
        assert stored["features"]["global"] == ["jet_pt", "jet_eta", "npv", "log_pt"]
        assert stored["versions"] == {"dataset": "v1", "training": "v1", "test_dataset": "v1"}
        name = f"unit_{model}"
        assert triton.problems(directory / "triton" / name / "config.pbtxt",
                               directory / "triton" / name / "1" / "model.onnx") == []
        # the graph in the package is the checked export, with metadata added
        assert tensors(directory / "model.onnx") == tensors(ExportTask.req(task).local_path("model.onnx"))
        batch = raw_batch(n_jets=5)
        feeds = {"global": np.concatenate([batch["global"], np.log(batch["global"][:, :1])], axis=1)}
        for group, size in (("cpf", 5), ("vtx", 2)):
            if group in stored["inputs"]:
                feeds[group] = batch[group][:, :size, :2].copy()
                feeds[f"mask_{group}"] = batch[f"mask_{group}"][:, :size].copy()
        session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, feeds)[0].sum(axis=1), 1.0, atol=1e-5)

        card = (directory / "model_card.md").read_text()
        assert "## Performance" in card and "| BvsL | loose | all | 0.1 |" in card
        assert "eff. / mis-id ttbar" in card and "eff. / mis-id qcd" in card
        assert all(f"| {threads} | {size} |" in card for threads in ("1", f"all ({profiling.cores()})")
                   for size in (1, 64))
        assert "| isB | " in card and "## Known limitations" in card
        assert task.complete()
    assert luigi.build(tasks, local_scheduler=True, workers=1, log_level="WARNING")
