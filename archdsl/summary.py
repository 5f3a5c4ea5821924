"""The per-layer summary of a checked graph, as a table for people or JSON for tools.

In the JSON, the counts end in ``_count`` (``param_count``, ``mac_count``, ``flop_count``,
``activation_count``), and ``arguments`` are the values of the net's own parameters
(``n``, ``shortcut``); every layer names the ``file`` its ``line`` and ``column`` are in (an
imported library's, for a layer written in one of its blocks).
"""

from __future__ import annotations

import json

from archdsl.errors import printable
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
            "param_count": meta["params"],
            "mac_count": meta["macs"],
            "activation_count": meta["activations"],
            "receptive_field": meta["rf"],
            "stride": meta["jump"],
            "file": span.file if span else None,
            "line": span.line if span else None,
            "column": span.column if span else None,
        })
    return out


def to_json(graph: ArchGraph) -> str:
    """Totals (``param_count``, ``mac_count``, ``flop_count`` = 2 x MACs, shapes), the net's
    ``arguments``, the spec ``files`` the layers come from, and per-layer ``layers``."""
    layers = rows(graph)
    files = [graph.graph.get("file")] + [row["file"] for row in layers]
    data = {
        "name": graph.name,
        "file": graph.graph.get("file"),
        "files": [f for i, f in enumerate(files) if f is not None and f not in files[:i]],
        "arguments": graph.graph.get("params", {}),
        "input_shape": list(graph.input_shape.dims),
        "output_shape": list(graph.output_shape.dims),
        "param_count": graph.params,
        "mac_count": graph.macs,
        "flop_count": 2 * graph.macs,
        "activation_count": sum(d["meta"]["activations"] for _, d in graph.nodes(data=True)),
        "layers": layers,
    }
    return json.dumps(data, indent=2)


def arguments(values: dict) -> str:
    """A net's argument values as written on a command line: ``n=18, shortcut=A``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


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
        if brief and not row["param_count"] and row["op"] != "input":
            continue
        body.append((row["name"], row["layer"], "x".join(map(str, row["output_shape"])),
                     f"{row['param_count']:,}" if row["param_count"] else "",
                     _si(row["mac_count"]) if row["mac_count"] else "",
                     str(row["receptive_field"]), str(row["stride"])))
    activations = sum(d["meta"]["activations"] for _, d in graph.nodes(data=True))
    params = printable(arguments(graph.graph.get("params", {})))
    title = printable(graph.name) + (f" ({params})" if params else "")
    lines = [title, *fixed_width(header, body, right={3, 4, 5, 6})]
    lines += [
        "",
        f"input {graph.input_shape} -> output {graph.output_shape}",
        f"parameters   {graph.params:,}",
        f"MACs         {graph.macs:,} ({_si(graph.macs)} multiply-accumulates; FLOPs = 2 x MACs = {_si(2 * graph.macs)})",
        f"activations  {activations:,} values per sample ({activations * 4 / 2**20:.1f} MiB in fp32)",
    ]
    return "\n".join(lines)
