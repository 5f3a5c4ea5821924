"""The per-layer summary of a checked graph, as a table for people or JSON for tools."""

from __future__ import annotations

import json

from archdsl.ir import ArchGraph
from archdsl.tables import fixed_width
from archdsl.ops import describe


def rows(graph: ArchGraph) -> list[dict]:
    out = []
    for name, data in graph.ops():
        meta, span = data["meta"], data["span"]
        out.append({
            "name": name,
            "op": data["op"].value,
            "layer": describe(data["op"], data["attrs"]),
            "scope": data["scope"],
            "inputs": list(data["args"]),
            "output_shape": list(meta["shape"].dims),
            "params": meta["params"],
            "macs": meta["macs"],
            "activations": meta["activations"],
            "receptive_field": meta["rf"],
            "stride": meta["jump"],
            "line": span.line if span else None,
        })
    return out


def to_json(graph: ArchGraph) -> str:
    """Totals (``params``, ``macs`` and ``flops`` = 2 x MACs, shapes) and per-layer ``layers``."""
    data = {
        "name": graph.name,
        "file": graph.graph.get("file"),
        "parameters": graph.graph.get("params", {}),
        "input_shape": list(graph.input_shape.dims),
        "output_shape": list(graph.output_shape.dims),
        "params": graph.params,
        "macs": graph.macs,
        "flops": 2 * graph.macs,
        "activations": sum(d["meta"]["activations"] for _, d in graph.nodes(data=True)),
        "layers": rows(graph),
    }
    return json.dumps(data, indent=2)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def table(graph: ArchGraph, brief: bool = False) -> str:
    """A fixed-width table: one row per node (or per weighted layer with ``brief``), then totals.

    RF is the receptive field and stride the spacing of the output grid, both along the
    height in input pixels."""
    header = ("layer", "op", "output", "params", "MACs", "RF", "stride")
    body = []
    for row in rows(graph):
        if brief and not row["params"] and row["op"] != "input":
            continue
        body.append((row["name"], row["layer"], "x".join(map(str, row["output_shape"])),
                     f"{row['params']:,}" if row["params"] else "", _si(row["macs"]) if row["macs"] else "",
                     str(row["receptive_field"]), str(row["stride"])))
    activations = sum(d["meta"]["activations"] for _, d in graph.nodes(data=True))
    params = ", ".join(f"{k}={v}" for k, v in sorted(graph.graph.get("params", {}).items()))
    lines = [f"{graph.name}" + (f" ({params})" if params else ""), *fixed_width(header, body, right={3, 4, 5, 6})]
    lines += [
        "",
        f"input {graph.input_shape} -> output {graph.output_shape}",
        f"parameters   {graph.params:,}",
        f"MACs         {graph.macs:,} ({_si(graph.macs)} multiply-accumulates; FLOPs = 2 x MACs = {_si(2 * graph.macs)})",
        f"activations  {activations:,} values per sample ({activations * 4 / 2**20:.1f} MiB in fp32)",
    ]
    return "\n".join(lines)
