"""Properties of random valid architectures, checked end to end against PyTorch.

Networks come from :mod:`archdsl.testing`: chains of conv / pool / fc / bn / LRN / dropout /
activations, residual units with every shortcut option, blocks with parameters, repeats,
random widths, kernels, strides, paddings, groups and input sizes, written in varied styles.
For each one: the inferred shape of every node is the shape PyTorch produces, the analysed
parameters and MACs are the module's, the emitted source computes what the in-process module
computes, and the canonical printer round-trips.

ARCHDSL_EXAMPLES=N multiplies the number of examples of every property by N (a deeper run).
"""

from __future__ import annotations

import contextlib
import io
import os
import re

import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
import archdsl.testing as at
from archdsl import Op
from archdsl.cli import main
from archdsl.frontend.loader import SPECS_DIR, check_text
from archdsl.frontend.parser import parse
from archdsl.frontend.printer import format_expr, format_text

_SCALE = int(os.environ.get("ARCHDSL_EXAMPLES", "1"))


def examples(n: int):
    # deadline=None: a deadline is a wall-clock assert, flaky on a busy machine; instead every
    # example is small (the generator's defaults keep a net to a few layers of <= 16 channels
    # and <= 32 pixels, and fuzzed text is cut at FUZZ's token limit), so a failure shrinks in
    # seconds. Suppressed health checks: too_slow measures time too; data_too_large fires on
    # nested nets, which draw many choices by design.
    return settings(max_examples=n * _SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


#: Fuzzed text longer than this many tokens is left to test_hostile (whose limits refuse it):
#: here it would only make parsing, and shrinking a failure, slow.
FUZZ = archdsl.Limits(max_tokens=3000)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions run much faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ordered_nodes(graph):
    """What a graph computes, node by node in order: name, op, attributes, inputs, shape."""
    return [(n, d["op"], d["attrs"], d["args"], d["meta"]["shape"]) for n, d in graph.ops()]


def shortcut_strides(graph):
    """The stride of every shortcut that is not the identity, in the order they were made."""
    found = []
    for name, data in graph.nodes(data=True):  # insertion order: the order of expansion
        if data["op"] is Op.SHORTCUT_PAD:
            found.append(data["attrs"]["stride"])
        elif data["op"] is Op.CONV and re.search(r"(^|_)proj\d+$", name):
            found.append(data["attrs"]["stride"][0])
    return found


# -- end to end ------------------------------------------------------------------------------
@examples(300)
@given(at.nets())
def test_random_nets_lower_to_what_the_analysis_says(net):
    graph = archdsl.loads(net.text)
    # the generator's own shape model (PyTorch's formulas) agrees with the compiler's
    assert graph.output_shape == net.output_shape
    report = at.check_lowering(graph)
    assert report["nodes"] == len(graph) - 1  # every node but the input was compared


@examples(150)
@given(at.nets(max_depth=3, max_layers=4, kinds=("conv", "bn", "relu", "maxpool", "avgpool"),
               shortcuts=("A", "B", "C", "P", "identity")))
def test_residual_nets_and_their_shortcuts(net):
    graph = archdsl.loads(net.text)
    assert graph.output_shape == net.output_shape
    adds = [n for n, d in graph.nodes(data=True) if d["op"] is Op.ADD]
    assert len(adds) == net.residual_units  # every unit here has a shortcut
    strides = shortcut_strides(graph)
    assert len(strides) == len(net.shortcut_strides)
    for got, (branch, _) in zip(strides, net.shortcut_strides):
        if branch is not None:  # where the branch's own stride fits, the shortcut uses it
            assert got == branch
    at.check_lowering(graph, source=False)


@examples(100)
@given(at.nets(max_width=8, max_size=12), st.integers(1, 3))
def test_emitted_source_and_module_agree_on_any_batch(net, batch):
    graph = archdsl.loads(net.text)
    module = archdsl.compile(graph, softmax=True).eval()  # the graph as emitted, with its softmax
    emitted = at.source_module(graph)
    emitted.load_state_dict(module.state_dict(), strict=True)
    emitted.eval()
    x = torch.randn(batch, *graph.input_shape.dims)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), module(x), rtol=1e-5, atol=1e-6)


