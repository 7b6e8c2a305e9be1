"""Helpers of the scale-out tests (Slurm, HTCondor, dask): inputs, law on the command line,
and what two runs are compared by."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import luigi
import torch
import yaml

from bhive.config import CONFIG_DIR
from tests.deepntuple_files import unit_config, write_config, write_deepntuple

REPO = Path(__file__).resolve().parents[1]
LAW = Path(sys.executable).with_name("law")
#: DNN small enough to train in a second, for one epoch
SMALL_TRAINING = {"model_settings": {"DNN": {"hidden": [16]}}, "training": {"epochs": 1, "batch_size": 128}}


def build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")


def write_tiny_simulated_config(config_dir: Path) -> None:
    """``tiny``: the hlt_ak4 simulated sample cut down to 500 training jets in four files."""
    tiny = yaml.safe_load((CONFIG_DIR / "hlt_ak4.yml").read_text())
    tiny["simulate"]["jets_per_file"] = 150
    for process in tiny["simulate"]["processes"].values():
        process["train_jets"], process["test_jets"] = 250, 100
    write_config(config_dir, "tiny", {**tiny, **SMALL_TRAINING})


def write_unit_inputs(directory: Path) -> Path:
    """``unit``: two small DeepNtuple-style training files (600 jets each) and a test file per
    process; returns the config directory."""
    samples = directory / "samples"
    samples.mkdir(parents=True)
    for name, seed in (("train_ttbar", 1), ("train_qcd", 2), ("test_ttbar", 3), ("test_qcd", 4)):
        write_deepntuple(samples / f"{name}_0.root", 600, seed=seed)
    write_config(directory / "configs", "unit", unit_config(samples, **SMALL_TRAINING))
    return directory / "configs"


def shard_bytes(directory: Path) -> dict[str, bytes]:
    """Every shard file of a dataset, by its path inside the dataset."""
    files = sorted(directory.glob("shard_*/*.npy"))
    assert files, f"no shards in {directory}"
    return {str(path.relative_to(directory)): path.read_bytes() for path in files}


def weights(artifact: Path) -> dict[str, torch.Tensor]:
    state = torch.load(artifact / "weights.pt", weights_only=True, map_location="cpu")
    flat: dict[str, torch.Tensor] = {}

    def collect(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(f"{prefix}.{key}" if prefix else str(key), item)

    collect("", state)
    assert flat, f"no tensors in {artifact / 'weights.pt'}"
    return flat


def law_environment(**extra: str) -> dict[str, str]:
    """This process's environment for ``law run``, with b-hive's law.cfg and checkout."""
    return {**os.environ, "LAW_CONFIG_FILE": str(REPO / "law.cfg"), "PYTHONPATH": str(REPO), **extra}


def law_run(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``law run`` with the task given by module (no index needed); fails the test with law's
    output when it fails."""
    result = subprocess.run([str(LAW), "run", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"law run {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result
