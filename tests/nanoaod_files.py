"""Small NanoAOD-shaped input files, written by the tests themselves.

One tree entry per event, collections as a counter + per-object branches (``nJet``/``Jet_*``,
``nSV``/``SV_*``, ...), event-level ``PV_npvs`` and ``genWeight``, in the branch sets of the
three layouts CMS produces (:data:`LAYOUTS`):

- ``pfnano``: BTV PFNano, ``PFCands_*`` with track quantities and the ``JetPFCands`` jet ->
  candidate table, ``SV_*``, DeepJet and ParticleNet scores;
- ``v15``: central NanoAOD v15, ``PFCand_{pt,eta,phi,mass,pdgId}`` without a jet table,
  ``SV_*``, DeepJet, ParticleNet and UParT scores;
- ``v12``: central NanoAOD v12, no PF candidates, ``SV_*`` (absent in some skims: ``with_sv``),
  DeepJet, ParticleNet and RobustParT scores.

Every layout has ``Jet_svIdx1``/``Jet_svIdx2`` (``with_sv_index``), ``Jet_hadronFlavour``,
``Jet_partonFlavour``, ``Jet_rawFactor`` (1 - raw/corrected pt, in [0, 0.3)) and
``Jet_genJetIdx`` (``with_gen_jet_index``), and the ``GenJet`` collection
(``nGenJet``/``GenJet_*``, ``with_gen_jets``) that ``Jet_genJetIdx`` points into, generator
jets with a pt near their jet's, stored above a pt threshold as NanoAOD does: some indices point
past the stored list, and -1 marks jets without one (mostly pileup, and a few whose generator
jet is stored but not matched). The events do not depend on the layout: the same seed gives the
same jets, vertices and candidates in each, only the branches written differ. Content is random
but shaped like the real thing: jet constituents scattered around the jet axis, pileup
candidates and stray vertices far from any jet, displaced tracks and vertices in heavy-flavour
jets, and -1 for the track quantities of candidates without a track.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

TREE = "Events"
LAYOUTS = ("pfnano", "v15", "v12")

_NEUTRAL_PDG_IDS = (22, 130)
_CHARGED_PDG_IDS = (211, 211, 211, 211, 11, 13)  # mostly pions

_F, _I16, _I32, _U8 = np.float32, np.int16, np.int32, np.uint8
_DEEPJET = {f"btagDeepFlav{name}": _F for name in ("B", "CvB", "CvL", "QG")}
_PNET_V12 = {f"btagPNet{name}": _F for name in ("B", "CvB", "CvL", "QvG")}
_PNET_V15 = {**_PNET_V12, **{f"btagPNet{name}": _F for name in ("CvNotB", "TauVJet")}}
_UPART = {f"btagUParTAK4{name}": _F for name in ("B", "CvB", "CvL", "CvNotB", "QvG", "probb", "probbb", "problepb",
                                                  "probc", "probuds", "probg")}
_ROBUST_PART = {f"btagRobustParTAK4{name}": _F for name in ("B", "CvB", "CvL", "QG")}
_JET = {"pt": _F, "eta": _F, "phi": _F, "mass": _F, "nConstituents": _U8, "hadronFlavour": _U8,
        "partonFlavour": _I16, "genJetIdx": _I16, "rawFactor": _F}
_SV_INDEX = {"svIdx1": _I16, "svIdx2": _I16}
#: the SV table of central NanoAOD (16 branches)
_SV = {"pt": _F, "eta": _F, "phi": _F, "mass": _F, "x": _F, "y": _F, "z": _F, "dxy": _F, "dxySig": _F, "dlen": _F,
       "dlenSig": _F, "pAngle": _F, "chi2": _F, "ndof": _F, "ntracks": _U8, "charge": _I16}
_PF_CENTRAL = {"pt": _F, "eta": _F, "phi": _F, "mass": _F, "pdgId": _I32}
_PF_BTV = {**_PF_CENTRAL, "charge": _I32, "d0": _F, "d0Err": _F, "dz": _F, "dzErr": _F, "puppiWeight": _F,
           "trkChi2": _F, "lostInnerHits": _I32, "pvAssocQuality": _I32}
_LINKS = {"jetIdx": _I16, "pFCandsIdx": _I16}
_GEN_JET = {"pt": _F, "eta": _F, "phi": _F, "mass": _F, "partonFlavour": _I16, "hadronFlavour": _U8}
#: GenJets below this pt are not stored; the reco jets' Jet_genJetIdx still counts them
GEN_JET_PT_MIN = 20.0
#: Jet_rawFactor = 1 - raw pt / corrected pt is drawn in [0, RAW_FACTOR_MAX)
RAW_FACTOR_MAX = 0.3
#: share of jets whose generator jet is stored but not matched to them (Jet_genJetIdx -1)
GEN_JET_MISMATCHED = 0.05

#: per layout: the jet score branches and the PF candidate collection (name, fields), if any
_TAGGERS = {"pfnano": {**_DEEPJET, **_PNET_V12}, "v15": {**_DEEPJET, **_PNET_V15, **_UPART},
            "v12": {**_DEEPJET, **_PNET_V12, **_ROBUST_PART}}
_CANDIDATES = {"pfnano": ("PFCands", _PF_BTV), "v15": ("PFCand", _PF_CENTRAL), "v12": None}


def write_nanoaod(path: Path | str, n_events: int, seed: int, layout: str = "pfnano", with_association: bool = True,
                  with_sv_index: bool = True, with_sv: bool = True, with_gen_jets: bool = True,
                  with_gen_jet_index: bool = True) -> int:
    """Write ``n_events`` NanoAOD-like events in ``layout`` to ``path``; returns the number of jets.

    ``with_association`` adds the ``JetPFCands`` jet -> candidate table (``pfnano`` only, the
    only layout that has one); ``with_sv_index`` adds ``Jet_svIdx1``/``Jet_svIdx2``; without
    ``with_sv`` there is no ``SV_*`` collection, as in skims. Without the links a reader has to
    match by dR. ``with_gen_jets`` adds ``nGenJet``/``GenJet_*`` and points ``Jet_genJetIdx``
    into them (-1: no generator jet; past ``nGenJet``: one below :data:`GEN_JET_PT_MIN`);
    without it ``Jet_genJetIdx`` points into no stored collection. Without ``with_gen_jet_index``
    there is no ``Jet_genJetIdx``, as in data. The generator jets and ``Jet_rawFactor`` are drawn
    from generators of their own, so every other branch is the same with or without them.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    rng = np.random.default_rng(seed)
    events = [_event(rng) for _ in range(n_events)]
    jets, svs, candidates, links = (list(parts) for parts in zip(*events)) if events else ([], [], [], [])
    raw_rng = np.random.default_rng([seed, 2])
    jets = [{**event, "rawFactor": raw_rng.uniform(0.0, RAW_FACTOR_MAX, len(event["pt"]))} for event in jets]

    jet_fields = {**_JET, **_TAGGERS[layout], **(_SV_INDEX if with_sv_index else {})}
    if not with_gen_jet_index:
        del jet_fields["genJetIdx"]
    gen_jets = None
    if with_gen_jets:
        gen_rng = np.random.default_rng([seed, 1])
        jets, gen_jets = zip(*(_gen_jets(gen_rng, event) for event in jets)) if jets else ([], [])
        # the dR matching fails for a few jets (labelled ones too): -1, their GenJet stays stored
        mismatch_rng = np.random.default_rng([seed, 3])
        jets = [{**event, "genJetIdx": np.where(mismatch_rng.random(len(event["pt"])) < GEN_JET_MISMATCHED, -1,
                                                event["genJetIdx"])} for event in jets]
    arrays = {"Jet": _collection(list(jets), jet_fields)}
    if gen_jets is not None:
        arrays["GenJet"] = _collection(list(gen_jets), _GEN_JET)
    if with_sv:
        arrays["SV"] = _collection(svs, _SV)
    if _CANDIDATES[layout] is not None:
        name, fields = _CANDIDATES[layout]
        arrays[name] = _collection(candidates, fields)
        if layout == "pfnano" and with_association:
            arrays["JetPFCands"] = _collection(links, _LINKS)
    # event-level branches, drawn after the collections so that these do not depend on them
    arrays["PV_npvs"] = (rng.poisson(30, n_events) + 1).astype(np.int32)
    arrays["genWeight"] = (rng.choice([-1.0, 1.0], n_events, p=[0.02, 0.98]) * rng.normal(450, 5, n_events)) \
        .astype(np.float32)
    types = {name: (value.dtype if isinstance(value, np.ndarray) else value.type.content)
             for name, value in arrays.items()}
    with uproot.recreate(path) as file:
        file.mktree(TREE, types).extend(arrays)
    return sum(len(event["pt"]) for event in jets)


