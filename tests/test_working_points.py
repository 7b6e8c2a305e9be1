"""Working points as CMS defines them, against computations by hand: per selection, and charm
working points as the best pair of thresholds on a 2-D grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bhive.evaluation.working_points import pair_working_point, write_working_points
from bhive.roc import roc_curve, working_point

CLASSES = ["b", "c", "uds", "g"]


def scored_jets(n: int = 8000, seed: int = 1) -> dict:
    """Class probabilities that separate the classes imperfectly, two processes, pt and eta."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4)) + 1.2 * np.eye(4)[label]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    process = rng.integers(0, 2, n)
    kinematics = np.stack([rng.uniform(30, 300, n), rng.uniform(-2.5, 2.5, n)], axis=1)
    arrays = {"scores": scores, "label": label, "truth": label, "process": process, "kinematics": kinematics,
              "weight": np.ones(n), "extras": np.zeros((n, 0))}
    info = {"classes": CLASSES, "processes": ["ttbar", "qcd"], "extras": [], "kinematics": ["pt", "eta"]}
    return {"arrays": arrays, "info": info}


def cvsl_cvsb(arrays):
    p = arrays["scores"]
    return p[:, 1] / (p[:, 1] + p[:, 2] + p[:, 3]), p[:, 1] / (p[:, 1] + p[:, 0])


def test_pair_working_point_is_the_best_pair_a_brute_force_scan_finds():
    arrays = scored_jets(3000)["arrays"]
    cvsl, cvsb = cvsl_cvsb(arrays)
    label = arrays["label"]
    is_c, is_light, is_b = label == 1, np.isin(label, [2, 3]), label == 0
    targets = (0.3, 0.25)
    point = pair_working_point([cvsl, cvsb], is_c, [is_light, is_b], targets, grid_points=40)

    grid_l = np.unique(np.r_[-np.inf, np.quantile(cvsl[is_c], np.linspace(0, 1, 40))])
    grid_b = np.unique(np.r_[-np.inf, np.quantile(cvsb[is_c], np.linspace(0, 1, 40))])
    best = (-1.0, None)
    for tl in grid_l:
        for tb in grid_b:
            passed = (cvsl >= tl) & (cvsb >= tb)
            if passed[is_light].mean() <= targets[0] and passed[is_b].mean() <= targets[1]:
                efficiency = passed[is_c].mean()
                if efficiency > best[0]:
                    best = (efficiency, (tl, tb))
    assert point["efficiency"] == pytest.approx(best[0], abs=1e-12)
    passed = (cvsl >= point["thresholds"][0]) & (cvsb >= point["thresholds"][1])
    assert passed[is_c].mean() == pytest.approx(point["efficiency"])
    assert passed[is_light].mean() <= targets[0] and passed[is_b].mean() <= targets[1]
    assert point["misids"] == pytest.approx([passed[is_light].mean(), passed[is_b].mean()])


def test_working_points_per_selection_and_charm_pairs(tmp_path):
    predictions = scored_jets()
    arrays = predictions["arrays"]
    result = write_working_points(predictions, {}, {"BvsL": {"medium": 0.01}}, [30, 100, 300], [-2.5, 0, 2.5],
                                  tmp_path, derived_on=("all", "ttbar"), processes=(),
                                  charm={"medium": {"CvsL": 0.25, "CvsB": 0.25}})
    rows = {row["derived_on"]: row for row in result["single"]}
    assert set(rows) == {"all", "ttbar"}
    p = arrays["scores"]
    bvsl = p[:, 0] / (p[:, 0] + p[:, 2] + p[:, 3])
    used = arrays["label"] != 1
    ttbar = arrays["process"] == 0
    for selection, mask in (("all", used), ("ttbar", used & ttbar)):
        by_hand = working_point(roc_curve(bvsl[mask], arrays["label"][mask] == 0), 0.01)
        assert rows[selection]["threshold"] == by_hand.threshold
        assert rows[selection]["efficiency"] == pytest.approx(by_hand.efficiency)
    assert rows["all"]["threshold"] != rows["ttbar"]["threshold"]

    (charm,) = [row for row in result["charm"] if row["derived_on"] == "ttbar"]
    cvsl, cvsb = cvsl_cvsb(arrays)
    passed = (cvsl >= charm["thresholds"][0]) & (cvsb >= charm["thresholds"][1])
    label = arrays["label"]
    assert passed[ttbar & (label == 1)].mean() == pytest.approx(charm["efficiency"])
    assert passed[ttbar & np.isin(label, [2, 3])].mean() <= 0.25 and passed[ttbar & (label == 0)].mean() <= 0.25
    assert len(charm["efficiency_vs_pt"]) == 2 and len(charm["misid_CvsB_vs_eta"]) == 2
    written = json.loads((tmp_path / "charm_working_points.json").read_text())
    assert [row["working_point"] for row in written] == ["medium", "medium"]
    assert (tmp_path / "plots" / "CvsL_CvsB_ttbar_medium_vs_pt.png").exists()
    assert "derived_on" in (tmp_path / "working_points.csv").read_text().splitlines()[0]


