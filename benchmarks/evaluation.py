"""ROC curve, AUC and three working points on many jets, beside sorting the same scores.

    python -m benchmarks.evaluation [--jets 10000000]

The reference is one numpy argsort of the scores: the floor for any exact ROC computation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.report import print_table
from bhive.roc import roc_curve, working_point


def run(n_jets: int) -> list[dict]:
    rng = np.random.default_rng(1)
    is_signal = rng.random(n_jets) < 0.3
    scores = np.where(is_signal, rng.beta(5, 2, n_jets), rng.beta(2, 5, n_jets))
    started = time.perf_counter()
    np.argsort(-scores, kind="stable")
    sort_seconds = time.perf_counter() - started
    started = time.perf_counter()
    curve = roc_curve(scores, is_signal)
    curve.auc()
    for target in (0.1, 0.01, 0.001):
        working_point(curve, target)
    seconds = time.perf_counter() - started
    return [{"stage": f"ROC + AUC + 3 working points ({n_jets} jets)", "figure": seconds * 1000, "unit": "ms",
             "reference": sort_seconds * 1000, "reference_name": "one argsort of the scores",
             "ratio": seconds / sort_seconds}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jets", type=int, default=10_000_000)
    args = parser.parse_args()
    print_table(run(args.jets))


if __name__ == "__main__":
    main()