def _collection(events: list[dict[str, np.ndarray]], dtypes: dict[str, type]) -> ak.Array:
    """Per-event dicts of equal-length columns -> a jagged record array (one list per event)."""
    fields = list(dtypes)
    counts = np.array([len(event[fields[0]]) for event in events], dtype=np.int64)
    columns = {}
    for field, dtype in dtypes.items():
        flat = np.concatenate([np.asarray(event[field]) for event in events]) if events else np.zeros(0)
        columns[field] = ak.unflatten(flat.astype(dtype), counts)
    return ak.zip(columns)


def _wrap(phi: np.ndarray) -> np.ndarray:
    return (phi + np.pi) % (2 * np.pi) - np.pi


def _of_jet(values: np.ndarray, jet_index: np.ndarray) -> np.ndarray:
    """``values`` of the jet each object belongs to; objects of no jet (index -1) get 0."""
    return np.append(values, np.zeros(1, dtype=values.dtype))[jet_index]


def _event(rng: np.random.Generator) -> tuple[dict, dict, dict, dict]:
    n_jets = int(rng.choice(7, p=[0.1, 0.15, 0.2, 0.2, 0.15, 0.1, 0.1]))
    pt = np.sort(np.minimum(20 + rng.exponential(60, n_jets), 500))[::-1]
    eta = rng.uniform(-2.5, 2.5, n_jets)
    phi = rng.uniform(-np.pi, np.pi, n_jets)
    hadron = rng.choice([0, 4, 5], size=n_jets, p=[0.6, 0.15, 0.25])
    light_parton = rng.choice([1, 2, 3, -1, -2, -3, 21, 0], size=n_jets,
                              p=[0.12, 0.12, 0.1, 0.12, 0.12, 0.1, 0.27, 0.05])
    heavy_parton = np.where(rng.random(n_jets) < 0.9, hadron * rng.choice([-1, 1], size=n_jets), 21)
    parton = np.where(hadron == 0, light_parton, heavy_parton)
    is_b, is_c = hadron == 5, hadron == 4

    svs, sv_index = _vertices(rng, n_jets, eta, phi, pt, is_b | is_c, is_b, is_c)
    candidates, links, n_constituents = _candidates(rng, n_jets, eta, phi, pt, is_b | is_c)

    # genJetIdx: -1 for jets without a generator jet (mostly pileup: no parton either)
    gen_index = np.where((parton == 0) & (rng.random(n_jets) < 0.8), -1, np.arange(n_jets))
    jets = {
        "pt": pt, "eta": eta, "phi": phi, "mass": pt * rng.uniform(0.05, 0.2, n_jets),
        "nConstituents": n_constituents, "hadronFlavour": hadron, "partonFlavour": parton, "genJetIdx": gen_index,
        "svIdx1": sv_index[:, 0], "svIdx2": sv_index[:, 1],
        **_scores(rng, is_b, is_c, parton),
    }
    return jets, svs, candidates, links


