"""Small DeepNtuple-style input files and a matching config, written by the tests themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import uproot
import yaml

from bhive.config import CONFIG_DIR

TREE = "producer/custom_tree"


def write_deepntuple(path: Path, n_jets: int, seed: int, b_fraction: float = 0.3, c_fraction: float = 0.2,
                     nan_jets: int = 0, treename: str = TREE) -> dict[str, np.ndarray]:
    """One entry per jet: globals, a candidate list, a vertex list, truth flags, a tagger score."""
    rng = np.random.default_rng(seed)
    flavour = rng.choice(3, size=n_jets, p=[b_fraction, c_fraction, 1 - b_fraction - c_fraction])
    pt = (20 + rng.exponential(80, n_jets) * np.where(flavour == 0, 0.7, 1.3)).astype(np.float32)
    eta = rng.uniform(-2.7, 2.7, n_jets).astype(np.float32)
    n_cand = rng.integers(0, 9, n_jets)
    n_sv = rng.integers(0, 4, n_jets)
    cand_pt = rng.exponential(5, n_cand.sum()).astype(np.float32)
    displacement = np.repeat(np.where(flavour == 0, 3.0, 0.5), n_cand)
    cand_sip = (rng.standard_normal(n_cand.sum()) + rng.exponential(displacement)).astype(np.float32)
    sv_mass = rng.uniform(0.3, 5, n_sv.sum()).astype(np.float32)
    sv_sig = rng.exponential(10, n_sv.sum()).astype(np.float32)
    jet_pt = pt.copy()
    if nan_jets:
        jet_pt[:nan_jets] = np.nan
    arrays = {
        "jet_pt": jet_pt, "jet_eta": eta,
        "npv": rng.poisson(30, n_jets).astype(np.int32),
        "isB": (flavour == 0).astype(np.int32), "isC": (flavour == 1).astype(np.int32),
        "isL": (flavour == 2).astype(np.int32),
        "btag_score": np.clip(rng.normal(np.where(flavour == 0, 0.7, 0.2), 0.2), 0, 1).astype(np.float32),
        "pfcand": ak.unflatten(ak.zip({"pt": cand_pt, "sip": cand_sip}), n_cand),
        "sv": ak.unflatten(ak.zip({"mass": sv_mass, "dxysig": sv_sig}), n_sv),
    }
    types = {k: (v.dtype if isinstance(v, np.ndarray) else v.type.content) for k, v in arrays.items()}
    with uproot.recreate(path) as file:
        file.mktree(treename, types).extend(arrays)
    return {"flavour": flavour, "pt": pt, "eta": eta, "n_cand": n_cand, "n_sv": n_sv}


def write_samples(directory: Path, n_jets: int) -> Path:
    """Training and test files of a ttbar and a QCD process in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, seed in (("train_ttbar", 1), ("train_qcd", 2), ("test_ttbar", 3), ("test_qcd", 4)):
        write_deepntuple(directory / f"{name}_0.root", n_jets, seed=seed)
    return directory


def unit_config(sample_dir: Path, **overrides) -> dict:
    config = {
        "treename": TREE,
        "samples": {"train": [str(sample_dir / "train_*.root")], "test": [str(sample_dir / "test_*.root")]},
        "processes": [{"name": "ttbar", "match": ["*ttbar*"]}, {"name": "qcd", "match": ["*qcd*"]}],
        "bins_pt": [30.0, 50.0, 100.0, 200.0, 1000.0],
        "bins_eta": [-2.5, 0.0, 2.5],
        "global_features": ["jet_pt", "jet_eta", "npv"],
        "global_custom_features": {"log_pt": "np.log(jet_pt)"},
        "cpf_candidates": ["pfcand_pt", "pfcand_sip"],
        "n_cpf_candidates": 5,
        "vtx_features": ["sv_mass", "sv_dxysig"],
        "n_vtx_candidates": 2,
        "truths": ["isB", "isC", "isL"],
        "reference_flavour": "isB",
        "discriminators": {"BvsL": {"signal": ["isB"], "background": ["isL"]}},
        "reference_taggers": {"OldTagger": {"BvsL": "btag_score"}},
        # a few hundred jets leave some bins with a handful: the sparse-bin check has tests of its own
        "reweighting": {"min_count": 0},
    }
    config.update(overrides)
    return config


def write_config(config_dir: Path, name: str, config: dict) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    if not (config_dir / "default.yml").exists():
        shutil.copy(CONFIG_DIR / "default.yml", config_dir / "default.yml")
    (config_dir / f"{name}.yml").write_text(yaml.safe_dump(config, sort_keys=False))