def test_shortcut_takes_the_stride_of_its_branch():
    # 5 -> 2 by a stride of 3: rounding 5/2 gave stride 2, which maps 5 to 3 and was refused
    g = archdsl.loads("net r : 4x5x5 { residual { conv3-4/3 } }")
    assert shortcut_strides(g) == [3]
    at.check_lowering(g)
    # 4 -> 2 by a stride of 3: stride 2 also gives 2x2, but samples other pixels
    g = archdsl.loads("net r : 4x4x4 { residual shortcut=A { conv3-8/3 } }")
    assert shortcut_strides(g) == [3]
    # a branch whose stride does not give its size (even kernel): the smallest that does
    g = archdsl.loads("net r : 4x8x8 { residual shortcut=B { conv2-4/2 pad=0 } }")
    assert g.output_shape.dims == (4, 4, 4) and shortcut_strides(g) == [2]


# -- the checks can fail ------------------------------------------------------------------------
def test_check_lowering_catches_a_wrong_shape_param_or_mac_count():
    text = "net t : 3x9x9 { conv3-4/2; maxpool; fc-5 }"
    at.check_lowering(archdsl.loads(text))

    g = archdsl.loads(text)
    g.nodes["pool1"]["meta"]["shape"] = archdsl.Shape.of(4, 3, 3)  # PyTorch gives 4x2x2
    with pytest.raises(AssertionError, match="pool1"):
        at.check_lowering(g)

    g = archdsl.loads(text)
    g.nodes["relu1"]["meta"]["shape"] = archdsl.Shape.of(4, 5, 4)  # a function node
    with pytest.raises(AssertionError, match="relu1"):
        at.check_lowering(g)

    g = archdsl.loads(text)
    g.nodes["fc1"]["meta"]["params"] += 1
    with pytest.raises(AssertionError, match="parameters"):
        at.check_lowering(g)

    g = archdsl.loads(text)
    g.nodes["conv1"]["meta"]["macs"] -= 1
    with pytest.raises(AssertionError, match="MACs"):
        at.check_lowering(g)


def test_macs_counted_from_a_forward_pass():
    g = archdsl.loads("net t : 4x10x10 { conv3-6/2 groups=2; fc-3 }")
    module = archdsl.compile(g)
    # conv: 6x5x5 outputs, each (4/2)*3*3 MACs; fc: 3 outputs of 150 inputs
    assert at.count_macs(module, torch.zeros(2, 4, 10, 10)) == 6 * 25 * 18 + 3 * 150 == g.macs


# -- the strategies honour their knobs --------------------------------------------------------------
@examples(40)
@given(at.graphs(kinds=("conv", "fc"), allow_residual=False, allow_blocks=False, max_width=5, max_size=7))
def test_graphs_knobs_limit_what_is_generated(graph):
    ops = {d["op"] for _, d in graph.nodes(data=True)}
    assert ops <= {Op.INPUT, Op.CONV, Op.LINEAR, Op.RELU}
    assert max(graph.input_shape.dims[1:]) <= 7
    for _, d in graph.nodes(data=True):
        if d["op"] in (Op.CONV, Op.LINEAR):
            assert max(d["attrs"].get("out_channels", 0), d["attrs"].get("out_features", 0)) <= 5


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown layer kinds"):
        at.nets(kinds=("conv", "deconv"))


def test_the_testing_package_keeps_its_public_api_and_is_packaged():
    import importlib

    for name in ("specs", "graphs", "nets", "check_lowering", "hostile_text", "mutated_specs", "token_soup",
                 "bundled_sources", "count_macs", "count_params", "source_module", "Config", "GeneratedNet"):
        assert callable(getattr(at, name)), name
    for module in ("generator", "hostile", "checks"):
        assert importlib.import_module(f"archdsl.testing.{module}")
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    packages = set(project["tool"]["setuptools"]["packages"])
    assert "archdsl.testing" in packages  # or an installed wheel would lack it
    assert any(d.split(">")[0].split("=")[0].strip() == "numpy" for d in project["project"]["dependencies"])


# -- the canonical printer ------------------------------------------------------------------------
def assert_round_trip(text: str, file: str = "<string>", base_dir=None):
    canonical = format_text(text, file)
    assert format_text(canonical, file) == canonical  # printing is idempotent
    assert parse(canonical, file) == parse(text, file)  # the same syntax tree, spans aside
    for line in re.sub(r"#.*", "", canonical).splitlines():  # '; ' only between statements
        assert not line.rstrip().endswith(";") and ";;" not in line and "{;" not in line.replace(" ", "")
    return canonical


@examples(300)
@given(at.nets())
def test_printer_round_trips_random_specs(net):
    canonical = assert_round_trip(net.text)
    g1, g2 = archdsl.loads(net.text), archdsl.loads(canonical)
    assert ordered_nodes(g1) == ordered_nodes(g2)
    assert nx.is_isomorphic(
        g1, g2,
        node_match=lambda a, b: a["op"] == b["op"] and a["attrs"] == b["attrs"],
        edge_match=lambda a, b: a["index"] == b["index"])
    # every comment survives, in order
    comments = [c.text for c in parse(net.text).comments]
    assert [c.text for c in parse(canonical).comments] == comments


