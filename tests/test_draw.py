"""`archdsl draw`: one box per written statement, shapes on every edge, counts in the boxes,
residual units drawn as branches and block calls as clusters; parameterised over the bundled
specs, so a new spec is drawn the moment it is added."""

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import archdsl
from archdsl import draw
from archdsl.cli import main
from archdsl.draw import cut, render
from archdsl.ir import Op
from archdsl.limits import Limits

pytest.importorskip("pygraphviz", reason="archdsl draw needs pygraphviz (pip install 'archdsl[draw]')")

SPECS = [s.name for s in archdsl.list_specs()]
SVG = "{http://www.w3.org/2000/svg}"
SHAPE = re.compile(r"^\d+(\u00d7\d+)*$")


def _svg(path):
    """(node titles, edges as (tail, head, label), cluster count) of an SVG from Graphviz."""
    root = ET.parse(path).getroot()
    nodes, edges, clusters = [], [], 0
    for g in root.iter(f"{SVG}g"):
        kind = g.get("class")
        title = g.findtext(f"{SVG}title")
        if kind == "node":
            nodes.append(title)
        elif kind == "edge":
            tail, head = title.split("->")
            texts = [t.text.strip() for t in g.iter(f"{SVG}text") if t.text and t.text.strip()]
            edges.append((tail, head, texts))
        elif kind == "cluster":
            clusters += 1
    return nodes, edges, clusters


@pytest.mark.parametrize("name", SPECS)
def test_every_bundled_spec_draws_a_valid_svg(name, tmp_path):
    out = tmp_path / f"{name}.svg"
    assert main(["draw", name, "-o", str(out)]) == 0
    nodes, edges, _ = _svg(out)
    graph = archdsl.load(name)
    picture = cut(graph)
    # One node per box (statement), plus the input's and the output's.
    assert len(nodes) == len(set(nodes)) == len(picture.boxes) + 1
    assert len(edges) == len(picture.edges) + 1
    for _, _, texts in edges:  # every edge is labelled with a shape
        assert len(texts) == 1 and SHAPE.match(texts[0]), texts
    # The labels are the shapes flowing along the edges, the last one the net's output.
    shapes = {"\u00d7".join(map(str, graph.shape(n).dims)) for n in graph.nodes}
    assert {t[0] for *_, t in edges} <= shapes
    assert [t[0] for a, b, t in edges if b == "output"] == ["\u00d7".join(map(str, graph.output_shape.dims))]


# Statements written in each spec, counted by hand from the text (a repeated statement or
# block call is one; a block called once shows its statements; a residual unit adds its
# addition, and its shortcut where that has layers).
@pytest.mark.parametrize("name, expand, statements, clusters", [
    # 5 x (conv stack; maxpool), fc; dropout; fc; dropout; fc; softmax
    ("vgg_e", False, 16, 0),
    # every conv of the stacks its own box: 16 convs, 5 pools, 3 fc, 2 dropout, softmax
    ("vgg_e", True, 16 + 5 + 3 + 2 + 1, 0),
    # stem (conv, bn, pool) in a cluster; per stage: the first bottleneck (6 layers, add,
    # projection) in a cluster and its repeats as one box; gap, fc, softmax
    ("resnet50", False, 3 + 4 * (8 + 1) + 3, 1 + 4 + 4),
    # every bottleneck opened: 16 x (6 layers + add), 4 projections
    ("resnet50", True, 3 + 16 * 7 + 4 + 3, 1 + 4 + 16),
    # conv; bn; three stages of (first basic: 4 layers + add [+ option-A shortcut]; repeats)
    ("cifar_resnet", False, 2 + (5 + 1) + (6 + 1) + (6 + 1) + 3, 3 + 3),
])
def test_boxes_are_the_written_statements(name, expand, statements, clusters, tmp_path):
    out = tmp_path / "net.svg"
    argv = ["draw", name, "-o", str(out)] + ["--expand"] * expand
    assert main(argv) == 0
    nodes, _, drawn_clusters = _svg(out)
    assert len(nodes) == statements + 2  # and the input and output
    assert drawn_clusters == clusters


def test_residual_units_are_branches():
    graph = archdsl.load("resnet18")
    picture = cut(graph)
    adds = [k for k, b in picture.boxes.items() if b.kind == "add"]
    assert adds
    for key in adds:
        sources = [a for a, b, _ in picture.edges if b == key]
        assert len(sources) == 2  # the branch and the shortcut meet here
    # The unit's input feeds both the branch and the shortcut.
    fanout = {}
    for a, _, _ in picture.edges:
        fanout[a] = fanout.get(a, 0) + 1
    assert max(fanout.values()) == 2
    dot = render(graph, "dot").decode()
    assert dot.count("dashed") >= len(adds)  # shortcuts drawn dashed (clusters are dashed too)


