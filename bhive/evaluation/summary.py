"""The summary of one evaluated training: ``summary.json`` and ``summary.md`` (AUC per
discriminator and selection, working points, comparison, confusion matrix, training history)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bhive.evaluation.regression import markdown as regression_markdown
from bhive.evaluation.working_points import TABLE_COLUMNS
from bhive.store import atomic_write, atomic_write_json


CHARM_COLUMNS = ("discriminators", "derived_on", "working_point", "target_misids", "thresholds", "efficiency",
                 "misids")


def write_summary(title: str, config: str, model: str, aucs: Mapping, points: Sequence[Mapping],
                  charm_points: Sequence[Mapping], comparison: Mapping, confusion: Mapping,
                  history: Sequence[Mapping], directory: Path, notes: Sequence[str] = (),
                  robustness: Sequence[Mapping] = (), regression: Mapping[str, Mapping] | None = None) -> dict:
    """``summary.json`` and ``summary.md`` from the outputs of the other evaluation steps;
    ``notes`` are caveats shown at the top (e.g. a test dataset that also selected the epoch),
    ``robustness`` the nominal-versus-attacked table of a test attack, ``regression`` the
    response tables of the regression targets (:mod:`bhive.evaluation.regression`)."""
    regression = dict(regression or {})
    summary = {"config": config, "model": model, "auc": aucs["auc"], "notes": [*notes, *aucs["notes"]],
               "comparison_auc": comparison, "confusion": confusion,
               "working_points": [{k: row[k] for k in TABLE_COLUMNS} for row in points],
               "charm_working_points": [{k: row[k] for k in CHARM_COLUMNS} for row in charm_points],
               "epochs_trained": len(history), "final_val_loss": history[-1].get("val_loss"),
               "robustness": list(robustness),
               "regression": {name: {group: per["integrated"] for group, per in table["classes"].items()}
                              for name, table in regression.items()}}
    atomic_write_json(directory / "summary.json", summary)
    with atomic_write(directory / "summary.md") as stream:
        lines = markdown(title, summary, history)
        if regression:
            lines += ["", regression_markdown(regression)]
        stream.write("\n".join(lines) + "\n")
    return summary


def markdown(title: str, summary: Mapping, history: Sequence[Mapping]) -> list[str]:
    """The lines of ``summary.md``."""
    aucs, comparison, confusion = summary["auc"], summary["comparison_auc"], summary["confusion"]
    selections = next(iter(aucs.values()), {})
    lines = [f"# {title}", ""]
    lines += [f"> **Note:** {note}" for note in summary["notes"]] + ([""] if summary["notes"] else [])
    lines += ["## AUC", "", "| discriminator | " + " | ".join(selections) + " |", "|---|" + "---|" * len(selections)]
    for name, per in aucs.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in per.values()) + " |")
    lines += ["", "## Working points", "", "| discriminator | derived on | WP | target mis-id | threshold | "
              "efficiency | mis-id |", "|---|---|---|---|---|---|---|"]
    for row in summary["working_points"]:
        lines.append(f"| {row['discriminator']} | {row['derived_on']} | {row['working_point']} | "
                     f"{row['target_misid']:g} | {row['threshold']:.4f} | {row['efficiency']:.4f} | "
                     f"{row['misid']:.5f} |")
    if summary["charm_working_points"]:
        lines += ["", "## Charm working points (pairs of thresholds)", "", "| discriminators | derived on | WP | "
                  "target mis-ids | thresholds | efficiency | mis-ids |", "|---|---|---|---|---|---|---|"]
        for row in summary["charm_working_points"]:
            lines.append(f"| {' & '.join(row['discriminators'])} | {row['derived_on']} | {row['working_point']} | "
                         + " / ".join(f"{t:g}" for t in row["target_misids"]) + " | "
                         + " / ".join(f"{t:.4f}" for t in row["thresholds"]) + f" | {row['efficiency']:.4f} | "
                         + " / ".join(f"{m:.5f}" for m in row["misids"]) + " |")
    if any(len(per) > 1 for per in comparison.values()):
        labels = list(next(per for per in comparison.values() if len(per) > 1))
        lines += ["", "## Comparison (AUC, all jets)", "", "| discriminator | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for name, per in comparison.items():
            lines.append(f"| {name} | " + " | ".join(f"{per[k]:.4f}" if k in per else "" for k in labels) + " |")
    if summary["robustness"]:
        lines += ["", f"## Robustness under {summary['robustness'][0]['attack']} (all jets; mis-id and efficiency at "
                  f"the nominal medium threshold)", "", "| discriminator | AUC nominal | AUC attacked | efficiency "
                  "nominal | efficiency attacked | mis-id nominal | mis-id attacked |", "|---|---|---|---|---|---|---|"]
        for row in summary["robustness"]:
            lines.append(f"| {row['discriminator']} | {row['auc_nominal']:.4f} | {row['auc_attacked']:.4f} | "
                         f"{row['efficiency_nominal']:.4f} | {row['efficiency_attacked']:.4f} | "
                         f"{row['misid_nominal']:.5f} | {row['misid_attacked']:.5f} |")
    lines += ["", "## Confusion (fraction of each true class, by highest score)", "",
              "| true \\ predicted | " + " | ".join(confusion["classes"]) + " |",
              "|---|" + "---|" * len(confusion["classes"])]
    for cls, row in zip(confusion["classes"], confusion["matrix"]):
        lines.append(f"| {cls} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", f"Training: {len(history)} epochs, final validation loss "
              f"{history[-1].get('val_loss', float('nan')):.4f} (plots/loss.png)."]
    return lines
