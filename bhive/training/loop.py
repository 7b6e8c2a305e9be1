"""The PyTorch training loop behind every TorchModel.

One epoch = one pass over the training batches of the dataloader (seeded by seed and epoch),
then one pass over the validation batches. After each epoch the loop prints a line with
losses, accuracies, jets/s and an ETA, appends to the history, writes TensorBoard scalars,
and saves a checkpoint (model, optimizer, scheduler, scaler, RNG states, history) from which
``resume`` continues exactly. Checkpoints hold tensors and plain data only and are loaded
with ``weights_only=True``: they live in a shared store, and nothing read from it is
unpickled. The weights with the best validation loss are kept separately and restored at the
end; training stops early after ``patience`` epochs without improvement. A non-finite loss
stops training with the epoch and batch where it happened.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bhive.store import atomic_path

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, impossible settings)."""


class TrainingStopped(TrainingError):
    """Training stopped after the epoch it was asked to stop at; --resume continues it."""


def seed_everything(seed: int) -> None:
    """Seed every random stream a model's initialisation or training can draw from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device auto or cpu")
    return device


def autocast(device: torch.device, precision: str):
    """Mixed-precision context: bf16 on CPU or CUDA, fp16 on CUDA only."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("fp16 mixed precision needs a CUDA device; use --precision bf16 on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(parameters, settings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=settings.learning_rate, momentum=0.9, weight_decay=settings.weight_decay)
    raise TrainingError(f"unknown optimizer '{settings.optimizer}'; choose adamw, adam or sgd")


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Linear warm-up from 0, then constant, linear decay to 0 or cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise TrainingError(f"unknown scheduler '{schedule}'; choose none, linear or cosine")


def to_device(batch: Mapping[str, np.ndarray | torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type == "cuda"
    out = {}
    for key, value in batch.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        out[key] = tensor.to(device, non_blocking=non_blocking)
    return out


class _EpochBatches(torch.utils.data.IterableDataset):
    """One epoch of a dataloader plugin, split over torch DataLoader workers."""

    def __init__(self, data, epoch: int) -> None:
        self.data, self.epoch = data, epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        yield from self.data.train_batches(self.epoch, worker=worker, n_workers=n_workers)


def training_batches(data, epoch: int, workers: int, pin_memory: bool) -> Iterator[Mapping]:
    if workers <= 0:
        yield from data.train_batches(epoch)
        return
    loader = torch.utils.data.DataLoader(_EpochBatches(data, epoch), batch_size=None, num_workers=workers,
                                         pin_memory=pin_memory, persistent_workers=False)
    yield from loader


def _rng_state() -> dict:
    """Every RNG state as tensors and plain data, so that the checkpoint loads with weights_only."""
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            # int64 holds every uint32 key exactly
            "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "position": int(position), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    # map_location moves the saved states to the training device; generators take CPU byte tensors
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["algorithm"], numpy_state["keys"].cpu().numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state["cuda"]])


#: the way out of a checkpoint that cannot be used
RESUME_FIX = "start again without --resume (that training replaces the checkpoint), or remove the training output"


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
    except Exception as exc:  # whatever a truncated or foreign file makes torch raise
        reason = f"it is truncated or not a tensor file ({type(exc).__name__})"
    raise error(f"{path} cannot be used and is not unpickled: {reason}; {fix}")


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def _loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], weighted: bool) -> torch.Tensor:
    per_jet = nn.functional.cross_entropy(logits.float(), batch["label"], reduction="none")
    if weighted:
        weight = batch["weight"]
        return (per_jet * weight).sum() / weight.sum().clamp_min(1e-12)
    return per_jet.mean()


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def evaluate(model, data, device, settings) -> dict[str, float]:
    """Weighted loss and accuracy over the validation batches."""
    model.eval()
    total_loss = total_correct = total_weight = 0.0
    with torch.no_grad(), autocast(device, settings.precision):
        for batch in data.validation_batches():
            batch = to_device(batch, device)
            logits = model(model.standardise(batch))
            weight = batch["weight"]
            per_jet = nn.functional.cross_entropy(logits.float(), batch["label"], reduction="none")
            total_loss += float((per_jet * weight).sum())
            total_correct += float(((logits.argmax(dim=1) == batch["label"]).float() * weight).sum())
            total_weight += float(weight.sum())
    if total_weight == 0:
        return {}
    return {"val_loss": total_loss / total_weight, "val_accuracy": total_correct / total_weight}


