"""Convolutions: CONV, and FUSED_CONV (conv [-> batch norm] [+ residual] [-> ReLU] [-> 2x2/2
max-pool] as one node, made by the fusion rules of :mod:`archdsl.passes.fuse`)."""

from __future__ import annotations

from archdsl.ops.base import (
    Dsl, Lowered, OpDef, ShapeError, need_map, nn, pair, register, spatial, window_field,
    window_stride,
)
from archdsl.shape import Shape

_CONV_ATTRS = {"out_channels": int, "kernel": tuple, "stride": tuple, "padding": tuple,
               "groups": int, "bias": bool}


def conv_kwargs(a: dict) -> dict:
    """The keyword arguments of ``nn.Conv2d`` for a conv's attributes (defaults left out)."""
    kwargs = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"])
    if a["groups"] != 1:
        kwargs["groups"] = a["groups"]
    if not a["bias"]:
        kwargs["bias"] = False
    return kwargs


def bn_kwargs(eps: float) -> dict:
    return {} if eps == 1e-5 else {"eps": eps}


#: The one pool a fused conv can end with (its kernel's epilogue reduces 2x2 quads).
FUSED_POOL = {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}


def conv_shape(attrs: dict, x: Shape) -> Shape:
    """The convolution's own output for input ``x``: a fused conv's before its pool."""
    h, w = spatial("conv", x, attrs["kernel"], attrs["stride"], attrs["padding"])
    return Shape.of(attrs["out_channels"], h, w)


def _shape(attrs: dict, inputs: list[Shape]) -> Shape:
    x = inputs[0]
    need_map("conv", x)
    groups, out = attrs["groups"], attrs["out_channels"]
    if x.c % groups or out % groups:
        raise ShapeError(
            f"conv with groups={groups} needs input and output channels divisible by {groups}, "
            f"found {x.c} in and {out} out"
        )
    y = conv_shape(attrs, x)
    if len(inputs) > 1 and inputs[1] != y:  # a fused residual add
        raise ShapeError(f"residual add of {y} with {inputs[1]}: expected two tensors of the same shape")
    if attrs.get("pool"):  # floor mode: an odd last row or column is dropped
        y = Shape.of(y.c, *spatial("maxpool", y, **FUSED_POOL))
    return y


