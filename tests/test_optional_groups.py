"""optional_groups: a candidate group some input lacks is left out of both splits, or is an error."""

import dataclasses
import logging

import numpy as np
import pytest
import yaml

from bhive import construction, dataset, inputs, optional_groups
from bhive.config import load_config
from processors.deepntuple import DeepNtupleProcessor
from processors.nanoaod import NanoAODProcessor
from tests.nanoaod_files import write_nanoaod

SETTINGS = construction.ExecutorSettings(executor="iterative", chunk_size=50)
N_EVENTS = 120


def build_split(cfg, split, work):
    """Dataset construction of one split of ``cfg``, as the tasks do it; returns (meta, arrays)."""
    files = inputs.resolve_files(getattr(cfg.samples, split), f"samples.{split}")
    piece_dirs = construction.process_files(cfg, files, work / split / "pieces", SETTINGS, NanoAODProcessor, seed=1)
    directory = work / split / "dataset"
    meta = construction.build_dataset(cfg, piece_dirs, directory, split=split, seed=1, shard_size=10**6,
                                      dataset_identity={"split": split})
    shards = [dataset.open_shard(directory, shard["name"], mmap=False) for shard in meta["shards"]]
    return meta, {name: np.concatenate([shard[name] for shard in shards]) for name in shards[0]}


def small_config(tmp_path, train, test, **changes):
    """A small NanoAOD config with a cpf and a vtx group, reading ``train`` and ``test`` files."""
    raw = {
        "treename": "Events",
        "samples": {"train": [str(p) for p in train], "test": [str(p) for p in test]},
        "processes": [{"name": "ttbar", "match": ["*ttbar*"]}],
        "processor": "NanoAODProcessor",
        "pt_key": "Jet_pt", "eta_key": "Jet_eta",
        "global_features": ["Jet_pt", "Jet_eta", "PV_npvs"],
        "cpf_candidates": ["PFCand_pt"], "n_cpf_candidates": 5,
        "vtx_features": ["SV_mass", "SV_dxySig"], "n_vtx_candidates": 2,
        "vtx_custom_features": {"sv_deta": "SV_eta - Jet_eta"},
        "truths": {"b": [{"Jet_hadronFlavour": [5]}], "c": [{"Jet_hadronFlavour": [4]}],
                   "l": [{"Jet_hadronFlavour": [0]}]},
        "reference_flavour": "b",
        "reweighting": {"min_count": 0},  # a few hundred jets
        **changes,
    }
    path = tmp_path / "small.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


@pytest.fixture
def skimmed(tmp_path):
    """Central NanoAOD v15: training files with SV_*, a test file skimmed without."""
    paths = {"train": [tmp_path / "ttbar_train_0.root", tmp_path / "ttbar_train_1.root"],
             "test": [tmp_path / "ttbar_test_skim.root"]}
    for seed, path in enumerate(paths["train"]):
        write_nanoaod(path, N_EVENTS, seed=seed, layout="v15")
    write_nanoaod(paths["test"][0], N_EVENTS, seed=7, layout="v15", with_sv=False)
    return paths


def test_a_missing_collection_is_an_error_without_optional_groups(tmp_path, skimmed):
    cfg = small_config(tmp_path, skimmed["train"], skimmed["test"])
    meta, _ = build_split(cfg, "train", tmp_path / "work")  # its files have every branch
    assert set(meta["features"]) == {"global", "cpf", "vtx"} and meta["dropped_groups"] == []
    with pytest.raises(inputs.InputError, match=r"ttbar_test_skim\.root', tree 'Events': branch\(es\) SV_dxySig, "
                                                r"SV_eta, SV_mass, SV_phi missing"):
        build_split(cfg, "test", tmp_path / "work")


def test_an_optional_group_is_left_out_of_both_splits(tmp_path, skimmed, caplog):
    cfg = small_config(tmp_path, skimmed["train"], skimmed["test"], optional_groups=["vtx"])
    with caplog.at_level(logging.WARNING, logger="bhive.optional_groups"):
        built = {split: build_split(cfg, split, tmp_path / "work") for split in ("train", "test")}
    for meta, arrays in built.values():
        assert meta["features"] == {"global": ["Jet_pt", "Jet_eta", "PV_npvs"], "cpf": ["PFCand_pt"]}
        assert meta["n_candidates"] == {"cpf": 5} and meta["dropped_groups"] == ["vtx"]
        assert not {"vtx", "mask_vtx"} & set(arrays) and {"cpf", "mask_cpf"} <= set(arrays)
        assert meta["identity"]["split"] in ("train", "test")
    # the training files have SV_*, yet their dataset leaves vtx out like the test files'
    assert built["train"][0]["n_jets"] > 0
    (record,) = [r for r in caplog.records if r.name == "bhive.optional_groups"]  # once for both splits
    assert record.levelno == logging.WARNING
    assert ("optional group(s) left out of the train and the test dataset: vtx (SV_dxySig, SV_eta, SV_mass, "
            "SV_phi missing from 1 of 3 input(s), e.g. ") in record.message
    assert str(skimmed["test"][0]) in record.message


