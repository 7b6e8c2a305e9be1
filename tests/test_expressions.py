"""Tests for custom feature expressions: the allow-list (bhive.expressions)."""

from __future__ import annotations

import inspect
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from bhive import expressions
from bhive.config import available_configs, load_config
from bhive.expressions import CONSTANTS, FUNCTIONS, ExpressionError, branches, evaluate, validate
from bhive.simulation.ntuple import branch_names

MODULES = {"np": np, "ak": ak}
# Parameters that must stay out of reach of a positional argument: they write into an
# argument (out, copy=False) or build objects from a type (dtype, like).
UNREACHABLE = {"out", "dtype", "copy", "like", "where", "initial", "highlevel", "behavior", "attrs"}


@pytest.fixture
def columns() -> dict:
    return {
        "jet_pt": np.array([20.0, 45.0, 130.0]),
        "jet_eta": np.array([0.1, -1.2, 2.3]),
        "jet_phi": np.array([3.0, -3.0, 0.5]),
        "nsv": np.array([0, 1, 3]),
        "pfcand_pt": ak.Array([[5.0, 3.0, 1.0], [], [40.0, 2.0]]),
        "pfcand_phi": ak.Array([[-3.0, 2.9, 0.0], [], [0.4, -2.8]]),
        "pfcand_d0": ak.Array([[0.1, -0.2, 0.3], [], [0.05, 1.0]]),
        "pfcand_d0Err": ak.Array([[0.01, -1.0, 0.1], [], [0.0, 0.5]]),
    }


def by_jet(values: np.ndarray, like: ak.Array) -> ak.Array:
    """Flat per-candidate values back into ``like``'s jets."""
    return ak.unflatten(values, ak.num(like, axis=1))


def wrap(delta: np.ndarray) -> np.ndarray:
    return np.arctan2(np.sin(delta), np.cos(delta))


# -- allowed expressions give what numpy gives by hand -------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("np.log(jet_pt)", lambda c: np.log(c["jet_pt"])),
    ("jet_pt * np.cosh(jet_eta)", lambda c: c["jet_pt"] * np.cosh(c["jet_eta"])),
    ("np.abs(jet_eta) < 1.5", lambda c: np.abs(c["jet_eta"]) < 1.5),
    ("(nsv > 0) & (jet_pt >= 45) | ~(jet_eta < 2)",
     lambda c: (c["nsv"] > 0) & (c["jet_pt"] >= 45) | ~(c["jet_eta"] < 2)),
    ("-jet_eta ** 2 + 1e-3", lambda c: -c["jet_eta"] ** 2 + 1e-3),
    ("jet_pt // 7 + jet_pt % 7 - (nsv ^ 1)", lambda c: c["jet_pt"] // 7 + c["jet_pt"] % 7 - (c["nsv"] ^ 1)),
    ("np.where(nsv > 0, jet_pt, -1.0)", lambda c: np.where(c["nsv"] > 0, c["jet_pt"], -1.0)),
    ("np.clip(jet_pt, 30, 100)", lambda c: np.clip(c["jet_pt"], 30, 100)),
    ("np.clip(jet_eta, -np.inf, 1)", lambda c: np.clip(c["jet_eta"], -np.inf, 1)),
    ("np.round(jet_eta, decimals=1)", lambda c: np.round(c["jet_eta"], decimals=1)),
    ("np.round(jet_eta, 1)", lambda c: np.round(c["jet_eta"], 1)),
    ("np.nan_to_num(np.log(nsv), neginf=-1)", lambda c: np.array([-1.0, 0.0, np.log(3)])),
    ("np.arctan2(jet_eta, jet_phi) + np.hypot(jet_eta, jet_phi)",
     lambda c: np.arctan2(c["jet_eta"], c["jet_phi"]) + np.hypot(c["jet_eta"], c["jet_phi"])),
    ("np.power(jet_pt, 0.5) == np.sqrt(jet_pt)", lambda c: np.ones(3, bool)),
    ("jet_pt[::2]", lambda c: c["jet_pt"][::2]),
    ("jet_pt[nsv > 0]", lambda c: c["jet_pt"][c["nsv"] > 0]),
    ("np.pi * jet_eta + np.e", lambda c: np.pi * c["jet_eta"] + np.e),
    ("(jet_phi - 0.5 + np.pi) % (2 * np.pi) - np.pi", lambda c: wrap(c["jet_phi"] - 0.5)),
    ("np.sum(jet_pt) + np.max(jet_eta, keepdims=True)", lambda c: np.sum(c["jet_pt"]) + np.max(c["jet_eta"])),
])
def test_numpy_expressions(columns: dict, expression: str, expected) -> None:
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(evaluate(expression, columns, "feature"), expected(columns))


