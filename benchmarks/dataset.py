"""Dataset-construction throughput and memory, each figure beside its reference from the same run.

    python -m benchmarks.dataset [--config hlt_ak4] [--jets 20000] [--copies 100] [--json out.json]

Rows:
- conversion of ``copies`` x the input (processor + shards, iterative executor, pinned to one
  core, as the raw read is) in jets/s beside reading and decompressing the same branches of
  the same files with uproot alone, measured before and after the conversions and the faster
  kept: the ratio is the conversion's speed relative to the raw read (aim: >= 0.5). The
  conversion inflates ZLIB baskets with ISA-L (:mod:`bhive.decompression`), uproot by default
  with zlib, and caches uproot's class names (:mod:`bhive.class_names`), so a second row sets
  the conversion beside the same read with both;
- peak RSS of converting ``copies`` x the input beside a tenth of that, each in a fresh
  process: memory must not grow with the input (limit: 1.5);
- writing into new page-cache pages beside the same write into pages just freed: what each
  byte written costs on this machine (:func:`page_cache_write_rates`);
- the same conversion with 2 workers (futures executor, shards merged by 2 threads) beside the
  one-core conversion (aim: >= 1.7).
Large inputs are hard links to one generated file under different names.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import print_table

# The config, the conversion, the simulation and the processors (coffea) are imported where
# they are used: with several processes the conversion merges the shards in a spawned process,
# which imports the main module again, and `law run`, whose main module imports nothing,
# does not pay for them there either.


@contextlib.contextmanager
def one_core():
    """Run the block on one CPU of those this process may use: a "1 core" figure then cannot
    borrow another core for the threads that read and write files."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def make_input(cfg, directory: Path, n_jets: int) -> Path:
    from bhive.simulation.production import generate_file, plan_files

    plan = next(p for p in plan_files(cfg.simulate, "train", seed=1) if p.process == "ttbar")
    plan = dataclasses.replace(plan, n_jets=n_jets)
    path = directory / plan.filename
    generate_file(plan, cfg.simulate, cfg.treename, path)
    return path


def raw_read_seconds(cfg, path: Path, branches: set[str], repeats: int = 2,
                     clock=time.perf_counter, as_converted: bool = False) -> float:
    """Best time to read and decompress ``branches`` of ``path`` with uproot alone: as uproot
    reads by default, or ``as_converted``, with the conversion's settings (ZLIB baskets
    inflated by ISA-L, :mod:`bhive.decompression`; class names cached, :mod:`bhive.class_names`)."""
    import uproot.compression
    import uproot.model

    from bhive import class_names

    inflater = uproot.compression._decompress_ZLIB
    library, regularize = inflater.library, uproot.model.classname_regularize
    if as_converted:
        inflater.library = "isal"
        class_names.cache_class_names()
    else:
        inflater.library = "zlib"
        uproot.model.classname_regularize = getattr(regularize, "__wrapped__", regularize)
    try:
        best = float("inf")
        for _ in range(repeats):
            started = clock()
            with uproot.open(path) as file:
                file[cfg.treename].arrays(sorted(branches), library="ak")
            best = min(best, clock() - started)
    finally:
        inflater.library, uproot.model.classname_regularize = library, regularize
    return best


