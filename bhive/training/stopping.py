"""Stopping a training cleanly when the batch system or the user asks for it.

SIGTERM (eviction, wall-time limits, torchrun passing one on) and SIGINT (Ctrl-C) do not kill
the training: they raise a flag, and the loop finishes the step it is in, writes a checkpoint
holding its position inside the epoch, and stops with :class:`~bhive.training.state.TrainingInterrupted`,
from which ``--resume`` continues exactly. A second Ctrl-C stops at once, without a checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: "STEP" or "STEP:RANK": the process (of that rank only) sends itself SIGTERM after its
#: STEP-th optimiser step of the training, counted from the first epoch. Tests use it to know
#: where a stop lands; the signal itself takes the same way as one from outside.
SIGNAL_AT_STEP = "BHIVE_TRAINING_SIGNAL_AT_STEP"


class StopRequest:
    """Whether a stop was asked for, and by which signal."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._signal_at: tuple[int, int | None] | None = None
        hook = os.environ.get(SIGNAL_AT_STEP, "")
        if hook:
            step, _, rank = hook.partition(":")
            self._signal_at = (int(step), int(rank) if rank else None)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.signal_name is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal_name is None:
            # os.write: print is not safe inside a signal handler
            os.write(2, f"{name} received: the training stops after this step and writes a checkpoint "
                        f"(Ctrl-C again stops at once, without one)\n".encode())
        self.signal_name = self.signal_name or name

    def after_step(self, step: int, rank: int) -> None:
        """The test hook of :data:`SIGNAL_AT_STEP`, called after every optimiser step."""
        if self._signal_at and self._signal_at[0] == step and self._signal_at[1] in (None, rank):
            os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """A :class:`StopRequest` that SIGTERM and SIGINT raise while the context is open; the
    previous handlers come back afterwards."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        # signals are delivered to the main thread only: there is nothing to catch here
        yield request
        return
    previous = {number: signal.signal(number, request.handle) for number in STOP_SIGNALS}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
