"""Logits: a graph without the softmax that ends it.

Classifiers are trained on logits (``F.cross_entropy`` applies its own log-softmax), so the
lowered module returns the scores before a final softmax unless asked
(:func:`archdsl.compile` ``softmax=True``); the spec's graph keeps the softmax, and its counts.
Evaluation averages scores before the softmax too.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, Op, verify

__all__ = ["drop_output_softmax"]


def drop_output_softmax(graph: ArchGraph) -> ArchGraph:
    """``graph`` without a softmax that ends it (a new graph): the output is the raw scores.

    A graph that does not end in a softmax is returned as a copy.
    """
    new = graph.copy()
    output = new.graph["output"]
    if new.nodes[output]["op"] is Op.SOFTMAX:
        (source,) = new.nodes[output]["args"]
        new.remove_node(output)
        new.graph["output"] = source
    verify(new)
    return new
