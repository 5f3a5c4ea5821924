"""Evaluating the values and brace expressions of a spec against net and block parameters.

No Python is ever evaluated: expressions are the small integer arithmetic of the grammar
(``+ - * // / %``, parentheses, unary minus) walked here node by node.
"""

from __future__ import annotations

import math

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast

Value = int | float | bool | str

_WORDS = {"true": True, "false": False, "yes": True, "no": False}


def evaluate(expr: ast.Expr, env: dict[str, Value]) -> Value:
    if isinstance(expr, ast.Num):
        return expr.value
    if isinstance(expr, ast.Word):
        return _WORDS.get(expr.text.lower(), expr.text)
    if isinstance(expr, ast.Str):
        return expr.text
    if isinstance(expr, ast.Braced):
        return evaluate(expr.expr, env)
    if isinstance(expr, ast.Ref):
        if expr.name not in env:
            known = ", ".join(sorted(env)) or "none"
            raise SpecError(f"unknown parameter {expr.name!r} (parameters here: {known})", expr.span)
        return env[expr.name]
    if isinstance(expr, ast.Neg):
        return _bounded(-_number(evaluate(expr.operand, env), expr.operand.span), expr.span)
    if isinstance(expr, ast.BinOp):
        return _bounded(_binary(expr, env), expr.span)
    raise AssertionError(f"cannot evaluate {expr!r}")


def _binary(expr: ast.BinOp, env: dict[str, Value]) -> int | float:
    a = _number(evaluate(expr.left, env), expr.left.span)
    b = _number(evaluate(expr.right, env), expr.right.span)
    try:
        return _arithmetic(expr, a, b)
    except (OverflowError, ValueError):  # e.g. a float out of range, int(inf)
        raise SpecError(f"the value of '{expr.op}' here is out of range", expr.span) from None


def _arithmetic(expr: ast.BinOp, a: int | float, b: int | float) -> int | float:
    if expr.op == "+":
        return a + b
    if expr.op == "-":
        return a - b
    if expr.op == "*":
        return a * b
    if b == 0:
        raise SpecError("division by zero", expr.span)
    if expr.op == "//":
        return a // b
    if expr.op == "%":
        return a % b
    quotient = a / b
    return int(quotient) if math.isfinite(quotient) and quotient == int(quotient) else quotient


_MAX_MAGNITUDE = 2**62  # far above any layer size, low enough that arithmetic stays cheap


def _bounded(value: int | float, span: Span) -> int | float:
    if isinstance(value, float) and math.isnan(value):
        raise SpecError("the value here is not a number (inf - inf, or the like)", span)
    if abs(value) > _MAX_MAGNITUDE:
        try:
            shown = f"{float(value):.3g}"
        except OverflowError:
            shown = f"above 2**{abs(value).bit_length() - 1}"
        raise SpecError(f"value {shown} is too large", span)
    return value


def _number(value: Value, span: Span) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"expected a number in arithmetic, found {value!r}", span)
    return value


def parse_cli_value(text: str) -> Value:
    """``--set`` values: integers, floats, true/false, or a bare word (``shortcut=A``)."""
    low = text.strip().lower()
    if low in _WORDS:
        return _WORDS[low]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


def describe(value: Value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
