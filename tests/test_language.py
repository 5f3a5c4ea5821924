"""The spec language: paper notation, implied activations, parameters, blocks, residuals."""

import pytest
import torch

import archdsl
from archdsl import Op


def ops(graph):
    return [d["op"] for _, d in graph.ops()]


def chain(text, **params):
    return [o.value for o in ops(archdsl.loads(text, **params))]


def test_vgg_notation_verbatim():
    g = archdsl.loads("net v : 3x32x32 { conv3-64 x2; maxpool; conv3-128; maxpool; fc-10; soft-max }")
    assert [o.value for o in ops(g)] == [
        "input", "conv", "relu", "conv", "relu", "pool" if False else "maxpool",
        "conv", "relu", "maxpool", "linear", "softmax",
    ]
    conv = g.nodes["conv1"]["attrs"]
    assert conv["kernel"] == (3, 3) and conv["stride"] == (1, 1) and conv["padding"] == (1, 1)
    assert str(g.output_shape) == "10"


def test_statements_split_by_newlines_and_semicolons_with_comments():
    a = archdsl.loads("net a : 3x8x8 {\n  conv3-4  # first\n\n  conv3-4; fc-2\n}\n")
    b = archdsl.loads("net a : 3x8x8 { conv3-4; conv3-4; fc-2 }")
    assert ops(a) == ops(b)


@pytest.mark.parametrize("text, expected", [
    # a ReLU after every conv and hidden fc; none after the last weighted layer
    ("conv3-8; fc-4; fc-2", ["conv", "relu", "linear", "relu", "linear"]),
    # placed after the conv's batch norm
    ("conv3-8; bn; maxpool; fc-2", ["conv", "bn", "relu", "maxpool", "linear"]),
    # an activation written next replaces it
    ("conv3-8; relu; fc-2; softmax", ["conv", "relu", "linear", "softmax"]),
    # act=none turns it off
    ("conv3-8 act=none; maxpool; fc-2", ["conv", "maxpool", "linear"]),
    # before LRN and dropout, as in AlexNet
    ("conv3-8; LRN; fc-4; dropout; fc-2", ["conv", "relu", "lrn", "linear", "relu", "dropout", "linear"]),
])
def test_implied_activation_rule(text, expected):
    assert chain(f"net a : 3x8x8 {{ {text} }}")[1:] == expected


def test_residual_relu_follows_the_addition():
    g = archdsl.loads("net r : 8x8x8 { residual { conv3-8; bn; conv3-8; bn } }")
    assert [o.value for o in ops(g)][1:] == ["conv", "bn", "relu", "conv", "bn", "add", "relu"]


@pytest.mark.parametrize("shortcut, extra_ops, extra_params", [
    ("A", ["shortcut_pad"], 0),
    ("B", ["conv", "bn"], 8 * 16 + 2 * 16),
    ("C", ["conv", "bn"], 8 * 16 + 2 * 16),
])
def test_shortcut_options_where_dimensions_grow(shortcut, extra_ops, extra_params):
    text = f"net r : 8x8x8 {{ residual shortcut={shortcut} {{ conv3-16/2 bias=false; bn; conv3-16 bias=false; bn }} }}"
    g = archdsl.loads(text)
    body = 16 * 8 * 9 + 32 + 16 * 16 * 9 + 32
    assert g.params == body + extra_params
    names = [o.value for o in ops(g)]
    for op in extra_ops:
        assert op in names
    assert str(g.output_shape) == "16x4x4"


def test_shortcut_b_is_identity_when_dimensions_keep_and_c_projects_anyway():
    body = "{ conv3-8 bias=false; bn; conv3-8 bias=false; bn }"
    b = archdsl.loads(f"net r : 8x8x8 {{ residual shortcut=B {body} }}")
    c = archdsl.loads(f"net r : 8x8x8 {{ residual shortcut=C {body} }}")
    assert c.params - b.params == 8 * 8 + 16


def test_option_a_subsamples_and_zero_pads():
    g = archdsl.loads("net r : 2x5x5 { residual shortcut=A { conv3-4/2 bias=false act=none } }")
    m = archdsl.compile(g)
    with torch.no_grad():
        m.conv1.weight.zero_()
        x = torch.randn(1, 2, 5, 5)
        y = m(x)
    expected = torch.relu(torch.cat([x[:, :, ::2, ::2], torch.zeros(1, 2, 3, 3)], dim=1))
    torch.testing.assert_close(y, expected)