def fit(model, data, settings, workdir: Path, resume: bool = False, log=print) -> list[dict]:
    """Train ``model`` (a TorchModel) on ``data`` (a dataloader plugin); returns the history."""
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    model.to(device)
    forward = torch.compile(model) if settings.compile else model
    optimizer = make_optimizer(model.parameters(), settings)
    mean_weight = data.mean_acceptance() if settings.sampling == "stochastic" else 1.0
    steps_per_epoch = max(1, math.ceil(data.n_train_jets() * mean_weight / settings.batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(
        step, settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch, settings.scheduler))
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    weighted = settings.sampling == "loss_weight"

    history: list[dict] = []
    best_loss, since_best, start_epoch = math.inf, 0, 0
    checkpoint_path = workdir / CHECKPOINT
    if resume:
        if not checkpoint_path.exists():
            raise TrainingError(f"--resume: no checkpoint in {workdir}; start without --resume")
        state = load_tensors(checkpoint_path, device)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            history, best_loss, since_best, start_epoch = (state["history"], state["best_loss"],
                                                           state["since_best"], state["epoch"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
            raise TrainingError(f"{checkpoint_path} does not fit this model and training "
                                f"({type(error).__name__}: {error}); {RESUME_FIX}") from None
        log(f"resuming after epoch {start_epoch}")

    writer = _tensorboard(workdir)
    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        epoch_start = time.perf_counter()
        n_jets = 0
        loss_sum = correct = 0.0
        for index, batch in enumerate(training_batches(data, epoch, settings.loader_workers,
                                                       device.type == "cuda")):
            batch = to_device(batch, device)
            with autocast(device, settings.precision):
                logits = forward(model.standardise(batch))
            loss = _loss(logits, batch, weighted)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} in epoch {epoch + 1}, batch {index}: lower the "
                                    f"learning rate, enable gradient clipping, or check the inputs for extreme values")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.gradient_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            size = len(batch["label"])
            n_jets += size
            loss_sum += loss.item() * size
            correct += float((logits.argmax(dim=1) == batch["label"]).sum())
        if n_jets == 0:
            raise TrainingError(f"epoch {epoch + 1} had no training jets: the dataset or the sampling left none")
        seconds = time.perf_counter() - epoch_start
        record = {"epoch": epoch + 1, "loss": loss_sum / n_jets, "accuracy": correct / n_jets,
                  "jets_per_second": n_jets / seconds, "learning_rate": scheduler.get_last_lr()[0],
                  "seconds": seconds, **evaluate(model, data, device, settings)}
        history.append(record)
        monitored = record.get("val_loss", record["loss"])
        if monitored < best_loss:
            best_loss, since_best = monitored, 0
            _atomic_save(model.state_dict(), workdir / BEST)
        else:
            since_best += 1
        for key, value in record.items():
            if key != "epoch" and writer is not None:
                writer.add_scalar(key, value, epoch + 1)
        elapsed = time.perf_counter() - started
        remaining = elapsed / (epoch + 1 - start_epoch) * (settings.epochs - epoch - 1)
        log(f"epoch {epoch + 1}/{settings.epochs}  loss {record['loss']:.4f}  acc {record['accuracy']:.4f}"
            + (f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}" if "val_loss" in record
               else "")
            + f"  {record['jets_per_second']:.0f} jets/s  lr {record['learning_rate']:.2e}  ETA {_format_seconds(remaining)}")
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                      "history": history, "best_loss": best_loss, "since_best": since_best, "epoch": epoch + 1},
                     checkpoint_path)
        if settings.patience > 0 and since_best >= settings.patience:
            log(f"early stopping: no better validation loss for {settings.patience} epochs")
            break
        if settings.stop_after_epoch and epoch + 1 >= settings.stop_after_epoch and epoch + 1 < settings.epochs:
            if writer is not None:
                writer.close()
            raise TrainingStopped(f"stopped after epoch {epoch + 1} of {settings.epochs} as asked; the checkpoint "
                                  f"in {workdir} continues with --resume")
    if writer is not None:
        writer.close()
    if (workdir / BEST).exists():
        model.load_state_dict(load_tensors(workdir / BEST, device))
    model.to("cpu")
    return history


def _tensorboard(workdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; stay usable without it
        return None
    return SummaryWriter(log_dir=str(workdir / "tensorboard"))
