"""Counting: parameters, multiply-accumulates, activation memory, receptive field and stride.

Conventions (those of the papers): **MACs** are the multiply-accumulates of conv and linear
layers only, for one sample; FLOPs = 2 x MACs. Parameters include biases and batch norm's
scale and shift, not its running statistics. The receptive field and the stride ("jump") are
along the height, in input pixels. Each op's rules are its row in :mod:`archdsl.ops`.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph
from archdsl.ops import TABLE, describe

__all__ = ["analyse", "describe"]


def analyse(graph: ArchGraph) -> ArchGraph:
    """Write ``params``, ``macs``, ``activations`` (output elements), ``rf`` and ``jump`` into
    every node's meta (in place; shapes must be inferred). Returns the graph."""
    for name in graph.order():
        data = graph.nodes[name]
        meta, row, attrs, args = data["meta"], TABLE[data["op"]], data["attrs"], data["args"]
        x = graph.shape(args[0]) if args else None
        meta["params"], meta["macs"] = row.counts(attrs, x, meta["shape"])
        meta["activations"] = meta["shape"].numel
        if not args:
            meta["rf"], meta["jump"] = 1, 1
            continue
        inputs = [graph.nodes[a]["meta"] for a in args]
        rf = max(m["rf"] for m in inputs)
        jump = max(m["jump"] for m in _grid(row, inputs, meta["shape"]))
        meta["rf"], meta["jump"] = row.field(attrs, x, rf, jump)
    return graph


def _grid(row, inputs: list[dict], out) -> list[dict]:
    """The inputs whose grid a node's output keeps. A merge's output is laid out like its
    inputs of the output's height and width: a squeeze-and-excitation gate (Cx1x1, broadcast
    over the map) sees the whole image, which widens the field, but its one position does not
    make the map's positions 16 or 32 pixels apart."""
    if "merge" not in row.groups or not out.is_map:
        return inputs
    return [m for m in inputs if (m["shape"].h, m["shape"].w) == (out.h, out.w)] or inputs