def test_groups_every_input_has_are_kept(tmp_path, skimmed, caplog):
    cfg = small_config(tmp_path, skimmed["train"][:1], skimmed["train"][1:], optional_groups=["cpf", "vtx"])
    with caplog.at_level(logging.WARNING, logger="bhive.optional_groups"):
        meta, arrays = build_split(cfg, "test", tmp_path / "work")
    assert set(meta["features"]) == {"global", "cpf", "vtx"} and meta["dropped_groups"] == []
    assert meta["features"]["vtx"] == ["SV_mass", "SV_dxySig", "sv_deta"] and arrays["vtx"].shape[1:] == (2, 3)
    assert not [record for record in caplog.records if record.name == "bhive.optional_groups"]


def test_a_branch_the_rest_of_the_config_reads_stays_an_error(tmp_path, skimmed):
    # n_sv reads the SV collection outside the vtx group: leaving vtx out cannot help it
    cfg = small_config(tmp_path, skimmed["train"], skimmed["test"], optional_groups=["vtx"],
                       global_custom_features={"n_sv": "ak.num(SV_pt, axis=1)"})
    reduced = optional_groups.dataset_config(cfg, NanoAODProcessor)
    assert list(reduced.candidate_groups) == ["cpf"]  # SV_mass is read by vtx alone
    with pytest.raises(inputs.InputError, match=r"ttbar_test_skim\.root', tree 'Events': branch\(es\) SV_dxySig, "
                                                r"SV_eta, SV_phi, SV_pt missing"):
        build_split(cfg, "test", tmp_path / "work")


def test_pieces_holding_other_groups_are_refused(tmp_path, skimmed):
    cfg = small_config(tmp_path, skimmed["train"], skimmed["test"], optional_groups=["vtx"])
    file_processes = {str(path): 0 for path in skimmed["train"]}
    # the pieces of two runs that saw different inputs: one kept vtx, the other did not
    with_vtx = construction.process_files(cfg, [str(skimmed["train"][0])], tmp_path / "pieces", SETTINGS,
                                          NanoAODProcessor, file_processes, seed=1)
    without_vtx = construction.process_files(cfg.without_groups(["vtx"]), [str(skimmed["train"][1])],
                                             tmp_path / "pieces", SETTINGS, NanoAODProcessor, file_processes,
                                             seed=1)
    with pytest.raises(dataset.DatasetError, match=r"the pieces hold different candidate groups \(cpf / cpf, vtx\)"):
        construction.build_dataset(cfg, with_vtx + without_vtx, tmp_path / "dataset", split="train", seed=1,
                                   shard_size=1000, dataset_identity={})
    strict = small_config(tmp_path, skimmed["train"], skimmed["test"])
    with pytest.raises(dataset.DatasetError, match=r"lack the candidate group\(s\) vtx, which are not in optional"):
        construction.build_dataset(strict, without_vtx, tmp_path / "dataset", split="train", seed=1,
                                   shard_size=1000, dataset_identity={})


def test_a_simulated_sample_is_judged_by_its_branch_style(monkeypatch):
    def no_file(*args):
        raise AssertionError("a simulated sample is not read before it is made")

    monkeypatch.setattr(inputs, "tree_branches", no_file)
    cfg = load_config("hlt_ak4")
    everything = dataclasses.replace(cfg, optional_groups=tuple(cfg.candidate_groups))
    # hlt_ak4's branch style writes every branch its groups read, so none is left out
    assert optional_groups.dataset_config(everything, DeepNtupleProcessor).candidate_groups == cfg.candidate_groups
    npf = dataclasses.replace(cfg.candidate_groups["cpf"], name="npf", features=("Npfcan_ptrel",), custom_features={})
    with_npf = dataclasses.replace(everything, candidate_groups={**cfg.candidate_groups, "npf": npf},
                                   optional_groups=("npf",))
    # ... and no neutral candidates (Npfcan_*: branch_style deepjet)
    assert optional_groups.dataset_config(with_npf, DeepNtupleProcessor).candidate_groups == cfg.candidate_groups
