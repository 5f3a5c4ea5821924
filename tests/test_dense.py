"""The fully-convolutional (dense) form: FC layers as convolutions, with the FC module's weights.

At the spec's own input size the dense net's spatially averaged scores are the ordinary
net's; at larger inputs it yields a score map whose every location is the ordinary net on the
window under it; the FC module's state dict loads unchanged, in process and in emitted source.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.cli import main
from archdsl.codegen.torch_source import class_name, emit_source
from archdsl.ir import Op
from archdsl.passes.fc_to_conv import fc_to_conv
from archdsl.passes.logits import drop_output_softmax
from archdsl.pipeline import load_for_dense

from archdsl import testing as shared  # the project's strategies of random valid nets


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-initialised weights and random biases and BN statistics, so scores are O(1) even
    through 16 layers, and eval mode. Returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1 + 0.2 * torch.rand(m.running_var.shape, generator=gen))
    return module.eval()


def close(dense: torch.Tensor, fc: torch.Tensor, rtol: float = 1e-5) -> None:
    """Tight fp32 agreement, relative to the size of the scores."""
    scale = fc.abs().max().item()
    torch.testing.assert_close(dense, fc, rtol=rtol, atol=rtol * max(scale, 1e-3))


def last_layer_output(module: torch.nn.Module, graph: archdsl.ArchGraph, x: torch.Tensor):
    """(output, output of the classifier's last weighted layer) in one forward pass."""
    last = [n for n, d in graph.ops() if d["op"] in (Op.CONV, Op.LINEAR)][-1]
    seen = {}
    handle = getattr(module, last).register_forward_hook(lambda m, i, o: seen.setdefault("scores", o))
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        handle.remove()
    return out, seen["scores"]


# -- the bundled nets ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["alexnet", "vgg_a", "vgg_d", "resnet18"])
def test_dense_scores_equal_fc_scores_at_the_spec_input(name):
    # In float64: the point is that the conversion computes the same function, and fp32 sums of
    # 25,088 products (VGG's fc1) differ by ~1e-6 between a GEMM and a convolution kernel, by an
    # amount that depends on the CPU's vector width. In float64 that noise is ~1e-15, so the
    # tolerance below (1e-5 of the scores) measures the conversion, not the summation order.
    graph = archdsl.load(name)
    fc = randomise(archdsl.compile(graph, softmax=True), seed=1).double()
    dense = archdsl.compile(graph, dense=True, softmax=True).eval()
    dense.load_state_dict(fc.state_dict(), strict=True)
    dense = dense.double()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    probs, scores = last_layer_output(fc, graph, x)
    dense_probs, score_map = last_layer_output(dense, graph, x)
    if name.startswith("resnet"):  # the score map before global pooling: 7x7 at 224
        assert score_map.shape == (1, 1000, 7, 7)
    else:  # the fc layers see exactly one window
        assert score_map.shape == dense_probs.shape == (1, 1000, 1, 1)
    assert scores.std() > 0.1  # scores of a size that makes the comparison mean something
    close(score_map.mean(dim=(2, 3)), scores)
    # Posteriors: per location in the dense form; at 1x1 the average is the FC net's softmax.
    assert dense_probs.shape[2:] == score_map.shape[2:]
    close(dense_probs.sum(dim=1), torch.ones_like(dense_probs.sum(dim=1)))
    if not name.startswith("resnet"):
        close(dense_probs.mean(dim=(2, 3)), probs)
    else:
        close(torch.softmax(score_map.mean(dim=(2, 3)), dim=1), probs)


@pytest.mark.parametrize("name, size", [
    ("googlenet", 64), ("densenet121", 64), ("squeezenet", 64), ("preact_resnet110", 32), ("preact_resnet164", 32),
])
def test_dense_scores_of_the_dag_nets_average_to_their_fc_scores(name, size):
    # The nets with branches and concatenations: the dense form moves only the final global
    # pooling (SqueezeNet's output is already a 1x1 map), so its score map averages to the
    # ordinary net's scores. At a small input, in float64 (see above).
    graph = archdsl.load(name, input=f"3x{size}x{size}")
    fc = randomise(archdsl.compile(graph), seed=1).double()
    dense = archdsl.compile(graph, dense=True).eval()
    dense.load_state_dict(fc.state_dict(), strict=True)
    dense = dense.double()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        scores, score_map = fc(x).flatten(1), dense(x)
    assert score_map.dim() == 4 and score_map.shape[1] == graph.output_shape.c
    assert scores.std() > 0.1
    close(score_map.mean(dim=(2, 3)), scores)


@pytest.mark.parametrize("name, kernel", [("vgg_d", 7), ("vgg_a", 7), ("alexnet", 6)])
def test_the_first_fc_becomes_a_kxk_conv_and_later_ones_1x1(name, kernel):
    dense = fc_to_conv(archdsl.load(name))
    fcs = [(n, d) for n, d in dense.ops() if d["attrs"].get("from_linear")]
    assert [n for n, _ in fcs] == ["fc1", "fc2", "fc3"]
    first, *later = (d["attrs"] for _, d in fcs)
    assert first["kernel"] == (kernel, kernel) and first["padding"] == (0, 0) and first["stride"] == (1, 1)
    assert first["from_linear"] == (first["from_linear"][0], kernel, kernel)
    assert all(a["kernel"] == (1, 1) and a["from_linear"] == (4096, 1, 1) for a in later)
    assert not any(d["op"] is Op.LINEAR for _, d in dense.ops())
    assert dense.output_shape.dims == (1000, 1, 1)


def test_resnet_classifier_moves_before_the_pooling_and_the_pooling_goes():
    graph = archdsl.load("resnet50")
    dense = fc_to_conv(graph)
    assert not any(d["op"] is Op.GLOBAL_AVGPOOL for _, d in dense.ops())
    fc = dense.nodes["fc1"]
    assert fc["op"] is Op.CONV and fc["attrs"]["kernel"] == (1, 1) and fc["attrs"]["from_linear"] == (2048, 1, 1)
    assert dense.nodes[fc["args"][0]]["meta"]["shape"].dims == (2048, 7, 7)
    assert dense.output_shape.dims == (1000, 7, 7)
    assert dense.params == graph.params
    # The input graph is left as it was.
    assert graph.nodes["fc1"]["op"] is Op.LINEAR and any(d["op"] is Op.GLOBAL_AVGPOOL for _, d in graph.ops())


def test_vgg_at_384_gives_a_6x6_map_with_kernels_from_the_spec_input():
    # Built at the spec's 224 (fc1 is 7x7), inferred at 384: 12x12 before fc1, 6x6 after.
    graph, dense_input = load_for_dense("vgg_d", input="3x384x384")
    assert graph.input_shape.dims == (3, 224, 224) and dense_input.dims == (3, 384, 384)
    from archdsl.pipeline import lower_graph

    dense = lower_graph(graph, dense=True, dense_input=dense_input)
    assert dense.output_shape.dims == (1000, 6, 6)
    assert dense.nodes["fc1"]["attrs"]["kernel"] == (7, 7)
    assert dense.params == archdsl.load("vgg_d").params
    with torch.device("meta"):
        module = archdsl.compile("vgg_d", dense=True, input="3x384x384")
        assert module.fc1.kernel_size == (7, 7) and module.fc1.weight.shape == (4096, 512, 7, 7)
        assert module(torch.empty(1, 3, 384, 384)).shape == (1, 1000, 6, 6)


def test_a_graph_built_at_another_input_is_converted_at_that_input():
    # An explicit graph is taken as built: its fc layers are what they are at its input.
    graph = archdsl.load("vgg_a", input="3x256x256")
    assert fc_to_conv(graph).nodes["fc1"]["attrs"]["kernel"] == (8, 8)
    assert fc_to_conv(graph, "3x320x320").output_shape.dims == (1000, 3, 3)


def test_state_dict_round_trip_strict():
    graph = archdsl.load("alexnet", classes=10)
    fc = randomise(archdsl.compile(graph), seed=3)
    state = fc.state_dict()
    dense = archdsl.compile(graph, dense=True)
    assert set(dense.state_dict()) == set(state)
    result = dense.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert state["fc1.weight"].shape == (4096, 256 * 6 * 6)  # the caller's dict is not changed
    torch.testing.assert_close(dense.fc1.weight, state["fc1.weight"].view(4096, 256, 6, 6), rtol=0, atol=0)
    torch.testing.assert_close(dense.fc3.weight, state["fc3.weight"].view(10, 4096, 1, 1), rtol=0, atol=0)
    # The dense module's own state dict (4-D kernels) loads too.
    archdsl.compile(graph, dense=True).load_state_dict(dense.state_dict(), strict=True)
    # A wrong-sized fc weight is reported, not reshaped into something else.
    bad = dict(state, **{"fc2.weight": torch.zeros(4096, 100)})
    with pytest.raises(RuntimeError, match="fc2.weight"):
        archdsl.compile(graph, dense=True).load_state_dict(bad)


def test_dense_state_dict_loads_under_a_prefix():
    graph = archdsl.load("alexnet", classes=10)
    fc = randomise(archdsl.compile(graph), seed=4)
    outer = torch.nn.Sequential(archdsl.compile(graph, dense=True))
    outer.load_state_dict({f"0.{k}": v for k, v in fc.state_dict().items()}, strict=True)
    torch.testing.assert_close(outer[0].fc1.weight.flatten(1), fc.fc1.weight, rtol=0, atol=0)


# -- emitted source ---------------------------------------------------------------------------

def _exec_module(graph):
    namespace = {}
    exec(compile(emit_source(graph), "<dense>", "exec"), namespace)
    return namespace[class_name(graph.name)]()


@pytest.mark.parametrize("name, size, seed", [("alexnet", 256, 5), ("cifar_resnet", 48, 6)])
def test_emitted_dense_source_matches_the_dense_module(name, size, seed):
    graph = archdsl.load(name, classes=10)
    fc = randomise(archdsl.compile(graph), seed=seed)
    dense_graph = fc_to_conv(graph, f"3x{size}x{size}")
    emitted = _exec_module(dense_graph).eval()
    emitted.load_state_dict(fc.state_dict(), strict=True)
    dense = archdsl.compile(graph, dense=True, softmax=True).eval()  # as emitted: with the softmax
    dense.load_state_dict(fc.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = emitted(x), dense(x)
    assert a.shape == b.shape == (2, *dense_graph.output_shape.dims)
    assert a.shape[2] > 1  # a real map, not one window
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_emitted_dense_source_imports_only_torch():
    source = emit_source(fc_to_conv(archdsl.load("vgg_d")))
    imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert all(line.split()[1].split(".")[0] == "torch" for line in imports)
    assert "def _load_from_state_dict" in source and "FROM_LINEAR = {'fc1': (512, 7, 7)" in source
    assert "nn.Linear" not in source


def test_build_dense_command(tmp_path, capsys):
    out = tmp_path / "alexnet_dense.py"
    assert main(["build", "alexnet", "--dense", "--input", "3x256x256", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "output 1000x2x2" in printed and "60,965,224" in printed
    namespace = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    with torch.device("meta"):
        model = namespace["Alexnet"]()
        assert model(torch.empty(1, 3, 256, 256)).shape == (1, 1000, 2, 2)
    assert model.fc1.kernel_size == (6, 6)


# -- where the dense form is undefined -------------------------------------------------------

def test_relu_between_pooling_and_classifier_is_an_error():
    graph = archdsl.loads("net head : 3x16x16 {\n  conv3-8; gap\n  fc-16; fc-4; softmax\n}")
    with pytest.raises(archdsl.SpecError) as info:
        fc_to_conv(graph)
    err = info.value
    assert "does not commute with the spatial average" in err.message and "relu" in err.message
    assert (err.line, err.column) == (3, 3)  # the implied ReLU of fc-16
    assert "global average pooling" in str(err)  # a note points at the pooling


def test_dense_input_smaller_than_the_spec_input_is_an_error():
    with pytest.raises(archdsl.SpecError) as info:
        fc_to_conv(archdsl.load("vgg_a"), "3x160x160")
    assert "7x7" in info.value.message and "dense form" in str(info.value)
    with pytest.raises(archdsl.SpecError, match="3-channel"):
        fc_to_conv(archdsl.load("vgg_a"), "1x224x224")


def test_bn_and_dropout_after_the_pooling_commute():
    text = "net head : 3x16x16 {\n  conv3-8; gap; dropout\n  fc-16 act=none; bn; dropout; fc-4; softmax\n}"
    graph = archdsl.loads(text)
    dense = fc_to_conv(graph, "3x24x24")
    assert dense.output_shape.dims == (4, 24, 24)
    fc = randomise(archdsl.compile(drop_output_softmax(graph)), seed=7)
    module = archdsl.compile(drop_output_softmax(dense))
    module.load_state_dict(fc.state_dict(), strict=True)
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():  # the FC net pools globally, at any input size
        close(module.eval()(x).mean(dim=(2, 3)), fc(x))


def test_every_pooling_on_the_way_back_from_the_output_goes():
    # A pooling of a pooled map is the same pooling: both go, the output is the map.
    graph = archdsl.loads("net p : 2x6x6 { conv1-3 act=none; gap; softmax; gap }")
    dense = fc_to_conv(graph, "2x9x9")
    assert [d["op"] for _, d in dense.ops()] == [Op.INPUT, Op.CONV, Op.SOFTMAX]
    assert dense.output_shape.dims == (3, 9, 9)


def test_drop_output_softmax():
    graph = archdsl.load("vgg_a")
    scores = drop_output_softmax(graph)
    assert scores.nodes[scores.graph["output"]]["op"] is Op.LINEAR
    assert graph.nodes[graph.graph["output"]]["op"] is Op.SOFTMAX
    assert drop_output_softmax(scores).graph["output"] == scores.graph["output"]


# -- random nets ------------------------------------------------------------------------------

@st.composite
def nets(draw, valid_only: bool = False):
    """A small random spec with an fc classifier (flattening or after global pooling), its input
    size and whether all windows are unpadded. Sizes are tracked so every spec is valid."""
    size = draw(st.integers(8, 20))
    channels = draw(st.sampled_from([1, 3]))
    unpadded = valid_only or draw(st.booleans())
    lines, h = [], size
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 3))
        stride = draw(st.integers(1, 2))
        pad = 0 if unpadded else k // 2
        if (h + 2 * pad - k) // stride + 1 < 2:
            break
        width = draw(st.integers(2, 6))
        stmt = f"conv{k}-{width}/{stride} pad={pad}"
        h = (h + 2 * pad - k) // stride + 1
        if draw(st.booleans()):
            stmt += "; bn"
        if draw(st.booleans()):
            stmt += "; LRN size=3"
        if h >= 4 and draw(st.booleans()):
            stmt += "; " + draw(st.sampled_from(["maxpool", "avgpool", "maxpool3/2"]))
            h = (h - (3 if "3/2" in stmt else 2)) // 2 + 1
        lines.append(stmt)
    head = draw(st.sampled_from(["flat", "gap"]))
    classes = draw(st.integers(2, 7))
    hidden = []
    for _ in range(draw(st.integers(0, 2))):
        layer = f"fc-{draw(st.integers(2, 9))}"
        if head == "gap":
            layer += " act=none"  # only what commutes with the spatial average after pooling
        if draw(st.booleans()):
            layer += "; bn"
        if draw(st.booleans()):
            layer += "; dropout"
        hidden.append(layer)
    tail = ["gap"] if head == "gap" else []
    tail += hidden + [f"fc-{classes}"] + (["softmax"] if draw(st.booleans()) else [])
    lines.append("; ".join(tail))
    text = f"net random : {channels}x{size}x{size} {{\n" + "\n".join(f"  {ln}" for ln in lines) + "\n}"
    return text, channels, size, unpadded, head


# deadline=None and too_slow suppressed: both time the wall clock (too_slow the drawing of a net,
# which builds it), which a busy machine stretches; the nets drawn are small instead.
_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fc_and_dense(text, seed=0):
    graph = drop_output_softmax(archdsl.loads(text))
    fc = randomise(archdsl.compile(graph), seed=seed)
    dense = archdsl.compile(graph, dense=True)
    dense.load_state_dict(fc.state_dict(), strict=True)
    return graph, fc, dense.eval()


@_SETTINGS
@given(nets())
def test_random_nets_dense_average_equals_fc_at_the_spec_input(net):
    text, channels, size, _, _ = net
    graph, fc, dense = _fc_and_dense(text)
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        score_map, scores = dense(x), fc(x)
    assert score_map.dim() == 4 and score_map.shape[1] == scores.shape[1]
    close(score_map.mean(dim=(2, 3)), scores, rtol=1e-4)


@_SETTINGS
@given(nets(valid_only=True))
def test_random_nets_each_score_map_location_is_the_fc_net_on_its_window(net):
    text, channels, size, _, head = net
    graph, fc, dense = _fc_and_dense(text, seed=1)
    # The stride of the grid the first fc sees, in input pixels: one more step of it gives one
    # more score-map row and column.
    first = next(n for n, d in graph.ops() if d["op"] is Op.LINEAR)
    step = graph.nodes[graph.nodes[first]["args"][0]]["meta"]["jump"]
    big = size + step
    x = torch.randn(1, channels, big, big, generator=torch.Generator().manual_seed(1))
    dense_graph = fc_to_conv(graph, f"{channels}x{big}x{big}")
    with torch.no_grad():
        score_map = dense(x)
        assert score_map.shape[1:] == dense_graph.output_shape.dims
        if head == "gap":  # the FC net pools globally at any size: the same scores, averaged
            close(score_map.mean(dim=(2, 3)), fc(x), rtol=1e-4)
            return
        assert score_map.shape[2:] == (2, 2)
        for i in range(2):
            for j in range(2):
                window = x[:, :, i * step:i * step + size, j * step:j * step + size]
                close(score_map[:, :, i, j], fc(window), rtol=1e-4)


@_SETTINGS
@given(nets())
def test_random_nets_emitted_dense_source_matches(net):
    text, channels, size, _, _ = net
    graph, fc, dense = _fc_and_dense(text, seed=2)
    big = size + 5
    emitted = _exec_module(fc_to_conv(graph, f"{channels}x{big}x{big}")).eval()
    emitted.load_state_dict(fc.state_dict(), strict=True)
    x = torch.randn(1, channels, big, big, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), dense(x), rtol=0, atol=0)


# too_slow only: each example builds and checks a whole net in the strategy, 1-60 ms alone but
# up to ~0.3 s with four test processes on two cores, near Hypothesis's 1 s budget for the
# generation of the first examples. No other health check fired in 20 seeded runs (the test
# takes no fixtures, and the strategy rejects few draws: 3 in 33).
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shared.graphs(), st.integers(0, 3))
def test_shared_random_graphs_dense_form(graph, grow):
    # Nets of every layer kind, residual units and blocks: the dense form is either refused
    # for a reason (a global pooling it cannot move past the classifier) or lowers to modules
    # whose shapes, parameters and MACs are the analysis's, and which compute the FC net's
    # scores, averaged over space, at the spec's input size.
    scores = drop_output_softmax(graph)
    try:
        dense = fc_to_conv(scores)
    except archdsl.SpecError as err:
        assert "has no class score map" in err.message
        assert any(d["op"] is Op.GLOBAL_AVGPOOL for _, d in graph.ops())
        return
    assert not any(d["op"] in (Op.LINEAR, Op.GLOBAL_AVGPOOL) for _, d in dense.ops())
    shared.check_lowering(dense)
    # Both graphs are already the scores graph: compile them as they are (softmax=True keeps a
    # softmax the dense form leaves last, e.g. before a 1x1 global pooling it removed).
    fc = randomise(archdsl.compile(scores, softmax=True), seed=9)
    module = archdsl.compile(dense, softmax=True).eval()
    module.load_state_dict(fc.state_dict(), strict=True)
    x = torch.randn(2, *graph.input_shape.dims, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = fc(x), module(x)
    if a.dim() == 2 or a.shape[2:] != b.shape[2:]:  # a vector, or a map the pooling made 1x1
        b = b.mean(dim=(2, 3)).view(a.shape)
    close(b, a, rtol=1e-4)
    # At a larger input (where the net's own shape rules allow it) the shapes still hold.
    c, h, w = graph.input_shape.dims
    try:
        bigger = fc_to_conv(scores, f"{c}x{h + grow}x{w + 2 * grow}")
    except archdsl.SpecError:
        return
    shared.check_lowering(bigger, source=False)


def test_dense_form_with_the_triton_backend_fusions_loads_fc_weights():
    pytest.importorskip("triton", reason="the triton backend needs triton")
    # conv -> bn fusion keeps the fc-made conv's mark, so the FC state dict still loads.
    graph = archdsl.loads("net t : 3x16x16 { conv3-4; bn; maxpool; fc-8; bn; fc-3 }")
    fc = randomise(archdsl.compile(graph), seed=8)
    dense = archdsl.compile(graph, dense=True, backend="triton").eval()
    dense.load_state_dict(fc.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        close(dense(x).mean(dim=(2, 3)), fc(x), rtol=1e-4)


def test_dense_form_keeps_a_softmax_that_did_not_end_the_net():
    # A softmax before a 1x1 global pooling: the dense form removes the pooling, and the softmax
    # then ends the graph, but it was not the net's last layer, so it stays (logits mode drops
    # only a softmax that ends the written net).
    graph = archdsl.loads("net g : 4x1x1 { batchnorm; softmax; globalavgpool }")
    fc = randomise(archdsl.compile(graph), seed=3)
    dense = archdsl.compile(graph, dense=True).eval()
    dense.load_state_dict(fc.state_dict(), strict=True)
    x = torch.randn(2, 4, 1, 1, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = fc(x), dense(x)
    close(b.mean(dim=(2, 3)).view(a.shape), a, rtol=1e-5)
    assert torch.allclose(a.sum(dim=1), torch.ones(2))  # the softmax's output: rows sum to 1