def _gen_jets(rng: np.random.Generator, jets: dict) -> tuple[dict, dict]:
    """The event's jets with ``genJetIdx`` pointing into its generator jets, and the stored
    generator jets: one near each jet with a generator jet, plus soft ones of no jet, by pt
    descending, those below GEN_JET_PT_MIN left out (the jets' indices still count them)."""
    own = np.flatnonzero(jets["genJetIdx"] >= 0)
    n_own, n_soft = len(own), int(rng.poisson(1.0))
    pt = np.concatenate([jets["pt"][own] * rng.normal(1.0, 0.15, n_own), 5 + rng.exponential(10, n_soft)])
    eta = np.concatenate([jets["eta"][own] + rng.normal(0, 0.03, n_own), rng.uniform(-4.7, 4.7, n_soft)])
    phi = _wrap(np.concatenate([jets["phi"][own] + rng.normal(0, 0.03, n_own), rng.uniform(-np.pi, np.pi, n_soft)]))
    generated = {
        "pt": pt, "eta": eta, "phi": phi, "mass": pt * rng.uniform(0.05, 0.2, n_own + n_soft),
        "partonFlavour": np.concatenate([jets["partonFlavour"][own], np.zeros(n_soft, dtype=np.int64)]),
        "hadronFlavour": np.concatenate([jets["hadronFlavour"][own], np.zeros(n_soft, dtype=np.int64)]),
    }
    order = np.argsort(-pt, kind="stable")
    gen_index = np.full(len(jets["pt"]), -1, dtype=np.int64)
    gen_index[own] = np.argsort(order)[:n_own]  # where each jet's generator jet lands in pt order
    stored = order[pt[order] >= GEN_JET_PT_MIN]
    return {**jets, "genJetIdx": gen_index}, {name: values[stored] for name, values in generated.items()}


