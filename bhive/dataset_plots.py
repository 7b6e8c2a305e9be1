"""The plots of a dataset under construction: the pt and eta spectra per label before and
after reweighting, and the closure of the weights on the pieces' jets.

They need the weights, not the shards: with several cores they are drawn while another
process merges the shards. What they need of the config comes as :class:`PlotSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bhive import collector, pieces, plotting, reweighting
from bhive.dataset import EVENT_WEIGHT


@dataclasses.dataclass(frozen=True)
class PlotSettings:
    """The config's truth labels, reference label, pt and eta bins, and whether jets carry an
    event weight."""

    labels: tuple[str, ...]
    reference: str
    bins_pt: tuple[float, ...]
    bins_eta: tuple[float, ...]
    event_weight: bool


@collector.long_lived_objects_frozen()
def draw(settings: PlotSettings, piece_dirs: Sequence[Path], histograms: np.ndarray, weights: np.ndarray,
         directory: Path) -> list[Path]:
    """The spectra before and after reweighting (from the summed ``histograms``) and the
    closure of ``weights`` on the pieces' jets, under ``directory``; returns the files written."""
    paths = plotting.plot_spectra(histograms, reweighting.reweighted_histograms(histograms, weights),
                                  settings.bins_pt, settings.bins_eta, settings.labels, directory)
    closure = closure_spectra(settings, piece_dirs, weights)
    return paths + plotting.plot_closure(*closure, settings.bins_pt, settings.bins_eta, settings.labels,
                                         settings.reference, directory)


def closure_spectra(settings: PlotSettings, piece_dirs: Sequence[Path],
                    weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted pt and eta spectra per label in bins finer than the weights' (jet weight times
    event weight), read from the pieces' per-jet records."""
    total_pt = total_eta = 0.0
    for piece in piece_dirs:
        # as stored, in shard-key order: histograms do not depend on the order of the jets
        jets = pieces.load_jets(piece)
        pt, eta, truth = jets["kinematics"][:, 0], jets["kinematics"][:, 1], jets["truth"]
        weight = reweighting.jet_weights(weights, pt, eta, truth, settings.bins_pt,
                                         settings.bins_eta).astype(np.float64)
        if settings.event_weight:
            weight *= jets[EVENT_WEIGHT]
        pt_spectra, eta_spectra = reweighting.closure_histograms(pt, eta, truth, weight, settings.bins_pt,
                                                                 settings.bins_eta, len(settings.labels))
        total_pt, total_eta = total_pt + pt_spectra, total_eta + eta_spectra
    return np.asarray(total_pt), np.asarray(total_eta)
