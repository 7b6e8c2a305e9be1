"""Writing reconstructed jets as DeepNtuple-style ROOT TTrees.

One tree entry per jet, jet-level branches as scalars and candidate collections as jagged
branches sharing a counter. Two naming styles are supported, matching the two kinds of
CMS ntuples b-hive reads:

- ``hlt``: one ``pfcand_*`` collection with charged and neutral candidates together
  (track features are 0 for neutrals), sorted by pt, as in the HLT b-tagging ntuples;
- ``deepjet``: separate ``Cpfcan_*`` (sorted by 2D impact-parameter significance) and
  ``Npfcan_*`` (sorted by pt) collections and the CSV jet variables, as in offline
  DeepJet ntuples.

Both have the same ``sv_*`` collection (sorted by 2D flight-distance significance), truth
branches and jet kinematics. Lengths are in cm, energies in GeV, as in CMS ntuples.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import awkward as ak
import numpy as np

from bhive.simulation.detector import ReconstructedJets

MM_TO_CM = 0.1
BRANCH_STYLES = ("hlt", "deepjet")

# Branch name -> (source column, unit scale) per collection. ``None`` scale keeps integers.
_SV_BRANCHES = {
    "pt": ("pt", 1.0), "eta": ("eta", 1.0), "phi": ("phi", 1.0), "mass": ("mass", 1.0),
    "ntracks": ("ntracks", 1.0), "chi2": ("chi2", 1.0), "normchi2": ("normchi2", 1.0),
    "dxy": ("dxy", MM_TO_CM), "dxysig": ("dxy_sig", 1.0), "d3d": ("d3d", MM_TO_CM),
    "d3dsig": ("d3d_sig", 1.0), "costhetasvpv": ("cos_theta", 1.0), "deltaR": ("delta_r", 1.0),
    "enratio": ("energy_ratio", 1.0),
}

_TRACK_FEATURES = {
    "trackEtaRel": ("eta_rel", 1.0), "trackPtRel": ("pt_rel", 1.0), "trackPPar": ("p_par", 1.0),
    "trackDeltaR": ("delta_r", 1.0), "trackPParRatio": ("p_par_ratio", 1.0),
    "trackSip2dVal": ("sip2d_val", MM_TO_CM), "trackSip2dSig": ("sip2d_sig", 1.0),
    "trackSip3dVal": ("sip3d_val", MM_TO_CM), "trackSip3dSig": ("sip3d_sig", 1.0),
    "trackJetDistVal": ("jet_dist", MM_TO_CM),
}

_HLT_PFCAND_BRANCHES = {
    "pt": ("pt", 1.0), "eta": ("eta", 1.0), "phi": ("phi", 1.0), "energy": ("energy", 1.0),
    "ptrel": ("pt_ratio", 1.0), "deltaR": ("delta_r", 1.0), "charge": ("charge", 1.0),
    "isGamma": ("is_photon", 1.0), "isNeutralHad": ("is_neutral_hadron", 1.0),
    "isMu": ("is_muon", 1.0), "isEl": ("is_electron", 1.0),
    "trackPt": ("track_pt", 1.0), "trackEta": ("track_eta", 1.0),
    **_TRACK_FEATURES,
    "dz": ("dz", MM_TO_CM), "drminsv": ("drmin_sv", 1.0),
}

_DEEPJET_CPF_BRANCHES = {
    **{f"BtagPf_{name}": source for name, source in _TRACK_FEATURES.items()},
    "ptrel": ("pt_ratio", 1.0), "drminsv": ("drmin_sv", 1.0), "VTX_ass": ("vertex_association", 1.0),
    "puppiw": ("puppi_weight", 1.0), "chi2": ("normchi2", 1.0), "quality": ("quality", 1.0),
    "pt": ("pt", 1.0), "eta": ("eta", 1.0), "phi": ("phi", 1.0), "e": ("energy", 1.0),
    "charge": ("charge", 1.0), "isMu": ("is_muon", 1.0), "isEl": ("is_electron", 1.0),
}

_DEEPJET_NPF_BRANCHES = {
    "ptrel": ("pt_ratio", 1.0), "deltaR": ("delta_r", 1.0), "isGamma": ("is_photon", 1.0),
    "HadFrac": ("hadron_fraction", 1.0), "drminsv": ("drmin_sv", 1.0), "puppiw": ("puppi_weight", 1.0),
    "pt": ("pt", 1.0), "eta": ("eta", 1.0), "phi": ("phi", 1.0), "e": ("energy", 1.0),
}

_CSV_BRANCHES = {
    "TagVarCSV_trackSumJetEtRatio": ("csv_track_sum_et_ratio", 1.0),
    "TagVarCSV_trackSumJetDeltaR": ("csv_track_sum_delta_r", 1.0),
    "TagVarCSV_vertexCategory": ("csv_vertex_category", 1.0),
    "TagVarCSV_trackSip2dValAboveCharm": ("csv_sip2d_val_above_charm", MM_TO_CM),
    "TagVarCSV_trackSip2dSigAboveCharm": ("csv_sip2d_sig_above_charm", 1.0),
    "TagVarCSV_trackSip3dValAboveCharm": ("csv_sip3d_val_above_charm", MM_TO_CM),
    "TagVarCSV_trackSip3dSigAboveCharm": ("csv_sip3d_sig_above_charm", 1.0),
    "TagVarCSV_jetNSelectedTracks": ("csv_n_selected_tracks", 1.0),
    "TagVarCSV_jetNTracksEtaRel": ("csv_n_tracks_eta_rel", 1.0),
}

# Counters of the jagged collections, named as the ntuples' global features.
_COUNTERS = {"pfcand": "npfcand", "Cpfcan": "nCpfcand", "Npfcan": "nNpfcand", "sv": "nsv"}

# Jet-level branch name -> (source column, type).
_JET_BRANCHES = {
    "jet_pt": ("reco_pt", np.float32), "jet_eta": ("eta", np.float32), "jet_phi": ("phi", np.float32),
    "jet_mass": ("reco_mass", np.float32), "jet_energy": ("reco_energy", np.float32),
    "gen_pt": ("gen_pt", np.float32), "npv": ("npv", np.int32), "event_no": ("event_no", np.int64),
    "jet_no": ("jet_no", np.int32),
}
# Per style: scalar branches beyond the jet ones, and the jagged collections.
_STYLE_SCALARS = {"hlt": ("n_Cpfcand", "n_Npfcand"), "deepjet": tuple(_CSV_BRANCHES)}
_STYLE_COLLECTIONS = {
    "hlt": {"pfcand": _HLT_PFCAND_BRANCHES, "sv": _SV_BRANCHES},
    "deepjet": {"Cpfcan": _DEEPJET_CPF_BRANCHES, "Npfcan": _DEEPJET_NPF_BRANCHES, "sv": _SV_BRANCHES},
}

TRUTH_BRANCHES = ("isB", "isBB", "isLeptonicB", "isC", "isUDS", "isG", "isUndefined",
                  "hadronFlavour", "partonFlavour")


def truth_branches(jets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CMS-style truth flags from hadron and parton flavour.

    ``isBB`` and ``isLeptonicB`` are sub-labels of ``isB``; ``isB``, ``isC``, ``isUDS`` and
    ``isG`` are mutually exclusive, and jets matching none (no clustered parton, or a
    heavy-flavour parton without the hadron) are ``isUndefined``.
    """
    hadron = jets["hadron_flavour"]
    parton = jets["parton_flavour"]
    is_b = hadron == 5
    is_c = hadron == 4
    is_uds = (hadron == 0) & np.isin(np.abs(parton), (1, 2, 3))
    is_g = (hadron == 0) & (parton == 21)
    flags = {
        "isB": is_b, "isBB": is_b & (jets["n_b_hadrons"] >= 2), "isLeptonicB": is_b & jets["leptonic_b"],
        "isC": is_c, "isUDS": is_uds, "isG": is_g, "isUndefined": ~(is_b | is_c | is_uds | is_g),
    }
    out = {name: flag.astype(np.int32) for name, flag in flags.items()}
    out["hadronFlavour"] = hadron.astype(np.int32)
    out["partonFlavour"] = parton.astype(np.int32)
    return out


