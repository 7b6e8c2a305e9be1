"""Processor for CMS NanoAOD: one tree entry per event, jets and their constituents in collections.

NanoAOD stores each collection as per-event lists (``nJet`` + ``Jet_pt``, ``nSV`` + ``SV_*``,
``nPFCands`` + ``PFCands_*``). This processor flattens jets over events and gives every jet
its secondary vertices and PF candidates as lists:

- secondary vertices through ``Jet_svIdx1``/``Jet_svIdx2`` when the file has them (index -1
  means none), otherwise every SV within dR < 0.4 of the jet axis, highest ``SV_dxySig`` first;
- PF candidates through the association table ``JetPFCands_jetIdx``/``JetPFCands_pFCandsIdx``
  of BTV-style NanoAOD when the file has it (in the table's order), otherwise every candidate
  within dR < 0.4 of the jet axis, highest ``PFCands_pt`` first. All candidates are kept,
  charged and neutral; NanoAOD sets the track quantities (d0, dz and their errors) of
  candidates without a track to -1.

Branches are routed by prefix: ``Jet_*`` per jet, ``SV_*`` and ``PFCands_*`` per candidate,
anything else is an event-level quantity (``PV_npvs``) repeated for each jet of the event.
Everything is computed on whole chunks with numpy/awkward; nothing loops over events or jets.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

from processors.base import JetProcessor, ProcessorError

JET_PREFIX = "Jet_"
SV_PREFIX = "SV_"
PF_PREFIX = "PFCands_"

#: cone size of the dR matching used when a file has no index or association branches
MATCHING_RADIUS = 0.4

SV_INDEX_BRANCHES = ("Jet_svIdx1", "Jet_svIdx2")
PF_ASSOCIATION_BRANCHES = ("JetPFCands_jetIdx", "JetPFCands_pFCandsIdx")


@dataclass(frozen=True)
class _Collection:
    """How one candidate collection is attached to jets."""

    prefix: str
    index_branches: tuple[str, ...]  # the file's own jet -> candidate links, if it has them
    sort_key: str  # dR-matched candidates are ordered by this branch, descending


_SV = _Collection(SV_PREFIX, SV_INDEX_BRANCHES, "SV_dxySig")
_PF = _Collection(PF_PREFIX, PF_ASSOCIATION_BRANCHES, "PFCands_pt")


class NanoAODProcessor(JetProcessor):
    """Reads CMS NanoAOD: jets flattened over events, SVs and PF candidates attached per jet.

    Only the branches the config reads (plus the eta/phi branches that dR matching needs
    and the ordering branches of the matched collections) have to exist in every file; the
    index branches ``Jet_svIdx1/2`` and the ``JetPFCands_*`` association table are used in
    the files that have them.
    """

    def config_branches(self) -> set[str]:
        """Branches the config reads: features, custom-feature inputs, truth and reference taggers."""
        return self.cfg.branches() | set(self.cfg.reference_branches())

    def required_branches(self) -> set[str]:
        branches = self.config_branches()
        for collection in (_SV, _PF):
            if any(name.startswith(collection.prefix) for name in branches):
                # dR matching (the fallback in files without index branches) needs the axes
                # and the ordering key; every NanoAOD with the collection has them.
                branches |= {"Jet_eta", "Jet_phi", f"{collection.prefix}eta", f"{collection.prefix}phi",
                             collection.sort_key}
        return branches

    def jet_table(self, events) -> ak.Array:
        source = events.metadata.get("filename", "")
        branches = sorted(self.config_branches())
        jet_branches = [b for b in branches if b.startswith(JET_PREFIX)]
        if not jet_branches:
            raise ProcessorError(f"{self.cfg.path}: the config reads no Jet_* branch; NanoAODProcessor needs at "
                                 f"least the jet pt/eta and truth branches (Jet_pt, Jet_hadronFlavour, ...)")
        jets_per_event = ak.to_numpy(ak.num(events[jet_branches[0]], axis=1))
        table = {name: ak.flatten(events[name], axis=1) for name in jet_branches}

        for collection in (_SV, _PF):
            names = [b for b in branches if b.startswith(collection.prefix)]
            if names:
                table.update(self._candidate_lists(events, collection, names, jets_per_event, source))

        for name in branches:
            if not name.startswith((JET_PREFIX, SV_PREFIX, PF_PREFIX)):
                table[name] = _broadcast_event_branch(events[name], name, jets_per_event, source)
        return ak.zip(table, depth_limit=1)

    def _candidate_lists(self, events, collection: _Collection, names: list[str], jets_per_event: np.ndarray,
                         source: str) -> dict[str, ak.Array]:
        """Each ``names`` branch as a list per jet, all with the same candidates."""
        present = [b for b in collection.index_branches if b in events.fields]
        if present and len(present) != len(collection.index_branches):
            missing = sorted(set(collection.index_branches) - set(present))
            raise ProcessorError(f"{source}: has {', '.join(present)} but not {', '.join(missing)}; the jet -> "
                                 f"{collection.prefix.rstrip('_')} links need both. Re-create the file or drop "
                                 f"the partial branches")
        for name in {*names, f"{collection.prefix}eta"}:
            if events[name].ndim != 2:
                raise ProcessorError(f"{source}: branch '{name}' is not a list per event; {collection.prefix}* "
                                     f"branches must belong to the {collection.prefix.rstrip('_')} collection "
                                     f"(counter n{collection.prefix.rstrip('_')})")
        candidates_per_event = ak.to_numpy(ak.num(events[f"{collection.prefix}eta"], axis=1))
        if not present:
            index, counts = _matched_in_cone(events, collection, jets_per_event, candidates_per_event)
        elif collection is _SV:
            index, counts = _sv_index_links(events, jets_per_event, candidates_per_event)
        else:
            index, counts = _association_links(events, jets_per_event, candidates_per_event)
        return {name: ak.unflatten(_flat(events, name)[index], counts) for name in names}


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Start of each event's objects in the flattened collection."""
    return np.concatenate([[0], np.cumsum(counts)])[:-1].astype(np.int64)


