"""Fusion rules: a conv and what follows it become one FUSED_CONV node.

The Triton backend's convolution folds a batch norm into its weights (eval mode), adds a
residual and applies the ReLU in its epilogue, in registers, before the single store of the
output; as separate ops each would read and write the whole feature map once more. Run by
:func:`archdsl.passes.rewrite.rewrite` (which copies the graph, keeps the conv's name and
applies the sole-consumer rule), :data:`TRITON_RULES` turn ``conv -> bn -> relu`` and a ResNet
block's ``conv -> bn -> add -> relu`` into one node. The weight arithmetic of the fold is
:func:`archdsl.codegen.fold.fold_bn`, where the weights are.

At inference the kernel can also end with a 2x2/2 max-pool (:func:`conv_pool`: VGG's pools):
it orders its GEMM rows as 2x2 quads, reduces them in registers and stores only the pooled map,
so the full-size conv output never reaches memory. The pool is the epilogue's last step, so a
pooled node absorbs nothing after it.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, Op
from archdsl.ops.conv import FUSED_POOL, fused_kind
from archdsl.passes.rewrite import Rewrite, consumer

__all__ = ["TRITON_RULES", "conv_bn", "conv_pool", "conv_relu", "fusion_summary", "residual"]


def conv_bn(graph: ArchGraph, name: str) -> Rewrite | None:
    """CONV -> BATCHNORM: a FUSED_CONV with ``bn``, named after the conv, keeping the BN's name."""
    data = graph.nodes[name]
    bn = consumer(graph, name, Op.BATCHNORM) if data["op"] is Op.CONV else None
    if bn is None:
        return None
    eps = float(graph.nodes[bn]["attrs"]["eps"])
    return Rewrite(Op.FUSED_CONV, {**data["attrs"], "bn": True, "eps": eps, "bn_name": bn, "relu": False}, (bn,))


def conv_relu(graph: ArchGraph, name: str) -> Rewrite | None:
    """CONV -> RELU, or FUSED_CONV (without ReLU) -> RELU: a FUSED_CONV with ``relu``."""
    op, attrs = graph.nodes[name]["op"], graph.nodes[name]["attrs"]
    if op is Op.CONV:
        fused = {**attrs, "bn": False, "eps": 0.0, "bn_name": "", "relu": True}
    elif op is Op.FUSED_CONV and not attrs["relu"] and not attrs.get("pool"):
        fused = {**attrs, "relu": True}
    else:
        return None
    relu = consumer(graph, name, Op.RELU)
    return None if relu is None else Rewrite(Op.FUSED_CONV, fused, (relu,))


def residual(graph: ArchGraph, name: str) -> Rewrite | None:
    """FUSED_CONV (without ReLU) -> ADD [-> RELU]: the add's other input becomes the node's
    second input, added in the epilogue before the ReLU (the end of a ResNet block)."""
    data = graph.nodes[name]
    attrs = data["attrs"]
    if data["op"] is not Op.FUSED_CONV or attrs["relu"] or attrs.get("residual") or attrs.get("pool"):
        return None
    add = consumer(graph, name, Op.ADD)
    if add is None or graph.nodes[add]["args"][0] == graph.nodes[add]["args"][1]:
        return None
    shortcut = next(a for a in graph.nodes[add]["args"] if a != name)
    if shortcut == data["args"][0]:  # conv(x) + x: one edge cannot carry both inputs
        return None
    relu = consumer(graph, add, Op.RELU)
    return Rewrite(Op.FUSED_CONV, {**attrs, "residual": True, "relu": relu is not None},
                   (add,) + ((relu,) if relu else ()), args=(data["args"][0], shortcut))


def conv_pool(graph: ArchGraph, name: str) -> Rewrite | None:
    """CONV or FUSED_CONV (without a residual) -> MAXPOOL 2x2/2, no padding, floor mode: a
    FUSED_CONV with ``pool``, whose shape is the pooled one. Other pools (AlexNet's
    overlapping 3x3/2, ResNet's padded stem pool) stay separate ops."""
    op, attrs = graph.nodes[name]["op"], graph.nodes[name]["attrs"]
    if op is Op.CONV:
        fused = {**attrs, "bn": False, "eps": 0.0, "bn_name": "", "relu": False, "pool": True}
    elif op is Op.FUSED_CONV and not attrs.get("residual") and not attrs.get("pool"):
        fused = {**attrs, "pool": True}
    else:
        return None
    pool = consumer(graph, name, Op.MAXPOOL)
    if pool is None:
        return None
    window = graph.nodes[pool]["attrs"]
    if window.get("ceil_mode") or any(tuple(window[k]) != v for k, v in FUSED_POOL.items()):
        return None
    return Rewrite(Op.FUSED_CONV, fused, (pool,))


#: The triton backend's rules, in the order they are tried at each node (the pool last: it
#: ends a chain).
TRITON_RULES = (conv_bn, conv_relu, residual, conv_pool)


def fusion_summary(graph: ArchGraph) -> str:
    """One line on what fusion made of ``graph``: ``fused 53 convs: 20 conv+bn, 33 conv+bn+relu``
    (and how many max-pools went into a conv's epilogue, where any did)."""
    kinds: dict[str, int] = {}
    for _, data in graph.nodes(data=True):
        if data["op"] is Op.FUSED_CONV:
            kind = fused_kind(data["attrs"])
            kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return "fused nothing (no conv is followed by a BN, ReLU or 2x2 max-pool it alone feeds)"
    total = sum(kinds.values())
    parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    note = "; batch norm folded into the conv in eval mode" if any("+bn" in k for k in kinds) else ""
    pools = sum(n for k, n in kinds.items() if k.endswith("+maxpool"))
    if pools:
        note += f"; {pools} max-pool{'s' if pools != 1 else ''} (2x2/2) in the conv epilogue at inference"
    return f"fused {total} conv{'s' if total != 1 else ''}: {parts}{note}"
