"""The simulated sample: files, determinism, labels and physics realism.

Generation is real (Pythia 8 + fastjet) but small: a few thousand jets per process.
"""

import dataclasses

import awkward as ak
import numpy as np
import pytest
import uproot
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split

from bhive.config import load_config
from bhive.simulation import hadrons
from bhive.simulation.generator import EventSource
from bhive.simulation.jets import cluster_jets
from bhive.simulation.ntuple import TRUTH_BRANCHES, branch_names
from bhive.simulation.production import generate_file, generate_files, plan_files

REALISM_JETS = 8000  # per process


def small_plans(cfg, split, seed, n_jets):
    """One file per process with ``n_jets`` jets."""
    plans = {}
    for plan in plan_files(cfg.simulate, split, seed):
        plans.setdefault(plan.process, dataclasses.replace(plan, n_jets=n_jets))
    return list(plans.values())


@pytest.fixture(scope="module")
def hlt():
    return load_config("hlt_ak4")


@pytest.fixture(scope="module")
def realism_sample(hlt, tmp_path_factory):
    directory = tmp_path_factory.mktemp("realism")
    plans = small_plans(hlt, "train", 11, REALISM_JETS)
    generate_files(plans, hlt.simulate, hlt.treename, directory, workers=2)
    arrays = [uproot.open(directory / p.filename)[hlt.treename].arrays() for p in plans]
    return ak.concatenate(arrays)


# -- files -------------------------------------------------------------------------------

@pytest.mark.parametrize("config_name", ["hlt_ak4", "offline_ak4"])
def test_file_is_a_ttree_with_every_branch_the_config_reads(config_name, tmp_path):
    cfg = load_config(config_name)
    plan = small_plans(cfg, "train", 1, 200)[0]
    entry = generate_file(plan, cfg.simulate, cfg.treename, tmp_path / plan.filename)
    tree = uproot.open(tmp_path / plan.filename)[cfg.treename]
    assert isinstance(tree, uproot.TTree)
    assert tree.num_entries == 200 == entry["n_jets"]
    assert not cfg.branches() - set(tree.keys())
    # what the config loader checks expressions against is what the file holds
    assert set(tree.keys()) == branch_names(cfg.simulate.branch_style)
    assert set(TRUTH_BRANCHES) <= set(tree.keys())
    assert not list(tmp_path.glob("*.tmp"))


def test_same_seed_same_content_other_seed_other_content(hlt, tmp_path):
    plan = small_plans(hlt, "test", 7, 150)[1]
    first = generate_file(plan, hlt.simulate, hlt.treename, tmp_path / "a.root")
    second = generate_file(plan, hlt.simulate, hlt.treename, tmp_path / "b.root")
    assert first["content_sha256"] == second["content_sha256"]
    a = uproot.open(tmp_path / "a.root")[hlt.treename].arrays()
    b = uproot.open(tmp_path / "b.root")[hlt.treename].arrays()
    assert ak.all(a.pfcand_trackSip2dSig == b.pfcand_trackSip2dSig)
    other = dataclasses.replace(small_plans(hlt, "test", 8, 150)[1])
    assert generate_file(other, hlt.simulate, hlt.treename, tmp_path / "c.root")["content_sha256"] != first["content_sha256"]


def test_file_seeds_differ_by_split_process_and_index(hlt):
    seeds = [(p.pythia_seed, p.detector_seed) for s in ("train", "test") for p in plan_files(hlt.simulate, s, 42)]
    assert len(set(seeds)) == len(seeds)
    assert plan_files(hlt.simulate, "train", 42) == plan_files(hlt.simulate, "train", 42)
    assert sum(p.n_jets for p in plan_files(hlt.simulate, "train", 42)) == sum(hlt.simulate.jets("train").values())


# -- labels ------------------------------------------------------------------------------

def weakly_decaying_b_hadrons(record):
    """Independent, loop-based selection of B hadrons that do not decay into a B hadron."""
    ids = np.asarray(record.id)
    d1, d2 = np.asarray(record.daughter1), np.asarray(record.daughter2)
    selected = []
    for i, pdg in enumerate(ids):
        if hadrons.heaviest_quark(np.array([pdg]))[0] != 5 or d1[i] <= 0:
            continue
        daughters = range(d1[i], max(d1[i], d2[i]) + 1)
        if not any(hadrons.heaviest_quark(np.array([ids[d]]))[0] == 5 for d in daughters):
            selected.append(i)
    return selected


def test_ghost_association_agrees_with_delta_r_matching():
    process = dataclasses.replace(load_config("hlt_ak4").simulate.processes["ttbar"])
    source = EventSource(process, 13600.0, seed=5)
    events = next(source.batches(60))
    table = cluster_jets(events, source.charges, 20.0, 2.5)
    jets = table.jets
    close = np.zeros(len(table), dtype=bool)
    near = np.zeros(len(table), dtype=bool)
    for event in np.unique(jets["event"]):
        record = events.prt[int(event)]
        for i in weakly_decaying_b_hadrons(record):
            p = record.p[i]
            eta, phi = np.arcsinh(p.pz / np.hypot(p.px, p.py)), np.arctan2(p.py, p.px)
            in_event = jets["event"] == event
            dphi = (jets["phi"] - phi + np.pi) % (2 * np.pi) - np.pi
            dr = np.hypot(jets["eta"] - eta, dphi)
            close |= in_event & (dr < 0.3)
            near |= in_event & (dr < 0.6)
    is_b = jets["hadron_flavour"] == 5
    assert is_b.sum() > 50
    assert np.all(near[is_b]), "a b-labelled jet has no weakly-decaying B hadron nearby"
    assert np.mean(is_b[close]) > 0.95, "jets with a B hadron at dR < 0.3 must mostly be b jets"


