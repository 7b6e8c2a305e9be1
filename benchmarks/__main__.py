"""Every benchmark in one table: each stage's figure beside its limit or reference measured in
the same run, and the ratio.

    python -m benchmarks [--quick] [--json benchmarks.json]

--quick sizes the inputs to finish in about two minutes on 2 cores; the full mode sizes them
so that the ratios are stable (several minutes). Rows for CUDA appear where a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks import dataset, evaluation, simulation, training
from benchmarks.report import print_table

SIZES = {
    "quick": {"simulation_jets": 800, "dataset_jets": 5000, "dataset_copies": 20, "training_jets": 20000,
              "training_steps": 3, "evaluation_jets": 1_000_000, "shard_size": 5000},
    "full": {"simulation_jets": 4000, "dataset_jets": 20000, "dataset_copies": 100, "training_jets": 100000,
             "training_steps": 20, "evaluation_jets": 10_000_000, "shard_size": 50_000},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs, about two minutes on 2 cores")
    parser.add_argument("--config", default="hlt_ak4")
    parser.add_argument("--json", type=Path, default=Path("benchmarks.json"))
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()
    rows = []
    rows += simulation.run(args.config, sizes["simulation_jets"], os.cpu_count() or 1)
    # memory is bounded by chunk and shard size, so both input sizes must exceed them
    rows += dataset.run(args.config, sizes["dataset_jets"], sizes["dataset_copies"],
                        chunk_size=sizes["shard_size"], shard_size=sizes["shard_size"])
    # torch.compile takes about a minute to compile ParticleNet on 2 cores: not in --quick
    rows += training.run(None, sizes["training_jets"], batch_size=1024, steps=sizes["training_steps"],
                         compile_model=not args.quick)
    rows += evaluation.run(sizes["evaluation_jets"])
    print_table(rows)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "mode": "quick" if args.quick else "full", "seconds": time.perf_counter() - started}
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2, default=float) + "\n")
    print(f"\nwritten to {args.json} ({machine['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
