"""Evaluation of regression targets (bhive.evaluation.regression) against numpy by hand:
weighted quantiles, median response and resolution per flavour and bin, the summary section
and the plots."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from bhive.evaluation.regression import (
    central_estimate,
    markdown,
    plot_response,
    response_table,
    weighted_quantiles,
)

CLASSES = ["b", "c", "uds", "g"]
#: the known relative width of each flavour's regressed response (lognormal sigma)
WIDTHS = {"b": 0.08, "c": 0.10, "uds": 0.12, "g": 0.15}
BINS_PT = [30.0, 60.0, 120.0, 300.0]
BINS_ETA = [-2.5, 0.0, 2.5]
LEVELS = [0.0, 0.16, 0.25, 0.5, 0.75, 0.84, 1.0]


def by_hand(response: np.ndarray) -> dict:
    """Median and CMS resolution straight from np.quantile (inverted CDF)."""
    q16, median, q84 = np.quantile(response, [0.16, 0.5, 0.84], method="inverted_cdf")
    return {"n_jets": len(response), "median": float(median), "resolution": float((q84 - q16) / (2 * median))}


def jets(n: int = 40000, seed: int = 3) -> dict:
    """Generated jets: the estimate is the target times lognormal noise of a known width per
    flavour; the baseline (raw pt) is biased low and wider; some jets have no generator match
    (NaN target) or no flavour (label -1)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n).astype(np.int16)
    target = rng.uniform(20, 400, n).astype(np.float32)
    sigma = np.array([WIDTHS[c] for c in CLASSES])[label]
    estimate = target * np.exp(rng.normal(0.0, sigma))
    baseline = (target * 0.9 * np.exp(rng.normal(0.0, 2 * sigma))).astype(np.float32)
    kinematics = np.stack([baseline, rng.uniform(-2.5, 2.5, n)], axis=1).astype(np.float32)
    target[rng.random(n) < 0.05] = np.nan
    label[rng.random(n) < 0.03] = -1
    return {"target": target, "estimate": estimate, "baseline": baseline, "kinematics": kinematics, "label": label}


@pytest.fixture(scope="module")
def sample() -> dict:
    return jets()


@pytest.fixture(scope="module")
def table(sample) -> dict:
    return response_table(sample["target"], sample["estimate"], sample["baseline"], sample["kinematics"],
                          sample["label"], CLASSES, BINS_PT, BINS_ETA)


# weighted quantiles

@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_unweighted_quantiles_are_numpys_inverted_cdf(n: int) -> None:
    values = np.random.default_rng(n).normal(size=n)
    levels = np.linspace(0, 1, 101)
    assert np.array_equal(weighted_quantiles(values, levels), np.quantile(values, levels, method="inverted_cdf"))
    assert np.array_equal(weighted_quantiles(values, levels, np.ones(n)),
                          np.quantile(values, levels, method="inverted_cdf"))


def test_integer_weights_equal_repeating_each_value() -> None:
    rng = np.random.default_rng(8)
    values = rng.normal(size=300)
    counts = rng.integers(0, 5, size=300)
    repeated = np.repeat(values, counts)
    levels = np.linspace(0, 1, 57)
    found = weighted_quantiles(values, levels, counts.astype(float))
    expected = np.quantile(repeated, levels, method="inverted_cdf")
    # at q = 0 the definition takes the smallest value, whatever its weight (also zero)
    assert np.array_equal(found[1:], expected[1:])
    assert found[0] == values.min()


def test_negative_weights_take_the_first_crossing() -> None:
    # sorted values 1, 2, 3, 4 with weights 1, 1, -1, 1: cumulative 1, 2, 1, 2 of a total 2
    values = np.array([3.0, 1.0, 4.0, 2.0])
    weights = np.array([-1.0, 1.0, 1.0, 1.0])
    # 0.75 x 2 = 1.5 is first reached at value 2 (and again at value 4)
    assert weighted_quantiles(values, 0.75, weights) == 2.0
    assert weighted_quantiles(values, 0.5, weights) == 1.0
    assert weighted_quantiles(values, 1.0, weights) == 2.0
    assert weighted_quantiles(values, 0.0, weights) == 1.0


def test_nan_values_are_ignored_and_empty_or_negative_totals_give_nan() -> None:
    values = np.array([np.nan, 1.0, 5.0, np.nan, 3.0])
    levels = [0.1, 0.5, 0.9]
    assert np.array_equal(weighted_quantiles(values, levels),
                          np.quantile([1.0, 5.0, 3.0], levels, method="inverted_cdf"))
    assert np.isnan(weighted_quantiles([], levels)).all()
    assert np.isnan(weighted_quantiles([np.nan, np.nan], levels)).all()
    assert np.isnan(weighted_quantiles([1.0, 2.0], levels, [1.0, -1.0])).all()
    assert np.isnan(weighted_quantiles([1.0, 2.0], levels, [-1.0, -1.0])).all()
    assert weighted_quantiles([1.0, 2.0], 0.5).shape == ()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        weighted_quantiles([1.0], [1.5])