def test_plain_net_is_the_residual_stack_without_shortcuts():
    g = archdsl.loads("net p : 8x8x8 { residual shortcut=none { conv3-8; conv3-8 } }")
    assert chain("net p : 8x8x8 { residual shortcut=none { conv3-8; conv3-8 } }")[1:] == \
        ["conv", "relu", "conv", "relu"]
    assert Op.ADD not in ops(g)


def test_parameters_expressions_and_overrides():
    text = "net p(c=4, n=2, classes=10) : 3x16x16 { conv3-{2*c} x{n}; conv3-{c//2+1}; fc-{classes} }"
    g = archdsl.loads(text)
    widths = [d["attrs"]["out_channels"] for _, d in g.ops() if d["op"] is Op.CONV]
    assert widths == [8, 8, 3]
    g = archdsl.loads(text, c=8, n=3, classes=7)
    widths = [d["attrs"]["out_channels"] for _, d in g.ops() if d["op"] is Op.CONV]
    assert widths == [16, 16, 16, 5]
    assert str(g.output_shape) == "7"
    assert g.graph["params"] == {"c": 8, "n": 3, "classes": 7}


def test_repeat_zero_times():
    assert chain("net z(n=1) : 3x8x8 { conv3-4 x{n-1}; fc-2 }")[1:] == ["linear"]


def test_strides_padding_groups_bias_and_windows():
    g = archdsl.loads("net a : 3x224x224 { conv11-96/4 pad=2 bias=false; maxpool3/2; conv5-256 groups=2; conv1x7-8 }")
    c1, c2, c3 = (g.nodes[n]["attrs"] for n in ("conv1", "conv2", "conv3"))
    assert (c1["kernel"], c1["stride"], c1["padding"], c1["bias"]) == ((11, 11), (4, 4), (2, 2), False)
    assert str(g.shape("conv1")) == "96x55x55" and str(g.shape("pool1")) == "96x27x27"
    assert c2["groups"] == 2 and g.nodes["conv2"]["meta"]["params"] == 256 * 48 * 25 + 256
    assert c3["kernel"] == (1, 7) and c3["padding"] == (0, 3)


def test_pooling_lrn_dropout_bn_gap():
    g = archdsl.loads("net a : 4x9x9 { avgpool3/2 pad=1; LRN size=3 alpha=0.01 beta=0.5 k=1 mode=avg; "
                      "bn eps=0.001; dropout p=0.2; gap; fc-3 bias=false }")
    lrn = g.nodes["lrn1"]["attrs"]
    assert lrn == {"size": 3, "alpha": 0.01, "beta": 0.5, "k": 1.0, "mode": "avg"}
    assert g.nodes["dropout1"]["attrs"]["p"] == 0.2
    assert str(g.shape("avgpool1")) == "4x5x5" and str(g.shape("gap1")) == "4x1x1"
    assert g.params == 2 * 4 + 4 * 3


def test_lrn_default_is_the_papers_sum():
    g = archdsl.loads("net a : 8x4x4 { LRN }")
    assert g.nodes["lrn1"]["attrs"] == {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "mode": "sum"}
    m = archdsl.compile(g)
    x = torch.randn(2, 8, 4, 4) * 10
    sq = x.pow(2)
    window = torch.stack([sq.roll(s, 1) * _valid(s, 8) for s in range(-2, 3)]).sum(0)
    torch.testing.assert_close(m(x), x / (2.0 + 1e-4 * window).pow(0.75))


def _valid(shift, channels):
    # mask out the channels a roll wrapped around (the paper's window is clipped at the edges)
    index = torch.arange(channels)
    ok = (index - shift >= 0) & (index - shift < channels)
    return ok.view(1, channels, 1, 1).float()