def _flat(events, name: str) -> np.ndarray:
    return ak.to_numpy(ak.flatten(events[name], axis=1))


def _delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def _matched_in_cone(events, collection: _Collection, jets_per_event: np.ndarray,
                     candidates_per_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates within dR < MATCHING_RADIUS of each jet, by ``sort_key`` descending.

    Returns the flat index of each matched candidate in the chunk's flattened collection,
    ordered jet by jet, and the number of candidates per jet. A candidate near two jets
    belongs to both, as the cone definition says. Every (jet, candidate) pair of the chunk
    is held at once, so memory grows with chunk size x jets x candidates per event; files
    with the index/association branches avoid this.
    """
    prefix = collection.prefix
    # Every (jet, candidate) pair of an event, jet-major, so pairs come out grouped by jet.
    pairs = ak.argcartesian([events["Jet_eta"], events[f"{prefix}eta"]], axis=1)
    pairs_per_event = ak.to_numpy(ak.num(pairs, axis=1))
    jet = _flat_pairs(pairs["0"]) + np.repeat(_offsets(jets_per_event), pairs_per_event)
    candidate = _flat_pairs(pairs["1"]) + np.repeat(_offsets(candidates_per_event), pairs_per_event)

    jet_eta, jet_phi = _flat(events, "Jet_eta"), _flat(events, "Jet_phi")
    cand_eta, cand_phi = _flat(events, f"{prefix}eta"), _flat(events, f"{prefix}phi")
    d_eta = jet_eta[jet] - cand_eta[candidate]
    d_phi = _delta_phi(jet_phi[jet], cand_phi[candidate])
    inside = d_eta * d_eta + d_phi * d_phi < MATCHING_RADIUS**2
    jet, candidate = jet[inside], candidate[inside]

    key = _flat(events, collection.sort_key)[candidate]
    # lexsort: last key is primary, so group by jet, then order by the key, largest first;
    # the stable sort keeps file order between equal keys.
    order = np.lexsort((-key, jet))
    counts = np.bincount(jet, minlength=int(jets_per_event.sum()))
    return candidate[order], counts


def _flat_pairs(local_index: ak.Array) -> np.ndarray:
    return ak.to_numpy(ak.flatten(local_index, axis=1)).astype(np.int64)


def _sv_index_links(events, jets_per_event: np.ndarray, svs_per_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SVs named by ``Jet_svIdx1``/``Jet_svIdx2``, in that order; -1 or out-of-range means none."""
    local = np.stack([_flat(events, name).astype(np.int64) for name in SV_INDEX_BRANCHES], axis=1)
    n_svs = np.repeat(svs_per_event, jets_per_event)[:, None]
    valid = (local >= 0) & (local < n_svs)
    global_index = local + np.repeat(_offsets(svs_per_event), jets_per_event)[:, None]
    # Row-major boolean indexing keeps jet order and, within a jet, svIdx1 before svIdx2.
    return global_index[valid], valid.sum(axis=1)


def _association_links(events, jets_per_event: np.ndarray,
                       candidates_per_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PF candidates listed for each jet in the ``JetPFCands`` table, in the table's order."""
    links_per_event = ak.to_numpy(ak.num(events["JetPFCands_jetIdx"], axis=1))
    jet = _flat(events, "JetPFCands_jetIdx").astype(np.int64)
    candidate = _flat(events, "JetPFCands_pFCandsIdx").astype(np.int64)
    # Links to jets or candidates that are not stored (e.g. below the jet table's pt cut)
    # point outside the event's collection and are dropped.
    valid = ((jet >= 0) & (jet < np.repeat(jets_per_event, links_per_event))
             & (candidate >= 0) & (candidate < np.repeat(candidates_per_event, links_per_event)))
    jet = (jet + np.repeat(_offsets(jets_per_event), links_per_event))[valid]
    candidate = (candidate + np.repeat(_offsets(candidates_per_event), links_per_event))[valid]
    order = np.argsort(jet, kind="stable")
    return candidate[order], np.bincount(jet, minlength=int(jets_per_event.sum()))


def _broadcast_event_branch(values: ak.Array, name: str, jets_per_event: np.ndarray, source: str) -> np.ndarray:
    """One event-level value repeated for each jet of its event."""
    if values.ndim != 1:
        raise ProcessorError(
            f"{source}: branch '{name}' is a list per event, but NanoAODProcessor only attaches Jet_*, "
            f"{SV_PREFIX}* and {PF_PREFIX}* collections to jets; other branches must be one value per event "
            f"(like PV_npvs). Remove '{name}' from the config or derive a per-event quantity from it")
    return np.repeat(ak.to_numpy(values), jets_per_event)
