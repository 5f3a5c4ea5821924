"""Conv fusion for the triton backend: the graph passes (passes/fold_bn.py, passes/fuse.py),
the BN fold, the lowering of FUSED_CONV, state_dict compatibility and the fallback notice.

Most numerical checks run the triton backend's *fallback* path (``support.kernel_can_run``
patched to False: F.conv2d with the folded weight and bias): it exercises the graph rewrite,
the lowering, the fold and its cache at full speed. The kernel itself runs under Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU) only in the tiny
whole-network tests at the end; its per-layer accuracy is tests/test_kernel_conv.py's business.

Random graphs come from two places: :func:`archdsl.testing.graphs` (random valid specs, every
layer kind), and a local strategy (:func:`random_graphs`) built by hand with ArchGraph.add_op
so that it produces often the cases specs make rare: convs read by several nodes, a BN read by
several nodes, a conv or BN as the graph output.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
import archdsl.testing as at
from archdsl.codegen.torch_source import emit_source
from archdsl.codegen.triton import runtime, support
from archdsl.ir import ArchGraph, Op, Shape, VerifyError, verify
from archdsl.passes import TRITON_FUSIONS, lowering_pipeline
from archdsl.passes.analysis import analyse, describe
from archdsl.passes.fold_bn import fold_bn_params, fuse_conv_bn
from archdsl.passes.fuse import fuse_conv_relu
from archdsl.passes.shapes import infer, infer_shapes

PASSES = TRITON_FUSIONS

NEEDS_KERNELS = "needs a CUDA device or TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU)"
needs_kernels = pytest.mark.skipif(not support.available(), reason=NEEDS_KERNELS)


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
    return lowering_pipeline(g, backend="triton")


def ops(g: ArchGraph) -> list[Op]:
    return [d["op"] for _, d in g.ops()]


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters (the defaults make the fold a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    return module


@pytest.fixture
def no_kernel(monkeypatch):
    """The triton backend's PyTorch fallback (F.conv2d on folded weights), without the notice
    leaking between tests."""
    monkeypatch.setattr(runtime, "kernel_can_run", lambda x, w: False)
    monkeypatch.setattr(support, "_noticed", True)


@pytest.fixture
def fresh_notice(monkeypatch):
    """A process in which the fallback notice has not been given yet."""
    monkeypatch.setattr(support, "_noticed", False)


def pair(spec, seed=0, **kwargs):
    """(torch-backend module, triton-backend module holding its weights), BN randomised.

    The triton backend's LRN layers are switched to their PyTorch path: under the interpreter
    the LRN kernel takes minutes on AlexNet, and it is tests/test_kernel_lrn.py's subject.
    """
    torch.manual_seed(seed)
    ref = randomise(archdsl.compile(spec, **kwargs), seed)
    tri = archdsl.compile(spec, backend="triton", **kwargs)
    tri.load_state_dict(ref.state_dict(), strict=True)
    for m in tri.modules():
        if type(m).__name__ == "LocalResponseNorm" and getattr(m, "backend", None) == "triton":
            m.backend = "torch"
    return ref, tri


def assert_close_logs(a, b, softmax: bool):
    # A softmax output squeezes differences; compare log-probabilities where there is one.
    if softmax:
        a, b = a.clamp_min(1e-30).log(), b.clamp_min(1e-30).log()
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def same_training_step(ref, tri, x, softmax=True, seed=1):
    """Train-mode forward (dropout masks drawn alike), backward; outputs, gradients and the
    updated BN running statistics agree."""
    ref.train(), tri.train()
    outs = []
    for m in (ref, tri):
        torch.manual_seed(seed)
        y = m(x)
        if y.requires_grad:  # a graph may have no parameters at all
            (y.clamp_min(1e-30).log() if softmax else y).square().mean().backward()
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    grads_ref = {k: p.grad for k, p in ref.named_parameters()}
    grads_tri = {k: p.grad for k, p in tri.named_parameters()}
    assert grads_ref.keys() == grads_tri.keys()
    for k in grads_ref:
        torch.testing.assert_close(grads_tri[k], grads_ref[k], rtol=1e-3, atol=1e-5, msg=k)
    sd_ref, sd_tri = ref.state_dict(), tri.state_dict()
    for k in sd_ref:
        torch.testing.assert_close(sd_tri[k], sd_ref[k], rtol=1e-5, atol=1e-6, msg=k)


# --------------------------------------------------------------------------------------------
# the passes on hand-built graphs
# --------------------------------------------------------------------------------------------


def test_conv_relu_becomes_one_node_named_after_the_conv():
    g = hand_graph([("c1", Op.CONV, ("x",), conv_attrs()), ("r1", Op.RELU, ("c1",), {}),
                    ("p1", Op.MAXPOOL, ("r1",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)})], "p1")
    f = fuse_conv_relu(g)
    verify(f)
    assert list(f.order()) == ["x", "c1", "p1"]
    node = f.nodes["c1"]
    assert node["op"] is Op.FUSED_CONV and node["attrs"]["relu"] and not node["attrs"]["bn"]
    assert node["attrs"]["bn_name"] == ""
    assert f.nodes["p1"]["args"] == ("c1",)
    assert describe(node["op"], node["attrs"]) == "conv+relu 3x3/1 pad 1, 4"
    assert (f.params, f.macs) == (g.params, g.macs)
    # fold_bn has nothing to do here
    assert structure(fuse_conv_bn(g)) == structure(g)


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
    g = hand_graph([
        ("c1", Op.CONV, ("x",), conv_attrs()),
        ("p1", Op.MAXPOOL, ("c1",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}),
        ("r1", Op.RELU, ("p1",), {}),
        ("f1", Op.LINEAR, ("r1",), {"out_features": 3, "bias": True}),
        ("r2", Op.RELU, ("f1",), {}),
    ], "r2")
    assert structure(fused(g)) == structure(g)


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
    assert describe(Op.FUSED_CONV, f.nodes["conv5"]["attrs"]) == "conv+relu 3x3/2 pad 1, 16"


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
    assert structure(lowering_pipeline(g, backend="torch")) == structure(g)


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
            if not (expect_bn or expect_relu):
                assert f.nodes[n]["op"] is Op.CONV, n  # includes every conv with several readers
                continue
            a = f.nodes[n]["attrs"]
            assert f.nodes[n]["op"] is Op.FUSED_CONV, n
            assert (a["bn"], a["relu"], a.get("residual", False)) == (expect_bn, expect_relu, expect_residual), n
            assert a["bn_name"] == (tail if expect_bn else "")
            assert len(f.nodes[n]["args"]) == 1 + expect_residual  # (names of absorbed nodes move)
            absorbed = [tail] if expect_bn else []
            last = add if expect_residual else tail
            if expect_residual:
                absorbed.append(add)
            if expect_relu:
                absorbed.append(g.users(last)[0])
            assert not any(m in f for m in absorbed)
        elif d["op"] not in (Op.BATCHNORM, Op.RELU, Op.ADD):
            assert f.nodes[n]["op"] is d["op"] and n in f


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
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(random_graphs(), st.integers(0, 2**16))
def test_random_graphs_keep_their_function(no_kernel, g, seed):
    """Same weights: eval (folded BN) and training (batch statistics) forward agree, and so do
    gradients and the updated running statistics."""
    torch.manual_seed(seed)
    ref = randomise(archdsl.compile(g), seed)
    tri = archdsl.compile(g, backend="triton")
    tri.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, *g.input_shape.dims, generator=torch.Generator().manual_seed(seed))
    ref.eval(), tri.eval()
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-4)
    same_training_step(ref, tri, x, softmax=False)


# Spec-generated random nets (archdsl.testing): every layer kind, residual units with every
# shortcut option, blocks and repeats. Small, so that they run quickly on a CPU.
SPEC_NETS = dict(max_width=8, max_size=12, max_layers=5)


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


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(at.graphs(**SPEC_NETS), st.integers(0, 2**16))
def test_random_specs_keep_their_function(no_kernel, g, seed):
    torch.manual_seed(seed)
    ref = randomise(archdsl.compile(g), seed)
    tri = archdsl.compile(g, backend="triton")
    tri.load_state_dict(ref.state_dict(), strict=True)
    for m in tri.modules():  # see pair()
        if type(m).__name__ == "LocalResponseNorm" and getattr(m, "backend", None) == "triton":
            m.backend = "torch"
    x = torch.randn(3, *g.input_shape.dims, generator=torch.Generator().manual_seed(seed))
    ref.eval(), tri.eval()
    with torch.no_grad():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-5)
    same_training_step(ref, tri, x, softmax=False)


# --------------------------------------------------------------------------------------------
# the fold, the lowering, state_dict compatibility
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_fold_bn_params_matches_conv_then_bn(bias, groups):
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias).double()
    bn = randomise(torch.nn.BatchNorm2d(6, eps=1e-3).double().eval(), 5)
    x = torch.randn(2, 4, 7, 7, generator=gen, dtype=torch.float64)
    w, b = fold_bn_params(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    want = bn(conv(x))
    got = torch.nn.functional.conv2d(x, w, b, padding=1, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # low precision weights are folded in float32, then rounded once
    w16, b16 = fold_bn_params(conv.weight.bfloat16(), None, bn.weight.float(), bn.bias.float(),
                              bn.running_mean.float(), bn.running_var.float(), bn.eps)
    assert w16.dtype == b16.dtype == torch.bfloat16
    w32, _ = fold_bn_params(conv.weight.bfloat16().float(), None, bn.weight.float(), bn.bias.float(),
                            bn.running_mean.float(), bn.running_var.float(), bn.eps)
    assert torch.equal(w16, w32.bfloat16())


def test_state_dicts_are_interchangeable():
    ref = archdsl.compile("cifar_resnet", n=1)
    tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
    assert list(tri.state_dict()) == list(ref.state_dict())
    assert [(k, v.shape) for k, v in tri.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    tri.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(tri.state_dict(), strict=True)
    # the fused layers are the kernel's module, the BNs ordinary ones under their own names
    from archdsl.codegen.triton.conv import FusedConv2d
    assert isinstance(tri.conv1, FusedConv2d) and not tri.conv1.relu
    assert type(tri.bn1) is torch.nn.BatchNorm2d
    assert isinstance(archdsl.compile("alexnet", backend="triton").conv1, FusedConv2d)
    assert archdsl.compile("alexnet", backend="triton").conv1.relu


@pytest.mark.parametrize("spec,kwargs,batch", [
    ("cifar_resnet", {"n": 1}, 4),
    ("cifar_resnet", {"n": 3, "shortcut": "B"}, 2),
    ("alexnet", {"input": "3x67x67", "classes": 10}, 2),
    ("vgg_a", {"input": "3x32x32", "classes": 10}, 2),
])
def test_bundled_nets_keep_their_function(no_kernel, spec, kwargs, batch):
    ref, tri = pair(spec, **kwargs)
    x = torch.randn(batch, *tri_shape(spec, kwargs), generator=torch.Generator().manual_seed(1))
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)
        assert_close_logs(ref(x), tri(x), softmax=True)  # a second call: from the fold cache
    # eval mode with autograd: folded on every call, differentiably
    y_ref, y_tri = ref(x), tri(x)
    assert_close_logs(y_ref, y_tri, softmax=True)
    y_ref.log().sum().backward()
    y_tri.log().sum().backward()
    for (k, p), q in zip(ref.named_parameters(), tri.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=k)
    ref.zero_grad(set_to_none=True), tri.zero_grad(set_to_none=True)
    same_training_step(ref, tri, x)


def tri_shape(spec, kwargs):
    return archdsl.load(spec, **kwargs).input_shape.dims


def test_the_fold_follows_new_weights_and_statistics(no_kernel):
    ref, tri = pair("cifar_resnet", n=1)
    x = torch.randn(2, 3, 32, 32)
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)
        # in-place updates (the version counter moves)
        for m in (ref, tri):
            m.bn1.running_var.mul_(3.0)
            m.basic1_conv1.weight.mul_(-1.0)
        assert_close_logs(ref(x), tri(x), softmax=True)
        # a new state dict
        other = randomise(archdsl.compile("cifar_resnet", n=1), seed=7)
        ref.load_state_dict(other.state_dict()), tri.load_state_dict(other.state_dict())
        assert_close_logs(ref(x), tri(x), softmax=True)
    # a training step updates the running statistics; eval afterwards uses the new ones
    same_training_step(ref, tri, x)
    ref.eval(), tri.eval()
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)
    # and inference_mode works (the cache must not hold inference tensors)
    with torch.inference_mode():
        assert_close_logs(ref(x), tri(x), softmax=True)
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)


def test_emitted_triton_source_runs_like_the_in_process_module(no_kernel, tmp_path):
    from archdsl.cli import main

    out = tmp_path / "net.py"
    assert main(["build", "cifar_resnet", "--set", "n=1", "--backend", "triton", "-o", str(out)]) == 0
    source = out.read_text()
    assert "from archdsl.codegen.triton.conv import FusedConv2d" in source
    assert "fused_conv(x, self.conv1, self.bn1, relu=True)" in source
    namespace = {}
    exec(compile(source, str(out), "exec"), namespace)
    emitted = namespace["CifarResnet"]()
    ref, tri = pair("cifar_resnet", n=1)
    emitted.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    for m in (ref, tri, emitted):
        m.eval()
    with torch.no_grad():
        assert torch.equal(emitted(x), tri(x))
        assert_close_logs(ref(x), emitted(x), softmax=True)
    # the torch backend's source of the fused graph is the unfused computation, op for op
    g = fused(archdsl.load("cifar_resnet", n=1))
    torch_source = emit_source(g, backend="torch")
    assert "torch.relu(self.bn1(self.conv1(x)))" in torch_source
    namespace = {}
    exec(compile(torch_source, "<torch>", "exec"), namespace)
    plain = namespace["CifarResnet"]()
    plain.load_state_dict(ref.state_dict(), strict=True)
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), ref(x))


def test_build_summary_shows_the_fused_graph(capsys, tmp_path):
    from archdsl.cli import main

    assert main(["build", "resnet18", "--backend", "triton", "-o", str(tmp_path / "r.py")]) == 0
    text = capsys.readouterr().out
    assert "conv+bn+relu 7x7/2 pad 3, 64 no-bias" in text
    assert "conv+bn+add+relu 3x3/1 pad 1, 64 no-bias" in text  # a block's second conv and its add
    assert "conv+bn 1x1/2 pad 0, 128 no-bias" in text  # a projection shortcut
    assert " bn " not in text and "layer1_bn" not in text
    assert "11,689,512" in text  # parameters unchanged by fusion
    assert "backend triton: fused 20 convs: 3 conv+bn, 8 conv+bn+add+relu, 9 conv+bn+relu; batch norm folded" in text
    assert " add " not in text
    assert main(["build", "resnet18", "-o", str(tmp_path / "t.py")]) == 0
    assert "conv+bn" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the fallback notice
# --------------------------------------------------------------------------------------------


def _runtime_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "archdsl" in str(w.message)]


def test_without_a_device_the_triton_backend_runs_pytorch_ops_and_says_so_once(monkeypatch, fresh_notice):
    monkeypatch.setattr(support, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not support.available() and "no CUDA device" in support.unavailable_reason()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
        tri2 = archdsl.compile("alexnet", backend="triton", input="3x67x67")
    notes = _runtime_warnings(record)
    assert len(notes) == 1, [str(w.message) for w in record]
    assert "falls back to PyTorch ops" in str(notes[0].message) and "no CUDA device" in str(notes[0].message)
    assert tri.backend == "torch" and tri.requested_backend == "triton" and "requested 'triton'" in repr(tri)
    assert type(tri.conv1) is torch.nn.Conv2d and type(tri2.conv1) is torch.nn.Conv2d
    assert type(tri2.lrn1) is torch.nn.LocalResponseNorm
    # not silently wrong either: same function as the torch backend
    ref = randomise(archdsl.compile("cifar_resnet", n=1))
    tri.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), tri.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_logs(ref(x), tri(x), softmax=True)


def test_without_triton_the_backend_falls_back(monkeypatch, fresh_notice):
    monkeypatch.setattr(support, "_triton_importable", lambda: False)
    with pytest.warns(RuntimeWarning, match="triton package cannot be imported"):
        tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
    assert tri.backend == "torch" and type(tri.conv1) is torch.nn.Conv2d


@needs_kernels
def test_inputs_the_kernel_does_not_take_fall_back_with_the_notice(fresh_notice):
    ref, tri = pair("cifar_resnet", n=1)
    ref, tri = ref.double().eval(), tri.double().eval()  # float64: no kernel takes it
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with torch.no_grad():
            got, want = tri(x), ref(x)
            tri(x)
    notes = _runtime_warnings(record)
    assert len(notes) == 1 and "does not take a torch.float64 input" in str(notes[0].message)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # once per process: a later fallback of another kind stays quiet
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        support.notice("another reason")
    assert not record


@needs_kernels
def test_the_kernels_running_gives_no_notice(fresh_notice):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tri = archdsl.compile("cifar_resnet", n=1, backend="triton")
    assert not _runtime_warnings(record) and tri.backend == "triton"


# --------------------------------------------------------------------------------------------
# the kernels in a whole (tiny) network
# --------------------------------------------------------------------------------------------

TINY = """net tiny : 3x8x8 {
    conv3-8 bias=false; bn
    residual { conv3-8 bias=false; bn; conv3-8 bias=false; bn }
    conv3-8/2 groups=2
    conv1-4 act=none
    gap; fc-5
}"""


@pytest.fixture
def kernels_only(monkeypatch):
    """Fail if any conv falls back to F.conv2d: the Triton kernel must do them all."""
    if not support.available():
        pytest.skip(NEEDS_KERNELS)
    real = torch.nn.functional.conv2d

    def forbidden(*args, **kwargs):
        raise AssertionError("a convolution fell back to F.conv2d")

    def install():
        monkeypatch.setattr(torch.nn.functional, "conv2d", forbidden)

    def remove():
        monkeypatch.setattr(torch.nn.functional, "conv2d", real)

    return install, remove


def test_triton_backend_agrees_with_torch_on_a_tiny_net(kernels_only, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 comparisons on a GPU
    install, remove = kernels_only
    device = "cuda" if torch.cuda.is_available() else "cpu"
    graph = archdsl.loads(TINY)
    f = fused(graph)
    assert [describe(d["op"], d["attrs"]).split(" ")[0] for _, d in f.ops() if d["op"] is Op.FUSED_CONV] == [
        "conv+bn+relu", "conv+bn+relu", "conv+bn+add+relu", "conv+relu"]
    torch.manual_seed(0)
    ref = randomise(archdsl.compile(graph)).to(device)
    tri = archdsl.compile(graph, backend="triton").to(device)
    tri.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    ref.eval(), tri.eval()
    with torch.no_grad():
        want = ref(x)
        install()
        got = tri(x)
        remove()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # training: kernel forward (BN on batch statistics in between), PyTorch gradients
    ref.train(), tri.train()
    ys = []
    for m in (ref, tri):
        if m is tri:
            install()
        y = m(x)
        remove()
        y.square().mean().backward()
        ys.append(y)
    torch.testing.assert_close(ys[1], ys[0], rtol=1e-4, atol=1e-5)
    for (k, p), q in zip(ref.named_parameters(), tri.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=k)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(tri.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
