"""Tests for truth rules on per-jet columns (bhive.truth)."""

from __future__ import annotations


import numpy as np
import pytest

from bhive.config import TruthCondition, TruthRule
from bhive.truth import TruthOverlapError, rule_matches, truth_index


def rule(label: str, **conditions: list) -> TruthRule:
    """A rule from ``branch=[alternatives]``; a bare value means ``==``."""
    return TruthRule(label, tuple(
        TruthCondition(branch, tuple(alt if isinstance(alt, tuple) else ("==", alt) for alt in alternatives))
        for branch, alternatives in conditions.items()))


# hadron-flavour style rules, mutually exclusive thanks to the isBB/isGBB vetoes
FLAVOUR_RULES = [
    rule("b", isB=[1], isBB=[0], isGBB=[0]),
    rule("bb", isBB=[1, 2]),
    rule("gbb", isGBB=[1], isBB=[0]),
    rule("c", hflav=[4]),
    rule("uds", hflav=[0], pflav=[1, 2, 3]),
    rule("g", hflav=[0], pflav=[21]),
]


def flavour_columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "isB": rng.integers(0, 2, n).astype(bool),
        "isBB": rng.integers(0, 3, n).astype(np.int32),
        "isGBB": rng.integers(0, 2, n).astype(np.int8),
        "hflav": rng.choice([0, 4, 5], n),
        "pflav": rng.choice([0, 1, 2, 3, 4, 5, 21], n),
    }


def per_jet_truth(columns: dict[str, np.ndarray], rules: list[TruthRule]) -> np.ndarray:
    """Independent reference: plain Python over jets, first matching rule, overlaps as -2."""
    ops = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
           ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}
    n = len(next(iter(columns.values())))
    out = []
    for jet in range(n):
        hits = [i for i, r in enumerate(rules)
                if all(any(ops[op](columns[c.branch][jet], v) for op, v in c.alternatives) for c in r.conditions)]
        out.append(hits[0] if len(hits) == 1 else (-1 if not hits else -2))
    return np.array(out)


def test_matches_a_per_jet_loop_on_random_columns() -> None:
    columns = flavour_columns(np.random.default_rng(1), 5000)
    # c and light rules do not veto isB: restrict to jets where hflav is consistent so there is no overlap
    columns["isB"] &= columns["hflav"] == 5
    columns["isGBB"] = np.where(columns["hflav"] == 5, columns["isGBB"], 0).astype(np.int8)
    columns["isBB"] = np.where(columns["hflav"] == 5, columns["isBB"], 0).astype(np.int32)
    expected = per_jet_truth(columns, FLAVOUR_RULES)
    assert (expected != -2).all()
    got = truth_index(columns, FLAVOUR_RULES)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == {-1, 0, 1, 2, 3, 4, 5}


def test_and_over_conditions_or_over_alternatives() -> None:
    columns = {"x": np.array([0, 1, 2, 3, 1]), "y": np.array([1, 1, 1, 0, 0])}
    r = rule("sig", x=[1, 3], y=[1])
    np.testing.assert_array_equal(rule_matches(columns, r), [False, True, False, False, False])
    np.testing.assert_array_equal(truth_index(columns, [r]), [-1, 0, -1, -1, -1])


@pytest.mark.parametrize("op, expected", [
    ("==", [0, -1, -1]), ("!=", [-1, 0, 0]), (">", [-1, -1, 0]),
    (">=", [0, -1, 0]), ("<", [-1, 0, -1]), ("<=", [0, 0, -1]),
])
def test_every_operator(op: str, expected: list[int]) -> None:
    columns = {"score": np.array([0.5, 0.2, 0.9])}
    np.testing.assert_array_equal(truth_index(columns, [rule("a", score=[(op, 0.5)])]), expected)


def test_range_from_two_conditions_on_the_same_branch() -> None:
    columns = {"pt": np.array([10.0, 30.0, 50.0, np.nan])}
    r = TruthRule("mid", (TruthCondition("pt", ((">=", 20.0),)), TruthCondition("pt", (("<", 40.0),))))
    np.testing.assert_array_equal(truth_index(columns, [r]), [-1, 0, -1, -1])


def test_boolean_and_float_columns_compare_with_numbers() -> None:
    columns = {"isB": np.array([True, False, True]), "frac": np.array([0.0, 1.0, 1.0], dtype=np.float32)}
    rules = [rule("b", isB=[1]), rule("other", isB=[0], frac=[(">", 0.5)])]
    np.testing.assert_array_equal(truth_index(columns, rules), [0, 1, 0])


def test_overlap_names_the_first_two_labels_the_count_and_the_file() -> None:
    columns = {"isB": np.array([1, 1, 0, 1]), "isBB": np.array([0, 1, 1, 1])}
    rules = [rule("light", isB=[0], isBB=[0]), rule("b", isB=[1]), rule("bb", isBB=[1])]
    with pytest.raises(TruthOverlapError) as error:
        truth_index(columns, rules, source="ntuple_7.root")
    message = str(error.value)
    assert "ntuple_7.root" in message
    assert "'b'" in message and "'bb'" in message and "'light'" not in message
    assert "2 jet(s)" in message
    assert "mutually exclusive" in message and "{isBB: [0]}" in message
    assert isinstance(error.value, ValueError)


def test_overlap_fixed_by_a_veto() -> None:
    columns = {"isB": np.array([1, 1, 0, 1]), "isBB": np.array([0, 1, 1, 1])}
    rules = [rule("b", isB=[1], isBB=[0]), rule("bb", isBB=[1])]
    np.testing.assert_array_equal(truth_index(columns, rules), [0, 1, 1, 1])


def test_missing_branch_names_branch_label_and_file() -> None:
    with pytest.raises(ValueError, match=r"f\.root: branch 'isC' needed by truth label 'c' is missing"):
        truth_index({"isB": np.zeros(3)}, [rule("b", isB=[1]), rule("c", isC=[1])], source="f.root")


def test_error_without_source_has_no_dangling_prefix() -> None:
    with pytest.raises(ValueError) as error:
        truth_index({}, [rule("b", isB=[1])])
    assert str(error.value).startswith("branch 'isB'")


def test_jagged_branch_is_refused() -> None:
    with pytest.raises(ValueError, match="one value per jet"):
        truth_index({"isB": np.zeros((3, 2))}, [rule("b", isB=[1])])


def test_branches_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        truth_index({"isB": np.zeros(3), "isC": np.zeros(4)}, [rule("b", isB=[1]), rule("c", isC=[1])])


def test_empty_input_gives_empty_int16() -> None:
    got = truth_index({"isB": np.zeros(0)}, [rule("b", isB=[1])])
    assert got.dtype == np.int16 and got.shape == (0,)


def test_large_input_gives_the_numpy_selection() -> None:
    columns = flavour_columns(np.random.default_rng(2), 2_000_000)
    rules = [rule("b", hflav=[5]), rule("c", hflav=[4]), rule("light", hflav=[0])]
    got = truth_index(columns, rules)
    np.testing.assert_array_equal(got, np.select([columns["hflav"] == 5, columns["hflav"] == 4], [0, 1], 2))
