"""The value types of the config schema and the one-line messages they fail with.

pydantic checks the structure of a config (sections, keys, nesting). The values are checked
here, so that a mistake reads in the words of the config ("expected an integer >= 1, got 0",
"did you mean 'jet_pt'?") and what YAML writes is taken (6e4 for 60000). A check fails with
:func:`fail`, naming the key path below the value it checks; bhive.config.files turns that into
a :class:`~bhive.config.ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import math
import re
from typing import Annotated, Any, Callable, Literal, NoReturn

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

TRUTH_OPERATORS = ("==", "!=", ">", ">=", "<", "<=")
CUT_KEYS = ("pt", "eta", "abs_eta")


def fail(problem: str, *at: str | int, kind: str = "config", **context: Any) -> NoReturn:
    """Fail a check; ``at`` is the key path below the value being checked."""
    raise PydanticCustomError(kind, "{problem}", {"problem": problem, "at": at, **context})


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    kind = "a number" if isinstance(value, (int, float)) else "a string" if isinstance(value, str) else \
        f"a {type(value).__name__}"
    return f"{kind} ({value!r})"


def suggest(word: str, choices: tuple[str, ...] | list[str], label: str = "Allowed") -> str:
    """"; did you mean 'x'? Allowed: a, b" (or ". Allowed: a, b" when nothing is close)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"{f'; did you mean {close[0]!r}?' if close else '.'} {label}: {', '.join(choices)}"


def _fmt(number: float) -> str:
    return repr(int(number)) if float(number).is_integer() else repr(number)


def _check(check: Callable[..., Any], **options: Any) -> BeforeValidator:
    # null is left to the field's type, so that a required key set to null reads as missing
    return BeforeValidator(lambda value: value if value is None else check(value, **options))


def number(value: Any, allowed: str = "a number", *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, whole: bool = False, inf: bool = False, bools: bool = False,
           at: tuple = ()) -> Any:
    """``value`` as a float (an int if ``whole``): ints are taken, strings are not, booleans only as 1/0
    with ``bools``, inf only with ``inf``."""
    if isinstance(value, bool) and bools:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"expected {allowed}, got {describe(value)}", *at)
    if whole and not (math.isfinite(value) and float(value).is_integer()):
        fail(f"expected {allowed}, got {value!r} (not a whole number)", *at)
    if (math.isnan(value) or (math.isinf(value) and not inf) or (gt is not None and not value > gt)
            or (ge is not None and not value >= ge) or (lt is not None and not value < lt)):
        fail(f"expected {allowed}, got {_fmt(value)}", *at)
    return int(value) if whole else float(value)


def Number(allowed: str = "a number", *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None) -> Any:
    """A float; ``allowed`` says which, e.g. "a number > 0"."""
    return Annotated[float, Field(gt=gt, ge=ge, lt=lt), _check(number, allowed=allowed, gt=gt, ge=ge, lt=lt)]


def Integer(low: int, allowed: str = "") -> Any:
    """An integer >= ``low``; YAML 1.2 reads 6e4 as a float, which is taken where it is whole."""
    return Annotated[int, Field(ge=low), _check(number, allowed=allowed or f"an integer >= {low}", ge=low,
                                                whole=True)]


def _text(value: Any, choices: tuple[str, ...] = (), what: str = "") -> str:
    if not isinstance(value, str) or not value:
        fail(f"expected {'one of: ' + ', '.join(choices) if choices else 'a non-empty string'}, got {describe(value)}")
    if choices and value not in choices:
        fail(f"{'unknown ' + what + ' ' if what else ''}{value!r}{suggest(value, choices)}")
    return value


def Text(*choices: str, what: str = "") -> Any:
    """A non-empty string; one of ``choices`` where they are given (``what`` names them in errors)."""
    return Annotated[Literal[choices] if choices else str, _check(_text, choices=choices, what=what)]


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        fail(f"expected true or false, got {describe(value)}")
    return value


