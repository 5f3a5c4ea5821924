"""Ops of the op table (archdsl/ops), each through every stage: spec -> graph -> modules."""

from __future__ import annotations

import torch

import archdsl
from archdsl import Op
from archdsl.codegen.torch_source import class_name, emit_source


def _emitted(graph):
    namespace: dict = {}
    exec(compile(emit_source(graph), "<emitted>", "exec"), namespace)
    return namespace[class_name(graph.name)]()


def test_sigmoid_is_an_activation_through_every_stage():
    g = archdsl.loads("net s : 3x8x8 { conv3-4; sigmoid; fc-2 act=none }")
    assert [d["op"] for _, d in g.ops()] == [Op.INPUT, Op.CONV, Op.SIGMOID, Op.LINEAR]  # no implied ReLU
    assert g.shape("sigmoid1").dims == (4, 8, 8) and g.nodes["sigmoid1"]["meta"]["params"] == 0
    assert g.params == 3 * 9 * 4 + 4 + 4 * 64 * 2 + 2
    torch.manual_seed(0)
    model = archdsl.compile(g).eval()
    emitted = _emitted(g).eval()
    emitted.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model.fc1(torch.flatten(torch.sigmoid(model.conv1(x)), 1))
        torch.testing.assert_close(model(x), want)
        torch.testing.assert_close(emitted(x), want)
