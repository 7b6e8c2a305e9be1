"""How much AUC a test attack takes from a nominally and from an adversarially trained model.

    python -m benchmarks.robustness --config hlt_ak4 --version v1 --model DeepJet \
        --nominal-training v1 --adversarial-training adv --test-attack fgsm_eps0.05

Reads the ``robustness.json`` of two EvaluationTask runs with the same ``--test-attack`` (one
per training) and prints, per discriminator, the AUC lost under the attack by each model, the
adversarial model's loss beside the nominal model's as the reference (ratio < 1: the
adversarial training made the model more robust).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.report import print_table
from bhive.store import store_root


def robustness(config: str, version: str, training: str, model: str, attack: str, seed: int) -> dict[str, dict]:
    path = (store_root() / "EvaluationTask" / config / version / version / training / f"{model}-{attack}"
            / "robustness.json")
    if not path.exists():
        raise SystemExit(f"{path} is missing: run EvaluationTask --training-version {training} --model-name {model} "
                         f"with the test attack {attack} first")
    return {row["discriminator"]: row for row in json.loads(path.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="hlt_ak4")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--model", default="DeepJet")
    parser.add_argument("--nominal-training", default="v1")
    parser.add_argument("--adversarial-training", default="adv")
    parser.add_argument("--test-attack", default="fgsm_eps0.05", help="the attack's label, as in the scores' path")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    nominal, adversarial = (robustness(args.config, args.version, training, args.model, args.test_attack, args.seed)
                            for training in (args.nominal_training, args.adversarial_training))
    rows = []
    for name, row in nominal.items():
        other = adversarial[name]
        lost, lost_adversarial = row["auc_nominal"] - row["auc_attacked"], other["auc_nominal"] - other["auc_attacked"]
        rows.append({"stage": f"{name} AUC lost under {args.test_attack}: adversarial training (AUC "
                              f"{other['auc_nominal']:.4f} -> {other['auc_attacked']:.4f})",
                     "figure": lost_adversarial * 1000, "unit": "e-3", "reference": lost * 1000,
                     "reference_name": f"nominal training (AUC {row['auc_nominal']:.4f} -> {row['auc_attacked']:.4f})",
                     "ratio": lost_adversarial / lost if lost else float("nan")})
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"nominal": nominal, "adversarial": adversarial}, indent=2) + "\n")


if __name__ == "__main__":
    main()
