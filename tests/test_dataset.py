"""Dataset construction: shapes, selection, weights, reproducibility, executors, resumption."""

import concurrent.futures
import gc
import hashlib
import json
import logging
import os
import pickle

import numpy as np
import pytest

from bhive import construction, dataset, inputs, pieces
from bhive.config import load_config
from processors.deepntuple import DeepNtupleProcessor
from tests.deepntuple_files import unit_config, write_config, write_deepntuple

N_TTBAR, N_QCD = 700, 500


@pytest.fixture
def unit(tmp_path, monkeypatch):
    """Two small input files and a config reading them."""
    samples = tmp_path / "samples"
    samples.mkdir()
    truth = {
        "ttbar": write_deepntuple(samples / "train_ttbar_0.root", N_TTBAR, seed=1, nan_jets=7),
        "qcd": write_deepntuple(samples / "train_qcd_0.root", N_QCD, seed=2, b_fraction=0.1),
    }
    configs = tmp_path / "configs"
    write_config(configs, "unit", unit_config(samples))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(configs))
    return {"cfg": load_config("unit"), "samples": samples, "truth": truth, "tmp": tmp_path}


def build(unit, name="out", executor="iterative", processes=1, chunk_size=300, shard_size=400, seed=3,
          histograms_from=None):
    cfg = unit["cfg"]
    files = inputs.resolve_files(cfg.samples.train, "train")
    work = unit["tmp"] / name
    settings = construction.ExecutorSettings(executor=executor, processes=processes, chunk_size=chunk_size)
    piece_dirs = construction.process_files(cfg, files, work / "pieces", settings, DeepNtupleProcessor, seed=seed)
    identity = {"test": name}
    meta = construction.build_dataset(cfg, piece_dirs, work / "dataset", split="train", seed=seed,
                                      shard_size=shard_size, dataset_identity=identity,
                                      histograms_from=histograms_from, processes=processes)
    return work / "dataset", meta


