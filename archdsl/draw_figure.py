"""The paper-style picture (``archdsl draw --style figure``): one box per stage or block, as in
Net2Vis -- each box as wide as its channels and as tall as its resolution, drawn left to right
with matplotlib.

The boxes are the net's own top-level statements (a block call is one box, ``conv3-64 x2``
another), taken from the same cut into statements as the graph picture (archdsl/draw.py).
Statements that change neither channels nor resolution (batch norm, activations, dropout)
join the box before them.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field

from archdsl.draw import DrawError, cut
from archdsl.ir import ArchGraph, Op

_COLOURS = {"conv": "#6fa8dc", "block": "#76a5af", "pool": "#f6b26b", "fc": "#93c47d", "other": "#cccccc"}
_POOLS = (Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL)


@dataclass
class _Stage:
    title: str
    kind: str
    nodes: list[str] = field(default_factory=list)


def stages(graph: ArchGraph) -> list[_Stage]:
    """The boxes of the figure: the top-level statements that carry weights or pool."""
    picture = cut(graph)
    out: list[_Stage] = []
    current_key = None
    for key, box in picture.boxes.items():
        if box.kind == "input":
            continue
        ops = {graph.nodes[n]["op"] for n in box.nodes}
        top = key[0]
        if top == current_key and out:  # more of the same block call
            out[-1].nodes += box.nodes
            continue
        current_key = top
        if box.clusters:  # a block call: its name and positional arguments, bottleneck_stage(128, 4)
            kind, title = "block", re.sub(r",\s*\w+=[^,()]*", "", picture.clusters[box.clusters[0]])
        elif ops & {Op.CONV, Op.FUSED_CONV}:
            kind, title = ("block" if box.kind == "block" else "conv"), box.title.replace(" + relu", "")
        elif ops & {Op.LINEAR}:
            kind, title = "fc", box.title.replace(" + relu", "")
        elif ops & set(_POOLS):
            kind, title = "pool", box.title
        else:
            kind, title = "other", box.title
        if kind == "other" and out:  # bn, relu, dropout, softmax: part of the box before
            out[-1].nodes += box.nodes
            continue
        out.append(_Stage(title, kind, list(box.nodes)))
    return out


def figure(graph: ArchGraph, format: str = "svg") -> bytes:
    """The figure as SVG, PNG or PDF bytes.

    Args:
        graph: a graph from :func:`archdsl.load`.
        format: ``"svg"``, ``"png"`` or ``"pdf"``.
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.patches import Polygon
    except ImportError:
        raise DrawError("--style figure needs matplotlib: pip install 'archdsl[draw]'") from None
    boxes = [_Stage("input", "other", [graph.graph["input"]])] + stages(graph)
    shapes = [graph.shape(s.nodes[-1]) for s in boxes]
    widest = max(s.c for s in shapes)
    tallest = max(graph.input_shape.h, *(s.h for s in shapes))
    fig = Figure(figsize=(max(6.0, 1.2 * len(boxes) + 1.0), 3.6))
    ax = fig.add_axes((0.01, 0.02, 0.98, 0.86))
    x, depth, highest = 0.0, 0.18, 0.0
    for stage, shape in zip(boxes, shapes):
        # width: channels on a log scale; height: the output's resolution (a vector is a bar)
        w = 0.12 + 0.5 * math.log2(max(shape.c, 1)) / math.log2(max(widest, 2))
        h = 0.25 + 2.4 * (shape.h / tallest) if shape.is_map else 0.25 + 0.8 * math.log10(shape.c) / 4
        colour = _COLOURS[stage.kind]
        front = [(x, 0), (x + w, 0), (x + w, h), (x, h)]
        top = [(x, h), (x + w, h), (x + w + depth, h + depth), (x + depth, h + depth)]
        side = [(x + w, 0), (x + w + depth, depth), (x + w + depth, h + depth), (x + w, h)]
        for points, shade in ((side, 0.75), (top, 0.9), (front, 1.0)):
            ax.add_patch(Polygon(points, closed=True, facecolor=_shade(colour, shade), edgecolor="#333333",
                                 linewidth=0.6))
        centre, highest = x + (w + depth) / 2, max(highest, h + depth)
        ax.text(centre, h + depth + 0.08, "\u00d7".join(map(str, shape.dims)), ha="center", va="bottom",
                fontsize=7, color="#333333")
        ax.text(centre, -0.1, _wrap(stage.title), ha="center", va="top", fontsize=7, rotation=0)
        x += w + depth + 0.6
    params = ", ".join(f"{k}={v}" for k, v in sorted(graph.graph.get("params", {}).items()))
    fig.suptitle(f"{graph.name}" + (f" ({params})" if params else "") +
                 f": {graph.params / 1e6:.2f}M params, {graph.macs / 1e9:.2f}G MACs", fontsize=9)
    ax.set_xlim(-0.2, x)
    ax.set_ylim(-0.9, highest + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "archdsl"}):  # real text, stable ids
        fig.savefig(buffer, format=format, bbox_inches="tight", dpi=150, metadata=_metadata(format))
    return buffer.getvalue()


def _metadata(format: str) -> dict:
    # No creation date in the file: the same spec gives the same bytes.
    return {"Date": None} if format in ("svg", "pdf") else {}


def _shade(colour: str, factor: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{min(255, int(c * factor)):02x}" for c in (r, g, b))


def _wrap(text: str, width: int = 14) -> str:
    """A label in lines of about ``width`` characters: a call breaks before its arguments."""
    if len(text) > width and "(" in text:
        name, _, args = text.partition("(")
        return f"{name}\n({args}"
    return text