def names(value: Any, what: str, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        fail(f"expected a list of {what}, got {describe(value)}")
    if not value and not allow_empty:
        fail(f"the list is empty; list at least one of the {what}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            fail(f"expected a non-empty string, got {describe(item)}", index)
        if item in value[:index]:
            fail(f"{item!r} is listed twice; each of the {what} may appear once", index)
    return tuple(value)


_AS_LIST = PlainSerializer(list)  # tuples are lists in Config.raw, as in the YAML
Name = Text()
Bool = Annotated[bool, _check(_bool)]
EMPTY_IF_NULL = BeforeValidator(lambda value: {} if value is None else value)
EMPTY_LIST_IF_NULL = BeforeValidator(lambda value: () if value is None else value)


def Names(what: str, allow_empty: bool = False, item: Any = str) -> Any:
    """A list of distinct non-empty strings (each an ``item``), as a tuple; ``what`` names them in errors."""
    return Annotated[tuple[item, ...], _check(names, what=what, allow_empty=allow_empty), _AS_LIST]


def _collection(value: Any, kind: type, expected: str, empty: str) -> Any:
    if not isinstance(value, kind):
        fail(f"expected {expected}, got {describe(value)}")
    if not value:
        fail(empty)
    return value


def NonEmpty(kind: type, expected: str, empty: str) -> BeforeValidator:
    """A list or mapping that must not be empty; ``empty`` says what to add."""
    return _check(_collection, kind=kind, expected=expected, empty=empty)


def _edges(value: Any, positive: bool) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)):
        fail(f"expected a list of bin edges, got {describe(value)}")
    edges = tuple(number(item, at=(index,)) for index, item in enumerate(value))
    if len(edges) < 2:
        fail(f"{len(edges)} edge(s) given; a binning needs at least 2 edges")
    for index in range(1, len(edges)):
        if edges[index] <= edges[index - 1]:
            fail(f"edges must be strictly increasing, but {_fmt(edges[index])} follows {_fmt(edges[index - 1])}",
                 index)
    if positive and edges[0] <= 0:
        fail(f"pT bin edges must be > 0, got {_fmt(edges[0])}", 0)
    return edges


def Edges(positive: bool) -> Any:
    """Strictly increasing bin edges, at least two (all > 0 if ``positive``)."""
    return Annotated[tuple[float, ...], _check(_edges, positive=positive), _AS_LIST]


def _cuts(value: Any) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict):
        fail(f"expected a mapping (key: value entries), got {describe(value)}")
    cuts = {}
    for key, bounds in value.items():
        if key not in CUT_KEYS:
            fail("", key, kind="unknown_key", allowed=CUT_KEYS)
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            fail(f"expected a range [lo, hi] of two numbers, got {describe(bounds)}", key)
        lo, hi = (number(bound, inf=True, at=(key, index)) for index, bound in enumerate(bounds))
        if lo >= hi:
            fail(f"empty range [{_fmt(lo)}, {_fmt(hi)}]; the lower edge must be below the upper edge", key)
        cuts[key] = (lo, hi)
    return cuts


Cuts = Annotated[dict[Literal[CUT_KEYS], tuple[float, float]], _check(_cuts),
                 PlainSerializer(lambda cuts: {key: list(bounds) for key, bounds in cuts.items()})]


def _process_name(name: Any) -> str:
    # simulated files are named <process>_<split>_<index>.root: no underscore in a name
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
        fail("a simulated process name must be letters and digits starting with a letter "
             "(files are named <process>_<split>_<index>.root)")
    return name


ProcessName = Annotated[str, _check(_process_name)]


def _module_name(name: Any) -> str:
    if not isinstance(name, str) or not all(part.isidentifier() and not keyword.iskeyword(part)
                                            for part in name.split(".")):
        fail(f"{name!r} is not a Python module name; give dotted identifiers like 'my_group.taggers'")
    return name