def branch_names(style: str) -> frozenset[str]:
    """Every branch a file of ``style`` holds, named as uproot writes them: ``<collection>_<field>``
    for the collections' fields plus their counters.

    Lets a config be checked against the simulation before any file is generated.
    """
    if style not in BRANCH_STYLES:
        raise ValueError(f"unknown branch style {style!r}; choose one of {BRANCH_STYLES}")
    names = {*_JET_BRANCHES, *TRUTH_BRANCHES, *_STYLE_SCALARS[style]}
    for collection, fields in _STYLE_COLLECTIONS[style].items():
        names.add(_COUNTERS[collection])
        names.update(f"{collection}_{field}" for field in fields)
    return frozenset(names)


def _collection(table, jet_index, n_jets, branches, sort_key) -> ak.Array:
    order = np.lexsort((-table[sort_key], table[jet_index]))
    counts = np.bincount(table[jet_index], minlength=n_jets)
    fields = {name: (table[src][order] * scale).astype(np.float32) for name, (src, scale) in branches.items()}
    return ak.unflatten(ak.zip(fields), counts)


_NEUTRAL_PFCAND_COLUMNS = ("pt", "eta", "phi", "energy", "pt_ratio", "delta_r", "drmin_sv", "is_photon", "jet")


def _hlt_candidates(reco: ReconstructedJets) -> dict[str, np.ndarray]:
    """Charged and neutral candidates as one collection, track features zero for neutrals."""
    tracks, neutrals = reco.tracks, reco.neutrals
    n_tracks, n_neutrals = len(tracks["jet"]), len(neutrals["jet"])
    charged = {**tracks, "track_pt": tracks["pt"], "track_eta": tracks["eta"],
               "is_photon": np.zeros(n_tracks), "is_neutral_hadron": np.zeros(n_tracks)}
    neutral = {c: neutrals[c] for c in _NEUTRAL_PFCAND_COLUMNS}
    neutral["is_neutral_hadron"] = ~neutrals["is_photon"]
    columns = [src for src, _ in _HLT_PFCAND_BRANCHES.values()] + ["jet"]
    return {c: np.concatenate([charged[c], neutral.get(c, np.zeros(n_neutrals))]) for c in columns}


