"""The fusion rules of the triton backend as graph rewrites (passes/rewrite.py, passes/fuse.py):
what they fuse and what they leave, the sole-consumer rule, copying, idempotence and counts.

Random graphs come from two places: :func:`archdsl.testing.graphs` (random valid specs, every
layer kind), and a local strategy (:func:`random_graphs`) built by hand with ArchGraph.add_op
so that it produces often the cases specs make rare: convs read by several nodes, a BN read by
several nodes, a conv or BN as the graph output. tests/test_fusion_backend.py runs the same
graphs through the lowered modules.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
import archdsl.testing as at
from archdsl.ir import ArchGraph, Op, Shape, VerifyError, verify
from archdsl.ops import describe
from archdsl.passes.analysis import analyse
from archdsl.passes.fuse import TRITON_RULES, conv_bn, conv_relu
from archdsl.passes.rewrite import rewrite
from archdsl.passes.shapes import infer, infer_shapes
from archdsl.pipeline import lower_graph

#: Each rule on its own, as a pass: graph -> graph.
PASSES = [lambda g, rule=rule: rewrite(g, (rule,))[0] for rule in TRITON_RULES]

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def conv_attrs(out=4, k=3, stride=1, groups=1, bias=True):
    return {"out_channels": out, "kernel": (k, k), "stride": (stride, stride), "padding": (k // 2, k // 2),
            "groups": groups, "bias": bias}


def hand_graph(nodes, output, shape=(3, 8, 8)) -> ArchGraph:
    """A checked graph from ``[(name, op, args, attrs)]`` after an input node ``x``."""
    g = ArchGraph(name="hand")
    g.add_op("x", Op.INPUT, (), {"shape": Shape.of(*shape)})
    for name, op, args, attrs in nodes:
        g.add_op(name, op, args, attrs)
    g.graph.update(input="x", output=output)
    analyse(infer_shapes(g))
    verify(g)
    return g


def snapshot(g: ArchGraph):
    """Everything about a graph a pass could change, as plain comparable data."""
    return (
        dict(g.graph),
        [(n, d["op"], d["args"], dict(d["attrs"]), dict(d["meta"]), d["scope"]) for n, d in g.nodes(data=True)],
        sorted((u, v, d["index"]) for u, v, d in g.edges(data=True)),
    )


def structure(g: ArchGraph):
    return [(n, d["op"], d["args"], d["attrs"], d["meta"]["shape"]) for n, d in g.ops()] + [g.graph["output"]]


def fused(g: ArchGraph) -> ArchGraph:
    return lower_graph(g, backend="triton", softmax=True)  # the whole graph, final softmax included


def ops(g: ArchGraph) -> list[Op]:
    return [d["op"] for _, d in g.ops()]


# --------------------------------------------------------------------------------------------
# the passes on hand-built graphs
# --------------------------------------------------------------------------------------------


def test_conv_relu_becomes_one_node_named_after_the_conv():
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("r1", Op.RELU, ("c1",), {}),
                    ("p1", Op.MAXPOOL, ("r1",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)})], "p1")
    f = rewrite(g, (conv_relu,))[0]
    verify(f)
    assert list(f.order()) == ["x", "c1", "p1"]
    node = f.nodes["c1"]
    assert node["op"] is Op.FUSED_CONV and node["attrs"]["relu"] and not node["attrs"]["bn"]
    assert node["attrs"]["bn_name"] == ""
    assert f.nodes["p1"]["args"] == ("c1",)
    assert describe(node["op"], node["attrs"]) == "conv+relu 3x3/1 pad 1, 4"
    assert (f.params, f.macs) == (g.params, g.macs)
    # conv_bn has nothing to do here
    assert structure(rewrite(g, (conv_bn,))[0]) == structure(g)


def test_conv_bn_relu_becomes_one_node_keeping_the_bn_name():
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs(bias=False)), ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-3}),
                    ("r1", Op.RELU, ("b1",), {})], "r1")
    f = fused(g)
    assert list(f.order()) == ["x", "c1"] and f.graph["output"] == "c1"
    a = f.nodes["c1"]["attrs"]
    assert (a["bn"], a["bn_name"], a["eps"], a["relu"]) == (True, "b1", 1e-3, True)
    assert describe(Op.FUSED_CONV, a) == "conv+bn+relu 3x3/1 pad 1, 4 no-bias"
    # params include the BN's scale and shift; MACs are the conv's; shape and receptive field kept
    assert f.nodes["c1"]["meta"]["params"] == 4 * 3 * 9 + 2 * 4
    assert (f.params, f.macs) == (g.params, g.macs)
    assert f.shape("c1") == g.shape("r1") and f.nodes["c1"]["meta"]["rf"] == g.nodes["r1"]["meta"]["rf"]


def test_passes_copy_before_they_mutate_and_verify():
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5}),
                    ("r1", Op.RELU, ("b1",), {})], "r1")
    before = snapshot(g)
    out = g
    for p in PASSES:
        out = p(out)
        verify(out)
    assert snapshot(g) == before
    # and re-analysing the result does not write into the original's node dicts
    analyse(out)
    assert snapshot(g) == before


def test_a_conv_read_by_two_nodes_is_not_fused():
    # c1 feeds a relu and an add: fusing the relu would lose the raw conv output the add needs
    g = hand_graph([
        ("c1", Op.CONV, ("x",), conv_attrs()),
        ("r1", Op.RELU, ("c1",), {}),
        ("a1", Op.ADD, ("r1", "c1"), {}),
    ], "a1")
    assert structure(fused(g)) == structure(g)
    # the same for a BN reader
    g = hand_graph([
        ("c1", Op.CONV, ("x",), conv_attrs()),
        ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5}),
        ("a1", Op.ADD, ("b1", "c1"), {}),
    ], "a1")
    assert structure(fused(g)) == structure(g)


def test_a_conv_feeding_a_concat_and_another_consumer_is_not_fused_into():
    # Written as a spec: the raw conv output is one column of the concat (identity) and the
    # input of the other column's BN; fusing the BN would leave the concat without it. The
    # next conv, read by its BN alone, is fused.
    g = archdsl.loads("net c : 3x8x8 { conv3-8 act=none; concat { identity | bn; relu }; conv3-4; bn; relu }")
    assert sorted(g.users("conv1")) == ["bn1", "concat1"]
    f = fused(g)
    assert f.nodes["conv1"]["op"] is Op.CONV and f.nodes["bn1"]["op"] is Op.BATCHNORM
    assert f.nodes["concat1"]["args"] == ("conv1", "relu1")
    assert f.nodes["conv2"]["op"] is Op.FUSED_CONV and f.nodes["conv2"]["attrs"]["bn"]
    assert f.params == g.params


def test_a_bn_read_by_two_nodes_keeps_its_relu_apart():
    g = hand_graph([
        ("c1", Op.CONV, ("x",), conv_attrs()),
        ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5}),
        ("r1", Op.RELU, ("b1",), {}),
        ("a1", Op.ADD, ("r1", "b1"), {}),
    ], "a1")
    f = fused(g)
    assert ops(f) == [Op.INPUT, Op.FUSED_CONV, Op.RELU, Op.ADD]
    assert f.nodes["c1"]["attrs"]["bn"] and not f.nodes["c1"]["attrs"]["relu"]
    assert f.nodes["r1"]["args"] == ("c1",) and f.nodes["a1"]["args"] == ("r1", "c1")


def test_the_graph_output_is_never_fused_into():
    # a conv that is the output keeps its raw value (nothing reads it; nothing to fuse)
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs())], "c1")
    assert structure(fused(g)) == structure(g)
    # a BN that is the output is fused (its value is the fused node's), the output renamed
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5})], "b1")
    f = fused(g)
    assert f.graph["output"] == "c1" and ops(f) == [Op.INPUT, Op.FUSED_CONV]


def test_relu_after_a_pool_or_a_linear_is_left_alone():
    def net(pool):
        return hand_graph([
            ("c1", Op.CONV, ("x",), conv_attrs()),
            ("p1", Op.MAXPOOL, ("c1",), pool),
            ("r1", Op.RELU, ("p1",), {}),
            ("f1", Op.LINEAR, ("r1",), {"out_features": 3, "bias": True}),
            ("r2", Op.RELU, ("f1",), {}),
        ], "r2")

    g = net({"kernel": (3, 3), "stride": (2, 2), "padding": (0, 0)})  # a pool no conv takes
    assert structure(fused(g)) == structure(g)
    # a 2x2/2 pool goes into the conv, but a pooled conv takes nothing after its pool
    g = net({"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)})
    f = fused(g)
    assert ops(f) == [Op.INPUT, Op.FUSED_CONV, Op.RELU, Op.LINEAR, Op.RELU]
    assert f.nodes["c1"]["attrs"]["pool"] and not f.nodes["c1"]["attrs"]["relu"]
    assert f.nodes["r1"]["args"] == ("c1",) and f.shape("c1") == g.shape("p1")


POOL2 = {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}


@pytest.mark.parametrize("hw", [8, 7])  # an odd map: floor mode drops the last row and column
def test_a_2x2_pool_goes_into_the_conv_before_it(hw):
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs(bias=False)), ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5}),
                    ("r1", Op.RELU, ("b1",), {}), ("p1", Op.MAXPOOL, ("r1",), POOL2),
                    ("c2", Op.CONV, ("p1",), conv_attrs(out=6)), ("p2", Op.MAXPOOL, ("c2",), POOL2)],
                   "p2", shape=(3, hw, hw))
    f = fused(g)
    verify(f)
    assert list(f.order()) == ["x", "c1", "c2"] and f.graph["output"] == "c2"
    assert f.nodes["c2"]["args"] == ("c1",)
    a1, a2 = f.nodes["c1"]["attrs"], f.nodes["c2"]["attrs"]
    assert (a1["bn"], a1["bn_name"], a1["relu"], a1["pool"]) == (True, "b1", True, True)
    assert (a2["bn"], a2["relu"], a2["pool"]) == (False, False, True)  # a bare conv takes its pool too
    assert describe(Op.FUSED_CONV, a1) == "conv+bn+relu+maxpool 3x3/1 pad 1, 4 no-bias"
    assert describe(Op.FUSED_CONV, a2) == "conv+maxpool 3x3/1 pad 1, 6"
    # shapes are the pools'; counts, receptive field and stride are those of the unfused chain
    assert f.shape("c1") == g.shape("p1") == Shape.of(4, hw // 2, hw // 2)
    assert f.shape("c2") == g.shape("p2") == Shape.of(6, hw // 4, hw // 4)
    assert f.nodes["c1"]["meta"]["macs"] == g.nodes["c1"]["meta"]["macs"] == hw * hw * 4 * 3 * 9
    assert f.nodes["c2"]["meta"]["macs"] == g.nodes["c2"]["meta"]["macs"]
    assert (f.params, f.macs) == (g.params, g.macs)
    for fused_node, last in (("c1", "p1"), ("c2", "p2")):
        assert (f.nodes[fused_node]["meta"]["rf"], f.nodes[fused_node]["meta"]["jump"]) == \
               (g.nodes[last]["meta"]["rf"], g.nodes[last]["meta"]["jump"])
    assert (f.nodes["c2"]["meta"]["rf"], f.nodes["c2"]["meta"]["jump"]) == (10, 4)


@pytest.mark.parametrize("pool", [
    {"kernel": (3, 3), "stride": (2, 2), "padding": (0, 0)},  # AlexNet's overlapping pool
    {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)},  # ResNet's stem pool
    {"kernel": (2, 2), "stride": (1, 1), "padding": (0, 0)},
    {"kernel": (2, 2), "stride": (2, 2), "padding": (1, 1)},
    {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "ceil_mode": True},
], ids=["3x3/2", "3x3/2pad1", "2x2/1", "2x2/2pad1", "2x2/2ceil"])
def test_pools_the_epilogue_does_not_compute_stay_apart(pool):
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("r1", Op.RELU, ("c1",), {}),
                    ("p1", Op.MAXPOOL, ("r1",), pool)], "p1", shape=(3, 7, 7))
    f = fused(g)
    assert ops(f) == [Op.INPUT, Op.FUSED_CONV, Op.MAXPOOL] and not f.nodes["c1"]["attrs"].get("pool")


def test_a_pool_is_not_fused_past_a_second_reader_or_a_residual():
    # c1's relu is read by the pool and the add: the pool stays
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs(out=3)), ("r1", Op.RELU, ("c1",), {}),
                    ("a1", Op.ADD, ("r1", "x"), {}), ("p1", Op.MAXPOOL, ("r1",), POOL2),
                    ("p2", Op.MAXPOOL, ("a1",), POOL2), ("a2", Op.ADD, ("p1", "p2"), {})], "a2")
    f = fused(g)
    assert "p1" in f and f.nodes["c1"]["attrs"]["relu"] and not f.nodes["c1"]["attrs"].get("pool")
    # conv -> bn -> add -> relu -> pool: the add is the epilogue's, so the pool stays (the
    # kernel pools only without a residual)
    g = hand_graph([("c0", Op.CONV, ("x",), conv_attrs(out=4)), ("r0", Op.RELU, ("c0",), {}),
                    ("c1", Op.CONV, ("x",), conv_attrs(out=4)), ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5}),
                    ("a1", Op.ADD, ("b1", "r0"), {}), ("r1", Op.RELU, ("a1",), {}),
                    ("p1", Op.MAXPOOL, ("r1",), POOL2)], "p1")
    f = fused(g)
    assert f.nodes["c1"]["attrs"]["residual"] and not f.nodes["c1"]["attrs"].get("pool")
    assert f.nodes["p1"]["args"] == ("c1",) and f.graph["output"] == "p1"
    # and a pooled conv is never given a residual: conv -> pool -> add
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs(out=3)), ("p1", Op.MAXPOOL, ("c1",), POOL2),
                    ("p0", Op.MAXPOOL, ("x",), POOL2), ("a1", Op.ADD, ("p1", "p0"), {})], "a1")
    f = fused(g)
    assert f.nodes["c1"]["attrs"]["pool"] and not f.nodes["c1"]["attrs"].get("residual") and "a1" in f


def test_verify_rejects_a_pooled_conv_with_a_residual():
    g = fused(hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("p1", Op.MAXPOOL, ("c1",), POOL2)], "p1"))
    g.nodes["c1"]["attrs"] = {**g.nodes["c1"]["attrs"], "residual": True}
    with pytest.raises(VerifyError, match="with a pool adds no residual"):
        verify(g)


def test_vgg_d_pools_go_into_its_convs_and_alexnets_overlapping_pools_do_not():
    g = archdsl.load("vgg_d")
    f = fused(g)
    verify(f)
    pooled = [n for n, d in f.ops() if d["op"] is Op.FUSED_CONV and d["attrs"].get("pool")]
    assert len(pooled) == 5 and not any(d["op"] is Op.MAXPOOL for _, d in f.ops())
    assert [str(f.shape(n)) for n in pooled] == ["64x112x112", "128x56x56", "256x28x28", "512x14x14", "512x7x7"]
    alex = archdsl.load("alexnet")
    fa = fused(alex)
    assert sum(d["op"] is Op.MAXPOOL for _, d in fa.ops()) == sum(d["op"] is Op.MAXPOOL for _, d in alex.ops()) == 3
    assert not any(d["attrs"].get("pool") for _, d in fa.ops() if d["op"] is Op.FUSED_CONV)
    for before, after in ((g, f), (alex, fa)):
        out_b, out_a = before.nodes[before.graph["output"]]["meta"], after.nodes[after.graph["output"]]["meta"]
        assert (after.params, after.macs, out_a["rf"], out_a["jump"]) == \
               (before.params, before.macs, out_b["rf"], out_b["jump"])
    from archdsl.passes.fuse import fusion_summary
    assert fusion_summary(f) == ("fused 13 convs: 8 conv+relu, 5 conv+relu+maxpool; "
                                 "5 max-pools (2x2/2) in the conv epilogue at inference")
    assert fusion_summary(fa) == "fused 5 convs: 5 conv+relu"


def test_a_spec_with_a_shared_conv():
    # conv1 feeds the residual branch's relu and the identity shortcut: not fused. conv3's
    # bn -> relu chain is fused even though the relu's output is read twice.
    g = archdsl.loads("""net shared : 3x8x8 {
        conv3-8 act=none
        residual act=none { relu; conv3-8 act=none }
        conv3-8 bias=false; bn
        residual act=none { conv3-8 }
        conv3-16/2; maxpool; gap; fc-5
    }""")
    f = fused(g)
    assert f.nodes["conv1"]["op"] is Op.CONV and "relu1" in f
    assert f.nodes["conv2"]["op"] is Op.CONV  # its reader is an add
    assert describe(Op.FUSED_CONV, f.nodes["conv3"]["attrs"]) == "conv+bn+relu 3x3/1 pad 1, 8 no-bias"
    assert set(f.users("conv3")) == {"conv4", "add2"}
    assert describe(Op.FUSED_CONV, f.nodes["conv5"]["attrs"]) == "conv+relu+maxpool 3x3/2 pad 1, 16"


@pytest.mark.parametrize("spec,kwargs", [
    ("resnet18", {}), ("resnet50", {}), ("cifar_resnet", {"n": 3}), ("vgg_d", {}), ("alexnet", {}),
    ("vgg_a_lrn", {}),
])
def test_bundled_nets_fuse_every_chain_and_keep_their_counts(spec, kwargs):
    g = archdsl.load(spec, **kwargs)
    f = fused(g)
    verify(f)
    assert (f.params, f.macs, f.input_shape, f.output_shape) == (g.params, g.macs, g.input_shape, g.output_shape)
    convs = [n for n, d in g.nodes(data=True) if d["op"] is Op.CONV]
    bns = [n for n, d in g.nodes(data=True) if d["op"] is Op.BATCHNORM]
    # every conv of these nets is read by exactly one BN or ReLU, so every conv is fused
    assert all(f.nodes[n]["op"] is Op.FUSED_CONV for n in convs)
    assert not any(d["op"] is Op.BATCHNORM for _, d in f.nodes(data=True))
    assert sorted(d["attrs"]["bn_name"] for _, d in f.nodes(data=True)
                  if d["op"] is Op.FUSED_CONV and d["attrs"]["bn"]) == sorted(bns)
    # a relu left over follows something that is not a conv (an add, an fc)
    for n, d in f.nodes(data=True):
        if d["op"] is Op.RELU:
            assert f.nodes[d["args"][0]]["op"] in (Op.ADD, Op.LINEAR), n
    # idempotent, and the torch pipeline leaves graphs alone
    assert structure(fused(f)) == structure(f)
    assert structure(lower_graph(g, backend="torch", softmax=True)) == structure(g)


def test_verify_rejects_a_bn_name_that_is_taken():
    g = fused(hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("b1", Op.BATCHNORM, ("c1",), {"eps": 1e-5}),
                          ("r1", Op.RELU, ("b1",), {})], "r1"))
    g.nodes["c1"]["attrs"] = {**g.nodes["c1"]["attrs"], "bn_name": "x"}
    with pytest.raises(VerifyError, match="batch norm's name 'x'"):
        verify(g)
    g.nodes["c1"]["attrs"] = {**g.nodes["c1"]["attrs"], "bn_name": ""}
    with pytest.raises(VerifyError, match="exactly when it has one"):
        verify(g)


# --------------------------------------------------------------------------------------------
# random graphs
# --------------------------------------------------------------------------------------------


@st.composite
def random_graphs(draw) -> ArchGraph:
    """Small valid graphs of conv / bn / relu / pool / add, with branches that make nodes read
    by several others, and any node kind as the output."""
    g = ArchGraph(name="random")
    c = draw(st.integers(1, 4))
    hw = draw(st.integers(4, 9))
    g.add_op("x", Op.INPUT, (), {"shape": Shape.of(c, hw, hw)})
    g.graph["input"] = "x"
    counter = iter(range(1, 1000))
    state = {"cur": "x"}

    def add(op, args, attrs):
        name = f"{op.value}{next(counter)}"
        g.add_op(name, op, args, attrs)
        infer(g, name)
        return name

    def unary(src, kind):
        s = g.nodes[src]["meta"]["shape"]
        if kind == "conv":
            k = draw(st.sampled_from([1, 3]))
            groups = draw(st.sampled_from([g_ for g_ in (1, 2) if s.c % g_ == 0]))
            out = groups * draw(st.integers(1, 3))
            stride = draw(st.sampled_from([1, 1, 2])) if s.h >= 3 else 1
            return add(Op.CONV, (src,), conv_attrs(out, k, stride, groups, draw(st.booleans())))
        if kind == "same_conv":  # keeps the shape, so a branch can be added back
            return add(Op.CONV, (src,), conv_attrs(s.c, 3, 1, 1, draw(st.booleans())))
        if kind == "bn":
            return add(Op.BATCHNORM, (src,), {"eps": draw(st.sampled_from([1e-5, 0.5]))})
        if kind == "relu":
            return add(Op.RELU, (src,), {})
        return add(Op.MAXPOOL, (src,), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)})

    infer(g, "x")
    for _ in range(draw(st.integers(1, 9))):
        cur = state["cur"]
        s = g.nodes[cur]["meta"]["shape"]
        kinds = ["conv", "conv", "bn", "relu", "fork", "residual"] + (["pool"] if s.h >= 2 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "fork":  # two branches read cur (cur gets two readers), summed
            left = unary(cur, draw(st.sampled_from(["relu", "bn", "same_conv"])))
            right = unary(cur, draw(st.sampled_from(["relu", "bn", "same_conv"])))
            for _ in range(draw(st.integers(0, 2))):
                right = unary(right, draw(st.sampled_from(["relu", "bn", "same_conv"])))
            state["cur"] = add(Op.ADD, (left, right), {})
        elif kind == "residual":  # cur + f(cur), f a short conv/bn/relu chain
            branch = unary(cur, "same_conv")
            for _ in range(draw(st.integers(0, 2))):
                branch = unary(branch, draw(st.sampled_from(["relu", "bn", "same_conv"])))
            state["cur"] = add(Op.ADD, (branch, cur), {})
        else:
            state["cur"] = unary(cur, kind)
    g.graph["output"] = state["cur"]
    analyse(g)
    verify(g)
    return g


def check_fusion_rules(g: ArchGraph, f: ArchGraph) -> None:
    """What fusion must and must not have done, node by node."""
    out = g.graph["output"]

    def sole(n, op):
        users = g.users(n)
        return len(users) == 1 and n != out and g.nodes[users[0]]["op"] is op

    for n, d in g.nodes(data=True):
        if d["op"] is Op.CONV:
            expect_bn = sole(n, Op.BATCHNORM)
            tail = g.users(n)[0] if expect_bn else n
            expect_relu = sole(tail, Op.RELU)
            # conv -> bn -> add [-> relu]: the add's other input joins the fused node, unless it
            # is the conv's own input (one edge cannot carry both)
            add = g.users(tail)[0] if expect_bn and not expect_relu and sole(tail, Op.ADD) else None
            others = [i for i in g.nodes[add]["args"] if i != tail] if add else []
            candidate = len(others) == 1 and others[0] != d["args"][0]
            # where both inputs of the add are such convs, the first in order takes the add
            expect_residual = candidate and f.nodes[n]["attrs"].get("residual", False)
            if candidate and not expect_residual:
                assert add not in f, n  # taken by the conv on the add's other input
            if expect_residual:
                expect_relu = sole(add, Op.RELU)
            last = add if expect_residual else tail
            if expect_relu:
                last = g.users(last)[0]
            # a 2x2/2 max-pool without padding, in floor mode, ends any chain without a residual
            expect_pool = not expect_residual and sole(last, Op.MAXPOOL) \
                and g.nodes[g.users(last)[0]]["attrs"] == POOL2
            if not (expect_bn or expect_relu or expect_pool):
                assert f.nodes[n]["op"] is Op.CONV, n  # includes every conv with several readers
                continue
            a = f.nodes[n]["attrs"]
            assert f.nodes[n]["op"] is Op.FUSED_CONV, n
            assert (a["bn"], a["relu"], a.get("residual", False), a.get("pool", False)) == \
                   (expect_bn, expect_relu, expect_residual, expect_pool), n
            assert a["bn_name"] == (tail if expect_bn else "")
            assert len(f.nodes[n]["args"]) == 1 + expect_residual  # (names of absorbed nodes move)
            absorbed = [tail] if expect_bn else []
            if expect_residual:
                absorbed.append(add)
            if expect_relu:
                absorbed.append(last)
            if expect_pool:
                absorbed.append(g.users(last)[0])
            assert not any(m in f for m in absorbed)
            assert f.shape(n) == g.shape(absorbed[-1] if absorbed else n)
        elif d["op"] not in (Op.BATCHNORM, Op.RELU, Op.ADD, Op.MAXPOOL):
            assert f.nodes[n]["op"] is d["op"] and n in f


# deadline=None and too_slow suppressed: both time the wall clock (too_slow times the drawing of
# examples), which a busy machine stretches; the work per example is bounded by its size instead.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_random_graphs_fusion_rules_and_idempotence(g):
    before = snapshot(g)
    f = g
    for p in PASSES:
        f = p(f)
        verify(f)
    assert snapshot(g) == before
    assert (f.params, f.macs, f.output_shape) == (g.params, g.macs, g.output_shape)
    check_fusion_rules(g, f)
    for p in PASSES:
        assert structure(p(f)) == structure(f)


# no_kernel only patches module attributes, the same for every example: nothing to reset.

# Spec-generated random nets (archdsl.testing): every layer kind, residual units with every
# shortcut option, blocks and repeats. Small, so that they run quickly on a CPU.
SPEC_NETS = dict(max_width=8, max_size=12, max_layers=5)


# too_slow suppressed, as above: it times the drawing of a net on the wall clock.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(at.graphs(**SPEC_NETS))
def test_random_specs_fusion_rules_and_lowering(g):
    before = snapshot(g)
    f = fused(g)
    assert snapshot(g) == before
    check_fusion_rules(g, f)
    assert structure(fused(f)) == structure(f)
    # the fused graph's shapes, parameters and MACs are what its (torch) lowering computes, and
    # its emitted source runs: archdsl.testing's end-to-end check
    at.check_lowering(f, batch=2)


def test_the_rewrite_driver_says_whether_it_changed_the_graph():
    g = archdsl.load("cifar_resnet", n=1)
    f, changed = rewrite(g, TRITON_RULES)
    assert changed and ops(f).count(Op.FUSED_CONV) == ops(g).count(Op.CONV)
    again, changed = rewrite(f, TRITON_RULES)
    assert not changed and structure(again) == structure(f) and again is not f
    same, changed = rewrite(g, ())
    assert not changed and snapshot(same) == snapshot(g)
