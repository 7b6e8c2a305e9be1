"""Custom features: expressions over branches, checked against an allow-list.

A config may have been written by someone else, so an expression must not be able to run
code or touch files. Refusing the dangerous parts of numpy is not enough (``np.savetxt``
writes files and ``np.load(..., allow_pickle=True)`` runs code), so only what is listed
here is accepted:

- branch names and numbers (int, float, True/False);
- the operators ``+ - * / // % ** & | ^ ~``, unary ``-``/``+``, the comparisons
  ``< <= > >= == !=`` and parentheses;
- subscripts ``x[i]``, ``x[a:b]``, ``x[:, 0]``, ``x[mask]`` with allowed expressions inside;
- calls ``np.<name>(...)`` / ``ak.<name>(...)`` of the functions in :data:`FUNCTIONS`, with at
  most the positional arguments listed there (so numpy's positional ``out``/``dtype``/``copy``
  are out of reach) and keyword arguments from the function's list with number values;
- the constants ``np.pi``, ``np.e`` and ``np.inf``.

The same check runs when a config is loaded (:func:`validate`) and again before every
evaluation (:func:`evaluate`), which also only exposes the listed functions.
"""

from __future__ import annotations

import ast
import difflib
import functools
import types
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CONSTANTS", "FUNCTIONS", "ExpressionError", "Signature", "branches", "evaluate", "validate"]


@dataclass(frozen=True)
class Signature:
    """What a call of an allowed function may pass: positional count and keyword names."""

    positional: int
    keywords: frozenset[str] = frozenset()


def _same(signature: Signature, *names: str) -> dict[str, Signature]:
    return dict.fromkeys(names, signature)


_NP_REDUCTION = Signature(1, frozenset({"axis", "keepdims"}))
_AK_REDUCTION = Signature(1, frozenset({"axis", "keepdims", "mask_identity"}))
_AXIS = Signature(1, frozenset({"axis"}))
_NAN_TO_NUM = Signature(1, frozenset({"nan", "posinf", "neginf"}))

# module name -> function name -> signature. Every entry is a pure function of its array
# arguments: nothing here reads or writes files, builds strings or objects, or takes a dtype.
FUNCTIONS: dict[str, dict[str, Signature]] = {
    "np": {
        **_same(Signature(1),
                "abs", "absolute", "fabs", "sign", "sqrt", "cbrt", "square", "exp", "exp2", "expm1", "log",
                "log10", "log2", "log1p", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh",
                "tanh", "arcsinh", "arccosh", "arctanh", "deg2rad", "rad2deg", "floor", "ceil", "trunc",
                "rint", "isfinite", "isnan", "isinf", "logical_not"),
        **_same(Signature(2),
                "power", "arctan2", "hypot", "minimum", "maximum", "fmin", "fmax", "mod", "fmod", "remainder",
                "copysign", "logical_and", "logical_or", "logical_xor"),
        **_same(Signature(3), "where", "clip"),
        "round": Signature(2, frozenset({"decimals"})),
        "nan_to_num": _NAN_TO_NUM,
        **_same(_NP_REDUCTION, "sum", "prod", "min", "max", "mean", "std", "var", "any", "all", "count_nonzero"),
    },
    "ak": {
        "num": _AXIS,
        **_same(_AK_REDUCTION, "sum", "prod", "min", "max", "std", "var", "ptp", "any", "all", "count",
                "count_nonzero", "argmax", "argmin"),
        "mean": Signature(2, _AK_REDUCTION.keywords),  # (values, weights)
        **_same(Signature(1, frozenset({"axis", "ascending", "stable"})), "sort", "argsort"),
        "where": Signature(3),
        "fill_none": Signature(2, frozenset({"axis"})),
        "pad_none": Signature(2, frozenset({"axis", "clip"})),
        **_same(_AXIS, "firsts", "is_none", "local_index"),
        "nan_to_num": _NAN_TO_NUM,
    },
}
CONSTANTS: dict[str, frozenset[str]] = {"np": frozenset({"pi", "e", "inf", "nan"})}

_BINARY_OPERATORS: dict[type, str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
}
_UNARY_OPERATORS: dict[type, str] = {ast.USub: "-", ast.UAdd: "+", ast.Invert: "~"}
_COMPARISONS: dict[type, str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
}
# Names for the refused node types a physicist is likely to try, for the error message.
_REFUSED_NAMES: dict[type, str] = {
    ast.Lambda: "a lambda", ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension", ast.GeneratorExp: "a generator expression", ast.JoinedStr: "an f-string",
    ast.NamedExpr: "an assignment (:=)", ast.IfExp: "a conditional expression (use np.where(c, a, b))",
    ast.Starred: "a starred argument", ast.List: "a list", ast.Tuple: "a tuple outside a subscript",
    ast.Dict: "a dict", ast.Set: "a set", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}


