"""The PyTorch training loop behind every TorchModel.

One epoch = one pass over the training batches of the dataloader (seeded by seed and epoch),
then one pass over the validation batches. After each epoch the loop prints a line with
losses, accuracies, jets/s and an ETA, appends to the history, writes TensorBoard scalars,
and saves a checkpoint (model, optimizer, scheduler, scaler, RNG states, history) from which
``resume`` continues exactly. The weights with the best validation loss are kept separately
and restored at the end; training stops early after ``patience`` epochs without improvement.
A non-finite loss stops training with the epoch and batch where it happened.

SIGTERM or SIGINT (:mod:`~bhive.training.stopping`) stop it after the current step with a
checkpoint that also holds the position inside the epoch and the epoch's metrics so far;
``resume`` then ends with the same weights as a run that was never stopped. Inside a torchrun
launch the same loop runs in every process (:mod:`~bhive.training.distributed`); rank 0
alone writes checkpoints, TensorBoard events and logs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from bhive.attacks import Attacker, partly_attacked, training_attack
from bhive.dataset import TARGET
from bhive.plugins.dataloader import RankShare, rank_rows
from bhive.plugins.model import TrainingSettings
from bhive.training import distributed
from bhive.training.distributed import World, resolve_device  # noqa: F401  (part of this module's interface)
from bhive.training.state import (  # noqa: F401  (part of this module's interface)
    BEST,
    CHECKPOINT,
    RESUME_FIX,
    TENSORBOARD,
    TrainingError,
    TrainingInterrupted,
    TrainingStopped,
    atomic_save,
    load_tensors,
    rng_state,
    seed_everything,
    set_rng_state,
)
from bhive.training.observers import stop_reason, training_observers
from bhive.training.regression import per_jet_loss as regression_loss
from bhive.training.stopping import StopRequest, stop_on_signals
from bhive.training.transfer import prefetched, to_device


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


class _EpochBatches(torch.utils.data.IterableDataset):
    """One epoch of a dataloader plugin, split over torch DataLoader workers."""

    def __init__(self, data, epoch: int, where: World) -> None:
        self.data, self.epoch, self.where = data, epoch, where

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        yield from _plugin_batches(self.data, self.epoch, self.where, worker, n_workers)


def _plugin_batches(data, epoch: int, where: World, worker: int, n_workers: int) -> Iterator:
    if where.size == 1:
        return data.train_batches(epoch, worker=worker, n_workers=n_workers)
    return data.rank_train_batches(epoch, where.rank, where.size, worker=worker, n_workers=n_workers)


def _leave_stopping_to_the_trainer(worker_id: int) -> None:
    # a Ctrl-C or a SIGTERM sent to the process group reaches loader workers too; the training
    # process stops at the end of its step and ends them itself
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


def training_batches(data, epoch: int, workers: int, pin_memory: bool,
                     where: World = distributed.ONE_PROCESS) -> Iterator:
    """The epoch's batches for this process: batches on one process, ``RankShare``s on several."""
    if workers <= 0:
        yield from _plugin_batches(data, epoch, where, 0, 1)
        return
    # its own generator: the workers' seeds are not drawn from the global stream, which then
    # stands where a resumed run finds it, whether or not the epoch began in this run
    loader = torch.utils.data.DataLoader(_EpochBatches(data, epoch, where), batch_size=None, num_workers=workers,
                                         pin_memory=pin_memory, persistent_workers=False,
                                         generator=torch.Generator(), worker_init_fn=_leave_stopping_to_the_trainer)
    yield from loader


def model_outputs(forward, model, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, standardised regression outputs or None) of ``forward`` (the model, or its
    DDP or compiled wrapper) on standardised ``inputs``."""
    if model.spec.targets:
        return forward(inputs, regression=True)
    return forward(inputs), None


def per_jet_losses(logits: torch.Tensor, regression: torch.Tensor | None, model,
                   batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each jet's classification loss and, with regression targets, its weighted sum of the
    targets' losses (``batch``: standardised, with ``target``)."""
    classification = nn.functional.cross_entropy(logits.float(), batch["label"], reduction="none")
    if regression is None:
        return classification, None
    return classification, regression_loss(regression, batch[TARGET], model.spec.targets)


