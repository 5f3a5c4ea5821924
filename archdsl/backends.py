"""Backends: what a target adds to the op table -- its graph rewrites and its lowering overrides.

A :class:`Backend` is resolved once, by the pipeline (:func:`resolve`), from the name a user
gives (``"torch"``, ``"triton"``); everything after that asks the object, never the name.

* ``torch``: the op table's PyTorch lowerings, no rewrites.
* ``triton``: conv -> bn -> [add ->] relu [-> 2x2 max-pool] chains fused into single
  FUSED_CONV nodes computed in the conv kernel's epilogue (the rules of
  :mod:`archdsl.passes.fuse`), and convolutions and LRN lowered to archdsl's Triton layers. Where no kernel can run in this process
  (:mod:`archdsl.codegen.triton.support` decides), :func:`resolve` gives ``torch`` instead, with
  the one notice.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from archdsl.ops import Layer, Lowered, Op
from archdsl.ops.conv import bn_kwargs, conv_kwargs
from archdsl.ops.base import nn
from archdsl.passes.fuse import TRITON_RULES
from archdsl.shape import Shape

__all__ = ["BACKENDS", "Backend", "TORCH", "TRITON", "get", "resolve"]


@dataclass(frozen=True)
class Backend:
    """A lowering target.

    Args:
        name: what users call it.
        rules: rewrite rules run (by :func:`archdsl.passes.rewrite.rewrite`, in order) before
            lowering.
        overrides: op -> ``lower(attrs, x) -> Lowered``, replacing the op table's lowering.
        kernels: it runs archdsl's Triton kernels (so it needs them to be runnable here).
        packages: what the modules it writes import besides torch.
    """

    name: str
    rules: tuple = ()
    overrides: dict[Op, Callable[[dict, Shape], Lowered]] = field(default_factory=dict)
    kernels: bool = False
    packages: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The packages a module written for this backend imports that are not installed here."""
        return [p for p in self.packages if importlib.util.find_spec(p) is None]

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def _triton_fused_conv(a: dict, x: Shape) -> Lowered:
    """FUSED_CONV as FusedConv2d (residual and ReLU in its epilogue when there is no BN) and
    :func:`archdsl.codegen.triton.runtime.fused_conv`, which folds the BN into the conv's
    weight and bias in eval mode and keeps BN semantics in training mode, and runs a fused
    pool in the kernel at inference."""
    kwargs = conv_kwargs(a)
    bn, relu, residual, pool = a["bn"], a["relu"], a.get("residual", False), a.get("pool", False)
    extra = (("bn", a["bn_name"], nn("BatchNorm2d", a["out_channels"], **bn_kwargs(a["eps"]))),) if bn else ()
    if relu and not bn:
        kwargs["relu"] = True  # with a BN the ReLU comes after it: runtime.fused_conv
    layer = Layer("archdsl.codegen.triton.conv", "FusedConv2d", (x.c, a["out_channels"]), kwargs)
    call = ["{0}", "{self}"] + (["{bn}"] + (["relu=True"] if relu else []) if bn else [])
    call += ["residual={1}"] if residual else []
    call += ["pool=True"] if pool else []
    return Lowered(layer, f"fused_conv({', '.join(call)})", "triton_fused_conv", (relu and bn, pool), extra,
                   ("from archdsl.codegen.triton.runtime import fused_conv",))


def _triton_conv(a: dict, x: Shape) -> Lowered:
    """A conv nothing was fused into: still the Triton kernel."""
    return _triton_fused_conv({**a, "bn": False, "eps": 0.0, "bn_name": "", "relu": False}, x)


def _triton_lrn(a: dict, x: Shape) -> Lowered:
    kwargs = dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"], mode=a["mode"], backend="triton")
    return Lowered(Layer("archdsl.codegen.triton.lrn", "LocalResponseNorm", (), kwargs), "{self}({0})")


TORCH = Backend("torch")
TRITON = Backend("triton", rules=TRITON_RULES, kernels=True, packages=("triton",),
                 overrides={Op.CONV: _triton_conv, Op.FUSED_CONV: _triton_fused_conv, Op.LRN: _triton_lrn})

#: Every backend, by name.
BACKENDS: dict[str, Backend] = {b.name: b for b in (TORCH, TRITON)}


def get(name: str | Backend) -> Backend:
    """The backend of that name (a Backend is returned as it is); ValueError for unknown names."""
    if isinstance(name, Backend):
        return name
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}") from None


def resolve(name: str | Backend) -> tuple[Backend, Backend]:
    """(the backend asked for, the backend modules are built for here): the same, except
    ``torch`` for a kernel backend where no kernel can run in this process, with the notice
    (once per process, :func:`archdsl.codegen.triton.support.notice`)."""
    wanted = get(name)
    if wanted.kernels:
        from archdsl.codegen.triton import support  # torch: only when a kernel backend is asked for

        reason = support.unavailable_reason()
        if reason is not None:
            support.notice(reason)
            return wanted, TORCH
    return wanted, wanted
