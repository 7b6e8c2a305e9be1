"""Which candidates belong to which jet in NanoAOD: index links, association tables, dR cones.

Each function returns, for one chunk, the flat index of every (jet, candidate) pair into the
chunk's flattened candidate collection, ordered jet by jet, and the number of candidates per
jet; :mod:`processors.nanoaod` turns these into per-jet lists. Everything works on whole
chunks with numpy/awkward; nothing loops over events or jets.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

#: cone size of the dR matching used when a file has no index or association branches
MATCHING_RADIUS = 0.4


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Start of each event's objects in the flattened collection."""
    return np.concatenate([[0], np.cumsum(counts)])[:-1].astype(np.int64)


def flat(events, name: str) -> np.ndarray:
    """The per-event lists of branch ``name`` as one array, events one after the other."""
    return ak.to_numpy(ak.flatten(events[name], axis=1))


def _delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def matched_in_cone(events, prefix: str, sort_key: str, jets_per_event: np.ndarray,
                    candidates_per_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (branches ``<prefix>eta``/``<prefix>phi``) within dR < MATCHING_RADIUS of each
    jet, by the branch ``sort_key`` descending.

    Returns the flat index of each matched candidate in the chunk's flattened collection,
    ordered jet by jet, and the number of candidates per jet. A candidate near two jets
    belongs to both, as the cone definition says. Every (jet, candidate) pair of the chunk
    is held at once, so memory grows with chunk size x jets x candidates per event; files
    with the index/association branches avoid this.
    """
    # Every (jet, candidate) pair of an event, jet-major, so pairs come out grouped by jet.
    pairs = ak.argcartesian([events["Jet_eta"], events[f"{prefix}eta"]], axis=1)
    pairs_per_event = ak.to_numpy(ak.num(pairs, axis=1))
    jet = _flat_pairs(pairs["0"]) + np.repeat(_offsets(jets_per_event), pairs_per_event)
    candidate = _flat_pairs(pairs["1"]) + np.repeat(_offsets(candidates_per_event), pairs_per_event)

    jet_eta, jet_phi = flat(events, "Jet_eta"), flat(events, "Jet_phi")
    cand_eta, cand_phi = flat(events, f"{prefix}eta"), flat(events, f"{prefix}phi")
    d_eta = jet_eta[jet] - cand_eta[candidate]
    d_phi = _delta_phi(jet_phi[jet], cand_phi[candidate])
    inside = d_eta * d_eta + d_phi * d_phi < MATCHING_RADIUS**2
    jet, candidate = jet[inside], candidate[inside]

    key = flat(events, sort_key)[candidate]
    # lexsort: last key is primary, so group by jet, then order by the key, largest first;
    # the stable sort keeps file order between equal keys.
    order = np.lexsort((-key, jet))
    counts = np.bincount(jet, minlength=int(jets_per_event.sum()))
    return candidate[order], counts


def _flat_pairs(local_index: ak.Array) -> np.ndarray:
    return ak.to_numpy(ak.flatten(local_index, axis=1)).astype(np.int64)


def index_links(events, index_branches: tuple[str, ...], jets_per_event: np.ndarray,
                objects_per_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The objects each jet names in its ``index_branches`` (like ``Jet_svIdx1``/``Jet_svIdx2``),
    in that order; -1 or out-of-range means none."""
    local = np.stack([flat(events, name).astype(np.int64) for name in index_branches], axis=1)
    n_objects = np.repeat(objects_per_event, jets_per_event)[:, None]
    valid = (local >= 0) & (local < n_objects)
    global_index = local + np.repeat(_offsets(objects_per_event), jets_per_event)[:, None]
    # Row-major boolean indexing keeps jet order and, within a jet, the order of the branches.
    return global_index[valid], valid.sum(axis=1)


def association_links(events, table: tuple[str, str], jets_per_event: np.ndarray,
                      candidates_per_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates listed for each jet in an association ``table`` (its jet index branch and
    candidate index branch, like ``JetPFCands_jetIdx``/``JetPFCands_pFCandsIdx``), in the
    table's order."""
    jet_branch, candidate_branch = table
    links_per_event = ak.to_numpy(ak.num(events[jet_branch], axis=1))
    jet = flat(events, jet_branch).astype(np.int64)
    candidate = flat(events, candidate_branch).astype(np.int64)
    # Links to jets or candidates that are not stored (e.g. below the jet table's pt cut)
    # point outside the event's collection and are dropped.
    valid = ((jet >= 0) & (jet < np.repeat(jets_per_event, links_per_event))
             & (candidate >= 0) & (candidate < np.repeat(candidates_per_event, links_per_event)))
    jet = (jet + np.repeat(_offsets(jets_per_event), links_per_event))[valid]
    candidate = (candidate + np.repeat(_offsets(candidates_per_event), links_per_event))[valid]
    order = np.argsort(jet, kind="stable")
    return candidate[order], np.bincount(jet, minlength=int(jets_per_event.sum()))
