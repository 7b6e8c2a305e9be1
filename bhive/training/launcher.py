"""Running a training on several processes: the task side of a torchrun launch.

The task process writes what the processes need into ``work/processes/job.json`` (config
file and hash, model, datasets, output, settings, plugin modules), starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m bhive.training.worker job.json

and waits. Every process (:mod:`~bhive.training.worker`) logs into ``rank_<r>.log`` (rank 0
also to the console) and reports how it ended in ``rank_<r>.json``: the task turns those into
one outcome, a finished training, a resumable stop, or one error naming the process that
failed first and its log.

SIGTERM and SIGINT reaching the task process go on to the training processes as SIGTERM (a
second Ctrl-C as SIGINT, which stops them at once); torchrun runs in its own process group so
that a Ctrl-C in the terminal reaches the processes once, through here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bhive.store import atomic_write_json, read_json
from bhive.training.state import TrainingError, TrainingInterrupted, TrainingStopped

PROCESSES = "processes"
JOB = "job.json"
WORKER = "bhive.training.worker"
_REPOSITORY = Path(__file__).resolve().parents[2]
#: how long the processes may take to end once torchrun has ended (a checkpoint being written)
STRAGGLER_SECONDS = 60.0


def log_path(directory: Path, rank: int) -> Path:
    return directory / f"rank_{rank}.log"


def report_path(directory: Path, rank: int) -> Path:
    return directory / f"rank_{rank}.json"


def write_report(directory: Path, rank: int, status: str, **details) -> None:
    """``status``: running, done, stopped (``stop``: interrupted or epoch) or failed (``error``, ``message``)."""
    atomic_write_json(report_path(directory, rank), {"rank": rank, "pid": os.getpid(), "status": status,
                                                     "time": time.time(), **details})


def _reports(directory: Path, devices: int) -> dict[int, dict]:
    reports = {}
    for rank in range(devices):
        with suppress(FileNotFoundError, ValueError):
            reports[rank] = read_json(report_path(directory, rank))
    return reports


def environment(devices: int) -> dict[str, str]:
    """The environment of a torchrun launch of ``devices`` processes of this b-hive."""
    env = dict(os.environ)
    # the processes import this b-hive, installed or not
    paths = [str(_REPOSITORY), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # torchrun would give each process one thread; share the cores instead (an explicit setting wins)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    return env


def torchrun_command(devices: int, module: str, *arguments: str) -> list[str]:
    """``python -m module arguments`` in each of ``devices`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
            "-m", module, *arguments]


def launch(job: dict, devices: int, workdir: Path) -> None:
    """Run the training ``job`` on ``devices`` processes; returns when it finished, raises
    TrainingStopped/TrainingInterrupted for a resumable stop, TrainingError for a failure."""
    directory = workdir / PROCESSES
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("rank_*.json"):
        old.unlink()
    job_file = directory / JOB
    atomic_write_json(job_file, job)
    process = subprocess.Popen(torchrun_command(devices, WORKER, str(job_file)), env=environment(devices),
                               process_group=0)
    with _passing_signals_on(process, directory, devices):
        status = process.wait()
    _wait_for_stragglers(directory, devices)
    _raise_outcome(directory, devices, status)


@contextmanager
def _passing_signals_on(process: subprocess.Popen, directory: Path, devices: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def pass_on(number: int, frame) -> None:
        # the first signal asks for a clean stop whatever it was; a second Ctrl-C for an immediate one
        onward = signal.SIGINT if received and number == signal.SIGINT else signal.SIGTERM
        received.append(number)
        pids = [r["pid"] for r in _reports(directory, devices).values() if r["status"] == "running"]
        if len(pids) < devices:
            # processes still starting have nothing to save: torchrun ends them
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, onward)

    previous = {number: signal.signal(number, pass_on) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_stragglers(directory: Path, devices: int) -> None:
    """torchrun may end before its processes (a second signal cuts its wait short): give the
    ones still running the time to finish their checkpoint."""
    deadline = time.monotonic() + STRAGGLER_SECONDS
    while time.monotonic() < deadline:
        running = [r["pid"] for r in _reports(directory, devices).values() if r["status"] == "running"]
        if not any(_alive(pid) for pid in running):
            return
        time.sleep(0.2)


#: what gloo and NCCL say when another process went away
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote worker", "aborted")


def _lost_a_peer(report: dict) -> bool:
    return report.get("error", "").startswith("Dist") or any(s in report.get("message", "") for s in _PEER_GONE)


def _raise_outcome(directory: Path, devices: int, status: int) -> None:
    reports = _reports(directory, devices)
    where = f"the log of every process is in {directory}"
    if len(reports) == devices and all(r["status"] == "done" for r in reports.values()):
        return
    # a process that lost a peer fails too, with a communication error: the first other error is the cause
    failed = sorted((r for r in reports.values() if r["status"] == "failed"),
                    key=lambda r: (_lost_a_peer(r), r["time"]))
    if failed:
        first = failed[0]
        raise TrainingError(f"training on {devices} processes failed: rank {first['rank']} raised "
                            f"{first['error']}: {first['message']} (its log: {log_path(directory, first['rank'])}; "
                            f"{where})")
    if not reports:
        raise TrainingError(f"training on {devices} processes failed before any process started (torchrun exited "
                            f"with status {status}); see the output above")
    for rank in range(devices):
        if rank not in reports:
            raise TrainingError(f"training on {devices} processes failed: rank {rank} never started (torchrun exited "
                                f"with status {status}); see the output above and {where}")
        if reports[rank]["status"] == "running":
            raise TrainingError(f"training on {devices} processes failed: rank {rank} ended without saying why "
                                f"(killed, or out of memory?); its log: {log_path(directory, rank)} ({where}; "
                                f"torchrun exited with status {status})")
    # the message of a process that received the signal names it
    stopped = next((r for r in reports.values() if r.get("signal")), reports[0])
    if stopped.get("stop") == "interrupted":
        raise TrainingInterrupted(stopped["message"], stopped.get("signal"))
    raise TrainingStopped(stopped["message"])
