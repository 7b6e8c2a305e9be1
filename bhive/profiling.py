"""What an exported graph costs on a CPU with onnxruntime: latency per call (median and 90th
percentile) and throughput at several batch sizes, on one thread and on all cores, and the
memory a fresh process needs to run it (``profile.json``, ``profile.csv``, ``plots/profile``).

Every setting (threads x batch size) is measured in a fresh Python process (``python -m
bhive.profiling``), so that no thread pool, memory arena or cache of one setting serves the
next, and so that the memory figure means something: the increase of the process's peak
resident set size from before the session is created (numpy, onnxruntime and
the input jets already loaded) to after it has run; it holds the graph, onnxruntime's arena and
the activations of the batch size (on Linux the peak is reset to the current RSS first, so
that peaks while importing do not hide it). The jets are test jets, repeated where the dataset has fewer
than the largest batch. The figures describe the machine they were measured on, which
``profile.json`` names; nothing checks them against a target.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_JSON, PROFILE_CSV, PLOT = "profile.json", "profile.csv", "plots/profile"
BATCH_SIZES = (1, 16, 64, 256, 1024)
#: thread settings: onnxruntime's intra_op_num_threads of 1, and of every core this process may use
THREADS = ("1", "all")
COLUMNS = ("threads", "intra_op_num_threads", "batch_size", "calls", "median_ms", "p90_ms", "jets_per_second",
           "peak_rss_increase_mb")
#: calls before timing (allocations, first-call work), and at least this many timed calls
WARMUP_CALLS, MIN_CALLS = 3, 10
METHOD = {"setting": "each thread setting and batch size in a fresh process",
          "latency": f"wall time of session.run per call, after {WARMUP_CALLS} untimed calls",
          "throughput": "jets of all timed calls over their summed time",
          "memory": "increase of the process's peak RSS from before creating the session to after the timed calls, "
                    "with numpy, onnxruntime and the inputs already loaded"}
#: how the peak RSS was read (bhive.profiling._memory_probe)
MEMORY_METHODS = {"VmHWM": "Linux VmHWM, reset to the current RSS before the session (/proc/self/clear_refs)",
                  "ru_maxrss": "increase of ru_maxrss (peaks below earlier ones, e.g. at import, are not seen)"}


class ProfileError(RuntimeError):
    """A profiling setting that cannot be run or measured."""


def cores() -> int:
    """The cores this process may run on (a batch slot's, not the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(setting: str) -> int:
    if setting == "all":
        return cores()
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    raise ProfileError(f"thread setting {setting!r}: give a positive number or 'all'")


def repeated(batch: Mapping[str, np.ndarray], n_jets: int) -> dict[str, np.ndarray]:
    """The first ``n_jets`` jets of ``batch``, repeated from its start where it has fewer."""
    size = len(next(iter(batch.values())))
    if size == 0:
        raise ProfileError("no jets to profile with: the test dataset is empty")
    repeats = -(-n_jets // size)
    return {k: np.ascontiguousarray(np.concatenate([v] * repeats)[:n_jets]) for k, v in batch.items()}


def test_jets(dataloader: str, dataset_dir: Path, classes: Mapping, onnx_path: Path,
              n_jets: int) -> dict[str, np.ndarray]:
    """Up to ``n_jets`` jets of a test dataset as the graph's inputs (by name), read by the
    config's dataloader as the export's check reads them."""
    from bhive.onnx_io import tensors
    from bhive.plugins.dataloader import LoaderSettings, dataloader_class

    names = [tensor.name for tensor in tensors(onnx_path)["inputs"]]
    groups = tuple(name for name in names if not name.startswith("mask_"))
    loader = dataloader_class(dataloader)(dataset_dir, groups, classes, LoaderSettings(batch_size=n_jets))
    batch = next(iter(loader.inference_batches()), None)
    if batch is None:
        raise ProfileError(f"no jets to profile with: the test dataset {dataset_dir} is empty")
    return {name: batch[name] for name in names}


def measure(onnx_path: Path, inputs: Mapping[str, np.ndarray], batch_sizes: Sequence[int] = BATCH_SIZES,
            threads: Sequence[str] = THREADS, seconds: float = 1.0) -> list[dict[str, Any]]:
    """One row per thread setting and batch size (``COLUMNS``), each timed for at least
    ``seconds`` (and ``MIN_CALLS`` calls) in a fresh process."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ProfileError(f"batch sizes {list(batch_sizes)}: give one or more positive sizes")
    jets = repeated(inputs, max(batch_sizes))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bhive-profile-") as scratch:
        arrays = Path(scratch) / "inputs.npz"
        np.savez(arrays, **jets)
        for setting in threads:
            for size in batch_sizes:
                measured = _in_fresh_process(onnx_path, arrays, thread_count(setting), size, seconds)
                rows.append({"threads": setting, "intra_op_num_threads": thread_count(setting), "batch_size": size,
                             **measured, "memory_method": MEMORY_METHODS[measured["memory_method"]]})
    return rows


def _in_fresh_process(onnx_path: Path, arrays: Path, threads: int, batch_size: int, seconds: float) -> dict:
    package_root = str(Path(__file__).resolve().parents[1])
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root,
                                                                             os.environ.get("PYTHONPATH"))))}
    arguments = json.dumps({"onnx": str(onnx_path), "arrays": str(arrays), "threads": threads,
                            "batch_size": batch_size, "seconds": seconds})
    done = subprocess.run([sys.executable, "-m", "bhive.profiling", arguments], capture_output=True, text=True,
                          env=environment, timeout=600 + 10 * seconds)
    if done.returncode != 0:
        raise ProfileError(f"profiling {batch_size} jets on {threads} thread(s) failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_probe() -> tuple[str, Any]:
    """How this process's peak RSS is read: Linux's VmHWM after resetting it to the current RSS
    (``/proc/self/clear_refs``), so that import-time peaks do not hide the session's; elsewhere
    the increase of ``ru_maxrss``, which can only see peaks above the earlier ones."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return "ru_maxrss", lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def read(field: str) -> int:
        line = next(line for line in status.read_text().splitlines() if line.startswith(f"{field}:"))
        return int(line.split()[1]) * 1024  # kB

    return "VmHWM", read


def measure_here(onnx: str, arrays: str, threads: int, batch_size: int, seconds: float) -> dict[str, Any]:
    """One setting, in this process (the fresh one :func:`measure` starts)."""
    import onnxruntime

    with np.load(arrays, allow_pickle=False) as stored:
        feeds = {k: np.ascontiguousarray(stored[k][:batch_size]) for k in stored.files}
    method, probe = _memory_probe()
    before = probe("VmRSS") if method == "VmHWM" else probe()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    for _ in range(WARMUP_CALLS):
        session.run(None, feeds)
    durations: list[float] = []
    start = time.perf_counter()
    while len(durations) < MIN_CALLS or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        session.run(None, feeds)
        durations.append(time.perf_counter() - begin)
    peak = probe("VmHWM") if method == "VmHWM" else probe()
    return {"memory_method": method, "calls": len(durations), "median_ms": 1e3 * float(np.median(durations)),
            "p90_ms": 1e3 * float(np.percentile(durations, 90)),
            "jets_per_second": batch_size * len(durations) / float(np.sum(durations)),
            "peak_rss_increase_mb": (peak - before) / 2**20}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import onnxruntime

    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")), name)
    return {"cpu": name, "cores": cores(), "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def write_profile(onnx_path: Path, inputs: Mapping[str, np.ndarray], directory: Path,
                  batch_sizes: Sequence[int] = BATCH_SIZES, threads: Sequence[str] = THREADS,
                  seconds: float = 1.0) -> dict[str, Any]:
    """Measure ``onnx_path`` on ``inputs`` (arrays by graph input name) and write
    ``profile.json``, ``profile.csv`` and the plot into ``directory``."""
    from bhive.store import atomic_write, atomic_write_json, file_record

    rows = measure(onnx_path, inputs, batch_sizes, threads, seconds)
    memory = sorted({row.pop("memory_method") for row in rows})
    profile = {"onnx": file_record(Path(onnx_path)), "inputs": list(inputs), "machine": machine(),
               "method": {**METHOD, "memory": f"{METHOD['memory']}; read as {' / '.join(memory)}"},
               "seconds_per_setting": seconds, "columns": list(COLUMNS), "rows": rows}
    with atomic_write(directory / PROFILE_CSV, newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_profile(rows, directory / PLOT)
    atomic_write_json(directory / PROFILE_JSON, profile)
    return profile


def plot_profile(rows: Sequence[Mapping[str, Any]], stem: Path) -> None:
    """Latency (median, and the 90th percentile dashed) and throughput vs batch size, one line
    per thread setting."""
    from bhive import plotting

    fig, (latency, throughput) = plotting.figure(ncols=2, figsize=(20, 10))
    data: dict[str, Any] = {}
    for index, setting in enumerate(dict.fromkeys(r["threads"] for r in rows)):
        chosen = [r for r in rows if r["threads"] == setting]
        sizes = np.array([r["batch_size"] for r in chosen])
        n_threads = chosen[0]["intra_op_num_threads"]
        label = f"{n_threads} thread{'s' if n_threads > 1 else ''}" + (" (all cores)" if setting == "all" else "")
        median = np.array([r["median_ms"] for r in chosen])
        p90 = np.array([r["p90_ms"] for r in chosen])
        line = latency.plot(sizes, median, "o-", label=f"{label}, median")[0]
        latency.plot(sizes, p90, "--", color=line.get_color(), label=f"{label}, 90%")
        throughput.plot(sizes, [r["jets_per_second"] for r in chosen], "o-", color=line.get_color(), label=label)
        data.update({f"batch_size_{index}": sizes, f"median_ms_{index}": median, f"p90_ms_{index}": p90,
                     f"jets_per_second_{index}": np.array([r["jets_per_second"] for r in chosen])})
    data["threads"] = np.array(list(dict.fromkeys(r["threads"] for r in rows)))
    for ax, ylabel in ((latency, "latency per call [ms]"), (throughput, "throughput [jets / s]")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size [jets]")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    plotting.save(fig, stem, data)


if __name__ == "__main__":
    # one setting in a fresh process: the arguments as JSON in, the measurement as JSON out
    print(json.dumps(measure_here(**json.loads(sys.argv[1]))))