def shard_digest(directory, meta):
    digest = hashlib.sha256()
    for shard in meta["shards"]:
        for path in sorted((directory / shard["name"]).glob("*.npy")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def load_all(directory, meta):
    shards = [dataset.open_shard(directory, s["name"]) for s in meta["shards"]]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


def test_arrays_follow_the_dataset_contract(unit):
    directory, meta = build(unit)
    arrays = load_all(directory, meta)
    n = meta["n_jets"]
    assert arrays["global"].shape == (n, 4) and arrays["global"].dtype == np.float32
    assert arrays["cpf"].shape == (n, 5, 2) and arrays["mask_cpf"].shape == (n, 5) and arrays["mask_cpf"].dtype == bool
    assert arrays["vtx"].shape == (n, 2, 2)
    assert arrays["truth"].dtype == np.int16 and arrays["process"].dtype == np.int16
    assert arrays["kinematics"].shape == (n, 2) and arrays["weight"].shape == (n,)
    assert arrays["extras"].shape == (n, 1)
    assert meta["features"] == {"global": ["jet_pt", "jet_eta", "npv", "log_pt"],
                                "cpf": ["pfcand_pt", "pfcand_sip"], "vtx": ["sv_mass", "sv_dxysig"]}
    assert meta["extras"] == ["OldTagger/BvsL"] and meta["kinematics"] == ["jet_pt", "jet_eta"]
    # kinematics by name: pt and eta are the jet_pt/jet_eta globals, and the custom feature is log(pt)
    np.testing.assert_array_equal(arrays["kinematics"][:, 0], arrays["global"][:, 0])
    np.testing.assert_allclose(arrays["global"][:, 3], np.log(arrays["global"][:, 0]), rtol=1e-6)
    # padding: masked slots are zero, and the mask counts the candidates (up to 5)
    assert np.all(arrays["cpf"][~arrays["mask_cpf"]] == 0)
    assert set(np.unique(arrays["process"])) == {0, 1}
    for k in ("global", "cpf", "vtx", "kinematics"):
        assert np.isfinite(arrays[k]).all()


def test_selection_counts_and_nan_jets(unit):
    _, meta = build(unit)
    expected = 0
    for name, sample in unit["truth"].items():
        pt, eta = sample["pt"], sample["eta"]
        in_range = (pt >= 30) & (pt < 1000) & (eta >= -2.5) & (eta < 2.5)
        if name == "ttbar":
            in_range[:7] = False  # their jet_pt is NaN: no comparison holds, so they are out of range
        expected += int(in_range.sum())
    counts = meta["counts"]
    assert counts["read"] == N_TTBAR + N_QCD
    assert counts["kept"] == meta["n_jets"] == expected
    assert counts["out_of_range"] == counts["read"] - expected
    assert counts["no_label"] == counts["non_finite"] == 0
    assert sum(meta["jets_per_label"].values()) == expected


def test_non_finite_candidate_features_are_dropped_and_counted(unit, tmp_path):
    cfg = unit["cfg"]
    from processors.deepntuple import DeepNtupleProcessor
    import awkward as ak

    processor = DeepNtupleProcessor(cfg, tmp_path, {})
    table = ak.Array({
        "jet_pt": np.array([50.0, 60.0, 70.0], np.float32), "jet_eta": np.zeros(3, np.float32),
        "npv": np.ones(3, np.int32), "isB": np.array([1, 0, 0]), "isC": np.array([0, 1, 0]),
        "isL": np.array([0, 0, 1]), "btag_score": np.zeros(3, np.float32),
        "pfcand_pt": [[1.0], [np.inf], [2.0, 3.0]], "pfcand_sip": [[0.0], [1.0], [np.nan, 1.0]],
        "sv_mass": [[], [1.0], []], "sv_dxysig": [[], [2.0], []],
    })
    arrays, info = processor.build(table, "made-up.root")
    assert info["counts"]["non_finite"] == 2 and info["n_jets"] == 1
    np.testing.assert_array_equal(arrays["truth"], [0])


def test_weights_reweight_every_label_to_the_reference(unit):
    directory, meta = build(unit)
    arrays = load_all(directory, meta)
    bins_pt, bins_eta = meta["bins_pt"], meta["bins_eta"]
    assert np.isclose(np.max(arrays["weight"]), 1.0)
    spectra = []
    for label in range(3):
        selected = arrays["truth"] == label
        assert np.isclose(arrays["weight"][selected].max(), 1.0)
        weighted, _, _ = np.histogram2d(arrays["kinematics"][selected, 0], arrays["kinematics"][selected, 1],
                                        bins=[bins_pt, bins_eta], weights=arrays["weight"][selected])
        spectra.append(weighted)
    reference = spectra[0]
    for weighted in spectra[1:]:
        both = (weighted > 0) & (reference > 0)
        ratio = weighted[both] / reference[both]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


def test_same_inputs_and_seed_give_identical_shards_with_any_executor(unit):
    first_dir, first = build(unit, "a", executor="iterative")
    second_dir, second = build(unit, "b", executor="futures", processes=2)
    assert shard_digest(first_dir, first) == shard_digest(second_dir, second)
    # with several merging threads the plots are drawn alongside the merge, in a process of
    # their own: the same plots of the same numbers
    assert second["plots"] == first["plots"] and len(first["plots"]) > 6
    assert all((second_dir / plot).stat().st_size > 0 for plot in second["plots"])
    for plot in (plot for plot in first["plots"] if plot.endswith(".npz")):
        with np.load(first_dir / plot) as drawn, np.load(second_dir / plot) as drawn_alongside:
            assert sorted(drawn.files) == sorted(drawn_alongside.files)
            for key in drawn.files:
                np.testing.assert_array_equal(drawn[key], drawn_alongside[key], err_msg=f"{plot}: {key}")
    other_dir, other = build(unit, "c", seed=4)
    assert shard_digest(other_dir, other) != shard_digest(first_dir, first)


def test_shards_do_not_depend_on_how_they_are_merged(unit):
    cfg = unit["cfg"]
    directory, meta = build(unit, "a")
    piece_dirs = sorted((unit["tmp"] / "a" / "pieces").iterdir())
    weights = np.asarray(meta["weights"])
    # pieces listed in another order, merged by two threads, and by more threads than shards
    shards = dataset.write_shards(piece_dirs[::-1], unit["tmp"] / "again", 3, 400, weights, cfg.bins_pt,
                                  cfg.bins_eta, processes=2)
    assert shards == meta["shards"] and len(shards) >= 3
    assert dataset.write_shards(piece_dirs, unit["tmp"] / "wide", 3, 400, weights, cfg.bins_pt, cfg.bins_eta,
                                processes=len(shards) + 2) == meta["shards"]
    with pytest.raises(dataset.DatasetError, match="was ordered for seed 3, not 4; remove the pieces"):
        dataset.write_shards(piece_dirs, unit["tmp"] / "other", 4, 400, weights, cfg.bins_pt, cfg.bins_eta)


class InThisProcess(concurrent.futures.ThreadPoolExecutor):
    """Runs what build_dataset hands to a process of its own, and keeps what that was."""

    submitted = []

    def __init__(self, workers, mp_context=None):
        super().__init__(workers)

    def submit(self, function, *args, **kwargs):
        self.submitted.append((function, kwargs))
        return super().submit(function, *args, **kwargs)


def test_with_several_processes_another_process_merges_while_this_one_draws(unit, monkeypatch):
    monkeypatch.setattr(construction.concurrent.futures, "ProcessPoolExecutor", InThisProcess)
    InThisProcess.submitted.clear()
    reference_dir, reference = build(unit, "one", executor="iterative")
    assert InThisProcess.submitted == []
    directory, meta = build(unit, "three", executor="iterative", processes=3)
    assert InThisProcess.submitted == [(dataset.write_shards, {"processes": 2})]
    assert shard_digest(directory, meta) == shard_digest(reference_dir, reference)
    assert meta["plots"] == reference["plots"] and all((directory / name).is_file() for name in meta["plots"])


@pytest.mark.parametrize("merge_fails", [True, False])
def test_when_drawing_fails_a_failed_merge_says_why(unit, monkeypatch, merge_fails):
    piece_dirs = construction.process_files(unit["cfg"], inputs.resolve_files(unit["cfg"].samples.train, "train"),
                                            unit["tmp"] / "pieces", construction.ExecutorSettings(executor="iterative"),
                                            DeepNtupleProcessor, seed=3)

    def failing_merge(*args, processes=1):
        raise dataset.DatasetError("piece p is damaged; remove the pieces and make them again")

    def failing_drawing(*args):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(construction.concurrent.futures, "ProcessPoolExecutor", InThisProcess)
    monkeypatch.setattr(construction.dataset_plots, "draw", failing_drawing)
    if merge_fails:
        monkeypatch.setattr(dataset, "write_shards", failing_merge)
    error = dataset.DatasetError if merge_fails else RuntimeError
    with pytest.raises(error, match="piece p is damaged" if merge_fails else "drawing failed"):
        construction.build_dataset(unit["cfg"], piece_dirs, unit["tmp"] / "dataset", split="train", seed=3,
                                   shard_size=400, dataset_identity={}, processes=2)
    assert not (unit["tmp"] / "dataset" / dataset.META_FILE).exists()


def test_merge_buffers_are_reused_and_grow_when_a_shard_needs_more():
    buffers = dataset._Buffers()
    first = buffers.array("cpf", (10, 3), np.float32)
    first[:] = 1.0
    smaller = buffers.array("cpf", (4, 3), np.float32)
    assert np.shares_memory(first, smaller) and smaller.shape == (4, 3) and smaller.dtype == np.float32
    other = buffers.array("truth", (10,), np.int16)
    assert not np.shares_memory(other, first)
    larger = buffers.array("cpf", (20, 3), np.float32)
    assert larger.shape == (20, 3) and not np.shares_memory(larger, first)
    assert buffers.array("cpf", (0, 3), np.float32).shape == (0, 3)


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("file", ["cpf.npy", pieces.JETS_FILE])
def test_a_piece_cut_short_is_named_before_any_shard_is_written(unit, processes, file):
    cfg = unit["cfg"]
    directory, meta = build(unit, "a")
    piece_dirs = sorted((unit["tmp"] / "a" / "pieces").iterdir())
    damaged = piece_dirs[0] / file
    os.truncate(damaged, damaged.stat().st_size - 100)
    target = unit["tmp"] / "again"
    with pytest.raises(dataset.DatasetError, match=rf"piece file {damaged} ends 100 bytes early; remove the pieces"):
        dataset.write_shards(piece_dirs, target, 3, 400, np.asarray(meta["weights"]), cfg.bins_pt, cfg.bins_eta,
                             processes=processes)
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize("file", ["cpf.npy", pieces.JETS_FILE])
def test_a_piece_cut_while_it_is_read_is_named(unit, file):
    build(unit, "a")
    piece = sorted((unit["tmp"] / "a" / "pieces").iterdir())[0]
    info = pieces.read_info(piece)
    reader = pieces.PieceReader(piece, info, 3, 1, info["arrays"])
    os.truncate(piece / file, (piece / file).stat().st_size - 100)
    outs = {name: np.empty((reader.n_rows(name, 0), *spec["shape"][2 if "packed_by" in spec else 1:]), spec["dtype"])
            for name, spec in info["arrays"].items()}
    with pytest.raises(pieces.PieceError, match=rf"piece file {piece / file} ends \d+ bytes early"):
        reader.read_all(0, outs)


def test_pieces_store_padded_candidates_packed(unit):
    build(unit, "a")
    piece = sorted((unit["tmp"] / "a" / "pieces").iterdir())[0]
    info = pieces.read_info(piece)
    cpf, mask = pieces.load_array(piece, "cpf"), pieces.load_array(piece, "mask_cpf")
    assert info["arrays"]["cpf"]["packed_by"] == "mask_cpf" and cpf.shape == tuple(info["arrays"]["cpf"]["shape"])
    assert np.load(piece / "cpf.npy").shape == (mask.sum(), cpf.shape[2]) and not cpf[~mask].any()


def test_a_piece_holds_its_per_jet_arrays_as_records_of_one_file(tmp_path):
    rng = np.random.default_rng(5)
    n = 50
    mask = rng.random((n, 4)) < 0.5
    arrays = {"global": rng.normal(size=(n, 3)).astype(np.float32), "truth": rng.integers(0, 4, n).astype(np.int16),
              "mask_cpf": mask, "kinematics": rng.normal(size=(n, 2)).astype(np.float32),
              "extras": np.zeros((n, 0), np.float32), "mc_weight": rng.normal(size=n).astype(">f8"),
              "target": rng.normal(size=(n, 2, 3)).astype(np.float16),
              "cpf": np.where(mask[..., None], rng.normal(size=(n, 4, 2)), 0).astype(np.float32)}
    piece = tmp_path / "piece"
    pieces.write_piece(piece, arrays, {"n_jets": n}, seed=9, masks={"cpf": "mask_cpf"})
    assert sorted(p.name for p in piece.iterdir()) == sorted(["cpf.npy", pieces.INFO_FILE, pieces.JETS_FILE])
    for name, values in arrays.items():
        np.testing.assert_array_equal(pieces.load_array(piece, name), values)
    # the records hold every per-jet array, as stored (in shard-key order), each field aligned
    records = np.load(piece / pieces.JETS_FILE)
    order = np.argsort(pieces.shard_keys(9, piece.name, n), kind="stable")
    assert sorted(records.dtype.names) == sorted(set(arrays) - {"cpf"})
    for name in records.dtype.names:
        np.testing.assert_array_equal(records[name], arrays[name][order])
        assert records.dtype.fields[name][1] % records.dtype.fields[name][0].base.itemsize == 0
    assert np.load(piece / "cpf.npy").shape == (mask.sum(), 2)
    # the same fields whatever order info.json gives the arrays in
    info = pieces.read_info(piece)
    shuffled = dict(reversed(list(info["arrays"].items())))
    assert pieces.jet_record(shuffled) == records.dtype
    # a shard's block of every array, read as the merge reads it, is the stored rows of its jets
    reader = pieces.PieceReader(piece, info, 9, 3, info["arrays"])
    for shard in range(3):
        rows = slice(reader.bounds[shard], reader.bounds[shard + 1])
        outs = {name: np.empty((reader.n_rows(name, shard), *values.shape[2 if name == "cpf" else 1:]), values.dtype)
                for name, values in arrays.items()}
        reader.read_all(shard, outs)
        for name in records.dtype.names:
            np.testing.assert_array_equal(outs[name], arrays[name][order][rows])
        np.testing.assert_array_equal(outs["cpf"], arrays["cpf"][order][rows][mask[order][rows]])


def test_a_piece_without_jets_is_read_as_empty_blocks(tmp_path):
    arrays = {"global": np.zeros((0, 3), np.float32), "mask_cpf": np.zeros((0, 4), bool),
              "extras": np.zeros((0, 0), np.float32), "cpf": np.zeros((0, 4, 2), np.float32)}
    piece = tmp_path / "piece"
    pieces.write_piece(piece, arrays, {"n_jets": 0}, seed=9, masks={"cpf": "mask_cpf"})
    info = pieces.read_info(piece)
    reader = pieces.PieceReader(piece, info, 9, 2, info["arrays"])
    outs = {"global": np.empty((0, 3), np.float32), "mask_cpf": np.empty((0, 4), bool),
            "extras": np.empty((0, 0), np.float32), "cpf": np.empty((0, 2), np.float32)}
    reader.read_all(1, outs)
    assert [reader.n_rows(name, 1) for name in outs] == [0, 0, 0, 0]
    assert pieces.load_jets(piece).shape == (0,) and pieces.load_array(piece, "cpf").shape == (0, 4, 2)


@pytest.mark.parametrize("damage", ["cut records", "older layout"])
def test_a_damaged_piece_stops_the_build_with_its_name_whatever_the_processes(unit, damage):
    cfg = unit["cfg"]
    build(unit, "a")
    piece_dirs = sorted((unit["tmp"] / "a" / "pieces").iterdir())
    victim = piece_dirs[2]
    if damage == "cut records":
        os.truncate(victim / pieces.JETS_FILE, (victim / pieces.JETS_FILE).stat().st_size - 100)
        expected = rf"piece file {victim / pieces.JETS_FILE} ends 100 bytes early; remove the pieces"
    else:
        info = pieces.read_info(victim)
        (victim / pieces.INFO_FILE).write_text(json.dumps({**info, pieces.LAYOUT: 1}))
        expected = rf"piece {victim} is in another layout.*; remove the pieces"
    for processes in (1, 2):
        target = unit["tmp"] / f"again_{processes}"
        with pytest.raises(dataset.DatasetError, match=expected):
            construction.build_dataset(cfg, piece_dirs, target, split="train", seed=3, shard_size=400,
                                       dataset_identity={}, processes=processes)
        assert not (target / dataset.META_FILE).exists() and not (target.exists() and any(target.glob("shard_*")))


@pytest.mark.parametrize("dtype", ["|O", "<U4", "not a dtype", "V8"])
def test_a_piece_whose_info_names_anything_but_numbers_is_refused(unit, dtype):
    cfg = unit["cfg"]
    _, meta = build(unit, "a")
    piece_dirs = sorted((unit["tmp"] / "a" / "pieces").iterdir())
    victim = piece_dirs[1]
    info = pieces.read_info(victim)
    info["arrays"]["truth"]["dtype"] = dtype
    (victim / pieces.INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(dataset.DatasetError, match=rf"piece {victim}: its info gives array 'truth' the dtype "
                                                   rf"'{dtype}'; pieces hold booleans and numbers only"):
        dataset.write_shards(piece_dirs, unit["tmp"] / "again", 3, 400, np.asarray(meta["weights"]), cfg.bins_pt,
                             cfg.bins_eta)
    with pytest.raises(pieces.PieceError, match="booleans and numbers only"):
        pieces.load_jets(victim)


def test_a_piece_of_an_older_layout_is_made_again_and_never_merged(unit):
    cfg = unit["cfg"]
    _, meta = build(unit, "a")
    piece_dirs = sorted((unit["tmp"] / "a" / "pieces").iterdir())
    older = piece_dirs[1]
    info = pieces.read_info(older)
    del info[pieces.LAYOUT]
    (older / pieces.INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(dataset.DatasetError, match=rf"piece {older} is in another layout.*remove the pieces"):
        dataset.write_shards(piece_dirs, unit["tmp"] / "again", 3, 400, np.asarray(meta["weights"]), cfg.bins_pt,
                             cfg.bins_eta)
    assert not (unit["tmp"] / "again").exists()
    kept = {p: (p / pieces.JETS_FILE).stat().st_mtime_ns for p in piece_dirs if p != older}
    files = inputs.resolve_files(cfg.samples.train, "train")
    settings = construction.ExecutorSettings(executor="iterative", chunk_size=300)
    again = construction.process_files(cfg, files, unit["tmp"] / "a" / "pieces", settings, DeepNtupleProcessor,
                                       seed=3)
    assert again == piece_dirs and pieces.is_current(pieces.read_info(older))
    assert all((p / pieces.JETS_FILE).stat().st_mtime_ns == t for p, t in kept.items())


def test_shards_store_candidates_packed_and_keep_every_jet_of_the_pieces(unit):
    directory, meta = build(unit, "a")
    piece_dirs = sorted((unit["tmp"] / "a" / "pieces").iterdir())
    made = {k: np.concatenate([pieces.load_array(p, k) for p in piece_dirs]) for k in ("global", "cpf", "vtx")}
    stored = load_all(directory, meta)
    for shard in meta["shards"]:
        on_disk, mask = (np.load(directory / shard["name"] / f"{k}.npy") for k in ("cpf", "mask_cpf"))
        assert on_disk.shape == (mask.sum(), 2)
    # the same jets, each with its own candidates: match them by their global features
    order_made = np.lexsort(made["global"].T[::-1])
    order_stored = np.lexsort(stored["global"].T[::-1])
    for key in ("global", "cpf", "vtx"):
        np.testing.assert_array_equal(stored[key][order_stored], made[key][order_made])


def test_dask_executor_on_a_local_cluster_gives_the_same_shards(unit):
    reference_dir, reference = build(unit, "iterative", executor="iterative")
    dask_dir, dask_meta = build(unit, "dask", executor="dask", processes=2)
    assert shard_digest(dask_dir, dask_meta) == shard_digest(reference_dir, reference)


def test_shards_mix_files_and_processes(unit):
    directory, meta = build(unit, shard_size=300)
    assert len(meta["shards"]) == 4
    for shard in meta["shards"]:
        arrays = dataset.open_shard(directory, shard["name"])
        assert set(np.unique(arrays["process"])) == {0, 1}


def test_chunk_size_larger_than_the_data(unit):
    _, meta = build(unit, chunk_size=10_000_000)
    assert meta["n_jets"] > 0 and len(meta["files"]) == 2


def test_interrupted_processing_reuses_finished_pieces(unit):
    cfg = unit["cfg"]
    files = inputs.resolve_files(cfg.samples.train, "train")
    settings = construction.ExecutorSettings(executor="iterative", chunk_size=300)
    directory = unit["tmp"] / "pieces"
    first = construction.process_files(cfg, files, directory, settings, DeepNtupleProcessor, seed=3)
    kept = {p: (p / pieces.JETS_FILE).stat().st_mtime_ns for p in first[1:]}
    import shutil
    shutil.rmtree(first[0])
    second = construction.process_files(cfg, files, directory, settings, DeepNtupleProcessor, seed=3)
    assert second == first
    assert all((p / pieces.JETS_FILE).stat().st_mtime_ns == t for p, t in kept.items())


def test_piece_names_are_unique_for_any_path():
    names = {
        pieces.piece_name("/data/a/ttbar.root", "t", 0, 100),
        pieces.piece_name("/data/b/ttbar.root", "t", 0, 100),
        pieces.piece_name("root://eosuser.cern.ch//eos/a/ttbar.root", "t", 0, 100),
        pieces.piece_name("root://other.cern.ch//eos/a/ttbar.root", "t", 0, 100),
        pieces.piece_name("/data/a/ttbar.root", "t", 100, 200),
        pieces.piece_name("/data/a/ttbar.root", "u", 0, 100),
    }
    assert len(names) == 6
    assert all("/" not in n and ":" not in n for n in names)


def test_histograms_from_another_dataset(unit):
    train_dir, train = build(unit, "train")
    test_dir, test = build(unit, "test", seed=9, histograms_from=train_dir)
    assert test["weights"] == train["weights"] and test["weights_from"] == str(train_dir)


def test_spectra_plots_are_written_with_their_data(unit):
    directory, meta = build(unit)
    for stem in ("pt_before", "pt_after", "eta_before", "eta_after"):
        for suffix in (".png", ".pdf", ".npz"):
            assert (directory / "plots" / f"{stem}{suffix}").stat().st_size > 0


def test_process_assignment(caplog):
    processes = load_config("hlt_ak4").processes
    assert inputs.assign_processes(["/x/ttbar_1.root", "/x/qcd_2.root"], processes) == {
        "/x/ttbar_1.root": 0, "/x/qcd_2.root": 1}
    with pytest.raises(inputs.InputError, match="matches several processes"):
        inputs.assign_processes(["/x/ttbar_qcd_1.root"], processes)
    with pytest.raises(inputs.InputError, match="matches no process"):
        inputs.assign_processes(["/x/wjets_1.root"], processes)
    with caplog.at_level(logging.WARNING):
        assert inputs.assign_processes(["/x/wjets_1.root"], processes, overlap="warn") == {"/x/wjets_1.root": -1}
    assert "matches no process" in caplog.text


def test_coffea_lays_out_no_branch_and_the_processor_reads_its_own(unit, monkeypatch):
    from bhive.plugins.processor import JetProcessor

    cfg = unit["cfg"]
    files = inputs.resolve_files(cfg.samples.train, "train")
    shown, read_fields = [], []
    original = JetProcessor._read

    def recording_read(self, events):
        shown.append(events.fields)
        loaded = original(self, events)
        read_fields.append(set(loaded.fields))
        return loaded

    monkeypatch.setattr(JetProcessor, "_read", recording_read)
    build(unit)
    in_file = inputs.tree_branches(files[0], cfg.treename).branches
    read = DeepNtupleProcessor(cfg, unit["tmp"], {}).read_branches(in_file)
    assert shown and all(fields == [] for fields in shown)
    assert read_fields and all(fields == read for fields in read_fields) and read < in_file
    # the filter pickles, so that process pools and dask workers get it
    assert pickle.loads(pickle.dumps(construction.no_branch)) is construction.no_branch
    assert not any(construction.no_branch(name) for name in in_file)


def test_chunks_are_processed_and_merged_with_the_older_objects_frozen(unit, monkeypatch):
    # the garbage collector's full passes skip the objects from before (bhive/collector.py)
    seen = []
    original = DeepNtupleProcessor.jet_table
    monkeypatch.setattr(DeepNtupleProcessor, "jet_table",
                        lambda self, events: seen.append(gc.get_freeze_count()) or original(self, events))
    original_write = dataset.write_shards
    monkeypatch.setattr(dataset, "write_shards", lambda *args: seen.append(gc.get_freeze_count())
                        or original_write(*args))
    before = gc.get_freeze_count()
    build(unit)
    assert len(seen) > 2 and min(seen) > before
    assert gc.get_freeze_count() == before


@pytest.mark.parametrize("failing", ["write", "hash"])
def test_a_shard_that_fails_leaves_nothing_and_its_lanes_writer_serves_on(tmp_path, monkeypatch, failing):
    from concurrent.futures import ThreadPoolExecutor

    from bhive import direct_io
    from bhive.store import StoreError

    arrays = {"truth": np.arange(300_000, dtype=np.int16), "weight": np.ones(300_000, np.float32)}

    def no_space(*args):
        raise OSError(28, "No space left on device")

    with ThreadPoolExecutor(1) as writer:
        with monkeypatch.context() as patch:
            if failing == "write":
                patch.setattr(direct_io, "save_array", no_space)
            else:
                patch.setattr(dataset, "_file_record", no_space)
            with pytest.raises(StoreError, match="no space left while writing .*shard_0000"):
                dataset._write_shard(tmp_path / "shard_0000", arrays, writer)
        assert list(tmp_path.iterdir()) == []
        files = dataset._write_shard(tmp_path / "shard_0000", arrays, writer)
    assert sorted(files) == ["truth.npy", "weight.npy"]
    assert (np.load(tmp_path / "shard_0000" / "truth.npy") == arrays["truth"]).all()
