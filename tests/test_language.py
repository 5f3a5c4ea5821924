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