def test_blocks_with_parameters_defaults_and_nesting():
    text = """
    block unit(c, k=3) { conv-{c} k={k}; bn }
    block pair(c) { unit({c}) ; unit({2*c}, k=1) }
    net b : 3x8x8 { pair(4) x2; fc-2 }
    """
    g = archdsl.loads(text)
    convs = [(d["attrs"]["kernel"][0], d["attrs"]["out_channels"]) for _, d in g.ops() if d["op"] is Op.CONV]
    assert convs == [(3, 4), (1, 8), (3, 4), (1, 8)]
    scopes = {d["scope"] for _, d in g.ops() if d["op"] is Op.CONV}
    assert scopes == {"pair1.unit1", "pair1.unit2", "pair2.unit3", "pair2.unit4"}


def test_block_library_import(tmp_path):
    (tmp_path / "lib.arch").write_text("block twice(c) { conv3-{c} x2 }\n")
    (tmp_path / "net.arch").write_text('import "lib.arch"\nnet n : 3x8x8 { twice(5); fc-2 }\n')
    g = archdsl.load(tmp_path / "net.arch")
    assert sum(1 for _, d in g.ops() if d["op"] is Op.CONV) == 2


def test_bundled_library_imports_from_a_users_spec(tmp_path):
    spec = tmp_path / "deep.arch"
    spec.write_text('import "lib/resnet.arch"\nnet deep(n=2) : 3x32x32 { conv3-16; basic_stage(16, {n}, stride=1); gap; fc-10 }\n')
    assert archdsl.load(spec, n=4).params > archdsl.load(spec).params


def test_several_nets_per_file_and_input_override():
    text = "net a : 3x8x8 { conv3-4; fc-2 }\nnet b : 3x8x8 { conv3-8; fc-2 }\n"
    assert archdsl.loads(text, net="b").params == 8 * 27 + 8 + 8 * 64 * 2 + 2
    with pytest.raises(archdsl.SpecError, match="several nets"):
        archdsl.loads(text)
    g = archdsl.loads(text, net="a", input="3x16x16")
    assert str(g.shape("conv1")) == "4x16x16"


def test_depth_ablation_is_one_number():
    base = archdsl.load("cifar_resnet", n=3)
    deeper = archdsl.load("cifar_resnet", n=4)
    assert deeper.params - base.params == 2 * (16 * 16 * 9 + 32 * 32 * 9 + 64 * 64 * 9) + 2 * 2 * (16 + 32 + 64)


def test_receptive_field_and_stride():
    g = archdsl.loads("net r : 3x32x32 { conv3-4; conv3-4; maxpool; conv3-4 }")
    meta = [(g.nodes[n]["meta"]["rf"], g.nodes[n]["meta"]["jump"]) for n in ("conv1", "conv2", "pool1", "conv3")]
    assert meta == [(3, 1), (5, 1), (6, 2), (10, 2)]


def test_graph_is_a_networkx_digraph_with_spans():
    import networkx as nx

    g = archdsl.loads("net a : 3x8x8 {\n  conv3-4\n  fc-2\n}", file="a.arch")
    assert isinstance(g, nx.DiGraph)
    span = g.nodes["fc1"]["span"]
    assert (span.file, span.line, span.column) == ("a.arch", 3, 3)
    assert list(g.predecessors("fc1")) == ["relu1"]
    archdsl.verify(g)


def test_argument_lists_may_break_across_lines():
    text = "block b(c,\n        k=3\n) { conv-{c} k={k} }\nnet n(\n    c=4,\n    classes=10) : 3x8x8 {\n    b({c},\n      k=1)\n    fc-{classes}\n}\n"
    one_line = "block b(c, k=3) { conv-{c} k={k} }\nnet n(c=4, classes=10) : 3x8x8 { b({c}, k=1); fc-{classes} }\n"
    a, b = archdsl.loads(text), archdsl.loads(one_line)
    assert [(n, d["op"], d["attrs"]) for n, d in a.ops()] == [(n, d["op"], d["attrs"]) for n, d in b.ops()]


# -- graphs: names, merges, groups, loop indices, lists, conditionals ----------------------------
def shapes(graph):
    return {n: str(d["meta"]["shape"]) for n, d in graph.ops()}


def test_a_named_value_is_used_later():
    g = archdsl.loads("net a : 3x8x8 { x = conv3-4; conv3-4 act=none; add { identity | x } }")
    assert chain("net a : 3x8x8 { x = conv3-4; conv3-4 act=none; add { identity | x } }")[1:] == \
        ["conv", "relu", "conv", "add", "relu"]
    # the name stands for the conv's output after its ReLU
    assert g.nodes["add1"]["args"] == ("conv2", "relu1")


