"""NanoAODProcessor: jets flattened over events, SVs and PF candidates attached per jet.

The expected tables are built here by plain Python loops over the events of the file, read
with uproot, independently of the processor's vectorised code.
"""

import itertools
import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from coffea import processor
from coffea.nanoevents import BaseSchema

from bhive import pieces
from bhive.config import ConfigError, load_config
from processors.base import ProcessorError, processor_class
from processors.nanoaod import NanoAODProcessor
from tests.nanoaod_files import TREE, write_nanoaod

N_EVENTS = 120
CONE = 0.4
# Candidates this close to the cone edge may fall either way in float32; they are not judged.
EDGE = 1e-4


@pytest.fixture(scope="module")
def cfg():
    return load_config("nanoaod_ak4")


def btv_track_features() -> dict:
    """The BTV PFNano track features nanoaod_ak4.yml documents in its comments, as config keys."""
    after = load_config("nanoaod_ak4").path.read_text().split("# BTV PFNano only")[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("#   "))
    block = itertools.takewhile(lambda line: line.startswith("#   "), after[start:])
    snippet = yaml.safe_load("\n".join(line[4:] for line in block))
    cpf_candidates = snippet.pop("cpf_candidates")
    return {"cpf_candidates": cpf_candidates,
            "cpf_custom_features": {**load_config("nanoaod_ak4").candidate_groups["cpf"].custom_features, **snippet}}


@pytest.fixture(scope="module")
def btv_cfg(tmp_path_factory):
    """nanoaod_ak4 with the track features of BTV PFNano added, as its comments say."""
    return load_config(write_variant(tmp_path_factory.mktemp("btv"), "btv", **btv_track_features()))


class _JetTables(processor.ProcessorABC):
    """Collects the jet table of every chunk, to look at what the processor builds."""

    def __init__(self, inner: NanoAODProcessor):
        self.inner = inner

    def process(self, events):
        return {"tables": [self.inner.jet_table(events)]}

    def postprocess(self, accumulator):
        return accumulator


def run(path, proc, chunksize=100_000):
    """The processor's output, each piece's name mapped to the info it wrote with the piece."""
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=BaseSchema, chunksize=chunksize)
    output = runner({"inputs": [str(path)]}, proc, treename=TREE)
    if "pieces" in output:
        output["pieces"] = {name: pieces.read_info(Path(proc.piece_directory) / name) for name in output["pieces"]}
    return output


def jet_table(path, cfg, tmp_path, chunksize=100_000):
    proc = NanoAODProcessor(cfg, piece_directory=tmp_path / "pieces", file_processes={str(path): 0})
    return ak.concatenate(run(path, _JetTables(proc), chunksize)["tables"])


def read_events(path):
    return uproot.open(path)[TREE].arrays(library="ak").tolist()


def same_table(a, b):
    """Equal jet tables; GenJet_* are NaN for jets without a generator jet in both."""
    return a.fields == b.fields and ak.array_equal(a, b, equal_nan=True)


def delta_r(eta1, phi1, eta2, phi2):
    d_phi = math.remainder(phi1 - phi2, 2 * math.pi)
    return math.hypot(eta1 - eta2, d_phi)


def cone_reference(events, prefix, sort_key):
    """Per jet: indices of the objects in the cone by sort_key descending; sort_key values of those on its edge."""
    inside, edge_keys = [], []
    for event in events:
        for eta, phi in zip(event["Jet_eta"], event["Jet_phi"]):
            distances = [delta_r(eta, phi, e, p) for e, p in zip(event[f"{prefix}eta"], event[f"{prefix}phi"])]
            chosen = [i for i, d in enumerate(distances) if d < CONE]
            chosen.sort(key=lambda i: -event[sort_key][i])
            inside.append(chosen)
            edge_keys.append({event[sort_key][i] for i, d in enumerate(distances) if abs(d - CONE) < EDGE})
    return inside, edge_keys


