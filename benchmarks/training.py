"""Dataloader and training-step throughput, each beside its reference from the same run.

    python -m benchmarks.training [--dataset DIR] [--jets 100000] [--steps 20] [--skip-compile] [--json out.json]

Rows:
- the shard loader delivering DeepJet's inputs, in jets/s, beside a plain in-memory copy of
  the same arrays batched by random index (its limit);
- the same loader on shards with packed candidates, as dataset construction writes them,
  beside the same jets zero-padded on disk (dataset format 1): the fastest of three epochs
  each, measured in alternation;
- per model, one training step (forward, backward, optimiser step) in jets/s at the default
  batch size, on CPU and, when CUDA is present, on the GPU in fp32 and with bf16/fp16 mixed
  precision; the ratio is the loader's rate over the step's: it must stay >= 3 so the loader
  never limits training;
- ParticleNet-Lite's training step beside the same model built from weaver-core's own
  ``EdgeConvBlock`` (``pip install -e ".[bench]"``; skipped without it): same weights, batches
  and batch size, the two measured in alternation; the ratio must be >= 1.5;
- ParticleNet-Lite's training step with the opt-in numerics, torch.compile and bf16
  autocast, beside the eager fp32 step measured in alternation with them;
- per model, inference jets/s at batch sizes 1, 64 and the default, each beside the
  default's figure from the same measurement (so that row's ratio is 1);
- the whole training loop (DeepJet, one epoch after a first one) on 2 processes (torchrun,
  DistributedDataParallel: gloo between CPU processes, or NCCL when there are 2 GPUs) beside
  1 process with the same global batch and the same threads per process; the ratio is the
  scaling (limit 2).
Rows measured in alternation report each side's fastest step on each batch: a shared machine
only ever slows a step down. Without ``--dataset`` a dataset with the ``hlt_ak4`` shapes is
written from random numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import print_table
from bhive import dataset as dataset_format
from bhive.plugins.model import TrainingSettings
from bhive.training import distributed, launcher
from dataloaders.base import LoaderSettings
from dataloaders.shards import ShardDataLoader
from models.base import InputSpec, model_class

CLASSES = {"b": ["isB"], "c": ["isC"], "uds": ["isUDS"], "g": ["isG"]}
HLT_SHAPES = {"global": 6, "cpf": (25, 24), "vtx": (4, 12)}
MODEL_SETTINGS = {
    "DNN": {}, "DeepJet": {},
    "ParticleNet": {"coordinates": ["f0", "f1"], "k": 7, "conv_channels": [[32, 32, 32], [64, 64, 64]], "fc": [128]},
    "ParticleTransformer": {"four_vector": {"pt": "f2", "eta": "f0", "phi": "f1"}},
}


def synthetic_dataset(directory: Path, n_jets: int, shard_size: int = 50_000, packed: bool = True) -> Path:
    """Random jets with the ``hlt_ak4`` shapes; candidates stored packed, as dataset
    construction writes them, or (``packed=False``) zero-padded, as format 1 did."""
    rng = np.random.default_rng(1)
    shards = []
    for index, start in enumerate(range(0, n_jets, shard_size)):
        n = min(shard_size, n_jets - start)
        arrays = {"global": rng.normal(size=(n, HLT_SHAPES["global"])).astype(np.float32)}
        for group in ("cpf", "vtx"):
            size, features = HLT_SHAPES[group]
            counts = rng.integers(0, size + 1, n)
            mask = np.arange(size)[None, :] < counts[:, None]
            values = (rng.normal(size=(n, size, features)) * mask[..., None]).astype(np.float32)
            arrays[group] = values[mask] if packed else values
            arrays[f"mask_{group}"] = mask
        arrays["truth"] = rng.integers(0, 4, n).astype(np.int16)
        arrays["weight"] = rng.uniform(0.2, 1.0, n).astype(np.float32)
        arrays["kinematics"] = np.zeros((n, 2), np.float32)
        arrays["process"] = np.zeros(n, np.int16)
        shard = directory / dataset_format.shard_name(index)
        shard.mkdir(parents=True)
        for name, values in arrays.items():
            np.save(shard / f"{name}.npy", values)
        shards.append({"name": shard.name, "n_jets": int(n)})
    features = {"global": [f"g{i}" for i in range(HLT_SHAPES["global"])],
                **{g: [f"f{i}" for i in range(HLT_SHAPES[g][1])] for g in ("cpf", "vtx")}}
    dataset_format.write_meta(directory, {
        "features": features, "n_candidates": {g: HLT_SHAPES[g][0] for g in ("cpf", "vtx")},
        "truth_labels": ["isB", "isC", "isUDS", "isG"], "n_jets": n_jets, "shards": shards,
        "histograms": np.ones((4, 1, 1)).tolist(), "weights": np.ones((4, 1, 1)).tolist()})
    return directory


def stream_rate(directory: Path, groups, batch_size: int) -> float:
    """The shard loader's jets/s over one epoch."""
    loader = ShardDataLoader(directory, groups, CLASSES, LoaderSettings(batch_size=batch_size, sampling="loss_weight",
                                                                          validation_fraction=0.0))
    started, n = time.perf_counter(), 0
    for batch in loader.train_batches(0):
        n += len(batch["label"])
    return n / (time.perf_counter() - started)