def page_cache_write_rates(directory: Path, n_bytes: int = 2**30) -> tuple[float, float]:
    """Bytes/s of writing a new file of ``n_bytes`` into the page cache, and of the same write
    again right after the first file is deleted, into the pages it freed. On bare metal the two
    are alike. On a virtual machine whose host backs guest memory only when it is first touched
    and takes freed memory back a few seconds later (free page reporting), every page a write
    keeps is new to the guest and costs a fault in the host, so the first is several times
    slower: what each byte of pieces and shards would cost the conversion through the page
    cache (it writes them past it, :mod:`bhive.direct_io`)."""
    block = np.random.default_rng(0).integers(0, 256, 64 * 2**20, dtype=np.uint8)

    def write(path: Path) -> float:
        started = time.perf_counter()
        with open(path, "wb") as stream:
            stream.writelines(block for _ in range(n_bytes // block.nbytes))
        seconds = time.perf_counter() - started
        path.unlink()
        return n_bytes / seconds

    return write(directory / "new_pages.bin"), write(directory / "freed_pages.bin")


def convert(cfg, files: list[str], work: Path, chunk_size: int, shard_size: int, workers: int = 1) -> dict:
    from bhive import construction
    from processors.base import processor_class

    started = time.perf_counter()
    settings = construction.ExecutorSettings(executor="iterative" if workers == 1 else "futures", processes=workers,
                                             chunk_size=chunk_size)
    piece_dirs = construction.process_files(cfg, files, work / "pieces", settings, processor_class(cfg.processor),
                                            seed=1)
    processed = time.perf_counter()
    meta = construction.build_dataset(cfg, piece_dirs, work / "dataset", split="train", seed=1,
                                      shard_size=shard_size, dataset_identity={"benchmark": True}, processes=workers)
    finished = time.perf_counter()
    written = sum(path.stat().st_size for path in work.rglob("*") if path.is_file())
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_seconds": own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime,
            "kernel_seconds": own.ru_stime + workers.ru_stime, "n_jets_read": meta["counts"]["read"], "process_seconds": processed - started, "written_gb": written / 1e9,
            "merge_seconds": finished - processed, "seconds": finished - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args) -> None:
    """Convert in this fresh process and print the result as JSON (used for the memory rows)."""
    from bhive.config import load_config

    cfg = load_config(args.config)
    files = [line for line in Path(args.child).read_text().splitlines() if line]
    with one_core() if args.workers == 1 else contextlib.nullcontext():
        result = convert(cfg, files, Path(args.work), args.chunk_size, args.shard_size, args.workers)
    print(json.dumps(result))


def _convert_in_child(config, files, work: Path, chunk_size, shard_size, workers: int = 1) -> dict:
    listing = work.with_suffix(".txt")
    listing.write_text("\n".join(files))
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.dataset", "--config", config, "--child", str(listing), "--work", str(work),
         "--chunk-size", str(chunk_size), "--shard-size", str(shard_size), "--workers", str(workers)],
        check=True, capture_output=True, text=True)
    # gigabytes of pieces and shards: removed, and the disk left to finish with them, before the
    # next conversion, so that neither their writing back nor their freeing runs alongside it
    shutil.rmtree(work)
    os.sync()
    return json.loads(output.stdout.strip().splitlines()[-1])


