"""Regression targets (e.g. the generator-level jet pt ``gen_pt``) evaluated next to the tagging.

A regression is judged by its *response*, estimate / true target, per jet: its median (the
scale: 1 is unbiased) and its relative width (the resolution). Both are quantiles, not means
and standard deviations, because the response has long tails (neutrinos in semileptonic b
decays, out-of-cone radiation) that would dominate moments. The same numbers are given for a
*baseline*, what the target would be without the regression (the raw reco jet pt for
``gen_pt``), so that the gain of the regression is read off directly: "before" -> "after".

Resolution follows the CMS b-jet energy regression convention (CMS, "A deep neural network for
simultaneous estimation of b jet energy and resolution", Comput. Softw. Big Sci. 4 (2020) 10):
half the 16-84% interquantile range over the median, (q84 - q16) / (2 median), which equals
sigma / mean for a Gaussian response. A second robust width from the interquartile range,
(q75 - q25) / (1.349 median), is given beside it; for a Gaussian both agree, so a difference
shows non-Gaussian tails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import ticker

from bhive import plotting
from bhive.dataset import TARGET, TARGET_BASELINE
from bhive.evaluation.scores import event_weights
from bhive.store import atomic_write_json

REGRESSION_FILE = "regression.json"
#: quantile levels of the CMS resolution, (q84 - q16) / (2 median)
RESOLUTION_QUANTILES = (0.16, 0.84)
#: quantile levels of the interquartile width, (q75 - q25) / (1.349 median)
IQR_QUANTILES = (0.25, 0.75)
#: the interquartile range of a unit Gaussian, 2 x 0.6745: makes the IQR width a sigma
GAUSSIAN_IQR = 1.349
#: what is estimated: the regression's output and the baseline without it
ESTIMATES = ("regressed", "baseline")
#: the name of the group of all jets with a flavour, next to the classes
ALL = "all"
_AXIS_LABELS = {"pt": r"reco jet $p_T$ [GeV]", "eta": r"reco jet $\eta$"}
_QUANTITY_LABELS = {"median": "median response", "resolution": "resolution (q84 - q16) / (2 median)"}


def central_estimate(regression: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    """The per-jet point estimate of one target from the model's ``regression`` outputs.

    ``entry`` is the target's item of ``info["regression"]`` (``loss``, ``quantiles``,
    ``columns``). An mse or huber loss has one column, the estimate. A quantile loss has one
    column per quantile; its median (the 0.5 quantile) is the estimate, because the response
    is judged by its median; without a 0.5 quantile, the quantile closest to 0.5 stands in
    (the lower one on a tie).
    """
    regression = np.asarray(regression)
    columns, loss = list(entry["columns"]), entry["loss"]
    name = entry.get("name", "?")
    if loss in ("mse", "huber"):
        if len(columns) != 1:
            raise ValueError(f"regression target {name} with {loss} loss must have one output column, got {columns}")
        column = columns[0]
    elif loss == "quantile":
        quantiles = np.asarray(entry["quantiles"], dtype=np.float64)
        if len(quantiles) == 0 or len(quantiles) != len(columns):
            raise ValueError(f"regression target {name} with quantile loss needs one output column per quantile, "
                             f"got quantiles {list(quantiles)} and columns {columns}")
        column = columns[int(np.argmin(np.abs(quantiles - 0.5)))]
    else:
        raise ValueError(f"regression target {name} has unknown loss {loss!r}; expected mse, huber or quantile")
    return np.asarray(regression[:, column], dtype=np.float64)


def weighted_quantiles(values: np.ndarray, quantiles: Sequence[float] | np.ndarray | float,
                       weights: np.ndarray | None = None) -> np.ndarray:
    """Quantiles of a sample whose entries carry (possibly negative) weights.

    Definition: entries whose value or weight is NaN are dropped; the rest are sorted by value
    (stably); with c_i the cumulative weight of the first i+1 sorted entries and W = c_(n-1)
    the total weight, the q quantile is the value of the first entry with c_i >= q W. With
    unit weights this is the inverse of the empirical CDF, ``np.quantile(values, q,
    method="inverted_cdf")``: every quantile is an observed value, never an interpolation,
    so it is defined the same way for weighted and unweighted samples.

    MC generator weights can be negative (NLO samples), so c_i need not grow monotonically;
    the *first* crossing of q W is taken, as for a monotonic sum. A sample without entries, or
    with a total weight W <= 0 (no probability distribution), gives NaN for every quantile.
    Returns an array of the shape of ``quantiles``.
    """
    levels = np.asarray(quantiles, dtype=np.float64)
    if np.any(~((levels >= 0) & (levels <= 1))):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if len(weights) != len(values):
        raise ValueError(f"{len(weights)} weights for {len(values)} values")
    kept = ~(np.isnan(values) | np.isnan(weights))
    values, weights = values[kept], weights[kept]
    if len(values) == 0:
        return np.full(levels.shape, np.nan)
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    total = cumulative[-1]
    if not total > 0:
        return np.full(levels.shape, np.nan)
    # the first index reaching a level is the first at which the running maximum reaches it,
    # and the running maximum is sorted, so a binary search finds the first crossing
    first = np.searchsorted(np.maximum.accumulate(cumulative), levels * total, side="left")
    return values[order][np.minimum(first, len(values) - 1)]


def _number(value: float) -> float | None:
    """A JSON number: None for NaN or infinity (an empty bin, an undefined width)."""
    value = float(value)
    return value if np.isfinite(value) else None


def _response_stats(response: np.ndarray, weights: np.ndarray | None) -> dict[str, Any]:
    """Jets, median response and the two relative widths of one group of jets."""
    q16, q84 = RESOLUTION_QUANTILES
    q25, q75 = IQR_QUANTILES
    low, quarter, median, three_quarters, high = weighted_quantiles(response, [q16, q25, 0.5, q75, q84], weights)
    # a width relative to a scale that is not positive means nothing
    scaled = median > 0
    return {"n_jets": len(response),
            "sum_weights": float(len(response) if weights is None else np.sum(weights)),
            "median": _number(median),
            "resolution": _number((high - low) / (2 * median)) if scaled else None,
            "iqr_width": _number((three_quarters - quarter) / (GAUSSIAN_IQR * median)) if scaled else None}


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin, [low, high) as everywhere in the evaluation; -1 outside the edges."""
    index = np.searchsorted(edges, values, side="right") - 1
    return np.where((index >= 0) & (index < len(edges) - 1), index, -1)