def test_counts_are_under_each_weighted_box():
    picture = cut(archdsl.load("vgg_e"))
    dot = render(picture.graph, "dot").decode()
    fc = next(b for b in picture.boxes.values() if b.title.startswith("fc-4096"))
    params = sum(picture.graph.nodes[n]["meta"]["params"] for n in fc.nodes)
    assert params == 512 * 7 * 7 * 4096 + 4096
    assert "102.76M params" in dot
    collapsed = next(b for b in picture.boxes.values() if b.title.startswith("conv3-256"))
    assert collapsed.title == "conv3-256 + relu \u00d74"


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("dot", b"digraph")])
def test_other_formats(fmt, magic, tmp_path):
    out = tmp_path / f"net.{fmt}"
    assert main(["draw", "cifar_resnet", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_unknown_suffix_is_an_error(tmp_path, capsys):
    assert main(["draw", "vgg_a", "-o", str(tmp_path / "net.gif")]) == 2
    assert "--format" in capsys.readouterr().err
    assert not (tmp_path / "net.gif").exists()


def test_missing_pygraphviz_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pygraphviz", None)
    assert main(["draw", "vgg_a", "-o", str(tmp_path / "net.svg")]) == 2
    assert "pip install 'archdsl[draw]'" in capsys.readouterr().err


def test_import_archdsl_loads_no_heavy_library():
    code = ("import sys, archdsl, archdsl.draw, archdsl.export_commands; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'onnx', 'pygraphviz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_figure_style_is_one_box_per_stage(tmp_path):
    pytest.importorskip("matplotlib", reason="--style figure needs matplotlib (pip install 'archdsl[draw]')")
    from archdsl.draw_figure import stages

    names = [s.title for s in stages(archdsl.load("resnet50"))]
    assert names == ["imagenet_stem", "bottleneck_stage(64, 3)", "bottleneck_stage(128, 4)",
                     "bottleneck_stage(256, 6)", "bottleneck_stage(512, 3)", "gap", "fc-1000"]
    vgg = [s.title for s in stages(archdsl.load("vgg_e"))]
    assert vgg[:4] == ["conv3-64 \u00d72", "maxpool", "conv3-128 \u00d72", "maxpool"] and len(vgg) == 13
    out = tmp_path / "fig.svg"
    assert main(["draw", "resnet50", "--style", "figure", "-o", str(out)]) == 0
    root = ET.parse(out).getroot()
    texts = {"".join(t.itertext()).strip() for t in root.iter(f"{SVG}text")}
    assert {"imagenet_stem", "64\u00d756\u00d756", "2048\u00d77\u00d77", "fc-1000"} <= texts
    assert main(["draw", "resnet50", "--style", "figure", "-o", str(tmp_path / "fig.dot")]) == 2


# -- how deep a picture opens ---------------------------------------------------------------------

def _nested_units(n):
    return "net deep : 3x8x8 { conv3-4; " + "residual { " * n + "conv3-4" + " }" * n + " }"


def _cluster_depth(dot):
    """How deeply the clusters of a dot source nest in one another."""
    depth, deepest = 0, 0
    for line in dot.splitlines():
        if line.strip().startswith("subgraph cluster_"):
            depth += 1
            deepest = max(deepest, depth)
        elif line.strip() == "}" and depth:
            depth -= 1
    return deepest


@pytest.mark.parametrize("expand", [False, True])
def test_bundled_specs_draw_as_if_every_unit_were_open(expand, monkeypatch):
    # No bundled net nests 16 deep: its dot source is the one drawn with no cap at all.
    capped = {name: render(archdsl.load(name), "dot", expand=expand) for name in SPECS}
    monkeypatch.setattr(draw, "DRAWN_DEPTH", 10 ** 6)
    for name in SPECS:
        assert render(archdsl.load(name), "dot", expand=expand) == capped[name], name


def test_deeply_nested_residual_units_are_drawn_to_a_bounded_depth(tmp_path):
    n = 150
    graph = archdsl.loads(_nested_units(n), limits=Limits(max_nesting=200, max_call_depth=200))
    picture = cut(graph)
    # Every graph node is in exactly one box, and the boxes are few: the first conv, the
    # outermost units' additions, and one box for everything nested deeper.
    assert sorted(n for box in picture.boxes.values() for n in box.nodes) == sorted(graph.nodes)
    kinds = [box.kind for box in picture.boxes.values()]
    assert kinds.count("add") == draw.DRAWN_DEPTH and kinds.count("nested") == 1
    assert len(picture.boxes) == draw.DRAWN_DEPTH + 3  # input, conv3-4, the adds, the nested box
    (deep,) = [box for box in picture.boxes.values() if box.kind == "nested"]
    innermost = max(graph.nodes, key=lambda m: len(graph.nodes[m]["meta"].get("stmt", ())))
    assert innermost in deep.nodes
    assert deep.title.startswith("residual { \u2026 }") and f"{n - draw.DRAWN_DEPTH} levels nested" in deep.title
    # Graphviz lays it out: one node per box plus the output.
    out = tmp_path / "deep.svg"
    out.write_bytes(render(graph, "svg"))
    nodes, edges, clusters = _svg(out)
    assert len(nodes) == len(picture.boxes) + 1 and len(edges) == len(picture.edges) + 1 and clusters == 0


def test_deeply_nested_block_calls_are_clusters_to_a_bounded_depth():
    n = 30
    text = "".join(f"block b{i}() {{ conv3-4; b{i + 1}() }}\n" for i in range(n))
    text += f"block b{n}() {{ conv3-4 }}\nnet deep : 3x8x8 {{ b0() }}\n"
    graph = archdsl.loads(text)
    picture = cut(graph)
    dot = render(graph, "dot").decode()
    assert len(picture.clusters) == dot.count("subgraph cluster_") == draw.DRAWN_DEPTH
    assert _cluster_depth(dot) == draw.DRAWN_DEPTH
    # The 16 outermost calls each show their conv; the rest is one box, every conv in it.
    convs = [m for m in graph.nodes if graph.nodes[m]["op"] is Op.CONV]
    assert len(convs) == n + 1
    (deep,) = [box for box in picture.boxes.values() if box.kind == "nested"]
    assert sum(m in deep.nodes for m in convs) == n + 1 - draw.DRAWN_DEPTH
    assert deep.title.startswith("b16()")
    assert sorted(m for box in picture.boxes.values() for m in box.nodes) == sorted(graph.nodes)
