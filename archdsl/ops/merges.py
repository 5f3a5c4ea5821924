"""Merges and residual units: ADD (two inputs), CONCAT (along the channels, any number of inputs),
MULTIPLY (a map by a same-shaped map or by a Cx1x1 gate, as squeeze-and-excitation), and
SHORTCUT_PAD (ResNet's option A shortcut). A merge has no parameters and no MACs (MACs count
conv and fc layers only); a multiply costs one product per output element, a concat a copy."""

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


def concat_mismatch(inputs: list[Shape]) -> tuple[int, str] | None:
    """(index, what is wrong) of the first input a concat cannot join to the first, or None."""
    first = inputs[0]
    for i, x in enumerate(inputs[1:], 1):
        if not (x.is_map and first.is_map) and x.is_map != first.is_map:
            return i, f"a {'map' if first.is_map else 'vector'} and a {'map' if x.is_map else 'vector'}"
        if (x.h, x.w) != (first.h, first.w):
            return i, f"expected a {first.h}x{first.w} map as the first branch gives, found {x.h}x{x.w} ({x})"
    return None


def _concat_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    wrong = concat_mismatch(inputs)
    if wrong is not None:
        raise ShapeError(f"concat of branch {wrong[0] + 1} with branch 1: {wrong[1]}")
    first = inputs[0]
    channels = sum(x.c for x in inputs)
    return Shape.of(channels, first.h, first.w) if first.is_map else Shape.of(channels)


def _concat_lower(a: dict, x: Shape) -> Lowered:
    items = ", ".join(f"{{{i}}}" for i in range(a["inputs"]))
    return Lowered(None, f"torch.cat([{items}], 1)", module=Layer(_MODULES, "Concat"))


def multiply_mismatch(inputs: list[Shape]) -> str | None:
    """What is wrong with a multiply's inputs (a map, then a gate), or None."""
    x, gate = inputs
    if gate == x or (x.is_map and gate.dims == (x.c, 1, 1)):
        return None
    return (f"expected a gate of {x.c}x1x1 (or a multiplier of shape {x}) for the {x} map, found {gate}"
            if x.is_map else f"expected a multiplier of the same shape as {x}, found {gate}")


def _multiply_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    wrong = multiply_mismatch(inputs)
    if wrong is not None:
        raise ShapeError(f"multiply: {wrong}")
    return inputs[0]


def _concat_check(attrs: dict, args: tuple) -> str | None:
    return None if attrs["inputs"] == len(args) else "a concat's attrs['inputs'] counts its args"


register(
    OpDef("CONCAT", "concat", (2, 1024), {"inputs": int}, _concat_shape, _concat_lower,
          doc="concatenation along the channels of maps of the same height and width (or of vectors); "
              "attrs['inputs'] is the number of args", node_name="concat", groups=frozenset({"merge"}),
          describe=lambda a: f"concat of {a['inputs']} (a copy; no MACs)", check=_concat_check),
    OpDef("MULTIPLY", "multiply", 2, {}, _multiply_shape,
          lambda a, x: Lowered(None, "{0} * {1}", module=Layer(_MODULES, "Multiply")),
          doc="elementwise product of a map (first input) and a same-shaped map or a Cx1x1 gate, "
              "broadcast over the map (squeeze-and-excitation)", node_name="mul", groups=frozenset({"merge"}),
          describe=lambda a: "multiply (one product per element, not counted in MACs)"),
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