def per_jet(events, name, indices):
    """Values of branch ``name`` for the per-jet object indices (jets in event-then-jet order)."""
    values, jet = [], 0
    for event in events:
        for _ in event["Jet_pt"]:
            values.append([event[name][i] for i in indices[jet]])
            jet += 1
    return values


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nanoaod")
    paths = {
        "linked": directory / "linked_ttbar.root",
        "unlinked": directory / "unlinked_qcd.root",
        "no_sv_index": directory / "no_sv_index_ttbar.root",
    }
    write_nanoaod(paths["linked"], N_EVENTS, seed=11, with_association=True, with_sv_index=True)
    write_nanoaod(paths["unlinked"], N_EVENTS, seed=12, with_association=False, with_sv_index=False)
    write_nanoaod(paths["no_sv_index"], N_EVENTS, seed=13, with_association=True, with_sv_index=False)
    return paths


def test_one_row_per_jet_in_event_then_jet_order(files, cfg, tmp_path):
    events = read_events(files["linked"])
    assert any(len(e["Jet_pt"]) == 0 for e in events), "the test file should contain events without jets"
    table = jet_table(files["linked"], cfg, tmp_path)

    for name in ("Jet_pt", "Jet_eta", "Jet_nConstituents", "Jet_hadronFlavour", "Jet_partonFlavour",
                 "Jet_btagDeepFlavB", "Jet_btagDeepFlavCvL", "Jet_btagDeepFlavCvB", "Jet_rawFactor"):
        expected = [value for event in events for value in event[name]]
        assert table[name].tolist() == expected, name
    assert table["PV_npvs"].tolist() == [event["PV_npvs"] for event in events for _ in event["Jet_pt"]]
    # the regression target's branch: the pt of each jet's generator jet, NaN without one
    np.testing.assert_array_equal(ak.to_numpy(table["GenJet_pt"]),
                                  np.array(matched_gen_values(events, "GenJet_pt"), dtype=np.float32))


def in_file(name, prefix):
    """The branch a file whose candidates are ``prefix`` holds for the config's ``name``."""
    return prefix + name.split("_", 1)[1]


def test_association_table_gives_each_jets_constituents(files, btv_cfg, tmp_path):
    events = read_events(files["linked"])
    constituents = [
        [c for j, c in zip(event["JetPFCands_jetIdx"], event["JetPFCands_pFCandsIdx"]) if j == jet]
        for event in events for jet in range(len(event["Jet_pt"]))
    ]
    table = jet_table(files["linked"], btv_cfg, tmp_path)

    # the config's spelling, PFCand_ or PFCands_, names the file's PFCands_ branches
    for name in ("PFCand_pt", "PFCand_pdgId", "PFCands_d0", "PFCands_dzErr", "PFCands_puppiWeight"):
        assert table[name].tolist() == per_jet(events, in_file(name, "PFCands_"), constituents), name
    # the association, not a cone: constituents scattered outside 0.4 still belong to their jet
    inside, _ = cone_reference(events, "PFCands_", "PFCands_pt")
    assert any(sorted(a) != sorted(b) for a, b in zip(constituents, inside))
    assert ak.num(table["PFCand_pt"]).tolist() == table["Jet_nConstituents"].tolist()


def test_sv_index_gives_the_vertices_the_jet_names(files, cfg, tmp_path):
    events = read_events(files["linked"])
    named = [[i for i in (event["Jet_svIdx1"][jet], event["Jet_svIdx2"][jet]) if i >= 0]
             for event in events for jet in range(len(event["Jet_pt"]))]
    assert any(not n for n in named) and any(len(n) == 2 for n in named)
    table = jet_table(files["linked"], cfg, tmp_path)

    for name in ("SV_pt", "SV_mass", "SV_dxySig", "SV_ntracks"):
        assert table[name].tolist() == per_jet(events, name, named), name