def test_standard_charm_working_points_when_cvsl_and_cvsb_exist(tmp_path):
    result = write_working_points(scored_jets(4000), {}, {}, [30, 300], [-2.5, 2.5], tmp_path)
    assert [row["working_point"] for row in result["charm"]] == ["loose", "medium", "tight"]
    efficiencies = [row["efficiency"] for row in result["charm"]]
    assert efficiencies == sorted(efficiencies, reverse=True)


@pytest.mark.parametrize("overrides, message", [
    ({"working_points_on": ["all", "ttbarr"]}, r"working_points_on\[1\]: unknown selection 'ttbarr'; did you mean 'ttbar'"),
    ({"charm_working_points": {"medium": {"BvsL": 0.1}}}, r"charm_working_points\.medium: .*two discriminators"),
    ({"charm_working_points": {"medium": {"BvsL": 0.1, "BvsC": 0.2, "CvsB": 0.1}}}, "two discriminators"),
])
def test_working_point_settings_are_checked_when_the_config_loads(tmp_path, overrides, message):
    from bhive.config import ConfigError, load_config
    from tests.deepntuple_files import unit_config, write_config

    discriminators = {"BvsL": {"signal": ["isB"], "background": ["isL"]},
                      "BvsC": {"signal": ["isB"], "background": ["isC"]},
                      "CvsB": {"signal": ["isC"], "background": ["isB"]}}
    write_config(tmp_path, "wp", unit_config(tmp_path, discriminators=discriminators, **overrides))
    with pytest.raises(ConfigError, match=message):
        load_config("wp", config_dir=tmp_path)
    write_config(tmp_path, "ok", unit_config(tmp_path, discriminators=discriminators, working_points_on=["ttbar"]))
    assert load_config("ok", config_dir=tmp_path).working_points_on == ("ttbar",)


def test_rates_of_each_working_point_on_every_selection_by_hand(tmp_path):
    from types import SimpleNamespace

    from bhive.evaluation.working_points import rates_by_selection

    predictions = scored_jets()
    arrays = predictions["arrays"]
    weights = np.where(arrays["process"] == 0, 2.0, 0.5)  # signed event weights count
    predictions["arrays"]["mc_weight"] = weights
    predictions["info"]["event_weight"] = "genWeight"
    points = [{"discriminator": "BvsL", "working_point": "medium", "derived_on": "all", "threshold": 0.6},
              {"discriminator": "CvsL", "working_point": "loose", "derived_on": "ttbar", "threshold": 0.3}]
    cut = SimpleNamespace(name="qcd", cuts={"pt": (50.0, 100.0)})  # a config process with evaluation cuts
    rows = rates_by_selection(predictions, {}, points, [cut])
    selections = ["all", "ttbar", "qcd", "qcd (pt 50-100)"]
    assert [(r["discriminator"], r["selection"]) for r in rows] == [(d, s) for d in ("BvsL", "CvsL") for s in selections]
    p, label, pt = arrays["scores"], arrays["label"], arrays["kinematics"][:, 0]
    bvsl = p[:, 0] / (p[:, 0] + p[:, 2] + p[:, 3])
    for row in rows[:4]:
        mask = {"all": np.ones(len(label), bool), "ttbar": arrays["process"] == 0, "qcd": arrays["process"] == 1,
                "qcd (pt 50-100)": (arrays["process"] == 1) & (pt >= 50) & (pt < 100)}[row["selection"]]
        b, light = mask & (label == 0), mask & np.isin(label, [2, 3])
        assert row["efficiency"] == pytest.approx(weights[b & (bvsl >= 0.6)].sum() / weights[b].sum())
        assert row["misid"] == pytest.approx(weights[light & (bvsl >= 0.6)].sum() / weights[light].sum())
        assert row["threshold"] == 0.6 and row["derived_on"] == "all"
