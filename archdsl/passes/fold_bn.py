"""Batch norm after a conv: the graph pass that fuses the two, and the weight arithmetic
that folds the BN into the conv for inference.

Graph level, :func:`fuse_conv_bn`: CONV -> BATCHNORM becomes one FUSED_CONV node with
``bn=True``, when the BN is the conv's only reader (rules as in :mod:`archdsl.passes.fuse`).
The node keeps the conv's name and records the BN's name in ``bn_name``.

Weight level, :func:`fold_bn_params`: the graph holds no weights, so the fold itself happens
where the weights are, in the lowered layer (:func:`archdsl.codegen.triton.runtime.fused_conv`).
In eval mode a BN is an affine map per channel with fixed statistics,

    bn(z) = gamma * (z - mean) / sqrt(var + eps) + beta = scale * z + (beta - scale * mean),

and ``z = conv(x, W) + b`` is linear in ``W`` and ``b``, so
``bn(conv(x, W, b)) = conv(x, scale * W, scale * (b - mean) + beta)``. In training mode the
BN normalises with the statistics of the batch, which depend on the input: nothing can be
folded, and the fused node computes conv, then BN, then ReLU.

Both pieces live in this one module because they are the two halves of one transformation;
the pass itself only rewrites the graph.
"""

from __future__ import annotations

from archdsl.ir import ArchGraph, Op
from archdsl.passes.fuse import absorb, refresh, sole_consumer

__all__ = ["fold_bn_params", "fuse_conv_bn"]


def fuse_conv_bn(graph: ArchGraph) -> ArchGraph:
    """CONV -> BATCHNORM becomes one FUSED_CONV with ``bn`` (no ReLU yet: run
    :func:`archdsl.passes.fuse.fuse_conv_relu` after this pass for conv -> bn -> relu).

    Returns a new graph; ``graph`` is not modified.
    """
    new = graph.copy()
    for name in graph.order():
        if name not in new:  # absorbed into an earlier node
            continue
        data = new.nodes[name]
        if data["op"] is not Op.CONV:
            continue
        bn = sole_consumer(new, name, Op.BATCHNORM)
        if bn is None:
            continue
        eps = float(new.nodes[bn]["attrs"]["eps"])
        data["op"] = Op.FUSED_CONV
        data["attrs"] = {**data["attrs"], "bn": True, "eps": eps, "bn_name": bn, "relu": False}
        absorb(new, name, bn)
    return refresh(new)


def fold_bn_params(weight, bias, gamma, beta, mean, var, eps: float):
    """Weight and bias of the conv that equals ``conv(weight, bias)`` then an eval-mode BN.

    Args are tensors (``bias``, ``gamma``, ``beta`` may be None: no conv bias, a BN without
    affine parameters). The arithmetic runs in at least float32 (bf16/fp16 weights are folded
    in float32, then rounded once); the results have ``weight``'s dtype. Differentiable.

    Returns ``(weight', bias')`` with ``bias'`` always present.
    """
    import torch

    work = torch.promote_types(weight.dtype, torch.float32)

    def up(t):
        return None if t is None else t.to(work)

    w, b, gamma, beta, mean, var = map(up, (weight, bias, gamma, beta, mean, var))
    scale = (var + eps).rsqrt()
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale if b is None else (b - mean) * scale
    if beta is not None:
        shift = shift + beta
    w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    return w.to(weight.dtype), shift.to(weight.dtype)