def _vertices(rng: np.random.Generator, n_jets: int, eta: np.ndarray, phi: np.ndarray, pt: np.ndarray,
              heavy_jet: np.ndarray, is_b: np.ndarray, is_c: np.ndarray) -> tuple[dict, np.ndarray]:
    """Secondary vertices (most b jets, some c jets, few light jets, plus stray ones), stored
    shuffled, and each jet's (svIdx1, svIdx2)."""
    sv_jet = []
    for jet in range(n_jets):
        probability = 0.8 if is_b[jet] else 0.5 if is_c[jet] else 0.1
        if rng.random() < probability:
            sv_jet += [jet] * int(rng.integers(1, 3))
    n_stray_svs = int(rng.random() < 0.3)
    sv_jet = np.array(sv_jet + [-1] * n_stray_svs, dtype=np.int64)
    near = sv_jet >= 0
    n_svs = len(sv_jet)
    sv_eta = np.where(near, _of_jet(eta, sv_jet) + rng.normal(0, 0.05, n_svs), rng.uniform(-2.5, 2.5, n_svs))
    sv_phi = _wrap(np.where(near, _of_jet(phi, sv_jet) + rng.normal(0, 0.05, n_svs),
                            rng.uniform(-np.pi, np.pi, n_svs)))
    heavy = near & _of_jet(heavy_jet, sv_jet)
    dxy = rng.exponential(np.where(heavy, 0.3, 0.05))
    dxy_error = rng.uniform(0.005, 0.03, n_svs)
    dlen = dxy * rng.uniform(1.0, 1.5, n_svs)
    dlen_error = dxy_error * rng.uniform(1.0, 2.0, n_svs)
    sv_pt = np.where(near, _of_jet(pt, sv_jet) * rng.uniform(0.1, 0.6, n_svs), rng.uniform(2, 15, n_svs))
    pv_z = rng.normal(0, 3.5)
    svs = {
        "pt": sv_pt, "eta": sv_eta, "phi": sv_phi, "mass": rng.uniform(0.3, np.where(heavy, 5.0, 1.0)),
        "x": dxy * np.cos(sv_phi), "y": dxy * np.sin(sv_phi), "z": pv_z + dxy * np.sinh(sv_eta),
        "dxy": dxy, "dxySig": dxy / dxy_error, "dlen": dlen, "dlenSig": dlen / dlen_error,
        "pAngle": rng.uniform(0, 0.1, n_svs), "chi2": rng.exponential(1.0, n_svs),
        "ndof": rng.integers(1, 10, n_svs).astype(float), "ntracks": rng.integers(2, 7, n_svs),
        "charge": rng.integers(-2, 3, n_svs),
    }
    # Store the vertices shuffled, so matching cannot rely on their order.
    sv_order = rng.permutation(n_svs)
    svs = {name: values[sv_order] for name, values in svs.items()}
    stored_position = np.argsort(sv_order)  # generated vertex i is stored at stored_position[i]
    sv_index = np.full((n_jets, 2), -1, dtype=np.int64)
    for jet in range(n_jets):
        own = stored_position[np.flatnonzero(sv_jet == jet)][:2]
        sv_index[jet, :len(own)] = own
    return svs, sv_index


