"""ZLIB baskets inflated by ISA-L: the same arrays as zlib's, and nothing uproot writes changes."""

import awkward as ak
import isal.isal_zlib
import numpy as np
import pytest
import uproot

from bhive import decompression


@pytest.fixture
def inflater(monkeypatch):
    """uproot's ZLIB inflater, put back as it was after the test."""
    inflater = uproot.compression._decompress_ZLIB
    monkeypatch.setattr(inflater, "library", "zlib")
    return inflater


@pytest.fixture
def zlib_file(tmp_path):
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 20, 5000)
    path = tmp_path / "zlib.root"
    with uproot.recreate(path, compression=uproot.ZLIB(1)) as file:
        file["tree"] = {"pt": rng.exponential(30, 5000).astype(np.float32),
                        "cand": ak.unflatten(rng.normal(size=counts.sum()).astype(np.float32), counts)}
    return path


def read(path):
    with uproot.open(path) as file:
        return file["tree"].arrays(["pt", "cand"], library="ak")


def test_isal_inflates_the_baskets_to_the_same_arrays(inflater, zlib_file, monkeypatch):
    by_zlib = read(zlib_file)
    calls = []
    original = isal.isal_zlib.decompress
    monkeypatch.setattr(isal.isal_zlib, "decompress", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert decompression.inflate_zlib_with_isal()
    by_isal = read(zlib_file)
    assert calls, "uproot did not inflate through ISA-L: its inflater no longer reads the library set here"
    assert ak.array_equal(by_isal, by_zlib)
    assert decompression.inflate_zlib_with_isal()  # a second call changes nothing


def test_what_uproot_compresses_is_unchanged(inflater):
    data = np.random.default_rng(2).normal(size=20_000).astype(np.float32).tobytes()
    before = uproot.compression.compress(data, uproot.ZLIB(1))
    decompression.inflate_zlib_with_isal()
    assert uproot.ZLIB(1).library == "zlib"
    assert uproot.compression.compress(data, uproot.ZLIB(1)) == before


def test_without_isal_zlib_stays(inflater, monkeypatch):
    monkeypatch.setattr(decompression.importlib.util, "find_spec", lambda name: None)
    assert not decompression.inflate_zlib_with_isal()
    assert inflater.library == "zlib"
