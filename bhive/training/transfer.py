"""Getting batches onto the training device without making the device wait.

On a GPU, the next batch is copied while the current one trains: :func:`prefetched` pins its
host memory and issues the copy on a side CUDA stream, and the training stream waits only for
that copy (an event), not for the side stream as a whole. On a CPU a batch is a view of its
arrays, nothing is copied ahead and the batches come out as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch


def _tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def to_device(batch: Mapping[str, np.ndarray | torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` as tensors on ``device`` (asynchronous from pinned memory on a GPU)."""
    non_blocking = device.type == "cuda"
    return {key: _tensor(value).to(device, non_blocking=non_blocking) for key, value in batch.items()}


def prefetched(items: Iterator[Any], device: torch.device,
               batch_of: Callable[[Any], Mapping[str, Any]] = lambda item: item) -> Iterator[tuple[Any, dict]]:
    """``(item, its batch on device)`` for each of ``items``; ``batch_of`` picks the arrays out
    of an item (a batch, or one process's share of it). On a GPU the copy of the next batch is
    under way while the caller trains on the current one."""
    if device.type != "cuda":
        for item in items:
            yield item, to_device(batch_of(item), device)
        return
    side = torch.cuda.Stream(device=device)
    pending = None
    for item in items:
        with torch.cuda.stream(side):
            batch = {key: _pinned(_tensor(value)).to(device, non_blocking=True)
                     for key, value in batch_of(item).items()}
            copied = torch.cuda.Event()
            copied.record(side)
        if pending is not None:
            yield _ready(*pending, device)
        pending = (item, batch, copied)
    if pending is not None:
        yield _ready(*pending, device)


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    # a copy from pageable memory is synchronous; batches from loader workers are pinned already
    return tensor if tensor.is_cuda or tensor.is_pinned() else tensor.pin_memory()


def _ready(item: Any, batch: dict[str, torch.Tensor], copied: torch.cuda.Event,
           device: torch.device) -> tuple[Any, dict]:
    current = torch.cuda.current_stream(device)
    current.wait_event(copied)
    for tensor in batch.values():
        # the caching allocator must not hand this memory to the side stream while the
        # training stream still reads it
        tensor.record_stream(current)
    return item, batch
