"""Plots in CMS style (mplhep), always saved as PNG and PDF with the arrays behind them.

The Agg backend is selected on import, so plotting never needs a display (batch nodes, CI).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bhive.store import atomic_write  # noqa: E402

FORMATS = (".png", ".pdf")


def figure(**kwargs: Any) -> tuple[Figure, Axes]:
    """A figure and axes in mplhep's CMS style, labelled "CMS Simulation Preliminary".

    ``kwargs`` go to ``plt.subplots``. The style is applied globally (as ``mplhep.style.use``
    does), because line widths and fonts are read when artists are drawn, after this returns.
    """
    mplhep.style.use("CMS")
    fig, ax = plt.subplots(**kwargs)
    axes = np.atleast_1d(ax).flat[0]
    # rlabel="" drops the luminosity/energy text: these plots are simulation without a lumi. The
    # label is placed on empty axes, whose offset text ("x10^n") is empty: the adjustment for it
    # would draw the whole figure once more to measure nothing
    with _no_canvas_draws(fig):
        mplhep.cms.label(ax=axes, data=False, text="Preliminary", rlabel="", scilocator_adjust=False)
    return fig, ax


@contextlib.contextmanager
def _no_canvas_draws(fig: Figure) -> Iterator[None]:
    """The figure's canvas does not draw in the block. mplhep draws the whole (empty) figure
    before it places the text after "CMS", for the text's size; that size comes from the
    renderer, not from a drawing, and the files come out the same byte for byte without it
    (a test checks), at a quarter of the time to make a figure."""
    fig.canvas.draw = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del fig.canvas.draw


def _npz_arrays(data: Mapping[str, Any], stem: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, value in data.items():
        try:
            array = np.asarray(value)
            # object arrays would need pickle to load again, which the saved data must never require
            regular = array.dtype != object
        except ValueError:  # ragged nested sequences
            regular = False
        if not regular:
            raise ValueError(f"plot data '{key}' for {stem.name} is not a regular numeric or string array; "
                             f"pass equal-length rows or save the items under separate keys")
        arrays[key] = array
    return arrays


def save(fig: Figure, stem: Path, data: Mapping[str, Any]) -> list[Path]:
    """Write ``stem``.png, ``stem``.pdf and ``stem``.npz (the plotted arrays); closes the figure.

    Each file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated plot behind. Parent directories are created. Returns the paths written.
    """
    stem = Path(stem)
    written: list[Path] = []
    try:
        arrays = _npz_arrays(data, stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (*FORMATS, ".npz"):
            # appended rather than with_suffix, so that a stem like "eff_0.5" keeps its name
            final = stem.parent / f"{stem.name}{suffix}"
            with atomic_write(final, "wb") as stream:
                if suffix == ".npz":
                    np.savez(stream, **arrays)
                else:
                    fig.savefig(stream, format=suffix[1:])
            written.append(final)
    finally:
        plt.close(fig)
    return written


_AXES = {
    # name: (axis of the (label, pt, eta) counts summed away, x label, y label, log y)
    "pt": (2, r"jet $p_T$ [GeV]", "fraction of jets / GeV", True),
    "eta": (1, r"jet $\eta$", "fraction of jets / unit $\\eta$", False),
}


def plot_spectra(counts_before: np.ndarray, counts_after: np.ndarray, bins_pt: Sequence[float],
                 bins_eta: Sequence[float], labels: Sequence[str], directory: Path) -> list[Path]:
    """pt and eta spectra per label, before and after reweighting, each normalised to unit area.

    ``counts_*`` have shape (n_labels, n_pt_bins, n_eta_bins). Writes ``pt_before``,
    ``pt_after``, ``eta_before`` and ``eta_after`` (PNG, PDF, npz) under ``directory``; each
    npz holds ``edges``, ``labels``, the projections ``counts`` (n_labels, n_bins) and the
    plotted ``density``. Returns the paths written.
    """
    directory = Path(directory)
    labels = list(labels)
    edges_of = {"pt": np.asarray(bins_pt, dtype=np.float64), "eta": np.asarray(bins_eta, dtype=np.float64)}
    written: list[Path] = []
    for when, counts in (("before", counts_before), ("after", counts_after)):
        counts = np.asarray(counts, dtype=np.float64)
        expected = (len(labels), len(bins_pt) - 1, len(bins_eta) - 1)
        if counts.shape != expected:
            raise ValueError(f"{when}-reweighting histograms of shape {counts.shape} do not match "
                             f"{len(labels)} labels x bins_pt x bins_eta {expected}")
        for name, (summed_axis, xlabel, ylabel, log_y) in _AXES.items():
            edges = edges_of[name]
            projections = counts.sum(axis=summed_axis)
            density = _density(projections, edges)
            fig, ax = figure()
            for label, values in zip(labels, density):
                mplhep.histplot(values, edges, ax=ax, label=label, histtype="step")
            _spectrum_axes(ax, edges, xlabel, ylabel, log_y and (density > 0).any())
            ax.legend(title=f"{when} reweighting")
            data = {"edges": edges, "labels": np.asarray(labels, dtype=str), "counts": projections,
                    "density": density}
            written += save(fig, directory / f"{name}_{when}", data)
    return written


def _density(spectra: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each row as a density: unit area, so that variable bin widths do not distort the shape."""
    totals = spectra.sum(axis=1, keepdims=True)
    return np.divide(spectra, totals * np.diff(edges), out=np.zeros_like(spectra), where=totals > 0)


