"""Flavour-labelling building blocks, checked against hand-written expectations."""

import numpy as np
import pytest

from bhive.simulation import hadrons
from bhive.simulation.ntuple import truth_branches


@pytest.mark.parametrize(
    "pdg_id, expected",
    [
        (511, 5), (-521, 5), (531, 5), (5122, 5), (-5232, 5), (10511, 5),  # B mesons and baryons
        (411, 4), (-421, 4), (431, 4), (4122, 4), (4332, 4),                # D mesons, charm baryons
        (443, 0), (553, 0), (100443, 0),                                    # quarkonia: no open flavour
        (211, 2), (321, 3), (310, 3), (3122, 3), (2212, 2),                 # light hadrons
        (5, 0), (21, 0), (11, 0), (22, 0), (5101, 0), (2203, 0),            # partons, leptons, diquarks
    ],
)
def test_heaviest_quark(pdg_id, expected):
    assert hadrons.heaviest_quark(np.array([pdg_id]))[0] == expected


def test_count_in_ranges_matches_a_loop():
    rng = np.random.default_rng(3)
    flags = rng.random(200) < 0.3
    first = rng.integers(-1, 200, 500)
    last = first + rng.integers(-2, 10, 500)
    last = np.minimum(last, 199)
    expected = [flags[f:l + 1].sum() if f >= 0 and l >= f else 0 for f, l in zip(first, last)]
    np.testing.assert_array_equal(hadrons.count_in_ranges(flags, first, last), expected)


def test_truth_flags_follow_the_cms_definitions():
    jets = {
        "hadron_flavour": np.array([5, 5, 5, 4, 0, 0, 0, 0, 0]),
        "parton_flavour": np.array([5, -5, 21, 4, 2, -3, 21, 5, 0]),
        "n_b_hadrons": np.array([1, 2, 1, 0, 0, 0, 0, 0, 0]),
        "leptonic_b": np.array([False, False, True, False, False, False, False, False, False]),
    }
    flags = truth_branches(jets)
    np.testing.assert_array_equal(flags["isB"], [1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(flags["isBB"], [0, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(flags["isLeptonicB"], [0, 0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(flags["isC"], [0, 0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(flags["isUDS"], [0, 0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(flags["isG"], [0, 0, 0, 0, 0, 0, 1, 0, 0])
    # a b parton without a B hadron, or no parton at all: no defined flavour
    np.testing.assert_array_equal(flags["isUndefined"], [0, 0, 0, 0, 0, 0, 0, 1, 1])
    exclusive = flags["isB"] + flags["isC"] + flags["isUDS"] + flags["isG"] + flags["isUndefined"]
    np.testing.assert_array_equal(exclusive, 1)
