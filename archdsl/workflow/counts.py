"""What a variant costs, from its checked graph: the sweep table's row and the summary's
per-stage and per-block subtotals. Everything is read from the counts the analysis pass wrote
into each node's meta (passes/analysis.py); nothing is recounted here."""

from __future__ import annotations

from archdsl.ir import ArchGraph
from archdsl.ops import WEIGHTED

#: Bytes of one activation value in the memory column (fp32, as ``archdsl summary`` reports).
BYTES_PER_VALUE = 4


def depth(graph: ArchGraph) -> int:
    """Weighted layers (conv, fc) on the longest path from input to output: the papers' depth.

    A projection shortcut runs beside the block it bypasses, so ResNet-18 with option B is 18
    deep, not 21, and a fused conv counts once."""
    longest: dict[str, int] = {}
    for name, data in graph.ops():
        before = max((longest[a] for a in data["args"]), default=0)
        longest[name] = before + int(data["op"] in WEIGHTED)
    return longest[graph.graph["output"]]


def activations(graph: ArchGraph) -> int:
    """Output values of every node for one sample (the input included)."""
    return sum(d["meta"]["activations"] for _, d in graph.nodes(data=True))


def variant_row(graph: ArchGraph) -> dict:
    """The sweep table's columns for one variant: its parameter values, then its costs (counts
    spelt as in the summary's JSON: ``param_count``, ``mac_count``, ``activation_count``)."""
    meta = graph.nodes[graph.graph["output"]]["meta"]
    values = activations(graph)
    return {
        **graph.graph.get("params", {}),
        "depth": depth(graph),
        "param_count": graph.params,
        "mac_count": graph.macs,
        "activation_count": values,
        "activation_mib": round(values * BYTES_PER_VALUE / 2**20, 2),
        "receptive_field": meta["rf"],
        "output_shape": list(graph.output_shape.dims),
    }


def subtotals(graph: ArchGraph) -> list[dict]:
    """Parameters, MACs and activations per stage and per block, in network order (keys as in
    the summary's JSON: ``param_count``, ``mac_count``, ``activation_count``).

    A node's ``scope`` is the dotted path of the block calls it was expanded from
    (``basic_stage2.basic4``): its first part names the stage, the first two the block.
    Nodes written at net level (the stem, the classifier) are grouped as ``(net)``.
    """
    groups: dict[tuple[str, str], dict] = {}
    for _, data in graph.ops():
        parts = data["scope"].split(".") if data["scope"] else []
        keys = [("stage", parts[0] if parts else "(net)")]
        if len(parts) > 1:
            keys.append(("block", ".".join(parts[:2])))
        for level, scope in keys:
            row = groups.setdefault((level, scope), {"level": level, "scope": scope, "layers": 0,
                                                     "param_count": 0, "mac_count": 0, "activation_count": 0})
            meta = data["meta"]
            row["layers"] += int(data["op"] in WEIGHTED)
            row["param_count"] += meta["params"]
            row["mac_count"] += meta["macs"]
            row["activation_count"] += meta["activations"]
    return list(groups.values())