def _spectrum_axes(ax: Axes, edges: np.ndarray, xlabel: str, ylabel: str, log_y: bool) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(edges[0], edges[-1])
    if log_y:
        ax.set_yscale("log")
    # pt bins widen towards the tail; on a linear axis the low-pt bins, where most jets are,
    # would shrink to slivers
    if log_y and edges[0] > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def plot_closure(pt_spectra: np.ndarray, eta_spectra: np.ndarray, bins_pt: Sequence[float],
                 bins_eta: Sequence[float], labels: Sequence[str], reference: str, directory: Path) -> list[Path]:
    """Weighted pt and eta spectra per label in bins finer than the weights' (from
    :func:`bhive.reweighting.closure_histograms`), with each label's ratio to the reference label
    below: ``closure_pt`` and ``closure_eta`` (PNG, PDF, npz with ``edges``, ``labels``,
    ``spectra``, ``density`` and ``ratio``)."""
    from bhive.reweighting import closure_edges

    labels = list(labels)
    written: list[Path] = []
    for name, spectra, bins in (("pt", pt_spectra, bins_pt), ("eta", eta_spectra, bins_eta)):
        edges = closure_edges(bins)
        spectra = np.asarray(spectra, dtype=np.float64)
        density = _density(spectra, edges)
        reference_density = density[labels.index(reference)]
        ratio = np.divide(density, reference_density, out=np.full_like(density, np.nan),
                          where=reference_density > 0)
        _, xlabel, ylabel, log_y = _AXES[name]
        fig, (top, bottom) = figure(nrows=2, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
        for label, values, row in zip(labels, density, ratio):
            mplhep.histplot(values, edges, ax=top, label=label, histtype="step")
            mplhep.histplot(np.nan_to_num(row, nan=0.0), edges, ax=bottom, histtype="step")
        _spectrum_axes(top, edges, "", ylabel, log_y and (density > 0).any())
        _spectrum_axes(bottom, edges, xlabel, f"ratio to {reference}", False)
        if log_y and edges[0] > 0:
            bottom.set_xscale("log")
        bottom.axhline(1.0, color="grey", linewidth=1)
        bottom.set_ylim(0.5, 1.5)
        top.legend(title="after reweighting, finer bins", fontsize="small")
        data = {"edges": edges, "labels": np.asarray(labels, dtype=str), "spectra": spectra, "density": density,
                "ratio": ratio}
        written += save(fig, Path(directory) / f"closure_{name}", data)
    return written