def assert_cone_matches(table, events, prefix, sort_key, names):
    """The table's ``sort_key`` and ``names`` (as the config names them) hold the objects of the
    file's collection ``prefix`` inside the cone."""
    inside, edge_keys = cone_reference(events, prefix, in_file(sort_key, prefix))
    n_edge = sum(len(keys) for keys in edge_keys)
    assert n_edge < 5, "too many objects on the cone edge to judge the matching"
    expected_keys = per_jet(events, in_file(sort_key, prefix), inside)
    for jet, (got, expected, edge) in enumerate(zip(table[sort_key].tolist(), expected_keys, edge_keys)):
        assert [v for v in got if v not in edge] == [v for v in expected if v not in edge], f"jet {jet}"
    if n_edge == 0:
        for name in names:
            assert table[name].tolist() == per_jet(events, in_file(name, prefix), inside), name


def test_dr_matching_picks_exactly_the_candidates_in_the_cone(files, btv_cfg, tmp_path):
    events = read_events(files["unlinked"])
    table = jet_table(files["unlinked"], btv_cfg, tmp_path)
    assert_cone_matches(table, events, "PFCands_", "PFCand_pt", ["PFCand_eta", "PFCands_dz", "PFCand_pdgId"])
    assert_cone_matches(table, events, "SV_", "SV_dxySig", ["SV_eta", "SV_mass"])

    n_candidates = sum(len(e["PFCands_pt"]) for e in events)
    n_matched = int(ak.sum(ak.num(table["PFCand_pt"])))
    assert 0 < n_matched < n_candidates  # pileup far from every jet is left out
    n_svs = ak.to_numpy(ak.num(table["SV_pt"]))
    assert (n_svs == 0).any() and (n_svs > 0).any()


def test_a_file_without_sv_index_falls_back_to_dr_matching(files, cfg, tmp_path):
    events = read_events(files["no_sv_index"])
    assert "Jet_svIdx1" not in events[0]
    table = jet_table(files["no_sv_index"], cfg, tmp_path)
    assert_cone_matches(table, events, "SV_", "SV_dxySig", ["SV_eta", "SV_mass"])
    # the PF candidates still come from the association table
    assert ak.num(table["PFCand_pt"]).tolist() == table["Jet_nConstituents"].tolist()


def test_chunks_give_the_same_table_as_whole_files(files, cfg, tmp_path):
    for path in files.values():
        whole = jet_table(path, cfg, tmp_path)
        chunked = jet_table(path, cfg, tmp_path, chunksize=7)
        assert same_table(chunked, whole), path.name


def test_the_processor_output_names_the_pieces_and_nothing_more(cfg, tmp_path):
    """coffea merges each chunk's output into all merged before it, pickling the whole again:
    the output carries the pieces' names, their info stays in their directories."""
    path = tmp_path / "few_qcd.root"
    write_nanoaod(path, 6, seed=12)
    proc = NanoAODProcessor(cfg, piece_directory=tmp_path / "pieces", file_processes={str(path): 0})
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=BaseSchema, chunksize=2)
    output = runner({"inputs": [str(path)]}, proc, treename=TREE)
    assert output == {"pieces": {p.name for p in (tmp_path / "pieces").iterdir()}}
    assert len(output["pieces"]) == 3


def test_chunks_without_jets_give_empty_tables_and_pieces(cfg, tmp_path):
    path = tmp_path / "few_qcd.root"
    write_nanoaod(path, 6, seed=12, with_association=False, with_sv_index=False)
    n_jets = [len(event["Jet_pt"]) for event in read_events(path)]
    assert 0 in n_jets
    one_event_chunks = jet_table(path, cfg, tmp_path, chunksize=1)
    assert same_table(one_event_chunks, jet_table(path, cfg, tmp_path))

    proc = NanoAODProcessor(cfg, piece_directory=tmp_path / "pieces", file_processes={str(path): 0})
    infos = run(path, proc, chunksize=1)["pieces"].values()
    assert sorted(info["counts"]["read"] for info in infos) == sorted(n_jets)
    empty = next(info for info in infos if info["counts"]["read"] == 0)
    cpf = cfg.candidate_groups["cpf"]
    assert empty["arrays"]["cpf"]["shape"] == [0, 25, len(cpf.features) + len(cpf.custom_features)]
    assert empty["arrays"]["extras"]["shape"] == [0, len(cfg.reference_branches())]