# central estimate

def test_central_estimate_picks_the_single_column_or_the_median_quantile() -> None:
    regression = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert np.array_equal(central_estimate(regression, {"name": "gen_pt", "loss": "mse", "quantiles": [],
                                                        "columns": [2]}), regression[:, 2])
    assert np.array_equal(central_estimate(regression, {"loss": "huber", "quantiles": [], "columns": [0]}),
                          regression[:, 0])
    quantile = {"name": "gen_pt", "loss": "quantile", "quantiles": [0.16, 0.5, 0.84], "columns": [1, 3, 0]}
    assert np.array_equal(central_estimate(regression, quantile), regression[:, 3])
    closest = {"loss": "quantile", "quantiles": [0.25, 0.45, 0.84], "columns": [0, 1, 2]}
    assert np.array_equal(central_estimate(regression, closest), regression[:, 1])
    with pytest.raises(ValueError, match="one output column per quantile"):
        central_estimate(regression, {"loss": "quantile", "quantiles": [0.5], "columns": [0, 1]})
    with pytest.raises(ValueError, match="unknown loss"):
        central_estimate(regression, {"loss": "l1", "quantiles": [], "columns": [0]})


# response table

def selected(sample: dict, extra: np.ndarray | None = None) -> np.ndarray:
    target = sample["target"]
    used = np.isfinite(target) & (sample["label"] >= 0)
    with np.errstate(invalid="ignore"):
        used &= target > 0
    return used if extra is None else used & extra


def test_integrated_numbers_per_flavour_equal_numpy_by_hand(sample, table) -> None:
    target = sample["target"].astype(np.float64)
    for index, name in enumerate([*CLASSES, "all"]):
        chosen = selected(sample, sample["label"] == index if name != "all" else None)
        for kind in ("regressed", "baseline"):
            column = sample["estimate"] if kind == "regressed" else sample["baseline"]
            expected = by_hand(np.asarray(column, dtype=np.float64)[chosen] / target[chosen])
            found = table["classes"][name]["integrated"][kind]
            assert {k: found[k] for k in expected} == expected, (name, kind)
        if name != "all":
            # the known lognormal width: (e^s - e^-s)/2 = sinh(s) ~ s
            regressed = table["classes"][name]["integrated"]["regressed"]
            assert regressed["median"] == pytest.approx(1.0, abs=0.01)
            assert regressed["resolution"] == pytest.approx(np.sinh(WIDTHS[name]), rel=0.05)
            assert regressed["iqr_width"] == pytest.approx(WIDTHS[name], rel=0.07)
            baseline = table["classes"][name]["integrated"]["baseline"]
            assert baseline["median"] == pytest.approx(0.9, abs=0.02)
            assert baseline["resolution"] > regressed["resolution"]


def test_binned_numbers_equal_numpy_by_hand(sample, table) -> None:
    target = sample["target"].astype(np.float64)
    response = sample["estimate"] / target
    for axis, column, edges in (("pt", 0, BINS_PT), ("eta", 1, BINS_ETA)):
        values = sample["kinematics"][:, column]
        assert len(table["classes"]["b"][axis]) == len(edges) - 1
        for i, (low, high) in enumerate(pairwise(edges)):
            for index, name in enumerate(CLASSES):
                chosen = selected(sample, (sample["label"] == index) & (values >= low) & (values < high))
                expected = by_hand(response[chosen])
                found = table["classes"][name][axis][i]["regressed"]
                assert {k: found[k] for k in expected} == expected, (axis, i, name)


def test_jets_without_target_or_flavour_are_left_out(sample, table) -> None:
    usable = selected(sample)
    assert table["classes"]["all"]["integrated"]["regressed"]["n_jets"] == usable.sum()
    assert sum(table["classes"][c]["integrated"]["regressed"]["n_jets"] for c in CLASSES) == usable.sum()
    # the same jets with the excluded ones removed give the identical table
    kept = {key: value[usable] for key, value in sample.items()}
    again = response_table(kept["target"], kept["estimate"], kept["baseline"], kept["kinematics"], kept["label"],
                           CLASSES, BINS_PT, BINS_ETA)
    assert again == table


