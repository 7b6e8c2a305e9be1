"""Data-parallel training: what changes when the loop runs in each of several processes.

``TrainingTask --devices N`` starts N processes with torchrun (:mod:`~bhive.training.launcher`),
each running the same loop on its share of every global batch (``rank_rows``), with
DistributedDataParallel averaging the gradients: NCCL with one GPU per process
(``LOCAL_RANK``), gloo on CPUs. The result is meant not to depend on N:

- the epoch's acceptance and shuffle are drawn once from the seed, and every process takes
  its slice of the same global batches (the dataloader's ``rank_train_batches``);
- each process's loss is normalised by the whole batch (its size, or its summed weight), and
  multiplied by N, so the average DDP takes is the one-process gradient;
- on CPUs, dropout draws the mask of the whole batch in every process and applies the rows
  of its slice (:class:`GlobalBatchDropout`), so masks and random streams are those of one
  process; on GPUs each process draws its own masks (seeded by the seed and its rank), and
  BatchNorm becomes SyncBatchNorm;
- metrics are summed over processes before they are recorded.

BatchNorm on CPUs normalises each process's slice with that slice's statistics (SyncBatchNorm
needs CUDA), so models with BatchNorm match a one-process run only approximately.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from bhive.training.state import TrainingError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


#: training in this process alone
ONE_PROCESS = World()


def world() -> World:
    """The training processes this one belongs to: several inside a torchrun launch, else one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return ONE_PROCESS


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device auto or cpu")
    return device


def training_device(name: str, where: World) -> torch.device:
    """The device of ``--device name`` for this process: one GPU per process (its local rank)
    when there are several."""
    if where.size == 1:
        return resolve_device(name)
    if name not in ("auto", "cpu", "cuda"):
        raise TrainingError(f"--device {name} names one device; with --devices {where.size} use --device auto "
                            f"or cuda (one GPU per process) or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device auto or cpu")
    if where.local_rank >= torch.cuda.device_count():
        raise TrainingError(f"--devices {where.size} needs a GPU per process, but PyTorch sees "
                            f"{torch.cuda.device_count()} on this machine; ask for fewer or use --device cpu")
    return torch.device("cuda", where.local_rank)


@contextmanager
def process_group(device_name: str) -> Iterator[World]:
    """Join the processes torchrun started (its environment says which): NCCL between GPUs,
    gloo between CPU processes. The group is left on a clean exit only: after an error the
    others may be inside a collective, and leaving would wait for them."""
    where = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = training_device(device_name, where)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    yield world()
    dist.destroy_process_group()


class GlobalBatch:
    """Where this process's rows sit in the global batch of the current step."""

    def __init__(self) -> None:
        self.start, self.size = 0, 0


class GlobalBatchDropout(nn.Dropout):
    """Dropout as one process would apply it to the whole global batch, restricted to this
    process's rows: the mask of the whole batch is drawn (``bernoulli_`` on a tensor of its
    shape, as ``nn.Dropout`` draws on CPUs) and the rows of this process's slice applied. Every
    process draws the same masks and so keeps the same random stream as one process would."""

    def __init__(self, p: float, batch: GlobalBatch) -> None:
        super().__init__(p)
        self.batch = batch

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return values
        if self.p == 1:
            return values * torch.zeros((), dtype=values.dtype, device=values.device)
        whole = torch.empty((self.batch.size, *values.shape[1:]), dtype=values.dtype, device=values.device)
        noise = whole.bernoulli_(1 - self.p).div_(1 - self.p)
        return values * noise[self.batch.start:self.batch.start + len(values)]


def adapt(model: nn.Module, where: World, device: torch.device) -> GlobalBatch | None:
    """Make ``model`` fit for training on several processes, before its optimiser is built:
    SyncBatchNorm on GPUs; on CPUs, dropout of the global batch (returned: the loop tells it
    where each step's rows are). Parameters and state dict keys stay the same."""
    if where.size == 1:
        return None
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # GPUs draw dropout masks per process: each from a stream of its own, so that two
        # processes do not drop the same units of their different jets
        torch.cuda.manual_seed(torch.initial_seed() + where.rank)
        return None
    batch = GlobalBatch()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, GlobalBatchDropout(child.p, batch))
    return batch


def wrap(model: nn.Module, where: World, device: torch.device) -> nn.Module:
    """What the loop calls forward on: ``model`` itself on one process, else its
    DistributedDataParallel wrapper with rank 0's state in every process (rank 0 alone computed
    the standardisation; DDP would broadcast only what its settings say)."""
    if where.size == 1:
        return model
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, 0)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def summed(values: Sequence[float], where: World, device: torch.device) -> list[float]:
    """``values`` summed over the processes (float64; NCCL needs them on the GPU)."""
    if where.size == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_process(flag: bool, where: World, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process: how the processes agree to stop together."""
    return summed([float(flag)], where, device)[0] > 0


def cuda_rng_states(where: World, device: torch.device) -> list[torch.Tensor] | None:
    """Each process's GPU generator state, in rank order (every process must call this)."""
    if device.type != "cuda":
        return None
    state = torch.cuda.get_rng_state(device)
    if where.size == 1:
        return [state]
    states = [torch.empty_like(state, device=device) for _ in range(where.size)]
    dist.all_gather(states, state.to(device))
    return [s.cpu() for s in states]