def test_required_branches_add_the_matching_axes_but_not_the_optional_links(cfg, tmp_path):
    required = NanoAODProcessor(cfg, tmp_path, {}).required_branches()
    assert {"Jet_eta", "Jet_phi", "SV_eta", "SV_phi", "PFCand_eta", "PFCand_phi", "SV_dxySig",
            "PFCand_pt", "PV_npvs", "Jet_btagDeepFlavB", "Jet_btagPNetQvG"} <= required
    assert not required & {"Jet_svIdx1", "Jet_svIdx2", "JetPFCands_jetIdx", "JetPFCands_pFCandsIdx"}
    # the regression target and its baseline: GenJet_pt through the index, the raw pt
    assert {"GenJet_pt", "Jet_genJetIdx", "Jet_rawFactor"} <= required
    assert processor_class("NanoAODProcessor") is NanoAODProcessor


def write_variant(tmp_path, name, **changes):
    raw = yaml.safe_load(load_config("nanoaod_ak4").path.read_text())
    raw.pop("attack")  # its rules name the shipped features, which variants change
    raw.update(changes)
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.filterwarnings("ignore:Performed attempt")  # coffea retries the failing chunk
def test_a_per_event_list_that_is_no_jet_collection_is_an_error(files, tmp_path):
    variant = load_config(write_variant(tmp_path, "listed", global_features=["Jet_pt", "Jet_eta", "JetPFCands_jetIdx"]))
    proc = NanoAODProcessor(variant, tmp_path / "pieces", {})
    with pytest.raises(Exception) as raised:  # coffea wraps the processor's error, naming the chunk
        run(files["linked"], _JetTables(proc))
    error = raised.value.__cause__
    assert isinstance(error, ProcessorError)
    assert "linked_ttbar.root" in str(error) and "'JetPFCands_jetIdx' is a list per event" in str(error)


def test_event_level_branches_are_carried_per_jet(files, tmp_path):
    variant = load_config(write_variant(tmp_path, "weights", global_features=["Jet_pt", "Jet_eta", "genWeight"]))
    events = read_events(files["linked"])
    table = jet_table(files["linked"], variant, tmp_path)
    assert table["genWeight"].tolist() == [e["genWeight"] for e in events for _ in e["Jet_pt"]]
    assert len({e["genWeight"] for e in events}) > 1


def test_only_the_groups_the_config_uses_are_attached(files, tmp_path):
    variant = load_config(write_variant(
        tmp_path, "no_candidates", global_features=["Jet_pt", "Jet_eta"], global_custom_features={},
        cpf_candidates=None, n_cpf_candidates=None, cpf_custom_features=None,
        vtx_features=None, n_vtx_candidates=None, vtx_custom_features=None, optional_groups=[]))
    proc = NanoAODProcessor(variant, tmp_path / "pieces", {})
    assert not any(b.startswith(("SV_", "PFCands_", "PFCand_")) for b in proc.required_branches())
    table = ak.concatenate(run(files["unlinked"], _JetTables(proc))["tables"])
    assert not any(f.startswith(("SV_", "PFCands_", "PFCand_")) for f in table.fields)


# Candidate features every layout with PF candidates has, spelled with either prefix.
COMMON_CPF = {"cpf_candidates": ["PFCand_pt", "PFCand_pdgId"],
              "cpf_custom_features": {"cand_deta": "PFCand_eta - Jet_eta"}}


