"""Ops of the op table (archdsl/ops), each through every stage: spec -> graph -> modules."""

from __future__ import annotations

import pytest
import torch

import archdsl
import archdsl.testing as at
from archdsl import Op
from archdsl.codegen.torch_source import class_name, emit_source
from archdsl.frontend.layers import LAYERS, resolve_name
from archdsl.ops import TABLE


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


def _first_that_builds(name: str):
    """A tiny net using layer ``name`` in the first of its simple spellings that is valid."""
    errors = []
    for written in (name, f"{name}-4", f"{name}3-4", f"{name}3"):
        try:
            return archdsl.loads(f"net t : 3x8x8 {{ conv3-4; {written} }}")
        except archdsl.SpecError as err:
            errors.append(str(err).splitlines()[0])
    raise AssertionError(f"layer {name!r} builds in no simple spelling: {errors}")


@pytest.mark.parametrize("op", [op for op, row in TABLE.items() if row.dsl], ids=lambda op: op.value)
def test_every_written_op_builds_lowers_and_counts(op):
    # A row is enough for an op to work end to end: the front end finds it by each of its
    # names, and its shape, counts and both lowerings agree with PyTorch.
    for name in TABLE[op].dsl.names:
        assert LAYERS[resolve_name(name)[0]] is op
        assert LAYERS[resolve_name(name.upper())[0]] is op
    graph = _first_that_builds(TABLE[op].dsl.names[0])
    assert op in {d["op"] for _, d in graph.nodes(data=True)}
    checked = at.check_lowering(graph, batch=2)
    assert checked["params"] == graph.params and checked["macs"] == graph.macs
