"""Tagging quality of trained models on a test dataset, each beside the DNN baseline.

    python -m benchmarks.quality --config hlt_ak4 --version v1 --models DNN DeepJet ParticleNet

Reads the trained models and the test dataset from the store (run TrainingTask for each
model and DatasetConstructionTask --split test first) and prints, per model, the b-vs-udsg
AUC and light-jet mis-identification at 70% b efficiency, the b-vs-c AUC, and the fraction
of c jets whose highest score is c (the c column of the confusion matrix), on the unweighted
test jets. The ratio column is the AUC relative to the first model given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from benchmarks.report import print_table
from bhive.config import load_config
from bhive.discriminators import discriminator
from bhive.store import store_root
from dataloaders.base import LoaderSettings, dataloader_class
from models.base import load_model


def scores(config: str, version: str, model_name: str, seed: int, training_version: str | None = None) -> dict:
    cfg = load_config(config)
    test = store_root() / "DatasetConstructionTask" / config / version / f"seed_{seed}" / "test"
    model = load_model(store_root() / "TrainingTask" / config / version / (training_version or version) / model_name
                       / "model")
    groups = type(model).used_groups(model.spec)
    loader = dataloader_class(cfg.dataloader)(test, groups, cfg.classes, LoaderSettings(batch_size=4096))
    batches = list(loader.inference_batches())
    probabilities = model.predict(batches)
    labels = np.concatenate([b["label"] for b in batches])
    classes = list(model.classes)
    is_b = labels == classes.index("b")
    is_light = np.isin(labels, [classes.index("uds"), classes.index("g")])
    is_c = labels == classes.index("c")
    bvsl = discriminator(probabilities, classes, ["b"], ["uds", "g"])
    bvsc = discriminator(probabilities, classes, ["b"], ["c"])
    selected = is_b | is_light
    fpr, tpr, _ = roc_curve(is_b[selected], bvsl[selected])
    return {"bvsl_auc": roc_auc_score(is_b[selected], bvsl[selected]),
            "light_misid_at_70": float(np.interp(0.70, tpr, fpr)),
            "bvsc_auc": roc_auc_score(is_b[is_b | is_c], bvsc[is_b | is_c]), "n_jets": int(selected.sum()),
            "c_predicted_c": float((probabilities[is_c].argmax(axis=1) == classes.index("c")).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="hlt_ak4")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--training-version", help="default: --version")
    parser.add_argument("--models", nargs="+", default=["DNN", "DeepJet", "ParticleNet"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {name: scores(args.config, args.version, name, args.seed, args.training_version) for name in args.models}
    baseline = results[args.models[0]]
    rows = [{"stage": f"{name} BvsL AUC (light mis-id @70% b: {r['light_misid_at_70']:.2%}, BvsC AUC "
                      f"{r['bvsc_auc']:.3f}, c jets ranked c {r['c_predicted_c']:.1%})", "figure": r["bvsl_auc"] * 1000, "unit": "e-3",
             "reference": baseline["bvsl_auc"] * 1000, "reference_name": f"{args.models[0]} BvsL AUC",
             "ratio": r["bvsl_auc"] / baseline["bvsl_auc"]} for name, r in results.items()]
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
