"""Classification of PDG particle codes needed for jet flavour labelling.

Works on numpy arrays of PDG ids so that whole event records are classified at once.
The PDG numbering scheme encodes a hadron's quark content in the digits of ``|id| % 10000``:
mesons have ``n_q1 == 0`` and quarks ``(n_q2, n_q3)``, baryons have three non-zero quark
digits. Diquarks have ``n_q3 == 0`` and are not hadrons.
"""

from __future__ import annotations

import numpy as np

_QUARKS = (1, 2, 3, 4, 5)
_GLUON = 21
LEPTONS = (11, 13, 15)
NEUTRINOS = (12, 14, 16)


def heaviest_quark(pdg_id: np.ndarray) -> np.ndarray:
    """The heaviest quark flavour (1-5) in each hadron, 0 for anything that is not a hadron.

    Quarkonia (a meson made of a quark and its own antiquark, e.g. J/psi or Upsilon) carry
    no open flavour and return 0, as in the CMS hadron-flavour definition.
    """
    code = np.abs(np.asarray(pdg_id)) % 10000
    q1 = (code // 1000) % 10
    q2 = (code // 100) % 10
    q3 = (code // 10) % 10
    is_hadron = (q3 > 0) & (q2 > 0) & (np.abs(np.asarray(pdg_id)) > 100)
    is_quarkonium = (q1 == 0) & (q2 == q3)
    heaviest = np.maximum(np.maximum(q1, q2), q3)
    return np.where(is_hadron & ~is_quarkonium, heaviest, 0)


def is_b_hadron(pdg_id: np.ndarray) -> np.ndarray:
    return heaviest_quark(pdg_id) == 5


def is_c_hadron(pdg_id: np.ndarray) -> np.ndarray:
    return heaviest_quark(pdg_id) == 4


def is_parton(pdg_id: np.ndarray) -> np.ndarray:
    abs_id = np.abs(np.asarray(pdg_id))
    return np.isin(abs_id, _QUARKS) | (abs_id == _GLUON)


def is_charged_lepton(pdg_id: np.ndarray) -> np.ndarray:
    return np.isin(np.abs(np.asarray(pdg_id)), LEPTONS)


def is_neutrino(pdg_id: np.ndarray) -> np.ndarray:
    return np.isin(np.abs(np.asarray(pdg_id)), NEUTRINOS)


def count_in_ranges(flags: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """How many ``flags`` are set in each inclusive index range ``[first, last]``.

    A range with ``first < 0`` (no daughters) counts zero.

    Pythia stores the daughters of a hadron decay as a contiguous range of the event
    record, so "does this hadron decay into another B hadron" is a range count. A prefix
    sum answers every range at once instead of one Python loop per particle.
    """
    prefix = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    first = np.asarray(first)
    last = np.asarray(last)
    valid = (first >= 0) & (last >= first)
    counts = prefix[np.where(valid, last, 0) + 1] - prefix[np.where(valid, first, 0)]
    return np.where(valid, counts, 0)
