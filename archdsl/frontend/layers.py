"""The layer vocabulary of the spec language: how ``conv3-64/2 pad=1`` becomes an op and attributes.

Each entry of :data:`LAYERS` turns one written layer (its name, the ``-width`` and ``/stride``
parts and its ``key=value`` options, all already evaluated) into an :class:`~archdsl.ir.Op`
and the attributes :data:`archdsl.ir.SCHEMA` requires. ``archdsl help-layers`` and the README
are generated from the same table's docs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from archdsl.errors import Span, SpecError
from archdsl.frontend import ast
from archdsl.frontend.values import Value, describe, evaluate
from archdsl.ir import Op

_NAME = re.compile(r"^(?P<base>[a-z_]+?)(?P<kh>\d+)?(?:x(?P<kw>\d+))?$")

# Spellings that mean the same layer.
_ALIASES = {
    "soft-max": "softmax", "pool": "maxpool", "linear": "fc", "batchnorm": "bn",
    "globalavgpool": "gap", "global_avgpool": "gap",
}


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
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer for {what}, found {describe(value)}", span)
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

    def finish(self, kind: "LayerKind") -> None:
        for name, option in self.options.items():
            if name not in self.used:
                known = ", ".join(kind.options) or "none"
                raise self.error(f"{self.layer.name} has no option {name!r} (its options: {known})", option.span)


@dataclass(frozen=True)
class LayerKind:
    build: Callable[[Written], tuple[Op, dict[str, Any], str | None]]
    options: tuple[str, ...]
    kernel: bool  # the name carries a window size: conv3, maxpool3, conv1x7
    doc: str


def _pair(v: int) -> tuple[int, int]:
    return (v, v)


def _padding(w: Written, kernel: tuple[int, int]) -> tuple[int, int]:
    # Default: the padding that keeps the size at stride 1 ("same" for odd kernels).
    return (w.int("pad", kernel[0] // 2), w.int("pad", kernel[1] // 2))


def _conv(w: Written):
    kernel = w.kernel
    if kernel is None:  # conv-64 k={k}: the window size from a parameter
        if "k" not in w.options:
            raise w.error("conv needs a window size: write convK-C (conv3-64) or conv-C k=K")
        kernel = _pair(w.int("k", 1, minimum=1))
    elif "k" in w.options:
        raise w.error("window size given twice (in the name and as k=)", w.options["k"].span)
    attrs = {
        "out_channels": w.width("the number of channels"),
        "kernel": kernel,
        "stride": _pair(w.stride(1)),
        "padding": _padding(w, kernel),
        "groups": w.int("groups", 1, minimum=1),
        "bias": w.bool("bias", True),
    }
    return Op.CONV, attrs, w.choice("act", "relu", ("relu", "none"))


def _fc(w: Written):
    w.no_stride()
    attrs = {"out_features": w.width("the number of features"), "bias": w.bool("bias", True)}
    expected = w.int("in", 0, minimum=1, capped=False)  # a flattened map may exceed max_width
    if expected:  # the input size the author expects, checked against the real one
        attrs["in_features"] = expected
    return Op.LINEAR, attrs, w.choice("act", "relu", ("relu", "none"))


def _pool(op: Op):
    def build(w: Written):
        w.no_width()
        kernel = w.kernel or _pair(2)
        stride = w.stride(kernel[0])
        return op, {"kernel": kernel, "stride": _pair(stride), "padding": _pair(w.int("pad", 0))}, None
    return build


def _simple(op: Op, **defaults):
    def build(w: Written):
        w.no_width()
        w.no_stride()
        attrs = {}
        for name, default in defaults.items():
            if isinstance(default, tuple):  # (default, choices)
                attrs[name] = w.choice(name, default[0], default[1])
            elif isinstance(default, float):
                attrs[name] = w.float(name, default, low=0.0)
            else:
                attrs[name] = w.int(name, default, minimum=1)
        if op is Op.DROPOUT and not attrs["p"] < 1.0:
            raise w.error(f"expected a dropout probability below 1, found {attrs['p']}")
        return op, attrs, None
    return build


LAYERS: dict[str, LayerKind] = {
    "conv": LayerKind(_conv, ("pad", "groups", "bias", "act", "stride", "k"), True,
                      "convK-C[/S]: KxK convolution to C channels, stride S (1); pad keeps the size "
                      "by default (K//2); options pad, groups, bias, act=relu|none; conv-C k=K "
                      "takes the window size from an expression"),
    "fc": LayerKind(_fc, ("bias", "act", "in"), False,
                    "fc-N: fully connected layer to N features (flattens a CxHxW input); in=M "
                    "states the input size it expects"),
    "maxpool": LayerKind(_pool(Op.MAXPOOL), ("pad", "stride"), True,
                         "maxpool[K][/S]: max pooling, KxK window (2), stride S (K); option pad"),
    "avgpool": LayerKind(_pool(Op.AVGPOOL), ("pad", "stride"), True,
                         "avgpool[K][/S]: average pooling, like maxpool"),
    "gap": LayerKind(_simple(Op.GLOBAL_AVGPOOL), (), False, "gap: global average pooling (CxHxW -> Cx1x1)"),
    "lrn": LayerKind(
        _simple(Op.LRN, size=5, alpha=1e-4, beta=0.75, k=2.0, mode=("sum", ("sum", "avg"))),
        ("size", "alpha", "beta", "k", "mode"), False,
        "LRN: local response normalisation across channels, k + alpha*sum over the window as "
        "published (mode=avg: alpha/size, PyTorch's convention); size 5, alpha 1e-4, beta 0.75, k 2",
    ),
    "bn": LayerKind(_simple(Op.BATCHNORM, eps=1e-5), ("eps",), False, "bn: batch normalisation"),
    "relu": LayerKind(_simple(Op.RELU), (), False, "relu: an explicit ReLU"),
    "dropout": LayerKind(_simple(Op.DROPOUT, p=0.5), ("p",), False, "dropout: dropout, p=0.5"),
    "softmax": LayerKind(_simple(Op.SOFTMAX), (), False, "softmax (or soft-max): softmax over channels"),
}


def resolve_name(name: str) -> tuple[str, tuple[int, int] | None] | None:
    """``conv3`` -> ("conv", (3, 3)); ``conv1x7`` -> ("conv", (1, 7)); ``LRN`` -> ("lrn", None)."""
    low = _ALIASES.get(name.lower(), name.lower())
    if low in LAYERS:
        return low, None
    match = _NAME.match(low)
    if not match or match["kh"] is None:
        return None
    base = _ALIASES.get(match["base"], match["base"])
    if base not in LAYERS or not LAYERS[base].kernel:
        return None
    kh = _window(match["kh"])
    kw = _window(match["kw"]) if match["kw"] else kh
    return base, (kh, kw)


_MAX_DIGITS = 100  # as for numbers: far beyond any limit, and int() of thousands of digits fails


def _window(digits: str) -> int:
    """A window size written in a layer name; one of more than 100 digits stands as 10**100,
    out of range for every limit (``conv<4301 digits>-4``)."""
    return int(digits) if len(digits) <= _MAX_DIGITS else 10 ** _MAX_DIGITS


def layer_op(layer: ast.Layer, env: dict[str, Value], limits) -> tuple[Op, dict[str, Any], str | None]:
    """Evaluate a written layer: (op, attrs, implied activation or None)."""
    resolved = resolve_name(layer.name)
    if resolved is None:
        raise SpecError(f"unknown layer {layer.name!r}; expected one of {', '.join(LAYERS)} or a block name",
                        layer.span)
    base, kernel = resolved
    kind = LAYERS[base]
    written = Written(layer, env, limits)
    if kernel is not None and (min(kernel) < 1 or max(kernel) > limits.max_spatial):
        shown = "x".join(str(k) if k <= limits.max_spatial else f"(over {limits.max_spatial})" for k in kernel)
        raise SpecError(f"window size {shown} is out of range: expected 1 to {limits.max_spatial} "
                        "(limit max_spatial)", layer.span)
    written.kernel = kernel
    op, attrs, act = kind.build(written)
    written.finish(kind)
    return op, attrs, act
