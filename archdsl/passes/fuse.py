"""Fuse a conv and what follows it into one node: CONV -> RELU  =>  FUSED_CONV, and a fused
conv's residual add (-> ReLU) likewise.

The Triton backend's convolution adds a residual and applies the ReLU in its epilogue, in
registers, before the single store of the output; as separate ops each would read and write
the whole feature map once more. :func:`archdsl.passes.fold_bn.fuse_conv_bn` (conv -> BN),
:func:`fuse_conv_relu` and :func:`fuse_residual` make the fused nodes; run in that order they
turn ``conv -> bn -> relu`` and a ResNet block's ``conv -> bn -> add -> relu`` into one node.

Rules shared by the passes (see :func:`sole_consumer`):

* a producer is fused with its consumer only when that consumer is its *only* reader and the
  producer is not the graph output: a conv whose raw output is also read elsewhere (say, by a
  residual shortcut) must keep that raw output, so it is left alone;
* the fused node keeps the conv's name (and span and scope); the absorbed node disappears and
  its readers, and the graph output, read the fused node instead;
* the input graph is never modified: the passes edit ``graph.copy()`` (node attrs and meta
  copied too), re-derive shapes and counts, and return the copy. Each is idempotent.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, Op
from archdsl.passes.analysis import analyse
from archdsl.passes.shapes import infer_shapes

__all__ = ["absorb", "fuse_conv_relu", "fuse_residual", "fusion_summary", "refresh", "sole_consumer"]


def sole_consumer(graph: ArchGraph, name: str, op: Op) -> str | None:
    """The node that reads ``name`` if it is the only reader, is an ``op`` and ``name`` is not
    the graph output; else None."""
    users = graph.users(name)
    if len(users) != 1 or graph.graph.get("output") == name:
        return None
    return users[0] if graph.nodes[users[0]]["op"] is op else None


def absorb(graph: ArchGraph, name: str, consumer: str) -> None:
    """Remove ``consumer`` (whose only input is ``name``); its readers read ``name`` instead."""
    graph.replace_uses(consumer, name)
    graph.remove_node(consumer)


def refresh(graph: ArchGraph) -> ArchGraph:
    """Re-derive shapes and counts after a rewrite (in place; returns the graph)."""
    return analyse(infer_shapes(graph))


def fuse_conv_relu(graph: ArchGraph) -> ArchGraph:
    """CONV -> RELU and FUSED_CONV (without ReLU) -> RELU become one FUSED_CONV with ``relu``.

    Returns a new graph; ``graph`` is not modified.
    """
    new = graph.copy()
    for name in graph.order():
        if name not in new:  # absorbed into an earlier node
            continue
        data = new.nodes[name]
        op, attrs = data["op"], data["attrs"]
        if op is Op.CONV:
            fused = {**attrs, "bn": False, "eps": 0.0, "bn_name": "", "relu": True}
        elif op is Op.FUSED_CONV and not attrs["relu"]:
            fused = {**attrs, "relu": True}
        else:
            continue
        relu = sole_consumer(new, name, Op.RELU)
        if relu is None:
            continue
        data["op"], data["attrs"] = Op.FUSED_CONV, fused
        absorb(new, name, relu)
    return refresh(new)


def fuse_residual(graph: ArchGraph) -> ArchGraph:
    """FUSED_CONV (without ReLU) -> ADD [-> RELU] becomes one FUSED_CONV with ``residual``: the
    add's other input becomes the node's second input, added in the kernel's epilogue before
    the ReLU (the end of a ResNet block). Run after :func:`fuse_conv_relu`, which leaves a
    conv -> bn that feeds an add without its ReLU.

    Returns a new graph; ``graph`` is not modified.
    """
    new = graph.copy()
    for name in graph.order():
        if name not in new:
            continue
        data = new.nodes[name]
        attrs = data["attrs"]
        if data["op"] is not Op.FUSED_CONV or attrs["relu"] or attrs.get("residual"):
            continue
        add = sole_consumer(new, name, Op.ADD)
        if add is None or new.nodes[add]["args"][0] == new.nodes[add]["args"][1]:
            continue
        shortcut = next(a for a in new.nodes[add]["args"] if a != name)
        if shortcut == data["args"][0]:  # conv(x) + x: one edge cannot carry both inputs
            continue
        relu = sole_consumer(new, add, Op.RELU)
        new.set_args(name, (data["args"][0], shortcut))
        data["attrs"] = {**attrs, "residual": True, "relu": relu is not None}
        absorb(new, name, add)
        if relu is not None:
            absorb(new, name, relu)
    return refresh(new)


def fusion_summary(graph: ArchGraph) -> str:
    """One line on what fusion made of ``graph``: ``fused 53 convs: 20 conv+bn, 33 conv+bn+relu``."""
    kinds: dict[str, int] = {}
    for _, data in graph.nodes(data=True):
        if data["op"] is Op.FUSED_CONV:
            a = data["attrs"]
            kind = "conv" + "+bn" * a["bn"] + "+add" * a.get("residual", False) + "+relu" * a["relu"]
            kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return "fused nothing (no conv is followed by a BN or ReLU it alone feeds)"
    total = sum(kinds.values())
    parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    note = "; batch norm folded into the conv in eval mode" if any("+bn" in k for k in kinds) else ""
    return f"fused {total} conv{'s' if total != 1 else ''}: {parts}{note}"