def test_phirel_wraps_into_minus_pi_pi_per_candidate(columns: dict) -> None:
    phirel = evaluate("(pfcand_phi - jet_phi + np.pi) % (2 * np.pi) - np.pi", columns, "pfcand_phirel")
    assert ak.to_list(ak.num(phirel, axis=1)) == [3, 0, 2]
    flat, jet_phi = ak.to_numpy(ak.flatten(phirel)), np.repeat(columns["jet_phi"], [3, 0, 2])
    np.testing.assert_allclose(flat, wrap(ak.to_numpy(ak.flatten(columns["pfcand_phi"])) - jet_phi), atol=1e-12)
    assert np.all((flat >= -np.pi) & (flat < np.pi))


def test_significance_with_np_where_on_jagged_candidates(columns: dict) -> None:
    # the nanoaod_ak4 expression: no division by the -1 NanoAOD stores for candidates without a track
    value = evaluate("np.where(pfcand_d0Err > 0, pfcand_d0 / np.maximum(pfcand_d0Err, 1e-6), 0)", columns, "sig")
    d0, err = (ak.to_numpy(ak.flatten(columns[name])) for name in ("pfcand_d0", "pfcand_d0Err"))
    expected = np.where(err > 0, d0 / np.maximum(err, 1e-6), 0)
    assert ak.to_list(value) == ak.to_list(by_jet(expected, columns["pfcand_pt"]))


def test_jagged_candidate_features(columns: dict) -> None:
    pt = columns["pfcand_pt"]
    assert ak.to_list(evaluate("ak.num(pfcand_pt, axis=1)", columns, "n_pf")) == [3, 0, 2]
    fraction = evaluate("pfcand_pt / jet_pt", columns, "pf_frac")
    assert ak.to_list(fraction) == [[0.25, 0.15, 0.05], [], [40.0 / 130.0, 2.0 / 130.0]]
    leading = evaluate("ak.fill_none(ak.firsts(ak.sort(pfcand_pt, axis=1, ascending=False)), 0)", columns, "lead")
    assert ak.to_list(leading) == [5.0, 0.0, 40.0]
    log_pt = evaluate("np.log(pfcand_pt)", columns, "log_pf")
    assert ak.to_list(ak.num(log_pt, axis=1)) == [3, 0, 2]
    assert ak.to_list(evaluate("ak.pad_none(pfcand_pt, 2, clip=True)[:, 0]", columns, "first")) == [5.0, None, 40.0]
    assert ak.to_list(evaluate("ak.sum(pfcand_pt[pfcand_pt > 2], axis=1)", columns, "hard")) == [8.0, 0.0, 40.0]
    assert ak.to_list(evaluate("np.sum(pfcand_pt, axis=1)", columns, "np_sum")) == [9.0, 0.0, 42.0]
    assert ak.to_list(evaluate("ak.max(pfcand_pt, axis=1, mask_identity=False)", columns, "m")) == \
        [5.0, -np.inf, 40.0]
    mean = "ak.fill_none(ak.mean(pfcand_pt, axis=1, mask_identity=True), 0)"
    assert ak.to_list(evaluate(mean, columns, "m")) == [3.0, 0.0, 21.0]
    weighted = evaluate("ak.fill_none(ak.mean(pfcand_phi, pfcand_pt, axis=1, mask_identity=True), 0)", columns, "w")
    np.testing.assert_allclose(ak.to_numpy(weighted), [(-15 + 8.7) / 9, 0.0, (16 - 5.6) / 42])
    assert ak.to_list(evaluate("ak.argmax(pfcand_phi, axis=1)", columns, "a")) == [1, None, 0]
    assert ak.to_list(evaluate("ak.local_index(pfcand_pt, axis=1)", columns, "i")) == [[0, 1, 2], [], [0, 1]]
    assert ak.to_list(evaluate("ak.count(pfcand_pt, axis=1) - ak.count_nonzero(pfcand_pt > 2, axis=1)",
                               columns, "soft")) == [1, 0, 1]
    assert ak.to_list(evaluate("ak.any(pfcand_pt > 10, axis=1)", columns, "hard")) == [False, False, True]
    assert ak.to_list(evaluate("ak.where(pfcand_pt > 2, pfcand_pt, 0)", columns, "w")) == \
        [[5.0, 3.0, 0.0], [], [40.0, 0.0]]
    assert ak.to_list(evaluate("pfcand_pt[ak.argsort(pfcand_phi, axis=1)]", columns, "s")) == \
        ak.to_list(pt[ak.argsort(columns["pfcand_phi"], axis=1)])