def common_variant(tmp_path, prefix):
    """The shipped config with only candidate features central NanoAOD has, under ``prefix``."""
    spelled = yaml.safe_load(yaml.safe_dump(COMMON_CPF).replace("PFCand_", prefix))
    return load_config(write_variant(tmp_path, f"common_{prefix}", global_custom_features={}, **spelled))


def test_central_nanoaod_candidates_are_matched_in_the_cone(tmp_path):
    path = tmp_path / "v15_ttbar.root"
    write_nanoaod(path, N_EVENTS, seed=14, layout="v15")
    events = read_events(path)
    assert "PFCands_pt" not in events[0] and "JetPFCands_jetIdx" not in events[0]
    table = jet_table(path, common_variant(tmp_path, "PFCand_"), tmp_path)
    assert_cone_matches(table, events, "PFCand_", "PFCand_pt", ["PFCand_pdgId"])
    named = [[i for i in (event["Jet_svIdx1"][jet], event["Jet_svIdx2"][jet]) if i >= 0]
             for event in events for jet in range(len(event["Jet_pt"]))]
    assert table["SV_mass"].tolist() == per_jet(events, "SV_mass", named)


@pytest.mark.parametrize("prefix", ["PFCand_", "PFCands_"])
def test_either_prefix_names_the_files_candidates(tmp_path, prefix):
    # the same seed gives the same events in every layout; without the jet table a PFNano file
    # is matched in the cone like a central one, so both give the same table
    central, btv = tmp_path / "v15.root", tmp_path / "pfnano.root"
    write_nanoaod(central, N_EVENTS, seed=15, layout="v15")
    write_nanoaod(btv, N_EVENTS, seed=15, layout="pfnano", with_association=False)
    cfg = common_variant(tmp_path, prefix)
    from_central, from_btv = jet_table(central, cfg, tmp_path), jet_table(btv, cfg, tmp_path)
    assert f"{prefix}pt" in from_central.fields and same_table(from_central, from_btv)
    assert ak.sum(ak.num(from_central[f"{prefix}pt"])) > 0


def test_required_branches_follow_the_files_candidate_prefix(tmp_path):
    proc = NanoAODProcessor(common_variant(tmp_path, "PFCand_"), tmp_path, {})
    central = {"Jet_pt", "PFCand_pt", "PFCand_eta"}
    btv = {"Jet_pt", "PFCands_pt", "PFCands_eta", "PFCands_d0"}
    assert {"PFCand_pt", "PFCand_pdgId", "PFCand_eta", "PFCand_phi"} <= proc.required_branches(central)
    for available in (btv, btv | central):  # a file with both: BTV's, with its tracks and jet table
        required = proc.required_branches(available)
        assert {"PFCands_pt", "PFCands_pdgId", "PFCands_eta", "PFCands_phi"} <= required
        assert not any(b.startswith("PFCand_") for b in required)
    # a file without candidates is checked for the names the config writes
    assert "PFCand_pdgId" in proc.required_branches({"Jet_pt"}) and "PFCand_pdgId" in proc.required_branches()


def flavour_label(hadron, parton):
    if hadron == 5:
        return 0
    if hadron == 4:
        return 1
    if hadron == 0 and abs(parton) in (1, 2, 3):
        return 2
    if hadron == 0 and parton == 21:
        return 3
    return -1


