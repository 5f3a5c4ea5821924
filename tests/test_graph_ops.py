"""The ops of graphs and of the CNN families after VGG and ResNet, each through every stage:
spec -> graph (shape, counts, receptive field) -> in-process module and emitted source, both
against the PyTorch computation written out by hand."""

import pytest
import torch
import torch.nn.functional as F

import archdsl
from archdsl import Op
from archdsl.testing import check_lowering, source_module


def run_both(graph, x):
    model = archdsl.compile(graph).eval()
    emitted = source_module(graph).eval()
    emitted.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model(x), emitted(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    return model, a


@pytest.mark.parametrize("name, fn", [
    ("relu6", F.relu6), ("hardsigmoid", F.hardsigmoid), ("silu", F.silu), ("swish", F.silu),
    ("hardswish", F.hardswish), ("sigmoid", torch.sigmoid),
])
def test_activations_replace_the_implied_relu(name, fn):
    g = archdsl.loads(f"net a : 3x6x6 {{ conv3-4; {name} }}")
    assert [d["op"] for _, d in g.ops()][1] is Op.CONV and len(g) == 3  # no ReLU before it
    x = torch.randn(2, 3, 6, 6) * 4
    model, y = run_both(g, x)
    with torch.no_grad():
        torch.testing.assert_close(y, fn(model.conv1(x)))


def test_concat_joins_channels_in_branch_order():
    g = archdsl.loads("net c : 4x8x8 { concat { conv1-2 act=none | identity | maxpool3/1 pad=1 } }")
    assert str(g.output_shape) == "10x8x8" and g.nodes["concat1"]["attrs"] == {"inputs": 3}
    assert g.nodes["concat1"]["meta"]["params"] == 0 and g.nodes["concat1"]["meta"]["macs"] == 0
    x = torch.randn(2, 4, 8, 8)
    model, y = run_both(g, x)
    with torch.no_grad():
        torch.testing.assert_close(y, torch.cat([model.conv1(x), x, F.max_pool2d(x, 3, 1, 1)], 1))


def test_multiply_broadcasts_a_gate():
    g = archdsl.loads("net s : 8x5x5 { multiply { identity | gap; conv1-2; conv1-8 act=none; sigmoid } }")
    assert str(g.output_shape) == "8x5x5" and g.params == (8 * 2 + 2) + (2 * 8 + 8)
    x = torch.randn(2, 8, 5, 5)
    model, y = run_both(g, x)
    with torch.no_grad():
        gate = torch.sigmoid(model.conv2(torch.relu(model.conv1(x.mean((2, 3), keepdim=True)))))
        torch.testing.assert_close(y, x * gate)


def test_ceil_mode_pooling_rounds_up_as_torch():
    for size in range(3, 20):
        g = archdsl.loads(f"net p : 2x{size}x{size} {{ maxpool3/2 ceil=true; avgpool2/2 ceil=true }}")
        x = torch.randn(1, 2, size, size)
        expect = F.avg_pool2d(F.max_pool2d(x, 3, 2, ceil_mode=True), 2, 2, ceil_mode=True)
        assert g.output_shape.dims == tuple(expect.shape[1:])
        torch.testing.assert_close(run_both(g, x)[1], expect)
    # GoogLeNet's first pooling: 112 -> 56 with ceil, 55 without
    assert archdsl.loads("net p : 1x112x112 { maxpool3/2 ceil=true }").output_shape.dims == (1, 56, 56)
    assert archdsl.loads("net p : 1x112x112 { maxpool3/2 }").output_shape.dims == (1, 55, 55)


def test_adaptive_average_pooling_keeps_the_classifier_size():
    text = "net v : 3x{s}x{s} {{ conv3-4; maxpool; adaptive_avgpool size=3; fc-5 }}"
    for s in (12, 17, 30):
        g = archdsl.loads(text.format(s=s))
        assert g.nodes["fc1"]["meta"]["params"] == 4 * 9 * 5 + 5
        x = torch.randn(1, 3, s, s)
        model, y = run_both(g, x)
        with torch.no_grad():
            pooled = F.adaptive_avg_pool2d(F.max_pool2d(torch.relu(model.conv1(x)), 2), 3)
            torch.testing.assert_close(y, model.fc1(pooled.flatten(1)))


def test_channel_shuffle():
    g = archdsl.loads("net s : 6x3x3 { shuffle groups=3 }")
    x = torch.arange(6.0).view(1, 6, 1, 1).expand(1, 6, 3, 3).contiguous()
    y = run_both(g, x)[1]
    assert y[0, :, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]
    with pytest.raises(archdsl.SpecError, match="divisible by 4, found 6"):
        archdsl.loads("net s : 6x3x3 { shuffle groups=4 }")


def test_receptive_field_through_branches_is_the_widest():
    g = archdsl.loads("net r : 1x32x32 { concat { conv1-1 | conv3-1; conv3-1 | conv5-1 } }")
    assert g.nodes["concat1"]["meta"]["rf"] == 5 and g.nodes["concat1"]["meta"]["jump"] == 1
    g = archdsl.loads("net r : 1x32x32 { x = conv3-2; conv3-2/2; conv3-2 act=none; "
                      "multiply { identity | gap; conv1-2 act=none; sigmoid } }")
    assert g.nodes["gap1"]["meta"]["rf"] > 32  # the gate sees the whole image


def test_a_gate_widens_the_field_but_keeps_the_maps_stride():
    # The multiply's output is the 16x16 map's grid (stride 2), not the gate's one position
    # (stride 32): the layers after it grow the field by their kernel in steps of 2 pixels.
    g = archdsl.loads("net r : 1x32x32 { conv3-2/2; multiply { identity | gap; conv1-2 act=none; sigmoid }; "
                      "conv3-2; maxpool }")
    gap, mul, conv = (g.nodes[n]["meta"] for n in ("gap1", "mul1", "conv3"))
    assert (gap["rf"], gap["jump"]) == (3 + 15 * 2, 32)
    assert (mul["rf"], mul["jump"]) == (gap["rf"], 2)
    assert (conv["rf"], conv["jump"]) == (mul["rf"] + 2 * 2, 2)
    assert g.nodes["pool1"]["meta"]["jump"] == 4


@pytest.mark.parametrize("spec", [
    "net g : 3x12x12 { conv3-8; concat { conv1-4 | conv1-4; conv3-4 | maxpool3/1 pad=1 ceil=true; conv1-4 } }",
    "net g : 3x12x12 { conv3-8; multiply { identity | gap; conv1-2; conv1-8 act=none; hardsigmoid }; hardswish }",
    "net g : 3x12x12 { x = conv3-8; { conv3-8; bn } x2; add act=none { identity | x }; relu6; gap; fc-3 }",
    "net g : 3x13x13 { conv3-6/2; shuffle groups=3; concat { identity | conv3-{in} groups={in} } x2 for i; "
    "adaptive_avgpool size=2; silu; fc-4 }",
])
def test_graphs_lower_as_analysed(spec):
    counted = check_lowering(archdsl.loads(spec))
    assert counted["params"] == archdsl.loads(spec).params


def test_graph_modules_pickle_and_script():
    import io
    import pickle

    g = archdsl.loads("net g : 3x8x8 { conv3-8; concat { conv1-4 | identity }; "
                      "multiply { identity | gap; conv1-12 act=none; hardsigmoid }; gap; fc-3 }")
    model = archdsl.compile(g).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), want)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), want)
        torch.testing.assert_close(torch.jit.script(model)(x), want)
    shown = repr(model)
    assert "(concat1): Concat()" in shown and "(mul1): Multiply()" in shown


