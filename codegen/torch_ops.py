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
    ``extra``: further layers the node owns, as ``(role, attribute name, Layer)``: stored as
    attributes under those names, written ``{role}`` in ``expr`` and passed to ``fn`` as the
    keyword argument ``role`` (a fused conv keeps its batch norm under the BN node's name, so
    state_dict keys are those of the unfused graph). ``imports``: lines the source needs.
    """

    layer: Layer | None
    expr: str
    fn: Callable
    extra: tuple[tuple[str, str, Layer], ...] = ()
    imports: tuple[str, ...] = ()


def _nn(cls: str, *args, **kwargs) -> Layer:
    return Layer("torch.nn", cls, args, kwargs)


def _call_layer(layer, x):
    return layer(x)


def _pad_shortcut(stride: int, extra: int) -> Callable:
    def fn(_, x):
        return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, extra))
    return fn


def _conv_kwargs(a: dict) -> dict:
    kwargs = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"])
    if a["groups"] != 1:
        kwargs["groups"] = a["groups"]
    if not a["bias"]:
        kwargs["bias"] = False
    return kwargs


def _torch_conv_bn_relu(relu: bool) -> Callable:
    def fn(conv, x, residual=None, bn=None):
        y = conv(x) if bn is None else bn(conv(x))
        if residual is not None:
            y = y + residual
        return torch.relu(y) if relu else y
    return fn


def _triton_conv_bn_relu(relu: bool) -> Callable:
    from archdsl.codegen.triton.runtime import fused_conv  # imports no triton itself

    def fn(conv, x, residual=None, bn=None):
        return fused_conv(x, conv, bn, relu=relu, residual=residual)
    return fn


def _lower_fused_conv(a: dict, x, backend: str) -> Lowered:
    """FUSED_CONV: conv [-> BN] [+ residual] [-> ReLU]. The conv is the node's layer; the BN is
    an extra layer named as the BN node was (``bn_name``), so the state_dict matches the
    unfused graph's; the residual is the node's second input.

    ``torch``: nn.Conv2d, nn.BatchNorm2d, +, torch.relu -- the unfused computation, op for op.
    ``triton``: FusedConv2d (residual and ReLU in its epilogue when there is no BN) and
    :func:`archdsl.codegen.triton.runtime.fused_conv`, which folds the BN into the conv's
    weight and bias in eval mode and keeps BN semantics in training mode.
    """
    kwargs = _conv_kwargs(a)
    bn, relu, residual = a["bn"], a["relu"], a.get("residual", False)
    extra = ()
    if bn:
        bn_kwargs = {} if a["eps"] == 1e-5 else {"eps": a["eps"]}
        extra = (("bn", a["bn_name"], _nn("BatchNorm2d", a["out_channels"], **bn_kwargs)),)
    if backend == "triton":
        if relu and not bn:
            kwargs["relu"] = True  # with a BN the ReLU comes after it: runtime.fused_conv
        layer = Layer("archdsl.codegen.triton.conv", "FusedConv2d", (x.c, a["out_channels"]), kwargs)
        call = ["{0}", "{self}"] + (["{bn}"] + (["relu=True"] if relu else []) if bn else [])
        call += ["residual={1}"] if residual else []
        return Lowered(layer, f"fused_conv({', '.join(call)})", _triton_conv_bn_relu(relu and bn), extra,
                       ("from archdsl.codegen.triton.runtime import fused_conv",))
    expr = "{bn}({self}({0}))" if bn else "{self}({0})"
    if residual:
        expr = f"{expr} + {{1}}"
    if relu:
        expr = f"torch.relu({expr})"
    return Lowered(_nn("Conv2d", x.c, a["out_channels"], **kwargs), expr, _torch_conv_bn_relu(relu), extra)


def lower(graph: ArchGraph, name: str, backend: str = "torch") -> Lowered:
    """The PyTorch form of node ``name`` (its inputs' shapes must be inferred)."""
    data = graph.nodes[name]
    op, a = data["op"], data["attrs"]
    x = graph.shape(data["args"][0]) if data["args"] else None
    triton = backend == "triton"

    if op is Op.CONV and triton:  # a conv nothing was fused into: still the Triton kernel
        return _lower_fused_conv({**a, "bn": False, "eps": 0.0, "bn_name": "", "relu": False}, x, backend)
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
    if op is Op.FUSED_CONV:
        return _lower_fused_conv(a, x, backend)
    raise AssertionError(f"no PyTorch lowering for {op!r}")


def from_linear(graph: ArchGraph) -> dict[str, tuple[int, int, int]]:
    """Layers made from fc layers (attrs ``from_linear``, see passes/fc_to_conv.py): name -> the
    (C, kh, kw) their 2-D fc weight reshapes to, after the output dimension."""
    return {name: tuple(data["attrs"]["from_linear"]) for name, data in graph.ops()
            if data["attrs"].get("from_linear")}


def linear_weights_as_kernels(state_dict: dict, prefix: str, layers: dict[str, tuple[int, int, int]]) -> None:
    """Reshape, in ``state_dict``, the 2-D fc weights of ``layers`` to conv kernels (in place).

    An fc flattens its input in (C, H, W) order, so row ``o`` of its ``(out, C*kh*kw)`` weight
    is kernel ``o`` laid out as ``(C, kh, kw)``. Weights that are not 2-D, or whose size does not
    fit, are left for ``load_state_dict`` to accept or report.
    """
    for name, (c, kh, kw) in layers.items():
        key = f"{prefix}{name}.weight"
        weight = state_dict.get(key)
        if weight is not None and weight.dim() == 2 and weight.shape[1] == c * kh * kw:
            state_dict[key] = weight.reshape(weight.shape[0], c, kh, kw)


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
