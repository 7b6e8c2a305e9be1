"""Processor for CMS NanoAOD: one tree entry per event, jets and their constituents in collections.

NanoAOD stores each collection as per-event lists (``nJet`` + ``Jet_pt``, ``nSV`` + ``SV_*``,
...). This processor flattens jets over events and gives every jet its secondary vertices and
PF candidates as lists (:mod:`processors.nanoaod_links` finds which belong to which jet):

- secondary vertices through ``Jet_svIdx1``/``Jet_svIdx2`` when the file has them (index -1
  means none), otherwise every SV within dR < 0.4 of the jet axis, highest ``SV_dxySig`` first;
- PF candidates, which NanoAOD layouts name differently: BTV PFNano has ``PFCands_*`` (with
  track quantities) and the association table ``JetPFCands_jetIdx``/``JetPFCands_pFCandsIdx``,
  central NanoAOD (v15 on) has ``PFCand_*`` (pt, eta, phi, mass, pdgId) and no jet table. A
  config may name candidate branches with either prefix: both mean the file's PF candidates,
  ``PFCands_*`` where a file has both. They come through the association table where the file
  has it (in the table's order), otherwise every candidate within dR < 0.4 of the jet axis,
  highest pt first. All candidates are kept, charged and neutral; NanoAOD sets the track
  quantities (d0, dz and their errors) of candidates without a track to -1.

Branches are routed by prefix: ``Jet_*`` per jet; ``SV_*``, ``PFCands_*`` and ``PFCand_*`` per
candidate; the fields of a linked collection (:data:`LINKED_COLLECTIONS`), of which each jet
has at most one object named by a per-jet index branch, one value per jet: ``GenJet_<field>``
is ``GenJet_<field>[event][Jet_genJetIdx]``, the generator jet matched to the jet. A jet
without one (index -1, or an index past the event's stored GenJets, which NanoAOD keeps above
a pt threshold only) gets NaN, so these values are floating point: float32 for float32 and
small integer fields, so ``GenJet_partonFlavour``/``GenJet_hadronFlavour`` are floats with NaN
for unmatched jets. ``Jet_genJetIdx`` and the ``GenJet_*`` branches exist in simulation only.
Anything else is an event-level quantity (``PV_npvs``, ``genWeight``) repeated for each jet of
the event. Everything is computed on whole chunks with numpy/awkward; nothing loops over events
or jets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import awkward as ak
import numpy as np

from processors.base import JetProcessor, ProcessorError
from processors.nanoaod_links import association_links, flat, index_links, matched_in_cone

JET_PREFIX = "Jet_"
SV_INDEX_BRANCHES = ("Jet_svIdx1", "Jet_svIdx2")
PF_ASSOCIATION_BRANCHES = ("JetPFCands_jetIdx", "JetPFCands_pFCandsIdx")


@dataclass(frozen=True)
class _Candidates:
    """A candidate collection: the prefixes it goes by and how it is attached to jets."""

    label: str
    prefixes: tuple[str, ...]  # names a config may use; a file has the first of them it has
    sort_field: str  # dR-matched candidates are ordered by this field, descending
    index_branches: tuple[str, ...] = ()  # per-jet indices into the collection, where files have them
    table: tuple[str, tuple[str, str]] | None = None  # (the prefix it indexes, its jet and candidate branches)

    def prefix_of(self, name: str) -> str | None:
        return next((prefix for prefix in self.prefixes if name.startswith(prefix)), None)

    def file_prefix(self, names: list[str], available: Collection[str] | None) -> str:
        """The prefix of the collection in a file with branches ``available``: the first of
        ``prefixes`` it has; the config's own spelling where it has none or is not known."""
        if available is not None:
            for prefix in self.prefixes:
                if any(branch.startswith(prefix) for branch in available):
                    return prefix
        return self.prefix_of(names[0])

    def links(self, prefix: str) -> tuple[str, ...]:
        """The branches linking jets to the collection named ``prefix``, where a file has them."""
        if self.table is not None:
            return self.table[1] if self.table[0] == prefix else ()
        return self.index_branches