def test_process_writes_a_piece_with_the_documented_shapes(files, btv_cfg, tmp_path):
    cfg, path = btv_cfg, files["linked"]
    proc = NanoAODProcessor(cfg, piece_directory=tmp_path, file_processes={str(path): 0})
    output = run(path, proc)
    (name, info), = output["pieces"].items()
    arrays = {key: pieces.load_array(tmp_path / name, key) for key in info["arrays"]}

    events = read_events(path)
    jets = [(event, j) for event in events for j in range(len(event["Jet_pt"]))]
    kept = [(e, j) for e, j in jets if 30 <= e["Jet_pt"][j] < 2000 and -2.5 <= e["Jet_eta"][j] < 2.5
            and flavour_label(e["Jet_hadronFlavour"][j], e["Jet_partonFlavour"][j]) >= 0]
    n = len(kept)
    assert n > 20 and info["counts"]["non_finite"] == 0 and info["n_jets"] == n

    n_global = len(cfg.global_features) + len(cfg.global_custom_features)
    cpf, vtx = cfg.candidate_groups["cpf"], cfg.candidate_groups["vtx"]
    n_cpf_features = len(cpf.features) + len(cpf.custom_features)
    n_vtx_features = len(vtx.features) + len(vtx.custom_features)
    assert arrays["global"].shape == (n, n_global) and arrays["global"].dtype == np.float32
    assert arrays["cpf"].shape == (n, 25, n_cpf_features) and arrays["mask_cpf"].shape == (n, 25)
    assert arrays["vtx"].shape == (n, 4, n_vtx_features) and arrays["mask_vtx"].shape == (n, 4)
    assert arrays["mask_cpf"].dtype == bool
    assert arrays["truth"].shape == (n,) and arrays["kinematics"].shape == (n, 2)
    assert arrays["extras"].shape == (n, len(cfg.reference_branches()))
    assert (arrays["process"] == 0).all()
    assert arrays["target"].shape == arrays["target_baseline"].shape == (n, 1)
    assert arrays["target"].dtype == arrays["target_baseline"].dtype == np.float32
    np.testing.assert_array_equal(arrays["target"][:, 0],
                                  np.array([e["GenJet_pt"][e["Jet_genJetIdx"][j]]
                                            if 0 <= e["Jet_genJetIdx"][j] < len(e["GenJet_pt"]) else math.nan
                                            for e, j in kept], dtype=np.float32))
    np.testing.assert_allclose(arrays["target_baseline"][:, 0],
                               [e["Jet_pt"][j] * (1 - e["Jet_rawFactor"][j]) for e, j in kept], rtol=1e-6)
    valid = int(np.isfinite(arrays["target"]).sum())
    assert info["valid_targets"] == {"gen_pt": valid} and 0 < valid < n  # unmatched jets are kept

    np.testing.assert_array_equal(arrays["truth"],
                                  [flavour_label(e["Jet_hadronFlavour"][j], e["Jet_partonFlavour"][j])
                                   for e, j in kept])
    np.testing.assert_allclose(arrays["kinematics"], [[e["Jet_pt"][j], e["Jet_eta"][j]] for e, j in kept])
    np.testing.assert_allclose(arrays["extras"], [[e[b][j] for b in cfg.reference_branches()] for e, j in kept])
    globals_ = [*cfg.global_features, *cfg.global_custom_features]
    np.testing.assert_array_equal(arrays["global"][:, globals_.index("PV_npvs")], [e["PV_npvs"] for e, _ in kept])
    np.testing.assert_array_equal(arrays["mask_vtx"].sum(axis=1),
                                  [sum(i >= 0 for i in (e["Jet_svIdx1"][j], e["Jet_svIdx2"][j])) for e, j in kept])
    np.testing.assert_array_equal(arrays["mask_cpf"].sum(axis=1),
                                  [min(e["Jet_nConstituents"][j], 25) for e, j in kept])

    # the first candidate slot holds the jet's first constituent in the association table
    cpf_names = [*cpf.features, *cpf.custom_features]
    first_ptrel = []
    for e, j in kept:
        first = e["JetPFCands_pFCandsIdx"][e["JetPFCands_jetIdx"].index(j)]
        first_ptrel.append(e["PFCands_pt"][first] / e["Jet_pt"][j])
    np.testing.assert_allclose(arrays["cpf"][:, 0, cpf_names.index("cand_ptrel")], first_ptrel, rtol=1e-5)
    # candidates without a track get significance 0, not d0 / -1
    neutral = arrays["cpf"][..., cpf_names.index("cand_charge")] == 0
    d0sig = arrays["cpf"][..., cpf_names.index("cand_d0sig")]
    assert (neutral & arrays["mask_cpf"]).any()
    assert (d0sig[neutral] == 0).all()