def response_table(target: np.ndarray, estimate: np.ndarray, baseline: np.ndarray | None, kinematics: np.ndarray,
                   label: np.ndarray, classes: Sequence[str], bins_pt: Sequence[float], bins_eta: Sequence[float],
                   weights: np.ndarray | None = None) -> dict[str, Any]:
    """Median response and resolution of one target, per flavour and in bins of reco pt and eta.

    Response = estimate / target for the regression ("regressed") and baseline / target for
    the ``baseline`` ("baseline", e.g. the raw reco pt). Only jets with a finite target > 0 (a
    matched generator jet), a finite estimate and a flavour (``label`` >= 0, an index into
    ``classes``) enter; "all" is every such jet. A baseline column that is NaN throughout
    (or None) means the config gives no baseline: every "baseline" entry is then None; jets
    with a NaN baseline in an otherwise filled column are left out of the baseline numbers only.
    Binned by reco pt (``kinematics[:, 0]``, ``bins_pt``) and eta (``kinematics[:, 1]``,
    ``bins_eta``), bins [low, high); jets outside the edges count only in "integrated".
    ``weights``: signed event weights (see :func:`weighted_quantiles`); None: every jet once.

    Returns plain JSON data::

        {"bins_pt": [...], "bins_eta": [...], "weighted": bool, "has_baseline": bool,
         "classes": {<class> | "all": {"integrated": ENTRY, "pt": [ENTRY per pt bin],
                                       "eta": [ENTRY per eta bin]}}}
        ENTRY = {"regressed": STATS, "baseline": STATS or None}
        STATS = {"n_jets": int, "sum_weights": float, "median": float | None,
                 "resolution": float | None, "iqr_width": float | None}

    with None for a median or width of a bin without jets (or without positive total weight).
    """
    target = np.asarray(target, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    n = len(target)
    baseline = np.full(n, np.nan) if baseline is None else np.asarray(baseline, dtype=np.float64)
    kinematics, label = np.asarray(kinematics), np.asarray(label)
    for name, array in (("estimate", estimate), ("baseline", baseline), ("kinematics", kinematics),
                        ("label", label), *((("weights", weights),) if weights is not None else ())):
        if len(array) != n:
            raise ValueError(f"{name} has {len(array)} jets but target has {n}")
    has_baseline = bool(np.isfinite(baseline).any())
    with np.errstate(invalid="ignore", divide="ignore"):
        used = np.isfinite(target) & (target > 0) & np.isfinite(estimate) & (label >= 0)
        responses = {"regressed": estimate / target, "baseline": baseline / target}
    valid = {"regressed": used, "baseline": used & np.isfinite(baseline)}
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)
    edges = {"pt": np.asarray(bins_pt, dtype=np.float64), "eta": np.asarray(bins_eta, dtype=np.float64)}
    bins = {axis: _bin_index(np.asarray(kinematics[:, column], dtype=np.float64), edges[axis])
            for column, axis in enumerate(("pt", "eta"))}

    def entry(group: np.ndarray) -> dict[str, Any]:
        return {kind: _response_stats(responses[kind][group & valid[kind]],
                                      None if weights is None else weights[group & valid[kind]])
                if kind == "regressed" or has_baseline else None for kind in ESTIMATES}

    groups = {name: label == index for index, name in enumerate(classes)}
    groups[ALL] = np.ones(n, dtype=bool)
    table: dict[str, Any] = {"bins_pt": edges["pt"].tolist(), "bins_eta": edges["eta"].tolist(),
                             "weighted": weights is not None, "has_baseline": has_baseline, "classes": {}}
    for name, group in groups.items():
        table["classes"][name] = {"integrated": entry(group),
                                  **{axis: [entry(group & (bins[axis] == i)) for i in range(len(edges[axis]) - 1)]
                                     for axis in edges}}
    return table


