"""Tests for CMS-style plots saved with their data (bhive.plotting)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bhive import plotting

LABELS = ["b", "c", "uds", "g"]
BINS_PT = np.array([20.0, 30.0, 50.0, 100.0, 250.0, 1000.0])
BINS_ETA = np.array([-2.5, -1.0, 0.0, 1.0, 2.5])


@pytest.fixture
def counts() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    before = rng.integers(0, 500, size=(len(LABELS), len(BINS_PT) - 1, len(BINS_ETA) - 1)).astype(np.float64)
    after = before * rng.random(before.shape)
    return before, after


def test_plotting_never_needs_a_display() -> None:
    assert matplotlib.get_backend().lower() == "agg"


def test_figure_carries_the_cms_simulation_label() -> None:
    fig, ax = plotting.figure()
    texts = [text.get_text() for text in ax.texts]
    assert "CMS" in texts and "Simulation Preliminary" in texts
    assert not any("fb" in text for text in texts)  # no luminosity
    plt.close(fig)


@pytest.mark.parametrize("log_y", [False, True])
def test_the_label_is_placed_as_mplhep_places_it_after_drawing_the_figure(log_y) -> None:
    """plotting.figure keeps mplhep from drawing the empty figure before it places the label;
    the saved figure must be the one mplhep makes with that drawing, pixel for pixel."""
    import mplhep

    def finished(fig, ax) -> np.ndarray:
        for index in range(3):
            mplhep.histplot(np.linspace(1, 2, 20) * (index + 1), np.arange(21), ax=ax, label=f"label {index}",
                            histtype="step")
        if log_y:
            ax.set_yscale("log")
        ax.legend(title="before reweighting")
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba()).copy()
        plt.close(fig)
        return pixels

    ours = finished(*plotting.figure())
    mplhep.style.use("CMS")
    fig, ax = plt.subplots()
    mplhep.cms.label(ax=ax, data=False, text="Preliminary", rlabel="")
    np.testing.assert_array_equal(ours, finished(fig, ax))


def test_figure_passes_subplot_arguments() -> None:
    fig, axes = plotting.figure(ncols=2, figsize=(12, 6))
    assert len(axes) == 2 and tuple(fig.get_size_inches()) == (12, 6)
    plt.close(fig)


def test_save_writes_png_pdf_and_npz_and_closes_the_figure(tmp_path: Path) -> None:
    fig, ax = plotting.figure()
    x = np.linspace(0, 1, 11)
    ax.plot(x, x ** 2)
    stem = tmp_path / "deep" / "nested" / "curve_0.5"
    written = plotting.save(fig, stem, {"x": x, "y": x ** 2, "name": "parabola"})
    assert [p.name for p in written] == ["curve_0.5.png", "curve_0.5.pdf", "curve_0.5.npz"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written[1].read_bytes()[:5] == b"%PDF-"
    with np.load(written[2]) as data:
        np.testing.assert_array_equal(data["x"], x)
        np.testing.assert_array_equal(data["y"], x ** 2)
        assert str(data["name"]) == "parabola"
    assert sorted(p.name for p in stem.parent.iterdir()) == sorted(p.name for p in written)  # no temporaries
    assert not plt.fignum_exists(fig.number)


def test_saved_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        fig, _ = plotting.figure()
        written = plotting.save(fig, tmp_path / "p", {"x": [1, 2]})
    finally:
        os.umask(previous)
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in written)


def test_save_refuses_data_that_would_need_pickle(tmp_path: Path) -> None:
    fig, _ = plotting.figure()
    with pytest.raises(ValueError, match="plot data 'ragged' for roc"):
        plotting.save(fig, tmp_path / "roc", {"ragged": [np.zeros(2), np.zeros(3)]})
    assert not any(tmp_path.iterdir())
    assert not plt.fignum_exists(fig.number)


def test_save_replaces_an_earlier_plot(tmp_path: Path) -> None:
    for value in (1.0, 2.0):
        fig, ax = plotting.figure()
        ax.axhline(value)
        plotting.save(fig, tmp_path / "line", {"value": value})
    with np.load(tmp_path / "line.npz") as data:
        assert float(data["value"]) == 2.0
    assert len(list(tmp_path.iterdir())) == 3


def test_plot_spectra_writes_four_plots_with_their_projections(tmp_path: Path, counts) -> None:
    before, after = counts
    directory = tmp_path / "plots"
    written = plotting.plot_spectra(before, after, BINS_PT, BINS_ETA, LABELS, directory)
    stems = ["pt_before", "pt_after", "eta_before", "eta_after"]
    assert sorted(p.name for p in written) == sorted(f"{s}{ext}" for s in stems for ext in (".png", ".pdf", ".npz"))
    for path in written:
        assert path.parent == directory and path.stat().st_size > 1000
    expected = {
        "pt_before": (before.sum(axis=2), BINS_PT), "pt_after": (after.sum(axis=2), BINS_PT),
        "eta_before": (before.sum(axis=1), BINS_ETA), "eta_after": (after.sum(axis=1), BINS_ETA),
    }
    for stem, (projection, edges) in expected.items():
        with np.load(directory / f"{stem}.npz") as data:
            assert list(data["labels"]) == LABELS
            np.testing.assert_array_equal(data["edges"], edges)
            np.testing.assert_allclose(data["counts"], projection)
            # the plotted curves are unit-area densities of those projections
            np.testing.assert_allclose((data["density"] * np.diff(edges)).sum(axis=1), 1.0)
            np.testing.assert_allclose(data["density"] * np.diff(edges) * projection.sum(axis=1, keepdims=True),
                                       projection)


def plotted_axes(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, str, list[str]]]:
    """Record (x scale, y scale, legend labels) of every figure plot_spectra saves, by file stem."""
    seen: dict[str, tuple[str, str, list[str]]] = {}
    original = plotting.save

    def record(fig, stem, data):
        ax = fig.axes[0]
        seen[Path(stem).name] = (ax.get_xscale(), ax.get_yscale(), ax.get_legend_handles_labels()[1])
        return original(fig, stem, data)

    monkeypatch.setattr(plotting, "save", record)
    return seen


def test_plot_spectra_uses_log_axes_for_pt_only(tmp_path: Path, counts, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = plotted_axes(monkeypatch)
    plotting.plot_spectra(*counts, BINS_PT, BINS_ETA, LABELS, tmp_path)
    log, linear = ("log", "log", LABELS), ("linear", "linear", LABELS)
    assert seen == {"pt_before": log, "eta_before": linear, "pt_after": log, "eta_after": linear}


def test_pt_axis_stays_linear_in_x_when_bins_start_at_zero(tmp_path: Path, counts,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen = plotted_axes(monkeypatch)
    plotting.plot_spectra(*counts, np.concatenate([[0.0], BINS_PT[1:]]), BINS_ETA, LABELS, tmp_path)
    assert seen["pt_before"] == ("linear", "log", LABELS)


def test_plot_spectra_checks_shapes(tmp_path: Path, counts) -> None:
    before, after = counts
    with pytest.raises(ValueError, match="do not match 3 labels"):
        plotting.plot_spectra(before, after, BINS_PT, BINS_ETA, LABELS[:3], tmp_path)
    assert not any(tmp_path.iterdir())
