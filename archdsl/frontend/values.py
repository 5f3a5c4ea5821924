"""Evaluating the values and brace expressions of a spec against net and block parameters.

No Python is ever evaluated: expressions are the small arithmetic of the grammar (``+ - * //
/ %``, parentheses, unary minus, comparisons, ``a if test else b``, list items ``xs[i]`` and
the functions of :data:`FUNCTIONS`) walked here node by node. Values are numbers, booleans,
words and lists of values (tuples).

Fractional widths: a width multiplier makes fractions (``{32*alpha}`` with alpha = 0.35 is
11.2); where an integer is required, an integral value such as 24.0 counts as 24 and any other
fraction is an error ("not an integer") unless the spec rounds it explicitly, usually with
``divisible(v, 8)``: MobileNet's ``make_divisible``, the nearest multiple of 8 to v (halves
round up), at least 8, and never more than 10 % below v (else one multiple higher).
"""

from __future__ import annotations

import math

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast

Value = int | float | bool | str | tuple

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
        if expr.name not in env and expr.name.lower() in _WORDS:  # {2 if v15 == true else 1}
            return _WORDS[expr.name.lower()]
        if expr.name not in env:
            known = ", ".join(sorted(env)) or "none"
            raise SpecError(f"unknown parameter {expr.name!r} (parameters here: {known})", expr.span)
        return env[expr.name]
    if isinstance(expr, ast.Neg):
        return _bounded(-_number(evaluate(expr.operand, env), expr.operand.span), expr.span)
    if isinstance(expr, ast.BinOp):
        return _bounded(_binary(expr, env), expr.span)
    if isinstance(expr, ast.ListOf):
        return tuple(evaluate(item, env) for item in expr.items)
    if isinstance(expr, ast.Index):
        return _item(expr, evaluate(expr.target, env), evaluate(expr.index, env))
    if isinstance(expr, ast.Compare):
        return _compare(expr, evaluate(expr.left, env), evaluate(expr.right, env))
    if isinstance(expr, ast.Cond):
        test = evaluate(expr.test, env)
        if not isinstance(test, bool):
            raise SpecError(f"expected true or false as the condition, found {describe(test)}", expr.test.span)
        return evaluate(expr.then if test else expr.other, env)
    if isinstance(expr, ast.Func):
        return _call(expr, [evaluate(a, env) for a in expr.args])
    raise AssertionError(f"cannot evaluate {expr!r}")


def _item(expr: ast.Index, items: Value, index: Value) -> Value:
    if not isinstance(items, tuple):
        raise SpecError(f"expected a list before '[', found {describe(items)}", expr.target.span)
    i = as_int(index, "a list index", expr.index.span)
    if not -len(items) <= i < len(items):
        bounds = f"0 to {len(items) - 1}" if items else "no index (the list is empty)"
        raise SpecError(f"list index {i} is out of range: expected {bounds} (the list has {len(items)} "
                        f"item{'s' * (len(items) != 1)}; -1 is the last)", expr.index.span)
    return items[i]


def _compare(expr: ast.Compare, a: Value, b: Value) -> bool:
    if expr.op == "==":
        return _same(a, b)
    if expr.op == "!=":
        return not _same(a, b)
    a, b = _number(a, expr.left.span), _number(b, expr.right.span)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[expr.op]


def _same(a: Value, b: Value) -> bool:
    if isinstance(a, str) and isinstance(b, str):  # words compare as the spec's words do
        return a.lower() == b.lower()
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def divisible(value: int | float, divisor: int = 8, minimum: int | None = None) -> int:
    """MobileNet's ``make_divisible``: the multiple of ``divisor`` nearest ``value`` (halves
    round up), at least ``minimum`` (``divisor``), and at least 90 % of ``value``."""
    minimum = divisor if minimum is None else minimum
    rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _call(expr: ast.Func, args: list[Value]) -> Value:
    name = expr.name.lower()
    if name not in FUNCTIONS:
        from archdsl.frontend.suggest import did_you_mean

        raise SpecError(f"unknown function {expr.name!r}{did_you_mean(expr.name, FUNCTIONS)}: expected one of "
                        f"{', '.join(FUNCTIONS)}", expr.span)
    low, high, _ = FUNCTIONS[name]
    if not low <= len(args) <= high:
        count = str(low) if low == high else f"{low} to {high}"
        raise SpecError(f"{name}() takes {count} argument(s), found {len(args)}", expr.span)
    spans = [a.span for a in expr.args]
    if name == "len":
        if not isinstance(args[0], tuple):
            raise SpecError(f"expected a list for len(), found {describe(args[0])}", spans[0])
        return len(args[0])
    numbers = [_number(a, span) for a, span in zip(args, spans)]
    if name == "divisible":
        ints = [as_int(a, f"{name}()'s divisor", span, minimum=1) for a, span in zip(args[1:], spans[1:])]
        return _bounded(divisible(numbers[0], *ints), expr.span)
    try:
        if name == "round":  # halves up, as a width rule would
            return math.floor(numbers[0] + 0.5)
        if name == "floor":
            return math.floor(numbers[0])
        if name == "ceil":
            return math.ceil(numbers[0])
    except (OverflowError, ValueError):
        raise SpecError(f"the value of {name}() here is out of range", expr.span) from None
    return min(numbers) if name == "min" else max(numbers)


#: The functions an expression may call: name -> (fewest arguments, most arguments, meaning).
FUNCTIONS = {
    "divisible": (1, 3, "divisible(v, d=8, min=d): MobileNet's make_divisible, the multiple of d nearest v "
                        "(halves up), at least min, and never more than 10 % below v"),
    "round": (1, 1, "round(v): the nearest integer, halves up"),
    "floor": (1, 1, "floor(v): the integer at or below v"),
    "ceil": (1, 1, "ceil(v): the integer at or above v"),
    "min": (1, 64, "min(a, b, ...)"),
    "max": (1, 64, "max(a, b, ...)"),
    "len": (1, 1, "len(list): the number of items"),
}


def as_int(value: Value, what: str, span: Span | None, minimum: int | None = None) -> int:
    """``value`` as an integer (an integral float such as 24.0, from a width multiplier, counts);
    a SpecError saying "not an integer" for any other value."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "not an integer" if isinstance(value, float) else f"not a number but {_kind(value)}"
        raise SpecError(f"expected an integer for {what}, found {describe(value)} ({kind})", span)
    if minimum is not None and value < minimum:
        raise SpecError(f"expected {what} >= {minimum}, found {value}", span)
    return value


def _kind(value: Value) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, tuple):
        return "a list"
    return "a word"


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
        raise SpecError(f"expected a number in arithmetic, found {describe(value)}", span)
    return value


def parse_cli_value(text: str) -> Value:
    """``--set`` values: integers, floats, true/false, a bare word (``shortcut=A``), or a list of
    those (``depths=[3,4,6,3]``)."""
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        inner = stripped[1:-1].strip()
        return tuple(parse_cli_value(item) for item in inner.split(",")) if inner else ()
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
    if isinstance(value, tuple):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    if isinstance(value, float):
        text = f"{value:g}"
        # 17.0 reads as a float, so that "expected an integer, found 17.0" makes sense
        return text if any(ch in text for ch in ".en") else text + ".0"
    return str(value)