def _counts(attrs: dict, x: Shape, y: Shape) -> tuple[int, int]:
    y = conv_shape(attrs, x)  # a fused pool's output is smaller; the MACs are the conv's
    kh, kw = attrs["kernel"]
    per_output = (x.c // attrs["groups"]) * kh * kw
    params = y.c * per_output + (y.c if attrs["bias"] else 0)
    if attrs.get("bn"):
        params += 2 * y.c  # a fused batch norm's scale and shift; it adds no MACs
    return params, y.h * y.w * y.c * per_output


def _fused_field(attrs: dict, x: Shape, rf: int, jump: int) -> tuple[int, int]:
    rf, jump = window_field(attrs, x, rf, jump)
    return window_field(FUSED_POOL, x, rf, jump) if attrs.get("pool") else (rf, jump)


def _fused_subsampling(attrs: dict) -> tuple[int, int]:
    (sh, sw), pooled = attrs["stride"], 2 if attrs.get("pool") else 1
    return sh * pooled, sw * pooled


def fused_kind(a: dict) -> str:
    """``conv+bn+add+relu``, ``conv+relu+maxpool``: what a fused conv computes."""
    return ("conv" + "+bn" * a["bn"] + "+add" * a.get("residual", False) + "+relu" * a["relu"]
            + "+maxpool" * a.get("pool", False))


def _describe(a: dict) -> str:
    (kh, kw), (s, _), (p, _) = a["kernel"], a["stride"], a["padding"]
    extra = "".join([
        f" groups {a['groups']}" if a["groups"] > 1 else "",
        "" if a["bias"] else " no-bias",
        " (from fc)" if a.get("from_linear") else "",
    ])
    kind = fused_kind(a) if "relu" in a else "conv"
    return f"{kind} {kh}x{kw}/{s} pad {p}, {a['out_channels']}{extra}"


def _lower_conv(a: dict, x: Shape) -> Lowered:
    return Lowered(nn("Conv2d", x.c, a["out_channels"], **conv_kwargs(a)), "{self}({0})")


def _lower_fused(a: dict, x: Shape) -> Lowered:
    """conv [-> BN] [+ residual] [-> ReLU] [-> max-pool], op for op: the conv is the node's
    layer; the BN is an extra layer named as the BN node was (``bn_name``), so the state_dict
    matches the unfused graph's; the residual is the node's second input; the pool has no
    weights, so it is a call."""
    bn, relu, residual, pool = a["bn"], a["relu"], a.get("residual", False), a.get("pool", False)
    extra = (("bn", a["bn_name"], nn("BatchNorm2d", a["out_channels"], **bn_kwargs(a["eps"]))),) if bn else ()
    expr = "{bn}({self}({0}))" if bn else "{self}({0})"
    if residual:
        expr = f"{expr} + {{1}}"
    if relu:
        expr = f"torch.relu({expr})"
    if pool:
        expr = f"F.max_pool2d({expr}, 2)"
    conv = nn("Conv2d", x.c, a["out_channels"], **conv_kwargs(a))
    return Lowered(conv, expr, "conv_bn_relu", (relu, pool), extra)


def _check_fused(a: dict, args: tuple) -> str | None:
    if a["bn"] != bool(a["bn_name"]):
        return "a fused conv names its batch norm (bn_name) exactly when it has one (bn)"
    if a.get("pool") and a.get("residual"):
        return "a fused conv with a pool adds no residual (the add would come before the pool)"
    if len(args) != 1 + bool(a.get("residual")):
        return "a fused conv has a second input exactly when it adds a residual"
    return None


def _dsl(w):
    kernel = w.kernel
    if kernel is None:  # conv-64 k={k}: the window size from a parameter
        if "k" not in w.options:
            raise w.error("conv needs a window size: write convK-C (conv3-64) or conv-C k=K")
        kernel = pair(w.int("k", 1, minimum=1))
    elif "k" in w.options:
        raise w.error("window size given twice (in the name and as k=)", w.options["k"].span)
    attrs = {
        "out_channels": w.width("the number of channels"),
        "kernel": kernel,
        "stride": pair(w.stride(1)),
        # Default: the padding that keeps the size at stride 1 ("same" for odd kernels).
        "padding": (w.int("pad", kernel[0] // 2), w.int("pad", kernel[1] // 2)),
        "groups": w.int("groups", 1, minimum=1),
        "bias": w.bool("bias", True),
    }
    return attrs, w.choice("act", "relu", ("relu", "none"))


_COMMON = dict(shape=_shape, groups=frozenset({"conv_like", "weighted", "stateful"}), counts=_counts,
               field=window_field, subsampling=window_stride, describe=_describe)

register(
    OpDef("CONV", "conv", 1, _CONV_ATTRS, lower=_lower_conv, node_name="conv",
          doc="2-D convolution; kernel/stride/padding are (h, w) pairs",
          dsl=Dsl(("conv",), _dsl, ("pad", "groups", "bias", "act", "stride", "k"), kernel=True,
                  doc="convK-C[/S]: KxK convolution to C channels, stride S (1); pad keeps the size "
                      "by default (K//2); options pad, groups, bias, act=relu|none; conv-C k=K "
                      "takes the window size from an expression"),
          **_COMMON),
    OpDef("FUSED_CONV", "conv_bn_relu", (1, 2),
          {**_CONV_ATTRS, "bn": bool, "eps": float, "bn_name": str, "relu": bool},
          lower=_lower_fused, node_name="conv", check=_check_fused,
          doc="a conv (the CONV attrs; the node keeps the conv's name) followed by a batch norm "
              "when ``bn`` (with its ``eps``; ``bn_name`` is the name the BN node had, which the "
              "lowering keeps for the BN's parameters so state_dict keys do not change; \"\" "
              "without BN) and a ReLU when ``relu``; with the optional ``residual`` (True), a "
              "second input is added before the ReLU (a ResNet block's shortcut); with the optional "
              "``pool`` (True, never with ``residual``), the result is max-pooled 2x2/2 (floor "
              "mode), and the node's shape is the pooled one. Made by the "
              "rules of passes/fuse.py; in eval mode the BN is folded into the conv's weight "
              "and bias",
          **{**_COMMON, "field": _fused_field, "subsampling": _fused_subsampling}),
)
