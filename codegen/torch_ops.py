"""PyTorch lowering helpers: a node's lowering for a backend, the in-process forward helpers
the lowerings name, and the weight-layout helpers both lowerings share.

What each op becomes is its row of the op table (:mod:`archdsl.ops`), with the backend's
overrides (:mod:`archdsl.backends`); :mod:`archdsl.codegen.torch_module` builds an in-process
``nn.Module`` from it and :mod:`archdsl.codegen.torch_source` writes the same module as source text.
The forward helpers are named module-level functions, so a built module pickles.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from archdsl.backends import TORCH, Backend
from archdsl.ir import ArchGraph
from archdsl.ops import TABLE, Lowered


def lower(graph: ArchGraph, name: str, backend: Backend = TORCH) -> Lowered:
    """The PyTorch form of node ``name`` for ``backend`` (its inputs' shapes must be inferred)."""
    data = graph.nodes[name]
    op = data["op"]
    x = graph.shape(data["args"][0]) if data["args"] else None
    rule = backend.overrides.get(op) or TABLE[op].lower
    if rule is None:
        raise AssertionError(f"no PyTorch lowering for {op!r}")
    return rule(data["attrs"], x)


def forward_fn(lowered: Lowered) -> Callable:
    """The in-process forward of a lowered node: ``fn(layer, *inputs, **roles)``."""
    fn = _FORWARD[lowered.fn]
    return functools.partial(fn, *lowered.fn_args) if lowered.fn_args else fn


# -- forward helpers (named by Lowered.fn) ------------------------------------------------------


def call_layer(layer, *inputs):
    return layer(*inputs)


def flatten_call_layer(layer, x):
    return layer(torch.flatten(x, 1))


def conv_bn_relu(relu: bool, pool: bool, conv, x, residual=None, bn=None):
    y = conv(x) if bn is None else bn(conv(x))
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    return F.max_pool2d(y, 2) if pool else y


def triton_fused_conv(relu: bool, pool: bool, conv, x, residual=None, bn=None):
    from archdsl.codegen.triton.runtime import fused_conv  # imports no triton itself

    return fused_conv(x, conv, bn, relu=relu, residual=residual, pool=pool)


_FORWARD = {f.__name__: f for f in (call_layer, flatten_call_layer, conv_bn_relu, triton_fused_conv)}


# -- in-process modules of ops without a layer (Lowered.module) ----------------------------------


class Add(torch.nn.Module):
    """A residual addition."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class Concat(torch.nn.Module):
    """Concatenation along the channels (a concat merge)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, 1)


class Multiply(torch.nn.Module):
    """A map times a same-shaped map or a Cx1x1 gate (a multiply merge, squeeze-and-excitation)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return x * gate


class ShortcutPad(torch.nn.Module):
    """ResNet's option A shortcut: subsample by ``stride``, then ``extra`` zero channels."""

    stride: int
    extra: int

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra={self.extra}"


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
