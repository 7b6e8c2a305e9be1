"""Processor for flat jet ntuples with one tree entry per jet (DeepNtuples, HLT b-tag ntuples)."""

from __future__ import annotations

import awkward as ak

from processors.base import JetProcessor


class DeepNtupleProcessor(JetProcessor):
    """Reads the configured branches as they are: scalars per jet, candidate lists per jet."""

    def jet_table(self, events) -> ak.Array:
        return ak.zip({name: events[name] for name in sorted(self.required_branches())}, depth_limit=1)
