"""Shape inference: the output :class:`Shape` of every node, from its op, attributes and inputs.

:func:`infer_node` holds the rule for each op and is used both while a graph is being built
(so an error points at the statement that caused it) and by :func:`infer_shapes`, which
re-derives every shape after a transformation.
"""

from __future__ import annotations

from archdsl.errors import SpecError
from archdsl.ir import ArchGraph, Op, Shape


class ShapeError(Exception):
    """A shape rule failed; the caller attaches the node's span and turns it into SpecError."""


def _window(op: str, size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _spatial(what: str, x: Shape, kernel, stride, padding) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h = _window(what, x.h, kh, sh, ph)
    w = _window(what, x.w, kw, sw, pw)
    if h < 1 or w < 1:
        raise ShapeError(
            f"{what} {kh}x{kw}/{sh} (pad {ph}) shrinks the {x.h}x{x.w} map of its {x} input below 1x1: "
            f"expected an input of at least {max(kh - 2 * ph, 1)}x{max(kw - 2 * pw, 1)}, found {x.h}x{x.w}"
        )
    return h, w


def _need_map(what: str, x: Shape) -> None:
    if not x.is_map:
        raise ShapeError(f"{what} needs a CxHxW feature map, but receives a vector of {x.c} features")


def infer_node(op: Op, attrs: dict, inputs: list[Shape]) -> Shape:
    """The output shape of one op. Raises ShapeError with expected versus found."""
    if op is Op.INPUT:
        return attrs["shape"]
    x = inputs[0]
    if op in (Op.CONV, Op.FUSED_CONV):  # a fused conv's BN and ReLU keep the conv's shape
        _need_map("conv", x)
        groups, out = attrs["groups"], attrs["out_channels"]
        if x.c % groups or out % groups:
            raise ShapeError(
                f"conv with groups={groups} needs input and output channels divisible by {groups}, "
                f"found {x.c} in and {out} out"
            )
        y = Shape.of(out, *_spatial("conv", x, attrs["kernel"], attrs["stride"], attrs["padding"]))
        if len(inputs) > 1 and inputs[1] != y:  # a fused residual add
            raise ShapeError(f"residual add of {y} with {inputs[1]}: expected two tensors of the same shape")
        return y
    if op in (Op.MAXPOOL, Op.AVGPOOL):
        _need_map(op.value, x)
        (kh, kw), (ph, pw) = attrs["kernel"], attrs["padding"]
        if 2 * ph > kh or 2 * pw > kw:
            raise ShapeError(f"{op.value} padding {ph} is more than half of its {kh}x{kw} window")
        return Shape.of(x.c, *_spatial(op.value, x, attrs["kernel"], attrs["stride"], attrs["padding"]))
    if op is Op.GLOBAL_AVGPOOL:
        _need_map("global average pooling", x)
        return Shape.of(x.c, 1, 1)
    if op is Op.LINEAR:
        expected = attrs.get("in_features")
        if expected is not None and expected != x.numel:
            raise ShapeError(f"fc-{attrs['out_features']} expects {expected} input features, "
                             f"but receives {x.numel} ({x})")
        return Shape.of(attrs["out_features"])
    if op is Op.LRN:
        _need_map("LRN", x)
        return x
    if op in (Op.BATCHNORM, Op.RELU, Op.DROPOUT, Op.SOFTMAX):
        return x
    if op is Op.ADD:
        y = inputs[1]
        if x != y:
            raise ShapeError(f"residual add of {x} with {y}: expected two tensors of the same shape")
        return x
    if op is Op.SHORTCUT_PAD:
        _need_map("shortcut", x)
        s, out = attrs["stride"], attrs["out_channels"]
        return Shape.of(out, -(-x.h // s), -(-x.w // s))
    raise AssertionError(f"no shape rule for {op!r}")


def infer(graph: ArchGraph, name: str) -> Shape:
    """Infer and store one node's shape (its inputs must have theirs)."""
    data = graph.nodes[name]
    inputs = [graph.nodes[a]["meta"]["shape"] for a in data["args"]]
    try:
        shape = infer_node(data["op"], data["attrs"], inputs)
    except ShapeError as err:
        raise SpecError(str(err), data["span"]) from None
    data["meta"]["shape"] = shape
    return shape


def infer_shapes(graph: ArchGraph) -> ArchGraph:
    """Re-derive every node's shape in topological order (in place; returns the graph)."""
    for name in graph.order():
        infer(graph, name)
    return graph