_SV = _Candidates("SV", ("SV_",), "dxySig", index_branches=SV_INDEX_BRANCHES)
_PF = _Candidates("PF candidate", ("PFCands_", "PFCand_"), "pt", table=("PFCands_", PF_ASSOCIATION_BRANCHES))
_COLLECTIONS = (_SV, _PF)


@dataclass(frozen=True)
class _Linked:
    """A collection of which each jet has at most one object: the one its ``index_branch`` names."""

    prefix: str  # config branches ``<prefix><field>`` are that object's field
    index_branch: str  # per-jet index into the event's collection; -1 or past its end: none
    about: str  # what the link is, for error messages


#: Linked collections, one line each: a config branch with the prefix is one value per jet.
LINKED_COLLECTIONS = (
    _Linked("GenJet_", "Jet_genJetIdx",
            "the index linking each jet to its matched GenJet (-1: none), which only simulation has"),
)


def _linked_of(name: str) -> _Linked | None:
    return next((linked for linked in LINKED_COLLECTIONS if name.startswith(linked.prefix)), None)


def _renamed(name: str, collection: _Candidates, prefix: str) -> str:
    """The file's branch for the config's ``name``: the same field under the file's prefix."""
    return prefix + name[len(collection.prefix_of(name)):]


def _by_collection(branches: Iterable[str]) -> tuple[list[str], list[tuple[_Candidates, list[str]]]]:
    """``branches`` (sorted) split into those of no candidate collection and those of each collection."""
    branches = sorted(branches)
    owned = [(c, [b for b in branches if c.prefix_of(b)]) for c in _COLLECTIONS]
    return [b for b in branches if not any(c.prefix_of(b) for c in _COLLECTIONS)], [(c, n) for c, n in owned if n]


class NanoAODProcessor(JetProcessor):
    """Reads CMS NanoAOD: jets flattened over events, SVs and PF candidates attached per jet.

    Only the branches the config reads (plus the eta/phi branches that dR matching needs
    and the ordering branches of the matched collections) have to exist in every file, with
    the PF candidate prefix the file has; the index branches ``Jet_svIdx1/2`` and the
    ``JetPFCands_*`` association table are used in the files that have them. A config reading
    ``GenJet_*`` needs ``Jet_genJetIdx`` in every file as well (simulation only).
    """

    def config_branches(self) -> set[str]:
        """Branches the config reads: features, custom-feature inputs, truth and reference taggers."""
        return self.cfg.branches() | set(self.cfg.reference_branches())

    def required_branches(self, available: Collection[str] | None = None) -> set[str]:
        branches, owned = _by_collection(self.config_branches())
        required = set(branches)
        # a linked collection's fields are read through the jets' index branch
        required |= {linked.index_branch for linked in map(_linked_of, branches) if linked is not None}
        for collection, names in owned:
            prefix = collection.file_prefix(names, available)
            # dR matching (the fallback in files without links) needs the axes and the ordering
            # key; every NanoAOD with the collection has them.
            required |= {_renamed(name, collection, prefix) for name in names}
            required |= {"Jet_eta", "Jet_phi", f"{prefix}eta", f"{prefix}phi", f"{prefix}{collection.sort_field}"}
        return required

    def read_branches(self, available: Collection[str]) -> set[str]:
        # the links to SVs and PF candidates are read where a file has them
        links = {*SV_INDEX_BRANCHES, *PF_ASSOCIATION_BRANCHES}
        return (self.required_branches(available) | links) & set(available)

    def jet_table(self, events) -> ak.Array:
        source = events.metadata.get("filename", "")
        branches, owned = _by_collection(self.config_branches())
        jet_branches = [b for b in branches if b.startswith(JET_PREFIX)]
        if not jet_branches:
            raise ProcessorError(f"{self.cfg.path}: the config reads no Jet_* branch; NanoAODProcessor needs at "
                                 f"least the jet pt/eta and truth branches (Jet_pt, Jet_hadronFlavour, ...)")
        jets_per_event = ak.to_numpy(ak.num(events[jet_branches[0]], axis=1))
        table = {name: ak.flatten(events[name], axis=1) for name in jet_branches}
        for collection, names in owned:
            table.update(self._candidate_lists(events, collection, names, jets_per_event, source))
        _check_index_branches(branches, events.fields, source)
        for name in branches:
            if name.startswith(JET_PREFIX):
                continue
            linked = _linked_of(name)
            if linked is not None:
                table[name] = _linked_values(events, linked, name, jets_per_event, source)
            else:
                table[name] = _broadcast_event_branch(events[name], name, jets_per_event, source)
        return ak.zip(table, depth_limit=1)

    def _candidate_lists(self, events, collection: _Candidates, names: list[str], jets_per_event: np.ndarray,
                         source: str) -> dict[str, ak.Array]:
        """Each of the config's ``names`` as a list per jet, all with the same candidates."""
        fields = set(events.fields)
        prefix = collection.file_prefix(names, fields)
        links = collection.links(prefix)
        present = [b for b in links if b in fields]
        if present and len(present) != len(links):
            missing = sorted(set(links) - set(present))
            raise ProcessorError(f"{source}: has {', '.join(present)} but not {', '.join(missing)}; the jet -> "
                                 f"{prefix.rstrip('_')} links need both. Re-create the file or drop the partial "
                                 f"branches")
        file_names = {name: _renamed(name, collection, prefix) for name in names}
        for name in {*file_names.values(), f"{prefix}eta"}:
            if events[name].ndim != 2:
                raise ProcessorError(f"{source}: branch '{name}' is not a list per event; {prefix}* branches must "
                                     f"belong to the {collection.label} collection (counter n{prefix.rstrip('_')})")
        candidates_per_event = ak.to_numpy(ak.num(events[f"{prefix}eta"], axis=1))
        if not present:
            index, counts = matched_in_cone(events, prefix, f"{prefix}{collection.sort_field}", jets_per_event,
                                            candidates_per_event)
        elif collection.table is None:
            index, counts = index_links(events, links, jets_per_event, candidates_per_event)
        else:
            index, counts = association_links(events, links, jets_per_event, candidates_per_event)
        return {name: ak.unflatten(flat(events, file_name)[index], counts) for name, file_name in file_names.items()}


