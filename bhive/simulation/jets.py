"""Generator-level jets: anti-kt clustering and flavour labels by ghost association.

Weakly-decaying B and C hadrons and the partons that enter hadronisation are added to the
clustering input with their momenta scaled by 1e-18 ("ghosts"): they do not change any
jet, but each ends up in exactly one jet, which defines its flavour unambiguously (the
CMS hadron- and parton-flavour definitions):

- ``hadron_flavour`` is 5 if a B hadron is clustered, else 4 if a C hadron is, else 0;
- ``parton_flavour`` is the signed PDG id of the hardest clustered parton, except that a
  jet with hadron flavour 5 (4) takes the hardest b (c) parton when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

from bhive.simulation import hadrons

GHOST_SCALE = 1e-18
JET_RADIUS = 0.4

# Pythia status codes of the partons handed to string fragmentation (copied shower
# partons, and nearby partons merged into one).
_HADRONISATION_PARTON_STATUS = (-71, -72)

_REAL, _B_GHOST, _C_GHOST, _PARTON_GHOST = 0, 1, 2, 3


@dataclass
class JetTable:
    """Flat arrays describing the generator-level jets of one batch of events.

    ``jets`` holds one entry per jet, ``constituents`` one entry per visible final-state
    particle in a jet; ``constituents["jet"]`` indexes into ``jets``.
    """

    jets: dict[str, np.ndarray]
    constituents: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.jets["pt"])


def kinematics(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray) -> dict[str, np.ndarray]:
    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    eta = np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0))
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.maximum(e**2 - p**2, 0.0))
    return {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "p": p}


def _flat(array: ak.Array) -> np.ndarray:
    return ak.to_numpy(ak.flatten(array, axis=1))


def _hardest_in_group(group: np.ndarray, pt: np.ndarray, n_groups: int) -> np.ndarray:
    """Index (into ``group``) of the highest-pt entry of each group, -1 for empty groups."""
    best = np.full(n_groups, -1, dtype=np.int64)
    if len(group) == 0:
        return best
    order = np.lexsort((-pt, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    best[group[order][first]] = order[first]
    return best


def cluster_jets(
    events: ak.Array,
    charge_of,
    jet_pt_min: float,
    jet_abs_eta_max: float,
) -> JetTable:
    """Cluster visible final-state particles of Pythia events into labelled anti-kt jets.

    ``charge_of`` maps an array of PDG ids to their electric charges.
    """
    import fastjet
    from fastjet import _swig

    # FastJet prints its banner once per process, so every generator worker would interleave
    # it with the progress bar; the C++ library's switch is only reachable through the bindings
    _swig.ClusterSequence.set_fastjet_banner_stream(None)
    prt = events.prt
    counts = ak.to_numpy(ak.num(prt.id))
    n_events = len(counts)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    event_of = np.repeat(np.arange(n_events), counts)

    pdg = _flat(prt.id)
    status = _flat(prt.status)
    px, py, pz, e = (_flat(prt.p[c]) for c in ("px", "py", "pz", "e"))
    vertex = {c: ak.to_numpy(ak.fill_none(ak.flatten(prt.vProd[k], axis=1), 0.0))
              for c, k in (("x", "px"), ("y", "py"), ("z", "pz"))}

    # Daughters of hadron decays are a contiguous range of the event record.
    d1 = _flat(prt.daughter1).astype(np.int64)
    d2 = _flat(prt.daughter2).astype(np.int64)
    first_daughter = np.where(d1 > 0, d1 + start[event_of], -1)
    last_daughter = np.where(d2 >= d1, d2, d1) + start[event_of]

    b_hadron = hadrons.is_b_hadron(pdg)
    c_hadron = hadrons.is_c_hadron(pdg)
    decayed = d1 > 0
    weak_b = b_hadron & decayed & (hadrons.count_in_ranges(b_hadron, first_daughter, last_daughter) == 0)
    weak_c = c_hadron & decayed & (hadrons.count_in_ranges(c_hadron, first_daughter, last_daughter) == 0)
    semileptonic = hadrons.count_in_ranges(hadrons.is_charged_lepton(pdg), first_daughter, last_daughter) > 0

    visible = (status > 0) & ~hadrons.is_neutrino(pdg)
    partons = hadrons.is_parton(pdg) & np.isin(status, _HADRONISATION_PARTON_STATUS)

    category = np.full(len(pdg), -1, dtype=np.int8)
    category[partons] = _PARTON_GHOST
    category[weak_c] = _C_GHOST
    category[weak_b] = _B_GHOST
    category[visible] = _REAL
    source = np.flatnonzero(category >= 0)
    # Per event: real particles first, then ghosts; a stable sort keeps that order.
    source = source[np.lexsort((category[source], event_of[source]))]
    source_category = category[source]
    scale = np.where(source_category == _REAL, 1.0, GHOST_SCALE)
    input_counts = np.bincount(event_of[source], minlength=n_events)
    input_start = np.concatenate([[0], np.cumsum(input_counts)[:-1]]).astype(np.int64)

    particles = ak.unflatten(
        ak.zip({"px": px[source] * scale, "py": py[source] * scale,
                "pz": pz[source] * scale, "E": e[source] * scale}),
        input_counts,
    )
    sequence = fastjet.ClusterSequence(particles, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_RADIUS))
    jets = sequence.inclusive_jets(jet_pt_min)
    members = sequence.constituent_index(jet_pt_min)

    jets_per_event = ak.to_numpy(ak.num(jets))
    jet_event = np.repeat(np.arange(n_events), jets_per_event)
    jet_p = {c: _flat(jets[c]) for c in ("px", "py", "pz", "E")}
    jet_kin = kinematics(jet_p["px"], jet_p["py"], jet_p["pz"], jet_p["E"])
    n_jets = len(jet_event)

    members_per_jet = ak.to_numpy(ak.flatten(ak.num(members, axis=2), axis=1))
    member_jet = np.repeat(np.arange(n_jets), members_per_jet)
    member_index = ak.to_numpy(ak.flatten(members, axis=None)).astype(np.int64)
    member_source = source[input_start[jet_event[member_jet]] + member_index]
    member_category = category[member_source]

    is_b = member_category == _B_GHOST
    n_b = np.bincount(member_jet[is_b], minlength=n_jets)
    n_c = np.bincount(member_jet[member_category == _C_GHOST], minlength=n_jets)
    leptonic_b = np.bincount(member_jet[is_b & semileptonic[member_source]], minlength=n_jets) > 0
    hadron_flavour = np.where(n_b > 0, 5, np.where(n_c > 0, 4, 0))

    is_parton = member_category == _PARTON_GHOST
    parton_jet = member_jet[is_parton]
    parton_id = pdg[member_source[is_parton]]
    parton_pt = np.hypot(px, py)[member_source[is_parton]]
    parton_flavour = np.zeros(n_jets, dtype=np.int64)
    for wanted in (None, 4, 5):  # later passes override earlier ones
        selected = np.ones(len(parton_id), dtype=bool) if wanted is None else np.abs(parton_id) == wanted
        hardest = _hardest_in_group(parton_jet[selected], parton_pt[selected], n_jets)
        found = hardest >= 0
        if wanted is not None:
            found &= hadron_flavour == wanted
        parton_flavour[found] = parton_id[selected][hardest[found]]

    keep_jet = (jet_kin["pt"] > jet_pt_min) & (np.abs(jet_kin["eta"]) < jet_abs_eta_max)
    new_index = np.cumsum(keep_jet) - 1
    real = (member_category == _REAL) & keep_jet[member_jet]
    constituent_source = member_source[real]
    constituent_ids = pdg[constituent_source]

    jets_out = {
        "event": jet_event,
        "px": jet_p["px"], "py": jet_p["py"], "pz": jet_p["pz"], "e": jet_p["E"],
        **jet_kin,
        "hadron_flavour": hadron_flavour,
        "parton_flavour": parton_flavour,
        "n_b_hadrons": n_b,
        "n_c_hadrons": n_c,
        "leptonic_b": leptonic_b,
    }
    constituents = {
        "jet": new_index[member_jet[real]],
        "pdg_id": constituent_ids,
        "charge": np.asarray(charge_of(constituent_ids), dtype=np.float64),
        "px": px[constituent_source], "py": py[constituent_source],
        "pz": pz[constituent_source], "e": e[constituent_source],
        "vx": vertex["x"][constituent_source], "vy": vertex["y"][constituent_source],
        "vz": vertex["z"][constituent_source],
    }
    return JetTable(jets={k: v[keep_jet] for k, v in jets_out.items()}, constituents=constituents)
