"""The shipped nanoaod_ak4 config, unchanged but for its samples, on each NanoAOD layout.

Each layout's files go through dataset construction, and every jet of the dataset is compared
with what plain numpy over the events read back with uproot gives: selection, truth label,
global features, the candidates of each group with every feature the config computes from
them, the reference-tagger scores and the regression target (the GenJet pt through
Jet_genJetIdx, NaN without one) with its baseline (the raw pt). tests/test_nanoaod.py checks the processor's matching
in detail; here the point is the whole config on the branch sets CMS writes.
"""

import logging
import math

import numpy as np
import pytest
import uproot
import yaml

from bhive import inputs
from bhive.config import CONFIG_DIR, load_config
from tests.nanoaod_files import TREE, write_nanoaod
from tests.test_optional_groups import build_split

N_EVENTS = 150
CONE = 0.4
BINS_PT, BINS_ETA = (30, 2000), (-2.5, 2.5)
LABELS = {"b": 0, "c": 1, "uds": 2, "g": 3}
# PF writes pdgId with the particle's sign: +211 is a pi+, +11 and +13 are an e- and a mu-
CHARGE = {211: 1, -211: -1, 11: -1, -11: 1, 13: -1, -13: 1}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Per layout: {split: files}, ttbar and qcd named as the shipped `processes` expect."""
    directory = tmp_path_factory.mktemp("layouts")
    layouts = {}
    for index, layout in enumerate(("pfnano", "v15", "v12")):
        files = {"train": [directory / f"ttbar_{layout}_train.root", directory / f"qcd_{layout}_train.root"],
                 "test": [directory / f"ttbar_{layout}_test.root"]}
        for seed, path in enumerate([*files["train"], *files["test"]], start=30 + 3 * index):
            write_nanoaod(path, N_EVENTS, seed=seed, layout=layout)
        layouts[layout] = files
    # a v12 skim: the test file has no SV_*
    skim = directory / "ttbar_v12_test_skim.root"
    write_nanoaod(skim, N_EVENTS, seed=50, layout="v12", with_sv=False)
    layouts["v12_skim"] = {"train": layouts["v12"]["train"], "test": [skim]}
    return layouts


def shipped(tmp_path, files, name="nanoaod_ak4", **changes):
    """configs/nanoaod_ak4.yml with `samples` pointed at ``files`` and ``changes``."""
    raw = yaml.safe_load((CONFIG_DIR / "nanoaod_ak4.yml").read_text())
    raw["samples"] = {split: [str(path) for path in paths] for split, paths in files.items()}
    raw.update(changes)
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


# -- the expected dataset, by hand ----------------------------------------------------------

def label(hadron, parton):
    if hadron in (4, 5):
        return LABELS["b" if hadron == 5 else "c"]
    if hadron == 0 and abs(parton) in (1, 2, 3):
        return LABELS["uds"]
    return LABELS["g"] if hadron == 0 and parton == 21 else -1


def delta_phi(a, b):
    return math.remainder(a - b, 2 * math.pi)


def candidate_row(event, prefix, index, jet_pt, jet_eta, jet_phi):
    """Every cpf feature of nanoaod_ak4 for one candidate, from the file's branches."""
    pt, eta, phi, pdg = (float(event[f"{prefix}{field}"][index]) for field in ("pt", "eta", "phi", "pdgId"))
    pdg = int(pdg)
    d_eta, d_phi = eta - jet_eta, delta_phi(phi, jet_phi)
    return {"PFCand_pt": pt, "PFCand_mass": event[f"{prefix}mass"][index], "cand_log_pt": math.log(pt),
            "cand_ptrel": pt / jet_pt, "cand_log_ptrel": math.log(pt / jet_pt), "cand_deta": d_eta,
            "cand_dphi": d_phi, "cand_deltaR": math.hypot(d_eta, d_phi), "cand_charge": CHARGE.get(pdg, 0),
            "cand_is_charged_hadron": abs(pdg) == 211, "cand_is_neutral_hadron": pdg == 130,
            "cand_is_photon": pdg == 22, "cand_is_electron": abs(pdg) == 11, "cand_is_muon": abs(pdg) == 13}