def _functions() -> str:
    return ", ".join(f"{module}.{{{', '.join(sorted(names))}}}" for module, names in FUNCTIONS.items())


def _operators() -> str:
    return (f"the operators {' '.join(_BINARY_OPERATORS.values())} ~ and the comparisons "
            f"{' '.join(_COMPARISONS.values())}")


def _allowed_summary() -> str:
    """One line listing what an expression may contain."""
    constants = ", ".join(f"{module}.{name}" for module, names in CONSTANTS.items() for name in sorted(names))
    return (f"allowed: branch names, numbers, {_operators()}, x[...] subscripts, the constants {constants} "
            f"and calls of {_functions()}")


class ExpressionError(ValueError):
    """A custom feature expression that is not allowed or fails to evaluate."""


class _Refused(Exception):
    """Raised inside the check; turned into an ExpressionError that names the feature."""


def _short(text: str, limit: int) -> str:
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _piece(node: ast.AST) -> str:
    return _short(ast.unparse(node), 60)


def _refuse_node(node: ast.AST) -> _Refused:
    if isinstance(node, ast.Constant):
        kind = {str: "string", bytes: "bytes", complex: "complex number"}.get(type(node.value), "constant")
        what = "None" if node.value is None else f"the {kind} {node.value!r}"
        return _Refused(f"{what} is not allowed; constants must be numbers or True/False")
    what = _REFUSED_NAMES.get(type(node), f"{type(node).__name__}")
    return _Refused(f"{what} ({_piece(node)}) is not allowed; {_allowed_summary()}")


def _module_attribute(node: ast.AST) -> tuple[str, str] | None:
    """(module, name) for ``np.name``/``ak.name``, the only attribute access there is."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in FUNCTIONS:
        return node.value.id, node.attr
    return None


def _is_constant(node: ast.AST) -> bool:
    found = _module_attribute(node)
    return found is not None and found[1] in CONSTANTS.get(found[0], ())


def _is_number(node: ast.AST) -> bool:
    """A literal number, True/False or np constant, possibly signed: what keywords may take."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (isinstance(node, ast.Constant) and type(node.value) in (int, float, bool)) or _is_constant(node)


def _check_call(node: ast.Call, names: set[str]) -> None:
    found = _module_attribute(node.func)
    signature = FUNCTIONS[found[0]].get(found[1]) if found else None
    if signature is None:
        close = difflib.get_close_matches(found[1], list(FUNCTIONS[found[0]]), n=1) if found else []
        hint = f"did you mean '{found[0]}.{close[0]}'? " if close else ""
        raise _Refused(f"calling {_piece(node.func)} is not allowed; {hint}the functions that can be called "
                       f"are {_functions()}")
    function = f"{found[0]}.{found[1]}"
    starred = [argument for argument in node.args if isinstance(argument, ast.Starred)]
    if starred:
        raise _refuse_node(starred[0])
    if len(node.args) > signature.positional:
        raise _Refused(f"{function} takes at most {signature.positional} positional argument(s) here, "
                       f"got {len(node.args)} in {_piece(node)}")
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _Refused(f"'**' arguments ({_piece(node)}) are not allowed")
        if keyword.arg not in signature.keywords:
            allowed = ", ".join(sorted(signature.keywords)) or "none"
            raise _Refused(f"keyword {keyword.arg!r} is not allowed for {function}; its allowed keywords: {allowed}")
        if not _is_number(keyword.value):
            raise _Refused(f"keyword {keyword.arg}={ast.unparse(keyword.value)} of {function} must be a number, "
                           f"True/False or np.pi/np.e/np.inf")
    for argument in node.args:
        _check(argument, names)


def _check_index(node: ast.AST, names: set[str]) -> None:
    """A subscript's index: expressions, slices of expressions, or a tuple of those."""
    for part in node.elts if isinstance(node, ast.Tuple) else (node,):
        if isinstance(part, ast.Slice):
            for bound in (part.lower, part.upper, part.step):
                if bound is not None:
                    _check(bound, names)
        else:
            _check(part, names)