def _loss(per_jet: torch.Tensor, batch: Mapping[str, torch.Tensor], share: RankShare | None = None, own: int = 0,
          n_ranks: int = 1) -> torch.Tensor:
    """The batch's loss from each jet's (``per_jet``: classification plus regression), weighted
    by the jets' loss weights and normalised by their summed magnitude (a mean where every
    weight is 1); for the share of one of ``n_ranks`` processes, its part of the whole batch's,
    times ``n_ranks``: DDP averages the gradients."""
    weight = batch["weight"]
    if share is None:
        return (per_jet * weight).sum() / weight.abs().sum().clamp_min(1e-12)
    # a stand-in row (own == 0) keeps the process in step and adds nothing
    return (per_jet[:own] * weight[:own]).sum() * (n_ranks / max(share.weight, 1e-12))


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def evaluate(model, data, device, settings, where: World = distributed.ONE_PROCESS) -> dict[str, float]:
    """Weighted loss and accuracy over the validation batches (each process's share, summed)."""
    model.eval()
    total_loss = total_regression = total_correct = total_weight = 0.0
    batches = data.validation_batches() if where.size == 1 else data.rank_validation_batches(where.rank, where.size)
    with torch.no_grad(), autocast(device, settings.precision):
        for batch in batches:
            batch = model.standardise(to_device(batch, device))
            logits, regression = model_outputs(model, model, batch)
            weight = batch["weight"]
            classification, regression = per_jet_losses(logits, regression, model, batch)
            total_loss += float((classification * weight).sum())
            if regression is not None:
                total_regression += float((regression * weight).sum())
            total_correct += float(((logits.argmax(dim=1) == batch["label"]).float() * weight).sum())
            total_weight += float(weight.sum())
    total_loss, total_regression, total_correct, total_weight = distributed.summed(
        [total_loss, total_regression, total_correct, total_weight], where, device)
    if total_weight == 0:
        return {}
    record = {"val_loss": (total_loss + total_regression) / total_weight, "val_accuracy": total_correct / total_weight}
    if model.spec.targets:
        record["val_regression_loss"] = total_regression / total_weight
    return record


@dataclass
class EpochSums:
    """An epoch's training metrics so far: this process's (the checkpoint holds all processes')."""

    n_jets: float = 0.0
    loss_sum: float = 0.0
    correct: float = 0.0
    seconds: float = 0.0

    def over_processes(self, where: World, device: torch.device) -> EpochSums:
        n_jets, loss_sum, correct, seconds = distributed.summed(
            [self.n_jets, self.loss_sum, self.correct, self.seconds], where, device)
        # the processes run in step: their mean time is the epoch's
        return EpochSums(n_jets, loss_sum, correct, seconds / where.size)


@dataclass
class _Training:
    """Everything one training process carries from step to step."""

    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    settings: TrainingSettings
    where: World
    device: torch.device
    workdir: Path
    global_batch: distributed.GlobalBatch | None
    history: list
    attacker: Attacker | None = None
    best_loss: float = math.inf
    since_best: int = 0

    def checkpoint(self, epoch: int, position: int = 0, sums: EpochSums | None = None) -> None:
        """Write the checkpoint after ``epoch`` epochs and ``position`` steps of the next; every
        process calls this (the metrics so far and the GPU random states are collected)."""
        cuda = distributed.cuda_rng_states(self.where, self.device)
        sums = (sums or EpochSums()).over_processes(self.where, self.device)
        if self.where.rank != 0:
            return
        atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                     "rng": rng_state(cuda), "history": self.history, "best_loss": self.best_loss,
                     "since_best": self.since_best, "epoch": epoch, "position": position, "partial": asdict(sums)},
                    self.workdir / CHECKPOINT)

    def resume(self) -> tuple[int, int, EpochSums]:
        """Load the checkpoint; (epochs done, steps done in the next, its metrics so far)."""
        path = self.workdir / CHECKPOINT
        if not path.exists():
            raise TrainingError(f"--resume: no checkpoint in {self.workdir}; start without --resume")
        state = load_tensors(path, self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"], self.where.rank)
            self.history, self.best_loss, self.since_best = state["history"], state["best_loss"], state["since_best"]
            partial = EpochSums(**state.get("partial", {}))
            # rank 0 carries the counts of the steps done before the stop, for all processes; the
            # time so far is everyone's (the epoch's time is the processes' mean)
            sums = partial if self.where.rank == 0 else EpochSums(seconds=partial.seconds)
            return state["epoch"], state.get("position", 0), sums
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
            raise TrainingError(f"{path} does not fit this model and training "
                                f"({type(error).__name__}: {error}); {RESUME_FIX}") from None


    def end_epoch(self, epoch: int, sums: EpochSums, data) -> dict:
        """The epoch's record (``sums``: all processes'), with validation; keeps the best weights."""
        if sums.n_jets == 0:
            raise TrainingError(f"epoch {epoch + 1} had no training jets: the dataset or the sampling left none")
        record = {"epoch": epoch + 1, "loss": sums.loss_sum / sums.n_jets, "accuracy": sums.correct / sums.n_jets,
                  "jets_per_second": sums.n_jets / max(sums.seconds, 1e-9),
                  "learning_rate": self.scheduler.get_last_lr()[0], "seconds": sums.seconds,
                  **evaluate(self.model, data, self.device, self.settings, self.where)}
        self.history.append(record)
        monitored = record.get("val_loss", record["loss"])
        if monitored < self.best_loss:
            self.best_loss, self.since_best = monitored, 0
            if self.where.rank == 0:
                atomic_save(self.model.state_dict(), self.workdir / BEST)
        else:
            self.since_best += 1
        return record


def _epoch_line(record: dict, epochs: int, remaining: float) -> str:
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  acc {record['accuracy']:.4f}"
            + (f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}" if "val_loss" in record
               else "")
            + f"  {record['jets_per_second']:.0f} jets/s  lr {record['learning_rate']:.2e}  "
              f"ETA {_format_seconds(remaining)}")


