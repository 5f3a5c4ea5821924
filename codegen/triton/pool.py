"""Max pooling of channels_last activations in Triton, without the indices.

``F.max_pool2d`` on CUDA also writes an int64 index per output element (for its backward),
which at inference is pure traffic: 8 bytes written per 2-byte value. This kernel reads each
window once, in channel-contiguous 16-byte vectors, and writes only the pooled values. It
serves the pools that cannot be fused into the epilogue of the conv before them (the conv
kernel's ``POOL`` variant, :func:`archdsl.codegen.triton.conv.conv2d` with ``pool=True``).
Inference only: it has no backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from archdsl.codegen.triton import support

__all__ = ["max_pool2d"]


def _configs() -> list[triton.Config]:
    if support.INTERPRET:
        return [triton.Config({"BLOCK_P": 16, "BLOCK_C": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
            for p, c, w in ((32, 64, 4), (64, 64, 4), (16, 128, 4), (32, 128, 8), (8, 256, 4))]


@triton.autotune(configs=_configs(), key=["P", "C", "KH", "KW", "STRIDE_H", "STRIDE_W"])
@triton.jit
def _max_pool_kernel(
    # Pointers: x [N, H, W, C] and y [N, OH, OW, C] (any strides; channels_last in practice)
    x_ptr, y_ptr,
    # Sizes: P = N * OH * OW output pixels
    P, C, IN_H, IN_W, OUT_H, OUT_W,
    # Strides, in elements
    stride_xn, stride_xh, stride_xw, stride_xc,
    stride_yn, stride_yh, stride_yw, stride_yc,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    ow = offs_p % OUT_W
    t = offs_p // OUT_W
    oh = t % OUT_H
    n = t // OUT_H
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_rows = n.to(tl.int64) * stride_xn
    cols = (offs_c * stride_xc)[None, :]
    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    for r in tl.static_range(KH):
        ih = ih0 + r
        h_ok = mask_p & (ih >= 0) & (ih < IN_H)
        for s in tl.static_range(KW):
            iw = iw0 + s
            ok = h_ok & (iw >= 0) & (iw < IN_W)
            ptrs = x_ptr + (x_rows + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw)[:, None] + cols
            v = tl.load(ptrs, mask=ok[:, None] & mask_c[None, :], other=float("-inf"))
            best = tl.maximum(best, v.to(tl.float32))
    y_rows = n.to(tl.int64) * stride_yn + oh.to(tl.int64) * stride_yh + ow.to(tl.int64) * stride_yw
    tl.store(y_ptr + y_rows[:, None] + (offs_c * stride_yc)[None, :], best.to(y_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_c[None, :])


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"max_pool2d: {name} must be an int or a pair of ints, got {value!r}")


def max_pool2d(x: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
               padding: int | Sequence[int] = 0) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)`` (floor mode, no dilation), no indices.

    Args:
        x: [N, C, H, W], a kernel dtype (:data:`.support.KERNEL_DTYPES`), any memory format
            (read as channels_last, which it is converted to if it is not).
        kernel_size: the window, an int or (h, w).
        stride: default ``kernel_size``.
        padding: implicit -inf padding on each side, at most half the window.

    Returns:
        [N, C, OH, OW] in ``x``'s dtype, channels_last. Not differentiable.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if x.dim() != 4:
        raise ValueError(f"max_pool2d: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if min(kh, kw, sh, sw) < 1 or ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"max_pool2d: window {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw} is not a valid pool "
                         "(padding at most half the window)")
    if not support.kernel_can_run(x):
        raise TypeError(f"max_pool2d: {support.why_not('max-pool', x)}")
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"max_pool2d: a {kh}x{kw} window does not fit the {h}x{w} input")
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty(n, c, oh, ow, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    p = n * oh * ow
    if p == 0 or c == 0:
        return y

    def grid(meta):
        return (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))

    _max_pool_kernel[grid](
        x, y, p, c, h, w, oh, ow,
        x.stride(0), x.stride(2), x.stride(3), x.stride(1),
        y.stride(0), y.stride(2), y.stride(3), y.stride(1),
        KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, PAD_H=ph, PAD_W=pw,
    )  # fmt: skip
    return y