@examples(500)
@given(at.hostile_text())
def test_printer_round_trips_whatever_parses(text):
    # mutated specs and token soup that still parse: odd layouts, comments, continuations
    try:
        check_text(text, "<string>", FUZZ)
        parse(text)
    except archdsl.SpecError:
        return
    assert_round_trip(text)


@pytest.mark.parametrize("path, text", at.bundled_sources(), ids=lambda v: os.path.basename(str(v))[:20])
def test_printer_round_trips_bundled_specs(path, text):
    canonical = assert_round_trip(text, path)
    assert [c.text for c in parse(canonical).comments] == [c.text for c in parse(text).comments]
    if parse(text).nets:
        base = os.path.dirname(path)
        g1 = archdsl.loads(text, base_dir=base)
        g2 = archdsl.loads(canonical, base_dir=base)
        assert ordered_nodes(g1) == ordered_nodes(g2)


@pytest.mark.parametrize("source, canonical", [
    ("{a-(b-c)}", "{a-(b-c)}"),
    ("{(a-b)-c}", "{a-b-c}"),
    ("{(a*b)+(c*d)}", "{a*b+c*d}"),
    ("{(a+b)*c}", "{(a+b)*c}"),
    ("{-(a+b)}", "{-(a+b)}"),
    ("{--a}", "{--a}"),
    ("{a//(b%c)}", "{a//(b%c)}"),
    ("{((((1))))}", "{1}"),
    ("{1e999}", "{1e999}"),
    ("{2.50}", "{2.5}"),
])
def test_expressions_print_with_the_parentheses_they_need(source, canonical):
    spec = parse(f"net a : 1x1x1 {{ relu p={source} }}")
    value = spec.nets[0].body[0].options[0].value
    assert format_expr(value) == canonical
    again = parse(f"net a : 1x1x1 {{ relu p={canonical} }}").nets[0].body[0].options[0].value
    assert again == value


def test_printer_layout_and_comments():
    text = ("# head\n\nimport \"lib/resnet.arch\"\nnet a(c=4) : 3x8x8 {  # the net\n"
            "  conv3-{c}; bn  # two on a line\n  # before the unit\n\n"
            "  residual shortcut=A { conv3-{2*c}/2 bias=false; bn } x2  # twice\n  # last\n}  # end\n")
    assert format_text(text) == (
        "# head\n\nimport \"lib/resnet.arch\"\n\nnet a(c=4) : 3x8x8 {  # the net\n"
        "    conv3-{c}; bn  # two on a line\n    # before the unit\n\n"
        "    residual shortcut=A {\n        conv3-{2*c}/2 bias=false; bn\n    } x2  # twice\n"
        "    # last\n}  # end\n")


# -- archdsl fmt ---------------------------------------------------------------------------------
def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_fmt_prints_checks_and_rewrites(tmp_path):
    spec = tmp_path / "n.arch"
    messy = "# keep me\nnet n : 3x8x8 { conv3-4; bn   # and me\n}\n"
    spec.write_text(messy)
    code, out, _ = run_cli("fmt", str(spec))
    assert code == 0 and out == "# keep me\nnet n : 3x8x8 {\n    conv3-4; bn  # and me\n}\n"
    assert spec.read_text() == messy  # printing leaves the file alone

    code, out, err = run_cli("fmt", "--check", str(spec))
    assert code == 1 and out == "" and "not in the canonical layout" in err

    code, _, _ = run_cli("fmt", "-i", str(spec))
    assert code == 0 and spec.read_text() == format_text(messy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.arch"]  # no temporary left
    assert run_cli("fmt", "--check", str(spec))[0] == 0


def test_fmt_of_a_broken_spec_exits_2_and_leaves_it(tmp_path):
    spec = tmp_path / "bad.arch"
    spec.write_text("net n : 3x8x8 { conv3-4;; ) }\n")
    for argv in (["fmt", str(spec)], ["fmt", "-i", str(spec)], ["fmt", "--check", str(spec)]):
        code, out, err = run_cli(*argv)
        assert code == 2 and "bad.arch:1:" in err and "Traceback" not in err
    assert spec.read_text() == "net n : 3x8x8 { conv3-4;; ) }\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arch"]


@pytest.mark.parametrize("path", sorted(SPECS_DIR.rglob("*.arch")), ids=lambda p: p.name)
def test_bundled_specs_are_in_the_canonical_layout(path):
    assert format_text(path.read_text(), str(path)) == path.read_text()
