"""The fully connected layer, LINEAR (``fc-N``)."""

from __future__ import annotations

from archdsl.ops.base import Dsl, Lowered, OpDef, ShapeError, no_single_stride, nn, register, whole_map_field
from archdsl.shape import Shape


def _shape(attrs: dict, inputs: list[Shape]) -> Shape:
    x = inputs[0]
    expected = attrs.get("in_features")
    if expected is not None and expected != x.numel:
        raise ShapeError(f"fc-{attrs['out_features']} expects {expected} input features, "
                         f"but receives {x.numel} ({x})")
    return Shape.of(attrs["out_features"])


def _counts(attrs: dict, x: Shape, y: Shape) -> tuple[int, int]:
    return x.numel * y.c + (y.c if attrs["bias"] else 0), x.numel * y.c


def _lower(a: dict, x: Shape) -> Lowered:
    layer = nn("Linear", x.numel, a["out_features"], **({} if a["bias"] else {"bias": False}))
    if x.is_map:  # (C, H, W) order, as the layer's weight columns expect
        return Lowered(layer, "{self}(torch.flatten({0}, 1))", "flatten_call_layer")
    return Lowered(layer, "{self}({0})")


def _dsl(w):
    w.no_stride()
    attrs = {"out_features": w.width("the number of features"), "bias": w.bool("bias", True)}
    expected = w.int("in", 0, minimum=1, capped=False)  # a flattened map may exceed max_width
    if expected:  # the input size the author expects, checked against the real one
        attrs["in_features"] = expected
    return attrs, w.choice("act", "relu", ("relu", "none"))


register(
    OpDef("LINEAR", "linear", 1, {"out_features": int, "bias": bool}, _shape, _lower,
          doc="fully connected layer; a CxHxW input is flattened in (C, H, W) order; optional "
              "attrs['in_features']: the input size the spec states, checked by shape inference",
          node_name="fc", groups=frozenset({"weighted", "stateful"}), counts=_counts, field=whole_map_field,
          subsampling=no_single_stride,
          describe=lambda a: f"fc {a['out_features']}" + ("" if a["bias"] else " no-bias"),
          dsl=Dsl(("fc", "linear"), _dsl, ("bias", "act", "in"),
                  doc="fc-N: fully connected layer to N features (flattens a CxHxW input); in=M "
                      "states the input size it expects")),
)