def _elementwise() -> list[tuple[str, int]]:
    return [(name, signature.positional) for name, signature in FUNCTIONS["np"].items()
            if isinstance(getattr(np, name), np.ufunc)]


@pytest.mark.parametrize("name, n_inputs", _elementwise())
def test_every_elementwise_numpy_function_on_jagged_candidates(columns: dict, name: str, n_inputs: int) -> None:
    # values inside every function's domain except arccosh's, where NaN must come out as it does in numpy
    columns = {**columns, "x": columns["pfcand_pt"] / 50, "y": columns["pfcand_pt"] / 40 + 0.1}
    arguments = ("x", "y")[:n_inputs]
    with np.errstate(all="ignore"):
        value = evaluate(f"np.{name}({', '.join(arguments)})", columns, name)
        expected = getattr(np, name)(*(ak.to_numpy(ak.flatten(columns[a])) for a in arguments))
    assert ak.to_list(ak.num(value, axis=1)) == [3, 0, 2]
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(value)).astype(float), expected.astype(float))


# -- the allow-list itself ------------------------------------------------------------------

def test_listed_functions_exist_and_positional_arguments_cannot_reach_out_or_dtype() -> None:
    for module, functions in FUNCTIONS.items():
        for name, signature in functions.items():
            function = getattr(MODULES[module], name)
            assert callable(function) and not isinstance(function, type), f"{module}.{name}"
            if isinstance(function, np.ufunc):
                # a ufunc's positional argument after its inputs is `out`
                assert signature.positional == function.nin and not signature.keywords, f"{module}.{name}"
                continue
            parameters = inspect.signature(function).parameters
            positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            reachable = {p.name for p in positional[:signature.positional]}
            assert not reachable & UNREACHABLE, f"{module}.{name}: {reachable & UNREACHABLE}"
            assert signature.keywords <= set(parameters), f"{module}.{name}: {signature.keywords - set(parameters)}"
            assert not signature.keywords & UNREACHABLE, f"{module}.{name}"


def test_evaluation_exposes_only_the_listed_functions_and_constants() -> None:
    namespace = expressions._namespace()
    assert set(namespace) == set(FUNCTIONS)
    for module, functions in FUNCTIONS.items():
        assert set(vars(namespace[module])) == set(functions) | CONSTANTS.get(module, set())
    assert not hasattr(namespace["np"], "load") and not hasattr(namespace["np"], "savetxt")


def test_every_expression_in_the_shipped_configs_is_allowed() -> None:
    for name in available_configs():
        cfg = load_config(name)
        custom = {**cfg.global_custom_features}
        for group in cfg.candidate_groups.values():
            custom.update(group.custom_features)
        for target_name, target in cfg.regression_targets.items():  # value and baseline (nanoaod_ak4's raw pt)
            custom.update({f"regression_targets.{target_name}.{key}": expression for key, expression
                           in (("value", target.source), ("baseline", target.baseline)) if expression is not None})
        known = branch_names(cfg.simulate.branch_style) if cfg.simulate else None
        for feature, expression in custom.items():
            read = validate(expression, known, feature, source=name)
            assert read <= cfg.branches(), (name, feature)


def test_branches_are_what_an_expression_reads() -> None:
    expression = "np.log(jet_pt) + ak.num(pfcand_pt, axis=1) + np.pi"
    assert branches(expression) == {"jet_pt", "pfcand_pt"}
    with pytest.raises(ExpressionError, match="calling 'np.load'"):
        branches("np.load(jet_pt)")


def test_only_the_branches_read_are_needed(columns: dict) -> None:
    expression = "np.log(jet_pt) + ak.num(pfcand_pt, axis=1)"
    needed = {key: columns[key] for key in branches(expression)}
    assert ak.to_list(evaluate(expression, needed, "x")) == pytest.approx(
        list(np.log(columns["jet_pt"]) + np.array([3, 0, 2])))


# -- refused expressions --------------------------------------------------------------------

