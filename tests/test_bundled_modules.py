"""Every bundled spec's module behaves like any nn.Module: it pickles, deep-copies, saves with
``torch.save`` and scripts with ``torch.jit.script``, and ``print(model)`` shows each activation
and merge as a module of its own.

test_lowering checks that the copies compute the same, on small nets that hold every kind of
node; here the point is coverage: each bundled net's own structure (GoogLeNet's concats,
DenseNet's growing concats, ResNeXt's groups, pre-activation units, option-A shortcuts...).
The modules are built on the meta device, so no weights are allocated and VGG-E costs no
more than CIFAR's ResNet: pickling, copying and scripting depend on the module tree, not on
the weights' values.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch

import archdsl
from archdsl import Op

#: The nodes that have no weights and were once functions inside the forward (a lambda or a
#: closure each, so the module neither pickled nor scripted, and print(model) hid them).
SHOWN = {Op.RELU: "ReLU()", Op.ADD: "Add()", Op.CONCAT: "Concat()", Op.MULTIPLY: "Multiply()"}


#: The same units in fewer repeats, for the deepest nets: scripting's cost grows with the number
#: of units, and a unit that scripts once scripts eighteen times.
FEWER = {"preact_resnet110": {"n": 2}, "preact_resnet164": {"n": 2}, "densenet121": {"blocks": (2, 2, 2, 2)}}


def _meta_module(name: str) -> tuple[archdsl.ArchGraph, torch.nn.Module]:
    graph = archdsl.load(name, **FEWER.get(name, {}))
    with torch.device("meta"):
        return graph, archdsl.compile(graph)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", [s.name for s in archdsl.list_specs()])
def test_every_bundled_module_pickles_copies_saves_and_scripts(name):
    graph, model = _meta_module(name)
    want, shown = _shapes(model), str(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                   torch.load(buffer, weights_only=False)):
        assert type(copied) is type(model) and _shapes(copied) == want and str(copied) == shown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's own deprecation notice
        scripted = torch.jit.script(model)
    assert _shapes(scripted) == want


@pytest.mark.parametrize("name", [s.name for s in archdsl.list_specs()])
def test_print_shows_every_activation_and_merge_of_every_bundled_module(name):
    graph, model = _meta_module(name)
    shown = str(model)
    counted = dict.fromkeys(SHOWN, 0)
    for node, data in graph.ops():
        if data["op"] not in SHOWN:
            continue
        path = model.paths[node]  # graph node -> module path
        module = model.get_submodule(path)
        assert repr(module) == SHOWN[data["op"]], (node, path, module)
        assert f"({path.rsplit('.', 1)[-1]}): {SHOWN[data['op']]}" in shown, (node, path)
        counted[data["op"]] += 1
    assert counted[Op.RELU] > 0  # every bundled net has ReLUs: the check above is not vacuous
