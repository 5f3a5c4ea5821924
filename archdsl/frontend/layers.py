"""The layer vocabulary of the spec language: how ``conv3-64/2 pad=1`` becomes an op and attributes.

A written layer's name picks a row of the op table (:data:`archdsl.ops.DSL_NAMES`); the row's
``dsl.build`` turns the layer (its ``-width`` and ``/stride`` parts and its ``key=value``
options, read through :class:`Written`) into the attributes its op requires.
"""

from __future__ import annotations

import math
import re
from typing import Any

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast
from archdsl.frontend.values import Value, as_int, describe, evaluate
from archdsl.ops import DSL_NAMES, TABLE, Dsl, Op

_NAME = re.compile(r"^(?P<base>[a-z_]+?)(?P<kh>\d+)?(?:x(?P<kw>\d+))?$")

#: Each layer's name as error messages give it (the first of its DSL names) -> its op, in table order.
LAYERS: dict[str, Op] = {row.dsl.names[0]: op for op, row in TABLE.items() if row.dsl}


class Written:
    """One written layer with its values evaluated, handing them out with type checks."""

    def __init__(self, layer: ast.Layer, env: dict[str, Value], limits):
        self.layer = layer
        self.env = env
        self.limits = limits
        self.options = {o.name: o for o in layer.options}
        self.used: set[str] = set()
        self.kernel: tuple[int, int] | None = None

    def error(self, message: str, span: Span | None = None) -> SpecError:
        return SpecError(message, span or self.layer.span)

    def _check_int(self, value: Value, what: str, span: Span, minimum: int, capped: bool = True) -> int:
        value = as_int(value, what, span)
        if value < minimum:
            raise self.error(f"expected {what} >= {minimum}, found {value}", span)
        if capped and value > self.limits.max_width:
            raise self.error(
                f"{what} = {value} exceeds the limit of {self.limits.max_width} (limit max_width)", span
            )
        return value

    def width(self, what: str) -> int:
        if self.layer.width is None:
            raise self.error(f"{self.layer.name} needs {what}: write it as {self.layer.name}-N")
        return self._check_int(evaluate(self.layer.width, self.env), what, self.layer.width.span, 1)

    def no_width(self) -> None:
        if self.layer.width is not None:
            raise self.error(f"{self.layer.name} takes no '-N' part", self.layer.width.span)

    def stride(self, default: int) -> int:
        if self.layer.stride is not None:
            if "stride" in self.options:
                raise self.error("stride given twice (as /N and as stride=)", self.options["stride"].span)
            return self._check_int(evaluate(self.layer.stride, self.env), "the stride", self.layer.stride.span, 1)
        return self.int("stride", default, minimum=1)

    def no_stride(self) -> None:
        if self.layer.stride is not None:
            raise self.error(f"{self.layer.name} takes no '/stride' part", self.layer.stride.span)

    def _get(self, name: str):
        self.used.add(name)
        option = self.options.get(name)
        return (evaluate(option.value, self.env), option.value.span) if option else (None, None)

    def int(self, name: str, default: int, minimum: int = 0, capped: bool = True) -> int:
        """``capped=False``: a value checked against a real size later, not against max_width."""
        value, span = self._get(name)
        return default if value is None else self._check_int(value, name, span, minimum, capped)

    def float(self, name: str, default: float, low: float = -math.inf, high: float = math.inf) -> float:
        value, span = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(f"expected a number for {name}, found {describe(value)}", span)
        if not low <= value <= high:
            raise self.error(f"expected {name} between {low} and {high}, found {value}", span)
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        value, span = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"expected true or false for {name}, found {describe(value)}", span)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value, span = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str) or value.lower() not in choices:
            raise self.error(f"expected {name} to be one of {', '.join(choices)}, found {describe(value)}", span)
        return value.lower()

    def finish(self, kind: Dsl) -> None:
        for name, option in self.options.items():
            if name not in self.used:
                known = ", ".join(kind.options) or "none"
                raise self.error(f"{self.layer.name} has no option {name!r} (its options: {known})", option.span)


def resolve_name(name: str) -> tuple[str, tuple[int, int] | None] | None:
    """``conv3`` -> ("conv", (3, 3)); ``conv1x7`` -> ("conv", (1, 7)); ``LRN`` -> ("lrn", None)."""
    op = DSL_NAMES.get(name.lower())
    if op is not None:
        return TABLE[op].dsl.names[0], None
    match = _NAME.match(name.lower())
    if not match or match["kh"] is None:
        return None
    op = DSL_NAMES.get(match["base"])
    if op is None or not TABLE[op].dsl.kernel:
        return None
    base = TABLE[op].dsl.names[0]
    kh = _window(match["kh"])
    kw = _window(match["kw"]) if match["kw"] else kh
    return base, (kh, kw)


_MAX_DIGITS = 100  # as for numbers: far beyond any limit, and int() of thousands of digits fails


def _window(digits: str) -> int:
    """A window size written in a layer name; one of more than 100 digits stands as 10**100,
    out of range for every limit (``conv<4301 digits>-4``)."""
    return int(digits) if len(digits) <= _MAX_DIGITS else 10 ** _MAX_DIGITS


def layer_names() -> list[str]:
    """Every layer name a spec may write (for did-you-mean)."""
    return [*DSL_NAMES, "identity"]


def layer_op(layer: ast.Layer, env: dict[str, Value], limits) -> tuple[Op, dict[str, Any], str | None]:
    """Evaluate a written layer: (op, attrs, implied activation or None)."""
    resolved = resolve_name(layer.name)
    if resolved is None:
        from archdsl.frontend.suggest import did_you_mean

        raise SpecError(f"unknown layer {layer.name!r}{did_you_mean(layer.name, layer_names())}; expected one "
                        f"of {', '.join(LAYERS)} or a block name", layer.span)
    base, kernel = resolved
    op = LAYERS[base]
    kind = TABLE[op].dsl
    written = Written(layer, env, limits)
    if kernel is not None and (min(kernel) < 1 or max(kernel) > limits.max_spatial):
        shown = "x".join(str(k) if k <= limits.max_spatial else f"(over {limits.max_spatial})" for k in kernel)
        raise SpecError(f"window size {shown} is out of range: expected 1 to {limits.max_spatial} "
                        "(limit max_spatial)", layer.span)
    written.kernel = kernel
    attrs, act = kind.build(written)
    written.finish(kind)
    return op, attrs, act
