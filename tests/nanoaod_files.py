"""Small NanoAOD-shaped input files, written by the tests themselves.

The layout follows CMS (BTV) NanoAOD: one tree entry per event, collections as counter +
per-object branches (``nJet``/``Jet_*``, ``nSV``/``SV_*``, ``nPFCands``/``PFCands_*``,
``nJetPFCands``/``JetPFCands_*``), event-level ``PV_npvs``. Content is random but shaped
like the real thing: jet constituents scattered around the jet axis, pileup candidates and
stray vertices far from any jet, displaced tracks and vertices in heavy-flavour jets, and
-1 for the track quantities of candidates without a track.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

TREE = "Events"

_NEUTRAL_PDG_IDS = (22, 130)
_CHARGED_PDG_IDS = (211, 211, 211, 211, 11, 13)  # mostly pions


def write_nanoaod(path: Path | str, n_events: int, seed: int, with_association: bool = True,
                  with_sv_index: bool = True) -> int:
    """Write ``n_events`` NanoAOD-like events to ``path``; returns the number of jets.

    ``with_association`` adds the ``JetPFCands`` jet -> candidate table; ``with_sv_index``
    adds ``Jet_svIdx1``/``Jet_svIdx2``. Without them a reader has to match by dR.
    """
    rng = np.random.default_rng(seed)
    jets, svs, candidates, links = [], [], [], []
    for _ in range(n_events):
        event_jets, event_svs, event_candidates, event_links = _event(rng)
        jets.append(event_jets)
        svs.append(event_svs)
        candidates.append(event_candidates)
        links.append(event_links)

    jet_fields = ["pt", "eta", "phi", "mass", "nConstituents", "hadronFlavour", "partonFlavour",
                  "btagDeepFlavB", "btagDeepFlavCvL", "btagDeepFlavCvB"]
    if with_sv_index:
        jet_fields += ["svIdx1", "svIdx2"]
    arrays = {
        "Jet": _collection(jets, jet_fields),
        "SV": _collection(svs, list(_SV_DTYPES)),
        "PFCands": _collection(candidates, list(_PF_DTYPES)),
        "PV_npvs": (rng.poisson(30, n_events) + 1).astype(np.int32),
    }
    if with_association:
        arrays["JetPFCands"] = _collection(links, ["jetIdx", "pFCandsIdx"])
    types = {name: (value.dtype if isinstance(value, np.ndarray) else value.type.content)
             for name, value in arrays.items()}
    with uproot.recreate(path) as file:
        file.mktree(TREE, types).extend(arrays)
    return sum(len(event["pt"]) for event in jets)


_JET_DTYPES = {"pt": np.float32, "eta": np.float32, "phi": np.float32, "mass": np.float32,
               "nConstituents": np.uint8, "hadronFlavour": np.uint8, "partonFlavour": np.int16,
               "btagDeepFlavB": np.float32, "btagDeepFlavCvL": np.float32, "btagDeepFlavCvB": np.float32,
               "svIdx1": np.int16, "svIdx2": np.int16}
_SV_DTYPES = {"pt": np.float32, "eta": np.float32, "phi": np.float32, "mass": np.float32,
              "dxy": np.float32, "dxySig": np.float32, "dlen": np.float32, "dlenSig": np.float32,
              "pAngle": np.float32, "chi2": np.float32, "ndof": np.float32, "ntracks": np.uint8}
_PF_DTYPES = {"pt": np.float32, "eta": np.float32, "phi": np.float32, "mass": np.float32,
              "charge": np.int32, "pdgId": np.int32, "d0": np.float32, "d0Err": np.float32,
              "dz": np.float32, "dzErr": np.float32, "puppiWeight": np.float32}
_LINK_DTYPES = {"jetIdx": np.int16, "pFCandsIdx": np.int16}
_DTYPES = {**_JET_DTYPES, **_SV_DTYPES, **_PF_DTYPES, **_LINK_DTYPES}


def _collection(events: list[dict[str, np.ndarray]], fields: list[str]) -> ak.Array:
    """Per-event dicts of equal-length columns -> a jagged record array (one list per event)."""
    counts = np.array([len(event[fields[0]]) for event in events], dtype=np.int64)
    columns = {}
    for field in fields:
        dtype = _DTYPES[field]
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

    # Secondary vertices: most b jets, some c jets, few light jets; plus stray ones.
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
    sv_phi = np.where(near, _of_jet(phi, sv_jet) + rng.normal(0, 0.05, n_svs), rng.uniform(-np.pi, np.pi, n_svs))
    heavy = near & _of_jet(is_b | is_c, sv_jet)
    dxy = rng.exponential(np.where(heavy, 0.3, 0.05))
    dxy_error = rng.uniform(0.005, 0.03, n_svs)
    dlen = dxy * rng.uniform(1.0, 1.5, n_svs)
    dlen_error = dxy_error * rng.uniform(1.0, 2.0, n_svs)
    ndof = rng.integers(1, 10, n_svs).astype(float)
    sv_pt = np.where(near, _of_jet(pt, sv_jet) * rng.uniform(0.1, 0.6, n_svs), rng.uniform(2, 15, n_svs))
    # Store the vertices shuffled, so matching cannot rely on their order.
    sv_order = rng.permutation(n_svs)
    svs = {
        "pt": sv_pt, "eta": sv_eta, "phi": _wrap(sv_phi), "mass": rng.uniform(0.3, np.where(heavy, 5.0, 1.0)),
        "dxy": dxy, "dxySig": dxy / dxy_error, "dlen": dlen, "dlenSig": dlen / dlen_error,
        "pAngle": rng.uniform(0, 0.1, n_svs), "chi2": rng.exponential(1.0, n_svs), "ndof": ndof,
        "ntracks": rng.integers(2, 7, n_svs),
    }
    svs = {name: values[sv_order] for name, values in svs.items()}
    stored_position = np.argsort(sv_order)  # generated vertex i is stored at stored_position[i]
    sv_index = np.full((n_jets, 2), -1, dtype=np.int64)
    for jet in range(n_jets):
        own = stored_position[np.flatnonzero(sv_jet == jet)][:2]
        sv_index[jet, :len(own)] = own

    # PF candidates: constituents scattered around each jet axis, plus pileup anywhere.
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
    pdg_id = np.where(charge == 0, rng.choice(_NEUTRAL_PDG_IDS, size=n_cands),
                      charge * rng.choice(_CHARGED_PDG_IDS, size=n_cands))
    has_track = charge != 0
    displaced = constituent & _of_jet(is_b | is_c, cand_jet)
    d0 = rng.normal(0, 0.005, n_cands) + rng.choice([-1, 1], n_cands) * rng.exponential(
        np.where(displaced, 0.03, 0.002))
    d0_error = rng.uniform(0.001, 0.02, n_cands)
    dz = rng.normal(0, 0.02, n_cands)
    dz_error = rng.uniform(0.002, 0.04, n_cands)
    candidates = {
        "pt": cand_pt, "eta": cand_eta, "phi": _wrap(cand_phi),
        "mass": np.where(has_track, 0.13957, 0.0), "charge": charge, "pdgId": pdg_id,
        # NanoAOD's convention for candidates without a track: -1 for all track quantities
        "d0": np.where(has_track, d0, -1.0), "d0Err": np.where(has_track, d0_error, -1.0),
        "dz": np.where(has_track, dz, -1.0), "dzErr": np.where(has_track, dz_error, -1.0),
        "puppiWeight": np.where(constituent, rng.uniform(0.8, 1.0, n_cands), rng.uniform(0.0, 0.5, n_cands)),
    }
    cand_order = rng.permutation(n_cands)
    candidates = {name: values[cand_order] for name, values in candidates.items()}
    cand_position = np.argsort(cand_order)
    # The association table lists each jet's constituents, jet by jet, highest pt first.
    link_jet = cand_jet[constituent]
    link_cand = cand_position[np.flatnonzero(constituent)]
    link_order = np.lexsort((-cand_pt[constituent], link_jet))
    links = {"jetIdx": link_jet[link_order], "pFCandsIdx": link_cand[link_order]}

    b_score = np.clip(rng.normal(np.where(is_b, 0.75, np.where(is_c, 0.25, 0.05)), 0.2), 0, 1)
    cvl = np.clip(rng.normal(np.where(is_c, 0.6, np.where(is_b, 0.4, 0.15)), 0.2), 0, 1)
    cvb = np.clip(rng.normal(np.where(is_c, 0.6, np.where(is_b, 0.15, 0.5)), 0.2), 0, 1)
    jets = {
        "pt": pt, "eta": eta, "phi": phi, "mass": pt * rng.uniform(0.05, 0.2, n_jets),
        "nConstituents": n_constituents, "hadronFlavour": hadron, "partonFlavour": parton,
        "btagDeepFlavB": b_score, "btagDeepFlavCvL": cvl, "btagDeepFlavCvB": cvb,
        "svIdx1": sv_index[:, 0], "svIdx2": sv_index[:, 1],
    }
    return jets, svs, candidates, links