def run(config: str, n_jets: int, copies: int, chunk_size: int, shard_size: int) -> list[dict]:
    from bhive.config import load_config
    from processors.base import processor_class

    cfg = load_config(config)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source = make_input(cfg, scratch, n_jets)
        branches = processor_class(cfg.processor)(cfg, scratch, {}).required_branches()
        copies_dir = scratch / "copies"
        copies_dir.mkdir()
        many = []
        for i in range(copies):
            link = copies_dir / f"ttbar_copy_{i:04d}.root"
            os.link(source, link)
            many.append(str(link))
        n_small = max(1, copies // 10)

        def raw_reads() -> tuple[float, float, float]:
            with one_core():
                return (copies * raw_read_seconds(cfg, source, branches),
                        copies * raw_read_seconds(cfg, source, branches, clock=time.process_time),
                        copies * raw_read_seconds(cfg, source, branches, as_converted=True))

        # the reads before and after the conversions, the faster of each kept: a machine that
        # slows down or speeds up during the run then does not flatter the ratios
        before = raw_reads()
        small = _convert_in_child(config, many[:n_small], scratch / "small", chunk_size, shard_size)
        large = _convert_in_child(config, many, scratch / "large", chunk_size, shard_size)
        parallel = _convert_in_child(config, many, scratch / "parallel", chunk_size, shard_size, workers=2)
        raw, raw_cpu, raw_isal = map(min, before, raw_reads())
        new_pages, freed_pages = page_cache_write_rates(scratch)
        n_total = copies * n_jets
        rows.append({
            "stage": f"dataset conversion ({n_total} jets, 1 core)", "figure": n_total / large["seconds"],
            "unit": "jets/s", "reference": n_total / raw, "reference_name": "uproot read+decompress, same branches",
            "ratio": raw / large["seconds"], "limit": 0.5,
            "detail": {"process_seconds": large["process_seconds"], "merge_seconds": large["merge_seconds"],
                       "raw_read_seconds": raw, "written_gb": large["written_gb"],
                       # CPU time, which other work on a shared machine disturbs less than wall time
                       "cpu_seconds": large["cpu_seconds"], "raw_read_cpu_seconds": raw_cpu,
                       "kernel_seconds": large["kernel_seconds"],
                       "new_page_write_seconds": large["written_gb"] * 1e9 / new_pages,
                       "freed_page_write_seconds": large["written_gb"] * 1e9 / freed_pages},
        })
        rows.append({
            "stage": f"dataset conversion ({n_total} jets, 1 core)", "figure": n_total / large["seconds"],
            "unit": "jets/s", "reference": n_total / raw_isal,
            "reference_name": "same read with the conversion's uproot settings (ISA-L, class names cached)",
            "ratio": raw_isal / large["seconds"],
        })
        rows.append({
            "stage": "page-cache writes into new pages", "figure": new_pages / 1e6, "unit": "MB/s",
            "reference": freed_pages / 1e6, "reference_name": "same write into pages just freed",
            "ratio": new_pages / freed_pages,
        })
        rows.append({
            "stage": f"dataset peak RSS ({n_total} jets)", "figure": large["peak_rss_mb"], "unit": "MB",
            "reference": small["peak_rss_mb"], "reference_name": f"same for {n_small * n_jets} jets",
            "ratio": large["peak_rss_mb"] / small["peak_rss_mb"], "limit": 1.5,
        })
        rows.append({
            "stage": f"dataset conversion ({n_total} jets, 2 workers)", "figure": n_total / parallel["seconds"],
            "unit": "jets/s", "reference": n_total / large["seconds"], "reference_name": "same on 1 core",
            "ratio": large["seconds"] / parallel["seconds"], "limit": 1.7,
            "detail": {"process_seconds": parallel["process_seconds"], "merge_seconds": parallel["merge_seconds"]},
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="hlt_ak4")
    parser.add_argument("--jets", type=int, default=20_000, help="jets in the generated input file")
    parser.add_argument("--copies", type=int, default=100, help="copies of the file for the large input")
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    rows = run(args.config, args.jets, args.copies, args.chunk_size, args.shard_size)
    print_table(rows)
    detail = rows[0]["detail"]
    print(f"one core: processing {detail['process_seconds']:.1f} s, merging into shards {detail['merge_seconds']:.1f} s, "
          f"raw read {detail['raw_read_seconds']:.1f} s (the processing pass alone at "
          f"{detail['raw_read_seconds'] / detail['process_seconds']:.2f} of it); CPU time {detail['cpu_seconds']:.1f} s (kernel "
          f"{detail['kernel_seconds']:.1f} s) beside "
          f"{detail['raw_read_cpu_seconds']:.1f} s for the raw read (ratio "
          f"{detail['raw_read_cpu_seconds'] / detail['cpu_seconds']:.2f})")
    print(f"the {detail['written_gb']:.1f} GB of pieces and shards it writes past the page cache would take "
          f"{detail['new_page_write_seconds']:.1f} s of CPU time here through it (new pages), "
          f"{detail['freed_page_write_seconds']:.1f} s into pages just freed")
    parallel = rows[-1]["detail"]  # each stage's speed-up over one core: the merge is what scales least
    print(f"two workers: processing {parallel['process_seconds']:.1f} s "
          f"({detail['process_seconds'] / parallel['process_seconds']:.2f} x one core), merging into shards "
          f"{parallel['merge_seconds']:.1f} s ({detail['merge_seconds'] / parallel['merge_seconds']:.2f} x)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