def loader_rate(directory: Path, groups, batch_size: int) -> tuple[float, float]:
    """(shard loader jets/s, in-memory copy jets/s) for one pass over the data."""
    streamed = stream_rate(directory, groups, batch_size)

    arrays = {}
    for shard in dataset_format.load_meta(directory)["shards"]:
        for key, values in dataset_format.open_shard(directory, shard["name"], mmap=False).items():
            arrays.setdefault(key, []).append(values)
    arrays = {k: np.concatenate(v) for k, v in arrays.items()}
    keys = [k for g in groups for k in ((g,) if g == "global" else (g, f"mask_{g}"))] + ["truth", "weight"]
    order = np.random.default_rng(0).permutation(len(arrays["truth"]))
    started = time.perf_counter()
    for begin in range(0, len(order), batch_size):
        index = order[begin:begin + batch_size]
        {k: arrays[k][index] for k in keys}
    in_memory = len(order) / (time.perf_counter() - started)
    return streamed, in_memory


def training_step(model, device: torch.device, precision: str = "fp32", forward=None) -> Callable[[dict], None]:
    """One training step (forward, backward, AdamW step) of ``model`` on a batch on ``device``;
    ``forward`` replaces the model's own call (e.g. a compiled one)."""
    model.to(device).train()
    forward = model if forward is None else forward
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(model.standardise(batch))
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["label"])
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_rate(model, batch: dict, device: torch.device, precision: str, steps: int) -> float:
    step = training_step(model, device, precision)
    batch = {k: v.to(device) for k, v in batch.items()}
    for _ in range(2):
        step(batch)
    _synchronise(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(batch)
    _synchronise(device)
    return steps * len(batch["label"]) / (time.perf_counter() - started)


def alternating_rates(steps: dict[str, Callable[[dict], None]], batches: list[dict], device: torch.device,
                      rounds: int) -> dict[str, float]:
    """jets/s of each of ``steps`` over ``batches``, the steps taking turns on every batch,
    ``rounds`` times, after two warm-up steps each: the sum over batches of each one's fastest
    step on that batch (a shared machine only ever slows a step down)."""
    for step in steps.values():
        for batch in batches[:2]:
            step(batch)
    fastest = {name: [float("inf")] * len(batches) for name in steps}
    for _ in range(rounds):
        for index, batch in enumerate(batches):
            for name, step in steps.items():
                _synchronise(device)
                started = time.perf_counter()
                step(batch)
                _synchronise(device)
                fastest[name][index] = min(fastest[name][index], time.perf_counter() - started)
    n_jets = sum(len(batch["label"]) for batch in batches)
    return {name: n_jets / sum(seconds) for name, seconds in fastest.items()}


def inference_rate(model, batch: dict, size: int, device: torch.device, repeats: int) -> float:
    model.to(device).eval()
    small = {k: v[:size].to(device) for k, v in batch.items()}
    with torch.no_grad():
        model(model.standardise(small))
        started = time.perf_counter()
        for _ in range(repeats):
            model(model.standardise(small))
        _synchronise(device)
    return repeats * size / (time.perf_counter() - started)


def inference_rows(name: str, model, batch: dict, device: torch.device, batch_size: int, steps: int) -> list[dict]:
    """Inference at batch sizes 1, 64 and ``batch_size``, each beside the last one's figure:
    one measurement per size, so that the ``batch_size`` row's ratio is 1 by construction."""
    rates = {size: inference_rate(model, batch, size, device, repeats=max(2, steps * batch_size // size // 20))
             for size in sorted({1, 64, batch_size})}
    largest = rates[batch_size]
    return [{"stage": f"inference {name} ({device.type}, batch {size})", "figure": rate, "unit": "jets/s",
             "reference": largest, "reference_name": f"batch {batch_size}, same run", "ratio": rate / largest}
            for size, rate in rates.items()]


PEER_MODEL = "ParticleNet"
PEER_LIMIT = 1.5


def weaver_particlenet(model):
    """A copy of ``model`` (a ParticleNet) whose EdgeConv blocks are weaver-core's, with the
    same weights; None when weaver-core is not installed."""
    try:
        from weaver.nn.model.ParticleNet import EdgeConvBlock
    except ImportError:
        return None

    class WeaverBlock(torch.nn.Module):
        """weaver's block where the project's was: it takes (B, C, P) tensors, the project's
        blocks (C, B, P) ones; the two transposes cost about 1% of a block."""

        def __init__(self, ours) -> None:
            super().__init__()
            convs = list(ours.edge_mlp)[0::3]
            self.block = EdgeConvBlock(k=ours.k, in_feat=convs[0].in_channels // 2,
                                       out_feats=[conv.out_channels for conv in convs])
            state = {}
            for index, (conv, norm) in enumerate(zip(convs, list(ours.edge_mlp)[1::3])):
                state[f"convs.{index}.weight"] = conv.weight
                state.update({f"bns.{index}.{key}": value for key, value in norm.state_dict().items()})
            if isinstance(ours.shortcut, torch.nn.Sequential):
                state["sc.weight"] = ours.shortcut[0].weight
                state.update({f"sc_bn.{key}": value for key, value in ours.shortcut[1].state_dict().items()})
            self.block.load_state_dict(state)

        def forward(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            weaver_layout = [tensor.transpose(0, 1).contiguous() for tensor in (points, features)]
            return self.block(*weaver_layout).transpose(0, 1)

    peer = copy.deepcopy(model)
    peer.edge_convs = torch.nn.ModuleList([WeaverBlock(block) for block in model.edge_convs])
    return peer


def weaver_row(model, batches: list[dict], device: torch.device, rounds: int) -> dict:
    """ParticleNet-Lite's training step beside the same model with weaver-core's EdgeConvBlock."""
    stage = f"train step {PEER_MODEL}-Lite ({device.type}, fp32) vs weaver-core"
    peer = weaver_particlenet(model)
    if peer is None:
        return {"stage": stage, "skipped": 'weaver-core is not installed (pip install -e ".[bench]")'}
    model.to(device).eval(), peer.to(device).eval()
    with torch.no_grad():  # the same model: the same outputs from the same weights
        ours, theirs = model(model.standardise(batches[0])), peer(peer.standardise(batches[0]))
    difference = float((ours - theirs).abs().max() / theirs.abs().max())
    rates = alternating_rates({"ours": training_step(model, device), "weaver": training_step(peer, device)},
                              batches, device, rounds)
    return {"stage": stage, "figure": rates["ours"], "unit": "jets/s", "reference": rates["weaver"],
            "reference_name": f"weaver-core's EdgeConvBlock, same weights and batches (outputs within "
                              f"{difference:.0e})",
            "ratio": rates["ours"] / rates["weaver"], "limit": PEER_LIMIT}


def opt_in_rows(model, batches: list[dict], device: torch.device, rounds: int, compile_model: bool) -> list[dict]:
    """torch.compile and bf16 autocast beside the eager fp32 step, measured in alternation."""
    stage = f"train step {PEER_MODEL}-Lite ({device.type}, {{}})"
    steps = {"eager": training_step(model, device), "bf16 autocast": training_step(model, device, "bf16")}
    if compile_model:  # the warm-up steps compile
        steps["torch.compile"] = training_step(model, device, forward=torch.compile(model))
    rates = alternating_rates(steps, batches, device, rounds)
    rows = [{"stage": stage.format(name), "figure": rate, "unit": "jets/s", "reference": rates["eager"],
             "reference_name": "eager fp32, same run", "ratio": rate / rates["eager"]}
            for name, rate in rates.items() if name != "eager"]
    if not compile_model:
        rows.append({"stage": stage.format("torch.compile"), "skipped": "not asked for (compiling takes a minute)"})
    return rows


#: batches each side of the peer and opt-in comparisons trains on, per round, and rounds at least
PEER_BATCHES = 3
PEER_ROUNDS = 10
DDP_PROCESSES = 2
DDP_MODEL = "DeepJet"
LOOP_JETS = 20_000


def loop_history(directory: Path, name: str, batch_size: int, device: str, workdir: Path) -> list[dict]:
    """Two epochs of the training loop over every jet of ``directory`` (this process's share
    of them inside a torchrun launch)."""
    spec = InputSpec.from_meta(dataset_format.load_meta(directory), CLASSES)
    torch.manual_seed(0)
    model = model_class(name).create(spec, **MODEL_SETTINGS[name])
    data = ShardDataLoader(directory, type(model).used_groups(spec), CLASSES,
                           LoaderSettings(batch_size=batch_size, sampling="loss_weight", validation_fraction=0.0))
    settings = TrainingSettings(epochs=2, batch_size=batch_size, warmup_epochs=0, patience=0, device=device,
                                sampling="loss_weight")
    return model.fit(data, settings, workdir)


def _loop_worker(job_file: Path) -> None:
    job = json.loads(job_file.read_text())
    with distributed.process_group(job["device"]) as where:
        history = loop_history(Path(job["dataset"]), job["model"], job["batch_size"], job["device"],
                               Path(job["workdir"]))
    if where.rank == 0:
        job_file.with_suffix(".history.json").write_text(json.dumps(history))


def ddp_row(directory: Path, batch_size: int, scratch: Path) -> dict:
    """The training loop on DDP_PROCESSES processes beside one, same data and global batch."""
    device = "cuda" if torch.cuda.device_count() >= DDP_PROCESSES else "cpu"
    # every process, the single one too, gets the threads one of the processes gets: the ratio
    # is then the scaling, limit DDP_PROCESSES (on CPUs, two processes with one thread each can
    # beat one process with two threads by far, when those threads wait on each other)
    threads, default_threads = max(1, (os.cpu_count() or 1) // DDP_PROCESSES), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the loop's epoch lines
            one = loop_history(directory, DDP_MODEL, batch_size, device, scratch / "loop-1")[-1]["jets_per_second"]
    finally:
        torch.set_num_threads(default_threads)
    job_file = scratch / "loop-job.json"
    job_file.write_text(json.dumps({"dataset": str(directory), "model": DDP_MODEL, "batch_size": batch_size,
                                    "device": device, "workdir": str(scratch / f"loop-{DDP_PROCESSES}")}))
    subprocess.run(launcher.torchrun_command(DDP_PROCESSES, "benchmarks.training", "--loop-worker", str(job_file)),
                   env={**launcher.environment(DDP_PROCESSES), "OMP_NUM_THREADS": str(threads)}, check=True,
                   stdout=subprocess.DEVNULL)
    several = json.loads(job_file.with_suffix(".history.json").read_text())[-1]["jets_per_second"]
    backend = "nccl" if device == "cuda" else "gloo"
    return {"stage": f"DDP {DDP_PROCESSES} processes vs 1 process ({DDP_MODEL}, {device}, {backend})",
            "figure": several, "unit": "jets/s", "reference": one, "limit": DDP_PROCESSES,
            "reference_name": f"training loop on 1 process, same global batch {batch_size}, {threads} thread(s) "
                              f"per process", "ratio": several / one}


def run(dataset_dir: Path | None, n_jets: int, batch_size: int, steps: int,
        compile_model: bool = True) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = dataset_dir or synthetic_dataset(Path(scratch) / "dataset", n_jets)
        meta = dataset_format.load_meta(directory)
        spec = InputSpec.from_meta(meta, CLASSES)
        streamed, in_memory = loader_rate(directory, ("global", "cpf", "vtx"), batch_size)
        rows.append({"stage": "dataloader (DeepJet inputs)", "figure": streamed, "unit": "jets/s",
                     "reference": in_memory, "reference_name": "in-memory copy, random-index batches",
                     "ratio": streamed / in_memory})
        if dataset_dir is None:
            # measured in alternation, the fastest epoch of each: other work only slows one down
            padded_directory = synthetic_dataset(Path(scratch) / "padded", n_jets, packed=False)
            rates = {True: [], False: []}
            for _ in range(3):
                for packed, measured in rates.items():
                    measured.append(stream_rate(directory if packed else padded_directory, ("global", "cpf", "vtx"),
                                                batch_size))
            rows.append({"stage": "dataloader, packed candidates (DeepJet inputs)", "figure": max(rates[True]),
                         "unit": "jets/s", "reference": max(rates[False]),
                         "reference_name": "the same jets zero-padded on disk",
                         "ratio": max(rates[True]) / max(rates[False])})
        loader = ShardDataLoader(directory, ("global", "cpf", "vtx"), CLASSES,
                                 LoaderSettings(batch_size=batch_size, sampling="loss_weight", validation_fraction=0))
        sample = next(iter(loader.train_batches(0)))
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        # ParticleNet-Lite against its peer and with the opt-in numerics, on a few batches, first:
        # in a process that trains ParticleNet alone both sides pay page faults for their large
        # tensors at every step (weaver's more), after ParticleTransformer's steps the allocator
        # keeps enough memory mapped that neither does, and the ratio drops from ~1.8 to ~1.4
        for device in devices:
            torch.manual_seed(0)
            model = model_class(PEER_MODEL).create(spec, **MODEL_SETTINGS[PEER_MODEL])
            keys = (*model.input_keys(), "label")
            batches = [{k: torch.from_numpy(np.ascontiguousarray(b[k])).to(device) for k in keys}
                       for _, b in zip(range(PEER_BATCHES), loader.train_batches(0))]
            rounds = max(PEER_ROUNDS, steps // 2)
            rows.append(weaver_row(model, batches, device, rounds))
            rows += opt_in_rows(model, batches, device, rounds, compile_model)
        for name, settings in MODEL_SETTINGS.items():
            cls = model_class(name)
            torch.manual_seed(0)
            model = cls.create(spec, **settings)
            keys = model.input_keys()
            batch = {k: torch.from_numpy(np.ascontiguousarray(sample[k])) for k in keys}
            batch["label"] = torch.from_numpy(sample["label"])
            for device in devices:
                precisions = ["fp32"] + (["bf16", "fp16"] if device.type == "cuda" else [])
                fp32 = None
                for precision in precisions:
                    rate = step_rate(model, batch, device, precision, steps)
                    fp32 = fp32 or rate
                    rows.append({"stage": f"train step {name} ({device.type}, {precision})", "figure": rate,
                                 "unit": "jets/s", "reference": streamed, "reference_name":
                                 "shard loader (must be >= 3x the step)", "ratio": streamed / rate, "limit": 3,
                                 **({"speedup_vs_fp32": rate / fp32} if precision != "fp32" else {})})
                rows += inference_rows(name, model, batch, device, batch_size, steps)
        # the whole loop, twice over: a smaller synthetic dataset unless one was given
        loop_jets = min(n_jets // 4, LOOP_JETS)
        loop_directory = dataset_dir or synthetic_dataset(Path(scratch) / "loop-dataset", loop_jets,
                                                          shard_size=max(1, loop_jets // 4))
        rows.append(ddp_row(loop_directory, batch_size, Path(scratch)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="a dataset directory (default: synthetic, hlt_ak4 shapes)")
    parser.add_argument("--jets", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile row (compiling takes a minute)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--loop-worker", type=Path, help=argparse.SUPPRESS)  # one process of the DDP row
    args = parser.parse_args()
    if args.loop_worker:
        _loop_worker(args.loop_worker)
        return
    rows = run(args.dataset, args.jets, args.batch_size, args.steps, compile_model=not args.skip_compile)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