REFUSED = [
    # numpy/awkward I/O and pickle, the reason for the allow-list
    ("np.savetxt(np.str_(1), jet_pt)", "calling 'np.savetxt' is not allowed"),
    ("np.load(np.str_(1), allow_pickle=True)", "calling 'np.load' is not allowed"),
    ("np.save(b'x', jet_pt)", "calling 'np.save' is not allowed"),
    ("np.loadtxt(jet_pt)", "calling 'np.loadtxt'"),
    ("np.fromfile(jet_pt)", "calling 'np.fromfile'"),
    ("np.memmap(jet_pt)", "calling 'np.memmap'"),
    ("np.lib.npyio.savetxt(1, jet_pt)", "calling 'np.lib.npyio.savetxt'"),
    ("np.core.multiarray.frombuffer(jet_pt)", "calling 'np.core.multiarray.frombuffer'"),
    ("np.frompyfunc(np.log, 1, 1)", "calling 'np.frompyfunc'"),
    ("np.vectorize(np.log)(jet_pt)", "calling 'np.vectorize(np.log)'"),
    ("np.array(jet_pt, dtype=object)", "calling 'np.array'"),
    ("np.sum(jet_pt, dtype=object)", "keyword 'dtype' is not allowed for np.sum"),
    ("np.sqrt(jet_pt, jet_pt)", "np.sqrt takes at most 1 positional argument"),
    ("np.nan_to_num(jet_pt, False)", "np.nan_to_num takes at most 1 positional argument"),
    ("np.nan_to_num(jet_pt, copy=False)", "keyword 'copy' is not allowed"),
    ("np.sum(jet_pt, axis=jet_eta)", "keyword axis=jet_eta of np.sum must be a number"),
    ("ak.to_parquet(jet_pt, 1)", "calling 'ak.to_parquet'"),
    ("ak.from_parquet(1)", "calling 'ak.from_parquet'"),
    ("ak.Array(jet_pt)", "calling 'ak.Array'"),
    ("ak.num(jet_pt, highlevel=False)", "keyword 'highlevel' is not allowed"),
    ("numpy.log(jet_pt)", "calling 'numpy.log' is not allowed"),
    ("awkward.num(jet_pt)", "calling 'awkward.num'"),
    ("np.sqr(jet_pt)", "did you mean 'np.sqrt'?"),
    # attributes, private names, builtins
    ("np.linalg.__class__", "'np.linalg.__class__' is not allowed"),
    ("np.linalg", "'np.linalg' is not allowed"),
    ("jet_pt.__class__", "'jet_pt.__class__' is not allowed"),
    ("jet_pt.tofile", "'jet_pt.tofile' is not allowed"),
    ("np.log(jet_pt).tofile", "is not allowed; the only attributes are the constants"),
    ("().__class__.__bases__[0].__subclasses__()", "calling"),
    ("np._core", "'np._core' is not allowed"),
    ("np.pi(1)", "calling 'np.pi' is not allowed"),
    ('__import__("os")', "calling '__import__' is not allowed"),
    ("__builtins__", "the name '__builtins__' is not allowed"),
    ("getattr(np, 1)", "calling 'getattr' is not allowed"),
    ('open("x")', "calling 'open' is not allowed"),
    ("jet_pt(1)", "calling 'jet_pt' is not allowed"),
    ("np", "'np' can only be used as np.<function>(...)"),
    ("np.log(ak)", "'ak' can only be used as ak.<function>(...)"),
    # constants that are not numbers
    ("'jet_pt'", "the string 'jet_pt' is not allowed"),
    ("np.log(b'1')", "the bytes b'1' is not allowed"),
    ("jet_pt + None", "None is not allowed"),
    ("jet_pt[...]", "the constant Ellipsis is not allowed"),
    ("jet_pt * 1j", "the complex number 1j is not allowed"),
    # syntax that is not an expression over arrays
    ("(lambda: 1)()", "calling 'lambda: 1' is not allowed"),
    ("lambda: jet_pt", "a lambda ('lambda: jet_pt') is not allowed"),
    ("[x for x in jet_pt]", "a comprehension"),
    ("{x: 1 for x in jet_pt}", "a comprehension"),
    ("np.sum(x for x in jet_pt)", "a generator expression"),
    ("jet_pt if nsv else jet_eta", "use np.where(c, a, b)"),
    ("(y := jet_pt)", "an assignment (:=)"),
    ("np.hypot(*jet_pt)", "a starred argument"),
    ("np.sum(jet_pt, **{'axis': 0})", "'**' arguments"),
    ("{jet_pt}", "a set"),
    ("[jet_pt, jet_eta]", "a list"),
    ("(jet_pt, jet_eta)", "a tuple outside a subscript"),
    ("f'{jet_pt}'", "an f-string"),
    ("jet_pt and jet_eta", "use & and |"),
    ("not jet_pt", "use ~ for an elementwise not"),
    ("jet_pt in jet_eta", "the comparison in 'jet_pt in jet_eta' is not allowed"),
    ("jet_pt is jet_eta", "the comparison"),
    ("jet_pt @ jet_eta", "the operator in 'jet_pt @ jet_eta' is not allowed"),
    ("jet_pt << 1", "the operator"),
]