def vertex_row(event, index, jet_pt, jet_eta, jet_phi):
    """Every vtx feature of nanoaod_ak4 for one secondary vertex."""
    fields = ("mass", "ntracks", "chi2", "ndof", "dxy", "dxySig", "dlen", "dlenSig", "pAngle")
    row = {f"SV_{field}": event[f"SV_{field}"][index] for field in fields}
    d_eta, d_phi = event["SV_eta"][index] - jet_eta, delta_phi(event["SV_phi"][index], jet_phi)
    return {**row, "sv_ptrel": event["SV_pt"][index] / jet_pt, "sv_deltaR": math.hypot(d_eta, d_phi)}


def jet_candidates(event, jet, prefix):
    """The file's candidates of one jet: the JetPFCands table's where it has one, else the cone's."""
    if "JetPFCands_jetIdx" in event:
        return [int(c) for j, c in zip(event["JetPFCands_jetIdx"], event["JetPFCands_pFCandsIdx"]) if j == jet]
    distances = [math.hypot(eta - event["Jet_eta"][jet], delta_phi(phi, event["Jet_phi"][jet]))
                 for eta, phi in zip(event[f"{prefix}eta"], event[f"{prefix}phi"])]
    assert all(abs(d - CONE) > 1e-5 for d in distances), "a candidate on the cone edge; choose another seed"
    inside = [i for i, d in enumerate(distances) if d < CONE]
    return sorted(inside, key=lambda i: -event[f"{prefix}pt"][i])  # stable: file order between equal pts


def expected_jets(paths, cfg, process_of):
    """(pt, eta) -> the dataset row of every jet the config keeps, computed event by event."""
    references = cfg.reference_branches()
    jets = {}
    for path in paths:
        columns = uproot.open(path)[TREE].arrays(library="np")
        prefix = next((p for p in ("PFCands_", "PFCand_") if f"{p}pt" in columns), None)
        for number in range(len(columns["Jet_pt"])):
            event = {name: values[number] for name, values in columns.items()}
            for jet, (pt, eta, phi) in enumerate(zip(event["Jet_pt"], event["Jet_eta"], event["Jet_phi"])):
                truth = label(event["Jet_hadronFlavour"][jet], event["Jet_partonFlavour"][jet])
                if not (BINS_PT[0] <= pt < BINS_PT[1] and BINS_ETA[0] <= eta < BINS_ETA[1]) or truth < 0:
                    continue
                gen = int(event["Jet_genJetIdx"][jet])  # -1 or past nGenJet: no stored generator jet
                row = {"truth": truth, "process": process_of(path),
                       "global": [pt, eta, event["Jet_mass"][jet], event["Jet_nConstituents"][jet], event["PV_npvs"]],
                       "extras": [event[branch][jet] for branch in references], "mc_weight": event["genWeight"],
                       "gen_index": gen, "n_gen": int(event["nGenJet"]),
                       "target": [event["GenJet_pt"][gen] if 0 <= gen < event["nGenJet"] else math.nan],
                       "target_baseline": [float(pt) * (1 - float(event["Jet_rawFactor"][jet]))]}
                if prefix is not None:
                    row["cpf"] = [candidate_row(event, prefix, c, pt, eta, phi)
                                  for c in jet_candidates(event, jet, prefix)]
                if "SV_pt" in event:
                    named = [int(event[f"Jet_svIdx{k}"][jet]) for k in (1, 2)]
                    row["vtx"] = [vertex_row(event, i, pt, eta, phi) for i in named if 0 <= i < len(event["SV_pt"])]
                jets[(float(pt), float(eta))] = row
    return jets