def test_reference_tagger_with_an_unknown_discriminator_is_an_error(tmp_path):
    path = write_variant(tmp_path, "bad_tagger",
                         reference_taggers={"DeepJet": {"BvsAll": "Jet_btagDeepFlavB", "BvsX": "Jet_btagDeepFlavCvB"}})
    with pytest.raises(ConfigError, match=r"reference_taggers\.DeepJet\.BvsX.*unknown discriminator 'BvsX'"):
        load_config(path)


def test_shipped_config_loads_with_the_references_of_every_layout(cfg):
    assert cfg.processor == "NanoAODProcessor" and cfg.treename == "Events"
    assert cfg.reference_branches() == ("Jet_btagDeepFlavB", "Jet_btagDeepFlavCvL", "Jet_btagDeepFlavCvB",
                                        "Jet_btagPNetB", "Jet_btagPNetCvL", "Jet_btagPNetCvB", "Jet_btagPNetQvG")
    assert {"BvsAll", "CvsL", "CvsB", "QvsG"} <= set(cfg.discriminators)
    assert cfg.optional_groups == ("cpf", "vtx")
    assert cfg.truth_labels == ("b", "c", "uds", "g") and cfg.reference_flavour == "b"
    (name, target), = cfg.regression_targets.items()
    assert name == "gen_pt" and target.branch == "GenJet_pt" and target.baseline == "Jet_pt * (1 - Jet_rawFactor)"
    assert target.loss == "quantile" and target.quantiles == (0.16, 0.5, 0.84)


# -- generator jets, linked to each jet through Jet_genJetIdx --------------------------------

GEN_FEATURES = ["Jet_pt", "Jet_eta", "GenJet_pt", "GenJet_eta", "GenJet_partonFlavour"]


@pytest.fixture(scope="module")
def gen_file(tmp_path_factory):
    # seed 16: matched jets, jets with index -1 and past nGenJet, events without jets and
    # events with jets but no stored GenJet
    path = tmp_path_factory.mktemp("genjets") / "genjets_ttbar.root"
    write_nanoaod(path, N_EVENTS, seed=16, with_gen_jets=True)
    return path


def gen_variant(tmp_path, **changes):
    return load_config(write_variant(tmp_path, "genjets", global_features=GEN_FEATURES, **changes))


def matched_gen_values(events, name):
    """Per jet, by a loop: ``name`` of the GenJet its Jet_genJetIdx names, NaN where it names none."""
    values = []
    for event in events:
        for index in event["Jet_genJetIdx"]:
            values.append(event[name][index] if 0 <= index < len(event[name]) else math.nan)
    return values


def test_genjet_fields_are_those_of_each_jets_generator_jet(gen_file, tmp_path):
    events = read_events(gen_file)
    cases = [(index, len(e["GenJet_pt"])) for e in events for index in e["Jet_genJetIdx"]]
    assert any(0 <= i < n for i, n in cases) and any(i == -1 for i, _ in cases) and any(i >= n for i, n in cases)
    assert any(not e["Jet_pt"] for e in events)
    assert any(e["Jet_pt"] and not e["GenJet_pt"] for e in events), "an event with jets but no stored GenJet"

    table = jet_table(gen_file, gen_variant(tmp_path), tmp_path)
    for name in ("GenJet_pt", "GenJet_eta", "GenJet_partonFlavour"):
        got = ak.to_numpy(table[name])
        assert got.dtype == np.float32, name  # integer fields too: NaN marks jets without a GenJet
        np.testing.assert_array_equal(got, np.array(matched_gen_values(events, name), dtype=np.float32), name)
    unmatched = np.array([not 0 <= i < n for i, n in cases])
    assert np.isnan(ak.to_numpy(table["GenJet_pt"])[unmatched]).all()
    assert np.isfinite(ak.to_numpy(table["GenJet_pt"])[~unmatched]).all()
    for chunksize in (1, 7):  # chunks of one event: with no jets, with jets and no GenJet
        np.testing.assert_array_equal(ak.to_numpy(jet_table(gen_file, gen_variant(tmp_path), tmp_path, chunksize)
                                                  ["GenJet_pt"]), ak.to_numpy(table["GenJet_pt"]))