def _candidates(rng: np.random.Generator, n_jets: int, eta: np.ndarray, phi: np.ndarray, pt: np.ndarray,
                heavy_jet: np.ndarray) -> tuple[dict, dict, np.ndarray]:
    """PF candidates (constituents scattered around each jet axis, plus pileup anywhere) stored
    shuffled, the JetPFCands table, and the number of constituents of each jet."""
    n_constituents = np.minimum(2 + rng.poisson(pt / 10), 60).astype(np.int64)
    cand_jet = np.concatenate([np.repeat(np.arange(n_jets), n_constituents),
                               np.full(int(rng.poisson(15)), -1)]).astype(np.int64)
    constituent = cand_jet >= 0
    n_cands = len(cand_jet)
    cand_eta = np.where(constituent, _of_jet(eta, cand_jet) + rng.normal(0, 0.12, n_cands),
                        rng.uniform(-3, 3, n_cands))
    cand_phi = np.where(constituent, _of_jet(phi, cand_jet) + rng.normal(0, 0.12, n_cands),
                        rng.uniform(-np.pi, np.pi, n_cands))
    share = _of_jet(pt / np.maximum(n_constituents, 1), cand_jet)
    cand_pt = np.where(constituent, rng.exponential(np.maximum(share, 1e-3)), rng.exponential(1.5, n_cands)) + 0.5
    charge = rng.choice([-1, 0, 1], size=n_cands, p=[0.33, 0.34, 0.33])
    # pdgId carries the charge as PF writes it: +211 is a pi+, +11 and +13 are e- and mu-
    species = rng.choice(_CHARGED_PDG_IDS, size=n_cands)
    pdg_id = np.where(charge == 0, rng.choice(_NEUTRAL_PDG_IDS, size=n_cands),
                      np.where(species == 211, charge, -charge) * species)
    has_track = charge != 0
    displaced = constituent & _of_jet(heavy_jet, cand_jet)
    d0 = rng.normal(0, 0.005, n_cands) + rng.choice([-1, 1], n_cands) * rng.exponential(
        np.where(displaced, 0.03, 0.002))
    d0_error = rng.uniform(0.001, 0.02, n_cands)
    dz = rng.normal(0, 0.02, n_cands)
    dz_error = rng.uniform(0.002, 0.04, n_cands)
    no_track = -1.0  # NanoAOD's value of every track quantity of a candidate without a track
    candidates = {
        "pt": cand_pt, "eta": cand_eta, "phi": _wrap(cand_phi),
        "mass": np.where(has_track, 0.13957, 0.0), "charge": charge, "pdgId": pdg_id,
        "d0": np.where(has_track, d0, no_track), "d0Err": np.where(has_track, d0_error, no_track),
        "dz": np.where(has_track, dz, no_track), "dzErr": np.where(has_track, dz_error, no_track),
        "puppiWeight": np.where(constituent, rng.uniform(0.8, 1.0, n_cands), rng.uniform(0.0, 0.5, n_cands)),
        "trkChi2": np.where(has_track, rng.exponential(1.0, n_cands), no_track),
        "lostInnerHits": np.where(has_track, rng.choice([-1, 0, 1], n_cands, p=[0.8, 0.15, 0.05]), 0),
        "pvAssocQuality": rng.choice([0, 4, 5, 6, 7], n_cands, p=[0.1, 0.1, 0.1, 0.2, 0.5]),
    }
    cand_order = rng.permutation(n_cands)
    candidates = {name: values[cand_order] for name, values in candidates.items()}
    cand_position = np.argsort(cand_order)
    # The association table lists each jet's constituents, jet by jet, highest pt first.
    link_jet = cand_jet[constituent]
    link_cand = cand_position[np.flatnonzero(constituent)]
    link_order = np.lexsort((-cand_pt[constituent], link_jet))
    links = {"jetIdx": link_jet[link_order], "pFCandsIdx": link_cand[link_order]}
    return candidates, links, n_constituents


#: mean score of b, c, gluon and other jets, by the discriminator a branch name ends with
_SCORE_MEANS = {"B": (0.75, 0.25, 0.05, 0.05), "CvL": (0.4, 0.6, 0.15, 0.15), "CvB": (0.15, 0.6, 0.5, 0.5),
                "CvNotB": (0.1, 0.6, 0.5, 0.5), "QvG": (0.5, 0.5, 0.2, 0.7), "QG": (0.5, 0.5, 0.7, 0.3),
                "TauVJet": (0.1, 0.1, 0.1, 0.1), "probb": (0.6, 0.1, 0.05, 0.05), "probbb": (0.1, 0.02, 0.02, 0.02),
                "problepb": (0.1, 0.02, 0.02, 0.02), "probc": (0.1, 0.6, 0.1, 0.1),
                "probuds": (0.05, 0.1, 0.2, 0.6), "probg": (0.05, 0.1, 0.6, 0.2)}


def _scores(rng: np.random.Generator, is_b: np.ndarray, is_c: np.ndarray, parton: np.ndarray) -> dict[str, np.ndarray]:
    """Every tagger score branch of every layout, shaped like the discriminator it stands for."""
    is_g = ~is_b & ~is_c & (parton == 21)
    scores = {}
    for name in {**_DEEPJET, **_PNET_V15, **_UPART, **_ROBUST_PART}:
        # the longest matching suffix: btagPNetCvB is a CvB score, not a B score
        b, c, g, other = _SCORE_MEANS[max((k for k in _SCORE_MEANS if name.endswith(k)), key=len)]
        scores[name] = np.clip(rng.normal(np.where(is_b, b, np.where(is_c, c, np.where(is_g, g, other))), 0.2), 0, 1)
    return scores