def test_add_branches_end_raw_and_the_relu_follows_the_addition():
    text = "net a : 4x8x8 { add { conv3-4; bn | conv1-4; bn } }"
    assert chain(text)[1:] == ["conv", "bn", "conv", "bn", "add", "relu"]
    assert chain(text.replace("add {", "add act=none {"))[1:] == ["conv", "bn", "conv", "bn", "add"]


def test_a_group_repeats_its_statements_together():
    assert chain("net a : 3x8x8 { { conv3-4; bn } x2; fc-2 }")[1:] == \
        ["conv", "bn", "relu", "conv", "bn", "relu", "linear"]
    assert chain("net a : 3x8x8 { { conv3-4; bn } x0; fc-2 }")[1:] == ["linear"]


def test_the_loop_index_numbers_the_copies():
    g = archdsl.loads("net a(base=4) : 3x8x8 { conv3-{base*(i+1)} x3 for i; { conv1-{8-i} } x2 for i }")
    widths = [d["attrs"]["out_channels"] for _, d in g.ops() if d["op"] is Op.CONV]
    assert widths == [4, 8, 12, 8, 7]


def test_lists_and_indexing():
    text = "net a(depths=[1, 2, 0], widths=[4, 8, 16]) : 3x8x8 { conv3-{widths[0]} x{depths[0]}; " \
           "conv3-{widths[1]} x{depths[1]}; conv3-{widths[-1]} x{depths[2]}; fc-{len(widths)} }"
    g = archdsl.loads(text)
    assert [d["attrs"]["out_channels"] for _, d in g.ops() if d["op"] is Op.CONV] == [4, 8, 8]
    assert str(g.output_shape) == "3"
    g = archdsl.loads(text, depths=(0, 0, 1))  # a list from --set depths=[0,0,1]
    assert [d["attrs"]["out_channels"] for _, d in g.ops() if d["op"] is Op.CONV] == [16]


def test_the_input_width_of_a_layer():
    g = archdsl.loads("net a : 3x8x8 { conv3-32; conv3-{in} groups={in}; conv1-{2*in} }")
    convs = [d["attrs"] for _, d in g.ops() if d["op"] is Op.CONV]
    assert [(c["out_channels"], c["groups"]) for c in convs] == [(32, 1), (32, 32), (64, 1)]


@pytest.mark.parametrize("v15, strides", [(False, [2, 1]), (True, [1, 2])])
def test_a_conditional_value(v15, strides):
    text = "net a(v15=false) : 8x8x8 { conv1-8/{1 if v15 else 2}; conv3-8/{2 if v15 == true else 1} }"
    g = archdsl.loads(text, v15=v15)
    assert [d["attrs"]["stride"][0] for _, d in g.ops() if d["op"] is Op.CONV] == strides


@pytest.mark.parametrize("alpha, width", [(1.0, 32), (0.75, 24), (0.5, 16), (0.35, 16), (0.25, 8)])
def test_fractional_width_multipliers_round_by_make_divisible(alpha, width):
    # MobileNet's make_divisible: the nearest multiple of 8 (halves up), at least 8, and never
    # more than 10 % below the exact width: 32*0.35 = 11.2 -> 8 is 29 % below, so 16.
    g = archdsl.loads("net m(alpha=1.0) : 3x8x8 { conv3-{divisible(32*alpha, 8)} }", alpha=alpha)
    assert g.nodes["conv1"]["attrs"]["out_channels"] == width


def test_divisible_is_torchvisions_make_divisible():
    from archdsl.frontend.values import divisible

    def make_divisible(v, divisor, min_value=None):  # torchvision.models._utils._make_divisible
        if min_value is None:
            min_value = divisor
        new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
        if new_v < 0.9 * v:
            new_v += divisor
        return new_v

    for v in [0.5, 3, 7.9, 11.2, 12, 20, 23.99, 24, 27.99, 28, 100.4, 1000.7]:
        for d in (4, 8, 16):
            assert divisible(v, d) == make_divisible(v, d)


