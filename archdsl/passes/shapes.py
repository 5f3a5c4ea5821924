"""Shape inference over a whole graph: every node's output :class:`Shape`, re-derived in
topological order after a transformation (each op's rule is its row in :mod:`archdsl.ops`)."""

from __future__ import annotations

from archdsl.ir import ArchGraph, Shape
from archdsl.ops import output_shape


def infer(graph: ArchGraph, name: str) -> Shape:
    """Infer and store one node's shape (its inputs must have theirs)."""
    data = graph.nodes[name]
    inputs = [graph.nodes[a]["meta"]["shape"] for a in data["args"]]
    shape = data["meta"]["shape"] = output_shape(data["op"], data["attrs"], inputs, data["span"])
    return shape


def infer_shapes(graph: ArchGraph) -> ArchGraph:
    """Re-derive every node's shape in topological order (in place; returns the graph)."""
    for name in graph.order():
        infer(graph, name)
    return graph
