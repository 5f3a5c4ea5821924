"""Pooling: MAXPOOL, AVGPOOL (windows) and GLOBAL_AVGPOOL (the whole map)."""

from __future__ import annotations

from archdsl.ops.base import (
    Dsl, OpDef, ShapeError, call, need_map, no_single_stride, pair, register, simple_dsl, spatial,
    whole_map_field, window_field, window_stride,
)
from archdsl.shape import Shape

_WINDOW = {"kernel": tuple, "stride": tuple, "padding": tuple}


def _window_shape(what: str):
    def shape(attrs: dict, inputs: list[Shape]) -> Shape:
        x = inputs[0]
        need_map(what, x)
        (kh, kw), (ph, pw) = attrs["kernel"], attrs["padding"]
        if 2 * ph > kh or 2 * pw > kw:
            raise ShapeError(f"{what} padding {ph} is more than half of its {kh}x{kw} window")
        return Shape.of(x.c, *spatial(what, x, attrs["kernel"], attrs["stride"], attrs["padding"]))
    return shape


def _window_describe(what: str):
    def describe(a: dict) -> str:
        (kh, kw), (s, _), (p, _) = a["kernel"], a["stride"], a["padding"]
        return f"{what} {kh}x{kw}/{s}" + (f" pad {p}" if p else "")
    return describe


def _window_dsl(w):
    w.no_width()
    kernel = w.kernel or pair(2)
    stride = w.stride(kernel[0])
    return {"kernel": kernel, "stride": pair(stride), "padding": pair(w.int("pad", 0))}, None


def _window_lower(cls: str):
    return lambda a, x: call("torch.nn", cls, a["kernel"], stride=a["stride"], padding=a["padding"])


def _gap_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    need_map("global average pooling", inputs[0])
    return Shape.of(inputs[0].c, 1, 1)


_WINDOWED = dict(groups=frozenset({"pool"}), field=window_field, subsampling=window_stride)

register(
    OpDef("MAXPOOL", "maxpool", 1, _WINDOW, _window_shape("maxpool"), _window_lower("MaxPool2d"),
          node_name="pool", describe=_window_describe("maxpool"),
          dsl=Dsl(("maxpool", "pool"), _window_dsl, ("pad", "stride"), kernel=True,
                  doc="maxpool[K][/S]: max pooling, KxK window (2), stride S (K); option pad"),
          **_WINDOWED),
    OpDef("AVGPOOL", "avgpool", 1, _WINDOW, _window_shape("avgpool"), _window_lower("AvgPool2d"),
          node_name="avgpool", describe=_window_describe("avgpool"),
          dsl=Dsl(("avgpool",), _window_dsl, ("pad", "stride"), kernel=True,
                  doc="avgpool[K][/S]: average pooling, like maxpool"),
          **_WINDOWED),
    OpDef("GLOBAL_AVGPOOL", "gap", 1, {}, _gap_shape, lambda a, x: call("torch.nn", "AdaptiveAvgPool2d", 1),
          doc="average over the whole map: CxHxW -> Cx1x1", node_name="gap",
          groups=frozenset({"pool", "global_pool"}), field=whole_map_field, subsampling=no_single_stride,
          dsl=Dsl(("gap", "globalavgpool", "global_avgpool"), simple_dsl(),
                  doc="gap: global average pooling (CxHxW -> Cx1x1)")),
)
