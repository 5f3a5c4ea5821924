"""Pooling: MAXPOOL, AVGPOOL (windows; ``ceil=true`` rounds the output size up, as Caffe and
GoogLeNet do), GLOBAL_AVGPOOL (the whole map) and ADAPTIVE_AVGPOOL (to a fixed SxS, whatever the
input: torchvision's VGG keeps its 7x7 before the classifier this way)."""

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
        if not attrs.get("ceil_mode"):
            return Shape.of(x.c, *spatial(what, x, attrs["kernel"], attrs["stride"], attrs["padding"]))
        h, w = _ceil(x.h, kh, attrs["stride"][0], ph), _ceil(x.w, kw, attrs["stride"][1], pw)
        if h < 1 or w < 1:
            raise ShapeError(f"{what} {kh}x{kw}/{attrs['stride'][0]} (ceil) leaves nothing of the "
                             f"{x.h}x{x.w} map of its {x} input")
        return Shape.of(x.c, h, w)
    return shape


def _ceil(size: int, kernel: int, stride: int, pad: int) -> int:
    """PyTorch's ceil-mode output size: rounded up, but no window may start in the right padding."""
    out = (size + 2 * pad - kernel + stride - 1) // stride + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


def _window_describe(what: str):
    def describe(a: dict) -> str:
        (kh, kw), (s, _), (p, _) = a["kernel"], a["stride"], a["padding"]
        return f"{what} {kh}x{kw}/{s}" + (f" pad {p}" if p else "") + (" ceil" if a.get("ceil_mode") else "")
    return describe


def _window_dsl(w):
    w.no_width()
    kernel = w.kernel or pair(2)
    stride = w.stride(kernel[0])
    attrs = {"kernel": kernel, "stride": pair(stride), "padding": pair(w.int("pad", 0))}
    if w.bool("ceil", False):  # optional: nets that do not ask keep their attributes (and source) as before
        attrs["ceil_mode"] = True
    return attrs, None


def _window_lower(cls: str):
    def lower(a: dict, x: Shape):
        ceil = {"ceil_mode": True} if a.get("ceil_mode") else {}
        return call("torch.nn", cls, a["kernel"], stride=a["stride"], padding=a["padding"], **ceil)
    return lower


def _adaptive_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    need_map("adaptive average pooling", inputs[0])
    return Shape.of(inputs[0].c, attrs["size"], attrs["size"])


def _adaptive_field(attrs: dict, x: Shape, rf: int, jump: int) -> tuple[int, int]:
    # Output cell i averages rows floor(i*H/S) to ceil((i+1)*H/S): at most ceil(H/S) + 1 rows
    # apart from its neighbour's start by about H/S.
    window = -(-x.h // attrs["size"]) + (1 if x.h % attrs["size"] else 0)
    return rf + (window - 1) * jump, jump * max(1, x.h // attrs["size"])


def _gap_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    need_map("global average pooling", inputs[0])
    return Shape.of(inputs[0].c, 1, 1)


_WINDOWED = dict(groups=frozenset({"pool"}), field=window_field, subsampling=window_stride)

register(
    OpDef("MAXPOOL", "maxpool", 1, _WINDOW, _window_shape("maxpool"), _window_lower("MaxPool2d"),
          node_name="pool", describe=_window_describe("maxpool"),
          dsl=Dsl(("maxpool", "pool"), _window_dsl, ("pad", "stride", "ceil"), kernel=True,
                  doc="maxpool[K][/S]: max pooling, KxK window (2), stride S (K); options pad, "
                      "ceil=true (round the output size up)"),
          **_WINDOWED),
    OpDef("AVGPOOL", "avgpool", 1, _WINDOW, _window_shape("avgpool"), _window_lower("AvgPool2d"),
          node_name="avgpool", describe=_window_describe("avgpool"),
          dsl=Dsl(("avgpool",), _window_dsl, ("pad", "stride", "ceil"), kernel=True,
                  doc="avgpool[K][/S]: average pooling, like maxpool"),
          **_WINDOWED),
    OpDef("GLOBAL_AVGPOOL", "gap", 1, {}, _gap_shape, lambda a, x: call("torch.nn", "AdaptiveAvgPool2d", 1),
          doc="average over the whole map: CxHxW -> Cx1x1", node_name="gap",
          groups=frozenset({"pool", "global_pool"}), field=whole_map_field, subsampling=no_single_stride,
          dsl=Dsl(("gap", "globalavgpool", "global_avgpool"), simple_dsl(),
                  doc="gap: global average pooling (CxHxW -> Cx1x1)")),
    OpDef("ADAPTIVE_AVGPOOL", "adaptive_avgpool", 1, {"size": int}, _adaptive_shape,
          lambda a, x: call("torch.nn", "AdaptiveAvgPool2d", a["size"]),
          doc="average pooling to a fixed SxS map, windows spread evenly over any input",
          node_name="adaptive_pool", groups=frozenset({"pool"}), field=_adaptive_field,
          subsampling=no_single_stride, describe=lambda a: f"adaptive avgpool to {a['size']}x{a['size']}",
          dsl=Dsl(("adaptive_avgpool", "adaptiveavgpool"), simple_dsl(size=1), ("size",),
                  doc="adaptive_avgpool size=S: average pooling to SxS (1), whatever the input size")),
)