ModuleName = Annotated[str, _check(_module_name), WithJsonSchema(
    {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"})]


def _expression(expression: Any) -> str:
    if not isinstance(expression, str) or not expression.strip():
        fail(f"expected an expression string (e.g. 'np.log(jet_pt)'), got {describe(expression)}")
    return expression


Expression = Annotated[str, BeforeValidator(_expression)]
Expressions = dict[Name, Expression]


# --------------------------------------------------------------------------------------
# Truths: a list of boolean branches, or label -> [{branch: [values or {operator: value}]}]
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TruthCondition:
    """``branch`` satisfies at least one of the (operator, value) alternatives."""

    branch: str
    alternatives: tuple[tuple[str, float], ...]


@dataclasses.dataclass(frozen=True)
class TruthRule:
    """A truth label and the conditions a jet must all satisfy to carry it."""

    label: str
    conditions: tuple[TruthCondition, ...]


def _alternative(alternative: Any, at: tuple) -> tuple[str, float]:
    if not isinstance(alternative, dict):
        return "==", number(alternative, "a number, true/false or {operator: value}", bools=True, at=at)
    if len(alternative) != 1:
        fail("an operator entry has exactly one operator, e.g. {'>': 100}", *at)
    ((operator, operand),) = alternative.items()
    if operator not in TRUTH_OPERATORS:
        fail(f"unknown comparison operator {operator!r}; allowed: {', '.join(TRUTH_OPERATORS)}", *at)
    return operator, number(operand, bools=True, at=(*at, operator))


def _entries(value: Any, kind: type, expected: str, what: str, *at: Any) -> None:
    """``value`` is a non-empty ``kind``; a mapping's keys are non-empty strings (``what``)."""
    if not isinstance(value, kind) or not value:
        fail(f"expected {expected}, got {describe(value)}", *at)
    for key in value if kind is dict else ():
        if not isinstance(key, str) or not key:
            fail(f"{what} must be non-empty strings, got {describe(key)}", *at, key)


def truth_rules(truths: Any) -> tuple[TruthRule, ...]:
    """The rules a ``truths`` value gives; checking it on the way."""
    if isinstance(truths, list):
        if not truths:
            fail("the list is empty; list the boolean truth branches, e.g. [isB, isC, isUDS, isG]")
        return tuple(TruthRule(label, (TruthCondition(label, (("==", 1.0),)),))
                     for label in names(truths, "boolean truth branches"))
    if isinstance(truths, dict) and not truths:
        fail("no truth labels; give e.g. 'b: [{hadronFlavour: [5]}]'")
    _entries(truths, dict, "a list of boolean branches, or a mapping label -> [{branch: [values]}, ...]",
             "truth labels")
    rules = []
    for label, items in truths.items():
        _entries(items, list, "a non-empty list of conditions like [{hadronFlavour: [5]}]", "", label)
        conditions = []
        for index, item in enumerate(items):
            _entries(item, dict, "a mapping {branch: [values]}", "branch names", label, index)
            for branch, alternatives in item.items():
                at = (label, index, branch)
                _entries(alternatives, list, "a non-empty list of values or {operator: value} entries, e.g. [5] "
                         "or [{'>': 100}]", "", *at)
                conditions.append(TruthCondition(branch, tuple(
                    _alternative(alternative, (*at, i)) for i, alternative in enumerate(alternatives))))
        rules.append(TruthRule(label, tuple(conditions)))
    return tuple(rules)


def _truths(truths: Any) -> Any:
    if truths is None:
        fail("", kind="missing", null=True)
    truth_rules(truths)
    return truths  # as written: Config.raw holds it unchanged


_VALUE = {"type": ["number", "boolean"]}
_OPERATOR = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": _VALUE,
             "propertyNames": {"enum": list(TRUTH_OPERATORS)}}
_RULES = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "array", "minItems": 1, "items": {
    "type": "object", "minProperties": 1, "additionalProperties": {
        "type": "array", "minItems": 1, "items": {"anyOf": [_VALUE, _OPERATOR]}}}}}
Truths = Annotated[Any, BeforeValidator(_truths), WithJsonSchema({"anyOf": [
    {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}, _RULES]})]