def test_an_integral_width_from_a_multiplier_is_an_integer():
    g = archdsl.loads("net m(alpha=0.75) : 3x8x8 { conv3-{32*alpha} }")
    assert g.nodes["conv1"]["attrs"]["out_channels"] == 24


def test_pre_activation_and_projection_without_bn_shortcuts():
    unit = "residual shortcut={kind} act=none {{ bn; relu; conv3-16/2 bias=false; bn; relu; conv3-16 bias=false act=none }}"
    p = archdsl.loads("net r : 8x8x8 { " + unit.format(kind="P") + " }")
    pre = archdsl.loads("net r : 8x8x8 { " + unit.format(kind="preact") + " }")
    b = archdsl.loads("net r : 8x8x8 { " + unit.format(kind="B") + " }")
    assert p.params == pre.params == b.params - 2 * 16  # the projection's BN is gone
    assert p.nodes["proj1"]["args"] == ("input",)
    assert pre.nodes["proj1"]["args"] == ("relu1",)  # reads the shared BN and ReLU
    assert [o.value for o in ops(pre)][-1] == "add"  # act=none: nothing after the addition


def test_residual_act_none_leaves_the_sum_raw():
    text = "net r : 8x8x8 { residual act=none { conv3-8; bn } }"
    assert chain(text)[1:] == ["conv", "bn", "add"]


def test_names_are_lexical():
    # a name defined in a branch is not visible after the merge; each copy of a group has its own
    text = "net a : 4x8x8 { { y = conv3-4; conv3-4 act=none; add { identity | y } } x2 }"
    assert chain(text).count("add") == 2


def test_the_printer_round_trips_the_graph_syntax():
    from archdsl.frontend.parser import parse
    from archdsl.frontend.printer import format_text

    text = """# an Inception-like module
net a(depths=[1, 2], v15=false) : 3x8x8 {  # head
    x = conv3-4; bn
    concat {
        conv1-4  # column 1
        # column 2
      | conv1-2; conv3-4 x2 for i
      | maxpool3/1 pad=1
        conv1-{depths[1]}
    }
    concat { identity | bn; conv3-{2 if v15 else 1} act=none } x{depths[-1]}
    {
        conv3-4
        bn
    } x2
    y = { conv3-{divisible(3*2, 8)}; bn } x2 for i
    conv3-{[1, 2][0]+-a[1][2]}
    fc-{1 if a == "x" else 2 if b else 3}
}
"""
    assert format_text(text) == text
    messy = text.replace("\n      | ", "\n| ").replace("    x = conv3-4; bn", "x=conv3-4;bn")
    assert format_text(messy) == text
    assert parse(messy).nets == parse(text).nets
    assert [c.text for c in parse(format_text(messy)).comments] == [c.text for c in parse(text).comments]
    with pytest.raises(archdsl.SpecError, match="name 'z' is not visible here: it is defined inside a branch"):
        archdsl.loads("net a : 4x8x8 { add { z = conv3-4 | conv3-4 }; z }")


def _readme_language_blocks():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## The language", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)```", section, flags=re.S)


def test_the_readmes_language_examples_parse_and_build():
    from archdsl.frontend.parser import parse

    blocks = _readme_language_blocks()
    assert len(blocks) >= 4
    for text in blocks:
        spec = parse(text)
        if not spec.nets or spec.imports:  # a library excerpt, or an excerpt of a bundled spec
            continue
        for net in spec.nets:
            graph = archdsl.loads(text, net=net.name)
            archdsl.verify(graph)
    # the graph examples' blocks, used in a net of their own
    graph_example = next(b for b in blocks if "block inception" in b)
    uses = ("net use : 64x28x28 { inception(64, 96, 128, 16, 32, 32); dense_block(32, 2); "
            "se(320) }")
    g = archdsl.loads(graph_example + uses, net="use")
    assert g.output_shape.dims == (320, 28, 28)


def test_identity_is_the_current_value_and_emits_nothing():
    assert chain("net a : 3x8x8 { conv3-4; identity; relu }")[1:] == ["conv", "relu"]
    assert chain("net a : 3x8x8 { conv3-4; identity; bn; fc-2 }")[1:] == ["conv", "bn", "relu", "linear"]