def test_genjet_fields_require_the_index_and_their_own_branches(tmp_path):
    required = NanoAODProcessor(gen_variant(tmp_path), tmp_path, {}).required_branches()
    assert {"Jet_genJetIdx", "GenJet_pt", "GenJet_eta", "GenJet_partonFlavour"} <= required
    assert "GenJet_phi" not in required
    without = load_config(write_variant(tmp_path, "no_targets", regression_targets={}))
    assert "Jet_genJetIdx" not in NanoAODProcessor(without, tmp_path, {}).required_branches()


def test_jets_without_a_generator_jet_are_dropped_as_non_finite_global_features(gen_file, tmp_path):
    # from 20 GeV, where some jets' generator jets fall below the GenJet threshold
    cfg = gen_variant(tmp_path, bins_pt=[20, 30, 50, 100, 2000])
    proc = NanoAODProcessor(cfg, piece_directory=tmp_path / "pieces", file_processes={str(gen_file): 0})
    (info,) = run(gen_file, proc)["pieces"].values()
    events = read_events(gen_file)
    selected = [(e, j) for e in events for j in range(len(e["Jet_pt"]))
                if 20 <= e["Jet_pt"][j] < 2000 and -2.5 <= e["Jet_eta"][j] < 2.5
                and flavour_label(e["Jet_hadronFlavour"][j], e["Jet_partonFlavour"][j]) >= 0]
    unmatched = sum(not 0 <= e["Jet_genJetIdx"][j] < len(e["GenJet_pt"]) for e, j in selected)
    assert unmatched > 0 and info["counts"]["non_finite"] == unmatched
    assert info["n_jets"] == len(selected) - unmatched


@pytest.mark.filterwarnings("ignore:Performed attempt")  # coffea retries the failing chunk
def test_a_file_without_jet_genjetidx_is_refused_naming_it(tmp_path):
    from bhive import construction, inputs

    path = tmp_path / "data_ttbar.root"
    write_nanoaod(path, 20, seed=16, with_gen_jets=True, with_gen_jet_index=False)
    cfg = gen_variant(tmp_path)
    proc = NanoAODProcessor(cfg, tmp_path / "pieces", {})
    # the checks before processing name the branch, which the config does not name itself
    with pytest.raises(inputs.InputError, match=r"data_ttbar\.root', tree 'Events': branch\(es\) Jet_genJetIdx "
                                                r"missing; the config reads them .* or the processor needs them to "
                                                r"read branches the config names") as refused:
        construction.check_inputs(cfg, [str(path)], proc)
    assert "remove what needs them from the config or use ntuples that have them" in str(refused.value)
    # and the processor, run without those checks, says what the branch is
    with pytest.raises(Exception) as raised:  # coffea wraps the processor's error, naming the chunk
        run(path, _JetTables(proc))
    error = raised.value.__cause__
    assert isinstance(error, ProcessorError)
    assert "data_ttbar.root" in str(error)
    assert "GenJet_eta, GenJet_partonFlavour, GenJet_pt need 'Jet_genJetIdx'" in str(error)
    assert "linking each jet to its matched GenJet" in str(error) and "only simulation" in str(error)
