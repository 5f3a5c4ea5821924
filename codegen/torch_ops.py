"""How each IR op becomes PyTorch: the layer object it owns (if any) and the call in forward.

Both lowerings read this one table: :mod:`codegen.torch_module` builds an in-process
``nn.Module`` from it, :mod:`codegen.torch_source` writes the same module as source text.
"""

from __future__ import annotations

import importlib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from archdsl.ir import ArchGraph, Op

BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class Layer:
    """A layer object to construct: ``module.cls(*args, **kwargs)``."""

    module: str  # import path, e.g. "torch.nn"
    cls: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        return getattr(importlib.import_module(self.module), self.cls)(*self.args, **self.kwargs)


@dataclass(frozen=True)
class Lowered:
    """One node in PyTorch terms.

    ``layer``: the object stored as an attribute named after the node (None for pure functions).
    ``expr``: the forward expression as source, with ``{self}`` for the layer and ``{0}``, ``{1}``
    for the inputs. ``fn(layer, *inputs)``: the same computation, callable in-process.
    """

    layer: Layer | None
    expr: str
    fn: Callable


def _nn(cls: str, *args, **kwargs) -> Layer:
    return Layer("torch.nn", cls, args, kwargs)


def _call_layer(layer, x):
    return layer(x)


def _pad_shortcut(stride: int, extra: int) -> Callable:
    def fn(_, x):
        return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, extra))
    return fn


def lower(graph: ArchGraph, name: str, backend: str = "torch") -> Lowered:
    """The PyTorch form of node ``name`` (its inputs' shapes must be inferred)."""
    data = graph.nodes[name]
    op, a = data["op"], data["attrs"]
    x = graph.shape(data["args"][0]) if data["args"] else None
    triton = backend == "triton"

    if op is Op.CONV:
        kwargs = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"])
        if a["groups"] != 1:
            kwargs["groups"] = a["groups"]
        if not a["bias"]:
            kwargs["bias"] = False
        return Lowered(_nn("Conv2d", x.c, a["out_channels"], **kwargs), "{self}({0})", _call_layer)
    if op is Op.LINEAR:
        kwargs = {} if a["bias"] else {"bias": False}
        layer = _nn("Linear", x.numel, a["out_features"], **kwargs)
        if x.is_map:  # (C, H, W) order, as the layer's weight columns expect
            return Lowered(layer, "{self}(torch.flatten({0}, 1))", lambda m, t: m(torch.flatten(t, 1)))
        return Lowered(layer, "{self}({0})", _call_layer)
    if op in (Op.MAXPOOL, Op.AVGPOOL):
        cls = "MaxPool2d" if op is Op.MAXPOOL else "AvgPool2d"
        layer = _nn(cls, a["kernel"], stride=a["stride"], padding=a["padding"])
        return Lowered(layer, "{self}({0})", _call_layer)
    if op is Op.GLOBAL_AVGPOOL:
        return Lowered(_nn("AdaptiveAvgPool2d", 1), "{self}({0})", _call_layer)
    if op is Op.LRN:
        if triton:
            layer = Layer("archdsl.codegen.triton.lrn", "LocalResponseNorm", (),
                          dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"], mode=a["mode"],
                               backend="triton"))
        else:
            # PyTorch divides alpha by the window size; the paper's sum needs alpha * size.
            alpha = a["alpha"] * a["size"] if a["mode"] == "sum" else a["alpha"]
            layer = _nn("LocalResponseNorm", a["size"], alpha=alpha, beta=a["beta"], k=a["k"])
        return Lowered(layer, "{self}({0})", _call_layer)
    if op is Op.BATCHNORM:
        cls = "BatchNorm2d" if x.is_map else "BatchNorm1d"
        kwargs = {} if a["eps"] == 1e-5 else {"eps": a["eps"]}
        return Lowered(_nn(cls, x.c, **kwargs), "{self}({0})", _call_layer)
    if op is Op.DROPOUT:
        return Lowered(_nn("Dropout", a["p"]), "{self}({0})", _call_layer)
    if op is Op.RELU:
        return Lowered(None, "torch.relu({0})", lambda _, t: torch.relu(t))
    if op is Op.SOFTMAX:
        return Lowered(None, "torch.softmax({0}, dim=1)", lambda _, t: torch.softmax(t, dim=1))
    if op is Op.ADD:
        return Lowered(None, "{0} + {1}", lambda _, p, q: operator.add(p, q))
    if op is Op.SHORTCUT_PAD:
        s, extra = a["stride"], a["out_channels"] - x.c
        return Lowered(None, f"F.pad({{0}}[:, :, ::{s}, ::{s}], (0, 0, 0, 0, 0, {extra}))",
                       _pad_shortcut(s, extra))
    raise AssertionError(f"no PyTorch lowering for {op!r}")


def last_uses(graph: ArchGraph, order: list[str]) -> dict[str, list[str]]:
    """For each node, the values whose last reader it is (so they can be freed after it)."""
    last: dict[str, str] = {}
    for name in order:
        for arg in graph.nodes[name]["args"]:
            last[arg] = name
    frees: dict[str, list[str]] = {name: [] for name in order}
    for value, reader in last.items():
        if value != graph.graph["output"]:
            frees[reader].append(value)
    return frees
