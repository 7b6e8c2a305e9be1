"""Custom features: expressions over branches, evaluated in a restricted namespace.

Only numpy (``np``/``numpy``) and awkward (``ak``/``awkward``) are available, with no
builtins; the expression is checked node by node before it runs, so a config cannot import
modules, reach private attributes or call anything but numpy/awkward functions.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np

_MODULES = {"np": np, "numpy": np, "ak": ak, "awkward": ak}
_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Attribute,
    ast.Constant, ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Load, ast.keyword,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)


class ExpressionError(ValueError):
    """A custom feature expression that is not allowed or fails to evaluate."""


def _check(tree: ast.Expression, columns: Mapping[str, Any], describe: str) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{describe}: {type(node).__name__} is not allowed; use numpy/awkward "
                                  f"functions of branches only")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, bool)):
            raise ExpressionError(f"{describe}: only numeric constants are allowed, not {node.value!r}")
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise ExpressionError(f"{describe}: private attribute '{node.attr}' is not allowed")
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if not (isinstance(root, ast.Name) and root.id in _MODULES):
                raise ExpressionError(f"{describe}: attributes are only allowed on np/numpy/ak/awkward")
        if isinstance(node, ast.Name) and node.id not in _MODULES and node.id not in columns:
            raise ExpressionError(f"{describe}: unknown branch '{node.id}'")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute):
            raise ExpressionError(f"{describe}: only numpy/awkward functions can be called")


def evaluate(expression: str, columns: Mapping[str, Any], name: str, source: str = "") -> Any:
    """Value of the custom feature ``name`` = ``expression`` over ``columns``."""
    describe = f"{source + ': ' if source else ''}custom feature '{name}' = {expression!r}"
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"{describe}: not a valid expression ({error.msg})") from None
    _check(tree, columns, describe)
    namespace = {**_MODULES, **{k: columns[k] for k in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
                                if k in columns}}
    try:
        return eval(compile(tree, "<custom feature>", "eval"), {"__builtins__": {}}, namespace)
    except Exception as error:
        raise ExpressionError(f"{describe}: {type(error).__name__}: {error}") from error
