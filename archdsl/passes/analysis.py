"""Counting: parameters, multiply-accumulates, activation memory, receptive field and stride.

Conventions (those of the papers): **MACs** are the multiply-accumulates of conv and linear
layers only, for one sample; FLOPs = 2 x MACs. Parameters include biases and batch norm's
scale and shift, not its running statistics. The receptive field and the stride ("jump") are
along the height, in input pixels.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, Op, Shape


def _counts(op: Op, attrs: dict, x: Shape | None, y: Shape) -> tuple[int, int]:
    """(parameters, MACs) of one node with input shape x and output shape y."""
    if op in (Op.CONV, Op.FUSED_CONV):
        kh, kw = attrs["kernel"]
        per_output = (x.c // attrs["groups"]) * kh * kw
        params = y.c * per_output + (y.c if attrs["bias"] else 0)
        if op is Op.FUSED_CONV and attrs["bn"]:
            params += 2 * y.c  # the fused batch norm's scale and shift; it adds no MACs
        return params, y.h * y.w * y.c * per_output
    if op is Op.LINEAR:
        params = x.numel * y.c + (y.c if attrs["bias"] else 0)
        return params, x.numel * y.c
    if op is Op.BATCHNORM:
        return 2 * x.c, 0
    return 0, 0


def _field(op: Op, attrs: dict, x: Shape, rf: int, jump: int) -> tuple[int, int]:
    if op in (Op.CONV, Op.FUSED_CONV, Op.MAXPOOL, Op.AVGPOOL):
        return rf + (attrs["kernel"][0] - 1) * jump, jump * attrs["stride"][0]
    if op is Op.SHORTCUT_PAD:
        return rf, jump * attrs["stride"]
    if op in (Op.GLOBAL_AVGPOOL, Op.LINEAR) and x.is_map:  # sees the whole map
        return rf + (x.h - 1) * jump, jump * x.h
    return rf, jump


def analyse(graph: ArchGraph) -> ArchGraph:
    """Write ``params``, ``macs``, ``activations`` (output elements), ``rf`` and ``jump`` into
    every node's meta (in place; shapes must be inferred). Returns the graph."""
    for name in graph.order():
        data = graph.nodes[name]
        meta, op, attrs = data["meta"], data["op"], data["attrs"]
        args = data["args"]
        x = graph.shape(args[0]) if args else None
        meta["params"], meta["macs"] = _counts(op, attrs, x, meta["shape"])
        meta["activations"] = meta["shape"].numel
        if not args:
            meta["rf"], meta["jump"] = 1, 1
            continue
        inputs = [graph.nodes[a]["meta"] for a in args]
        rf = max(m["rf"] for m in inputs)
        jump = max(m["jump"] for m in inputs)
        meta["rf"], meta["jump"] = _field(op, attrs, x, rf, jump)
    return graph


def describe(op: Op, attrs: dict) -> str:
    """A short, paper-like description of one op: ``conv 3x3/1 pad 1, 64``."""
    if op in (Op.CONV, Op.FUSED_CONV):
        (kh, kw), (s, _), (p, _) = attrs["kernel"], attrs["stride"], attrs["padding"]
        extra = "".join([
            f" groups {attrs['groups']}" if attrs["groups"] > 1 else "",
            "" if attrs["bias"] else " no-bias",
            " (from fc)" if attrs.get("from_linear") else "",
        ])
        kind = "conv"
        if op is Op.FUSED_CONV:  # conv+bn+relu 3x3/1 pad 1, 64
            kind += "+bn" * attrs["bn"] + "+add" * attrs.get("residual", False) + "+relu" * attrs["relu"]
        return f"{kind} {kh}x{kw}/{s} pad {p}, {attrs['out_channels']}{extra}"
    if op is Op.LINEAR:
        return f"fc {attrs['out_features']}" + ("" if attrs["bias"] else " no-bias")
    if op in (Op.MAXPOOL, Op.AVGPOOL):
        (kh, kw), (s, _), (p, _) = attrs["kernel"], attrs["stride"], attrs["padding"]
        return f"{op.value} {kh}x{kw}/{s}" + (f" pad {p}" if p else "")
    if op is Op.LRN:
        return (f"lrn n={attrs['size']} alpha={attrs['alpha']:g} beta={attrs['beta']:g} "
                f"k={attrs['k']:g} ({attrs['mode']})")
    if op is Op.DROPOUT:
        return f"dropout {attrs['p']:g}"
    if op is Op.SHORTCUT_PAD:
        return f"shortcut A /{attrs['stride']} -> {attrs['out_channels']}"
    return op.value