def _interrupted(stop: StopRequest, where: str, run: _Training) -> TrainingInterrupted:
    if stop.signal_name is None:
        cause = "a signal to another training process"
    else:
        cause = stop.signal_name + (f" to rank {run.where.rank}" if run.where.size > 1 else "")
    return TrainingInterrupted(f"training stopped {where} of {run.settings.epochs} on {cause}; the checkpoint in "
                               f"{run.workdir} continues it with --resume (the same command with --resume added)",
                               stop.signal_name)


def _train_epoch(run: _Training, data, epoch: int, skip: int, sums: EpochSums, stop: StopRequest) -> EpochSums:
    """One epoch's training steps from step ``skip`` on, added to ``sums``; raises
    TrainingInterrupted (after a checkpoint) when a stop is asked for."""
    settings, where, device, model = run.settings, run.where, run.device, run.model
    model.train()
    started = time.perf_counter()
    batches = training_batches(data, epoch, settings.loader_workers, device.type == "cuda", where)
    if skip:
        # trained on before the stop: reading is far cheaper than training
        batches = itertools.islice(batches, skip, None)
    for index, (item, batch) in enumerate(prefetched(batches, device, _batch_of(where)), start=skip):
        share = item if where.size > 1 else None
        if share is None:
            own = len(batch["label"])
        else:
            rows, own = rank_rows(share.size, where.rank, where.size)
            if run.global_batch is not None:
                run.global_batch.start, run.global_batch.size = rows.start, share.size
        inputs = model.standardise(batch)
        if run.attacker is not None:
            inputs = partly_attacked(run.attacker, inputs, batch["label"], settings.attack_fraction)
        with autocast(device, settings.precision):
            logits, regression = model_outputs(run.forward, model, inputs)
        classification, regression = per_jet_losses(logits, regression, model, inputs)
        loss = _loss(classification if regression is None else classification + regression, batch, share, own,
                     where.size)
        if share is None and not torch.isfinite(loss):
            raise TrainingError(f"the loss became {loss.item()} in epoch {epoch + 1}, batch {index}: lower the "
                                f"learning rate, enable gradient clipping, or check the inputs for extreme values")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        stopping = stop.requested
        if share is not None:
            # one exchange a step: a stop asked of any process, and a non-finite loss in any
            # (after the backward pass, which every process has to reach)
            stopping, non_finite = (v > 0 for v in distributed.summed(
                [float(stop.requested), float(not torch.isfinite(loss))], where, device))
            if non_finite:
                raise TrainingError(f"the loss became non-finite in epoch {epoch + 1}, batch {index} (in at least one "
                                    f"of the {where.size} processes): lower the learning rate, enable gradient "
                                    f"clipping, or check the inputs for extreme values")
        if settings.gradient_clip > 0:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        sums.n_jets += own
        sums.loss_sum += loss.item() * (len(batch["label"]) if share is None else share.size / where.size)
        sums.correct += float((logits.argmax(dim=1) == batch["label"])[:own].sum())
        stop.after_step(run.scheduler.last_epoch, where.rank)
        if share is None:
            stopping = stop.requested
        if stopping:
            sums.seconds += time.perf_counter() - started
            run.checkpoint(epoch, index + 1, sums)
            raise _interrupted(stop, f"in epoch {epoch + 1} after batch {index + 1}", run)
    sums.seconds += time.perf_counter() - started
    return sums