def assert_dataset_is(meta, arrays, expected, groups):
    assert set(meta["features"]) == {"global", *groups}
    assert meta["n_jets"] == len(expected) > 50
    rows = [expected[(float(pt), float(eta))] for pt, eta in arrays["kinematics"]]
    np.testing.assert_array_equal(arrays["truth"], [row["truth"] for row in rows])
    np.testing.assert_array_equal(arrays["process"], [row["process"] for row in rows])
    np.testing.assert_allclose(arrays["global"], [row["global"] for row in rows], rtol=1e-6)
    np.testing.assert_allclose(arrays["extras"], [row["extras"] for row in rows], rtol=1e-6)
    # the event's generator weight on each of its jets, summed per label and bin for the reweighting
    np.testing.assert_allclose(arrays["mc_weight"], [row["mc_weight"] for row in rows], rtol=1e-6)
    assert (arrays["mc_weight"] < 0).any() and meta["event_weight"] == "genWeight"
    # gen_pt: the GenJet pt of each jet, NaN for jets without one (kept); the raw pt as baseline
    assert meta["targets"] == ["gen_pt"] and arrays["target"].shape == arrays["target_baseline"].shape == (len(rows), 1)
    np.testing.assert_array_equal(arrays["target"], np.array([row["target"] for row in rows], dtype=np.float32))
    np.testing.assert_allclose(arrays["target_baseline"], [row["target_baseline"] for row in rows], rtol=1e-6)
    unmatched = np.isnan(arrays["target"][:, 0])
    assert 0 < unmatched.sum() < len(rows) / 2 and meta["valid_targets"] == {"gen_pt": int((~unmatched).sum())}
    assert ((arrays["target_baseline"] < arrays["kinematics"][:, :1]) & (arrays["target_baseline"] > 0)).all()
    for index in range(len(meta["truth_labels"])):
        chosen = arrays["truth"] == index
        by_hand, _, _ = np.histogram2d(arrays["kinematics"][chosen, 0], arrays["kinematics"][chosen, 1],
                                       bins=[meta["bins_pt"], meta["bins_eta"]], weights=arrays["mc_weight"][chosen])
        np.testing.assert_allclose(meta["histograms"][index], by_hand, rtol=1e-5)
    for group in groups:
        names, size = meta["features"][group], meta["n_candidates"][group]
        assert set(names) == set(next(row[group][0] for row in rows if row[group]))  # every feature is checked
        want = np.zeros((len(rows), size, len(names)))
        for i, row in enumerate(rows):
            for slot, candidate in enumerate(row[group][:size]):
                want[i, slot] = [candidate[name] for name in names]
        np.testing.assert_array_equal(arrays[f"mask_{group}"].sum(axis=1), [min(len(r[group]), size) for r in rows])
        np.testing.assert_allclose(arrays[group], want, rtol=1e-5, atol=1e-5, err_msg=group)


# -- each layout ----------------------------------------------------------------------------

@pytest.mark.parametrize(("layout", "groups"), [("pfnano", ("cpf", "vtx")), ("v15", ("cpf", "vtx")),
                                                ("v12", ("vtx",))])
def test_the_shipped_config_on_each_layout(samples, tmp_path, caplog, layout, groups):
    cfg = shipped(tmp_path, samples[layout])
    processes = [p.name for p in cfg.processes]
    with caplog.at_level(logging.WARNING, logger="bhive.optional_groups"):
        for split in ("train", "test"):
            meta, arrays = build_split(cfg, split, tmp_path / "work")
            expected = expected_jets(samples[layout][split], cfg,
                                     lambda path: processes.index("ttbar" if "ttbar" in path.name else "qcd"))
            assert_dataset_is(meta, arrays, expected, groups)
            assert meta["dropped_groups"] == [g for g in ("cpf", "vtx") if g not in groups]
    warnings = [r.message for r in caplog.records if r.name == "bhive.optional_groups"]
    if layout == "v12":  # no PF candidates at all: left out of both splits, said once
        assert len(warnings) == 1 and ("cpf (PFCand_eta, PFCand_mass, PFCand_pdgId, PFCand_phi, PFCand_pt missing "
                                       "from 3 of 3 input(s)") in warnings[0]
    else:
        assert not warnings


def test_btv_pfnano_and_central_nanoaod_give_datasets_with_the_same_features(samples, tmp_path):
    metas = {layout: build_split(shipped(tmp_path, samples[layout], name=layout), "test", tmp_path / layout)[0]
             for layout in ("pfnano", "v15")}
    assert metas["pfnano"]["features"] == metas["v15"]["features"]
    assert metas["pfnano"]["n_candidates"] == metas["v15"]["n_candidates"] == {"cpf": 25, "vtx": 4}


