"""Normalisation: LRN (local response normalisation) and BATCHNORM."""

from __future__ import annotations

from archdsl.ops.base import Dsl, Lowered, OpDef, call, need_map, nn, register, same_shape, simple_dsl

#: The largest LRN alpha, k and beta and BN eps a spec may give: far above any published value,
#: and far below what overflows (alpha * size and eps enter float32 arithmetic).
_MOST = 1e6
from archdsl.ops.conv import bn_kwargs
from archdsl.shape import Shape


def _lrn_shape(attrs: dict, inputs: list[Shape]) -> Shape:
    need_map("LRN", inputs[0])
    return inputs[0]


def _bounded(*names: str):
    """Refuse values above :data:`_MOST` at the option that gave them."""
    def check(w, attrs: dict) -> None:
        for name in names:
            if attrs[name] > _MOST:
                option = w.options.get(name)
                raise w.error(f"expected {name} at most {_MOST:g}, found {attrs[name]:g}",
                              option.value.span if option else None)
    return check


def _lrn_lower(a: dict, x: Shape) -> Lowered:
    # PyTorch divides alpha by the window size; the paper's sum needs alpha * size.
    alpha = a["alpha"] * a["size"] if a["mode"] == "sum" else a["alpha"]
    return call("torch.nn", "LocalResponseNorm", a["size"], alpha=alpha, beta=a["beta"], k=a["k"])


def _bn_lower(a: dict, x: Shape) -> Lowered:
    return Lowered(nn("BatchNorm2d" if x.is_map else "BatchNorm1d", x.c, **bn_kwargs(a["eps"])), "{self}({0})")


register(
    OpDef("LRN", "lrn", 1, {"size": int, "alpha": float, "beta": float, "k": float, "mode": str},
          _lrn_shape, _lrn_lower, node_name="lrn", groups=frozenset({"norm"}),
          doc="local response normalisation across channels; mode 'sum' (paper: "
              "k + alpha*sum) or 'avg' (PyTorch/Caffe: k + alpha/n*sum)",
          describe=lambda a: (f"lrn n={a['size']} alpha={a['alpha']:g} beta={a['beta']:g} "
                              f"k={a['k']:g} ({a['mode']})"),
          dsl=Dsl(("lrn",), simple_dsl(check=_bounded("alpha", "beta", "k"), size=5, alpha=1e-4, beta=0.75, k=2.0,
                             mode=("sum", ("sum", "avg"))),
                  ("size", "alpha", "beta", "k", "mode"),
                  doc="LRN: local response normalisation across channels, k + alpha*sum over the "
                      "window as published (mode=avg: alpha/size, PyTorch's convention); size 5, "
                      "alpha 1e-4, beta 0.75, k 2")),
    OpDef("BATCHNORM", "bn", 1, {"eps": float}, same_shape, _bn_lower, node_name="bn",
          # "before_activation": a layer's implied ReLU is placed after a batch norm written next.
          # "commutes_with_average": in eval mode an affine map per channel.
          groups=frozenset({"norm", "before_activation", "commutes_with_average", "stateful"}),
          counts=lambda a, x, y: (2 * x.c, 0),
          dsl=Dsl(("bn", "batchnorm"), simple_dsl(check=_bounded("eps"), eps=1e-5), ("eps",), doc="bn: batch normalisation")),
)
