"""What a training leaves behind to be continued: checkpoints, best weights, random states.

Checkpoints and best weights hold tensors and plain data only and are loaded with
``weights_only=True``: they live in a shared store, and nothing read from it is unpickled.
They are written atomically, so an interrupted write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bhive.store import atomic_path

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
#: TensorBoard's event files of the training (the loop's scalars, the hparams of bhive.tracking)
TENSORBOARD = "tensorboard"

#: the way out of a checkpoint that cannot be used
RESUME_FIX = "start again without --resume (that training replaces the checkpoint), or remove the training output"


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, impossible settings)."""


class TrainingStopped(TrainingError):
    """Training stopped after the epoch it was asked to stop at; --resume continues it."""


class TrainingInterrupted(TrainingStopped):
    """Training stopped on a signal (SIGTERM, SIGINT) after a step; --resume continues it from there."""

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        #: the signal this process received; None when another training process received it
        self.signal_name = signal_name


def seed_everything(seed: int) -> None:
    """Seed every random stream a model's initialisation or training can draw from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(cuda: list[torch.Tensor] | None = None) -> dict:
    """Every RNG state as tensors and plain data, so that the checkpoint loads with weights_only.

    ``cuda``: the CUDA generator state of each training process's GPU, in rank order (the
    processes of a multi-GPU training draw their own dropout masks); default: this process's
    current GPU, when there is one."""
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    if cuda is None and torch.cuda.is_available():
        cuda = [torch.cuda.get_rng_state()]
    return {"torch": torch.get_rng_state(),
            # int64 holds every uint32 key exactly
            "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "position": int(position), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "cuda": cuda}


def set_rng_state(state: dict, rank: int = 0) -> None:
    """Restore :func:`rng_state`'s states; the CUDA one of process ``rank`` goes to this process's GPU."""
    # map_location moves the saved states to the training device; generators take CPU byte tensors
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["algorithm"], numpy_state["keys"].cpu().numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        # a checkpoint of fewer processes than this run: the extra GPUs continue the last stream
        torch.cuda.set_rng_state(cuda[min(rank, len(cuda) - 1)].cpu())


def load_tensors(path: Path, map_location: torch.device | str, fix: str = RESUME_FIX,
                 error: type[Exception] = TrainingError) -> Any:
    """torch.load limited to tensors and plain data: a file replaced in the shared store can
    hold a pickle, and a pickle runs code when it is loaded. A file that cannot be loaded so
    raises ``error`` naming it and ``fix``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, the one thing never to do here
        reason = "it holds objects other than tensors and plain data (an older b-hive wrote it, or it was replaced)"
    except Exception as exc:  # noqa: BLE001 - whatever a truncated or foreign file makes torch raise
        reason = f"it is truncated or not a tensor file ({type(exc).__name__})"
    raise error(f"{path} cannot be used and is not unpickled: {reason}; {fix}")


def atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
