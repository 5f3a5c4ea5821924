"""Elementwise ops that keep the shape: the activations (RELU, RELU6, SIGMOID, HARDSIGMOID, SILU,
HARDSWISH), DROPOUT and SOFTMAX (over channels), and CHANNEL_SHUFFLE (ShuffleNet's permutation
of the channels)."""

from __future__ import annotations

from archdsl.ops.base import Dsl, Lowered, OpDef, ShapeError, call, need_map, nn, register, same_shape, simple_dsl
from archdsl.shape import Shape


def _dropout_check(w, attrs: dict) -> None:
    if not attrs["p"] < 1.0:
        raise w.error(f"expected a dropout probability below 1, found {attrs['p']}")


_ACTIVATION = frozenset({"pointwise", "activation"})


def _activation(name: str, value: str, cls: str, names: tuple[str, ...], doc: str) -> OpDef:
    """An activation lowered to the ``torch.nn`` module of that name."""
    return OpDef(name, value, 1, {}, same_shape, lambda a, x: call("torch.nn", cls), doc=doc,
                 node_name=value + "_" * value[-1].isdigit(), groups=_ACTIVATION,
                 dsl=Dsl(names, simple_dsl(), doc=f"{names[0]}: {doc}"))


def _shuffle_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    x = inputs[0]
    need_map("channel shuffle", x)
    if x.c % attrs["groups"]:
        raise ShapeError(f"channel shuffle in {attrs['groups']} groups needs channels divisible by "
                         f"{attrs['groups']}, found {x.c}")
    return x


register(
    OpDef("RELU", "relu", 1, {}, same_shape, lambda a, x: Lowered(None, "torch.relu({0})", module=nn("ReLU")),
          node_name="relu", groups=frozenset({"pointwise", "activation"}),
          dsl=Dsl(("relu",), simple_dsl(), doc="relu: an explicit ReLU")),
    OpDef("SIGMOID", "sigmoid", 1, {}, same_shape, lambda a, x: call("torch.nn", "Sigmoid"),
          node_name="sigmoid", groups=frozenset({"pointwise", "activation"}),
          dsl=Dsl(("sigmoid",), simple_dsl(), doc="sigmoid: the logistic function 1 / (1 + e^-x)")),
    _activation("RELU6", "relu6", "ReLU6", ("relu6",), "min(max(x, 0), 6) (MobileNet v2)"),
    _activation("HARDSIGMOID", "hardsigmoid", "Hardsigmoid", ("hardsigmoid", "hsigmoid", "hard_sigmoid"),
                "relu6(x + 3) / 6, a piecewise-linear sigmoid (MobileNet v3's gates)"),
    _activation("SILU", "silu", "SiLU", ("silu", "swish"), "x * sigmoid(x) (EfficientNet's swish)"),
    _activation("HARDSWISH", "hardswish", "Hardswish", ("hardswish", "hswish", "hard_swish"),
                "x * relu6(x + 3) / 6 (MobileNet v3)"),
    OpDef("CHANNEL_SHUFFLE", "shuffle", 1, {"groups": int}, _shuffle_shape,
          lambda a, x: call("torch.nn", "ChannelShuffle", a["groups"]),
          doc="ShuffleNet's channel shuffle: (g, C/g) channels read as (C/g, g)", node_name="shuffle",
          groups=frozenset({"pointwise"}), describe=lambda a: f"shuffle {a['groups']} groups",
          dsl=Dsl(("shuffle", "channel_shuffle"), simple_dsl(groups=2), ("groups",),
                  doc="shuffle groups=G: ShuffleNet's channel shuffle across G groups (2)")),
    OpDef("DROPOUT", "dropout", 1, {"p": float}, same_shape, lambda a, x: call("torch.nn", "Dropout", a["p"]),
          node_name="dropout", groups=frozenset({"pointwise", "commutes_with_average"}), describe=lambda a: f"dropout {a['p']:g}",
          dsl=Dsl(("dropout",), simple_dsl(check=_dropout_check, p=0.5), ("p",), doc="dropout: dropout, p=0.5")),
    OpDef("SOFTMAX", "softmax", 1, {}, same_shape,
          lambda a, x: Lowered(None, "torch.softmax({0}, dim=1)", module=nn("Softmax", dim=1)),
          doc="softmax over channels (dim 1)", node_name="softmax", groups=frozenset({"pointwise", "activation"}),
          dsl=Dsl(("softmax", "soft-max"), simple_dsl(), doc="softmax (or soft-max): softmax over channels")),
)
