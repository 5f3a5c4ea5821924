"""Normalisation: LRN (local response normalisation) and BATCHNORM."""

from __future__ import annotations

import math

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


def _lrn_check(w, attrs: dict) -> None:
    """Refuse alpha, beta and k above :data:`_MOST`, and a ``k ** beta`` outside float32's
    normal range: LRN divides by ``(k + alpha * sum) ** beta``, which is ``k ** beta`` over a
    window of zeros (common after a ReLU). There 0 gives NaN (``k=0``), and an overflow to inf
    (``beta=200``) makes the layer output zeros whatever its input."""
    _bounded("alpha", "beta", "k")(w, attrs)
    k, beta = attrs["k"], attrs["beta"]
    if beta == 0:
        return  # the divisor is 1
    exponent = beta * math.log2(k) if k > 0 else -math.inf  # of 2, in k ** beta
    if not -126 <= exponent < 128:
        option = w.options.get("beta") or w.options.get("k")
        shown = "0" if k == 0 else f"about 2**{exponent:.4g}"
        effect = "NaN wherever its input window is all zeros" if exponent < 0 else "zeros whatever its input"
        raise w.error(f"k ** beta = {k:g} ** {beta:g} is {shown}, outside float32's range (2**-126 to 2**128): "
                      f"the layer would output {effect}", option.value.span if option else None)


def _bn_check(w, attrs: dict) -> None:
    """Refuse an eps above :data:`_MOST` or below float32's smallest normal number: batch norm
    divides by ``sqrt(var + eps)``, and a channel of one value has ``var`` 0."""
    _bounded("eps")(w, attrs)
    if attrs["eps"] < 2.0 ** -126:
        option = w.options.get("eps")
        raise w.error(f"expected eps at least 2**-126 (float32's smallest normal number), found {attrs['eps']:g}: "
                      "a channel of one value would be divided by zero", option.value.span if option else None)


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
          dsl=Dsl(("lrn",), simple_dsl(check=_lrn_check, size=5, alpha=1e-4, beta=0.75, k=2.0,
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
          dsl=Dsl(("bn", "batchnorm"), simple_dsl(check=_bn_check, eps=1e-5), ("eps",), doc="bn: batch normalisation")),
)
