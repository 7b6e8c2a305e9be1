"""Pythia 8 set-up for the simulated processes.

Two kinds of hard process make the default sample: top-quark pairs (b jets from the top
decays, c and light jets from the W) and inclusive QCD dijets with a pT-hat bias so that
jets up to the TeV scale are present. Their pt/eta spectra differ by flavour, which is
exactly what the reference-class reweighting has to undo.

Particle decays are left at Pythia's defaults: B and D hadrons, K0S and Lambda all decay,
and the production vertices of their daughters are displaced, which is what impact
parameters and secondary vertices measure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import awkward as ak
import numpy as np

if TYPE_CHECKING:
    from bhive.config import SimulatedProcess

# Pythia accepts seeds in [1, 900_000_000].
MAX_PYTHIA_SEED = 900_000_000

_QUIET = (
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowInfo = 0",
    "Next:numberShowProcess = 0",
)

_PROCESS_SETTINGS = {
    "ttbar": ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on"),
    "qcd": ("HardQCD:all = on",),
}


def pythia_settings(process: SimulatedProcess, ecm_gev: float, seed: int) -> list[str]:
    """The full list of Pythia ``readString`` settings for one process and seed."""
    if not 1 <= seed <= MAX_PYTHIA_SEED:
        raise ValueError(f"Pythia seed {seed} outside [1, {MAX_PYTHIA_SEED}]")
    settings = [*_QUIET, f"Beams:eCM = {ecm_gev}", "Random:setSeed = on", f"Random:seed = {seed}"]
    settings += _PROCESS_SETTINGS[process.kind]
    settings.append(f"PartonLevel:MPI = {'on' if process.mpi else 'off'}")
    if process.pthat_min is not None:
        settings.append(f"PhaseSpace:pTHatMin = {process.pthat_min}")
    if process.pthat_bias_power is not None:
        settings += [
            "PhaseSpace:bias2Selection = on",
            f"PhaseSpace:bias2SelectionPow = {process.pthat_bias_power}",
            f"PhaseSpace:bias2SelectionRef = {process.pthat_min or 10.0}",
        ]
    # Expert overrides come last so that they win.
    settings += list(process.pythia_settings)
    return settings


class EventSource:
    """Batches of Pythia events (awkward arrays with ``prt`` and ``info`` fields)."""

    def __init__(self, process: SimulatedProcess, ecm_gev: float, seed: int) -> None:
        # Imported here so that modules using only the settings do not load Pythia.
        import pythia8mc

        self.process = process
        self._pythia = pythia8mc.Pythia("", False)
        for setting in pythia_settings(process, ecm_gev, seed):
            if not self._pythia.readString(setting):
                raise ValueError(
                    f"Pythia rejected the setting {setting!r} of simulated process "
                    f"'{process.name}'; check simulate.processes.{process.name}.pythia_settings"
                )
        if not self._pythia.init():
            raise RuntimeError(f"Pythia failed to initialise simulated process '{process.name}'")
        self._charges: dict[int, float] = {}

    def batches(self, events_per_batch: int) -> Iterator[ak.Array]:
        while True:
            yield self._pythia.nextBatch(events_per_batch)

    def charges(self, pdg_ids: np.ndarray) -> np.ndarray:
        """Electric charge (units of e) for each PDG id, looked up once per distinct id."""
        unique, inverse = np.unique(np.asarray(pdg_ids), return_inverse=True)
        data = self._pythia.particleData
        for pdg_id in unique.tolist():
            if pdg_id not in self._charges:
                self._charges[pdg_id] = float(data.charge(pdg_id))
        return np.array([self._charges[i] for i in unique.tolist()], dtype=np.float64)[inverse]
