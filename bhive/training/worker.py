"""One process of a multi-process training: ``python -m bhive.training.worker JOB`` under torchrun.

It joins the other processes, rebuilds config, model and dataloader from the job the task
wrote (:mod:`~bhive.training.launcher`), and trains (rank 0 writes the artifact). Its output
goes to ``rank_<r>.log`` beside the job, rank 0's also to the console; how it ended goes to
``rank_<r>.json``. A clean end, finished or stopped, exits 0 (the report says which); a
failure exits 1, at once, so that the others' collectives fail instead of waiting for it.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from bhive.store import read_json
from bhive.training import distributed, launcher
from bhive.training.state import TrainingError, TrainingInterrupted, TrainingStopped


class _Tee:
    """Rank 0's stdout: its log and the console."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.streams[0], name)


def _log_into(path: Path, console: bool) -> None:
    """Send this process's output, Python's and the libraries' alike, into ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1) if console else None
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    if saved is not None:
        sys.stdout = _Tee(sys.stdout, os.fdopen(saved, "w", buffering=1))


def _train(job: dict) -> None:
    from bhive.config import load_config
    from bhive.plugins.model import TrainingSettings
    from bhive.plugins.registry import load_plugins
    from bhive.training.fitting import train_here

    cfg = load_config(job["config"], overrides=job["overrides"])
    if cfg.hash != job["config_hash"]:
        raise TrainingError(f"the config {job['config']} changed after the training was started; start it again")
    load_plugins(job["modules"])
    train_here(cfg, job["model"], Path(job["dataset"]), Path(job["output"]), TrainingSettings(**job["settings"]),
               resume=job["resume"], validation_dir=Path(job["validation"]) if job["validation"] else None)


def _stop_outside_the_steps(number: int, frame) -> None:
    # the loop catches signals during the steps; before or after them there is nothing to save
    name = signal.Signals(number).name
    raise TrainingInterrupted(f"training stopped on {name} outside the training steps (while starting, or writing "
                              f"the artifact); nothing was trained since the last checkpoint: run the same command "
                              f"again, with --resume if there is one", name)


def _stopped(stop: TrainingStopped) -> dict:
    interrupted = isinstance(stop, TrainingInterrupted)
    return {"status": "stopped", "message": str(stop), "stop": "interrupted" if interrupted else "epoch",
            "signal": stop.signal_name if interrupted else None}


def main(argv: list[str] | None = None) -> NoReturn:
    job_file = Path((argv if argv is not None else sys.argv[1:])[0])
    directory, rank = job_file.parent, int(os.environ["RANK"])
    _log_into(launcher.log_path(directory, rank), console=rank == 0)
    launcher.write_report(directory, rank, "running")
    try:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, _stop_outside_the_steps)
        job = read_json(job_file)
        with distributed.process_group(job["settings"]["device"]):
            try:
                _train(job)
                outcome = {"status": "done"}
            except TrainingStopped as stop:
                # every process stops at the same step: leaving the group waits for no one
                outcome = _stopped(stop)
    except TrainingStopped as stop:
        outcome = _stopped(stop)
    except BaseException as error:  # noqa: BLE001 - whatever ends this process is reported
        traceback.print_exc()
        launcher.write_report(directory, rank, "failed", error=type(error).__name__, message=str(error))
        _exit(1)
    launcher.write_report(directory, rank, **outcome)
    _exit(0)


def _exit(status: int) -> NoReturn:
    # at once: after a failure the others must not wait for this process; after a clean end
    # everything is written and closed, and the interpreter's teardown of torch and the
    # plugin libraries would take seconds
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