def _check_index_branches(branches: list[str], fields: Collection[str], source: str) -> None:
    """Refuse a chunk without the index branch of a linked collection the config reads."""
    for linked in LINKED_COLLECTIONS:
        names = [name for name in branches if name.startswith(linked.prefix)]
        if names and linked.index_branch not in fields:
            raise ProcessorError(f"{source}: {', '.join(names)} need '{linked.index_branch}', {linked.about}, and the "
                                 f"file lacks it; use simulated NanoAOD or remove them from the config")


def _linked_values(events, linked: _Linked, name: str, jets_per_event: np.ndarray, source: str) -> np.ndarray:
    """Branch ``name`` of the object each jet links to through ``linked.index_branch``, NaN for
    jets linked to none (index -1 or past the event's objects): floating point, so integer
    fields become float32 (small integers) or float64."""
    values = events[name]
    if values.ndim != 2:
        raise ProcessorError(f"{source}: branch '{name}' is not a list per event; {linked.prefix}* branches must "
                             f"belong to the {linked.prefix.rstrip('_')} collection (counter "
                             f"n{linked.prefix.rstrip('_')}) that {linked.index_branch} indexes")
    objects_per_event = ak.to_numpy(ak.num(values, axis=1))
    index, counts = index_links(events, (linked.index_branch,), jets_per_event, objects_per_event)
    flat_values = flat(events, name)
    out = np.full(len(counts), np.nan, dtype=np.result_type(flat_values.dtype, np.float32))
    out[counts > 0] = flat_values[index]
    return out


def _broadcast_event_branch(values: ak.Array, name: str, jets_per_event: np.ndarray, source: str) -> np.ndarray:
    """One event-level value repeated for each jet of its event."""
    if values.ndim != 1:
        collections = ", ".join([*(f"{prefix}*" for c in _COLLECTIONS for prefix in c.prefixes),
                                 *(f"{link.prefix}* (through {link.index_branch})" for link in LINKED_COLLECTIONS)])
        raise ProcessorError(
            f"{source}: branch '{name}' is a list per event, but NanoAODProcessor only attaches Jet_* and the "
            f"{collections} collections to jets; other branches must be one value per event (like PV_npvs). "
            f"Remove '{name}' from the config or derive a per-event quantity from it")
    return np.repeat(ak.to_numpy(values), jets_per_event)
