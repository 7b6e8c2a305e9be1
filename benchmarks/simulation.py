"""Simulated-sample throughput, each figure beside its reference measured in the same run.

    python -m benchmarks.simulation [--config hlt_ak4] [--jets 3000] [--json results.json]

Rows:
- per process, full simulation (Pythia + clustering + labels + detector + ROOT writing) in
  jets/s on one core, beside Pythia alone generating the same events with the same seed:
  the ratio is the share of time spent in Pythia, 1 - ratio is b-hive's own overhead;
- the whole sample plan on all cores beside one core: the ratio is the parallel speed-up,
  whose limit is the number of worker processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.report import print_table
from bhive.config import load_config
from bhive.simulation.generator import EventSource
from bhive.simulation.production import EVENTS_PER_BATCH, generate_file, generate_files, plan_files


def _pythia_only_seconds(process, ecm_gev: float, seed: int, n_events: int) -> float:
    source = EventSource(process, ecm_gev, seed)
    batch = EVENTS_PER_BATCH[process.kind]
    started = time.perf_counter()
    generated = 0
    for events in source.batches(batch):
        generated += len(events)
        if generated >= n_events:
            break
    return time.perf_counter() - started


def run(config: str, n_jets: int, workers: int) -> list[dict]:
    cfg = load_config(config)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        first_per_process = {}
        for plan in plan_files(cfg.simulate, "train", seed=1):
            first_per_process.setdefault(plan.process, dataclasses.replace(plan, n_jets=n_jets))
        for name, plan in first_per_process.items():
            started = time.perf_counter()
            entry = generate_file(plan, cfg.simulate, cfg.treename, directory / plan.filename)
            full = time.perf_counter() - started
            pythia = _pythia_only_seconds(cfg.simulate.processes[name], cfg.simulate.ecm_gev,
                                          plan.pythia_seed, entry["n_events"])
            rows.append({
                "stage": f"simulation {name} (1 core)",
                "figure": n_jets / full, "unit": "jets/s",
                "reference": n_jets / pythia, "reference_name": "Pythia alone, same events",
                "ratio": pythia / full,
            })

        plans = [dataclasses.replace(p, n_jets=n_jets // 2) for p in first_per_process.values() for _ in range(workers)]
        plans = [dataclasses.replace(p, index=i) for i, p in enumerate(plans)]
        timings = {}
        for n_workers in (1, workers):
            started = time.perf_counter()
            generate_files(plans, cfg.simulate, cfg.treename, directory / f"w{n_workers}", workers=n_workers)
            timings[n_workers] = time.perf_counter() - started
        total = sum(p.n_jets for p in plans)
        rows.append({
            "stage": f"simulation sample ({workers} workers)",
            "figure": total / timings[workers], "unit": "jets/s",
            "reference": total / timings[1], "reference_name": "same files on 1 worker",
            "ratio": timings[1] / timings[workers], "limit": workers,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="hlt_ak4")
    parser.add_argument("--jets", type=int, default=3000, help="jets per process and measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.config, args.jets, args.workers)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
