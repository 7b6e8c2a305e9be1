"""A tiny dataset for training tests, built with the real construction code from test files."""

from __future__ import annotations

from pathlib import Path

from bhive import construction, inputs
from bhive.config import load_config
from processors.deepntuple import DeepNtupleProcessor
from tests.deepntuple_files import unit_config, write_config, write_deepntuple


def tiny_dataset(root: Path, monkeypatch, n_jets: int = 1500, shard_size: int = 400, **overrides):
    """(config, dataset directory) for a config named 'unit' over two small generated files."""
    samples = root / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    write_deepntuple(samples / "train_ttbar_0.root", n_jets, seed=1)
    write_deepntuple(samples / "train_qcd_0.root", n_jets, seed=2, b_fraction=0.15)
    write_deepntuple(samples / "test_ttbar_0.root", n_jets // 2, seed=3)
    write_deepntuple(samples / "test_qcd_0.root", n_jets // 2, seed=4, b_fraction=0.15)
    write_config(root / "configs", "unit", unit_config(samples, **overrides))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(root / "configs"))
    cfg = load_config("unit")
    files = inputs.resolve_files(cfg.samples.train, "train")
    settings = construction.ExecutorSettings(executor="iterative", chunk_size=100_000)
    pieces = construction.process_files(cfg, files, root / "pieces", settings, DeepNtupleProcessor, seed=5)
    directory = root / "dataset"
    construction.build_dataset(cfg, pieces, directory, split="train", seed=5, shard_size=shard_size,
                               dataset_identity={"test": True})
    return cfg, directory
