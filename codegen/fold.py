"""Weight arithmetic for lowered layers: folding an eval-mode batch norm into the conv before it.

The graph holds no weights, so the fold happens where the weights are, in the lowered layer
(:func:`archdsl.codegen.triton.runtime.fused_conv`); the graph pass only marks the pair. In
eval mode a BN is an affine map per channel with fixed statistics,

    bn(z) = gamma * (z - mean) / sqrt(var + eps) + beta = scale * z + (beta - scale * mean),

and ``z = conv(x, W) + b`` is linear in ``W`` and ``b``, so
``bn(conv(x, W, b)) = conv(x, scale * W, scale * (b - mean) + beta)``. In training mode the
BN normalises with the statistics of the batch, which depend on the input: nothing can be
folded.
"""

from __future__ import annotations

import torch

__all__ = ["fold_bn"]


def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the conv that equals ``conv(weight, bias)`` then an eval-mode BN.

    The arithmetic runs in at least float32 (bf16/fp16 weights are folded in float32, then
    rounded once); the results have ``weight``'s dtype. Differentiable.

    Args:
        weight: the conv's weight, [C_out, ...].
        bias: the conv's bias, [C_out], or None.
        running_mean, running_var: the BN's statistics, [C_out].
        gamma, beta: the BN's affine parameters, [C_out], or None (a BN without them).
        eps: the BN's epsilon.

    Returns:
        ``(weight', bias')``, with ``bias'`` always present.
    """
    work = torch.promote_types(weight.dtype, torch.float32)

    def up(t):
        return None if t is None else t.to(work)

    w, b, mean, var, gamma, beta = map(up, (weight, bias, running_mean, running_var, gamma, beta))
    scale = (var + eps).rsqrt()
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale if b is None else (b - mean) * scale
    if beta is not None:
        shift = shift + beta
    w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    return w.to(weight.dtype), shift.to(weight.dtype)