def jet_arrays(reco: ReconstructedJets, style: str) -> dict:
    """All branches of one batch of jets in the given style, ready for ``TTree.extend``."""
    if style not in BRANCH_STYLES:
        raise ValueError(f"unknown branch style {style!r}; choose one of {BRANCH_STYLES}")
    jets = reco.jets
    n = len(jets["pt"])
    out = {
        **{name: jets[source].astype(dtype) for name, (source, dtype) in _JET_BRANCHES.items()},
        **truth_branches(jets),
    }
    if style == "hlt":
        out["n_Cpfcand"] = jets["n_tracks"].astype(np.int32)
        out["n_Npfcand"] = jets["n_neutrals"].astype(np.int32)
        out["pfcand"] = _collection(_hlt_candidates(reco), "jet", n, _HLT_PFCAND_BRANCHES, "pt")
    else:
        for name, (src, scale) in _CSV_BRANCHES.items():
            out[name] = (jets[src] * scale).astype(np.float32)
        out["Cpfcan"] = _collection(reco.tracks, "jet", n, _DEEPJET_CPF_BRANCHES, "sip2d_sig")
        out["Npfcan"] = _collection(reco.neutrals, "jet", n, _DEEPJET_NPF_BRANCHES, "pt")
    out["sv"] = _collection(reco.vertices, "jet", n, _SV_BRANCHES, "dxy_sig")
    return out


def concatenate(chunks: list[dict]) -> dict:
    return {name: (np.concatenate([c[name] for c in chunks]) if isinstance(chunks[0][name], np.ndarray)
                   else ak.concatenate([c[name] for c in chunks])) for name in chunks[0]}


def content_hash(arrays: dict) -> str:
    """sha256 over every branch's values, in branch order.

    ROOT files carry creation times and UUIDs, so two runs with the same seed differ in a
    few header bytes; this hash identifies the physics content.
    """
    digest = hashlib.sha256()
    for name, values in arrays.items():
        digest.update(name.encode())
        if isinstance(values, np.ndarray):
            digest.update(np.ascontiguousarray(values).tobytes())
        else:
            for field in values.fields:
                digest.update(field.encode())
                digest.update(ak.to_numpy(ak.flatten(values[field])).tobytes())
            digest.update(ak.to_numpy(ak.num(values)).tobytes())
    return digest.hexdigest()


def write_tree(path: Path, treename: str, arrays: dict) -> None:
    """Write one TTree (not an RNTuple: uproot needs ``mktree`` + ``extend`` for that)."""
    import uproot

    branch_types = {}
    for name, values in arrays.items():
        branch_types[name] = values.dtype if isinstance(values, np.ndarray) else values.type.content
    with uproot.recreate(path) as file:
        tree = file.mktree(treename, branch_types, counter_name=lambda name: _COUNTERS.get(name, "n" + name))
        tree.extend(arrays)