def _shown(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _before_after(entry: Mapping[str, Any], quantity: str) -> str:
    before = entry["baseline"][quantity] if entry["baseline"] else None
    after = entry["regressed"][quantity]
    return f"{_shown(before)} → {_shown(after)}" if entry["baseline"] else _shown(after)


def markdown(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """The regression section of ``summary.md``: per target (``tables``: target name ->
    :func:`response_table`), the integrated median response and resolution per flavour,
    before and after the regression, then the resolution vs reco pt per flavour. Lines joined
    by newlines, without a trailing one."""
    lines: list[str] = []
    for target, table in tables.items():
        groups = table["classes"]
        before = table["has_baseline"]
        arrow = "before → after" if before else "regressed"
        lines += [f"## Regression of {target}", "",
                  f"Response = estimate / true {target}, for jets with a true value (a matched generator jet); "
                  "resolution = (q84 − q16) / (2 × median response), the CMS b-jet energy regression convention."
                  + (" Before: the baseline without regression (for a generator-level pt, the raw reco jet pt);"
                     " after: the regression." if before else " The config gives no baseline for this target.")
                  + (" Quantiles weighted with the event weights." if table["weighted"] else ""), "",
                  f"| flavour | jets | median response {arrow} | resolution {arrow} |", "|---|---|---|---|"]
        for name, per in groups.items():
            integrated = per["integrated"]
            lines.append(f"| {name} | {integrated['regressed']['n_jets']} | {_before_after(integrated, 'median')} | "
                         f"{_before_after(integrated, 'resolution')} |")
        edges = table["bins_pt"]
        lines += ["", f"Resolution vs reco jet pt ({arrow}):", "",
                  "| pt [GeV] | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for i, (low, high) in enumerate(pairwise(edges)):
            lines.append(f"| {low:g}–{high:g} | "
                         + " | ".join(_before_after(per["pt"][i], "resolution") for per in groups.values()) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def plot_response(table: Mapping[str, Any], target_name: str, out_dir: Path) -> list[Path]:
    """Median response and resolution vs reco pt and vs eta, one colour per flavour ("all" in
    black), the regression solid and the baseline dashed: ``<target>_response_vs_pt``,
    ``<target>_resolution_vs_pt``, ``<target>_response_vs_eta`` and
    ``<target>_resolution_vs_eta`` in ``out_dir``, each as PNG, PDF and npz (the plotted
    values, :func:`bhive.plotting.save`). Returns the paths written."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for axis in ("pt", "eta"):
        edges = np.asarray(table[f"bins_{axis}"], dtype=np.float64)
        centres, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
        for quantity, stem in (("median", "response"), ("resolution", "resolution")):
            fig, ax = plotting.figure()
            data: dict[str, Any] = {"edges": edges, "groups": np.asarray(list(table["classes"]), dtype=str)}
            for index, (name, per) in enumerate(table["classes"].items()):
                colour = "black" if name == ALL else f"C{index}"
                for kind, style, marker in (("regressed", "-", "o"), ("baseline", "--", "s")):
                    if kind == "baseline" and not table["has_baseline"]:
                        continue
                    values = np.array([np.nan if b[kind][quantity] is None else b[kind][quantity]
                                       for b in per[axis]])
                    data[f"{name}__{kind}"] = values
                    ax.errorbar(centres, values, xerr=half, color=colour, linestyle=style, marker=marker,
                                fillstyle="full" if kind == "regressed" else "none",
                                label=f"{name} ({kind})")
            if quantity == "median":
                ax.axhline(1.0, color="grey", linewidth=1)
            if axis == "pt" and edges[0] > 0:
                # pt bins widen towards the tail, where few jets are
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            low, high = ax.get_ylim()
            ax.set_ylim(low, high + 0.7 * (high - low))  # room for the legend above the points
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel(_AXIS_LABELS[axis])
            ax.set_ylabel(f"{target_name} {_QUANTITY_LABELS[quantity]}")
            ax.legend(fontsize="x-small", ncol=2, title="solid: regressed, dashed: baseline",
                      title_fontsize="x-small")
            written += plotting.save(fig, out_dir / f"{target_name}_{stem}_vs_{axis}", data)
    return written


def write_regression(predictions: Mapping[str, Any], bins_pt: Sequence[float], bins_eta: Sequence[float],
                     directory: Path) -> dict[str, Any]:
    """For every regression target of scored jets (:func:`bhive.inference.read_predictions`
    of a model with targets), :func:`response_table` of its central estimate against the
    baseline, weighted with the signed event weights where the dataset has them, written as
    ``regression.json`` with the plots in ``plots/``; returns {target: table}."""
    arrays, info = predictions["arrays"], predictions["info"]
    tables = {}
    for index, entry in enumerate(info.get("regression", ())):
        table = response_table(arrays[TARGET][:, index], central_estimate(arrays["regression"], entry),
                               arrays[TARGET_BASELINE][:, index], arrays["kinematics"], arrays["label"],
                               info["classes"], bins_pt, bins_eta, event_weights(arrays, info))
        tables[entry["name"]] = table
        plot_response(table, entry["name"], Path(directory) / "plots")
    atomic_write_json(Path(directory) / REGRESSION_FILE, tables)
    return tables