# -- a collection some file lacks -------------------------------------------------------------

def test_a_skim_without_svs_loses_vtx_in_both_splits(samples, tmp_path, caplog):
    cfg = shipped(tmp_path, samples["v12_skim"])
    with caplog.at_level(logging.WARNING, logger="bhive.optional_groups"):
        metas = [build_split(cfg, split, tmp_path / "work")[0] for split in ("train", "test")]
    for meta in metas:  # the training files have SV_*, but the test file does not
        assert set(meta["features"]) == {"global"} and meta["dropped_groups"] == ["cpf", "vtx"]
    (warning,) = [r.message for r in caplog.records if r.name == "bhive.optional_groups"]
    assert "vtx (SV_chi2, SV_dlen, SV_dlenSig, SV_dxy, SV_dxySig, SV_eta, ... missing from 1 of 3 input(s)" in warning


def test_without_optional_groups_a_missing_collection_is_an_error(samples, tmp_path):
    strict = shipped(tmp_path, samples["v12"], optional_groups=[])
    with pytest.raises(inputs.InputError, match=r"ttbar_v12_train\.root', tree 'Events': branch\(es\) PFCand_eta, "
                                                r"PFCand_mass, PFCand_pdgId, PFCand_phi, PFCand_pt missing"):
        build_split(strict, "train", tmp_path / "strict")
    # vtx not optional: the skimmed test file stops the run, the training files do not
    cfg = shipped(tmp_path, samples["v12_skim"], name="only_cpf", optional_groups=["cpf"])
    meta, _ = build_split(cfg, "train", tmp_path / "only_cpf")
    assert set(meta["features"]) == {"global", "vtx"}
    with pytest.raises(inputs.InputError, match=r"ttbar_v12_test_skim\.root', tree 'Events': branch\(es\) SV_chi2, "):
        build_split(cfg, "test", tmp_path / "only_cpf")


# -- reference taggers ------------------------------------------------------------------------

UPART = {"BvsAll": "Jet_btagUParTAK4B", "CvsL": "Jet_btagUParTAK4CvL", "CvsB": "Jet_btagUParTAK4CvB",
         "QvsG": "Jet_btagUParTAK4QvG"}
ROBUST_PART = {"BvsAll": "Jet_btagRobustParTAK4B", "CvsL": "Jet_btagRobustParTAK4CvL",
               "CvsB": "Jet_btagRobustParTAK4CvB"}


@pytest.mark.parametrize(("layout", "tagger", "scores"), [("v15", "UParT", UPART), ("v12", "RobustParT", ROBUST_PART)])
def test_each_layouts_own_taggers_are_references(samples, tmp_path, layout, tagger, scores):
    cfg = shipped(tmp_path, samples[layout], reference_taggers={
        **yaml.safe_load((CONFIG_DIR / "nanoaod_ak4.yml").read_text())["reference_taggers"], tagger: scores})
    meta, arrays = build_split(cfg, "test", tmp_path / "work")
    assert meta["extras"][-len(scores):] == [f"{tagger}/{name}" for name in scores]
    expected = expected_jets(samples[layout]["test"], cfg, lambda path: 0)
    np.testing.assert_array_equal(arrays["extras"][:, -len(scores):],
                                  [expected[(float(pt), float(eta))]["extras"][-len(scores):]
                                   for pt, eta in arrays["kinematics"]])


def test_a_tagger_the_files_do_not_store_is_an_error(samples, tmp_path):
    cfg = shipped(tmp_path, samples["v12"], reference_taggers={"UParT": UPART})
    with pytest.raises(inputs.InputError, match=r"ttbar_v12_train\.root', tree 'Events': reference tagger branch\(es\) "
                                                r"Jet_btagUParTAK4B, Jet_btagUParTAK4CvB, Jet_btagUParTAK4CvL, "
                                                r"Jet_btagUParTAK4QvG missing; fix `reference_taggers`"):
        build_split(cfg, "train", tmp_path / "work")
