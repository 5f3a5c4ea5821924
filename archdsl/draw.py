"""Pictures of a network: one box per written statement, laid out by Graphviz's ``dot``.

``conv3-256 x4`` is one box, and so is a repeated block call (``expand=True`` opens both);
a block called once is a cluster around the boxes of its statements; a residual unit draws
its branch, its shortcut (a box of its own when it has layers) and the addition; every edge
carries the shape that flows along it, and every box the parameters and MACs of what it
stands for. Nothing here assumes a chain: any DAG of statements is drawn as it is wired.

Pictures stay small enough for ``dot`` to lay out: only the outermost ``DRAWN_DEPTH`` (16)
levels of residual units, merges, groups and block calls are drawn open. One nested deeper is
one box (``residual { ... }`` or the call, marked "N levels nested, drawn as one box") holding
all of its layers, their parameters and MACs. ``dot``'s work grows far faster than the boxes and edges (a chain of
62 nested residual units, whose every shortcut leaves from the same box, takes seconds; 198
take minutes), and the limits let a spec nest up to 200 deep; no bundled net comes near 16.

Which statement a node came from is the ``meta["stmt"]`` path that expansion records
(frontend/expand.py): ``(kind, span, repeat index, repeat count)`` per enclosing statement.

Layout and rendering are Graphviz's, through pygraphviz, whose wheels carry Graphviz itself
(``pip install 'archdsl[draw]'``), so no system package is needed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from archdsl.ir import ArchGraph, Op
from archdsl.passes.analysis import describe
from archdsl.summary import _si

if TYPE_CHECKING:
    import pygraphviz

FORMATS = ("svg", "png", "pdf", "dot")

# Fill colours by op family, so a conv stack, its pools and its classifier read at a glance.
_FILL = {
    Op.CONV: "#cfe2f3", Op.FUSED_CONV: "#cfe2f3", Op.LINEAR: "#d9ead3",
    Op.MAXPOOL: "#fce5cd", Op.AVGPOOL: "#fce5cd", Op.GLOBAL_AVGPOOL: "#fce5cd",
    Op.BATCHNORM: "#e6e0f0", Op.LRN: "#e6e0f0", Op.ADD: "#fff2cc", Op.SHORTCUT_PAD: "#f4cccc",
}
_BLOCK_FILL = "#d0e0e3"  # a collapsed repeat of a block call
_PLAIN_FILL = "#f3f3f3"  # activations, dropout
_FONT = "Helvetica,Arial,sans-serif"

#: How many residual units and block calls, nested in one another, are drawn open; one nested
#: deeper is drawn as a single box (see the module docstring).
DRAWN_DEPTH = 16


@dataclass
class Box:
    """One drawn node: a written statement (or all repeats of one), or a residual's
    addition or shortcut.

    Attributes:
        key: its identity, the statement path it stands for.
        nodes: the graph nodes it stands for, in topological order.
        title: what the statement says (``conv3-64``, ``bottleneck(128) x3``).
        clusters: keys of the block calls around it, outermost first.
        span: where the statement is written.
    """

    key: tuple
    nodes: list[str] = field(default_factory=list)
    title: str = ""
    clusters: tuple[tuple, ...] = ()
    span: object = None
    kind: str = "layer"  # layer | block | add | shortcut | input | nested


@dataclass
class Picture:
    """A graph cut into boxes: the boxes in topological order, the edges between them
    (``(box key, box key, graph node feeding it)``) and the block-call clusters by key
    (their titles)."""

    graph: ArchGraph
    boxes: dict[tuple, Box]
    edges: list[tuple[tuple, tuple, str]]
    clusters: dict[tuple, str]
    of: dict[str, tuple]  # graph node -> the key of its box


def _ident(span) -> tuple:
    return (span.file, span.line, span.column)


def _written(span) -> str:
    """The text of a statement as written (one line)."""
    line = span.text.rstrip("\r\n")
    end = span.end_column - 1 if span.end_column else len(line)
    return " ".join(line[span.column - 1:end].split())


def _raw_key(data: dict, expand: bool) -> tuple[tuple, int]:
    """A node's box key before implied activations move, and how many leading path elements
    are block calls drawn as clusters (the key prefixes ending there)."""
    key: list = []
    opened = 0  # residual units and block calls drawn open so far
    for kind, span, index, count in data["meta"].get("stmt", ()):
        if kind != "layer" and opened == DRAWN_DEPTH:  # nested too deep: one box for it all
            key += [(kind, _ident(span), "*" if count > 1 and not expand else index), "nested"]
            return tuple(key), len(key)
        opened += kind != "layer"
        if count > 1 and not expand:
            key.append((kind, _ident(span), "*"))
            return tuple(key), len(key)
        key.append((kind, _ident(span), index))
    if key and key[-1][0] == "residual":  # the unit's own nodes: its addition or its shortcut
        key.append("add" if data["op"] in (Op.ADD, Op.RELU) else "shortcut")
    return tuple(key), len(key)


def cut(graph: ArchGraph, expand: bool = False) -> Picture:
    """Group the nodes of ``graph`` into boxes, one per written statement.

    Args:
        graph: a graph from :func:`archdsl.load` (its nodes carry ``meta["stmt"]``).
        expand: one box per repeat of a repeated statement, and a cluster per repeat of a
            repeated block call, instead of one box for all repeats.
    """
    order = graph.order()
    raw = {n: _raw_key(graph.nodes[n], expand)[0] for n in order}
    owners: dict[tuple, set[Op]] = {}
    for n in order:
        owners.setdefault(raw[n], set()).add(graph.nodes[n]["op"])
    of: dict[str, tuple] = {}
    for n in order:
        data = graph.nodes[n]
        if data["op"] is Op.INPUT:
            of[n] = ("input",)
        elif data["op"] is Op.RELU and owners[raw[n]] - {Op.RELU}:
            # An implied ReLU: drawn with whatever feeds it (the conv, or the bn written after
            # it), so that "conv; bn" does not become conv -> bn -> conv's box again.
            of[n] = of[data["args"][0]]
        else:
            of[n] = raw[n]

    boxes: dict[tuple, Box] = {}
    clusters: dict[tuple, str] = {}
    for n in order:
        data = graph.nodes[n]
        key = of[n]
        box = boxes.get(key)
        if box is None:
            box = boxes[key] = _new_box(key, data, graph, clusters)
        box.nodes.append(n)
    edges, seen = [], set()
    for n in order:
        for arg in graph.nodes[n]["args"]:
            a, b = of[arg], of[n]
            if a != b and (a, b) not in seen:
                seen.add((a, b))
                edges.append((a, b, arg))
    for box in boxes.values():
        box.title = _title(box, graph)
    return Picture(graph, boxes, edges, clusters, of)


def _new_box(key: tuple, data: dict, graph: ArchGraph, clusters: dict[tuple, str]) -> Box:
    if key == ("input",):
        return Box(key, kind="input", title="input", span=graph.graph.get("spec"))
    path = data["meta"]["stmt"]
    box = Box(key)
    around = []  # block calls drawn open around this box
    for depth, element in enumerate(key):
        if isinstance(element, str):  # a residual unit's addition or shortcut
            box.kind = element
            break
        kind, _, index = element
        box.span = path[depth][1]
        if key[depth + 1:] == ("nested",):  # a unit or call nested too deep, drawn as one box
            box.kind = "nested"
            break
        if index == "*":  # all repeats of a statement as one box
            box.kind = "layer" if depth == len(path) - 1 and kind == "layer" else "block"
            break
        if depth == len(key) - 1:  # a layer statement
            break
        if kind != "residual":  # a block call (a bare block name is written like a layer)
            prefix, count = key[:depth + 1], path[depth][3]
            clusters.setdefault(prefix, _call_text(box.span, graph) + (f"  [{index + 1}/{count}]" if count > 1 else ""))
            around.append(prefix)
    box.clusters = tuple(around)
    return box


def _title(box: Box, graph: ArchGraph) -> str:
    first = graph.nodes[box.nodes[0]]
    if box.kind == "input":
        return "input"
    if box.kind == "add":
        ops = [graph.nodes[n]["op"] for n in box.nodes]
        return " + ".join(["add"] * (Op.ADD in ops) + ["relu"] * (Op.RELU in ops))
    if box.kind == "nested":
        path, depth = first["meta"]["stmt"], len(box.key) - 2
        kind = path[depth][0]
        head = _call_text(box.span, graph) if kind == "call" else kind + " { \u2026 }"
        below = max(sum(element[0] != "layer" for element in graph.nodes[n]["meta"]["stmt"][depth:])
                     for n in box.nodes)
        count = f" \u00d7{path[depth][3]}" if box.key[-2][2] == "*" else ""
        return f"{head}{count}  ({below} levels nested, drawn as one box)"
    if box.kind == "shortcut":
        layers = ", ".join(_layer_text(graph.nodes[n], own_text=False) for n in box.nodes)
        return layers if layers.startswith("shortcut") else f"shortcut: {layers}"
    repeat = box.key[-1][2] == "*" if isinstance(box.key[-1], tuple) else False
    count = f" \u00d7{first['meta']['stmt'][len(box.key) - 1][3]}" if repeat else ""
    if box.kind == "block":
        return _call_text(box.span, graph) + count
    main = [graph.nodes[n] for n in box.nodes if graph.nodes[n]["op"] is not Op.RELU] or [first]
    text = _layer_text(main[0])
    if any(graph.nodes[n]["op"] is Op.RELU for n in box.nodes) and main[0]["op"] is not Op.RELU:
        text += " + relu"
    return text + count


def _layer_text(data: dict, own_text: bool = True) -> str:
    """A layer as the spec writes it: its own text where that is literal (``conv3-64``), else
    spelled from its attributes (the text may name block parameters, ``conv3-{c}/{stride}``)."""
    span = data["span"]
    if own_text and span is not None and span.text:
        written = _written(span)
        if written and "{" not in written:
            return written
    op, a = data["op"], data["attrs"]
    if op in (Op.CONV, Op.MAXPOOL, Op.AVGPOOL):
        (kh, kw), (sh, sw) = a["kernel"], a["stride"]
        text = ("conv" if op is Op.CONV else op.value) + (f"{kh}" if kh == kw else f"{kh}x{kw}")
        text += f"-{a['out_channels']}" if op is Op.CONV else ""
        text += f"/{sh}" if (sh, sw) != (1, 1) and sh == sw else (f"/{sh}x{sw}" if sh != sw else "")
        return text + (f" groups={a['groups']}" if a.get("groups", 1) > 1 else "")
    if op is Op.LINEAR:
        return f"fc-{a['out_features']}"
    return describe(op, a)


def _call_text(span, graph: ArchGraph) -> str:
    """A block call as written, with the net's parameters filled in; just the block's name
    where the arguments name the parameters of an enclosing block."""
    text = _written(span)
    for name, value in graph.graph.get("params", {}).items():
        text = text.replace("{" + name + "}", str(value))
    return text.split("(")[0] if "{" in text else text


def _counts(box: Box, graph: ArchGraph) -> tuple[int, int]:
    params = sum(graph.nodes[n]["meta"].get("params", 0) for n in box.nodes)
    macs = sum(graph.nodes[n]["meta"].get("macs", 0) for n in box.nodes)
    return params, macs


def _shape_text(graph: ArchGraph, node: str) -> str:
    return "\u00d7".join(str(d) for d in graph.shape(node).dims)


def _label(box: Box, graph: ArchGraph) -> str:
    """An HTML-like Graphviz label: the title, then the counts in a smaller line."""
    lines = [f"<b>{html.escape(box.title)}</b>"]
    params, macs = _counts(box, graph)
    counts = [f"{_si(params)} params"] * bool(params) + [f"{_si(macs)} MACs"] * bool(macs)
    if counts:
        lines.append('<font point-size="9" color="#444444">' + " \u00b7 ".join(counts) + "</font>")
    return "<" + "<br/>".join(lines) + ">"


def _fill(box: Box, graph: ArchGraph) -> str:
    if box.kind in ("block", "nested"):
        return _BLOCK_FILL
    if box.kind == "add":
        return _FILL[Op.ADD]
    ops = [graph.nodes[n]["op"] for n in box.nodes]
    main = next((op for op in ops if op is not Op.RELU), ops[0])
    return _FILL.get(main, _PLAIN_FILL)


def to_agraph(picture: Picture, rankdir: str = "TB") -> "pygraphviz.AGraph":
    """The picture as a Graphviz graph (pygraphviz), not yet laid out."""
    pgv = _pygraphviz()
    graph = picture.graph
    ag = pgv.AGraph(directed=True, strict=False, name=graph.name)
    ag.graph_attr.update(rankdir=rankdir, fontname=_FONT, fontsize="11", nodesep="0.25", ranksep="0.3",
                         label=_graph_title(graph), labelloc="t")
    ag.node_attr.update(shape="box", style="rounded,filled", fontname=_FONT, fontsize="11", margin="0.08,0.03",
                        penwidth="0.8")
    ag.edge_attr.update(fontname=_FONT, fontsize="9", fontcolor="#333333", arrowsize="0.6", penwidth="0.8")
    ids = {key: f"n{i}" for i, key in enumerate(picture.boxes)}
    subgraphs: dict[tuple, object] = {(): ag}
    for i, (key, title) in enumerate(picture.clusters.items()):
        parent = max((p for p in subgraphs if key[:len(p)] == p and p != key), key=len)
        subgraphs[key] = subgraphs[parent].add_subgraph(
            name=f"cluster_{i}", label=title, style="rounded,dashed", color="#888888", fontsize="10",
            labeljust="l")
    for key, box in picture.boxes.items():
        holder = subgraphs[box.clusters[-1]] if box.clusters else ag
        attrs = dict(label=_label(box, graph), fillcolor=_fill(box, graph))
        if box.span is not None:
            attrs["tooltip"] = f"{box.span}"
        if box.kind == "input":
            attrs.update(shape="plaintext", style="")
        holder.add_node(ids[key], **attrs)
    for a, b, node in picture.edges:
        shortcut = picture.boxes[b].kind == "shortcut" or (
            picture.boxes[b].kind == "add" and picture.of[node] == a and _is_shortcut_input(graph, node, b, picture))
        style = {"style": "dashed", "color": "#777777"} if shortcut else {}
        ag.add_edge(ids[a], ids[b], label=" " + _shape_text(graph, node), **style)
    ag.add_node("output", label="output", shape="plaintext", style="")
    ag.add_edge(ids[picture.of[graph.graph["output"]]], "output",
                label=" " + _shape_text(graph, graph.graph["output"]))
    return ag


def _is_shortcut_input(graph: ArchGraph, node: str, add_key: tuple, picture: Picture) -> bool:
    """Whether ``node`` reaches the addition ``add_key`` as its shortcut (second) input."""
    for n in picture.boxes[add_key].nodes:
        data = graph.nodes[n]
        if data["op"] is Op.ADD and len(data["args"]) > 1 and data["args"][1] == node:
            return True
    return False


def _graph_title(graph: ArchGraph) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(graph.graph.get("params", {}).items()))
    head = graph.name + (f"({params})" if params else "")
    return f"{head}: {_si(graph.params)} params, {_si(graph.macs)} MACs"


def render(graph: ArchGraph, format: str = "svg", expand: bool = False) -> bytes:
    """The picture of ``graph`` as bytes: SVG, PNG or PDF laid out by Graphviz ``dot``, or the
    ``dot`` source itself.

    Args:
        graph: a graph from :func:`archdsl.load`.
        format: one of :data:`FORMATS`.
        expand: one box per repeat (see :func:`cut`).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown picture format {format!r} (formats: {', '.join(FORMATS)})")
    ag = to_agraph(cut(graph, expand=expand))
    if format == "dot":
        return ag.string().encode("utf-8")
    return ag.draw(format=format, prog="dot")


class DrawError(RuntimeError):
    """A picture cannot be made here (a library is missing)."""


def _pygraphviz():
    try:
        import pygraphviz
    except ImportError:
        raise DrawError("drawing needs pygraphviz, whose wheels include Graphviz: "
                        "pip install 'archdsl[draw]'") from None
    return pygraphviz
