"""``model_card.md``: what a packaged tagger is for, what it was trained on, what it reads and
gives, how well it tags and what it costs, and where it should not be trusted, in one page a
reviewer or an operator can read without the store."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bhive.onnx_io import Tensor, tensors
from bhive.package.sources import Sources


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _shape(tensor: Tensor) -> str:
    return " x ".join(str(d) for d in tensor.shape)


def render(sources: Sources, metadata: Mapping[str, Any], triton: Mapping[str, Any]) -> str:
    """The card's markdown; ``metadata`` is what the graph carries, ``triton`` the model
    repository's name and batching."""
    lines = [f"# Model card: {sources.model} for {sources.config}", "",
             f"Training version {sources.versions['training']} on dataset version {sources.versions['dataset']}, "
             f"evaluated on test dataset version {sources.versions['test_dataset']}; trained with b-hive "
             f"{metadata['code_version']} (config hash `{str(metadata['config_hash'])[:16]}`), packaged with "
             f"{metadata['packaged_with']}.", ""]
    for section in (_intended_use, _training_data, _inputs_and_outputs, _performance, _cost, _deployment,
                    _limitations):
        lines += section(sources, metadata, triton) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _intended_use(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    meta = sources.training_data
    classes = ", ".join(f"{c} ({' + '.join(metadata['class_truth_labels'].get(c, [c]))})" for c in metadata["classes"])
    names = ", ".join(f"{name} = {d['formula']}" for name, d in metadata["discriminators"].items())
    return ["## Intended use", "",
            f"Flavour tagging of jets as in the config `{sources.config}`: class probabilities for {classes}, "
            f"combined into the discriminators {names or '(none configured)'}, with the working points below. "
            f"Meant for jets of the training selection: pt in [{meta['bins_pt'][0]:g}, {meta['bins_pt'][-1]:g}) GeV "
            f"and eta in [{meta['bins_eta'][0]:g}, {meta['bins_eta'][-1]:g}), with the inputs computed as for the "
            f"training ntuples."]


def _training_data(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    lines = ["## Training data", ""]
    for title, meta in (("Training", sources.training_data), ("Test", sources.test_data)):
        counts = meta.get("counts", {})
        lines += [f"{title} dataset ({'b-hive simulated sample' if sources.simulated else 'ntuples'}): "
                  f"{meta['n_jets']} jets kept of {counts.get('read', 'n/a')} read ({counts.get('out_of_range', 0)} "
                  f"outside the pt/eta bins, {counts.get('no_label', 0)} without a truth label, "
                  f"{counts.get('non_finite', 0)} with NaN/inf dropped).", ""]
        per_process = Counter()
        for entry in meta.get("files", []):
            per_process[meta["processes"][entry["process"]]] += entry["n_jets"]
        lines += _table(["process", "jets"], sorted(per_process.items())) + [""]
        labels = meta.get("reweighting", {}).get("labels", {})
        rows = [(label, n, _number(labels.get(label, {}).get("effective_jets"), 1),
                 _number(labels.get(label, {}).get("weight_share"), 3)) for label, n in meta["jets_per_label"].items()]
        lines += _table(["truth label", "jets", "effective jets after reweighting", "share of summed weight"], rows)
        lines.append("")
    reweighting = sources.training_data.get("reweighting", {})
    settings = ", ".join(f"{k} {v}" for k, v in sorted(reweighting.get("settings", {}).items()))
    lines.append(f"Reweighting: every label's pt/eta spectrum to that of {sources.training_data['reference_flavour']} "
                 f"({settings or 'defaults'}); {reweighting.get('merged_bins', 0)} sparse bins merged"
                 + (f"; warnings: {'; '.join(reweighting['warnings'])}" if reweighting.get("warnings") else "") + ".")
    if sources.training_data.get("event_weight"):
        lines.append(f"Event weights: `{sources.training_data['event_weight']}`.")
    return lines


def _inputs_and_outputs(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    graph = tensors(sources.onnx)
    rows = []
    for tensor in graph["inputs"]:
        if tensor.name.startswith("mask_"):
            meaning = f"true for the real candidates of `{tensor.name[5:]}`, false for padding"
        elif tensor.name == "global":
            meaning = ", ".join(metadata["features"]["global"])
        else:
            meaning = (f"{', '.join(metadata['features'][tensor.name])} of up to "
                       f"{metadata['n_candidates'][tensor.name]} candidates, padded with zeros")
        rows.append((f"`{tensor.name}`", _shape(tensor), tensor.dtype, meaning))
    outputs = []
    for tensor in graph["outputs"]:
        if tensor.name == "probabilities":
            meaning = "class probabilities, columns " + ", ".join(metadata["classes"])
        else:
            meaning = "; ".join(f"{t['name']} ({t['loss']}" + (f", quantiles {t['quantiles']}" if t["quantiles"] else "")
                                + f"): columns {t['columns']}" for t in metadata.get("regression", []))
        outputs.append((f"`{tensor.name}`", _shape(tensor), tensor.dtype, meaning))
    return ["## Inputs and outputs", "",
            "Raw features in the units of the training ntuples, in the order given: any standardisation and "
            "feature building happens inside the graph. `jets` is the batch dimension.", "",
            *_table(["input", "shape", "type", "content"], rows), "",
            *_table(["output", "shape", "type", "content"], outputs)]


def _performance(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    aucs = sources.aucs.get("auc", {})
    selections = list(dict.fromkeys(s for per in aucs.values() for s in per))
    lines = ["## Performance", "", f"On the {sources.test_data['n_jets']} jets of the test dataset"
             + (", weighted by their event weights" if sources.test_data.get("event_weight") else "") + ".", "",
             "### AUC", "",
             *_table(["discriminator", *selections],
                     [(name, *(_number(per.get(s)) for s in selections)) for name, per in aucs.items()]), "",
             "### Working points", "",
             "Thresholds at the target mis-identification rates, derived on one selection; efficiency and "
             "mis-identification of each threshold on every selection.", ""]
    rates = {}
    for row in sources.rates:
        rates.setdefault((row["discriminator"], row["working_point"], row["derived_on"]), {})[row["selection"]] = row
    chosen = list(dict.fromkeys(row["selection"] for row in sources.rates))
    rows = []
    for point in sources.working_points:
        per = rates.get((point["discriminator"], point["working_point"], point["derived_on"]), {})
        rows.append((point["discriminator"], point["working_point"], point["derived_on"], f"{point['target_misid']:g}",
                     _number(point["threshold"]),
                     *(f"{_number(per[s]['efficiency'], 3)} / {_number(per[s]['misid'], 4)}" if s in per else "n/a"
                       for s in chosen)))
    lines += _table(["discriminator", "WP", "derived on", "target mis-id", "threshold",
                     *(f"eff. / mis-id {s}" for s in chosen)], rows)
    if sources.charm_working_points:
        lines += ["", "Charm working points (a jet passes when both values reach their thresholds):", "",
                  *_table(["discriminators", "WP", "derived on", "thresholds", "efficiency", "mis-ids"],
                          [(" & ".join(r["discriminators"]), r["working_point"], r["derived_on"],
                            " / ".join(_number(t) for t in r["thresholds"]), _number(r["efficiency"], 3),
                            " / ".join(_number(m, 4) for m in r["misids"])) for r in sources.charm_working_points])]
    return lines


def _cost(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    profile = sources.profile
    machine = profile["machine"]
    rows = [(r["threads"] if r["threads"] != "all" else f"all ({r['intra_op_num_threads']})", r["batch_size"],
             _number(r["median_ms"], 3), _number(r["p90_ms"], 3), f"{r['jets_per_second']:.0f}",
             _number(r["peak_rss_increase_mb"], 1)) for r in profile["rows"]]
    return ["## Cost", "",
            f"onnxruntime {machine['onnxruntime']} on {machine['cpu']} ({machine['cores']} cores usable), "
            f"CPU execution provider; {profile['method']['setting']}, each timed for at least "
            f"{profile['seconds_per_setting']:g} s. Latency: {profile['method']['latency']}; memory: "
            f"{profile['method']['memory']}. Figures of that machine, at the time of the measurement.", "",
            *_table(["intra-op threads", "batch size", "median latency [ms]", "90% latency [ms]",
                     "throughput [jets/s]", "peak RSS increase [MB]"], rows)]


def _deployment(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    check = sources.check
    return ["## Deployment", "",
            f"`model.onnx` carries this card's essentials as ONNX metadata ({', '.join(sorted(metadata))}). "
            f"onnxruntime reproduced the trained model on {check['n_jets_checked']} held-out jets within "
            f"{check['max_abs_difference']:.1e} (tolerance {check['tolerance']:.0e}; batch sizes "
            f"{', '.join(sorted(check['max_abs_difference_by_batch_size'], key=int))}).", "",
            f"Triton: `triton/{triton['name']}/` (platform onnxruntime_onnx, max_batch_size "
            f"{triton['max_batch_size']}, dynamic batching with preferred batch sizes "
            f"{', '.join(map(str, triton['preferred_batch_sizes']))}, at most "
            f"{triton['max_queue_delay_microseconds']} us of queueing); point the server's model repository at "
            f"`triton/`."]


def _limitations(sources: Sources, metadata: Mapping, triton: Mapping) -> list[str]:
    meta = sources.training_data
    items = []
    if sources.simulated:
        items.append("The jets are b-hive's own simulation (Pythia 8 and b-hive's detector model), not CMS "
                     "simulation or data: the performance above says nothing about CMS events.")
    items += [f"Outside pt [{meta['bins_pt'][0]:g}, {meta['bins_pt'][-1]:g}) GeV or eta [{meta['bins_eta'][0]:g}, "
              f"{meta['bins_eta'][-1]:g}) the model never saw a jet; its scores there are extrapolations.",
              "Efficiencies and thresholds are measured on simulation; data-to-simulation scale factors are not "
              "part of this package.",
              f"The figures come from one test dataset of {sources.test_data['n_jets']} jets and carry its "
              f"statistical uncertainty (the working-point plots of the evaluation show intervals).",
              f"Candidates beyond the first {', '.join(f'{n} ({g})' for g, n in metadata['n_candidates'].items())} "
              f"of a jet are not seen; they must be ordered as in training." if metadata["n_candidates"] else
              "Only per-jet features are read.",
              "The cost table is of one machine; measure again on the deployment's."]
    if sources.model == "GradientBoosting":
        items.append("The trees are onnxruntime ai.onnx.ml operators, which run on the CPU execution provider "
                     "even when the server has a GPU.")
    if "regression" in metadata:
        items.append("Regression outputs are in the targets' units; their response and resolution are in the "
                     "evaluation's regression tables, not here.")
    return ["## Known limitations", "", *(f"- {item}" for item in items)]
