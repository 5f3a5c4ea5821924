"""Elementwise ops that keep the shape: RELU, SIGMOID, DROPOUT and SOFTMAX (over channels)."""

from __future__ import annotations

from archdsl.ops.base import Dsl, Lowered, OpDef, call, nn, register, same_shape, simple_dsl


def _dropout_check(w, attrs: dict) -> None:
    if not attrs["p"] < 1.0:
        raise w.error(f"expected a dropout probability below 1, found {attrs['p']}")


register(
    OpDef("RELU", "relu", 1, {}, same_shape, lambda a, x: Lowered(None, "torch.relu({0})", module=nn("ReLU")),
          node_name="relu", groups=frozenset({"pointwise", "activation"}),
          dsl=Dsl(("relu",), simple_dsl(), doc="relu: an explicit ReLU")),
    OpDef("SIGMOID", "sigmoid", 1, {}, same_shape, lambda a, x: call("torch.nn", "Sigmoid"),
          node_name="sigmoid", groups=frozenset({"pointwise", "activation"}),
          dsl=Dsl(("sigmoid",), simple_dsl(), doc="sigmoid: the logistic function 1 / (1 + e^-x)")),
    OpDef("DROPOUT", "dropout", 1, {"p": float}, same_shape, lambda a, x: call("torch.nn", "Dropout", a["p"]),
          node_name="dropout", groups=frozenset({"pointwise"}), describe=lambda a: f"dropout {a['p']:g}",
          dsl=Dsl(("dropout",), simple_dsl(check=_dropout_check, p=0.5), ("p",), doc="dropout: dropout, p=0.5")),
    OpDef("SOFTMAX", "softmax", 1, {}, same_shape,
          lambda a, x: Lowered(None, "torch.softmax({0}, dim=1)", module=nn("Softmax", dim=1)),
          doc="softmax over channels (dim 1)", node_name="softmax", groups=frozenset({"pointwise", "activation"}),
          dsl=Dsl(("softmax", "soft-max"), simple_dsl(), doc="softmax (or soft-max): softmax over channels")),
)