@pytest.mark.parametrize("expression, message", REFUSED)
def test_refused_expressions(columns: dict, expression: str, message: str) -> None:
    for check in (lambda: validate(expression, None, "evil", source="ntuple_3.root"),
                  lambda: evaluate(expression, columns, "evil", source="ntuple_3.root")):
        with pytest.raises(ExpressionError) as error:
            check()
        text = str(error.value)
        assert message in text
        assert text.startswith(f"ntuple_3.root: custom feature 'evil' = {expression!r}: ")
        assert "\n" not in text


def test_a_refused_expression_never_runs(columns: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for expression in ("np.savetxt(np.str_(1), jet_pt)", "np.save(np.str_(1), jet_pt)", "ak.to_parquet(jet_pt, 1)"):
        with pytest.raises(ExpressionError):
            evaluate(expression, columns, "evil")
    assert not list(tmp_path.iterdir())


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(ExpressionError, match="not a valid Python expression|nested too deeply"):
        validate("-" * 5000 + "jet_pt", None, "f")
    with pytest.raises(ExpressionError, match="nested too deeply") as error:
        validate(" + ".join(["jet_pt"] * 2000), None, "f")
    assert len(str(error.value)) < 400  # the expression is shortened in the message


# -- unknown branches, syntax and evaluation errors ---------------------------------------

def test_unknown_branch_names_feature_branch_and_file(columns: dict) -> None:
    with pytest.raises(ExpressionError) as error:
        evaluate("np.log(jet_ptt)", columns, "log_mass", source="qcd_1.root")
    message = str(error.value)
    assert "unknown branch 'jet_ptt'" in message and "did you mean 'jet_pt'?" in message
    assert "custom feature 'log_mass'" in message
    assert message.startswith("qcd_1.root: ")


def test_validate_checks_against_a_branch_list_without_data() -> None:
    assert validate("np.log(jet_pt) * ak.num(pfcand_pt, axis=1)", {"jet_pt", "pfcand_pt"}, "f") == \
        {"jet_pt", "pfcand_pt"}
    assert validate("np.log(anything)", None, "f") == {"anything"}
    expected = r"f\.root: custom feature 'f' = 'np\.log\(jet_m\)': unknown branch 'jet_m' \(not in the file\)"
    with pytest.raises(ExpressionError, match=expected):
        validate("np.log(jet_m)", {"jet_pt"}, "f", source="f.root", unknown_means="not in the file")


def test_builtins_are_not_reachable(columns: dict) -> None:
    # names that are builtins in normal Python are unknown branches here
    for name in ("len", "abs", "print"):
        with pytest.raises(ExpressionError, match="unknown branch"):
            evaluate(name, columns, "f")


def test_syntax_error(columns: dict) -> None:
    with pytest.raises(ExpressionError, match=r"custom feature 'f' = 'np.log\(jet_pt': not a valid Python expression"):
        evaluate("np.log(jet_pt", columns, "f")


def test_statements_are_not_expressions(columns: dict) -> None:
    with pytest.raises(ExpressionError, match="not a valid Python expression"):
        evaluate("import os", columns, "f")


def test_evaluation_errors_name_feature_and_expression(columns: dict) -> None:
    with pytest.raises(ExpressionError) as error:
        evaluate("jet_pt + pfcand_pt[:, 0]", columns, "broken", source="f.root")
    message = str(error.value)
    assert "custom feature 'broken' = 'jet_pt + pfcand_pt[:, 0]'" in message
    assert "evaluation failed" in message and "f.root" in message
    assert error.value.__cause__ is not None


def test_expression_error_is_a_value_error() -> None:
    assert issubclass(ExpressionError, ValueError)


def test_readme_lists_every_allowed_function() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Custom features", 1)[1].split("\n### ", 1)[0]
    words = set(section.replace("`", " ").replace(",", " ").replace("(", " ").replace(")", " ").split())
    for module, functions in FUNCTIONS.items():
        assert not set(functions) - words, (module, set(functions) - words)
    assert all(f"np.{name}" in section for name in CONSTANTS["np"])