def test_dense_form_of_a_dag_with_a_gate_averages_to_the_fc_scores():
    # squeeze-and-excitation's global pooling is a gate, not the classifier's: the dense form
    # keeps it and moves only the final pooling; its score map averages to the fc's scores.
    g = archdsl.loads("net d : 3x16x16 { conv3-8; bn; multiply { identity | gap; conv1-2; conv1-8 act=none; "
                      "sigmoid }; concat { conv1-4 | conv3-4 }; gap; fc-5; softmax }")
    fc = archdsl.compile(g).double().eval()
    dense = archdsl.compile(g, dense=True).double().eval()
    dense.load_state_dict(fc.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        scores, score_map = fc(x), dense(x)
    assert score_map.shape == (2, 5, 16, 16)
    torch.testing.assert_close(score_map.mean((2, 3)), scores)


def test_a_branch_that_pools_globally_has_no_score_map():
    g = archdsl.loads("net d : 3x8x8 {\n  conv3-4/2; conv3-4/2; conv3-4/2\n  concat { gap | conv1-4 }\n  fc-5\n}",
                      file="d.arch")
    with pytest.raises(archdsl.SpecError) as info:
        archdsl.compile(g, dense=True, input="3x32x32")
    err = info.value
    assert (err.line, err.column) == (3, 3)
    assert "no class score map: global average pooling is followed by concat of 2" in err.message
