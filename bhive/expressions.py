"""Custom features: expressions over branches, evaluated in a restricted namespace.

Only numpy (``np``/``numpy``) and awkward (``ak``/``awkward``) are available, with no
builtins. The expression is checked node by node before it runs: a YAML file cannot import
modules, reach private attributes, build strings (so no numpy/awkward file I/O) or call
anything but the functions of numpy, awkward and their submodules.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Container, Mapping
from typing import Any

import awkward as ak
import numpy as np

_MODULES: dict[str, types.ModuleType] = {"np": np, "numpy": np, "ak": ak, "awkward": ak}
_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Attribute,
    ast.Constant, ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.keyword,
    # operator and context markers carry no behaviour of their own
    ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)


class ExpressionError(ValueError):
    """A custom feature expression that is not allowed or fails to evaluate."""


def _resolve_attribute(node: ast.Attribute, describe: str) -> None:
    """Refuse attribute access on anything but numpy/awkward modules and their submodules."""
    if node.attr.startswith("_"):
        raise ExpressionError(f"{describe}: private attribute '{node.attr}' is not allowed")
    chain = []
    target: ast.expr = node
    while isinstance(target, ast.Attribute):
        chain.append(target.attr)
        target = target.value
    if not (isinstance(target, ast.Name) and target.id in _MODULES):
        raise ExpressionError(f"{describe}: attributes are only allowed on np/numpy/ak/awkward, "
                              f"not on {ast.unparse(target)!r}")
    obj: Any = _MODULES[target.id]
    path = target.id
    for attr in reversed(chain):
        if attr.startswith("_"):
            raise ExpressionError(f"{describe}: private attribute '{attr}' is not allowed")
        if not isinstance(obj, types.ModuleType):
            raise ExpressionError(f"{describe}: '{path}' is not a module; only functions and constants "
                                  f"of numpy/awkward modules can be used, not '{path}.{attr}'")
        if not hasattr(obj, attr):
            raise ExpressionError(f"{describe}: '{path}' has no attribute '{attr}'")
        obj = getattr(obj, attr)
        path = f"{path}.{attr}"


def _check(tree: ast.Expression, branches: Container[str], describe: str) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{describe}: {type(node).__name__} is not allowed; use numpy/awkward "
                                  f"functions of branches, arithmetic, comparisons and indexing only")
        if isinstance(node, ast.Constant) and (type(node.value) not in (int, float, bool)):
            raise ExpressionError(f"{describe}: only numbers and booleans are allowed as constants, "
                                  f"not {node.value!r}")
        elif isinstance(node, ast.Attribute):
            _resolve_attribute(node, describe)
        elif isinstance(node, ast.Name) and node.id not in _MODULES and node.id not in branches:
            raise ExpressionError(f"{describe}: unknown branch '{node.id}'; add it to the input ntuples "
                                  f"or fix the expression")
        elif isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute):
            raise ExpressionError(f"{describe}: '{ast.unparse(node.func)}' cannot be called; only "
                                  f"numpy/awkward functions such as np.log or ak.num can")
        elif isinstance(node, ast.keyword) and node.arg is None:
            raise ExpressionError(f"{describe}: '**' arguments are not allowed")


def _describe(expression: str, name: str, source: str) -> str:
    return f"{source + ': ' if source else ''}custom feature '{name}' = {expression!r}"


def _parse(expression: str, branches: Container[str], describe: str) -> ast.Expression:
    if not isinstance(expression, str):
        raise ExpressionError(f"{describe}: the expression must be a string")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"{describe}: not a valid expression ({error.msg})") from None
    _check(tree, branches, describe)
    return tree


def validate(expression: str, branches: Container[str], name: str, source: str = "") -> None:
    """Check that ``expression`` is allowed and reads only ``branches``, without evaluating it.

    Lets a config be checked against a file's branch list before any data is read.
    """
    _parse(expression, branches, _describe(expression, name, source))


def evaluate(expression: str, columns: Mapping[str, Any], name: str, source: str = "") -> Any:
    """Value of the custom feature ``name`` = ``expression`` over the branches in ``columns``.

    ``columns`` maps branch names to numpy or awkward arrays (jagged ones for candidate-level
    features); ``source`` names the file being read, for the error messages.
    """
    describe = _describe(expression, name, source)
    tree = _parse(expression, columns, describe)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    # the module names win over branches of the same name, which is what the check above assumed
    namespace = {**{key: columns[key] for key in used if key in columns}, **_MODULES}
    try:
        return eval(compile(tree, "<custom feature>", "eval"), {"__builtins__": {}}, namespace)
    except Exception as error:
        raise ExpressionError(f"{describe}: evaluation failed with {type(error).__name__}: {error}") from error