def test_table_is_json_and_empty_bins_are_none(sample) -> None:
    # a pt bin above every jet, and one class without jets
    label = np.where(sample["label"] == 3, 0, sample["label"])
    table = response_table(sample["target"], sample["estimate"], sample["baseline"], sample["kinematics"], label,
                           CLASSES, [*BINS_PT, 1e5, 1e6], BINS_ETA)
    assert json.loads(json.dumps(table, allow_nan=False)) == table
    empty = table["classes"]["b"]["pt"][-1]["regressed"]
    assert empty == {"n_jets": 0, "sum_weights": 0.0, "median": None, "resolution": None, "iqr_width": None}
    assert table["classes"]["g"]["integrated"]["baseline"]["median"] is None
    assert table["weighted"] is False and table["has_baseline"] is True


def test_all_nan_baseline_gives_no_baseline_entries(sample) -> None:
    nothing = np.full(len(sample["target"]), np.nan, dtype=np.float32)
    for baseline in (nothing, None):
        table = response_table(sample["target"], sample["estimate"], baseline, sample["kinematics"],
                               sample["label"], CLASSES, BINS_PT, BINS_ETA)
        assert table["has_baseline"] is False
        for per in table["classes"].values():
            assert per["integrated"]["baseline"] is None
            assert all(entry["baseline"] is None for entry in per["pt"] + per["eta"])
            assert per["integrated"]["regressed"]["median"] is not None


def test_event_weights_enter_the_quantiles(sample) -> None:
    rng = np.random.default_rng(11)
    weights = rng.choice([-1.0, 1.0, 2.0], size=len(sample["target"]), p=[0.1, 0.6, 0.3])
    table = response_table(sample["target"], sample["estimate"], sample["baseline"], sample["kinematics"],
                           sample["label"], CLASSES, BINS_PT, BINS_ETA, weights)
    chosen = selected(sample, sample["label"] == 0)
    response = sample["estimate"][chosen] / sample["target"][chosen].astype(np.float64)
    q16, median, q84 = weighted_quantiles(response, [0.16, 0.5, 0.84], weights[chosen])
    found = table["classes"]["b"]["integrated"]["regressed"]
    assert table["weighted"] is True
    assert found["median"] == median and found["resolution"] == (q84 - q16) / (2 * median)
    assert found["sum_weights"] == pytest.approx(weights[chosen].sum())


# summary and plots

def test_markdown_shows_the_numbers_before_and_after(table) -> None:
    text = markdown({"gen_pt": table})
    assert "## Regression of gen_pt" in text and "(q84 − q16) / (2 × median" in text
    for name in [*CLASSES, "all"]:
        integrated = table["classes"][name]["integrated"]
        row = (f"| {name} | {integrated['regressed']['n_jets']} | {integrated['baseline']['median']:.3f} → "
               f"{integrated['regressed']['median']:.3f} | {integrated['baseline']['resolution']:.3f} → "
               f"{integrated['regressed']['resolution']:.3f} |")
        assert row in text
    low_pt = table["classes"]["g"]["pt"][0]
    assert "| 30–60 | " in text
    assert f"{low_pt['baseline']['resolution']:.3f} → {low_pt['regressed']['resolution']:.3f}" in text
    assert not text.endswith("\n")


def test_markdown_without_baseline_shows_the_regression_only(sample) -> None:
    table = response_table(sample["target"], sample["estimate"], None, sample["kinematics"], sample["label"],
                           CLASSES, BINS_PT, BINS_ETA)
    text = markdown({"gen_pt": table})
    assert "→" not in text and "no baseline" in text
    integrated = table["classes"]["b"]["integrated"]["regressed"]
    assert f"| b | {integrated['n_jets']} | {integrated['median']:.3f} | {integrated['resolution']:.3f} |" in text


def test_plot_response_writes_png_pdf_and_data(tmp_path, table) -> None:
    written = plot_response(table, "gen_pt", tmp_path / "regression")
    stems = {f"gen_pt_{q}_vs_{a}" for q in ("response", "resolution") for a in ("pt", "eta")}
    assert {p.name for p in written} == {f"{s}{x}" for s in stems for x in (".png", ".pdf", ".npz")}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    data = np.load(tmp_path / "regression" / "gen_pt_resolution_vs_pt.npz")
    expected = [entry["baseline"]["resolution"] for entry in table["classes"]["b"]["pt"]]
    assert np.allclose(data["b__baseline"], expected)
    assert list(data["groups"]) == [*CLASSES, "all"]


def test_plot_response_without_baseline(tmp_path, sample) -> None:
    table = response_table(sample["target"], sample["estimate"], None, sample["kinematics"], sample["label"],
                           CLASSES, BINS_PT, BINS_ETA)
    written = plot_response(table, "gen_pt", tmp_path)
    data = np.load(tmp_path / "gen_pt_response_vs_eta.npz")
    assert len(written) == 12 and "b__regressed" in data and "b__baseline" not in data