def test_flavour_composition(realism_sample):
    a = realism_sample
    flags = {k: a[k].to_numpy() for k in TRUTH_BRANCHES}
    exclusive = flags["isB"] + flags["isC"] + flags["isUDS"] + flags["isG"] + flags["isUndefined"]
    assert np.all(exclusive == 1)
    assert np.all(flags["isBB"] <= flags["isB"]) and np.all(flags["isLeptonicB"] <= flags["isB"])
    fractions = {k: flags[k].mean() for k in ("isB", "isC", "isUDS", "isG", "isUndefined")}
    assert fractions["isB"] > 0.1 and fractions["isC"] > 0.05 and fractions["isG"] > 0.1 and fractions["isUDS"] > 0.1
    assert fractions["isUndefined"] < 0.05
    # about a fifth of weakly-decaying B hadrons decay semileptonically to e or mu (plus tau)
    leptonic_share = flags["isLeptonicB"].sum() / flags["isB"].sum()
    assert 0.15 < leptonic_share < 0.45
    # heavy-flavour content follows hadron flavour
    np.testing.assert_array_equal(flags["isB"], flags["hadronFlavour"] == 5)


# -- realism -----------------------------------------------------------------------------

def _top(values, k):
    ordered = ak.sort(values, axis=1, ascending=False)
    padded = ak.fill_none(ak.pad_none(ordered, k, clip=True), -10.0)
    return np.stack([ak.to_numpy(padded[:, i]) for i in range(k)], axis=1)


def _summaries(a):
    """Impact-parameter and secondary-vertex summaries per jet (no kinematics)."""
    charged = a.pfcand_charge != 0
    sig2d, sig3d = a.pfcand_trackSip2dSig[charged], a.pfcand_trackSip3dSig[charged]

    def leading_sv(branch):
        return ak.to_numpy(ak.fill_none(ak.firsts(a[branch]), -1.0))

    return np.column_stack([
        _top(sig2d, 4), _top(sig3d, 4), ak.to_numpy(ak.sum(sig2d > 3, axis=1)), a.nsv.to_numpy(),
        leading_sv("sv_mass"), leading_sv("sv_dxysig"), leading_sv("sv_ntracks"), leading_sv("sv_enratio"),
        ak.to_numpy(ak.sum(a.pfcand_isMu, axis=1)), ak.to_numpy(ak.sum(a.pfcand_isEl, axis=1)),
    ])


def _classify(features, signal, background):
    """Held-out scores of a gradient-boosted classifier; returns (auc, fpr, tpr)."""
    mask = signal | background
    x_train, x_test, y_train, y_test = train_test_split(
        features[mask], signal[mask].astype(int), test_size=0.5, random_state=1, stratify=signal[mask])
    model = HistGradientBoostingClassifier(max_iter=150, random_state=1).fit(x_train, y_train)
    scores = model.predict_proba(x_test)[:, 1]
    fpr, tpr, _ = roc_curve(y_test, scores)
    return roc_auc_score(y_test, scores), fpr, tpr


def test_realism(realism_sample):
    a = realism_sample
    is_b = a.isB.to_numpy() == 1
    is_c = a.isC.to_numpy() == 1
    is_light = (a.isUDS.to_numpy() + a.isG.to_numpy()) == 1
    kinematics = np.column_stack([a.jet_pt.to_numpy(), a.jet_eta.to_numpy()])
    summaries = _summaries(a)

    auc_kinematics, _, _ = _classify(kinematics, is_b, is_light)
    auc_b_light, fpr, tpr = _classify(summaries, is_b, is_light)
    auc_b_c, _, _ = _classify(summaries, is_b, is_c)
    light_misid_at_70 = np.interp(0.70, tpr, fpr)

    assert auc_kinematics < 0.70, "jet kinematics alone must not tag b jets"
    assert auc_b_light >= 0.85, "impact parameters and vertices must tag b jets"
    assert light_misid_at_70 >= 0.005, "cleaner than a real detector: light mis-id at 70% b efficiency < 0.5%"
    assert auc_b_c < auc_b_light - 0.05, "b vs c must be clearly harder than b vs light"


def test_spectra_differ_by_flavour(realism_sample):
    """Reweighting must matter: b and light jets have different pt spectra."""
    pt = realism_sample.jet_pt.to_numpy()
    is_b = realism_sample.isB.to_numpy() == 1
    is_light = (realism_sample.isUDS.to_numpy() + realism_sample.isG.to_numpy()) == 1
    # b jets come mostly from top decays, light jets mostly from the pT-hat-biased QCD sample
    assert np.mean(pt[is_light] > 200) > 2 * np.mean(pt[is_b] > 200)
    assert np.quantile(pt[is_light], 0.9) > 1.3 * np.quantile(pt[is_b], 0.9)
    assert np.quantile(pt[is_light], 0.99) > 400
