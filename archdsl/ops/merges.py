"""Ops of residual units: ADD (two inputs) and SHORTCUT_PAD (ResNet's option A shortcut)."""

from __future__ import annotations

from archdsl.ops.base import Layer, Lowered, OpDef, ShapeError, need_map, register
from archdsl.shape import Shape

_MODULES = "archdsl.codegen.torch_ops"  # where the in-process modules of these ops live


def _add_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    x, y = inputs
    if x != y:
        raise ShapeError(f"residual add of {x} with {y}: expected two tensors of the same shape")
    return x


def _pad_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    x = inputs[0]
    need_map("shortcut", x)
    s = attrs["stride"]
    return Shape.of(attrs["out_channels"], -(-x.h // s), -(-x.w // s))


def _pad_lower(a: dict, x: Shape) -> Lowered:
    s, extra = a["stride"], a["out_channels"] - x.c
    return Lowered(None, f"F.pad({{0}}[:, :, ::{s}, ::{s}], (0, 0, 0, 0, 0, {extra}))",
                   module=Layer(_MODULES, "ShortcutPad", (s, extra)))


register(
    OpDef("ADD", "add", 2, {}, _add_shape, lambda a, x: Lowered(None, "{0} + {1}", module=Layer(_MODULES, "Add")),
          doc="elementwise sum of two same-shaped tensors (residual add)", node_name="add",
          groups=frozenset({"merge"})),
    OpDef("SHORTCUT_PAD", "shortcut_pad", 1, {"stride": int, "out_channels": int}, _pad_shape, _pad_lower,
          doc="identity shortcut where dimensions grow: x[:, :, ::s, ::s], zero-padded channels",
          node_name="shortcut",
          field=lambda a, x, rf, jump: (rf, jump * a["stride"]),
          subsampling=lambda a: (a["stride"], a["stride"]),
          describe=lambda a: f"shortcut A /{a['stride']} -> {a['out_channels']}"),
)
