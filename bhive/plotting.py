"""Plots in CMS style (mplhep), always saved as PNG and PDF with the arrays behind them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402


def figure(**kwargs):
    """A figure and axes with mplhep's CMS style and the "Simulation Preliminary" label."""
    plt.style.use(mplhep.style.CMS)
    fig, ax = plt.subplots(**kwargs)
    mplhep.cms.label(ax=ax, data=False, text="Preliminary", rlabel="")
    return fig, ax


def save(fig, stem: Path, data: Mapping[str, Any]) -> list[Path]:
    """Write ``stem``.png, .pdf and .npz (the plotted arrays) atomically; closes the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for suffix in (".png", ".pdf", ".npz"):
            final = stem.with_suffix(suffix)
            handle, temporary = tempfile.mkstemp(dir=stem.parent, prefix=f".{final.name}.", suffix=suffix)
            os.close(handle)
            if suffix == ".npz":
                with open(temporary, "wb") as stream:
                    np.savez(stream, **{k: np.asarray(v) for k, v in data.items()})
            else:
                fig.savefig(temporary, format=suffix[1:], bbox_inches="tight")
            os.replace(temporary, final)
            written.append(final)
    finally:
        plt.close(fig)
    return written


def plot_spectra(counts_before, counts_after, bins_pt, bins_eta, labels: Sequence[str], directory: Path) -> list[Path]:
    """pt and eta spectra per label, before and after reweighting, normalised to unit area."""
    written = []
    for axis_name, edges, sum_axis, log in (("pt", bins_pt, 2, True), ("eta", bins_eta, 1, False)):
        for when, counts in (("before", counts_before), ("after", counts_after)):
            projections = np.asarray(counts).sum(axis=sum_axis)
            widths = np.diff(np.asarray(edges, dtype=np.float64))
            fig, ax = figure()
            for label, values in zip(labels, projections):
                total = values.sum()
                # a density, so that variable bin widths do not distort the shape
                density = values / (total * widths) if total > 0 else values
                mplhep.histplot(density, np.asarray(edges), ax=ax, label=label)
            ax.set_xlabel("jet $p_T$ [GeV]" if axis_name == "pt" else r"jet $\eta$")
            ax.set_ylabel("fraction of jets / GeV" if axis_name == "pt" else "fraction of jets / unit")
            if log:
                ax.set_yscale("log")
                ax.set_xscale("log")
            ax.legend(title=f"{when} reweighting")
            data = {"edges": np.asarray(edges), "labels": np.asarray(labels), "counts": projections}
            written += save(fig, directory / f"{axis_name}_{when}", data)
    return written