def _batch_of(where: World):
    """What to put on the device of each item of :func:`training_batches`: a batch, or on
    several processes the process's share of one."""
    return (lambda share: share.batch) if where.size > 1 else (lambda batch: batch)


def fit(model, data, settings, workdir: Path, resume: bool = False, log=print) -> list[dict]:
    """Train ``model`` (a TorchModel) on ``data`` (a dataloader plugin); returns the history."""
    workdir.mkdir(parents=True, exist_ok=True)
    where = distributed.world()
    say = log if where.rank == 0 else (lambda *_: None)
    device = distributed.training_device(settings.device, where)
    model.to(device)
    data.to(device)
    global_batch = distributed.adapt(model, where, device)
    optimizer = make_optimizer(model.parameters(), settings)
    mean_weight = data.mean_acceptance() if settings.sampling == "stochastic" else 1.0
    steps_per_epoch = max(1, math.ceil(data.n_train_jets() * mean_weight / settings.batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(
        step, settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch, settings.scheduler))
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    attack, rules = training_attack(settings)
    attacker = Attacker(model, attack, rules) if attack.active else None
    run = _Training(model, model, optimizer, scheduler, scaler, settings, where, device, workdir, global_batch, [],
                    attacker=attacker)

    start_epoch, skip, sums = 0, 0, EpochSums()
    if resume:
        start_epoch, skip, sums = run.resume()
        say(f"resuming in epoch {start_epoch + 1} after batch {skip}" if skip
            else f"resuming after epoch {start_epoch}")
    run.forward = distributed.wrap(model, where, device)
    if settings.compile:
        run.forward = torch.compile(run.forward)

    writer = _tensorboard(workdir) if where.rank == 0 else None
    observers = training_observers(settings, workdir) if where.rank == 0 else []
    for observer in observers:
        observer.started(model, settings)
    started = time.perf_counter()
    try:
        with stop_on_signals() as stop:
            for epoch in range(start_epoch, settings.epochs):
                sums = _train_epoch(run, data, epoch, skip, sums, stop).over_processes(where, device)
                record = run.end_epoch(epoch, sums, data)
                skip, sums = 0, EpochSums()
                for key, value in record.items():
                    if key != "epoch" and writer is not None:
                        writer.add_scalar(key, value, epoch + 1)
                remaining = (time.perf_counter() - started) / (epoch + 1 - start_epoch) * (settings.epochs - epoch - 1)
                say(_epoch_line(record, settings.epochs, remaining))
                reason = stop_reason(observers, record)
                if distributed.any_process(reason is not None, where, device):
                    record["stopped"] = reason or "asked by the process that writes"
                run.checkpoint(epoch + 1)
                if "stopped" in record:
                    say(f"stopping after epoch {epoch + 1}: {record['stopped']}")
                    break
                if settings.patience > 0 and run.since_best >= settings.patience:
                    say(f"early stopping: no better validation loss for {settings.patience} epochs")
                    break
                if epoch + 1 == settings.epochs:
                    break
                if distributed.any_process(stop.requested, where, device):
                    raise _interrupted(stop, f"after epoch {epoch + 1}", run)
                if settings.stop_after_epoch and epoch + 1 >= settings.stop_after_epoch:
                    raise TrainingStopped(f"stopped after epoch {epoch + 1} of {settings.epochs} as asked; the "
                                          f"checkpoint in {workdir} continues with --resume")
    finally:
        if writer is not None:
            writer.close()
    if where.rank == 0 and (workdir / BEST).exists():
        model.load_state_dict(load_tensors(workdir / BEST, device))
    model.to("cpu")
    for observer in observers:
        observer.finished(run.history, model)
    return run.history


def _tensorboard(workdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; stay usable without it
        return None
    return SummaryWriter(log_dir=str(workdir / TENSORBOARD))
