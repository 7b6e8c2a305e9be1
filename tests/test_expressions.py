"""Tests for custom feature expressions in a restricted namespace (bhive.expressions)."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from bhive.config import expression_branches
from bhive.expressions import ExpressionError, evaluate, validate


@pytest.fixture
def columns() -> dict:
    return {
        "jet_pt": np.array([20.0, 45.0, 130.0]),
        "jet_eta": np.array([0.1, -1.2, 2.3]),
        "nsv": np.array([0, 1, 3]),
        "pfcand_pt": ak.Array([[5.0, 3.0, 1.0], [], [40.0, 2.0]]),
    }


@pytest.mark.parametrize("expression, expected", [
    ("np.log(jet_pt)", lambda c: np.log(c["jet_pt"])),
    ("jet_pt * np.cosh(jet_eta)", lambda c: c["jet_pt"] * np.cosh(c["jet_eta"])),
    ("numpy.abs(jet_eta) < 1.5", lambda c: np.abs(c["jet_eta"]) < 1.5),
    ("(nsv > 0) & (jet_pt >= 45)", lambda c: (c["nsv"] > 0) & (c["jet_pt"] >= 45)),
    ("-jet_eta ** 2 + 1e-3", lambda c: -c["jet_eta"] ** 2 + 1e-3),
    ("np.where(nsv > 0, jet_pt, -1.0)", lambda c: np.where(c["nsv"] > 0, c["jet_pt"], -1.0)),
    ("np.clip(jet_pt, 30, 100)", lambda c: np.clip(c["jet_pt"], 30, 100)),
    ("np.linalg.norm(np.stack([jet_pt, jet_eta]), axis=0)",
     lambda c: np.linalg.norm(np.stack([c["jet_pt"], c["jet_eta"]]), axis=0)),
    ("jet_pt[::2]", lambda c: c["jet_pt"][::2]),
    ("np.pi * jet_eta", lambda c: np.pi * c["jet_eta"]),
])
def test_numpy_expressions(columns: dict, expression: str, expected) -> None:
    np.testing.assert_allclose(evaluate(expression, columns, "feature"), expected(columns))


def test_jagged_candidate_features(columns: dict) -> None:
    counts = evaluate("ak.num(pfcand_pt, axis=1)", columns, "n_pf")
    assert ak.to_list(counts) == [3, 0, 2]
    fraction = evaluate("pfcand_pt / jet_pt", columns, "pf_frac")
    assert ak.to_list(fraction) == [[0.25, 0.15, 0.05], [], [40.0 / 130.0, 2.0 / 130.0]]
    leading = evaluate("ak.fill_none(ak.firsts(awkward.sort(pfcand_pt, axis=1, ascending=False)), 0)",
                       columns, "leading_pf")
    assert ak.to_list(leading) == [5.0, 0.0, 40.0]
    log_pt = evaluate("np.log(pfcand_pt)", columns, "log_pf")
    assert ak.to_list(ak.num(log_pt, axis=1)) == [3, 0, 2]
    padded = evaluate("ak.pad_none(pfcand_pt, 2, clip=True)[:, 0]", columns, "first_pf")
    assert ak.to_list(padded) == [5.0, None, 40.0]


def test_only_the_branches_read_are_needed(columns: dict) -> None:
    # expression_branches (used to decide what to read) and evaluate agree on what a branch is
    expression = "np.log(jet_pt) + ak.num(pfcand_pt, axis=1)"
    assert expression_branches(expression) == {"jet_pt", "pfcand_pt"}
    needed = {key: columns[key] for key in expression_branches(expression)}
    assert ak.to_list(evaluate(expression, needed, "x")) == pytest.approx(
        list(np.log(columns["jet_pt"]) + np.array([3, 0, 2])))


def test_module_names_are_not_shadowed_by_a_branch(columns: dict) -> None:
    columns = {**columns, "np": np.array([1.0, 2.0, 3.0])}
    np.testing.assert_allclose(evaluate("np.sqrt(jet_pt)", columns, "f"), np.sqrt(columns["jet_pt"]))


@pytest.mark.parametrize("expression, message", [
    ('__import__("os")', r"'__import__' cannot be called"),
    ("().__class__", r"private attribute '__class__'"),
    ("().__class__.__bases__[0].__subclasses__()", r"private attribute"),
    ('open("x")', r"'open' cannot be called"),
    ("open(1)", r"'open' cannot be called"),
    ("np._core", r"private attribute '_core'"),
    ("np.core._multiarray_umath", r"private attribute"),
    ("lambda: 1", r"Lambda is not allowed"),
    ("[x for x in jet_pt]", r"ListComp is not allowed"),
    ("{x: 1 for x in jet_pt}", r"DictComp is not allowed"),
    ("sum(x for x in jet_pt)", r"GeneratorExp is not allowed|'sum' cannot be called"),
    ("jet_pt if nsv else jet_eta", r"IfExp is not allowed"),
    ("(y := jet_pt)", r"NamedExpr is not allowed"),
    ("np.load('weights.npy')", r"only numbers and booleans are allowed as constants"),
    ("np.save(b'x', jet_pt)", r"only numbers and booleans"),
    ("jet_pt.tofile", r"attributes are only allowed on np/numpy/ak/awkward, not on 'jet_pt'"),
    ("np.log(jet_pt).tofile", r"attributes are only allowed on np/numpy/ak/awkward"),
    ("np.ndarray.tofile(jet_pt, 1)", r"'np.ndarray' is not a module"),
    ("np.not_a_function(jet_pt)", r"'np' has no attribute 'not_a_function'"),
    ("jet_pt(1)", r"'jet_pt' cannot be called"),
    ("np.stack(*jet_pt)", r"Starred is not allowed"),
    ("np.stack(**{'a': 1})", r"Dict is not allowed|'\*\*' arguments"),
    ("{jet_pt}", r"Set is not allowed"),
    ("f'{jet_pt}'", r"JoinedStr is not allowed"),
])
def test_refused_expressions(columns: dict, expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message) as error:
        evaluate(expression, columns, "evil", source="ntuple_3.root")
    assert "custom feature 'evil'" in str(error.value)
    assert "ntuple_3.root" in str(error.value)


def test_unknown_branch_names_feature_branch_and_file(columns: dict) -> None:
    with pytest.raises(ExpressionError) as error:
        evaluate("np.log(jet_mass)", columns, "log_mass", source="qcd_1.root")
    message = str(error.value)
    assert "unknown branch 'jet_mass'" in message
    assert "custom feature 'log_mass'" in message
    assert message.startswith("qcd_1.root: ")


def test_validate_checks_against_a_branch_list_without_data() -> None:
    validate("np.log(jet_pt) * ak.num(pfcand_pt, axis=1)", {"jet_pt", "pfcand_pt"}, "f")
    expected = r"f\.root: custom feature 'f' = 'np\.log\(jet_m\)': unknown branch 'jet_m'"
    with pytest.raises(ExpressionError, match=expected):
        validate("np.log(jet_m)", {"jet_pt"}, "f", source="f.root")
    with pytest.raises(ExpressionError, match="Lambda is not allowed"):
        validate("lambda: jet_pt", {"jet_pt"}, "f")


def test_builtins_are_not_reachable(columns: dict) -> None:
    # names that are builtins in normal Python are unknown branches here
    for name in ("len", "abs", "print", "__builtins__"):
        with pytest.raises(ExpressionError, match="unknown branch|cannot be called"):
            evaluate(f"{name}", columns, "f")


def test_syntax_error(columns: dict) -> None:
    with pytest.raises(ExpressionError, match=r"custom feature 'f' = 'np.log\(jet_pt': not a valid expression"):
        evaluate("np.log(jet_pt", columns, "f")


def test_statements_are_not_expressions(columns: dict) -> None:
    with pytest.raises(ExpressionError, match="not a valid expression"):
        evaluate("import os", columns, "f")


def test_evaluation_errors_name_feature_and_expression(columns: dict) -> None:
    with pytest.raises(ExpressionError) as error:
        evaluate("jet_pt + np.zeros(7)", columns, "broken", source="f.root")
    message = str(error.value)
    assert "custom feature 'broken' = 'jet_pt + np.zeros(7)'" in message
    assert "ValueError" in message and "f.root" in message
    assert isinstance(error.value.__cause__, ValueError)


def test_expression_error_is_a_value_error() -> None:
    assert issubclass(ExpressionError, ValueError)