def _check(node: ast.AST, names: set[str]) -> None:
    """Refuse ``node`` unless the allow-list covers it; collect the branch names it reads."""
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, bool):
            raise _refuse_node(node)
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise _Refused(f"{node.id!r} can only be used as {node.id}.<function>(...) with an allowed function")
        if node.id.startswith("__"):
            raise _Refused(f"the name {node.id!r} is not allowed; names are branch names")
        names.add(node.id)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY_OPERATORS:
            raise _Refused(f"the operator in {_piece(node)} is not allowed; allowed are {_operators()}")
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY_OPERATORS:
            raise _Refused(f"'not' ({_piece(node)}) is not allowed; use ~ for an elementwise not")
        _check(node.operand, names)
    elif isinstance(node, ast.BoolOp):
        raise _Refused(f"'and'/'or' ({_piece(node)}) do not work elementwise on arrays; use & and | with "
                       f"parentheses, e.g. (a > 0) & (b < 1)")
    elif isinstance(node, ast.Compare):
        refused = [op for op in node.ops if type(op) not in _COMPARISONS]
        if refused:
            raise _Refused(f"the comparison in {_piece(node)} is not allowed; allowed are {_operators()}")
        for operand in (node.left, *node.comparators):
            _check(operand, names)
    elif isinstance(node, ast.Subscript):
        _check(node.value, names)
        _check_index(node.slice, names)
    elif isinstance(node, ast.Call):
        _check_call(node, names)
    elif isinstance(node, ast.Attribute):
        if not _is_constant(node):
            raise _Refused(f"{_piece(node)} is not allowed; the only attributes are the constants np.pi, np.e, "
                           f"np.inf and the allowed functions, called as np.<function>(...) or ak.<function>(...)")
    else:
        raise _refuse_node(node)


def _describe(expression: str, name: str, source: str) -> str:
    """What an error message starts with: the file, the feature and the expression."""
    text = _short(expression, 200) if isinstance(expression, str) else repr(expression)
    feature = f"custom feature '{name}' = {text}" if name else text
    return f"{source}: {feature}" if source else feature


def _parse(expression: str, describe: str) -> tuple[ast.Expression, frozenset[str]]:
    """The checked syntax tree and the branch names it reads."""
    if not isinstance(expression, str):
        raise ExpressionError(f"{describe}: the expression must be a string")
    names: set[str] = set()
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        _check(tree.body, names)
    except SyntaxError as error:
        problem = f"not a valid Python expression ({error.msg})"
    except RecursionError:
        problem = "nested too deeply to check; split it into several custom features"
    except _Refused as refused:
        problem = str(refused)
    else:
        return tree, frozenset(names)
    raise ExpressionError(f"{describe}: {problem}")


def _check_known(read: frozenset[str], known: Collection[str], unknown_means: str, describe: str) -> None:
    for branch in sorted(read):
        if branch not in known:
            close = difflib.get_close_matches(branch, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ExpressionError(f"{describe}: unknown branch {branch!r} ({unknown_means}){hint}")


def branches(expression: str) -> frozenset[str]:
    """Branch names an allowed expression reads; raises ExpressionError for one that is not."""
    return _parse(expression, _describe(expression, "", ""))[1]


def validate(
    expression: str,
    known: Collection[str] | None,
    name: str = "",
    source: str = "",
    unknown_means: str = "not among the branches",
) -> frozenset[str]:
    """Check ``expression`` against the allow-list without evaluating it; returns the branches it reads.

    With ``known`` the branches must be among them (``unknown_means`` says what they are
    missing from, for the message); with None any branch name passes, for inputs whose
    branches are only known once a file is opened.
    """
    describe = _describe(expression, name, source)
    read = _parse(expression, describe)[1]
    if known is not None:
        _check_known(read, known, unknown_means, describe)
    return read


@functools.cache
def _namespace() -> dict[str, types.SimpleNamespace]:
    """``np`` and ``ak`` holding only the allowed functions and constants, not the modules."""
    import awkward as ak
    import numpy as np

    modules = {"np": np, "ak": ak}
    return {
        module: types.SimpleNamespace(**{
            name: getattr(modules[module], name) for name in (*FUNCTIONS[module], *CONSTANTS.get(module, ()))
        })
        for module in FUNCTIONS
    }


def evaluate(expression: str, columns: Mapping[str, Any], name: str, source: str = "") -> Any:
    """Value of the custom feature ``name`` = ``expression`` over the branches in ``columns``.

    ``columns`` maps branch names to numpy or awkward arrays (jagged ones for candidate-level
    features); ``source`` names the file being read, for the error messages. The expression is
    checked again here, so one that did not come through the config loader is held to the
    same rules.
    """
    describe = _describe(expression, name, source)
    tree, read = _parse(expression, describe)
    _check_known(read, columns, "not among the columns read from the file", describe)
    namespace = {"__builtins__": {}, **{key: columns[key] for key in read}, **_namespace()}
    try:
        return eval(compile(tree, "<custom feature>", "eval"), namespace)
    except Exception as error:
        raise ExpressionError(f"{describe}: evaluation failed with {type(error).__name__}: {error}") from error
